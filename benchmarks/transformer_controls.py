"""Controls that can fail: does the repo's simulated-data recipe find what is there to find?

One `sample`-layout simulation of `--minutes` + `--test-minutes` (default simulator, seed
`--seed`) and the same recording with the planted non-linear term (`simulate(...,
planted_share=--planted-share)`: identical EEG, the MEG plus a known term computable from the EEG,
`brainformer.simulation.planted`). Models are trained on the first `--minutes` with `--config`
(default `configs/train-sim-gain.toml`, the amplitude-aware recipe with the linear path's hop
lookahead; `configs/train-sim.toml` is the one without either), scaling and baselines fitted
there, and scored as served on the last `--test-minutes`:

1. *transformer alone*: the recipe without the linear path (`skip_lags = 0`, no hop lookahead),
   its gain head given 32 more filters started on the EEG's principal components with zero
   channel weights (`transformer_alone`), trained from scratch on the default simulation: it must
   reach the lagged ridge's R² (it can at least be a good linear filter). Met when the paired
   95 % interval of "model − lagged ridge" reaches 0. Reported next to it: the lagged ridge's own
   map trained by gradient with the same settings and steps (`benchmarks/linear_by_gradient.py`),
   which separates what the optimiser allows from what the transformer adds.
2. *in-hop lookahead*: the recipe on the default simulation. A served window's older samples see
   up to hop − 1 samples of their own future; the best linear filter using them
   (`simulation.hop_limit`) is worth `hop limit − causal limit` over the best causal filter on
   lagged ridge's lags. Met when model − lagged ridge reaches 70 % of that.
3. *planted non-linearity*: the recipe on the planted simulation. Captured fraction of the
   planted term P (known exactly on the test rows, `simulation.planted_meg`) by a prediction with
   residual e: `1 − Σ_c ⟨e_c, P_c⟩ / SST_c  /  Σ_c ‖P_c‖² / SST_c` (P left in the residual is not
   captured; 0 for a prediction that ignores P, 1 for one that predicts it exactly). Met when the
   model captures ≥ 70 % and lagged ridge little.

And the goal on the default simulation: model ≥ lagged ridge + 0.005 R², with the transformer's own
share (model − linear path alone, i.e. `skip_path_alone`: the skip path and its hop lookahead,
`brainformer.evaluation.ablation`) > 0 and its bootstrap interval above 0. Every table carries
the headroom from the truth: the causal limit (lagged ridge's lags), the hop limit, the linear limit, the envelope-informed limit, the informed limit, the noise ceiling
(`brainformer.simulation`; computed once per subject and band and cached in `--work`).

The controls are judged against the truth the recipe trains on (the causal band-passed MEG).
Every model, its two paths and the baselines are also scored against the other truth, the
zero-phase band-passed MEG at zero lag (what a closed loop feels), the baselines refitted to it
on the same train rows: reported next to the verdicts, not judged.

    python benchmarks/transformer_controls.py --work /tmp/controls --json controls.json
    python benchmarks/transformer_controls.py --minutes 4 --test-minutes 1 --controls 3 --max-steps 200 --no-limits --work /tmp/controls   # a quick look

Training is capped by the config's `training.max_steps` (or `--max-steps`); the wall time of each
training is reported. Run it under `nice` on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.sim_oracle_curve import _prepared_point, serving_forward_time  # noqa: E402
from brainformer.evaluation import SplitRows, ablation_predictors, evaluate_arrays, lag_samples  # noqa: E402
from brainformer.settings import LR_SCHEDULERS, ExperimentSettings, TrainingSettings, load_settings  # noqa: E402
from brainformer.training import train_model, training_data_from_prepared  # noqa: E402

logger = logging.getLogger("transformer_controls")

#: Control 1's extra gain filters on principal components: a linear map of rank 32 reaches the
#: lagged ridge on the default simulation (docs/transformer.md).
TRANSFORMER_ALONE_COMPONENTS = 32
#: A control is met at this captured fraction (of the lookahead, of the planted term).
CAPTURED_GOAL = 0.7
#: The goal on the default simulation, in R² over lagged ridge.
GOAL_OVER_LAGGED_RIDGE = 0.005
#: Lagged ridge "captures little" of the planted term below this fraction.
LAGGED_RIDGE_LITTLE = 0.1


def simulations(work: Path, minutes: float, test_minutes: float, seed: int, planted_share: float,
                kinds: set[str]) -> dict[str, Path]:
    """The default and the planted simulation's paths; those of `kinds` written once into `work`."""
    from brainformer.simulation import write_simulation

    duration_s = 60.0 * (minutes + test_minutes)
    paths = {"default": work / f"sim-{duration_s:g}s-seed{seed}_raw.fif",
             "planted": work / f"sim-{duration_s:g}s-seed{seed}-planted{planted_share:g}_raw.fif"}
    for kind, path in paths.items():
        if kind in kinds and not path.exists():
            started = time.perf_counter()
            write_simulation("sample", duration_s, None, seed, path, planted_share=planted_share if kind == "planted" else 0.0)
            logger.warning("simulated %s in %.0f s", path.name, time.perf_counter() - started)
    return paths


