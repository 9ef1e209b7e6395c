"""The hop lookahead at reduced rank: what the linear path alone scores and what a hop costs.

On the default simulation of `benchmarks/transformer_controls.py` (trained on the first
`--minutes`, scored as served on the rest), the recipe's linear path (skip path and hop lookahead,
both in closed form, before any training step) with full per-position maps and with each of
`--ranks` (`hop_lookahead_rank`): its R² on the held-out rows, paired against the full maps with
the evaluation's block-bootstrap interval (`paired_r2_difference`), its weights, and the eager
forward per hop of the whole model as the daemon runs it (`serving_forward_time`: one torch
thread, the newest two hops), the models alternating over `--rounds` rounds, medians of the
round medians.

    python benchmarks/hop_lookahead_rank.py --work /tmp/controls --ranks 8 16 32 --json rank.json
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

from benchmarks.sim_oracle_curve import serving_forward_time  # noqa: E402
from benchmarks.transformer_controls import add_default_simulation_arguments, prepared_default_simulation  # noqa: E402
from brainformer import BrainformerConfig, BrainformerForMEGPrediction  # noqa: E402
from brainformer.evaluation import model_path_alone, paired_r2_difference, predict_as_served  # noqa: E402
from brainformer.settings import load_settings  # noqa: E402
from brainformer.training import init_hop_lookahead, initial_model, training_data_from_prepared  # noqa: E402


def with_rank(full: Any, rank: int, data: Any, settings: Any, skip: Any) -> Any:
    """`full` with its hop lookahead refitted at `rank`; every other weight the same."""
    model = BrainformerForMEGPrediction(BrainformerConfig(**{**full.config.to_dict(), "hop_lookahead_rank": rank}))
    model.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("hop_lookahead.")}, strict=False)
    init_hop_lookahead(model, data, settings, skip)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_default_simulation_arguments(parser)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.ranks) < 1:
        parser.error(f"--ranks: each rank is at least 1 (the full maps are always measured), got {args.ranks}")

    torch.set_num_threads(1)
    settings = load_settings(args.config)
    settings = dataclasses.replace(settings, model={**settings.model, "hop_lookahead_rank": 0})  # the full maps first
    _, prepared, rec, test_start = prepared_default_simulation(args, settings)
    data = training_data_from_prepared(prepared, settings)
    full, skip = initial_model(data, settings)
    models = {"full": full.eval()} | {f"rank {rank}": with_rank(full, rank, data, settings, skip) for rank in args.ranks}

    hop = full.config.hop_samples
    stop = test_start + (rec.n_samples - test_start) // hop * hop
    truth = np.asarray(rec.meg[test_start:stop], dtype=np.float64)
    served = {name: predict_as_served(model_path_alone(model, "skip"), rec.eeg, test_start, stop) for name, model in models.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        total = ((truth - truth.mean(0)) ** 2).sum(0)
        rows[name] = {"linear_path_r2": float(np.mean(1 - ((truth - served[name]) ** 2).sum(0) / total)),
                      "weights": int(sum(p.numel() for p in model.hop_lookahead.parameters())), "forward_ms": []}
        if name != "full":
            rows[name]["minus_full"] = paired_r2_difference(truth, served["full"], served[name],
                                                            list(full.config.meg_channel_types), rec.sfreq_hz)
    for _ in range(args.rounds):
        for name, model in models.items():
            rows[name]["forward_ms"].append(serving_forward_time(model)["forward_ms"])
    for name, row in rows.items():
        row["forward_ms_median"] = float(np.median(row["forward_ms"]))
        delta = f"  rank − full {row['minus_full']['value']:+.5f} [{row['minus_full']['ci95'][0]:+.5f}, " \
                f"{row['minus_full']['ci95'][1]:+.5f}]" if "minus_full" in row else ""
        print(f"{name:<8s} linear path alone {row['linear_path_r2']:.4f}  {row['weights']:>9,d} weights  "
              f"forward {row['forward_ms_median']:.2f} ms per hop{delta}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
