"""brainformer.evaluation.metrics: per-channel metrics and the block bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.evaluation import (
    BlockSums,
    EvaluationError,
    bootstrap_block_counts,
    nmse,
    pearson_r,
    r_squared,
    score_channels,
)


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
