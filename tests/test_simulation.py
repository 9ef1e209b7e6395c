"""The physics simulator, its truth sidecar, the Wiener oracle and the live synthetic source."""

from __future__ import annotations

import mne
import numpy as np
import pytest
import scipy.signal
from typer.testing import CliRunner

from brainformer import simulation as sim
from brainformer.cli import app
from brainformer.configuration_brainformer import (
    DEFAULT_EEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_NAMES,
    BrainformerConfig,
)
from brainformer.preprocessing import fit_scaling, preprocess_recording

DS000117_EEG = [f"EEG{i:03d}" for i in list(range(1, 61)) + list(range(65, 75))]


def _config(truth: sim.SimulationTruth, **overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=list(truth.eeg_channel_names),
        meg_channel_names=list(truth.meg_channel_names),
        meg_channel_types=list(truth.meg_channel_types),
        sfreq_hz=truth.sfreq_hz,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


def _r2(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-channel R² of `(n, channels)` arrays."""
    residual = ((target - prediction) ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return 1.0 - residual / total


@pytest.fixture(scope="session")
def long_sample():
    """60 s of the sample layout: enough for variance, spectrum and oracle statistics."""
    return sim.simulate("sample", 60.0, seed=11)


@pytest.fixture(scope="session")
def scaled_sample(long_sample):
    """The 60 s simulation preprocessed by the serving path, with scaling fitted on its first half."""
    raw, truth = long_sample
    config = _config(truth)
    plain = preprocess_recording(raw, config)
    settle, half = int(5 * plain.sfreq_hz), plain.n_samples // 2
    config = fit_scaling(config, plain.eeg[settle:half], plain.meg[settle:half])
    return config, preprocess_recording(raw, config)


# --------------------------------------------------------------------------------------------
# Layouts, shapes, determinism
# --------------------------------------------------------------------------------------------
def test_sample_layout_uses_the_recording_geometry_and_names(sample_fif):
    raw, truth = sim.simulate("sample", 1.0, seed=0)
    recording = mne.io.read_raw_fif(sample_fif, preload=False, verbose="error")
    assert raw.info["sfreq"] == recording.info["sfreq"] == 600.614990234375
    assert raw.n_times == round(600.614990234375)
    assert raw.ch_names == recording.copy().pick(["meg", "eeg"]).ch_names
    assert list(truth.eeg_channel_names) == list(DEFAULT_EEG_CHANNEL_NAMES)
    assert list(truth.meg_channel_names) == list(DEFAULT_MEG_CHANNEL_NAMES)
    assert raw.info["projs"] == []
    # Real sensor positions, not zeros.
    eeg_pos = np.array([raw.info["chs"][i]["loc"][:3] for i in mne.pick_types(raw.info, meg=False, eeg=True)])
    expected = np.array([recording.info["chs"][recording.ch_names.index(n)]["loc"][:3] for n in truth.eeg_channel_names])
    np.testing.assert_array_equal(eeg_pos, expected)


def test_ds000117_layout_has_neuromag_and_70_eeg_at_1100_hz():
    raw, truth = sim.simulate("ds000117", 0.5, seed=0)
    assert raw.info["sfreq"] == 1100.0
    assert raw.n_times == 550
    assert list(truth.eeg_channel_names) == DS000117_EEG
    assert len(truth.meg_channel_names) == 306
    assert truth.meg_channel_names[:3] == ("MEG0113", "MEG0112", "MEG0111")
    assert truth.meg_channel_types.count("mag") == 102 and truth.meg_channel_types.count("grad") == 204
    assert raw.get_channel_types(picks=list(truth.meg_channel_names)).count("mag") == 102
    # EEG electrodes sit on the head, inside the helmet: every one is at least 1 cm from every MEG sensor.
    head_from_device = raw.info["dev_head_t"]["trans"]
    meg_pos = np.array([raw.info["chs"][raw.ch_names.index(n)]["loc"][:3] for n in truth.meg_channel_names])
    meg_head = meg_pos @ head_from_device[:3, :3].T + head_from_device[:3, 3]
    eeg_head = np.array([raw.info["chs"][raw.ch_names.index(n)]["loc"][:3] for n in truth.eeg_channel_names])
    distances = np.linalg.norm(eeg_head[:, None] - meg_head[None], axis=2)
    assert distances.min() > 0.01


def test_custom_rate():
    raw, truth = sim.simulate("sample", 0.5, sfreq_hz=500.0, seed=0)
    assert raw.info["sfreq"] == 500.0 and truth.sfreq_hz == 500.0
    assert raw.n_times == 250
    assert truth.freqs_hz[-1] == pytest.approx(250.0)


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
    base = sim._plan("sample", truth_seed.sfreq_hz, 0, sim.DEFAULT_SPACING_MM).truth
    np.testing.assert_array_equal(truth_seed.gain_eeg, base.gain_eeg)
    assert not np.allclose(truth_subject.gain_eeg, base.gain_eeg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layout="bogus", duration_s=1.0), "layout 'bogus'"),
        (dict(layout="sample", duration_s=0.0), "duration_s"),
        (dict(layout="sample", duration_s=float("nan")), "duration_s"),
        (dict(layout="sample", duration_s=1.0, seed=-1), "seed"),
        (dict(layout="sample", duration_s=1.0, sfreq_hz=50.0), "sfreq_hz"),
        (dict(layout="sample", duration_s=1.0, spacing_mm=1.0), "spacing_mm"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sim.simulate(**kwargs)


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


def test_truth_spectra_integrate_to_the_variances():
    truth = sim._plan("sample", sim.default_sfreq_hz("sample"), 0, sim.DEFAULT_SPACING_MM).truth
    weights = sim._integration_weights(truth.freqs_hz)
    assert np.sum(weights * truth.pink_psd) == pytest.approx(1.0, rel=0.02)
    component_variance = np.sum(weights * np.abs(truth.component_transfer) ** 2, axis=1)
    np.testing.assert_allclose(component_variance, np.diag(truth.component_covariance), rtol=0.02)
    # Unfiltered covariance through the grid (all-pass "filter") equals the exact one.
    np.testing.assert_allclose(truth.sensor_covariance(np.ones_like(truth.freqs_hz)), truth.sensor_covariance(), rtol=0.03)


# --------------------------------------------------------------------------------------------
# Files: FIF, sidecar, CLI
# --------------------------------------------------------------------------------------------
def test_simulate_data_command_writes_a_fif_and_its_truth(tmp_path):
    out = tmp_path / "run" / "sim_raw.fif"
    sim.simulate_data_command(layout="ds000117", duration_s=1.5, sfreq_hz=None, seed=2, out=out)
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


def test_cli_simulate_data(tmp_path):
    out = tmp_path / "cli_raw.fif"
    result = CliRunner().invoke(app, ["simulate-data", "--layout", "sample", "--duration", "0.5", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "oracle R²" in result.output
    assert mne.io.read_raw_fif(out, verbose="error").n_times == round(0.5 * 600.614990234375)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--layout", "nope"], "layout 'nope'"),
        (["--duration", "-1"], "duration_s"),
        (["--sfreq", "20"], "sfreq_hz"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, arguments, message):
    out = tmp_path / "x_raw.fif"
    result = CliRunner().invoke(app, ["simulate-data", "--out", str(out), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_refuses_a_non_fif_name(tmp_path):
    result = CliRunner().invoke(app, ["simulate-data", "--duration", "0.2", "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and ".fif" in result.output


def test_large_recordings_go_through_a_memory_mapped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "IN_MEMORY_LIMIT_BYTES", 1000)
    out = tmp_path / "big_raw.fif"
    sim.simulate_data_command(layout="sample", duration_s=0.3, sfreq_hz=None, seed=4, out=out)
    expected, _ = sim.simulate("sample", 0.3, seed=4)
    written = mne.io.read_raw_fif(out, preload=True, verbose="error")
    np.testing.assert_allclose(written.get_data(), expected.get_data(), rtol=1e-6, atol=1e-20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_raw-truth.npz", "big_raw.fif"]  # temp file gone


# --------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------
def test_wiener_oracle_on_raw_data(long_sample):
    raw, truth = long_sample
    weights = sim.wiener_oracle(truth)
    assert weights.shape == (306, 60)
    expected = sim.oracle_map(truth).expected_r2
    assert np.all(expected <= 1.0) and 0.1 < expected.mean() < 1.0
    eeg = raw.get_data(picks=list(truth.eeg_channel_names)).T
    meg = raw.get_data(picks=list(truth.meg_channel_names)).T
    empirical = _r2(meg, eeg @ weights.T)
    assert abs(empirical.mean() - expected.mean()) < 0.08
    shuffled = _r2(meg, eeg[:, np.random.default_rng(0).permutation(60)] @ weights.T)
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
    empirical = _r2(recording.meg[test].astype(np.float64), predicted[test])
    assert abs(empirical.mean() - expected.mean()) < 0.08
    assert np.corrcoef(empirical, expected)[0, 1] > 0.8  # the per-channel pattern too

    shuffled_eeg = recording.eeg[:, np.random.default_rng(1).permutation(recording.eeg.shape[1])]
    shuffled = _r2(recording.meg[test].astype(np.float64), sim.oracle_prediction(truth, config, shuffled_eeg)[test])
    assert shuffled.mean() < empirical.mean() - 0.2


def test_oracle_follows_the_config_channel_order(long_sample):
    _, truth = long_sample
    config = _config(truth)
    reordered = _config(
        truth,
        eeg_channel_names=list(truth.eeg_channel_names)[::-1],
        meg_channel_names=list(truth.meg_channel_names)[:10][::-1],
        meg_channel_types=list(truth.meg_channel_types)[:10][::-1],
    )
    base = sim.oracle_map(truth, config)
    other = sim.oracle_map(truth, reordered)
    np.testing.assert_allclose(other.weights, base.weights[:10][::-1, ::-1], rtol=1e-6, atol=1e-12 * np.abs(base.weights).max())
    np.testing.assert_allclose(other.expected_r2, base.expected_r2[:10][::-1], rtol=1e-8)
    missing = _config(truth, eeg_channel_names=["EEG 999"] + list(truth.eeg_channel_names)[1:])
    with pytest.raises(ValueError, match="EEG 999"):
        sim.oracle_map(truth, missing)


def test_oracle_prediction_from_a_recording_path(tmp_path):
    out = tmp_path / "oracle_raw.fif"
    sim.simulate_data_command(layout="sample", duration_s=3.0, sfreq_hz=None, seed=7, out=out)
    truth = sim.load_truth(out)
    config = _config(truth)
    recording = preprocess_recording(mne.io.read_raw_fif(out, verbose="error"), config)
    from_path = sim.oracle_prediction(out, config)  # what `brainformer evaluate` calls
    from_arrays = sim.oracle_prediction(truth, config, recording.eeg)
    assert from_path.shape == recording.meg.shape
    np.testing.assert_allclose(from_path, from_arrays)


def test_oracle_prediction_needs_a_simulation(sample_fif):
    truth = sim._plan("sample", sim.default_sfreq_hz("sample"), 0, sim.DEFAULT_SPACING_MM).truth
    with pytest.raises(FileNotFoundError):
        sim.oracle_prediction(sample_fif, _config(truth))
    with pytest.raises(ValueError, match="eeg_preprocessed"):
        sim.oracle_prediction(truth, _config(truth), np.zeros((10, 3)))


# --------------------------------------------------------------------------------------------
# Live source
# --------------------------------------------------------------------------------------------
def test_synthetic_source_is_the_same_signal_for_any_chunking():
    whole = sim.SyntheticSource("sample", seed=9).read_eeg(2000)
    source = sim.SyntheticSource("sample", seed=9)
    sizes = [1, 7, 100, 513, 0, 3, 1376]
    pieces = [source.read_eeg(n) for n in sizes]
    assert [p.shape for p in pieces] == [(n, 60) for n in sizes]
    joined = np.concatenate(pieces)
    assert source.samples_generated == 2000
    # Every filter and random stream is sequential; only matrix-product rounding may differ.
    np.testing.assert_allclose(joined, whole, rtol=1e-5, atol=1e-12)
    # ... and it is the EEG of the offline simulation with the same seed.
    raw, truth = sim.simulate("sample", 2000 / 600.614990234375, seed=9)
    offline = raw.get_data(picks=list(truth.eeg_channel_names)).T
    np.testing.assert_allclose(whole, offline, rtol=1e-5, atol=1e-12)


def test_synthetic_source_attributes_and_errors():
    source = sim.SyntheticSource("ds000117", seed=0)
    assert source.eeg_channel_names == DS000117_EEG
    assert source.sfreq_hz == 1100.0
    assert len(source.meg_channel_names) == 306
    chunk = source.read_eeg(110)
    assert chunk.dtype == np.float32 and chunk.shape == (110, 70)
    assert 1e-6 < float(np.std(chunk)) < 1e-4
    with pytest.raises(ValueError, match="n_samples"):
        source.read_eeg(-1)
    with pytest.raises(RuntimeError, match="with_meg"):
        source.read_eeg_meg(10)
    with pytest.raises(ValueError, match="layout"):
        sim.SyntheticSource("nope")


def test_synthetic_source_with_meg_matches_the_simulation():
    source = sim.SyntheticSource("sample", seed=2, with_meg=True)
    eeg, meg = source.read_eeg_meg(300)
    raw, truth = sim.simulate("sample", 300 / 600.614990234375, seed=2)
    np.testing.assert_allclose(meg, raw.get_data(picks=list(truth.meg_channel_names)).T, rtol=1e-5, atol=1e-20)
    np.testing.assert_allclose(eeg, raw.get_data(picks=list(truth.eeg_channel_names)).T, rtol=1e-5, atol=1e-12)
