"""Learning curve on simulated data: minutes of training data → R² of the model, the baselines,
the Wiener oracle and the noise ceiling, with the model's two paths scored apart (ablation).

One long `sample`-layout recording is simulated (`brainformer.simulation`, physics forward model,
known truth). Its last `--test-minutes` are the fixed held-out part; for each training length T
the model is trained (`--config`, default configs/train-sim.toml) on the first T minutes only,
with scaling and the ridge-initialised skip path fitted there too, and scored on the held-out part
next to the baselines fitted on the same T minutes, the simulator's oracle (the Wiener-optimal
instantaneous linear map, computed from the true covariances, not fitted) and the limits from
the truth: the causal limits (the best linear filter on lagged ridge's lags, and on the model's
window, with unlimited data), the linear limit (the best linear filter with unlimited history and future), the
informed limit (the best predictor of any kind, even one told every non-Gaussian component: what
non-linear structure can add at most) and the noise ceiling (the noiseless MEG against the
measured one: no method can reach more):

```
0 ── settle ── train (T minutes) ──|······ unused ······|── settle ── test (fixed) ──| end
```

Ablation, in the same run and on the same test rows: `skip_path_alone` (the trained model with
its transformer output zeroed), `transformer_alone` (its skip path zeroed) and `model` (both).

`--step-budget N` caps the optimiser steps of each point at about N (epochs × windows / batch):
where the train part holds more windows than that, its training hop grows instead, so a long
point sees more varied data in the same CPU time, not more steps.

    python benchmarks/sim_oracle_curve.py                              # 1, 2, 4, 8 minutes
    python benchmarks/sim_oracle_curve.py --minutes 0.5 1 2 --test-minutes 1 --json curve.json
    python benchmarks/sim_oracle_curve.py --config configs/train-sim.toml --minutes 4 16 64 \
        --step-budget 1000 --plot docs/sim_learning_curve.png --json curve.json

Prints a table (training minutes → mean R² of each method and of the limits) and a JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from brainformer.data import prepare_recordings  # noqa: E402
from brainformer.evaluation import SplitRows, ablation_predictors, evaluate_arrays, lag_samples  # noqa: E402
from brainformer.settings import ExperimentSettings, load_settings  # noqa: E402
from brainformer.training import train_model, training_data_from_prepared  # noqa: E402

logger = logging.getLogger("sim_oracle_curve")


def simulate_recording(path: Path, duration_s: float, seed: int) -> None:
    """A `sample`-layout simulation at `path`, with its truth sidecar (for the oracle)."""
    from brainformer.simulation import write_simulation

    write_simulation("sample", duration_s, None, seed, path)


def curve_point(
    fif: Path, settings: ExperimentSettings, train_s: float, test_start_s: float, work: Path, bootstrap: int,
    step_budget: int | None = None, reuse: bool = False,
) -> dict[str, Any]:
    """Train on `[0, train_s)` of `fif`, score on `[test_start_s, end)`; the row of the table."""
    from brainformer import simulation

    prepared, rec, test_start = _prepared_point(fif, settings, train_s, test_start_s)
    train = rec.parts["train"]
    settings = _within_step_budget(settings, train[1] - train[0], step_budget)
    training_data = training_data_from_prepared(prepared, settings)
    model, train_wall_s = _trained_model(training_data, settings, work / f"model-{train_s:g}s", reuse)
    # The oracle is instantaneous: the test rows alone give its test prediction (the whole
    # recording in float64 would take ~6 GB a copy at 64 minutes).
    predicted = simulation.oracle_prediction(fif, model.config, eeg_preprocessed=rec.eeg[test_start:])
    extras = {"oracle": lambda a, b: predicted[a - test_start : b - test_start], **ablation_predictors(model, rec.eeg)}
    report = evaluate_arrays(
        rec.eeg, rec.meg, rec.sfreq_hz, SplitRows(train[0], train[1], test_start, rec.n_samples),
        model.config.meg_channel_types, model.config.meg_channel_names, model=model,
        extra_predictors=extras, bootstrap_replicates=bootstrap, setup={"train_s": train_s},
    )
    scores = report.to_dict()
    r2 = {name: float(scores[name]["r2_mean"]) for name in report.methods}
    return {
        "train_minutes": train_s / 60.0,
        "train_windows": len(training_data.train),
        "train_hop_samples": settings.data.train_hop_samples,
        "epochs": settings.training.epochs,
        "train_wall_s": train_wall_s,
        "test_minutes": (rec.n_samples - test_start) / rec.sfreq_hz / 60.0,
        "r2": r2,
        **_physical_limits(simulation.load_truth(fif), model.config),
        "r2_ci95": {name: scores[name]["bootstrap"]["r2_mean"]["ci95"] for name in report.methods},
        # Paired bootstrap (same resampled blocks): value, std, ci95 of the R² difference.
        "model_minus": {name[len("model_minus_"):]: c["r2_mean"] for name, c in scores["comparisons"].items()},
        "ratio_model_to_oracle": r2["model"] / r2["oracle"],
        "serving": serving_forward_time(model.eval()),
    }


def _physical_limits(truth: Any, config: Any) -> dict[str, float]:
    """Mean expected R² of the limits no method passes, from the truth: the best causal linear
    filter (on lagged ridge's lags; on the model's window), the best linear filter of unlimited
    history and future, the best predictor told every component, the noiseless MEG."""
    from brainformer import simulation

    return {
        # What lagged ridge (its own lags) and a linear filter of the whole window reach with
        # unlimited data: the most a causal linear method can get here.
        "causal_limit_lagged_ridge_r2": float(np.mean(simulation.causal_limit(truth, config, lag_samples(config.sfreq_hz)))),
        "causal_limit_window_r2": float(np.mean(simulation.causal_limit(truth, config, range(0, config.window_samples, 4)))),
        "linear_limit_r2": float(np.mean(simulation.linear_limit(truth, config))),
        "informed_limit_r2": float(np.mean(simulation.informed_limit(truth, config))),
        "noise_ceiling_r2": float(np.mean(simulation.noise_ceiling(truth, config))),
    }


def _trained_model(training_data: Any, settings: ExperimentSettings, out: Path, reuse: bool) -> tuple[Any, float | None]:
    """`(model, training seconds)`: trained into `out`, or, with `reuse`, loaded from `out` when an
    earlier run of the same settings left a model there (training seconds None)."""
    if reuse and (out / "model.safetensors").is_file():
        from brainformer.model_dir import load_model

        return load_model(out), None
    start = time.perf_counter()
    result = train_model(training_data, settings, out, progress=False)
    return result.model, time.perf_counter() - start


def _prepared_point(fif: Path, settings: ExperimentSettings, train_s: float, test_start_s: float) -> tuple[Any, Any, int]:
    """The recording prepared with its train part exactly `[0, train_s)` (scaling fitted there) and
    its test part from `test_start_s` (+ settling) to the end: `(prepared, recording, test start row)`."""
    import mne

    raw = mne.io.read_raw_fif(fif, preload=False, verbose="error")
    split = train_s * raw.info["sfreq"] / raw.n_times
    data = dataclasses.replace(settings.data, split=split, validation_fraction=0.0)
    prepared = prepare_recordings([fif], dataclasses.replace(settings, data=data))
    rec = prepared.recordings[0]
    settle = int(round(settings.data.settle_s * rec.sfreq_hz))
    test_start = int(round(test_start_s * rec.sfreq_hz)) + settle
    train = rec.parts["train"]
    rec.parts = {"train": train, "validation": (train[1], train[1]), "test": (test_start, rec.n_samples)}
    return prepared, rec, test_start


def _within_step_budget(settings: ExperimentSettings, train_samples: int, step_budget: int | None) -> ExperimentSettings:
    """`settings` with a training hop large enough that epochs × windows / batch ≤ `step_budget`."""
    if step_budget is None:
        return settings
    data, training = settings.data, settings.training
    windows_allowed = step_budget * training.batch_size / training.epochs
    hop = max(data.train_hop_samples, math.ceil(train_samples / windows_allowed))
    return dataclasses.replace(settings, data=dataclasses.replace(data, train_hop_samples=hop))


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
    parser.add_argument("--step-budget", type=int, default=None, help="cap each point at about this many optimiser steps")
    parser.add_argument("--reuse-models", action="store_true", help="score models an earlier run left in --work instead of training")
    parser.add_argument("--plot", type=Path, default=None, help="write the learning-curve plot (PNG) here")
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
        "step_budget": args.step_budget,
        "duration_minutes": duration_s / 60,
        "test_minutes": args.test_minutes,
        "total_s": total_s,
        "points": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot:
        plot_curve(rows, args.plot, f"simulated `sample` layout, seed {args.seed}, {args.test_minutes:g} min held out")
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
            row = curve_point(fif, settings, 60.0 * m, train_region_s, work, args.bootstrap, args.step_budget, args.reuse_models)
            rows.append(row)
            if args.json:  # each point as soon as it is measured: a long curve may be stopped
                args.json.with_suffix(".partial.json").write_text(json.dumps(rows, indent=2) + "\n")
            print(
                f"{m:6g} min: R² model {row['r2']['model']:.4f}, oracle {row['r2']['oracle']:.4f}, "
                f"ratio {row['ratio_model_to_oracle']:.3f} ({row['train_wall_s'] or 0:.0f} s training)",
                file=sys.stderr, flush=True,
            )
    return rows, simulate_s


def serving_forward_time(model: Any, calls: int = 200) -> dict[str, Any]:
    """The model's eager engine as the daemon builds and runs it (one torch thread, one window per
    call, the newest two hops, calls one hop apart; `benchmarks/bench_engines.py`): its median
    forward per hop and real-time factor, with the rest of that benchmark's figures."""
    import torch

    from benchmarks.bench_engines import one_engine

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = one_engine(model.eval(), "eager", calls)
    finally:
        torch.set_num_threads(previous)
    return {"forward_ms": result["per_hop"]["median_ms"], "threads": 1, **result}


