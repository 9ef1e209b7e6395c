"""brainformer.preprocessing.filters: causal stateful filters, chunk invariance, decimation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.preprocessing import (
    NonFiniteInputError,
    PreprocessingError,
    PreprocessingSpec,
    StreamingPreprocessor,
    eeg_preprocessor,
    meg_preprocessor,
)
from tests.preprocessing.helpers import SFREQ_HZ, random_sizes, run_chunked


@pytest.mark.parametrize("reference", ["average", "none"])
@pytest.mark.parametrize("decimate", [1, 3])
def test_output_does_not_depend_on_chunking(eeg_like, reference, decimate):
    config = BrainformerConfig(eeg_reference=reference)
    whole, whole_ts = eeg_preprocessor(config, SFREQ_HZ * decimate).process(
        eeg_like, np.arange(len(eeg_like)) / (SFREQ_HZ * decimate)
    )
    rng = np.random.default_rng(1)
    for _ in range(3):
        chunked, chunked_ts = run_chunked(eeg_preprocessor(config, SFREQ_HZ * decimate), eeg_like, random_sizes(rng, 4000))
        np.testing.assert_array_equal(chunked, whole)  # bit for bit
        np.testing.assert_array_equal(chunked_ts, whole_ts)
    assert whole.dtype == np.float32 and whole.flags.c_contiguous
    assert whole.shape == (-(-len(eeg_like) // decimate), 60)


def test_filters_match_scipy_offline_with_same_initial_state(config, eeg_like):
    pre = eeg_preprocessor(config, SFREQ_HZ)
    out, _ = pre.process(eeg_like, np.arange(len(eeg_like), dtype=float))

    referenced = eeg_like - eeg_like.mean(axis=1, keepdims=True)
    expected_sos = np.vstack(
        [
            scipy.signal.butter(4, 1.0, btype="highpass", fs=SFREQ_HZ, output="sos"),
            scipy.signal.butter(4, 40.0, btype="lowpass", fs=SFREQ_HZ, output="sos"),
            scipy.signal.tf2sos(*scipy.signal.iirnotch(60.0, 30.0, fs=SFREQ_HZ)),
        ]
    )
    np.testing.assert_allclose(pre.spec.sos, expected_sos, rtol=1e-12, atol=1e-15)
    zi = scipy.signal.sosfilt_zi(expected_sos)[:, :, None] * referenced[0][None, None, :]
    expected, _ = scipy.signal.sosfilt(expected_sos, referenced, axis=0, zi=zi)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_frequency_response_is_the_configured_band_pass_with_notch(config):
    sos = PreprocessingSpec.for_eeg(config, SFREQ_HZ).sos
    freqs_hz = np.array([0.1, 10.0, 20.0, 60.0, 150.0])
    _, response = scipy.signal.sosfreqz(sos, worN=freqs_hz, fs=SFREQ_HZ)
    gain = np.abs(response)
    assert gain[0] < 1e-3  # below the 1 Hz high-pass
    assert 0.95 < gain[1] <= 1.0 + 1e-9 and 0.9 < gain[2] <= 1.0 + 1e-9  # pass band
    assert gain[3] < 1e-6  # notch at 60 Hz (plus the 40 Hz low-pass)
    assert gain[4] < 3e-3  # above the 40 Hz low-pass: about (40/150)^4 for order 4


def test_causal_a_change_at_sample_k_never_affects_earlier_outputs(config, eeg_like):
    k = 1234
    changed = eeg_like.copy()
    changed[k:] += 1e-4 * np.random.default_rng(2).standard_normal(changed[k:].shape)
    a, _ = eeg_preprocessor(config, SFREQ_HZ).process(eeg_like, None)
    b, _ = eeg_preprocessor(config, SFREQ_HZ).process(changed, None)
    np.testing.assert_array_equal(a[:k], b[:k])
    assert np.abs(a[k:] - b[k:]).max() > 0


def test_state_starts_settled_at_the_first_sample(config):
    # A constant offset (electrode DC) is steady state from the first sample: no transient at all.
    constant = np.tile(np.linspace(-3e-3, 3e-3, 306), (500, 1))
    out, _ = meg_preprocessor(config, SFREQ_HZ).process(constant, None)
    assert np.abs(out).max() < 1e-12


def test_reset_forgets_state(config, eeg_like):
    pre = eeg_preprocessor(config, SFREQ_HZ)
    first, _ = pre.process(eeg_like, None)
    pre.process(eeg_like[:100] + 1.0, None)
    pre.reset()
    again, _ = pre.process(eeg_like, None)
    np.testing.assert_array_equal(first, again)


def test_decimation_keeps_every_nth_sample_and_filters_alias(config):
    factor = 2
    input_sfreq_hz = SFREQ_HZ * factor
    t = np.arange(int(4 * input_sfreq_hz)) / input_sfreq_hz
    tone_10hz = np.sin(2 * np.pi * 10 * t)
    # 500 Hz would alias to ~100.6 Hz at the model rate; the low-pass must remove it first.
    tone_500hz = np.sin(2 * np.pi * 500 * t)
    x = np.stack([tone_10hz, tone_500hz], axis=1) * 1e-12
    narrow = BrainformerConfig(
        meg_channel_names=["MEG 0111", "MEG 0112"], meg_channel_types=["mag", "grad"], notch_hz=[]
    )
    pre = meg_preprocessor(narrow, input_sfreq_hz)
    assert pre.spec.decimation == factor
    assert pre.spec.output_sfreq_hz == pytest.approx(SFREQ_HZ)
    out, ts = pre.process(x, t)
    np.testing.assert_array_equal(ts, t[::factor])
    settled = slice(int(SFREQ_HZ), None)
    assert np.std(out[settled, 0]) == pytest.approx(1e-12 / np.sqrt(2), rel=0.05)  # 10 Hz passes
    assert np.std(out[settled, 1]) < 1e-3 * 1e-12  # 500 Hz removed before decimation


def test_anti_alias_low_pass_added_when_config_has_none():
    no_lowpass = BrainformerConfig(lowpass_hz=None, notch_hz=[])
    spec = PreprocessingSpec.for_eeg(no_lowpass, SFREQ_HZ * 4)
    assert any(stage.startswith("anti-alias") for stage in spec.stages)
    _, response = scipy.signal.sosfreqz(spec.sos, worN=[100.0, SFREQ_HZ / 2, 0.75 * SFREQ_HZ], fs=SFREQ_HZ * 4)
    gain = np.abs(response)
    assert gain[0] > 0.99  # pass band (the high-pass and notch are still there but far away)
    assert gain[1] < 0.06 and gain[2] < 1e-3  # what would alias is attenuated (-25 dB, -60 dB)
    same_rate = PreprocessingSpec.for_eeg(no_lowpass, SFREQ_HZ)
    assert not any(stage.startswith("anti-alias") for stage in same_rate.stages)


def test_rate_within_tolerance_gets_identical_filters(config):
    a = PreprocessingSpec.for_eeg(config, SFREQ_HZ)
    b = PreprocessingSpec.for_eeg(config, 600.615)  # what an LSL stream may announce
    np.testing.assert_array_equal(a.sos, b.sos)


@pytest.mark.parametrize("rate_hz", [1000.0, 300.0, 600.615 * 2.5])
def test_unusable_rate_names_both_rates(config, rate_hz):
    with pytest.raises(PreprocessingError, match=rf"{rate_hz:g} Hz.*600\.615 Hz"):
        eeg_preprocessor(config, rate_hz)


def test_wrong_channel_count_and_non_finite_chunk(config, eeg_like):
    with pytest.raises(PreprocessingError, match="60 channels"):
        StreamingPreprocessor(PreprocessingSpec.for_eeg(config, SFREQ_HZ), 59)
    pre = eeg_preprocessor(config, SFREQ_HZ)
    with pytest.raises(PreprocessingError, match=r"shape \(n, 60\)"):
        pre.process(eeg_like[:, :59], None)
    reference, _ = eeg_preprocessor(config, SFREQ_HZ).process(eeg_like, None)
    first, _ = pre.process(eeg_like[:100], None)
    bad = eeg_like[100:116].copy()
    bad[3, 7] = np.nan
    with pytest.raises(NonFiniteInputError):
        pre.process(bad, None)
    rest, _ = pre.process(eeg_like[100:], None)  # state untouched by the refused chunk
    np.testing.assert_array_equal(np.concatenate([first, rest]), reference)

