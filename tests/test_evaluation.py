"""brainformer.evaluation: metrics, block bootstrap, ridge baselines, serving-exact model scoring, `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainformer.cli import app
from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.data import prepare_recordings
from brainformer.evaluation import (
    BlockSums,
    EvaluationError,
    SplitRows,
    bootstrap_block_counts,
    evaluate_arrays,
    fit_ridge,
    lag_samples,
    lagged_rows,
    nmse,
    pearson_r,
    predict_as_served,
    r_squared,
    score_channels,
    served_window_ends,
)
from brainformer.model_dir import load_model
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer.settings import DataSettings, ExperimentSettings

TINY_MODEL = {
    "window_samples": 64, "hop_samples": 16, "patch_len": 16, "d_model": 8, "n_heads": 2, "d_ff": 16,
    "router_dim": 2, "skip_lags": 8,
}


def random_walkish(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """Smooth-ish signals `(n, channels)` (white noise through a short moving average)."""
    white = rng.standard_normal((n + 8, channels))
    return np.stack([np.convolve(white[:, c], np.ones(8) / 8, mode="valid")[:n] for c in range(channels)], axis=1)


# --- metrics -------------------------------------------------------------------------------


def test_metrics_known_answers():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((500, 4))
    np.testing.assert_allclose(pearson_r(truth, 3.0 * truth + 2.0), 1.0)
    np.testing.assert_allclose(pearson_r(truth, -0.5 * truth), -1.0)
    np.testing.assert_allclose(r_squared(truth, truth), 1.0)
    mean_prediction = np.broadcast_to(truth.mean(axis=0), truth.shape)
    np.testing.assert_allclose(r_squared(truth, mean_prediction), 0.0, atol=1e-12)
    assert nmse(truth, truth) == 0.0
    assert nmse(truth, mean_prediction) == pytest.approx(1.0)
    # A scaled copy is perfectly correlated but not a perfect fit: R² = 1 − (1 − a)².
    np.testing.assert_allclose(r_squared(truth, 0.5 * truth + 0.5 * truth.mean(axis=0)), 0.75)
    # A constant prediction carries no information: r = 0; a constant truth cannot be scored.
    assert pearson_r(truth, np.zeros_like(truth)).tolist() == [0.0] * 4
    flat_truth = truth.copy()
    flat_truth[:, 1] = 7.0
    assert np.isnan(pearson_r(flat_truth, truth)[1]) and np.isnan(r_squared(flat_truth, truth)[1])


def test_scores_split_by_sensor_type_and_bad_shapes():
    rng = np.random.default_rng(1)
    truth = rng.standard_normal((300, 3))
    prediction = truth.copy()
    prediction[:, 2] = rng.standard_normal(300)  # the grad channel is unpredicted
    summary = score_channels(truth, prediction, ["mag", "mag", "grad"]).summary(["mag", "mag", "grad"])
    assert summary["mag"]["r_mean"] == pytest.approx(1.0) and summary["mag"]["n_channels"] == 2
    assert abs(summary["grad"]["r_mean"]) < 0.2 and summary["grad"]["r2_mean"] < 0
    with pytest.raises(EvaluationError, match="same shape"):
        pearson_r(truth, truth[:, :2])
    with pytest.raises(EvaluationError, match="3 channel types for 2 channels"):
        score_channels(truth[:, :2], truth[:, :2], ["mag", "grad", "mag"])


def test_block_bootstrap_identity_replicate_equals_the_full_sample():
    rng = np.random.default_rng(2)
    truth = rng.standard_normal((1000, 5))
    prediction = 0.6 * truth + rng.standard_normal((1000, 5))
    sums = BlockSums.from_arrays(truth, prediction, block_samples=300)  # 4 blocks, the last one short
    assert sums.count.tolist() == [300, 300, 300, 100]
    r_mean, r2_mean = sums.resampled_means(np.ones((1, 4)))
    assert r_mean[0] == pytest.approx(pearson_r(truth, prediction).mean())
    assert r2_mean[0] == pytest.approx(r_squared(truth, prediction).mean())
    counts = bootstrap_block_counts(n_blocks=4, replicates=50, seed=0)
    assert counts.shape == (50, 4) and np.all(counts.sum(axis=1) == 4)
    np.testing.assert_array_equal(counts, bootstrap_block_counts(4, 50, seed=0))  # seeded


# --- ridge baselines -----------------------------------------------------------------------


def test_lagged_rows_are_causal_with_zeros_before_the_recording():
    x = np.arange(10, dtype=float)[:, None] * np.array([[1.0, 10.0]])  # (10, 2)
    rows = lagged_rows(x, (0, 3), start=2, stop=6)
    np.testing.assert_array_equal(rows[:, :2], x[2:6])
    np.testing.assert_array_equal(rows[:, 2:], np.vstack([np.zeros((1, 2)), x[0:3]]))  # t − 3 < 0 → 0
    assert lag_samples(600.0) == tuple(range(0, 31, 2))


def test_ridge_recovers_a_known_linear_map():
    rng = np.random.default_rng(3)
    x = random_walkish(rng, 4000, 6) * rng.uniform(0.5, 5.0, size=6)  # unequal channel scales
    true_map = rng.standard_normal((6, 4))
    y = x @ true_map + 1.5 + 0.01 * rng.standard_normal((4000, 4))
    fit = fit_ridge(x, y, (0,), 0, 3000)
    prediction = fit.predict(x, 3000, 4000)
    assert np.all(pearson_r(y[3000:], prediction) > 0.999)
    weight, bias = fit.as_conv_skip(n_taps=1)  # back in the units of x
    np.testing.assert_allclose(weight[:, :, 0], true_map.T, atol=0.02)
    np.testing.assert_allclose(bias, 1.5, atol=0.05)
    assert fit.validation_mse.shape == fit.relative_alphas.shape


def test_ridge_penalty_grid_matches_direct_validation_errors():
    rng = np.random.default_rng(4)
    x = random_walkish(rng, 1200, 5)
    y = x @ rng.standard_normal((5, 3)) + rng.standard_normal((1200, 3))
    alphas = (1e-3, 1e-1, 10.0)
    fit = fit_ridge(x, y, (0, 2), 0, 1000, validation_fraction=0.2, relative_alphas=alphas)
    # Direct: standardise with all train rows, fit on the first 800 rows, score rows 800–1000.
    mean, std = x[:1000].mean(axis=0), x[:1000].std(axis=0)
    features = lagged_rows((x - mean) / std, (0, 2), 0, 1000)
    fit_f, fit_y, val_f, val_y = features[:800], y[:800], features[800:], y[800:1000]
    mu_f, mu_y = fit_f.mean(axis=0), fit_y.mean(axis=0)
    gram = (fit_f - mu_f).T @ (fit_f - mu_f)
    for alpha, expected_mse in zip(alphas, fit.validation_mse):
        weight = np.linalg.solve(gram + alpha * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0]), (fit_f - mu_f).T @ (fit_y - mu_y))
        direct = (((val_f - mu_f) @ weight + mu_y - val_y) ** 2).mean()
        assert expected_mse == pytest.approx(direct, rel=1e-8)


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


def test_conv_skip_from_ridge_reproduces_ridge_inside_the_model():
    """The tap order of `as_conv_skip` matches the model's skip path (last tap = current sample)."""
    rng = np.random.default_rng(6)
    config = BrainformerConfig(
        eeg_channel_names=[f"E{i}" for i in range(4)], meg_channel_names=["M0", "M1", "M2"],
        meg_channel_types=["mag", "grad", "grad"], **TINY_MODEL,
    )
    x = random_walkish(rng, 2000, 4)
    y = np.zeros((2000, 3))
    y[3:] = x[:-3] @ rng.standard_normal((4, 3))
    fit = fit_ridge(x, y, (0, 3, 5), 0, 1500)
    model = BrainformerForMEGPrediction(config).eval()
    weight, bias = fit.as_conv_skip(config.skip_lags)
    model.set_linear_skip(torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32))
    with torch.no_grad():
        model.projection.weight.zero_()
        model.projection.bias.zero_()
        window = torch.as_tensor(x[1600:1664], dtype=torch.float32)[None]
        predicted = model(input_values=window).predictions[0].numpy()
    # Rows with a full lag history inside the window equal the ridge prediction.
    np.testing.assert_allclose(predicted[8:], fit.predict(x, 1608, 1664), atol=1e-4)


