"""The offline path (`prepare`/`evaluate`) through the adaptation stage's resampler."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.adaptation import StreamResampler
from brainformer.preprocessing import (
    PreprocessingError, eeg_preprocessor, meg_preprocessor, needs_resampling, preprocess_recording,
)


@pytest.fixture(scope="module")
def short(raw):
    return raw.copy().crop(0, 6)


def test_matching_rate_is_unchanged_by_the_option(short, default_fields):
    plain = preprocess_recording(short, default_fields)
    same = preprocess_recording(short, default_fields, resample=True)
    assert np.array_equal(plain.eeg, same.eeg) and np.array_equal(plain.meg, same.meg)
    assert np.array_equal(plain.times, same.times)


def test_other_rate_is_resampled_by_the_streaming_resampler(short, default_fields):
    fields = default_fields.replace(sfreq_hz=500.0, eeg_mean=None, eeg_std=None, meg_mean=None, meg_std=None)
    assert needs_resampling(short.info["sfreq"], 500.0)
    with pytest.raises(PreprocessingError):  # without the option: refused, as before
        preprocess_recording(short, fields)
    recording = preprocess_recording(short, fields, chunk_samples=777, resample=True)
    assert recording.sfreq_hz == 500.0
    # The same thing by hand: one resampler call on the whole EEG, then the preprocessor at 500 Hz.
    eeg = short.get_data(picks=list(fields.eeg_channel_names)).T
    resampler = StreamResampler(short.info["sfreq"], 500.0, eeg.shape[1], np.float64, lowpass_hz=fields.lowpass_hz)
    resampled, times = resampler.process(eeg, short.times, last=True)
    want, want_times = eeg_preprocessor(fields, 500.0).process(resampled, times)
    assert recording.eeg.shape == want.shape
    np.testing.assert_allclose(recording.eeg, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(recording.times, want_times, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.diff(recording.times), 1 / 500.0, rtol=1e-9)
    # The MEG too: SSP applied, then the same resampler and the MEG preprocessing at 500 Hz.
    meg = short.copy().apply_proj(verbose="error").get_data(picks=list(fields.meg_channel_names)).T
    meg_resampled, _ = StreamResampler(short.info["sfreq"], 500.0, meg.shape[1], np.float64,
                                       lowpass_hz=fields.lowpass_hz).process(meg, None, last=True)
    want_meg, _ = meg_preprocessor(fields, 500.0).process(meg_resampled, None)
    assert recording.meg.shape == want_meg.shape == (len(want), fields.n_meg_channels)
    np.testing.assert_allclose(recording.meg, want_meg, rtol=1e-6, atol=1e-6 * np.abs(want_meg).max())
