"""The planted non-linear term (`simulate(..., planted_share=s)`) and the new limits: the hop limit
and the envelope-informed limit."""

from __future__ import annotations

import dataclasses

import mne
import numpy as np
import pytest

from brainformer import simulation as sim
from brainformer.evaluation import fit_ridge
from brainformer.preprocessing import fit_scaling, preprocess_recording
from tests.simulation.helpers import config_for

SHARE = 0.04


@pytest.fixture(scope="module")
def pair():
    """20 s of the same seed without and with the planted term."""
    return sim.simulate("sample", 20.0, seed=5), sim.simulate("sample", 20.0, seed=5, planted_share=SHARE)


def small_config(truth: sim.SimulationTruth):
    """A third of the channels and a steep 8–30 Hz band: the limits' spectral sums stay small."""
    return config_for(truth, eeg_channel_names=list(truth.eeg_channel_names)[::3],
                      meg_channel_names=list(truth.meg_channel_names)[::15],
                      meg_channel_types=list(truth.meg_channel_types)[::15],
                      highpass_hz=8.0, lowpass_hz=30.0, filter_order=8)


def test_planting_changes_the_meg_by_the_stored_term_only(pair):
    """Same EEG; the MEG differs by the stored source times the stored pattern, exactly; without
    planting the truth has no planted term (and its sidecar no planted fields)."""
    (raw0, truth0), (raw1, truth1) = pair
    eeg = mne.pick_types(raw0.info, meg=False, eeg=True)
    meg = mne.pick_types(raw0.info, meg=True)
    np.testing.assert_array_equal(raw0.get_data(eeg), raw1.get_data(eeg))
    difference = raw1.get_data(meg) - raw0.get_data(meg)
    expected = np.outer(truth1.planted_meg_pattern, truth1.planted_source)
    np.testing.assert_allclose(difference, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert truth0.planted_source is None and truth0.planted_share == 0.0
    assert truth1.planted_share == SHARE and truth1.planted_source.shape == (raw1.n_times,)


def test_the_sidecar_keeps_the_planted_term_and_older_sidecars_still_load(pair, tmp_path):
    (_, truth0), (_, truth1) = pair
    loaded = sim.SimulationTruth.load(truth1.save(tmp_path / "planted-truth.npz"))
    np.testing.assert_array_equal(loaded.planted_source, truth1.planted_source)
    assert loaded.planted_share == SHARE
    with np.load(truth0.save(tmp_path / "plain-truth.npz")) as stored:
        assert not any(key.startswith("planted") for key in stored.files)
    assert sim.SimulationTruth.load(tmp_path / "plain-truth.npz").planted_source is None


def test_planted_meg_is_the_term_as_preprocessed_and_its_share_is_reported(pair):
    """`planted_meg` is exactly the difference of the two preprocessed (scaled) recordings; its
    share of each channel's variance there is close to the reported expected share, which is the
    share asked for (the calibration's target) in the default band."""
    (raw0, _), (raw1, truth1) = pair
    config = config_for(truth1, highpass_hz=1.0, lowpass_hz=40.0)
    plain = preprocess_recording(raw1, config)
    config = fit_scaling(config, plain.eeg, plain.meg)
    with_term, without = preprocess_recording(raw1, config), preprocess_recording(raw0, config)
    term = sim.planted_meg(truth1, config)
    np.testing.assert_allclose(with_term.meg - without.meg, term, atol=2e-5 * np.abs(term).max())
    reported = sim.planted_share(truth1, config)
    np.testing.assert_allclose(reported.mean(), SHARE, rtol=0.02)
    settled = slice(int(2 * with_term.sfreq_hz), None)
    measured = term[settled].var(axis=0) / with_term.meg[settled].var(axis=0)
    # 20 s of bursting rhythms: the realised variances scatter around their expectation.
    np.testing.assert_allclose(measured.mean(), reported.mean(), rtol=0.3)


def test_the_planted_term_has_no_linear_part(pair):
    """A lagged ridge of the EEG explains next to nothing of the planted term alone: what a linear
    baseline captures of it is close to zero, so the term is structure only a non-linear model finds."""
    _, (raw1, truth1) = pair
    config = config_for(truth1, highpass_hz=1.0, lowpass_hz=40.0)
    eeg = preprocess_recording(raw1, config).eeg
    term = sim.planted_meg(truth1, config)[:, :12] * 1e13  # a few channels, near unit scale
    half = eeg.shape[0] // 2
    fit = fit_ridge(eeg, term, (0, 4, 8, 12, 16, 20, 24, 28), 1200, half)
    predicted = fit.predict(eeg, half, eeg.shape[0])
    target = term[half:]
    r2 = 1 - ((target - predicted) ** 2).sum(axis=0) / ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    assert r2.mean() < 0.05


def test_planted_share_is_refused_out_of_range():
    with pytest.raises(ValueError, match="planted_share"):
        sim.simulate("sample", 1.0, planted_share=0.6)


def test_hop_limit_adds_the_future_inside_the_hop(long_sample):
    """A hop of one sample has no future: the causal limit; a longer hop's older samples see their
    future, which is worth something, but never more than the non-causal linear limit."""
    _, truth = long_sample
    config = small_config(truth)
    lags = range(0, 9, 2)
    causal = sim.causal_limit(truth, config, lags)
    np.testing.assert_allclose(sim.hop_limit(truth, config, lags, 1), causal, atol=1e-9)
    hop = sim.hop_limit(truth, config, lags, 6)
    assert np.all(hop >= causal - 1e-9) and hop.mean() > causal.mean() + 1e-3
    assert np.all(hop <= sim.linear_limit(truth, config) + 1e-6)


def test_envelope_informed_limit_lies_between_the_linear_and_the_informed_limit(long_sample):
    """Told the bursts' power, the best filter does at least as well as the linear limit and no
    better than one told their whole time course; with no bursts there is nothing to be told."""
    _, truth = long_sample
    config = small_config(truth)
    linear = sim.linear_limit(truth, config)
    envelope = sim.envelope_informed_limit(truth, config, draws=32)
    assert envelope.mean() > linear.mean() + 1e-3
    assert np.all(envelope >= linear - 1e-6) and np.all(envelope <= sim.informed_limit(truth, config) + 1e-6)
    silent = dataclasses.replace(truth, component_moments_am=0 * truth.component_moments_am)
    np.testing.assert_allclose(sim.envelope_informed_limit(silent, config, draws=4), sim.linear_limit(silent, config), atol=1e-9)
