"""Learning curve on simulated data: minutes of training data → R² of the model vs the Wiener oracle.

One long `sample`-layout recording is simulated (`brainformer.simulation`, physics forward model,
known truth). Its last `--test-minutes` are the fixed held-out part; for each training length T
the model is trained (configs/train-sim.toml) on the first T minutes only, with scaling and the
ridge-initialised skip path fitted there too, and scored on the held-out part next to the
baselines fitted on the same T minutes and the simulator's oracle (the Wiener-optimal
instantaneous linear map, computed from the true covariances, not fitted):

```
0 ── settle ── train (T minutes) ──|······ unused ······|── settle ── test (fixed) ──| end
```

    python benchmarks/sim_oracle_curve.py                              # 1, 2, 4, 8 minutes
    python benchmarks/sim_oracle_curve.py --minutes 0.5 1 2 --test-minutes 1 --json curve.json

Prints a table (training minutes → mean R² of model, oracle, their ratio, lagged ridge, ridge) and
a JSON document. The goal is a ratio ≥ 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from brainformer.data import prepare_recordings  # noqa: E402
from brainformer.evaluation import SplitRows, evaluate_arrays  # noqa: E402
from brainformer.settings import ExperimentSettings, load_settings  # noqa: E402
from brainformer.training import train_model, training_data_from_prepared  # noqa: E402

logger = logging.getLogger("sim_oracle_curve")


def simulate_recording(path: Path, duration_s: float, seed: int) -> None:
    """A `sample`-layout simulation at `path`, with its truth sidecar (for the oracle)."""
    from brainformer.simulation import write_simulation

    write_simulation("sample", duration_s, None, seed, path)


def curve_point(
    fif: Path, settings: ExperimentSettings, train_s: float, test_start_s: float, work: Path, bootstrap: int
) -> dict[str, Any]:
    """Train on `[0, train_s)` of `fif`, score on `[test_start_s, end)`; the row of the table."""
    import mne

    from brainformer import simulation

    # Scaling statistics are fitted on the train part: make it exactly the first `train_s`.
    raw = mne.io.read_raw_fif(fif, preload=False, verbose="error")
    split = train_s * raw.info["sfreq"] / raw.n_times
    data = dataclasses.replace(settings.data, split=split, validation_fraction=0.0)
    settings = dataclasses.replace(settings, data=data)
    prepared = prepare_recordings([fif], settings)
    rec = prepared.recordings[0]
    settle = int(round(settings.data.settle_s * rec.sfreq_hz))
    test_start = int(round(test_start_s * rec.sfreq_hz)) + settle
    train = rec.parts["train"]
    rec.parts = {"train": train, "validation": (train[1], train[1]), "test": (test_start, rec.n_samples)}
    training_data = training_data_from_prepared(prepared, settings)
    start = time.perf_counter()
    result = train_model(training_data, settings, work / f"model-{train_s:g}s", progress=False)
    train_wall_s = time.perf_counter() - start
    model = result.model
    predicted = np.asarray(simulation.oracle_prediction(fif, model.config, eeg_preprocessed=rec.eeg), dtype=np.float64)
    report = evaluate_arrays(
        rec.eeg, rec.meg, rec.sfreq_hz, SplitRows(train[0], train[1], test_start, rec.n_samples),
        model.config.meg_channel_types, model.config.meg_channel_names, model=model,
        extra_predictors={"oracle": lambda a, b: predicted[a:b]}, bootstrap_replicates=bootstrap,
        setup={"train_s": train_s},
    )
    scores = report.to_dict()
    r2 = {name: float(scores[name]["r2_mean"]) for name in report.methods}
    return {
        "train_minutes": train_s / 60.0,
        "train_windows": len(training_data.train),
        "train_wall_s": train_wall_s,
        "test_minutes": (rec.n_samples - test_start) / rec.sfreq_hz / 60.0,
        "r2": r2,
        "r2_model_ci95": scores["model"]["bootstrap"]["r2_mean"]["ci95"],
        "ratio_model_to_oracle": r2["model"] / r2["oracle"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0], help="training lengths")
    parser.add_argument("--test-minutes", type=float, default=2.0, help="fixed held-out part at the end")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train-sim.toml")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the scores")
    parser.add_argument("--work", type=Path, default=None, help="keep the simulation and models here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    settings = load_settings(args.config)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, training=dataclasses.replace(settings.training, epochs=args.epochs))
    minutes = sorted(args.minutes)
    duration_s = 60.0 * minutes[-1] + 60.0 * args.test_minutes
    started = time.perf_counter()
    rows, simulate_s = run_curve(args, settings, minutes, duration_s, started)
    total_s = time.perf_counter() - started
    print_table(args, settings, rows, duration_s, total_s, simulate_s)
    document = {
        "layout": "sample",
        "seed": args.seed,
        "config": str(args.config),
        "epochs": settings.training.epochs,
        "duration_minutes": duration_s / 60,
        "test_minutes": args.test_minutes,
        "total_s": total_s,
        "points": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


def run_curve(
    args: argparse.Namespace, settings: ExperimentSettings, minutes: list[float], duration_s: float, started: float
) -> tuple[list[dict[str, Any]], float]:
    """Simulate once (unless `--work` already holds it), then one `curve_point` per training length;
    returns the rows and the seconds from `started` to the end of the simulation."""
    train_region_s = 60.0 * minutes[-1]
    with tempfile.TemporaryDirectory(prefix="sim-oracle-curve-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        fif = work / f"sim-sample-{duration_s:g}s-seed{args.seed}_raw.fif"
        if not fif.exists():
            simulate_recording(fif, duration_s, args.seed)
        simulate_s = time.perf_counter() - started
        rows = []
        for m in minutes:
            row = curve_point(fif, settings, 60.0 * m, train_region_s, work, args.bootstrap)
            rows.append(row)
            print(
                f"{m:6g} min: R² model {row['r2']['model']:.4f}, oracle {row['r2']['oracle']:.4f}, "
                f"ratio {row['ratio_model_to_oracle']:.3f} ({row['train_wall_s']:.0f} s training)",
                file=sys.stderr, flush=True,
            )
    return rows, simulate_s


def print_table(
    args: argparse.Namespace, settings: ExperimentSettings, rows: list[dict[str, Any]], duration_s: float,
    total_s: float, simulate_s: float,
) -> None:
    print(f"\nsimulated `sample` layout, seed {args.seed}: {duration_s / 60:g} min, the last {args.test_minutes:g} min held out; "
          f"config {args.config.name}, {settings.training.epochs} epoch(s)")
    print(f"{'train min':>9s} {'windows':>8s} {'R² model':>9s} {'R² oracle':>9s} {'ratio':>6s} {'R² lagged ridge':>15s} {'R² ridge':>8s} {'train s':>7s}")
    for row in rows:
        r2 = row["r2"]
        print(
            f"{row['train_minutes']:9g} {row['train_windows']:8d} {r2['model']:9.4f} {r2['oracle']:9.4f} "
            f"{row['ratio_model_to_oracle']:6.3f} {r2['lagged_ridge']:15.4f} {r2['ridge']:8.4f} {row['train_wall_s']:7.0f}"
        )
    print(f"total {total_s:.0f} s (simulation {simulate_s:.0f} s)")

if __name__ == "__main__":
    raise SystemExit(main())