# --- the model as served -------------------------------------------------------------------


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
    # Windows that would start before the recording are zero-padded, not refused.
    early = predict_as_served(model, eeg, 10, 40, hop_samples=16)
    assert early.shape == (30, 2) and np.all(np.isfinite(early))


# --- evaluate on the real recording ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(sample_fif, tmp_path_factory) -> Path:
    """An untrained tiny model with the real recording's channels and scaling statistics."""
    settings = ExperimentSettings(model=dict(TINY_MODEL), data=DataSettings())
    config = prepare_recordings([sample_fif], settings).config
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("evaluation") / "tiny_model"
    BrainformerForMEGPrediction(config).save_pretrained(str(path))
    return path


def test_evaluate_command_writes_json_and_plots(tiny_model_dir, sample_fif, tmp_path):
    json_path, plots = tmp_path / "metrics.json", tmp_path / "plots"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(sample_fif), "--json", str(json_path), "--plots", str(plots)]
    )
    assert result.exit_code == 0, result.output
    assert "lagged ridge" in result.output and "model" in result.output
    metrics = json.loads(json_path.read_text())
    for method in ("model", "ridge", "lagged_ridge"):
        entry = metrics[method]
        for key in ("r_mean", "r2_mean", "nmse"):
            assert isinstance(entry[key], float) and np.isfinite(entry[key])
        for kind in ("mag", "grad"):
            assert isinstance(entry[kind]["r_mean"], float) and isinstance(entry[kind]["r2_mean"], float)
        assert entry["mag"]["n_channels"] == 102 and entry["grad"]["n_channels"] == 204
        low, high = entry["bootstrap"]["r_mean"]["ci95"]
        assert low <= high and entry["bootstrap"]["r_mean"]["std"] > 0
        assert len(entry["per_channel"]["r"]) == 306
    assert 0.25 < metrics["ridge"]["r_mean"] < 0.40  # the instantaneous ridge of this recording (≈ 0.32)
    assert metrics["setup"]["n_test_samples"] == 14400 - 10800 - 601
    assert metrics["model"]["hop_samples"] == 16
    assert set(metrics["comparisons"]) == {"model_minus_ridge", "model_minus_lagged_ridge"}
    assert sorted(p.name for p in plots.iterdir()) == ["r_by_type.png", "topomap_r.png", "traces.png"]
    assert all(p.stat().st_size > 10_000 for p in plots.iterdir())


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


