"""Adaptation benchmark: the per-chunk cost of `Adapter.apply` on the daemon's hot path.

    python benchmarks/bench_adaptation.py [--chunks 5000] [--chunk-samples 10] [--json results.json]

Cases (default model: 60 EEG at 600.615 Hz; float32 chunks of 10 samples, as an amplifier sends):
- identity: a stream with the model's 60 channels in µV, plus a trigger channel (gather + scale);
- interpolate 32→60: a 32-electrode 10-20 cap (positions from MNE's standard montage) mapped
  onto the model's 60 electrodes (one matmul);
- resample 500 Hz: the model's 60 channels at 500 Hz, resampled to 600.615 Hz (soxr QQ) with the
  timestamp mapping;
- missing 6: six model electrodes absent, interpolated from the other 54.
Median and p99 over `--chunks` calls after 200 warm-up calls; also the planning time (off the
hot path) and the resampler's hold-back. The design's budget: ≤ 0.2 ms median per chunk.
Numbers depend on the machine and its load (try OPENBLAS_NUM_THREADS=1 on small machines).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from brainformer.adaptation import AdaptationOptions, Adapter, SourceDescription, plan_adaptation
from brainformer.config_fields import BrainformerFields
from brainformer.paths import DEFAULT_MODEL_DIR

CAP_32 = (
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 TP9 CP5 CP1 CP2 CP6 TP10 "
    "P7 P3 Pz P4 P8 PO9 O1 Oz O2 PO10"
).split()


def _fields() -> BrainformerFields:
    values = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    values.pop("dtype", None)
    return BrainformerFields.from_dict(values)


def _cases(fields: BrainformerFields):
    names = tuple(fields.eeg_channel_names)
    hz = fields.sfreq_hz
    yield "identity 60→60", SourceDescription(
        "amp", names + ("TRIG",), hz, ("eeg",) * 60 + ("stim",), ("uV",) * 61
    ), AdaptationOptions()
    yield "interpolate 32→60", SourceDescription(
        "cap32", tuple(CAP_32), hz, units=("uV",) * 32
    ), AdaptationOptions(montage="standard_1020")
    yield "resample 500→600.615 Hz", SourceDescription("amp500", names, 500.0, units=("uV",) * 60), AdaptationOptions()
    missing = {"EEG 005", "EEG 013", "EEG 027", "EEG 031", "EEG 044", "EEG 058"}
    kept = tuple(n for n in names if n not in missing)
    yield "missing 6 of 60", SourceDescription("amp54", kept, hz, units=("uV",) * 54), AdaptationOptions()


def run(n_chunks: int, chunk_samples: int) -> list[dict]:
    fields = _fields()
    rng = np.random.default_rng(0)
    results = []
    for name, source, options in _cases(fields):
        start = time.perf_counter()
        plan = plan_adaptation(fields, source, options)
        plan_s = time.perf_counter() - start
        adapter = Adapter(plan, max_chunk_samples=chunk_samples)
        chunks = (20 * rng.standard_normal((64, chunk_samples, source.n_channels))).astype(np.float32)
        period = chunk_samples / source.sfreq_hz
        t = 1000.0
        times = np.empty(n_chunks)
        stamps = np.arange(chunk_samples) / source.sfreq_hz
        for k in range(200 + n_chunks):
            chunk = chunks[k % 64]
            ts = stamps + t
            t += period
            begin = time.perf_counter()
            adapter.apply(chunk, ts)
            elapsed = time.perf_counter() - begin
            if k >= 200:
                times[k - 200] = elapsed
        results.append(
            {
                "case": name,
                "median_us": float(np.median(times) * 1e6),
                "p99_us": float(np.percentile(times, 99) * 1e6),
                "plan_ms": plan_s * 1e3,
                "hold_back_ms": [1e3 * d for d in plan.resampler_delay_s],
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--chunk-samples", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.chunks, args.chunk_samples)
    print(f"Adapter.apply, chunks of {args.chunk_samples} samples, {args.chunks} chunks ({platform.machine()}, "
          f"{platform.python_version()})")
    print(f"{'case':<26}{'median µs':>10}{'p99 µs':>10}{'plan ms':>10}  resampler hold-back")
    for r in results:
        hold = "-" if not any(r["hold_back_ms"]) else f"{r['hold_back_ms'][0]:.2f} ms mean, {r['hold_back_ms'][1]:.2f} max"
        print(f"{r['case']:<26}{r['median_us']:>10.1f}{r['p99_us']:>10.1f}{r['plan_ms']:>10.1f}  {hold}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"chunk_samples": args.chunk_samples, "chunks": args.chunks, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