def transformer_alone(settings: ExperimentSettings) -> ExperimentSettings:
    """Control 1's settings: the recipe without its linear path (no skip path, no hop lookahead),
    its gain head given `TRANSFORMER_ALONE_COMPONENTS` more filters started on the EEG's principal
    components (`training.gain_filters_on_components`), where it can learn the linear map."""
    model = {**settings.model, "skip_lags": 0, "hop_lookahead_past_samples": 0}
    model["gain_filters"] = model.get("gain_filters", 0) + TRANSFORMER_ALONE_COMPONENTS
    training = dataclasses.replace(settings.training, init_filters_from_bands=True,
                                   gain_filters_on_components=TRANSFORMER_ALONE_COMPONENTS)
    return dataclasses.replace(settings, model=model, training=training)


def add_default_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    """`--work`, `--minutes`, `--test-minutes`, `--seed`, `--config`: the default simulation and
    recipe of these controls, for the closed-form checks that share them."""
    parser.add_argument("--work", type=Path, required=True, help="where transformer_controls.py keeps its simulations")
    parser.add_argument("--minutes", type=float, default=16.0, help="training data (minutes)")
    parser.add_argument("--test-minutes", type=float, default=2.0, help="held-out part at the end")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train-sim-gain.toml")


def prepared_default_simulation(args: argparse.Namespace, settings: ExperimentSettings) -> tuple[Path, Any, Any, int]:
    """`(fif, prepared, recording, test start row)`: the default simulation of `args`
    (`add_default_simulation_arguments`), written once, prepared with `settings` as the controls
    prepare it (train part the first `--minutes`)."""
    args.work.mkdir(parents=True, exist_ok=True)
    fif = simulations(args.work, args.minutes, args.test_minutes, args.seed, 0.0, {"default"})["default"]
    prepared, rec, test_start = _prepared_point(fif, settings, 60.0 * args.minutes, 60.0 * args.minutes)
    return fif, prepared, rec, test_start


def limits(fif: Path, config: Any, work: Path) -> dict[str, float]:
    """Mean expected R² of the limits for `config`'s band and channels (cached in `work`)."""
    from brainformer import simulation

    truth = simulation.load_truth(fif)
    key = f"limits-subject{truth.subject}-{config.highpass_hz}-{config.lowpass_hz}-{config.filter_order}-{config.target_phase}-hop{config.hop_samples}.json"
    cache = work / key
    if cache.exists():
        return json.loads(cache.read_text())
    lags = lag_samples(config.sfreq_hz)
    started = time.perf_counter()
    values = {
        "causal_limit": float(np.mean(simulation.causal_limit(truth, config, lags))),
        "hop_limit": float(np.mean(simulation.hop_limit(truth, config, lags, config.hop_samples))),
        "linear_limit": float(np.mean(simulation.linear_limit(truth, config))),
        "envelope_informed_limit": float(np.mean(simulation.envelope_informed_limit(truth, config))),
        "informed_limit": float(np.mean(simulation.informed_limit(truth, config))),
        "noise_ceiling": float(np.mean(simulation.noise_ceiling(truth, config))),
    }
    values["seconds"] = time.perf_counter() - started
    cache.write_text(json.dumps(values, indent=2) + "\n")
    return values


