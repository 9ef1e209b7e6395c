"""brainformer.preprocessing.scaling: fitted statistics, flat channels, refused statistics."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.preprocessing import (
    FLAT_CHANNEL_RELATIVE_STD,
    PreprocessingError,
    PreprocessingSpec,
    StreamingPreprocessor,
    fit_scaling,
    scale_meg,
    unscale_meg,
)
from tests.preprocessing.helpers import SFREQ_HZ


def test_fit_scaling_returns_new_config_and_scales_to_unit_variance(config, eeg_like):
    rng = np.random.default_rng(3)
    meg = rng.standard_normal((3000, 306)) * 1e-12 + 5e-13
    fitted = fit_scaling(config, eeg_like, [meg[:1000], meg[1000:]])
    assert config.eeg_mean is None and config.meg_std is None  # not mutated
    np.testing.assert_allclose(fitted.eeg_mean, eeg_like.mean(axis=0), rtol=1e-9, atol=1e-20)
    np.testing.assert_allclose(fitted.meg_std, meg.std(axis=0), rtol=1e-9)
    scaled = scale_meg(fitted, meg)
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(scaled.std(axis=0), 1, rtol=1e-9)
    np.testing.assert_allclose(unscale_meg(fitted, scaled), meg, rtol=1e-9, atol=1e-24)
    as_float32 = unscale_meg(fitted, scaled.astype(np.float32))
    assert as_float32.dtype == np.float32
    # The fitted config is a valid config that survives JSON.
    again = BrainformerConfig.from_dict(fitted.to_dict())
    assert again.meg_std == fitted.meg_std
    # Without statistics, scaling is the identity.
    np.testing.assert_array_equal(unscale_meg(config, meg), meg)


def test_flat_channels_are_scaled_to_zero(config):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2000, 60)) * 1e-5
    x[:, 5] = 2e-6  # perfectly flat
    x[:, 9] = 1e-6 + rng.standard_normal(2000) * 1e-5 * FLAT_CHANNEL_RELATIVE_STD * 0.1  # nearly flat
    no_reference = BrainformerConfig(eeg_reference="none", highpass_hz=None, lowpass_hz=None, notch_hz=[])
    meg = rng.standard_normal((2000, 306))
    fitted = fit_scaling(no_reference, x, meg)
    spec = PreprocessingSpec.for_eeg(fitted, SFREQ_HZ)
    assert spec.scaling.flat_channels.tolist() == [5, 9]
    out, _ = StreamingPreprocessor(spec, 60).process(x, None)
    assert np.all(out[:, [5, 9]] == 0)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0].std(), 1.0, rtol=1e-5)


def test_bad_scaling_statistics_are_refused(config):
    with pytest.raises(PreprocessingError, match="eeg_mean and eeg_std must be both set"):
        PreprocessingSpec.for_eeg(BrainformerConfig(eeg_mean=[0.0] * 60, eeg_std=None), SFREQ_HZ)
    with pytest.raises(PreprocessingError, match="at least 2"):
        fit_scaling(config, np.zeros((1, 60)), np.zeros((5, 306)))

