"""Adaptation benchmark: the per-chunk cost of `Adapter.apply` on the daemon's hot path.

    python benchmarks/bench_adaptation.py [--chunks 5000] [--chunk-samples 10] [--json results.json]

Cases (default model: 60 EEG at 600.615 Hz; float32 chunks of 10 samples, as an amplifier sends):
- identity: a stream with the model's 60 channels in µV, plus a trigger channel (gather + scale);
- interpolate 32→60: a 32-electrode 10-20 cap (positions from MNE's standard montage) mapped
  onto the model's 60 electrodes (one matmul);
- resample 500 Hz / 1000 Hz: the model's 60 channels at 500 Hz or 1 kHz, resampled to 600.615 Hz
  with the timestamp mapping, by the converter the plan picks for the model's low-pass corner
  (500 Hz: linear; 1 kHz: soxr QQ, see `brainformer.adaptation.resampling`);
- missing 6: six model electrodes absent, interpolated from the other 54.
Median and p99 over `--chunks` calls after 200 warm-up calls; also the planning time (off the
hot path) and the resampler's hold-back. Then both converters (linear, soxr QQ) on their own
(`StreamResampler.process`, 60 channels, float32) at 500 Hz and 1 kHz, whichever the plan would
pick: the resampler's share of the per-chunk cost, and its hold-back after each chunk (the EEG
time from the newest output's instant to the newest input's). The design's budget: ≤ 0.2 ms
median per chunk added, a hold-back ≤ 2 ms.
Numbers depend on the machine and its load (try OPENBLAS_NUM_THREADS=1 on small machines).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from brainformer.adaptation import AdaptationOptions, Adapter, SourceDescription, StreamResampler, plan_adaptation
from brainformer.adaptation.resampling import LINEAR, SOXR_QQ
from brainformer.config_fields import BrainformerFields
from brainformer.paths import DEFAULT_MODEL_DIR

#: Input rates of the resample cases: below the model rate, and above it.
RESAMPLE_RATES_HZ = (500.0, 1000.0)
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
    for rate in RESAMPLE_RATES_HZ:
        source = SourceDescription(f"amp{rate:g}", names, rate, units=("uV",) * 60)
        yield f"resample {rate:g}→{hz:.6g} Hz", source, AdaptationOptions()
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
        if plan.resample:
            name += f" ({plan.resampler})"
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


def run_resamplers(n_chunks: int, chunk_samples: int, output_hz: float) -> list[dict]:
    """Both converters alone at each of `RESAMPLE_RATES_HZ`: per-chunk cost and hold-back."""
    rng = np.random.default_rng(1)
    results = []
    for rate in RESAMPLE_RATES_HZ:
        chunks = (20e-6 * rng.standard_normal((64, chunk_samples, 60))).astype(np.float32)
        stamps = np.arange(chunk_samples) / rate
        for method in (LINEAR, SOXR_QQ):
            resampler = StreamResampler(rate, output_hz, 60, np.float32, chunk_samples, method=method)
            times = np.empty(n_chunks)
            delays = np.empty(n_chunks)
            t = 1000.0
            for k in range(200 + n_chunks):
                ts = stamps + t
                t += chunk_samples / rate
                begin = time.perf_counter()
                resampler.process(chunks[k % 64], ts)
                elapsed = time.perf_counter() - begin
                if k >= 200:
                    times[k - 200] = elapsed
                    delays[k - 200] = resampler.delay_s
            results.append(
                {
                    "input_hz": rate,
                    "method": method,
                    "median_us": float(np.median(times) * 1e6),
                    "p99_us": float(np.percentile(times, 99) * 1e6),
                    "hold_back_ms": [1e3 * float(delays.mean()), 1e3 * float(delays.max())],
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
    resamplers = run_resamplers(args.chunks, args.chunk_samples, _fields().sfreq_hz)
    print(f"Adapter.apply, chunks of {args.chunk_samples} samples, {args.chunks} chunks ({platform.machine()}, "
          f"{platform.python_version()})")
    print(f"{'case':<40}{'median µs':>10}{'p99 µs':>10}{'plan ms':>10}  resampler hold-back")
    for r in results:
        hold = "-" if not any(r["hold_back_ms"]) else f"{r['hold_back_ms'][0]:.2f} ms mean, {r['hold_back_ms'][1]:.2f} max"
        print(f"{r['case']:<40}{r['median_us']:>10.1f}{r['p99_us']:>10.1f}{r['plan_ms']:>10.1f}  {hold}")
    print(f"\nStreamResampler.process alone, 60 channels, chunks of {args.chunk_samples} samples")
    print(f"{'input':<10}{'converter':<12}{'median µs':>10}{'p99 µs':>10}  hold-back")
    for r in resamplers:
        hold = f"{r['hold_back_ms'][0]:.2f} ms mean, {r['hold_back_ms'][1]:.2f} max"
        print(f"{r['input_hz']:<10g}{r['method']:<12}{r['median_us']:>10.1f}{r['p99_us']:>10.1f}  {hold}")
    if args.json:
        with open(args.json, "w") as f:
            report = {"chunk_samples": args.chunk_samples, "chunks": args.chunks, "results": results, "resamplers": resamplers}
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
