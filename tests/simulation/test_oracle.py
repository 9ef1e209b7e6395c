"""`brainformer.simulation.oracle`: the Wiener oracle on raw and preprocessed data."""

from __future__ import annotations

import dataclasses

import mne
import numpy as np
import pytest

from brainformer import simulation as sim
from brainformer.preprocessing import preprocess_recording
from brainformer.simulation.plan import _plan
from tests.simulation.helpers import config_for, r2


def test_wiener_oracle_on_raw_data(long_sample):
    raw, truth = long_sample
    weights = sim.wiener_oracle(truth)
    assert weights.shape == (306, 60)
    expected = sim.oracle_map(truth).expected_r2
    assert np.all(expected <= 1.0) and 0.1 < expected.mean() < 1.0
    eeg = raw.get_data(picks=list(truth.eeg_channel_names)).T
    meg = raw.get_data(picks=list(truth.meg_channel_names)).T
    empirical = r2(meg, eeg @ weights.T)
    assert abs(empirical.mean() - expected.mean()) < 0.08
    shuffled = r2(meg, eeg[:, np.random.default_rng(0).permutation(60)] @ weights.T)
    assert shuffled.mean() < empirical.mean() - 0.2


def test_oracle_on_preprocessed_data_reaches_its_expected_r2(scaled_sample, long_sample):
    _, truth = long_sample
    config, recording = scaled_sample
    expected = sim.oracle_map(truth, config).expected_r2
    assert 0.2 < expected.mean() <= 1.0 and np.all(expected <= 1.0)
    # The filters change the optimal map: the preprocessed oracle beats the raw-data one there.
    assert expected.mean() > sim.oracle_map(truth).expected_r2.mean()

    predicted = sim.oracle_prediction(truth, config, recording.eeg)
    assert predicted.shape == recording.meg.shape
    test = slice(recording.n_samples // 2, recording.n_samples)
    empirical = r2(recording.meg[test].astype(np.float64), predicted[test])
    assert abs(empirical.mean() - expected.mean()) < 0.08
    assert np.corrcoef(empirical, expected)[0, 1] > 0.8  # the per-channel pattern too

    shuffled_eeg = recording.eeg[:, np.random.default_rng(1).permutation(recording.eeg.shape[1])]
    shuffled = r2(recording.meg[test].astype(np.float64), sim.oracle_prediction(truth, config, shuffled_eeg)[test])
    assert shuffled.mean() < empirical.mean() - 0.2


def test_oracle_follows_the_config_channel_order(long_sample):
    _, truth = long_sample
    config = config_for(truth)
    reordered = config_for(
        truth,
        eeg_channel_names=list(truth.eeg_channel_names)[::-1],
        meg_channel_names=list(truth.meg_channel_names)[:10][::-1],
        meg_channel_types=list(truth.meg_channel_types)[:10][::-1],
    )
    base = sim.oracle_map(truth, config)
    other = sim.oracle_map(truth, reordered)
    np.testing.assert_allclose(other.weights, base.weights[:10][::-1, ::-1], rtol=1e-6, atol=1e-12 * np.abs(base.weights).max())
    np.testing.assert_allclose(other.expected_r2, base.expected_r2[:10][::-1], rtol=1e-8)
    missing = config_for(truth, eeg_channel_names=["EEG 999"] + list(truth.eeg_channel_names)[1:])
    with pytest.raises(ValueError, match="EEG 999"):
        sim.oracle_map(truth, missing)


def test_oracle_prediction_from_a_recording_path(tmp_path):
    out = tmp_path / "oracle_raw.fif"
    sim.write_simulation(layout="sample", duration_s=3.0, sfreq_hz=None, seed=7, out=out)
    truth = sim.load_truth(out)
    config = config_for(truth)
    recording = preprocess_recording(mne.io.read_raw_fif(out, verbose="error"), config)
    from_path = sim.oracle_prediction(out, config)  # what `brainformer evaluate` calls
    from_arrays = sim.oracle_prediction(truth, config, recording.eeg)
    assert from_path.shape == recording.meg.shape
    np.testing.assert_allclose(from_path, from_arrays)


def test_oracle_prediction_needs_a_simulation(sample_fif):
    truth = _plan("sample", sim.default_sfreq_hz("sample"), 0, sim.DEFAULT_SPACING_MM).truth
    with pytest.raises(FileNotFoundError):
        sim.oracle_prediction(sample_fif, config_for(truth))
    with pytest.raises(ValueError, match="eeg_preprocessed"):
        sim.oracle_prediction(truth, config_for(truth), np.zeros((10, 3)))


def test_noise_ceiling_bounds_every_predictor(scaled_sample, long_sample):
    _, truth = long_sample
    config, recording = scaled_sample
    ceiling = sim.noise_ceiling(truth, config)
    assert ceiling.shape == (306,) and np.all((ceiling > 0) & (ceiling < 1))
    # The oracle sees the EEG only, so it cannot explain what MEG sensor noise adds.
    assert np.all(sim.oracle_map(truth, config).expected_r2 <= ceiling + 1e-9)
    # Without MEG sensor noise the noiseless MEG is the measured one.
    silent = dataclasses.replace(
        truth, noise_white_variance_meg=0 * truth.noise_white_variance_meg, noise_pink_variance_meg=0 * truth.noise_pink_variance_meg
    )
    np.testing.assert_allclose(sim.noise_ceiling(silent, config), 1.0)
    # More sensor noise, a lower ceiling.
    louder = dataclasses.replace(truth, noise_white_variance_meg=4 * truth.noise_white_variance_meg)
    assert np.all(sim.noise_ceiling(louder, config) < ceiling)


def test_noise_ceiling_matches_the_measured_noise(long_sample):
    raw, truth = long_sample
    # Raw data: the ceiling is 1 − noise variance / measured variance, channel by channel.
    meg = raw.get_data(picks=list(truth.meg_channel_names))
    expected_noise = truth.noise_white_variance_meg + truth.noise_pink_variance_meg
    measured = 1.0 - expected_noise / meg.var(axis=1)
    assert np.corrcoef(measured, sim.noise_ceiling(truth))[0, 1] > 0.95
    assert abs(measured.mean() - sim.noise_ceiling(truth).mean()) < 0.05


def test_noise_ceiling_follows_the_config_channel_order(long_sample):
    _, truth = long_sample
    config = config_for(truth)
    reversed_config = config_for(truth, meg_channel_names=list(truth.meg_channel_names)[::-1],
                                 meg_channel_types=list(truth.meg_channel_types)[::-1])
    np.testing.assert_allclose(sim.noise_ceiling(truth, reversed_config), sim.noise_ceiling(truth, config)[::-1])


def test_linear_limit_lies_between_the_instantaneous_oracle_and_the_noise_ceiling(long_sample):
    _, truth = long_sample
    config = config_for(truth, highpass_hz=1.0, lowpass_hz=40.0)
    limit = sim.linear_limit(truth, config)
    # The instantaneous map is one of the filters the limit ranges over; no filter beats the noise.
    assert np.all(limit >= sim.oracle_map(truth, config).expected_r2 - 1e-6)
    assert np.all(limit <= sim.noise_ceiling(truth, config) + 1e-9)
    # Time structure is worth something here: distinct spectra (alpha, bursts) separate the sources.
    assert limit.mean() > sim.oracle_map(truth, config).expected_r2.mean() + 0.01


def test_informed_limit_bounds_every_predictor_from_above(long_sample):
    """Told the components, a predictor does at least as well as the best linear filter and never
    beats the MEG sensor noise; without components there is nothing to be told."""
    _, truth = long_sample
    config = config_for(truth, highpass_hz=1.0, lowpass_hz=40.0)
    informed, linear = sim.informed_limit(truth, config), sim.linear_limit(truth, config)
    assert np.all(informed >= linear - 1e-9)
    assert np.all(informed <= sim.noise_ceiling(truth, config) + 1e-9)
    assert informed.mean() > linear.mean() + 1e-3
    silent = dataclasses.replace(truth, component_moments_am=0 * truth.component_moments_am)
    np.testing.assert_allclose(sim.informed_limit(silent, config), sim.linear_limit(silent, config), atol=1e-9)


def test_causal_limit_on_lag_zero_is_the_instantaneous_oracle_and_grows_with_lags(long_sample):
    """Lag 0 alone is the instantaneous map, computed here from the covariance functions rather
    than from the covariance matrix; more lags never lose; no causal filter beats the non-causal
    limit."""
    _, truth = long_sample
    config = config_for(truth, highpass_hz=1.0, lowpass_hz=40.0)
    instantaneous = sim.causal_limit(truth, config, [0])
    np.testing.assert_allclose(instantaneous, sim.oracle_map(truth, config).expected_r2, atol=2e-3)
    few, more = sim.causal_limit(truth, config, range(0, 31, 2)), sim.causal_limit(truth, config, range(0, 31))
    assert np.all(few >= instantaneous - 1e-6) and np.all(more >= few - 1e-6)
    assert few.mean() > instantaneous.mean() + 0.005  # history is worth something here
    assert np.all(more <= sim.linear_limit(truth, config) + 1e-6)
    with pytest.raises(ValueError, match="lags"):
        sim.causal_limit(truth, config, [-1, 0])
