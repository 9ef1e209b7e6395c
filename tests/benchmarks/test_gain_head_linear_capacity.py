"""benchmarks/gain_head_linear_capacity.py: the closed-form linear capacity of the gain head's
filters, on a toy whose map is known (its measured run is in docs/transformer.md)."""

from __future__ import annotations

import numpy as np

from benchmarks.gain_head_linear_capacity import capacities

SFREQ_HZ, N = 200.0, 24000
TRAIN, TEST = (0, 18000), (18000, N)


def _recording() -> tuple[np.ndarray, np.ndarray]:
    """6 broadband EEG channels; 4 MEG channels, a rank-2 lagged map of them plus a little noise."""
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((N, 6)) * np.array([2.0, 1.5, 1.2, 1.0, 0.8, 0.5])
    # Two independent drivers of equal variance, each on two MEG channels of its own.
    drivers = np.stack([eeg[:, 0] / 2 + np.roll(eeg[:, 1], 4) / 1.5, eeg[:, 2] / 1.2 - np.roll(eeg[:, 3], 6)], axis=1)
    meg = drivers @ np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, -0.5]])
    return eeg, meg + 0.1 * meg.std() * rng.standard_normal(meg.shape)


def test_the_reduced_rank_reaches_the_lagged_ridge_at_the_maps_rank_and_narrow_bands_do_not():
    eeg, meg = _recording()
    result = capacities(eeg, meg, SFREQ_HZ, TRAIN, TEST, (1.0, 80.0), pairs=2, taps=32, components=[2, 6], ranks=[1, 2])
    assert result["lagged_ridge"] > 0.95 > result["ridge"]  # the map needs its lags
    assert result["reduced_rank"][2] > result["lagged_ridge"] - 0.002
    assert result["reduced_rank"][1] < result["lagged_ridge"] - 0.4  # one of two equal drivers
    # Every component at the newest sample is the plain ridge; two of six give less.
    assert abs(result["components"][6] - result["ridge"]) < 1e-3
    assert result["components"][2] < result["ridge"] - 0.05
    # Four narrow band filters on one component each cannot carry a broadband map.
    assert result["bands"]["filters"] == 4 and result["bands"]["r2"] < result["ridge"] - 0.3
