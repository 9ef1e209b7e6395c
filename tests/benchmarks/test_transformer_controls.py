"""benchmarks/transformer_controls.py: the captured fraction and the verdicts mean what its
docstring says (the measured runs are in docs/transformer.md; each trains for many minutes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.transformer_controls import CAPTURED_GOAL, captured_fractions, verdicts


def _report(truth: np.ndarray, **predictions: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(truth=truth, methods={name: SimpleNamespace(predictions=p) for name, p in predictions.items()})


def test_the_captured_fraction_is_one_for_the_planted_term_predicted_and_zero_for_it_ignored():
    rng = np.random.default_rng(0)
    rest, planted = rng.standard_normal((4000, 3)), 0.3 * rng.standard_normal((4000, 3))
    truth = rest + planted
    report = _report(truth, model=truth, lagged_ridge=rest, half=rest + 0.5 * planted, ridge=np.zeros_like(truth))
    result = captured_fractions(report, planted)
    captured = result["captured"]
    assert captured["model"] == pytest.approx(1.0)
    assert captured["half"] == pytest.approx(0.5, abs=0.01)
    # Ignoring the term captures none of it; so does predicting nothing at all, up to chance
    # correlation of the term with the rest (it is independent here).
    assert captured["lagged_ridge"] == pytest.approx(0.0, abs=0.02)
    assert captured["ridge"] == pytest.approx(0.0, abs=0.05)
    assert result["share_test_rows"] == pytest.approx(0.09 / 1.09, rel=0.05)


def _row(model_minus_lagged: float, skip_share: tuple[float, float], captured_model: float | None = None) -> dict:
    delta = {"value": model_minus_lagged, "ci95": [model_minus_lagged - 0.001, model_minus_lagged + 0.001]}
    row = {"model_minus": {"lagged_ridge": delta,
                           "skip_path_alone": {"value": sum(skip_share) / 2, "ci95": list(skip_share)}}}
    if captured_model is not None:
        row["planted"] = {"captured": {"model": captured_model, "lagged_ridge": 0.01}, "share_test_rows": 0.04}
    return row


def test_verdicts_follow_the_goals_and_need_no_limits_but_for_the_lookahead():
    rows = {"recipe": _row(0.006, (0.004, 0.008)), "planted": _row(0.03, (0.02, 0.04), captured_model=CAPTURED_GOAL + 0.01)}
    lines = {line["control"]: line["met"] for line in verdicts(rows, {})}
    assert not any(name.startswith("2.") for name in lines)  # the lookahead control needs the limits
    assert lines["goal: model − lagged ridge"] and lines["goal: the transformer's own share (model − linear path alone)"]
    assert lines["3. planted non-linearity: captured by the model"]
    with_limits = verdicts({"recipe": _row(0.002, (-0.001, 0.004))}, {"hop_limit": 0.598, "causal_limit": 0.592})
    met = {line["control"]: line["met"] for line in with_limits}
    assert met == {"2. in-hop lookahead: model − lagged ridge": False, "goal: model − lagged ridge": False,
                   "goal: the transformer's own share (model − linear path alone)": False}


def test_the_other_truth_is_the_one_brainformer_evaluate_scores_against(sample_fif):
    from benchmarks.transformer_controls import other_truth_meg
    from brainformer.evaluation import evaluate_recording
    from brainformer.model_dir import load_model

    model = load_model("default")
    report, _ = evaluate_recording(model, sample_fif, bootstrap_replicates=2)
    name, meg, fields = other_truth_meg(sample_fif, model.config)
    assert name == "zero-phase" and fields.target_phase == "zero_phase"
    rows = report.rows
    assert np.array_equal(meg[rows.test_start:rows.test_stop], report.other_truths[name].truth)
    # Not the model's own truth: the phase differs, the scaling does not.
    assert not np.allclose(meg[rows.test_start:rows.test_stop], report.truth, atol=0.05)
    assert np.std(meg[rows.test_start:rows.test_stop]) == pytest.approx(np.std(report.truth), rel=0.2)
