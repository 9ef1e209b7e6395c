"""Simulator benchmark: offline simulation time, live real-time factor, and the oracle's R².

    python benchmarks/bench_simulation.py [--duration 60] [--json results.json]

Per layout (``sample``: 60 EEG + 306 MEG at 600.615 Hz; ``ds000117``: 70 + 306 at 1100 Hz):
- head model: sphere fit + source grid + MNE forward solution (once per process);
- simulate: `simulate(layout, duration)` with the head model already cached (includes the 10 s
  burn-in), and its speed relative to real time;
- live: `SyntheticSource.read_eeg` real-time factor (generation time / duration generated) for
  0.25 s blocks (what `brainformer-rt simulate --synthetic` reads) and for 10 ms chunks;
- oracle: expected R² of the Wiener oracle, mean over MEG channels, on raw data and after the
  default preprocessing (1–40 Hz band-pass, 60 Hz notch, average reference), and the R² it
  reaches on the second half of the simulated recording after that preprocessing.

Numbers depend on the machine and its load; on a small shared machine multi-threaded BLAS can be
slower than one thread (try OPENBLAS_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from brainformer import simulation as sim
from brainformer.simulation.oracle import default_config
from brainformer.preprocessing import fit_scaling, preprocess_recording


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _live_rtf(layout: str, chunk_s: float, total_s: float) -> float:
    source = sim.SyntheticSource(layout, seed=1)
    chunk = max(1, round(chunk_s * source.sfreq_hz))
    n_chunks = max(1, round(total_s / chunk_s))
    start = time.perf_counter()
    for _ in range(n_chunks):
        source.read_eeg(chunk)
    return (time.perf_counter() - start) / (n_chunks * chunk / source.sfreq_hz)


def bench_layout(layout: str, duration_s: float) -> dict:
    _, head_s = _timed(sim.head_model, layout)
    (raw, truth), simulate_s = _timed(sim.simulate, layout, duration_s, seed=0)
    config = default_config(truth)
    plain = preprocess_recording(raw, config)
    settle, half = int(5 * plain.sfreq_hz), plain.n_samples // 2
    config = fit_scaling(config, plain.eeg[settle:half], plain.meg[settle:half])
    recording = preprocess_recording(raw, config)
    predicted = sim.oracle_prediction(truth, config, recording.eeg)
    target = recording.meg[half:].astype(np.float64)
    residual = ((target - predicted[half:]) ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return {
        "layout": layout,
        "channels": f"{truth.n_eeg} EEG + {truth.n_meg} MEG",
        "sfreq_hz": truth.sfreq_hz,
        "n_sources": int(truth.gain_eeg.shape[1]),
        "head_model_s": head_s,
        "duration_s": duration_s,
        "simulate_s": simulate_s,
        "simulate_x_realtime": duration_s / simulate_s,
        "live_rtf_250ms_blocks": _live_rtf(layout, 0.25, 10.0),
        "live_rtf_10ms_chunks": _live_rtf(layout, 0.01, 5.0),
        "oracle_expected_r2_raw": float(sim.oracle_map(truth).expected_r2.mean()),
        "oracle_expected_r2_preprocessed": float(sim.oracle_map(truth, config).expected_r2.mean()),
        "oracle_r2_on_second_half": float(np.mean(1.0 - residual / total)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds simulated per layout")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results = [bench_layout(layout, args.duration) for layout in sim.LAYOUTS]

    table = Table(title=f"simulator ({platform.machine()}, {os.cpu_count()} CPUs)")
    table.add_column("")
    for r in results:
        table.add_column(f"{r['layout']} ({r['channels']}, {r['sfreq_hz']:g} Hz)", justify="right")
    rows = [
        ("sources", lambda r: str(r["n_sources"])),
        ("head model (forward)", lambda r: f"{r['head_model_s']:.1f} s"),
        (f"simulate {args.duration:g} s", lambda r: f"{r['simulate_s']:.1f} s ({r['simulate_x_realtime']:.1f}× real time)"),
        ("live RTF, 0.25 s blocks", lambda r: f"{r['live_rtf_250ms_blocks']:.3f}"),
        ("live RTF, 10 ms chunks", lambda r: f"{r['live_rtf_10ms_chunks']:.3f}"),
        ("oracle R², raw (expected)", lambda r: f"{r['oracle_expected_r2_raw']:.3f}"),
        ("oracle R², preprocessed (expected)", lambda r: f"{r['oracle_expected_r2_preprocessed']:.3f}"),
        ("oracle R², preprocessed (2nd half)", lambda r: f"{r['oracle_r2_on_second_half']:.3f}"),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in results))
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
