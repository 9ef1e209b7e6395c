"""`brainformer.simulation.offline` (with the plan and generator behind it): determinism,
realism, and the files `write_simulation` leaves."""

from __future__ import annotations

import mne
import numpy as np
import pytest
import scipy.signal

from brainformer import simulation as sim
from brainformer.simulation import offline
from brainformer.simulation.generator import CHUNK_SECONDS
from brainformer.simulation.plan import _plan


def test_same_seed_same_data_other_seed_other_data():
    first, truth_a = sim.simulate("sample", 2.0, seed=5)
    second, truth_b = sim.simulate("sample", 2.0, seed=5)
    other, _ = sim.simulate("sample", 2.0, seed=6)
    np.testing.assert_array_equal(first.get_data(), second.get_data())
    np.testing.assert_array_equal(truth_a.gain_meg, truth_b.gain_meg)
    assert truth_a.seed == 5
    assert not np.allclose(first.get_data(), other.get_data())


def test_anatomy_is_fixed_by_subject_not_by_seed():
    _, truth_seed = sim.simulate("sample", 0.1, seed=3)
    _, truth_subject = sim.simulate("sample", 0.1, seed=0, subject=1)
    base = _plan("sample", truth_seed.sfreq_hz, 0, sim.DEFAULT_SPACING_MM).truth
    np.testing.assert_array_equal(truth_seed.gain_eeg, base.gain_eeg)
    assert not np.allclose(truth_subject.gain_eeg, base.gain_eeg)


def test_progress_reports_every_chunk_up_to_the_total():
    calls = []
    raw, _ = sim.simulate("sample", 5.0, seed=0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (raw.n_times, raw.n_times)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})  # increasing, each chunk once
    assert len(calls) == -(-raw.n_times // int(CHUNK_SECONDS * raw.info["sfreq"]))


# --------------------------------------------------------------------------------------------
# Realism: amplitudes, variances, spectra
# --------------------------------------------------------------------------------------------
def test_amplitudes_are_realistic_per_channel_type(long_sample):
    raw, _ = long_sample
    data = raw.get_data()
    assert np.isfinite(data).all()
    rms = {
        "eeg": np.std(data[mne.pick_types(raw.info, meg=False, eeg=True)], axis=1),
        "mag": np.std(data[mne.pick_types(raw.info, meg="mag")], axis=1),
        "grad": np.std(data[mne.pick_types(raw.info, meg="grad")], axis=1),
    }
    assert 5e-6 < np.median(rms["eeg"]) < 50e-6  # 5–50 µV
    assert 100e-15 < np.median(rms["mag"]) < 2000e-15  # 100 fT – 2 pT
    assert 2e-12 < np.median(rms["grad"]) < 50e-12  # 20–500 fT/cm, in T/m


def test_variances_match_the_truth(long_sample):
    raw, truth = long_sample
    eeg = raw.get_data(picks=list(truth.eeg_channel_names))
    meg = raw.get_data(picks=list(truth.meg_channel_names))
    expected = np.diag(truth.sensor_covariance())
    ratio = np.concatenate([eeg.var(axis=1), meg.var(axis=1)]) / expected
    kinds = np.array(["eeg"] * truth.n_eeg + list(truth.meg_channel_types))
    for kind in ("eeg", "mag", "grad"):
        assert 0.8 < np.mean(ratio[kinds == kind]) < 1.25, kind


def test_spectrum_is_one_over_f_with_an_alpha_peak(long_sample):
    raw, truth = long_sample
    eeg = raw.get_data(picks=list(truth.eeg_channel_names))
    eeg = eeg - eeg.mean(axis=0)  # average reference
    freqs, psd = scipy.signal.welch(eeg, fs=raw.info["sfreq"], nperseg=4096, axis=1)
    spectrum = psd.mean(axis=0)

    def band(lo, hi):
        return spectrum[(freqs >= lo) & (freqs < hi)].mean()

    assert band(8.5, 11.5) > 1.5 * band(5.5, 7.0)
    assert band(8.5, 11.5) > 1.5 * band(13.5, 16.0)
    assert band(1.5, 2.5) > 3 * band(40, 50) > 0  # falling background


# --------------------------------------------------------------------------------------------
# Files: FIF, sidecar
# --------------------------------------------------------------------------------------------
def test_write_simulation_writes_a_fif_and_its_truth(tmp_path):
    out = tmp_path / "run" / "sim_raw.fif"
    sim.write_simulation(layout="ds000117", duration_s=1.5, sfreq_hz=None, seed=2, out=out)
    assert out.is_file()
    sidecar = tmp_path / "run" / "sim_raw-truth.npz"
    assert sim.truth_path(out) == sidecar and sidecar.is_file()
    assert sim.is_simulated(out)

    written = mne.io.read_raw_fif(out, preload=True, verbose="error")
    expected, truth = sim.simulate("ds000117", 1.5, seed=2)
    assert written.ch_names == expected.ch_names
    assert written.info["sfreq"] == 1100.0
    # The FIF stores float32.
    np.testing.assert_allclose(written.get_data(), expected.get_data(), rtol=1e-6, atol=1e-20)

    loaded = sim.load_truth(out)
    assert loaded.layout == "ds000117" and loaded.seed == 2 and loaded.sfreq_hz == 1100.0
    assert loaded.eeg_channel_names == truth.eeg_channel_names
    assert loaded.meg_channel_types == truth.meg_channel_types
    np.testing.assert_array_equal(loaded.gain_eeg, truth.gain_eeg)
    np.testing.assert_array_equal(loaded.component_transfer, truth.component_transfer)
    with np.load(sidecar, allow_pickle=False) as raw_npz:
        assert raw_npz["source_covariance_am2"].shape == (truth.gain_eeg.shape[1],) * 2
        assert raw_npz["noise_covariance_meg"].shape == (306, 306)


def test_a_real_recording_is_not_simulated(sample_fif, tmp_path):
    assert not sim.is_simulated(sample_fif)
    with pytest.raises(FileNotFoundError):
        sim.load_truth(sample_fif)
    junk = tmp_path / "junk-truth.npz"
    np.savez(junk, something=np.zeros(3))
    with pytest.raises(ValueError, match="junk-truth.npz"):
        sim.load_truth(junk)


def test_large_recordings_go_through_a_memory_mapped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "IN_MEMORY_LIMIT_BYTES", 1000)
    out = tmp_path / "big_raw.fif"
    sim.write_simulation(layout="sample", duration_s=0.3, sfreq_hz=None, seed=4, out=out)
    expected, _ = sim.simulate("sample", 0.3, seed=4)
    written = mne.io.read_raw_fif(out, preload=True, verbose="error")
    np.testing.assert_allclose(written.get_data(), expected.get_data(), rtol=1e-6, atol=1e-20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_raw-truth.npz", "big_raw.fif"]  # temp file gone