def run(fif: Path, settings: ExperimentSettings, train_s: float, test_start_s: float, out: Path, reuse: bool,
        bootstrap: int, linear_reference: bool = False) -> dict[str, Any]:
    """Train (or reuse) a model on `[0, train_s)` of `fif` and score it, its two paths and the
    baselines on the test rows; with a planted term, each method's captured fraction of it; with
    `linear_reference`, next to the lagged ridge's map trained by gradient as the model was
    (`linear_by_gradient`)."""
    from brainformer import simulation
    from brainformer.model_dir import load_model

    prepared, rec, test_start = _prepared_point(fif, settings, train_s, test_start_s)
    data = training_data_from_prepared(prepared, settings)
    train_wall_s = None
    if reuse and (out / "model.safetensors").is_file():
        model = load_model(out)
    else:
        started = time.perf_counter()
        model = train_model(data, settings, out, progress=False).model
        train_wall_s = time.perf_counter() - started
    model = model.eval()
    extra = {"linear_by_gradient": linear_by_gradient(rec, test_start, settings, data)} if linear_reference else {}
    report, scores = scored_against(rec.meg, model, rec, test_start, bootstrap, extra)
    row: dict[str, Any] = {
        "recording": fif.name, "train_minutes": train_s / 60, "train_windows": len(data.train),
        "max_steps": settings.training.max_steps, "train_wall_s": train_wall_s, **scores,
        "serving": serving_forward_time(model),
        "config": {key: getattr(model.config, key) for key in (
            "d_model", "n_layers", "patch_len", "window_samples", "skip_lags", "gain_filters", "gain_filter_past_samples",
            "gain_filter_lookahead_samples", "envelope_filters", "envelope_filter_samples", "final_norm",
            "hop_lookahead_past_samples", "hop_lookahead_rank")},
    }
    truth = simulation.load_truth(fif)
    if truth.planted_source is not None:
        row["planted"] = captured_fractions(report, simulation.planted_meg(truth, model.config)[test_start:rec.n_samples])
        row["planted"]["expected_share"] = float(np.mean(simulation.planted_share(truth, model.config)))
    row["other_truth"] = other_truth_scores(fif, model, rec, test_start, bootstrap, truth)
    return row


def lagged_rows(eeg: torch.Tensor, rows: torch.Tensor, lags: tuple[int, ...]) -> torch.Tensor:
    """`(len(rows), n_eeg · len(lags))`: each row's EEG at every lag."""
    return torch.cat([eeg[rows - lag] for lag in lags], dim=1)


