"""`brainformer.simulation.oracle`: the Wiener oracle on raw and preprocessed data."""

from __future__ import annotations

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
