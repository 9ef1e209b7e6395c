"""Today's causal target against the low-delay design on a long simulated recording (known truth).

One `sample`-layout recording of `--minutes` is simulated (`brainformer.simulation`, as
`brainformer simulate-data --layout sample` does) and two models are trained on its first 75 % with
the simulated-data recipe (`--config`, default configs/train-sim.toml, at most `--step-budget`
optimiser steps each, as benchmarks/sim_oracle_curve.py caps them):

- **causal target** (today): the MEG through the EEG's causal 4–30 Hz 4th-order Butterworth
  filters (the band of the bundled default model), so the model learns the MEG as they delay it;
- **low delay**: the zero-phase 4–30 Hz MEG (order 4, forward and backward: the brain as it is
  now) from EEG through the input filter and lags that benchmarks/lowdelay_design.py chooses, on
  its own candidate grid, on validation rows of this simulation (its rows 60–75 % of the first
  `--design-minutes`, inside the training part; the held-out last 25 % is never looked at).

Both are scored with `evaluate_recording` (the `brainformer evaluate` path) against both truths,
the causal and the zero-phase MEG, next to ridge and lagged ridge fitted to that very truth on the
same input, with the simulator's Wiener oracle, on all held-out samples and on the artefact-free
ones where the detectors find any artefact, and every method is given its effective delay against
the zero-phase truth (overall, per band, per band envelope).

    python benchmarks/lowdelay_sim.py                          # 16 minutes, seed 1
    python benchmarks/lowdelay_sim.py --minutes 8 --json lowdelay-sim.json --work /tmp/lowdelay-sim

BLAS, OpenMP and torch run one thread each unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS are set: on 2 shared cores the ridge fits ran about ten times faster so.
Prints a progress line per step (stderr), the tables, and writes `--json`.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before numpy and torch load; an importer keeps its own threads
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.lowdelay_design import (  # noqa: E402
    LAG_SETS,
    TARGET,
    best_candidate,
    filter_label,
    score_recording_candidates,
)
from benchmarks.sim_oracle_curve import _trained_model, _within_step_budget, simulate_recording  # noqa: E402
from brainformer.settings import ExperimentSettings, load_settings  # noqa: E402

logger = logging.getLogger("lowdelay_sim")

#: The band of the bundled default model: today's causal target.
CAUSAL_TARGET = {"highpass_hz": 4.0, "lowpass_hz": 30.0, "filter_order": 4, "target_phase": "causal"}
#: The models, in table order.
MODELS = {"causal": "causal target (today)", "lowdelay": "low delay (zero-phase target)"}
#: Methods shown, in table order: (method name in the report, label).
METHODS = (("model", "model"), ("lagged_ridge", "lagged ridge"), ("ridge", "ridge"), ("oracle", "Wiener oracle"))
#: Bands of the effective delay, in table order.
BANDS = ("all", "theta", "alpha", "beta", "theta envelope", "alpha envelope", "beta envelope")


def skip_path_for(lags: tuple[int, ...]) -> dict[str, int]:
    """The model's skip path on exactly `lags` (0, step, 2·step, …): `skip_lags` for the model,
    `ridge_lag_step_samples` for its ridge initialisation."""
    step = lags[1] - lags[0] if len(lags) > 1 else 1
    if tuple(range(0, lags[-1] + 1, step)) != tuple(lags):
        raise ValueError(f"lags {lags} are not 0, step, 2·step, …: a skip path cannot hold exactly them")
    return {"skip_lags": lags[-1] + 1, "ridge_lag_step_samples": step}


def model_settings(base: ExperimentSettings, which: str, design: dict[str, Any] | None = None) -> ExperimentSettings:
    """The recipe's settings for the causal-target model, or for the low-delay one from the chosen `design` row."""
    if which == "causal":
        return dataclasses.replace(base, model={**base.model, **CAUSAL_TARGET})
    skip = skip_path_for(LAG_SETS[design["lags"]])
    model = {**base.model, **TARGET, "highpass_hz": design["highpass_hz"], "lowpass_hz": design["lowpass_hz"],
             "filter_order": design["order"], "skip_lags": skip["skip_lags"]}
    training = dataclasses.replace(base.training, ridge_lag_step_samples=skip["ridge_lag_step_samples"])
    return dataclasses.replace(base, model=model, training=training)


