"""brainformer.preprocessing.recording: real recordings offline, SSP, scaling, errors naming the file."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.preprocessing import (
    PreprocessingError,
    eeg_preprocessor,
    fit_scaling,
    meg_preprocessor,
    preprocess_recording,
    unscale_meg,
)
from tests.preprocessing.helpers import SFREQ_HZ


@pytest.fixture(scope="module")
def sample_raw(sample_fif):
    return mne.io.read_raw_fif(sample_fif, verbose="error")


@pytest.fixture(scope="module")
def sample_preprocessed(sample_raw, config):
    return preprocess_recording(sample_raw, config)


def test_real_recording_offline_equals_online_16_sample_chunks(sample_raw, sample_preprocessed, config):
    rec = sample_preprocessed
    assert rec.eeg.shape == (14400, 60) and rec.meg.shape == (14400, 306)
    assert rec.eeg.dtype == np.float32 and rec.meg.dtype == np.float32
    assert rec.sfreq_hz == SFREQ_HZ and rec.source.endswith("test_raw.fif")
    np.testing.assert_array_equal(rec.times, sample_raw.times)

    # Online: EEG as the daemon gets it, 16 samples at a time, in the config's channel order.
    eeg_raw = sample_raw.get_data(picks=config.eeg_channel_names).T
    online = eeg_preprocessor(config, sample_raw.info["sfreq"])
    chunks = [online.process(eeg_raw[i : i + 16], None)[0] for i in range(0, len(eeg_raw), 16)]
    np.testing.assert_array_equal(np.concatenate(chunks), rec.eeg)


def test_real_recording_meg_gets_the_files_ssp_projections(sample_raw, sample_preprocessed, config):
    assert len(sample_raw.info["projs"]) == 3 and not sample_raw.proj
    projected = sample_raw.copy().pick(config.meg_channel_names).load_data().apply_proj(verbose="error")
    expected, _ = meg_preprocessor(config, sample_raw.info["sfreq"]).process(projected.get_data().T, None)
    np.testing.assert_allclose(sample_preprocessed.meg, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    unprojected, _ = meg_preprocessor(config, sample_raw.info["sfreq"]).process(
        sample_raw.get_data(picks=config.meg_channel_names).T, None
    )
    mags = [i for i, t in enumerate(config.meg_channel_types) if t == "mag"]
    grads = [i for i, t in enumerate(config.meg_channel_types) if t == "grad"]
    assert np.abs(unprojected[:, mags] - sample_preprocessed.meg[:, mags]).max() > 0.1 * np.abs(unprojected[:, mags]).max()
    # The projectors of this file cover magnetometers only: gradiometers pass unchanged.
    np.testing.assert_array_equal(unprojected[:, grads], sample_preprocessed.meg[:, grads])


def test_real_recording_is_scaled_with_fitted_statistics(sample_raw, sample_preprocessed, config):
    train = slice(601, 8640)
    fitted = fit_scaling(config, sample_preprocessed.eeg[train], sample_preprocessed.meg[train])
    scaled = preprocess_recording(sample_raw, fitted, chunk_samples=5000)
    np.testing.assert_allclose(scaled.meg[train].std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(scaled.eeg[train].mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(
        unscale_meg(fitted, scaled.meg), sample_preprocessed.meg, rtol=1e-4, atol=1e-5 * np.abs(sample_preprocessed.meg).max()
    )


def test_missing_channels_name_the_file_and_channels(sample_raw, sample_fif):
    config = BrainformerConfig(eeg_channel_names=["EEG 001", "EEG 999", "Cz"])
    with pytest.raises(PreprocessingError, match=r"test_raw\.fif: EEG channels .* missing .*EEG 999, Cz"):
        preprocess_recording(sample_raw, config)


def test_unusable_file_rate_names_the_file(sample_raw):
    config = BrainformerConfig(sfreq_hz=500.0)
    with pytest.raises(PreprocessingError, match=r"test_raw\.fif: input sampling rate 600\.615 Hz .* 500 Hz"):
        preprocess_recording(sample_raw, config)


def test_nan_segment_names_the_file_and_time_range(sample_raw, config, tmp_path):
    raw = sample_raw.copy().crop(0, 3).load_data()
    sfreq = raw.info["sfreq"]
    raw._data[raw.ch_names.index("EEG 010"), int(1.5 * sfreq) : int(2.0 * sfreq)] = np.nan
    path = tmp_path / "with_nan_raw.fif"
    raw.save(path, verbose="error")
    with pytest.raises(PreprocessingError, match=r"with_nan_raw\.fif: NaN/Inf values at 1\.49\d–1\.99\d s \(channels EEG 010\)"):
        preprocess_recording(mne.io.read_raw_fif(path, verbose="error"), config)
