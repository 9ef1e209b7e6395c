"""A source whose clock runs off its nominal rate, served through the resampler for minutes.

    python benchmarks/bench_clock_drift.py [--minutes 10] [--ppm 100] [--rate 500] [--json out.json]

An amplifier's crystal is never exact: the bundled recording is played at ``--rate`` Hz nominal
(resampled offline by ``simulate --rate``), but its samples come ``--ppm`` parts per million
faster (``simulate --clock-ppm``), stamped when they are pushed. The daemon serves it with the
default model, resampling to the model's rate; a ZeroMQ subscriber in this process keeps every
published message. Reported:

- the daemon's gaps, resets and skipped windows (a drifting clock must not look like lost data);
- the rate of the published timestamps against the model's nominal rate (they follow the
  source's clock, so they should run ``--ppm`` fast as well) and how far each published
  timestamp lies from the straight line through all of them (the alignment of the resampled
  output with the input timestamps, in output samples);
- samples published over the span of the output grid they cover (the rest: skipped windows).

Runs inside a loopback-only network namespace when it can (it re-executes itself there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from brainformer_rt.serving.lsl_config import loopback_only


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes to serve (default 10)")
    parser.add_argument("--ppm", type=float, default=100.0, help="source clock error, parts per million (default 100)")
    parser.add_argument("--rate", type=float, default=500.0, help="the source's nominal rate in Hz (default 500)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def _collect(address: str, until_s: float, alive, messages: list) -> None:
    """Every message on ``address`` while ``alive()`` and before ``until_s`` (monotonic):
    ``(seq, timestamps)`` into ``messages``."""
    import numpy as np
    import zmq

    from brainformer_rt.serving.publishers.zmq import decode_message

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)  # keep everything: this subscriber counts, it does not serve
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    try:
        while time.monotonic() < until_s:
            if not sub.poll(200):
                if not alive():
                    break
                continue
            header, data = decode_message(sub.recv_multipart())
            n = int(header["n_samples"])
            stamps = np.linspace(float(header["t0"]), float(header["t_last"]), n) if n > 1 else np.array([header["t0"]])
            messages.append((int(header["seq"]), stamps))
    finally:
        sub.close(0)


def run(minutes: float, ppm: float, rate_hz: float) -> dict:
    import numpy as np

    from brainformer.model_dir import load_fields
    from brainformer_rt.tools._proc import free_tcp_address, rt_cli

    model_rate = float(load_fields("default").sfreq_hz)
    duration_s = 60.0 * minutes
    name = f"drift-{uuid.uuid4().hex[:8]}"
    address = free_tcp_address()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        player = subprocess.Popen(rt_cli("simulate", "--name", name, "--rate", f"{rate_hz:g}", "--clock-ppm", f"{ppm:g}",
                                         "--chunk", "10", "--loop", "--duration", f"{duration_s + 60:g}"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serve = subprocess.Popen(rt_cli("serve", "--stream", name, "--model", "default", "--device", "cpu",
                                        "--engine", "eager", "--zmq", address, "--lsl-name", f"{name}-meg",
                                        "--duration", f"{duration_s:g}", "--stats-json", str(stats_path)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        messages: list = []
        try:
            _collect(address, time.monotonic() + duration_s + 60.0, lambda: serve.poll() is None, messages)
            serve.wait(60)
        finally:
            for process in (serve, player):
                if process.poll() is None:
                    process.terminate()
                    process.wait(20)
        if serve.returncode != 0:
            raise SystemExit(f"serve exited with {serve.returncode}: {serve.stderr.read()[-2000:]}")
        stats = json.loads(stats_path.read_text())
    counters = next(iter(stats["streams"].values()))
    seqs = np.array([seq for seq, _ in messages])
    stamps = np.concatenate([s for _, s in messages])
    # Each published sample's index on the output grid: consecutive stamps are one or a few
    # (skipped windows) output periods apart, so rounding each step is exact where rounding the
    # whole span at the nominal rate would not be (100 ppm over 10 minutes is 36 samples).
    steps = np.rint(np.diff(stamps) * model_rate).astype(np.int64)
    index = np.concatenate([[0], np.cumsum(steps)])
    slope, intercept = np.polyfit(index, stamps, 1)
    residual_samples = (stamps - (intercept + slope * index)) / slope
    published_rate = 1.0 / slope
    return {
        "minutes": minutes, "ppm": ppm, "source_rate_hz": rate_hz, "model_rate_hz": model_rate,
        "messages": len(messages), "seq_gaps": int(np.sum(np.diff(seqs) != 1)) if len(seqs) > 1 else 0,
        "samples_published": int(len(stamps)), "output_grid_span": int(index[-1]) + 1,
        "non_positive_steps": int(np.sum(steps <= 0)),
        "daemon": {key: counters.get(key) for key in ("gaps", "gap_samples", "windows_served", "windows_skipped",
                                                      "windows_stale", "samples_unpublished", "reconnects", "silences")},
        "published_rate_hz": published_rate,
        "published_rate_ppm": (published_rate / model_rate - 1.0) * 1e6,
        "alignment_residual_samples": {"max_abs": float(np.abs(residual_samples).max()),
                                       "p99_abs": float(np.percentile(np.abs(residual_samples), 99))},
        "adaptation": stats.get("adaptation", {}),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    loopback_only()
    result = run(args.minutes, args.ppm, args.rate)
    d, a = result["daemon"], result["alignment_residual_samples"]
    print(f"{result['minutes']:g} min, source {result['source_rate_hz']:g} Hz nominal, clock {result['ppm']:+g} ppm: "
          f"{result['messages']} messages, seq gaps {result['seq_gaps']}, daemon gaps {d['gaps']}, windows served "
          f"{d['windows_served']} / skipped {d['windows_skipped']} / stale {d['windows_stale']}; published timestamps "
          f"run {result['published_rate_ppm']:+.1f} ppm against the model rate; alignment residual max "
          f"{a['max_abs']:.3f} / p99 {a['p99_abs']:.3f} output samples; {result['samples_published']} samples published "
          f"over a grid of {result['output_grid_span']} (the rest: skipped windows), "
          f"{result['non_positive_steps']} out-of-order steps")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
