"""The bundled models on real data, their two paths apart: skip path alone, transformer alone, both.

For each bundled model (`default`, `default-lowdelay`) the held-out last 25 % of the bundled
recording is scored as `brainformer evaluate` scores it (as served, hop by hop; baselines fitted
on the first 75 % in the same run; against the model's own truth, causal or zero-phase), on all
and on the clean (artefact-free) samples, with the trained model's skip path alone and its
transformer alone (`brainformer.evaluation.ablation`: the other path zeroed) next to it. The
transformer's own share is "model − skip alone", with its paired 0.5 s block-bootstrap interval.

    python benchmarks/bundled_ablation.py --json ablation.json
    python benchmarks/bundled_ablation.py --models runs/my-model   # a model trained the same way

With the hop lookahead (`hop_lookahead_past_samples`), "skip path alone" is the linear path: the
skip path and its lookahead.

Prints one table per model and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainformer.evaluation import SKIP_ALONE, TRANSFORMER_ALONE, model_path_alone  # noqa: E402
from brainformer.evaluation.scoring import evaluate_recording  # noqa: E402
from brainformer.model_dir import load_model  # noqa: E402
from brainformer.paths import SAMPLE_RECORDING  # noqa: E402

MODELS = ("default", "default-lowdelay")
#: Rows of each table: (method key in the report, label).
ROWS = (("model", "model (both paths)"), (SKIP_ALONE, "skip path alone"), (TRANSFORMER_ALONE, "transformer alone"),
        ("lagged_ridge", "lagged ridge"), ("ridge", "ridge"))


def ablation(name: str, bootstrap: int) -> dict[str, Any]:
    """The bundled model `name` scored with its two paths apart, on all and clean samples."""
    model = load_model(name)
    others = {SKIP_ALONE: model_path_alone(model, "skip"), TRANSFORMER_ALONE: model_path_alone(model, "transformer")}
    report, _ = evaluate_recording(model, SAMPLE_RECORDING, bootstrap_replicates=bootstrap, other_models=others)
    scores = report.to_dict()
    out: dict[str, Any] = {"model": name, "truth": report.truth_name, "target_phase": model.config.target_phase,
                           "skip_lags": model.config.skip_lags, "samples": {}, "methods": {}, "transformer_share": {}}
    for subset in ("all", "clean"):
        for key, _ in ROWS:
            entry = scores[key] if subset == "all" else scores[key]["clean"]
            out["methods"].setdefault(key, {})[subset] = {
                "r2": entry["r2_mean"], "r": entry["r_mean"], "r2_ci95": entry["bootstrap"]["r2_mean"]["ci95"],
            }
        comparison = scores["comparisons"][f"model_minus_{SKIP_ALONE}"]
        comparison = comparison if subset == "all" else comparison["clean"]
        out["transformer_share"][subset] = comparison["r2_mean"]
        out["samples"][subset] = (scores["setup"]["n_test_samples"] if subset == "all"
                                  else scores[ROWS[0][0]]["clean"]["n_samples"])
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']} (target {result['target_phase']}, scored against the {result['truth']} truth; "
          f"skip path {result['skip_lags']} lags): {result['samples']['all']} held-out samples, "
          f"{result['samples']['clean']} clean")
    print(f"{'method':<22s} {'R² all [95 %]':>28s} {'R² clean [95 %]':>28s}")
    for key, label in ROWS:
        cells = []
        for subset in ("all", "clean"):
            m = result["methods"][key][subset]
            cells.append(f"{m['r2']:.4f} [{m['r2_ci95'][0]:.3f}, {m['r2_ci95'][1]:.3f}]")
        print(f"{label:<22s} {cells[0]:>28s} {cells[1]:>28s}")
    for subset in ("all", "clean"):
        share = result["transformer_share"][subset]
        print(f"transformer's share ({subset}): model − skip alone = {share['value']:+.5f} R² "
              f"[{share['ci95'][0]:+.5f}, {share['ci95'][1]:+.5f}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="bundled model names (default, default-lowdelay) or model directories trained on the "
                             "bundled recording's first 75 %%")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = [ablation(name, args.bootstrap) for name in args.models]
    for result in results:
        print_table(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
