"""Model benchmark: forward latency / real-time factor and training throughput on CPU.

    python benchmarks/bench_model.py [--threads 2] [--hop 32] [--json results.json]

Forward latency: median and p99 of one window (batch 1) through the default regression model, for
the MNE sample layout (60 EEG → 306 MEG, 600.615 Hz) and the ds000117 layout (70 → 306, 1100 Hz).
Real-time factor = forward time / hop duration (hop = 32 samples by default): below 1 the model
keeps up, the goal is ≤ 0.25. The "serving" columns time what the daemon runs per hop: the same
forward asked for the newest hop only (`last_samples`), which skips the decoder work for older
segments, eager and through `torch.compile` (`--engine compile`; `--no-compile` skips it).

Training throughput: windows per second of forward + backward + optimizer step for the default
`patch_len` and for `patch_len=1` (one token per sample, the original brainformer design), same
model otherwise, in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from brainformer import BrainformerConfig, BrainformerForMEGPrediction

LAYOUTS = {
    "sample (60→306, 600.6 Hz)": dict(sfreq_hz=600.614990234375, n_eeg=60),
    "ds000117 (70→306, 1100 Hz)": dict(sfreq_hz=1100.0, n_eeg=70),
}


def layout_config(sfreq_hz: float, n_eeg: int, **overrides) -> BrainformerConfig:
    return BrainformerConfig(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, n_eeg + 1)], sfreq_hz=sfreq_hz, **overrides
    )


def bench_forward(config: BrainformerConfig, warmup: int, iterations: int, last_samples: int | None = None,
                  compiled: bool = False) -> dict:
    model = BrainformerForMEGPrediction(config).eval()
    window = torch.randn(1, config.window_samples, config.n_eeg_channels)
    times_s = []
    if compiled:  # as the daemon's compile engine does it (see brainformer_rt/serving/engine.py)
        from brainformer_rt.serving.engine import make_engine

        engine = make_engine(model, "compile", "cpu", 1, config.window_samples, output_samples=last_samples).setup()
        window_np = window.numpy()

        def step() -> None:
            engine.infer(window_np)
    else:
        def step() -> None:
            model(window, last_samples=last_samples)

    with torch.inference_mode():
        for _ in range(warmup):
            step()
        for _ in range(iterations):
            start = time.perf_counter()
            step()
            times_s.append(time.perf_counter() - start)
    times_ms = np.array(times_s) * 1e3
    return {
        "median_ms": float(np.median(times_ms)),
        "p99_ms": float(np.percentile(times_ms, 99)),
        "min_ms": float(times_ms.min()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def bench_training(
    config: BrainformerConfig, batch_size: int, warmup_steps: int, min_steps: int, min_seconds: float
) -> dict:
    model = BrainformerForMEGPrediction(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    eeg = torch.randn(batch_size, config.window_samples, config.n_eeg_channels)
    meg = torch.randn(batch_size, config.window_samples, config.n_meg_channels)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(eeg, labels=meg).loss.backward()
        optimizer.step()

    for _ in range(warmup_steps):  # allocations, kernel selection
        step()
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        step()
        steps += 1
    elapsed_s = time.perf_counter() - start
    return {"windows_per_s": steps * batch_size / elapsed_s, "steps": steps, "batch_size": batch_size}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--hop", type=int, default=32, help="hop in samples for the real-time factor (default 32)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed forward passes first (default 20)")
    parser.add_argument("--iterations", type=int, default=300, help="timed forward passes per layout (default 300)")
    parser.add_argument("--train-batch", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--train-seconds", type=float, default=10.0, help="minimum timed training seconds per model")
    parser.add_argument("--skip-training", action="store_true", help="only measure forward latency")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile serving forward (and its compilation time)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.hop < 1 or args.iterations < 1 or args.train_batch < 1:
        parser.error("--threads, --hop, --iterations and --train-batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console()
    default = BrainformerConfig()
    results: dict = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "hop_samples": args.hop,
        "default_patch_len": default.patch_len,
    }
    results["forward"] = forward_section(args, console, default)
    if not args.skip_training:
        results["training"] = training_section(args, console, default)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {args.json}")
    return 0


def forward_section(args: argparse.Namespace, console: Console, default: BrainformerConfig) -> dict:
    """Time the eager, serving and compiled serving forward for every layout; print the table."""
    forward = {}
    table = Table(title=f"Forward, batch 1, {args.threads} CPU thread(s), default model (patch_len={default.patch_len})")
    # The minimum is the least disturbed by other load on a shared machine.
    for column in ("layout", "min ms", "median ms", "p99 ms", "hop ms", "RTF median", "RTF p99",
                   "serving median ms", "serving RTF median", "compiled serving median ms", "compiled RTF median"):
        table.add_column(column, justify="right" if column != "layout" else "left")
    for name, layout in LAYOUTS.items():
        config = layout_config(layout["sfreq_hz"], layout["n_eeg"])
        stats = bench_forward(config, args.warmup, args.iterations)
        last = min(args.hop, config.window_samples)
        serving = bench_forward(config, args.warmup, args.iterations, last_samples=last)
        compiled = (bench_forward(config, args.warmup, args.iterations, last_samples=last, compiled=True)
                    if args.compile else {"median_ms": float("nan"), "p99_ms": float("nan")})
        hop_ms = args.hop / config.sfreq_hz * 1e3
        stats.update(hop_ms=hop_ms, rtf_median=stats["median_ms"] / hop_ms, rtf_p99=stats["p99_ms"] / hop_ms,
                     serving_median_ms=serving["median_ms"], serving_p99_ms=serving["p99_ms"],
                     serving_rtf_median=serving["median_ms"] / hop_ms, compiled_serving_median_ms=compiled["median_ms"],
                     compiled_serving_p99_ms=compiled["p99_ms"], compiled_rtf_median=compiled["median_ms"] / hop_ms)
        forward[name] = stats
        table.add_row(
            name, f"{stats['min_ms']:.2f}", f"{stats['median_ms']:.2f}", f"{stats['p99_ms']:.2f}", f"{hop_ms:.1f}",
            f"{stats['rtf_median']:.3f}", f"{stats['rtf_p99']:.3f}", f"{serving['median_ms']:.2f}",
            f"{stats['serving_rtf_median']:.3f}", f"{compiled['median_ms']:.2f}", f"{stats['compiled_rtf_median']:.3f}",
        )
    console.print(table)
    return forward


def training_section(args: argparse.Namespace, console: Console, default: BrainformerConfig) -> dict:
    """Training throughput of the default `patch_len` against `patch_len=1`; print the table."""
    layout = LAYOUTS["ds000117 (70→306, 1100 Hz)"]
    training = {}
    for patch_len in (default.patch_len, 1):
        config = layout_config(layout["sfreq_hz"], layout["n_eeg"], patch_len=patch_len)
        # patch_len=1 is over an order of magnitude slower: two steps are enough to time it
        # (each takes seconds, so warm-up effects are negligible).
        fast = patch_len > 1
        training[patch_len] = bench_training(
            config, args.train_batch, warmup_steps=1 if fast else 0, min_steps=3 if fast else 2,
            min_seconds=args.train_seconds if fast else 0.0,
        )
    ratio = training[default.patch_len]["windows_per_s"] / training[1]["windows_per_s"]
    table = Table(title=f"Training (forward + backward + AdamW), batch {args.train_batch}, ds000117 layout")
    for column in ("patch_len", "windows/s", "steps timed"):
        table.add_column(column, justify="right")
    for patch_len, stats in training.items():
        table.add_row(str(patch_len), f"{stats['windows_per_s']:.2f}", str(stats["steps"]))
    table.caption = f"speed-up of patch_len={default.patch_len} over patch_len=1: {ratio:.1f}×"
    console.print(table)
    return {
        "layout": "ds000117 (70→306, 1100 Hz)",
        f"patch_len={default.patch_len}": training[default.patch_len],
        "patch_len=1": training[1],
        "speedup": ratio,
    }

if __name__ == "__main__":
    sys.exit(main())
