"""Sim-to-real: pretrain on simulated data of the bundled recording's layout, fine-tune on its
training part, score on its held-out part next to the bundled default model and the baselines.

```
simulate `sample` layout (the bundled recording's sensors, names, rate) ─► pretrain (--pretrain-config)
bundled recording, first 75 % (18 s) ─► skip path = lagged ridge of these data,
                                        transformer weights from the pretrained model ─► fine-tune (--config)
                                        (and the same recipe from scratch, as a control)
last 25 % (6 s) ─► fine-tuned, from-scratch, default model, its two paths alone, ridge, lagged ridge
                   on all and on the artefact-free (clean) samples, block-bootstrap intervals
```

Both configs must have the same `[model]` section (one architecture); the pretraining one adds
its own `[data]`/`[training]` for plentiful simulated data. Baselines are fitted in the same run on
the same 18 s; nothing is chosen on the held-out part.

    python benchmarks/sim_to_real.py --work /tmp/s2r --json s2r.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from brainformer.evaluation import evaluate_recording, model_path_alone  # noqa: E402
from brainformer.paths import DEFAULT_MODEL_DIR, SAMPLE_RECORDING  # noqa: E402
from brainformer.settings import load_settings  # noqa: E402
from brainformer.training import load_training_data, train_model  # noqa: E402

logger = logging.getLogger("sim_to_real")

#: Rows of the table, in order: (method name in the report, label).
ROWS = (
    ("finetuned", "sim-pretrained, fine-tuned"), ("finetuned_skip_alone", "  its skip path alone"),
    ("scratch", "same recipe, no pretraining"), ("default", "bundled default model"),
    ("lagged_ridge", "lagged ridge"), ("ridge", "ridge"),
)


def train_models(args: argparse.Namespace, work: Path) -> tuple[Any, Any, dict[str, float]]:
    """Pretrain on a simulation, fine-tune on the recording, and train the from-scratch control:
    `(fine-tuned, from scratch, wall seconds of each stage)`."""
    from brainformer.simulation import write_simulation

    pretrain_settings, settings = load_settings(args.pretrain_config), load_settings(args.config)
    if pretrain_settings.model != settings.model:
        raise SystemExit(f"{args.pretrain_config} and {args.config}: the [model] sections differ")
    walls: dict[str, float] = {}
    start = time.perf_counter()
    fif = work / f"sim-sample-{args.minutes:g}min-seed{args.seed}_raw.fif"
    if not fif.exists():
        write_simulation("sample", 60.0 * args.minutes, None, args.seed, fif)
    walls["simulate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pretrained = train_model(load_training_data([fif], pretrain_settings), pretrain_settings, work / "pretrained", progress=False).model
    walls["pretrain_s"] = time.perf_counter() - start
    real = load_training_data([args.data], settings)
    start = time.perf_counter()
    finetuned = train_model(real, settings, work / "finetuned", progress=False, pretrained=pretrained).model
    walls["finetune_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scratch = train_model(real, settings, work / "scratch", progress=False).model
    walls["scratch_s"] = time.perf_counter() - start
    return finetuned, scratch, walls


def score(finetuned: Any, scratch: Any, data: Path, bootstrap: int) -> Any:
    """One report on the held-out 25 %: the fine-tuned model is `model`, the others extra methods."""
    from brainformer.model_dir import load_model

    others = {"scratch": scratch, "default": load_model(DEFAULT_MODEL_DIR)}
    if getattr(finetuned, "linear_skip", None) is not None:
        others["finetuned_skip_alone"] = model_path_alone(finetuned, "skip")
    report, _ = evaluate_recording(finetuned, data, split=0.75, bootstrap_replicates=bootstrap, other_models=others)
    return report


def report_key(name: str) -> str:
    """The report's name of a table row: the fine-tuned model is the report's `model`."""
    return "model" if name == "finetuned" else name


def paired(report: Any, a: str, b: str, subset: str | None) -> dict[str, float]:
    """R²(a) − R²(b) with its paired block-bootstrap SD (the replicates share their blocks)."""
    methods = report.methods if subset is None else report.subsets()[subset]
    a, b = report_key(a), report_key(b)
    delta = float(np.nanmean(methods[a].scores.r2) - np.nanmean(methods[b].scores.r2))
    replicates = methods[a].bootstrap_r2 - methods[b].bootstrap_r2
    sd = float(np.std(replicates[np.isfinite(replicates)], ddof=1))
    return {"value": delta, "sd": sd, "z": delta / sd if sd > 0 else float("nan")}


def summary(report: Any) -> dict[str, Any]:
    """`{method: {all, clean: {r2, ci95, minus_lagged_ridge}}}` for the table and the JSON."""
    scores = report.to_dict()
    out: dict[str, Any] = {}
    for name, _ in ROWS:
        key = report_key(name)
        entry = {}
        for subset in ("all", "clean"):
            scored = scores[key] if subset == "all" else scores[key].get(subset)
            if scored is None:
                continue
            entry[subset] = {
                "r2": scored["r2_mean"], "ci95": scored["bootstrap"]["r2_mean"]["ci95"],
                "minus_lagged_ridge": paired(report, name, "lagged_ridge", None if subset == "all" else subset),
                "minus_default": paired(report, name, "default", None if subset == "all" else subset),
            }
        out[name] = entry
    return out


def print_table(table: dict[str, Any]) -> None:
    print(f"\n{'method':32s} {'R² all [95 % CI]':>26s} {'− lagged (z)':>16s} {'R² clean [95 % CI]':>26s} {'− lagged (z)':>16s}")
    for name, label in ROWS:
        cells = []
        for subset in ("all", "clean"):
            entry = table[name].get(subset)
            if entry is None:
                cells.append(f"{'—':>26s} {'':>16s}")
                continue
            low, high = entry["ci95"]
            delta = entry["minus_lagged_ridge"]
            cells.append(f"{entry['r2']:8.4f} [{low:.4f}, {high:.4f}] {delta['value']:+8.4f} ({delta['z']:+5.1f})")
        print(f"{label:32s} {' '.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-config", type=Path, default=REPO / "configs" / "train-sim-pretrain.toml")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train-sim-to-real.toml")
    parser.add_argument("--data", type=Path, default=SAMPLE_RECORDING, help="the real recording")
    parser.add_argument("--minutes", type=float, default=8.0, help="minutes of simulated pretraining data")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--work", type=Path, required=True, help="simulation and models go here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    finetuned, scratch, walls = train_models(args, args.work)
    table = summary(score(finetuned, scratch, args.data, args.bootstrap))
    print_table(table)
    document = {"pretrain_config": str(args.pretrain_config), "config": str(args.config), "sim_minutes": args.minutes,
                "seed": args.seed, "wall_s": walls, "methods": table}
    print(json.dumps(document, indent=2))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
