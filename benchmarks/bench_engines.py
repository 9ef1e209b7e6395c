"""Serving forward per engine, once per hop as the daemon runs it: the default model and a
ds000117-sized one.

    python benchmarks/bench_engines.py [--engines eager compile aot] [--calls 300] [--json out.json]

Models: the bundled default (60 EEG → 306 MEG at 600.615 Hz) and a ds000117-sized model of the
same architecture with random weights (70 → 306 at 1100 Hz, d_model 64, 2 layers, the config's
other defaults). Each engine is built as the daemon builds it (`make_engine`, one window per
call, the newest two hops predicted) with one torch thread, as `bench` runs the daemon.

Per engine: set-up time (compiling included; ``aot`` with an empty cache, then again from the
cache), and the forward's median / p99 over ``--calls`` calls spaced one hop apart (the daemon
waits for input between two forwards, and a forward after a pause is slower than in a tight
loop on these machines) and in a tight loop; real-time factor = spaced median / hop duration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.model_dir import load_model
from brainformer_rt.serving.engine import make_engine


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["eager", "compile", "aot"], help="engines to measure")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per engine and spacing (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as bench runs the daemon)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def models() -> dict:
    ds000117 = BrainformerConfig(eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 71)], sfreq_hz=1100.0,
                                 d_model=64, n_layers=2)
    torch.manual_seed(0)
    return {"default (60→306, 600.6 Hz)": load_model("default"),
            "ds000117-sized (70→306, 1100 Hz, d_model 64, 2 layers)": BrainformerForMEGPrediction(ds000117).eval()}


def timed_calls(engine, windows: np.ndarray, calls: int, spacing_s: float) -> dict:
    out = np.empty((1, engine.output_samples, engine.n_output_channels), dtype=np.float32)
    for _ in range(20):
        engine.infer(windows, out=out)
    times = []
    for _ in range(calls):
        if spacing_s:
            time.sleep(spacing_s)
        started = time.perf_counter()
        engine.infer(windows, out=out)
        times.append(time.perf_counter() - started)
    times_ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(times_ms)), "p99_ms": float(np.percentile(times_ms, 99))}


def one_engine(model, kind: str, calls: int) -> dict:
    config = model.config
    hop_s = config.hop_samples / config.sfreq_hz
    build = lambda: make_engine(model, kind, "cpu", 1, config.window_samples,  # noqa: E731
                                output_samples=2 * config.hop_samples)
    started = time.perf_counter()
    engine = build().setup()
    result = {"setup_s": time.perf_counter() - started}
    if kind == "aot":  # again, from the cache the first set-up filled
        engine.close()
        started = time.perf_counter()
        engine = build().setup()
        result["setup_cached_s"] = time.perf_counter() - started
    windows = np.random.default_rng(0).standard_normal((1, config.window_samples, config.n_eeg_channels))
    windows = windows.astype(np.float32)
    result["per_hop"] = timed_calls(engine, windows, calls, hop_s)
    result["tight"] = timed_calls(engine, windows, calls, 0.0)
    result["hop_ms"] = hop_s * 1e3
    result["rtf"] = result["per_hop"]["median_ms"] / result["hop_ms"]
    engine.close()
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "torch": torch.__version__,
                           "threads": args.threads}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as cache:
        os.environ["BRAINFORMER_CACHE"] = cache  # aot starts from an empty cache
        for name, model in models().items():
            results["models"][name] = {}
            for kind in args.engines:
                result = one_engine(model, kind, args.calls)
                results["models"][name][kind] = result
                cached = f", from the cache {result['setup_cached_s']:.2f} s" if "setup_cached_s" in result else ""
                print(f"{name}, {kind}: set-up {result['setup_s']:.1f} s{cached}; forward per hop "
                      f"({result['hop_ms']:.1f} ms) {result['per_hop']['median_ms']:.3f} / "
                      f"{result['per_hop']['p99_ms']:.3f} ms (median / p99), tight loop "
                      f"{result['tight']['median_ms']:.3f} / {result['tight']['p99_ms']:.3f} ms; "
                      f"real-time factor {result['rtf']:.3f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
