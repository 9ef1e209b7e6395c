"""The lagged ridge's own linear map trained by gradient, the way the recipe trains a model.

Control 1 of `benchmarks/transformer_controls.py` asks a model trained by gradient to reach the
lagged ridge, which is solved in closed form. This separates what the optimiser allows from what
the transformer adds: the lagged ridge's map (the evaluation's lags, 0 … 50 ms, on every EEG
channel, plus a bias), started at zero and trained on the same recording (`--minutes` train
rows) with the recipe's training settings (`--config`): AdamW at its learning rate and weight
decay (none on the bias), its warm-up and schedule (`--lr-scheduler` overrides), gradient norms
clipped at 1 as the Trainer does, batches of `batch_size` windows' newest `loss_last_samples`
samples at random train positions, its input noise, `--max-steps` steps. Scored on the held-out
rows at `--checkpoints` evenly spaced steps, each paired against the closed-form lagged ridge
fitted on the same train rows (`paired_r2_difference`, the evaluation's block bootstrap).

    python benchmarks/linear_by_gradient.py --work /tmp/controls --max-steps 2000 --lr-scheduler constant cosine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.transformer_controls import add_default_simulation_arguments, prepared_default_simulation, train_linear  # noqa: E402
from brainformer.evaluation import fit_ridge, lag_samples, paired_r2_difference, r_squared  # noqa: E402
from brainformer.settings import LR_SCHEDULERS, load_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_default_simulation_arguments(parser)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--lr-scheduler", nargs="+", choices=LR_SCHEDULERS, default=None,
                        help="schedules to train with (default: the config's)")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.max_steps < 1 or args.checkpoints < 1:
        parser.error("--max-steps and --checkpoints: each at least 1")

    torch.set_num_threads(1)
    settings = load_settings(args.config)
    _, prepared, rec, test_start = prepared_default_simulation(args, settings)
    train, test = rec.parts["train"], (test_start, rec.n_samples)
    lags = tuple(int(lag) for lag in lag_samples(rec.sfreq_hz))
    closed_form = fit_ridge(rec.eeg, rec.meg, lags, *train).predict(rec.eeg, *test)
    truth = np.asarray(rec.meg[test[0]:test[1]], dtype=np.float64)
    channel_types = list(prepared.fields.meg_channel_types)
    result: dict[str, Any] = {"steps": args.max_steps, "lags": list(lags), "schedules": {},
                              "closed_form_r2": float(np.nanmean(r_squared(truth, closed_form)))}
    for scheduler in args.lr_scheduler or [settings.training.lr_scheduler]:
        training = dataclasses.replace(settings.training, lr_scheduler=scheduler)
        trained = train_linear(rec.eeg, rec.meg, train, test, lags, training, args.max_steps, args.checkpoints,
                               prepared.fields.window_samples)
        rows = {}
        for step, prediction in trained.items():
            gap = paired_r2_difference(truth, closed_form, prediction, channel_types, rec.sfreq_hz)
            del gap["reference"]  # result["closed_form_r2"]
            rows[step] = {"r2": gap.pop("other"), "minus_closed_form": gap}
            print(f"{scheduler:>8s} step {step:5d}: R² {rows[step]['r2']:.4f}, minus the closed-form lagged ridge "
                  f"{gap['value']:+.4f} [{gap['ci95'][0]:+.4f}, {gap['ci95'][1]:+.4f}]", flush=True)
        result["schedules"][scheduler] = rows
    print(f"closed-form lagged ridge: {result['closed_form_r2']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