def choose_design(fif: Path, design_s: float, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """lowdelay_design's candidate grid scored on the first `design_s` seconds of `fif`."""
    from brainformer.data import read_raw

    raw = read_raw(fif)
    raw.crop(0.0, min(design_s, raw.times[-1]), include_tmax=False)
    return score_recording_candidates(raw, progress)


def train(fif: Path, settings: ExperimentSettings, out: Path, step_budget: int, reuse: bool) -> tuple[Any, dict[str, Any]]:
    """Train on the recipe's train part of `fif` (at most about `step_budget` optimiser steps):
    `(model, {train_windows, train_hop_samples, steps, train_wall_s})`."""
    from brainformer.data import prepare_recordings
    from brainformer.training import training_data_from_prepared

    prepared = prepare_recordings([fif], settings)
    first, stop = prepared.recordings[0].parts["train"]
    settings = _within_step_budget(settings, stop - first, step_budget)
    training_data = training_data_from_prepared(prepared, settings)
    model, wall_s = _trained_model(training_data, settings, out, reuse)
    windows = len(training_data.train)
    steps = settings.training.epochs * -(-windows // settings.training.batch_size)
    return model, {"train_windows": windows, "train_hop_samples": settings.data.train_hop_samples, "steps": steps,
                   "train_wall_s": wall_s}


def summarise(report: Any) -> dict[str, Any]:
    """Scores per truth, sample set and method; model − baseline intervals; effective delays."""
    scores: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    for truth, truth_report in report.all_truths().items():
        full = truth_report.to_dict()
        sets = {"all": {name: full[name] for name in truth_report.methods}}
        sets |= {subset: {name: full[name][subset] for name in truth_report.methods} for subset in _distinct_subsets(truth_report)}
        scores[truth] = {
            subset: {name: {"r_mean": entry["r_mean"], "r2_mean": entry["r2_mean"],
                            "r_ci95": entry["bootstrap"]["r_mean"]["ci95"], "r2_ci95": entry["bootstrap"]["r2_mean"]["ci95"],
                            **({"n_samples": entry["n_samples"]} if "n_samples" in entry else {})}
                     for name, entry in methods.items()}
            for subset, methods in sets.items()
        }
        comparisons[truth] = {
            name: {"all": {key: c[key] for key in ("r_mean", "r2_mean")},
                   **{subset: {key: c[subset][key] for key in ("r_mean", "r2_mean")} for subset in _distinct_subsets(truth_report)}}
            for name, c in full["comparisons"].items()
        }
    delays = {fitted_to: {method: {band: d.to_dict() for band, d in bands.items()} for method, bands in methods.items()}
              for fitted_to, methods in report.effective_delays.items()}
    artefacts = report.artefacts.to_dict() if report.artefacts is not None else None
    return {"truth": report.truth_name, "n_test_samples": report.setup["n_test_samples"], "scores": scores,
            "comparisons": comparisons, "effective_delay": delays,
            "clean_samples": None if report.clean is None else int(report.artefacts.clean.sum()),
            "artefact_notes": None if artefacts is None else artefacts.get("notes")}


def _distinct_subsets(report: Any) -> list[str]:
    """The sample subsets scored that are not simply all samples again (on a simulation, where the
    detectors find no artefact, "clean" is every sample)."""
    n = report.setup["n_test_samples"]
    return [name for name, methods in report.subsets().items() if next(iter(methods.values())).predictions.shape[0] < n]


def run(args: argparse.Namespace, work: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Simulate (or reuse the simulation in `work`), choose the design (or reuse the choice saved
    there), then train and score each model; with `--json`, the document so far is written after
    each step (`<json>.partial.json`), so a stopped run keeps what it measured."""
    base = load_settings(args.config)
    duration_s = 60.0 * args.minutes
    name = f"sim-sample-{duration_s:g}s-seed{args.seed}"
    fif = work / f"{name}_raw.fif"
    document: dict[str, Any] = {"layout": "sample", "seed": args.seed, "minutes": args.minutes, "config": str(args.config),
                                "step_budget": args.step_budget, "bootstrap": args.bootstrap, "models": {}, "timings_s": {}}
    timings = document["timings_s"]
    started = time.perf_counter()
    if fif.exists():
        progress(f"simulation: reusing {fif.name}")
    else:
        progress(f"simulating {args.minutes:g} min of the `sample` layout (seed {args.seed})")
        simulate_recording(fif, duration_s, args.seed)
    timings["simulate_s"] = time.perf_counter() - started

    design_s = min(60.0 * args.design_minutes, base.data.split * duration_s)
    saved_design = work / f"{name}-design-{design_s:g}s.json"
    started = time.perf_counter()
    if saved_design.exists():
        progress(f"design: reusing {saved_design.name}")
        candidates = json.loads(saved_design.read_text())
    else:
        progress(f"choosing the low-delay input filter and lags on the first {design_s / 60:g} min (validation rows 60–75 % of them)")
        candidates = choose_design(fif, design_s, lambda line: progress(f"  design: {line}"))
        saved_design.write_text(json.dumps(candidates, indent=2) + "\n")
    chosen = best_candidate(candidates)
    timings["design_s"] = time.perf_counter() - started
    document["design"] = {"minutes": design_s / 60, "chosen": chosen, "candidates": candidates}
    progress(f"  chosen: {filter_label(chosen)}, lags {chosen['lags']} (validation r {chosen['validation_r']:.4f})")
    _write_partial(args, document)

    for which in MODELS:
        settings = model_settings(base, which, chosen)
        document["models"][which] = train_and_score(args, fif, settings, work / f"model-{which}-{name}", which, timings, progress)
        _write_partial(args, document)
    return document


def train_and_score(args: argparse.Namespace, fif: Path, settings: ExperimentSettings, out: Path, which: str,
                    timings: dict[str, float], progress: Callable[[str], None]) -> dict[str, Any]:
    """One model trained (or reused from `out`) and scored: its entry of the document. The report
    (several GB for a 16-minute simulation) lives only in here."""
    from brainformer.evaluation import evaluate_recording

    progress(f"training the {MODELS[which]} model (at most about {args.step_budget} steps)")
    started = time.perf_counter()
    model, training = train(fif, settings, out, args.step_budget, args.reuse_models)
    timings[f"train_{which}_s"] = time.perf_counter() - started
    progress(f"  {training['steps']} steps on {training['train_windows']} windows (hop {training['train_hop_samples']})"
             + (f" in {training['train_wall_s']:.0f} s" if training["train_wall_s"] is not None else ", reused"))
    progress(f"evaluating the {MODELS[which]} model against both truths, with effective delays")
    started = time.perf_counter()
    report, _ = evaluate_recording(model, fif, split=settings.data.split, settle_s=settings.data.settle_s,
                                   bootstrap_replicates=args.bootstrap, seed=args.seed)
    timings[f"evaluate_{which}_s"] = time.perf_counter() - started
    return {"model": dict(settings.model),
            "training": training | {"skip_lags": model.config.skip_lags, "ridge_lag_step_samples": settings.training.ridge_lag_step_samples},
            **summarise(report)}


def _write_partial(args: argparse.Namespace, document: dict[str, Any]) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_suffix(".partial.json").write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _interval(value: float, ci95: list[float]) -> str:
    return f"{value:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"


def scores_table(document: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title="held-out mean over 306 MEG channels [95 % block-bootstrap interval]; baselines fitted to each truth",
                  box=box.SIMPLE_HEAD)
    for column in ("model", "truth", "samples", "method", "mean r", "mean R²"):
        table.add_column(column, justify="right" if column.startswith("mean") else "left", no_wrap=True)
    for which, label in MODELS.items():
        result = document["models"][which]
        for truth, sets in result["scores"].items():
            for subset, methods in sets.items():
                for name, method_label in METHODS:
                    if name not in methods:
                        continue
                    entry = methods[name]
                    table.add_row(label, truth, subset, method_label, _interval(entry["r_mean"], entry["r_ci95"]),
                                  _interval(entry["r2_mean"], entry["r2_ci95"]), style="bold" if name == "model" else None)
                delta = result["comparisons"][truth]["model_minus_lagged_ridge"][subset]
                table.add_row(label, truth, subset, "model − lagged ridge",
                              f"{delta['r_mean']['value']:+.4f} [{delta['r_mean']['ci95'][0]:+.4f}, {delta['r_mean']['ci95'][1]:+.4f}]",
                              f"{delta['r2_mean']['value']:+.4f} [{delta['r2_mean']['ci95'][0]:+.4f}, {delta['r2_mean']['ci95'][1]:+.4f}]",
                              style="dim")
            table.add_section()
    return table


def delay_rows(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """`(model label, method label, {band: delay})` rows: each model's own prediction, the ridge
    maps fitted to the zero-phase truth and lagged ridge fitted to the causal one, on its input."""
    rows = []
    for which, label in MODELS.items():
        delays = document["models"][which]["effective_delay"]
        rows.append((label, "model", delays["zero-phase"]["model"]))
        for fitted_to, name in (("zero-phase", "lagged_ridge"), ("zero-phase", "ridge"), ("causal", "lagged_ridge")):
            rows.append((label, f"{dict(METHODS)[name]} (fitted to {fitted_to})", delays[fitted_to][name]))
        if "oracle" in delays["zero-phase"]:
            rows.append((label, "Wiener oracle", delays["zero-phase"]["oracle"]))
    return rows


def delays_table(document: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title="effective delay against the zero-phase truth: r at 0 ms │ lag of the peak, peak r", box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for band in BANDS:
        table.add_column(band.replace(" envelope", " env."), justify="right", no_wrap=True)
    for label, method, bands in delay_rows(document):
        cells = [f"{bands[b]['r_at_zero']:.3f} │ {bands[b]['lag_ms']:+.0f} ms {bands[b]['r_at_lag']:.3f}" for b in BANDS]
        table.add_row(label, method, *cells, style="bold" if method == "model" else None)
    return table


def design_table(document: dict[str, Any], top: int = 6) -> Any:
    from rich import box
    from rich.table import Table

    design = document["design"]
    table = Table(title=f"input filter and lags: zero-lag r against the zero-phase 4–30 Hz MEG, validation rows of the first "
                        f"{design['minutes']:g} min (best {top} of {len(design['candidates'])})", box=box.SIMPLE_HEAD)
    for column in ("input filter", "lags", "validation r"):
        table.add_column(column, justify="right" if column == "validation r" else "left")
    for row in sorted(design["candidates"], key=lambda row: -row["validation_r"])[:top]:
        table.add_row(filter_label(row), row["lags"], f"{row['validation_r']:.4f}", style="bold" if row == design["chosen"] else None)
    return table


def markdown_tables(document: dict[str, Any]) -> str:
    """The scores and the effective delays as markdown tables, for docs/lowdelay.md."""
    lines = ["| model | truth | samples | method | mean r [95 % CI] | mean R² [95 % CI] |", "|---|---|---|---|---|---|"]
    for which, label in MODELS.items():
        result = document["models"][which]
        for truth, sets in result["scores"].items():
            for subset, methods in sets.items():
                for name, method_label in METHODS:
                    if name in methods:
                        entry = methods[name]
                        cells = [_interval(entry["r_mean"], entry["r_ci95"]), _interval(entry["r2_mean"], entry["r2_ci95"])]
                        if name == "model":
                            method_label, cells = f"**{method_label}**", [f"**{cell}**" for cell in cells]
                        lines.append(f"| {label} | {truth} | {subset} | {method_label} | {cells[0]} | {cells[1]} |")
                delta = result["comparisons"][truth]["model_minus_lagged_ridge"][subset]
                lines.append(f"| {label} | {truth} | {subset} | model − lagged ridge | " + " | ".join(
                    f"{delta[key]['value']:+.4f} [{delta[key]['ci95'][0]:+.4f}, {delta[key]['ci95'][1]:+.4f}]" for key in ("r_mean", "r2_mean")) + " |")
    lines += ["", "| model | method | " + " | ".join(BANDS) + " |", "|---|---|" + "---|" * len(BANDS)]
    for label, method, bands in delay_rows(document):
        cells = [f"{bands[b]['r_at_zero']:.3f} · {bands[b]['lag_ms']:+.0f} ms, {bands[b]['r_at_lag']:.3f}" for b in BANDS]
        lines.append(f"| {label} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=16.0, help="length of the simulated recording (the last 25 %% held out)")
    parser.add_argument("--design-minutes", type=float, default=4.0,
                        help="choose the low-delay input filter on the first this many minutes (at most the training part)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train-sim.toml", help="the simulated-data recipe")
    parser.add_argument("--step-budget", type=int, default=200, help="cap each model at about this many optimiser steps")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the scores")
    parser.add_argument("--work", type=Path, default=None, help="keep the simulation and the models here (reused when present)")
    parser.add_argument("--reuse-models", action="store_true", help="score models an earlier run left in --work instead of training")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the scores and delays as markdown tables here")
    parser.add_argument("--from-json", type=Path, default=None, help="only show the tables of a run written by --json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Simulated data are plentiful and well conditioned: most ridge fits choose the smallest penalty
    # of the grid, and a warning per fit would bury the progress lines.
    logging.getLogger("brainformer.evaluation.baselines").setLevel(logging.ERROR)
    from rich.console import Console

    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    if args.from_json:
        document = json.loads(args.from_json.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="lowdelay-sim-") as scratch:
            work = args.work or Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            document = run(args, work, progress)
        document["total_s"] = time.perf_counter() - started
    console = Console(width=240)
    console.print(f"simulated `sample` layout, seed {document['seed']}: {document['minutes']:g} min, the last 25 % held out; "
                  f"{Path(document['config']).name}, at most about {document['step_budget']} steps per model; "
                  f"total {document['total_s']:.0f} s")
    console.print(design_table(document))
    console.print(scores_table(document))
    console.print(delays_table(document))
    if args.json and not args.from_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown_tables(document) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