def train_linear(eeg: np.ndarray, meg: np.ndarray, train: tuple[int, int], test: tuple[int, int], lags: tuple[int, ...],
                 training: TrainingSettings, steps: int, checkpoints: int, window_samples: int) -> dict[int, np.ndarray]:
    """`{step: predictions of the test rows}` of the lagged linear map on `lags`, started at zero and
    trained on the `train` rows as `training` trains a model (`benchmarks/linear_by_gradient.py`
    says how), for `steps` steps, predicting at `checkpoints` evenly spaced ones."""
    from transformers import get_scheduler

    from brainformer.training import _HF_SCHEDULERS

    generator = torch.Generator().manual_seed(training.seed)  # the weights start at zero: no other draw
    x, y = torch.from_numpy(np.asarray(eeg, dtype=np.float32)), torch.from_numpy(np.asarray(meg, dtype=np.float32))
    linear = torch.nn.Linear(x.shape[1] * len(lags), y.shape[1])
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimiser = torch.optim.AdamW([{"params": [linear.weight], "weight_decay": training.weight_decay},
                                   {"params": [linear.bias], "weight_decay": 0.0}], lr=training.learning_rate)
    schedule = get_scheduler(_HF_SCHEDULERS[training.lr_scheduler], optimiser,
                             num_warmup_steps=int(np.ceil(training.warmup_ratio * steps)), num_training_steps=steps)
    newest = training.loss_last_samples or window_samples
    first_end = train[0] + max(window_samples, max(lags) + newest)  # a window's newest row, its lags inside the train rows
    test_rows = torch.arange(test[0], test[1])
    at = set(np.linspace(steps / checkpoints, steps, checkpoints).round().astype(int))
    predictions = {}
    for step in range(1, steps + 1):
        ends = torch.randint(first_end, train[1], (training.batch_size,), generator=generator)
        rows = (ends[:, None] - torch.arange(newest)[None]).flatten()
        inputs = lagged_rows(x, rows, lags)
        if training.noise_std:
            inputs = inputs + training.noise_std * torch.randn(inputs.shape, generator=generator)
        loss = torch.nn.functional.mse_loss(linear(inputs), y[rows])
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(linear.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step in at:
            with torch.no_grad():
                predictions[step] = torch.cat([linear(lagged_rows(x, part, lags)) for part in test_rows.split(20_000)]).numpy()
    return predictions


def linear_by_gradient(rec: Any, test_start: int, settings: ExperimentSettings, data: Any) -> Callable[[int, int], np.ndarray]:
    """The lagged ridge's map trained by gradient with `settings.training` for as many steps as the
    model (`benchmarks/linear_by_gradient.py`), as a predictor of the test rows."""
    training = settings.training
    steps = training.max_steps or training.epochs * -(-len(data.train) // training.batch_size)
    lags = tuple(int(lag) for lag in lag_samples(rec.sfreq_hz))
    test = (test_start, rec.n_samples)
    predictions = train_linear(rec.eeg, rec.meg, rec.parts["train"], test, lags, training, steps, 1,
                               data.config.window_samples)[steps]

    def predict(start: int, stop: int) -> np.ndarray:
        if start < test_start:
            raise ValueError(f"linear_by_gradient predicts the test rows, from {test_start}; asked from {start}")
        return predictions[start - test_start:stop - test_start]

    return predict


def scored_against(meg: np.ndarray, model: Any, rec: Any, test_start: int, bootstrap: int,
                   extra: dict[str, Callable[[int, int], np.ndarray]] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model as served, its two paths, the baselines (fitted on the train rows to `meg`) and
    `extra` predictors scored against `meg` on the test rows: the report, and its `r2`,
    `r2_ci95`, `model_minus`."""
    train = rec.parts["train"]
    report = evaluate_arrays(
        rec.eeg, meg, rec.sfreq_hz, SplitRows(train[0], train[1], test_start, rec.n_samples),
        model.config.meg_channel_types, model.config.meg_channel_names, model=model,
        extra_predictors={**ablation_predictors(model, rec.eeg), **(extra or {})}, bootstrap_replicates=bootstrap,
    )
    scores = report.to_dict()
    return report, {
        "r2": {name: float(scores[name]["r2_mean"]) for name in report.methods},
        "r2_ci95": {name: scores[name]["bootstrap"]["r2_mean"]["ci95"] for name in report.methods},
        "model_minus": {name[len("model_minus_"):]: c["r2_mean"] for name, c in scores["comparisons"].items()},
    }


def other_truth_scores(fif: Path, model: Any, rec: Any, test_start: int, bootstrap: int, truth: Any) -> dict[str, Any]:
    """The same model, paths and baselines scored against the other truth (`other_truth_meg`),
    the baselines refitted to it on the same train rows."""
    from brainformer import simulation

    name, meg, fields = other_truth_meg(fif, model.config)
    report, scores = scored_against(meg, model, rec, test_start, bootstrap)
    other: dict[str, Any] = {"truth": name, **scores}
    if truth.planted_source is not None:
        other["planted"] = captured_fractions(report, simulation.planted_meg(truth, fields)[test_start:rec.n_samples])
    return other


def other_truth_meg(fif: Path, config: Any) -> tuple[str, np.ndarray, Any]:
    """`(name, meg, fields)`: the MEG of `fif` through `config`'s preprocessing with the other
    target phase (the zero-phase band-pass for a model trained on the causal one), scaled as the
    model's own truth is, on the same rows: the other truth `brainformer evaluate` scores against."""
    from brainformer.config_fields import BrainformerFields
    from brainformer.data import read_raw
    from brainformer.evaluation import TRUTH_NAMES
    from brainformer.preprocessing import is_zero_phase_target, preprocess_recording

    phase = "causal" if is_zero_phase_target(config) else "zero_phase"
    fields = BrainformerFields.from_config(config).replace(target_phase=phase)
    return TRUTH_NAMES[phase], preprocess_recording(read_raw(fif), fields).meg, fields


def captured_fractions(report: Any, planted: np.ndarray) -> dict[str, Any]:
    """The planted term's share of the test rows' variance and each method's captured fraction
    of it (see the module docstring)."""
    truth = report.truth
    total = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)  # SST per channel
    share = float(np.mean((planted**2).sum(axis=0) / total))
    captured = {}
    for name, result in report.methods.items():
        left = float(np.mean(((truth - result.predictions) * planted).sum(axis=0) / total))
        captured[name] = 1.0 - left / share
    return {"share_test_rows": share, "captured": captured}


def verdicts(rows: dict[str, dict[str, Any]], lims: dict[str, float]) -> list[dict[str, Any]]:
    """One line per control and goal: what was measured, the goal, met or not."""
    lines = []
    if "transformer_alone" in rows:
        delta = rows["transformer_alone"]["model_minus"]["lagged_ridge"]
        lines.append({"control": "1. transformer alone (no skip path) vs lagged ridge", "measured": delta["value"],
                      "ci95": delta["ci95"], "goal": "interval reaches 0", "met": delta["ci95"][1] >= 0})
        if "linear_by_gradient" in rows["transformer_alone"]["model_minus"]:
            delta = rows["transformer_alone"]["model_minus"]["linear_by_gradient"]
            lines.append({"control": "1. … vs the lagged ridge's map trained the same way", "measured": delta["value"],
                          "ci95": delta["ci95"], "goal": "interval reaches 0", "met": delta["ci95"][1] >= 0})
    if "recipe" in rows:
        row = rows["recipe"]
        delta = row["model_minus"]["lagged_ridge"]
        if lims:
            available = lims["hop_limit"] - lims["causal_limit"]
            lines.append({"control": "2. in-hop lookahead: model − lagged ridge", "measured": delta["value"], "ci95": delta["ci95"],
                          "available": available, "goal": f"≥ {CAPTURED_GOAL:.0%} of the available",
                          "met": delta["value"] >= CAPTURED_GOAL * available})
        share = row["model_minus"]["skip_path_alone"]
        lines.append({"control": "goal: model − lagged ridge", "measured": delta["value"], "ci95": delta["ci95"],
                      "goal": f"≥ +{GOAL_OVER_LAGGED_RIDGE}", "met": delta["value"] >= GOAL_OVER_LAGGED_RIDGE})
        lines.append({"control": "goal: the transformer's own share (model − linear path alone)", "measured": share["value"],
                      "ci95": share["ci95"], "goal": "> 0, interval above 0", "met": share["ci95"][0] > 0})
    if "planted" in rows:
        planted = rows["planted"]["planted"]
        captured = planted["captured"]
        lines.append({"control": "3. planted non-linearity: captured by the model", "measured": captured["model"],
                      "share": planted["share_test_rows"], "goal": f"≥ {CAPTURED_GOAL:.0%}",
                      "met": captured["model"] >= CAPTURED_GOAL})
        lines.append({"control": "3. planted non-linearity: captured by lagged ridge", "measured": captured["lagged_ridge"],
                      "goal": f"< {LAGGED_RIDGE_LITTLE:.0%}", "met": captured["lagged_ridge"] < LAGGED_RIDGE_LITTLE})
    return lines


def print_tables(rows: dict[str, dict[str, Any]], lims: dict[str, float], lines: list[dict[str, Any]]) -> None:
    columns = ("model", "skip_path_alone", "transformer_alone", "linear_by_gradient", "lagged_ridge", "ridge")
    print("\nrun                 " + "".join(f"{c:>19s}" for c in columns) + f"{'train s':>9s}{'fwd ms':>8s}")
    for name, row in rows.items():
        values = "".join(f"{row['r2'].get(c, float('nan')):19.4f}" for c in columns)
        print(f"{name:<20s}{values}{row['train_wall_s'] or 0:9.0f}{row['serving']['forward_ms']:8.2f}")
    others = {name: row["other_truth"] for name, row in rows.items() if "other_truth" in row}
    if others:
        truth_name = next(iter(others.values()))["truth"]
        print(f"\nthe same models against the {truth_name} truth (baselines refitted to it)")
        for name, other in others.items():
            values = "".join(f"{other['r2'].get(c, float('nan')):19.4f}" for c in columns)
            delta = other["model_minus"]["lagged_ridge"]
            captured = f"  planted captured {other['planted']['captured']['model']:.0%}" if "planted" in other else ""
            print(f"{name:<20s}{values}  model − lagged ridge {delta['value']:+.4f} "
                  f"[{delta['ci95'][0]:+.4f}, {delta['ci95'][1]:+.4f}]{captured}")
    if lims:
        print("limits (expected R², mean over channels): " + ", ".join(f"{k} {v:.4f}" for k, v in lims.items() if k != "seconds"))
    for line in lines:
        extra = "".join(f", {k} {line[k]:+.4f}" for k in ("available", "share") if k in line)
        ci = f" [{line['ci95'][0]:+.4f}, {line['ci95'][1]:+.4f}]" if "ci95" in line else ""
        print(f"{line['control']:<58s} {line['measured']:+.4f}{ci}{extra}  goal {line['goal']}: {'met' if line['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_default_simulation_arguments(parser)  # --work keeps the simulations, the limits and the models
    parser.add_argument("--planted-share", type=float, default=0.04, help="planted term's share of each MEG channel")
    parser.add_argument("--max-steps", type=int, default=None, help="override training.max_steps")
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=None, help="override training.lr_scheduler")
    parser.add_argument("--controls", nargs="+", default=["1", "2", "3"], choices=["1", "2", "3"])
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--reuse-models", action="store_true", help="score models an earlier run left in --work")
    parser.add_argument("--no-limits", action="store_true",
                        help="leave the limits out (computing them once takes about half an hour on 2 cores)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    settings = load_settings(args.config)
    overrides = {key: value for key, value in (("max_steps", args.max_steps), ("lr_scheduler", args.lr_scheduler))
                 if value is not None}
    settings = dataclasses.replace(settings, training=dataclasses.replace(settings.training, **overrides))
    args.work.mkdir(parents=True, exist_ok=True)
    kinds = ({"default"} if {"1", "2"} & set(args.controls) else set()) | ({"planted"} if "3" in args.controls else set())
    fifs = simulations(args.work, args.minutes, args.test_minutes, args.seed, args.planted_share, kinds)
    train_s, test_start_s = 60.0 * args.minutes, 60.0 * args.minutes
    runs = {
        "transformer_alone": ("1", fifs["default"], transformer_alone(settings)),
        "recipe": ("2", fifs["default"], settings),
        "planted": ("3", fifs["planted"], settings),
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, (control, fif, run_settings) in runs.items():
        if control in args.controls:
            rows[name] = run(fif, run_settings, train_s, test_start_s, args.work / f"model-{name}", args.reuse_models,
                             args.bootstrap, linear_reference=name == "transformer_alone")
            print(f"{name}: {json.dumps(rows[name]['r2'])}", file=sys.stderr, flush=True)
            if args.json:
                args.json.with_suffix(".partial.json").write_text(json.dumps(rows, indent=2) + "\n")
    some_row = next(iter(rows.values()))
    from brainformer.model_dir import load_model

    # The limits are those of the simulation without the planted term (they leave it out of the
    # truth's components, and the plan is the same with it): either recording's truth gives them.
    lims = {} if args.no_limits else limits(fifs["default" if "default" in kinds else "planted"],
                                            load_model(args.work / f"model-{next(iter(rows))}").config, args.work)
    lines = verdicts(rows, lims)
    print_tables(rows, lims, lines)
    document = {"minutes": args.minutes, "test_minutes": args.test_minutes, "seed": args.seed,
                "planted_share": args.planted_share, "config": str(args.config), "runs": rows, "limits": lims,
                "controls": lines, "train_minutes": some_row["train_minutes"]}
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
