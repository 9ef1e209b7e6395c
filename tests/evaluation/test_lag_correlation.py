"""`lag_correlation` (the FFT form) gives, at every lag, the mean r that correlating each shifted
stretch directly gives, at any scale, with constant channels left out."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.evaluation import lag_correlation

SFREQ_HZ = 600.0


def direct_mean_r(truth: np.ndarray, predicted: np.ndarray, max_lag: int, lags: np.ndarray) -> np.ndarray:
    """The definition, one lag at a time: r per channel of predicted[t] and truth[t − lag] over
    the rows every lag has, averaged over the channels that vary in both."""
    n = truth.shape[0]
    p = predicted[max_lag:n - max_lag]
    out = []
    for lag in lags:
        t = truth[max_lag - lag:n - max_lag - lag]
        r = [np.corrcoef(p[:, c], t[:, c])[0, 1] for c in range(truth.shape[1])
             if np.ptp(p[:, c]) > 0 and np.ptp(t[:, c]) > 0]
        out.append(np.mean(r) if r else np.nan)
    return np.asarray(out)


@pytest.mark.parametrize("scale", [1.0, 1e-13, 1e5])
@pytest.mark.parametrize("step", [1, 4])
def test_every_lag_matches_the_direct_correlation(scale, step):
    rng = np.random.default_rng(3)
    truth = (rng.standard_normal((2400, 5)) + 3.0) * scale  # an offset, as physical units carry
    predicted = np.roll(truth, 12, axis=0) + 0.5 * scale * rng.standard_normal((2400, 5))
    truth[:, 1] = 2.5 * scale  # constant in the truth: no r
    predicted[:, 3] = -1.0 * scale  # constant in the prediction: no r
    lags, mean_r = lag_correlation(truth, predicted, SFREQ_HZ, max_lag_s=0.1, step_samples=step)
    assert lags.tolist() == list(range(-60, 61, step))
    np.testing.assert_allclose(mean_r, direct_mean_r(truth, predicted, 60, lags), atol=1e-9)
    assert lags[int(np.argmax(mean_r))] == 12  # predicted[t] = truth[t − 12] + noise


def test_nothing_varies_gives_nan():
    flat = np.ones((500, 2))
    _, mean_r = lag_correlation(flat, flat, SFREQ_HZ, max_lag_s=0.01)
    assert np.isnan(mean_r).all()
