"""`brainformer.simulation.truth` and `spectra`: the truth's spectra against its exact variances."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer import simulation as sim
from brainformer.simulation.plan import _plan
from brainformer.simulation.spectra import _integration_weights


def test_truth_spectra_integrate_to_the_variances():
    truth = _plan("sample", sim.default_sfreq_hz("sample"), 0, sim.DEFAULT_SPACING_MM).truth
    weights = _integration_weights(truth.freqs_hz)
    assert np.sum(weights * truth.pink_psd) == pytest.approx(1.0, rel=0.02)
    component_variance = np.sum(weights * np.abs(truth.component_transfer) ** 2, axis=1)
    np.testing.assert_allclose(component_variance, np.diag(truth.component_covariance), rtol=0.02)
    # Unfiltered covariance through the grid (all-pass "filter") equals the exact one.
    np.testing.assert_allclose(truth.sensor_covariance(np.ones_like(truth.freqs_hz)), truth.sensor_covariance(), rtol=0.03)
