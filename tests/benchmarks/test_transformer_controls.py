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


def test_control_1_is_the_recipe_without_its_linear_path_and_with_component_filters():
    from benchmarks.transformer_controls import TRANSFORMER_ALONE_COMPONENTS, transformer_alone
    from brainformer.settings import load_settings

    recipe = load_settings("configs/train-sim-gain.toml")
    alone = transformer_alone(recipe)
    assert alone.model["skip_lags"] == 0 and alone.model["hop_lookahead_past_samples"] == 0
    assert alone.model["gain_filters"] == recipe.model["gain_filters"] + TRANSFORMER_ALONE_COMPONENTS
    assert alone.training.gain_filters_on_components == TRANSFORMER_ALONE_COMPONENTS
    assert alone.training.init_filters_from_bands
    # Everything else is the recipe's.
    assert {k: v for k, v in alone.model.items() if k not in ("skip_lags", "hop_lookahead_past_samples", "gain_filters")} == {
        k: v for k, v in recipe.model.items() if k not in ("skip_lags", "hop_lookahead_past_samples", "gain_filters")}
    assert alone.training.learning_rate == recipe.training.learning_rate
    assert alone.training.lr_scheduler == recipe.training.lr_scheduler


def test_control_1_is_also_judged_against_the_linear_map_trained_the_same_way():
    row = _row(-0.05, (0.0, 0.0))
    row["model_minus"]["linear_by_gradient"] = {"value": 0.004, "ci95": [0.002, 0.006]}
    lines = {line["control"]: line["met"] for line in verdicts({"transformer_alone": row}, {})}
    assert lines == {"1. transformer alone (no skip path) vs lagged ridge": False,
                     "1. … vs the lagged ridge's map trained the same way": True}


def test_the_linear_reference_predicts_the_test_rows_and_refuses_others():
    from benchmarks.transformer_controls import linear_by_gradient
    from brainformer.settings import settings_from_dict

    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((3000, 2)).astype(np.float32)
    meg = (eeg @ np.array([[1.0, 0.0], [0.5, -1.0]])).astype(np.float32)
    rec = SimpleNamespace(eeg=eeg, meg=meg, sfreq_hz=200.0, n_samples=3000, parts={"train": (0, 2400)})
    data = SimpleNamespace(train=range(30), config=SimpleNamespace(window_samples=32))
    settings = settings_from_dict({"training": {"epochs": 2, "batch_size": 8, "learning_rate": 0.05, "loss_last_samples": 8}})
    predict = linear_by_gradient(rec, 2400, settings, data)  # 2 epochs of 4 batches: 8 steps
    assert predict(2400, 3000).shape == (600, 2)
    assert predict(2500, 2600).shape == (100, 2)
    np.testing.assert_array_equal(predict(2500, 2600), predict(2400, 3000)[100:200])
    with pytest.raises(ValueError, match="from 2400"):
        predict(2000, 3000)
