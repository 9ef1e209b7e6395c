"""brainformer.preprocessing: causal stateful filters, chunk invariance, decimation, scaling, SSP."""

from __future__ import annotations

import mne
import numpy as np
import pytest
import scipy.signal

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.preprocessing import (
    FLAT_CHANNEL_RELATIVE_STD,
    NonFiniteInputError,
    PreprocessingError,
    PreprocessingSpec,
    StreamingPreprocessor,
    eeg_preprocessor,
    fit_scaling,
    meg_preprocessor,
    preprocess_recording,
    scale_meg,
    unscale_meg,
)

SFREQ_HZ = 600.614990234375


@pytest.fixture(scope="module")
def config() -> BrainformerConfig:
    return BrainformerConfig()


@pytest.fixture(scope="module")
def eeg_like() -> np.ndarray:
    """(3000, 60) random-walk + noise in volts, like raw EEG with drifts."""
    rng = np.random.default_rng(0)
    return 1e-5 * (rng.standard_normal((3000, 60)) + 0.05 * rng.standard_normal((3000, 60)).cumsum(axis=0))


def run_chunked(pre: StreamingPreprocessor, x: np.ndarray, sizes) -> tuple[np.ndarray, np.ndarray]:
    outs, stamps, i = [], [], 0
    timestamps = np.arange(len(x), dtype=np.float64) / pre.spec.input_sfreq_hz
    for size in sizes:
        if i >= len(x):
            break
        out, ts = pre.process(x[i : i + size], timestamps[i : i + size])
        outs.append(out)
        stamps.append(ts)
        i += size
    assert i >= len(x)
    return np.concatenate(outs), np.concatenate(stamps)


def random_sizes(rng: np.random.Generator, n: int) -> list[int]:
    # Many 1-sample chunks, some small and some large ones, and an empty one.
    return [0] + list(rng.choice([1, 1, 1, 2, 3, 7, 16, 33, 250, 1000], size=n))


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
