"""Training throughput: windows per second through forward + backward + AdamW step.

Measures the training step alone (random windows already in memory, no data loading), for
several model sizes, in float32 and optionally under bfloat16 autocast and `torch.compile`:

    python benchmarks/bench_training.py                         # CPU, default + large, float32
    python benchmarks/bench_training.py --device cuda --bf16 --compile --batch-size 64
    python benchmarks/bench_training.py --models sample default --json results.json

Models: ``sample`` (configs/train-sample.toml: the bundled model), ``default`` (the
BrainformerConfig defaults: d_model 64, 1+1 layers, 256-sample windows), ``large`` (d_model 256,
4+4 layers, 8 heads, d_ff 1024). All with the 60 EEG → 306 MEG channels of the sample recording
and the regression head (MSE on the newest 32 samples, as `train` does with loss_last_samples).

`--bf16` runs each model twice, float32 and bf16 autocast; on CPU it uses CPU autocast when the
processor runs it, and says so when it does not. `--compile` adds `torch.compile` variants.
Prints a table and a JSON document (stdout or `--json FILE`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainformer.configuration_brainformer import BrainformerConfig  # noqa: E402
from brainformer.modeling_brainformer import BrainformerForMEGPrediction  # noqa: E402
from brainformer.settings import load_settings  # noqa: E402

LAST_SAMPLES = 32


def model_configs() -> dict[str, BrainformerConfig]:
    sample = load_settings(REPO / "configs" / "train-sample.toml").model
    return {
        "sample": BrainformerConfig(**sample),
        "default": BrainformerConfig(),
        "large": BrainformerConfig(d_model=256, n_heads=8, n_layers=4, d_ff=1024, router_dim=16, skip_lags=7),
    }


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast runs a training step on `device`; the reason when it does not."""
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(), "this GPU has no bfloat16")
    try:
        layer = torch.nn.Linear(8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.randn(4, 8)).float().sum().backward()
        return True, ""
    except RuntimeError as err:  # noqa: BLE001 - any failure means "not on this CPU"
        return False, f"CPU bf16 autocast failed: {err}"


def measure(
    config: BrainformerConfig, device: torch.device, batch_size: int, steps: int, warmup: int, bf16: bool, compile_model: bool
) -> dict[str, Any]:
    """Windows/s and ms/step of `steps` timed training steps after `warmup` untimed ones."""
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if compile_model else model
    window = config.window_samples
    inputs = torch.randn(batch_size, window, config.n_eeg_channels, device=device)
    labels = torch.randn(batch_size, window, config.n_meg_channels, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            predictions = step_model(input_values=inputs).predictions
        loss = torch.nn.functional.mse_loss(predictions[:, -LAST_SAMPLES:].float(), labels[:, -LAST_SAMPLES:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "windows_per_s": batch_size * steps / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "warmup_s": warmup_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--models", nargs="+", default=["default", "large"], choices=sorted(model_configs()))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--bf16", action="store_true", help="also measure bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here instead of stdout")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions, notes = precisions_to_measure(device, args.bf16)
    results = measure_variants(args, device, precisions)
    print_table(results, device, args)
    for note in notes:
        print(note)
    document = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "notes": notes,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    else:
        print(json.dumps(document, indent=2))
    return 0


def precisions_to_measure(device: torch.device, bf16: bool) -> tuple[list[str], list[str]]:
    """``["fp32"]``, plus ``"bf16"`` when asked for and it runs on `device`; notes for the report."""
    precisions = ["fp32"]
    notes = []
    if bf16:
        ok, reason = bf16_supported(device)
        if ok:
            precisions.append("bf16")
            if device.type == "cpu":
                notes.append("bf16 on CPU: torch CPU autocast")
        else:
            notes.append(f"bf16 skipped: {reason}")
    return precisions, notes


def measure_variants(args: argparse.Namespace, device: torch.device, precisions: list[str]) -> list[dict[str, Any]]:
    """One row per model × precision × compile, progress on stderr; a failing variant gets an error row."""
    compiles = [False, True] if args.compile else [False]
    configs = model_configs()
    results = []
    for name in args.models:
        for precision in precisions:
            for compiled in compiles:
                try:
                    row = measure(configs[name], device, args.batch_size, args.steps, args.warmup, precision == "bf16", compiled)
                except Exception as err:  # noqa: BLE001 - report a failing variant, keep measuring the rest
                    row = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
                row |= {"model": name, "precision": precision, "compile": compiled, "window_samples": configs[name].window_samples}
                results.append(row)
                print(
                    f"{name:8s} {precision:5s} compile={str(compiled):5s} "
                    + (f"{row['windows_per_s']:10.1f} windows/s {row['ms_per_step']:8.1f} ms/step" if "error" not in row else row["error"]),
                    file=sys.stderr,
                    flush=True,
                )
    return results


def print_table(results: list[dict[str, Any]], device: torch.device, args: argparse.Namespace) -> None:
    header = f"{'model':8s} {'params':>9s} {'window':>6s} {'precision':9s} {'compile':7s} {'windows/s':>10s} {'ms/step':>8s}"
    print(f"\ntraining throughput on {device} (batch {args.batch_size}, {args.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads)")
    print(header)
    for row in results:
        if "error" in row:
            print(f"{row['model']:8s} {'':>9s} {row['window_samples']:>6d} {row['precision']:9s} {str(row['compile']):7s} {row['error']}")
            continue
        print(
            f"{row['model']:8s} {row['parameters'] / 1e6:8.2f}M {row['window_samples']:>6d} {row['precision']:9s} "
            f"{str(row['compile']):7s} {row['windows_per_s']:10.1f} {row['ms_per_step']:8.1f}"
        )

if __name__ == "__main__":
    raise SystemExit(main())
