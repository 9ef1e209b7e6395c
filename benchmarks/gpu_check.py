"""GPU check of the inference engines: eager vs compile vs cuda-graph, latency and equality.

For each model (the default Brainformer and a larger one, d_model 256 and 4 layers) and batch
size (1 and 8), every engine is built the way the daemon builds it (static buffers, warm-up,
compile / capture in ``setup()``), then timed per ``infer`` call — host window in, host
prediction out, the cost the daemon pays per forward — over many calls after a warm-up that is
not counted. Each engine's output is compared with eager's on the same inputs.

Goals (docs/issues): cuda-graph ≥ 3× faster than eager and ≤ 0.3 ms at batch 1.

Usage::

    python benchmarks/gpu_check.py [--json gpu_check.json] [--iterations 500]
    python benchmarks/gpu_check.py --device cpu --kinds eager --models tiny   # smoke test, no GPU

Without CUDA (and without ``--device cpu``) it exits with code 2 and one line saying so.
Weights are random (seeded): latency and equality do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

GOAL_SPEEDUP = 3.0
GOAL_GRAPH_MS = 0.3

# name -> overrides of BrainformerConfig (the default model's size unless overridden).
MODELS = {
    "default": {},
    "large": {"d_model": 256, "n_layers": 4, "d_ff": 512},
    "tiny": {"window_samples": 64, "d_model": 16, "n_heads": 2, "d_ff": 32, "router_dim": 4},  # smoke test only
}
KINDS = ("eager", "compile", "cuda-graph")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test of this script)")
    parser.add_argument("--models", default="default,large", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated engines")
    parser.add_argument("--iterations", type=int, default=500, help="timed calls per engine")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per engine before timing")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the results")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.kinds = [k for k in args.kinds.split(",") if k]
    for name in args.models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; known: {', '.join(MODELS)}")
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"--kinds: unknown engine {kind!r}; known: {', '.join(KINDS)}")
    if args.iterations < 10 or args.warmup < 0 or not args.batches or min(args.batches) < 1:
        parser.error("--iterations must be >= 10, --warmup >= 0, batch sizes >= 1")
    return args


def build_model(name: str, seed: int = 0):
    import torch

    from brainformer.configuration_brainformer import BrainformerConfig
    from brainformer.modeling_brainformer import BrainformerForMEGPrediction

    torch.manual_seed(seed)
    config = BrainformerConfig(dropout=0.0, **MODELS[name])
    return BrainformerForMEGPrediction(config).eval()


def time_engine(engine, windows: np.ndarray, iterations: int, warmup: int) -> np.ndarray:
    """Seconds per ``infer`` call, ``(iterations,)``; the call ends with the output on the host."""
    out = np.empty((windows.shape[0], engine.window_samples, engine.n_output_channels), np.float32)
    for _ in range(warmup):
        engine.infer(windows, out=out)
    durations = np.empty(iterations)
    for i in range(iterations):
        started = time.perf_counter()
        engine.infer(windows, out=out)
        durations[i] = time.perf_counter() - started
    return durations


def machine_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "device": device}
    if device == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))})
    return info


def run(args: argparse.Namespace) -> dict:
    import torch

    from brainformer_rt.serving.engine import make_engine

    rows = []
    rng = np.random.default_rng(0)
    for model_name in args.models:
        model = build_model(model_name)
        config = model.config
        for batch in args.batches:
            windows = rng.standard_normal((batch, config.window_samples, config.n_eeg_channels)).astype(np.float32)
            reference = None
            eager_median = None
            for kind in args.kinds:
                if kind == "cuda-graph" and args.device != "cuda":
                    continue
                engine = make_engine(model, kind, args.device, batch_size=batch, window_samples=config.window_samples,
                                     buckets=[batch])
                engine.setup()
                output = engine.infer(windows)
                durations = time_engine(engine, windows, args.iterations, args.warmup)
                engine.close()
                if kind == "compile":
                    # The compiled step's code object is shared by every compile engine: start the
                    # next one from a clean slate (and far from dynamo's recompile limit).
                    torch._dynamo.reset()
                if kind == "eager":
                    reference = output
                median_ms = float(np.median(durations)) * 1e3
                if kind == "eager":
                    eager_median = median_ms
                row = {
                    "model": model_name, "d_model": config.d_model, "n_layers": config.n_layers, "batch": batch,
                    "engine": kind, "setup_s": engine.setup_s,
                    "median_ms": median_ms,
                    "p99_ms": float(np.percentile(durations, 99)) * 1e3,
                    "max_ms": float(durations.max()) * 1e3,
                    "iterations": args.iterations,
                    "speedup_vs_eager": (eager_median / median_ms) if eager_median else None,
                    "max_abs_diff_vs_eager": (float(np.abs(output - reference).max()) if reference is not None else None),
                    "max_abs_output": float(np.abs(output).max()),
                }
                rows.append(row)
                print(f"{model_name:8s} b={batch:<2d} {kind:10s} median {row['median_ms']:8.3f} ms  "
                      f"p99 {row['p99_ms']:8.3f} ms  setup {engine.setup_s:6.1f} s", flush=True)
            del reference
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    goals = []
    for row in rows:
        if row["engine"] == "cuda-graph" and row["batch"] == 1:
            goals.append({"model": row["model"], "speedup_vs_eager": row["speedup_vs_eager"],
                          "speedup_goal_met": bool(row["speedup_vs_eager"] and row["speedup_vs_eager"] >= GOAL_SPEEDUP),
                          "median_ms": row["median_ms"], "latency_goal_met": row["median_ms"] <= GOAL_GRAPH_MS})
    return {"machine": machine_info(args.device), "iterations": args.iterations, "warmup": args.warmup,
            "timing": "per Engine.infer call: host input -> host output, synchronised", "rows": rows, "goals": goals}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"engines on {results['machine'].get('gpu', results['machine']['device'])} "
                        f"(torch {results['machine']['torch']}, {results['iterations']} calls each)")
    for column in ("model", "batch", "engine", "median ms", "p99 ms", "× eager", "max |Δ| vs eager", "setup s"):
        table.add_column(column, justify="left" if column in ("model", "engine") else "right")
    for row in results["rows"]:
        speedup = row["speedup_vs_eager"]
        diff = row["max_abs_diff_vs_eager"]
        table.add_row(row["model"], str(row["batch"]), row["engine"], f"{row['median_ms']:.3f}", f"{row['p99_ms']:.3f}",
                      "–" if speedup is None else f"{speedup:.2f}", "–" if diff is None else f"{diff:.2e}",
                      f"{row['setup_s']:.1f}")
    # Wide enough for the whole table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    for goal in results["goals"]:
        console.print(f"{goal['model']}: cuda-graph {goal['speedup_vs_eager']:.2f}× eager "
                      f"(goal ≥ {GOAL_SPEEDUP:g}×: {'met' if goal['speedup_goal_met'] else 'NOT met'}), "
                      f"{goal['median_ms']:.3f} ms at batch 1 (goal ≤ {GOAL_GRAPH_MS} ms: "
                      f"{'met' if goal['latency_goal_met'] else 'NOT met'})", highlight=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, "
              f"{'built without CUDA' if torch.version.cuda is None else 'no usable GPU'}); "
              "run it on a machine with an NVIDIA GPU, or use --device cpu for a smoke test", file=sys.stderr)
        return 2
    if args.device not in ("cuda", "cpu"):
        print(f"gpu_check: --device must be cuda or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    results = run(args)
    print_table(results)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
