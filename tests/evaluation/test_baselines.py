"""brainformer.evaluation.baselines: causal lagged features and the closed-form ridge fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.evaluation import fit_ridge, lag_samples, lagged_rows, pearson_r
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from tests.evaluation.conftest import TINY_MODEL, random_walkish


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
