"""benchmarks/gain_feature_headroom.py: the closed-form check finds an amplitude-modulated term
when the MEG holds one and adds nothing when the map is linear (its measured runs are in
docs/transformer.md)."""

from __future__ import annotations

import numpy as np

from benchmarks.gain_feature_headroom import gain_modulated_features, headroom, spatial_components

SFREQ_HZ, N = 200.0, 24000
TRAIN, TEST = (0, 18000), (18000, N)


def _recording(modulated_share: float) -> tuple[np.ndarray, np.ndarray]:
    """4 EEG channels: an alpha rhythm whose amplitude drifts over seconds, mixed with white noise;
    2 MEG channels: a lagged linear map of the EEG, plus, on channel 0, the rhythm times its own
    envelope."""
    rng = np.random.default_rng(0)
    # A 10 Hz carrier of constant amplitude (its phase wanders): all the amplitude is the envelope's.
    carrier = np.sqrt(2) * np.sin(2 * np.pi * (10.0 * np.arange(N) / SFREQ_HZ + np.cumsum(rng.normal(0, 0.01, N))))
    envelope = 1.0 + 0.8 * np.sin(2 * np.pi * np.cumsum(rng.uniform(0.05, 0.2, N)) / SFREQ_HZ)
    rhythm = carrier * envelope
    eeg = np.outer(rhythm, [1.0, 0.5, -0.3, 0.2]) + 0.5 * rng.standard_normal((N, 4))
    meg = np.stack([eeg[:, 0] - 0.5 * np.roll(eeg[:, 1], 2), 0.3 * eeg[:, 2] + np.roll(eeg[:, 3], 4)], axis=1)
    gated = rhythm * (envelope - envelope.mean())  # the lagged ridge takes its linear part, not the rest
    meg[:, 0] += np.sqrt(modulated_share / (1 - modulated_share)) * meg[:, 0].std() * gated / gated.std()
    return eeg, meg + 0.1 * rng.standard_normal(meg.shape)


def _gain(modulated_share: float) -> dict:
    eeg, meg = _recording(modulated_share)
    components = spatial_components(eeg, TRAIN, "pca", 4)
    features = gain_modulated_features(components, SFREQ_HZ, TRAIN, envelope_samples=64)
    assert features.shape == (N, 3 * 4 * 7)
    return headroom(eeg, meg, SFREQ_HZ, TRAIN, TEST, features, ["mag", "grad"])


def test_an_amplitude_modulated_term_is_found_and_a_linear_map_gains_nothing():
    modulated = _gain(0.2)
    # Channel 0 holds a 20 % term (the lagged ridge takes its linear part), channel 1 none.
    assert modulated["gain"]["value"] > 0.01 and modulated["gain"]["ci95"][0] > 0.005
    linear = _gain(0.0)
    assert abs(linear["gain"]["value"]) < 0.002
    assert linear["lagged_ridge"] > 0.9  # the linear map is there to be found