#: Table and plot columns: (key in a row's "r2", header).
COLUMNS = (
    ("model", "model"), ("skip_path_alone", "skip alone"), ("transformer_alone", "transf. alone"),
    ("lagged_ridge", "lagged ridge"), ("ridge", "ridge"), ("oracle", "oracle"),
)


#: The physical limits of each row (`_physical_limits`), as table columns and dashed plot lines.
LIMITS = (
    ("causal_limit_lagged_ridge_r2", "causal 50ms"), ("causal_limit_window_r2", "causal win."),
    ("linear_limit_r2", "linear lim."), ("informed_limit_r2", "informed"), ("noise_ceiling_r2", "noise ceil."),
)


def print_table(
    args: argparse.Namespace, settings: ExperimentSettings, rows: list[dict[str, Any]], duration_s: float,
    total_s: float, simulate_s: float,
) -> None:
    print(f"\nsimulated `sample` layout, seed {args.seed}: {duration_s / 60:g} min, the last {args.test_minutes:g} min held out; "
          f"config {args.config.name}, {settings.training.epochs} epoch(s), step budget {args.step_budget}")
    header = "".join(f"{title:>14s}" for _, title in COLUMNS)
    limits = "".join(f" {title:>11s}" for _, title in LIMITS)
    print(f"{'train min':>9s} {'windows':>8s}{header}{limits} {'model − lagged (sd)':>20s} {'train s':>7s}")
    for row in rows:
        values = "".join(f"{row['r2'].get(key, float('nan')):14.4f}" for key, _ in COLUMNS)
        delta = row["model_minus"]["lagged_ridge"]
        print(
            f"{row['train_minutes']:9g} {row['train_windows']:8d}{values}{''.join(f' {row[key]:11.4f}' for key, _ in LIMITS)} "
            f"{delta['value']:+12.4f} ({delta['std']:.4f}) {row['train_wall_s'] or 0:7.0f}"
        )
    print(f"total {total_s:.0f} s (simulation {simulate_s:.0f} s)")


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Minutes of training data (log axis) → R² of each method, with the limits dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["train_minutes"] for row in rows]
    figure, axes = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    for key, title_ in COLUMNS:
        if all(key in row["r2"] for row in rows):
            axes.plot(minutes, [row["r2"][key] for row in rows], marker="o", label=title_)
    for (key, title_), style in zip(LIMITS, ((0, (1, 3)), (0, (3, 3)), ":", "-.", "--")):
        axes.plot(minutes, [row[key] for row in rows], color="k", linestyle=style, label=title_)
    axes.set_xscale("log", base=2)
    axes.set_xticks(minutes, [f"{m:g}" for m in minutes])
    axes.set_xlabel("minutes of simulated training data")
    axes.set_ylabel("held-out R² (mean over 306 channels)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, ncol=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
