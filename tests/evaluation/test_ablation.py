"""`brainformer.evaluation.ablation`: the model's skip path and its transformer, each alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.evaluation import (
    SKIP_ALONE,
    TRANSFORMER_ALONE,
    EvaluationError,
    ablation_predictors,
    model_path_alone,
    predict_as_served,
)


def _model(skip_lags: int) -> BrainformerForMEGPrediction:
    config = BrainformerConfig(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 5)],
        meg_channel_names=[f"MEG {i:04d}" for i in range(1, 7)],
        meg_channel_types=["mag", "grad", "grad"] * 2,
        sfreq_hz=200.0, window_samples=32, hop_samples=8, patch_len=8,
        d_model=8, n_heads=2, d_ff=16, router_dim=2, dropout=0.0, skip_lags=skip_lags,
    )
    torch.manual_seed(0)
    model = BrainformerForMEGPrediction(config).eval()
    if skip_lags:  # a skip path that is not zero, as after a ridge fit
        model.set_linear_skip(torch.randn_like(model.linear_skip.weight), torch.randn_like(model.linear_skip.bias))
    with torch.no_grad():  # and a transformer output that is not zero either
        model.projection.weight.normal_()
    return model


def test_the_two_paths_add_up_to_the_model():
    model = _model(skip_lags=5)
    eeg = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    whole = predict_as_served(model, eeg, 40, 200)
    skip = predict_as_served(model_path_alone(model, "skip"), eeg, 40, 200)
    transformer = predict_as_served(model_path_alone(model, "transformer"), eeg, 40, 200)
    np.testing.assert_allclose(skip + transformer, whole, rtol=1e-4, atol=1e-4)
    assert np.abs(skip).mean() > 0.1 and np.abs(transformer).mean() > 0.1
    # The trained model itself is left as it was.
    np.testing.assert_allclose(predict_as_served(model, eeg, 40, 200), whole)


def test_ablation_predictors_serve_each_path():
    model = _model(skip_lags=5)
    eeg = np.random.default_rng(1).standard_normal((120, 4)).astype(np.float32)
    predictors = ablation_predictors(model, eeg)
    assert set(predictors) == {SKIP_ALONE, TRANSFORMER_ALONE}
    skip = predictors[SKIP_ALONE](40, 120)
    np.testing.assert_allclose(skip, predict_as_served(model_path_alone(model, "skip"), eeg, 40, 120))
    transformer = predictors[TRANSFORMER_ALONE](40, 120)
    np.testing.assert_allclose(transformer, predict_as_served(model_path_alone(model, "transformer"), eeg, 40, 120))
    np.testing.assert_allclose(skip + transformer, predict_as_served(model, eeg, 40, 120), rtol=1e-4, atol=1e-4)
    # The skip path alone is the causal lagged map of its weights: row t = Σ_k W[:, :, k] x[t - 4 + k] + b.
    weight, bias = model.linear_skip.weight.detach().numpy(), model.linear_skip.bias.detach().numpy()
    by_hand = np.stack([sum(weight[:, :, k] @ eeg[t - 4 + k] for k in range(5)) + bias for t in range(40, 120)])
    np.testing.assert_allclose(skip, by_hand, rtol=1e-4, atol=1e-4)


def test_a_model_without_skip_path_has_nothing_to_ablate():
    model = _model(skip_lags=0)
    assert ablation_predictors(model, np.zeros((64, 4), dtype=np.float32)) == {}
    with pytest.raises(EvaluationError, match="no skip path"):
        model_path_alone(model, "skip")
    with pytest.raises(EvaluationError, match="'decoder'"):
        model_path_alone(_model(skip_lags=3), "decoder")
