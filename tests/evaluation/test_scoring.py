"""brainformer.evaluation.scoring: the model scored as served, every method on the same samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.evaluation import (
    EvaluationError,
    SplitRows,
    evaluate_arrays,
    predict_as_served,
    score_methods,
    served_window_ends,
)
from brainformer.model_dir import load_model
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from tests.evaluation.conftest import TINY_MODEL


def test_served_window_ends_cover_the_range_once():
    assert served_window_ends(100, 164, 16).tolist() == [116, 132, 148, 164]
    assert served_window_ends(100, 170, 16).tolist() == [116, 132, 148, 164, 170]
    with pytest.raises(EvaluationError):
        served_window_ends(5, 5, 16)


def test_predict_as_served_keeps_the_newest_hop_of_each_window():
    torch.manual_seed(0)
    config = BrainformerConfig(
        eeg_channel_names=[f"E{i}" for i in range(3)], meg_channel_names=["M0", "M1"], meg_channel_types=["mag", "grad"],
        **TINY_MODEL,
    )
    model = BrainformerForMEGPrediction(config).eval()
    eeg = np.random.default_rng(7).standard_normal((300, 3)).astype(np.float32)
    served = predict_as_served(model, eeg, 100, 170, hop_samples=16, batch_size=2)
    assert served.shape == (70, 2)
    with torch.no_grad():
        for end, new in [(116, 16), (164, 16), (170, 6)]:
            window = torch.from_numpy(eeg[end - 64 : end])[None]
            expected = model(input_values=window).predictions[0, -new:].numpy()
            np.testing.assert_allclose(served[end - new - 100 : end - 100], expected, atol=1e-5)
    # Windows that would start before the recording are zero-padded, not refused: rows 10…25 are
    # the newest 16 of the window ending at 26 (38 zero rows, then rows 0…25), rows 26…39 the
    # newest 14 of the one ending at 40 (24 zero rows, then rows 0…39).
    early = predict_as_served(model, eeg, 10, 40, hop_samples=16)
    with torch.no_grad():
        for lo, end, new in [(10, 26, 16), (26, 40, 14)]:
            padded = np.concatenate([np.zeros((64 - end, 3), np.float32), eeg[:end]])
            expected = model(input_values=torch.from_numpy(padded)[None]).predictions[0, -new:].numpy()
            np.testing.assert_allclose(early[lo - 10 : end - 10], expected, atol=1e-5)


def test_lagged_ridge_beats_instantaneous_on_a_delayed_map():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5000, 4))
    y = np.zeros((5000, 3))
    y[6:] = x[:-6] @ rng.standard_normal((4, 3))  # MEG follows EEG by 6 samples
    y += 0.1 * rng.standard_normal(y.shape)
    rows = SplitRows(10, 4000, 4010, 5000)
    report = evaluate_arrays(x, y, 600.0, rows, ["mag", "grad", "grad"], bootstrap_replicates=50)
    summary = report.to_dict()
    assert summary["lagged_ridge"]["r_mean"] > 0.95  # lags 0…30 include 6
    assert summary["ridge"]["r_mean"] < 0.2
    assert summary["lagged_ridge"]["lags_samples"] == list(range(0, 31, 2))


def test_score_methods_resamples_the_same_blocks_for_every_method():
    """Paired comparisons: two methods with the same predictions differ by exactly 0 in every replicate."""
    rng = np.random.default_rng(8)
    truth = rng.standard_normal((600, 3))
    noisy = truth + rng.standard_normal((600, 3))
    methods = score_methods(truth, {"a": noisy, "b": noisy.copy()}, ["mag", "grad", "grad"], 100.0, bootstrap_replicates=30)
    assert list(methods) == ["a", "b"]
    np.testing.assert_array_equal(methods["a"].bootstrap_r, methods["b"].bootstrap_r)
    assert methods["a"].bootstrap_r.shape == (30,) and np.all(methods["a"].bootstrap_r > 0)
    with pytest.raises(EvaluationError, match="c produced NaN"):
        score_methods(truth, {"c": np.full_like(truth, np.nan)}, ["mag", "grad", "grad"], 100.0)


def test_evaluate_recording_scores_the_served_prediction_of_the_loaded_model(tiny_model_dir, sample_fif, tmp_path):
    """`evaluate` scores exactly what the model dir serves over the continuous test part."""
    import mne

    from brainformer.evaluation import evaluate_recording
    from brainformer.preprocessing import preprocess_recording

    short = tmp_path / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 10).save(short, verbose="error")
    model = load_model(tiny_model_dir)
    report, info = evaluate_recording(model, short, bootstrap_replicates=20)
    assert set(report.methods) == {"ridge", "lagged_ridge", "model"}  # a real recording has no oracle
    assert len(info.ch_names) == 306
    recording = preprocess_recording(mne.io.read_raw_fif(short, verbose="error"), model.config)
    rows = report.rows
    expected = predict_as_served(model, recording.eeg, rows.test_start, rows.test_stop)
    np.testing.assert_array_equal(report.methods["model"].predictions, expected)
    np.testing.assert_array_equal(report.truth, recording.meg[rows.test_start : rows.test_stop])


def test_evaluate_recording_scores_other_models_of_the_same_preprocessing(tiny_model_dir, sample_fif, tmp_path):
    """`other_models` are served on the same preprocessed EEG and scored on the same rows; one whose
    preprocessing differs is refused, naming the field."""
    import mne

    from brainformer.evaluation import EvaluationError, evaluate_recording, model_path_alone

    short = tmp_path / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 10).save(short, verbose="error")
    model = load_model(tiny_model_dir)
    others = {"twin": load_model(tiny_model_dir)}
    if model.linear_skip is not None:
        others["skip_alone"] = model_path_alone(model, "skip")
    report, _ = evaluate_recording(model, short, bootstrap_replicates=20, other_models=others)
    np.testing.assert_array_equal(report.methods["twin"].predictions, report.methods["model"].predictions)
    assert set(others) <= set(report.methods)
    shifted = BrainformerConfig(**{**model.config.to_dict(), "meg_std": [2 * v for v in model.config.meg_std]})
    with pytest.raises(EvaluationError, match="'other'.*meg_std"):
        evaluate_recording(model, short, bootstrap_replicates=20, other_models={"other": BrainformerForMEGPrediction(shifted)})


def test_the_artefact_mask_lines_up_with_the_scored_rows(tiny_model_dir, sample_fif):
    """Each cardiac row of the report lies −150 … +250 ms from an R peak, measured on the raw
    recording's own time axis; the clean scores are those of the clean rows of the truth."""
    import mne

    from brainformer.evaluation import evaluate_recording, pearson_r
    from brainformer.preprocessing import preprocess_recording

    model = load_model(tiny_model_dir)
    report, _ = evaluate_recording(model, sample_fif, bootstrap_replicates=20)
    mask, rows = report.artefacts, report.rows
    assert (mask.first_row, mask.n_rows) == (rows.test_start, rows.test_stop - rows.test_start)
    raw = mne.io.read_raw_fif(sample_fif, verbose="error")
    ecg, _, _ = mne.preprocessing.find_ecg_events(raw, verbose="error")
    peak_times = raw.times[ecg[:, 0] - raw.first_samp]
    row_times = preprocess_recording(raw, model.config).times[rows.test_start : rows.test_stop]
    offsets = row_times[:, None] - peak_times[None, :]  # (rows, peaks)
    half_sample = 0.5 / raw.info["sfreq"]
    near = ((offsets >= -0.150 - half_sample) & (offsets <= 0.250 + half_sample)).any(axis=1)
    np.testing.assert_array_equal(mask.cardiac, near)
    assert mask.cardiac.any() and not mask.cardiac.all()
    clean = mask.clean
    np.testing.assert_allclose(
        report.clean["model"].scores.r, pearson_r(report.truth[clean], report.methods["model"].predictions[clean])
    )
    assert report.cardiac["ridge"].predictions.shape[0] == int(mask.cardiac.sum())