def test_evaluate_reports_the_oracle_on_a_simulated_recording(tiny_model_dir, tmp_path):
    simulated = tmp_path / "sim_raw.fif"
    made = CliRunner().invoke(app, ["simulate-data", "--layout", "sample", "--duration", "8", "--seed", "1", "--out", str(simulated)])
    assert made.exit_code == 0, made.output
    json_path = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(simulated), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(json_path.read_text())
    assert {"model", "ridge", "lagged_ridge", "oracle"} <= set(metrics)
    # The simulator's EEG → MEG map is linear and instantaneous: its oracle is the best of all.
    assert metrics["oracle"]["r2_mean"] > metrics["ridge"]["r2_mean"] > metrics["model"]["r2_mean"]
    assert "model_minus_oracle" in metrics["comparisons"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing_raw.fif"], "missing_raw.fif: no such file"),
        (["--split", "1.5"], "--split must lie strictly between 0 and 1"),
        (["--model", "no_such_model_dir"], "no_such_model_dir"),
    ],
)
def test_evaluate_bad_input_exits_2_with_one_line(tiny_model_dir, args, message, tmp_path):
    base = {"--model": str(tiny_model_dir)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = str(tmp_path / value) if flag == "--data" else value
    result = CliRunner().invoke(app, ["evaluate", *[a for kv in base.items() for a in kv]])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