def test_evaluate_arrays_refuses_a_mask_of_other_rows():
    from brainformer.evaluation import ArtefactEvents, ArtefactMask

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((800, 3)), rng.standard_normal((800, 2))
    rows = SplitRows(10, 500, 510, 800)
    events = ArtefactEvents(100.0, 800, np.array([600]), np.zeros(0, np.int64))
    with pytest.raises(EvaluationError, match="artefact mask covers rows"):
        evaluate_arrays(x, y, 100.0, rows, ["mag", "grad"], bootstrap_replicates=5,
                        artefacts=ArtefactMask.for_rows(events, 500, 800))
    report = evaluate_arrays(x, y, 100.0, rows, ["mag", "grad"], bootstrap_replicates=5,
                             artefacts=ArtefactMask.for_rows(events, 510, 800))
    assert report.clean["ridge"].predictions.shape[0] == 290 - 41  # 0.15 s + 0.25 s at 100 Hz, both ends kept
    assert set(report.to_dict()["ridge"]) >= {"clean", "cardiac"}


def test_a_paired_r2_difference_is_the_difference_of_the_means_with_an_interval_that_can_exclude_zero():
    from brainformer.evaluation import paired_r2_difference

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((3000, 2))
    worse = truth + 0.8 * rng.standard_normal(truth.shape)
    better = truth + 0.5 * rng.standard_normal(truth.shape)
    types = ["mag", "grad"]
    delta = paired_r2_difference(truth, worse, better, types, 100.0)
    r2 = {name: 1 - ((truth - p) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0) for name, p in
          (("worse", worse), ("better", better))}
    assert delta["value"] == pytest.approx(np.mean(r2["better"]) - np.mean(r2["worse"]))
    assert 0 < delta["ci95"][0] < delta["value"] < delta["ci95"][1]
    same = paired_r2_difference(truth, worse, worse, types, 100.0)
    assert same["value"] == 0.0 and same["ci95"] == [0.0, 0.0]
