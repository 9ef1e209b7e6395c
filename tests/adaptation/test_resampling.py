"""Streaming resampling: which converter (linear or soxr QQ) for which rate, timestamps of the
EEG instants, chunk-invariance, hold-back, and the in-band error the choice rests on."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.adaptation import (
    AdaptationOptions, Adapter, SourceDescription, StreamResampler, plan_adaptation,
)
from brainformer.adaptation.resampling import LINEAR, SOXR_QQ, linear_error_db, resampler_method

MODEL_HZ = 600.614990234375
LOWPASS_HZ = 40.0
T0 = 4711.25  # an LSL-like clock
METHODS = [LINEAR, SOXR_QQ]


def _sine(fs, seconds=10.0, freq=11.0, n_channels=3):
    ts = T0 + np.arange(int(seconds * fs)) / fs
    phase = 2 * np.pi * freq * (ts - T0)
    x = np.stack([np.sin(phase + k) for k in range(n_channels)], axis=1)
    return x.astype(np.float32), ts


def _chunked(resampler, x, ts, seed=0):
    rng = np.random.default_rng(seed)
    ys, tss, start = [], [], 0
    while start < len(x):
        n = int(rng.integers(1, 40))
        y, t = resampler.process(x[start : start + n], ts[start : start + n])
        ys.append(y.copy())
        tss.append(t.copy())
        start += n
    return np.concatenate(ys), np.concatenate(tss)


@pytest.mark.parametrize(
    ("input_hz", "lowpass_hz", "method"),
    [
        (500.0, LOWPASS_HZ, LINEAR),  # upsampling close to 1: every alias path past sinc²'s main lobe
        (620.0, LOWPASS_HZ, LINEAR),  # slight downsampling: the paths sit in the kernel's null
        (1000.0, LOWPASS_HZ, SOXR_QQ),  # 400 Hz content mirrors to 600 Hz, lands near 0 Hz
        (2048.0, LOWPASS_HZ, SOXR_QQ),  # 560-640 Hz content folds straight into the band
        (256.0, LOWPASS_HZ, SOXR_QQ),  # the band edge droops by 1 - sinc²(40/256)
        (500.0, None, SOXR_QQ),  # no low-pass: the model's whole band must stay clean
    ],
)
def test_converter_is_linear_only_where_its_in_band_error_is_small(input_hz, lowpass_hz, method):
    assert resampler_method(input_hz, MODEL_HZ, lowpass_hz) == method
    assert StreamResampler(input_hz, MODEL_HZ, 2, lowpass_hz=lowpass_hz).method == method


def test_without_a_low_pass_corner_soxr_is_kept():
    assert StreamResampler(500.0, MODEL_HZ, 2).method == SOXR_QQ


@pytest.mark.parametrize(
    ("input_hz", "sine_hz", "image_hz"),
    [(500.0, 130.0, 500.0 + 130.0), (1000.0, 400.0, 1000.0 - 400.0), (1000.0, 430.0, 1000.0 - 430.0)],
)
def test_linear_interpolation_aliases_into_the_band_as_predicted(input_hz, sine_hz, image_hz):
    """The error model behind the choice, checked on the real converter: a sine at `sine_hz`
    reappears at |image - output rate| with gain sinc²(image / input rate)."""
    n = int(20 * input_hz)
    x = np.sin(2 * np.pi * sine_hz * np.arange(n) / input_hz).astype(np.float32)[:, None]
    y, _ = StreamResampler(input_hz, MODEL_HZ, 1, method=LINEAR).process(x)
    alias_hz = abs(image_hz - MODEL_HZ)
    assert alias_hz <= LOWPASS_HZ
    t = np.arange(len(y)) / MODEL_HZ
    window = np.hanning(len(y))
    amplitude = 2 * abs(np.sum(window * y[:, 0] * np.exp(-2j * np.pi * alias_hz * t))) / window.sum()
    want = np.sinc(image_hz / input_hz) ** 2
    assert 20 * np.log10(amplitude / want) == pytest.approx(0.0, abs=0.3)
    assert amplitude <= 10 ** (linear_error_db(input_hz, MODEL_HZ, LOWPASS_HZ) / 20) * 1.04


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("input_hz", [500.0, 620.0, 1000.0])
def test_ramp_values_are_the_eeg_at_the_stamped_instants(method, input_hz):
    """Both converters reproduce a ramp exactly, so each output must equal the ramp at its own
    timestamp: the stamp is the EEG instant the sample represents, to a microsecond."""
    ts = T0 + np.arange(int(4 * input_hz)) / input_hz
    x = np.stack([ts - T0, 2.0 * (ts - T0) - 1.0], axis=1).astype(np.float32)
    resampler = StreamResampler(input_hz, MODEL_HZ, 2, method=method)
    y, t = _chunked(resampler, x, ts, seed=1)
    settled = slice(0, None) if method == LINEAR else slice(8, None)  # soxr starts from silence
    np.testing.assert_allclose(y[settled, 0], (t - T0)[settled], rtol=0, atol=2e-6)
    np.testing.assert_allclose(y[settled, 1], 2.0 * (t - T0)[settled] - 1.0, rtol=0, atol=4e-6)
    k = np.arange(len(t))
    np.testing.assert_allclose(t, T0 + resampler.input_position(k) / input_hz, rtol=0, atol=1e-9)
    assert 0.0 <= resampler.phase < resampler.ratio


@pytest.mark.parametrize(("method", "tolerance"), [(LINEAR, 3e-3), (SOXR_QQ, 1e-4)])
def test_sine_stays_a_sine_at_the_right_phase(method, tolerance):
    x, ts = _sine(500.0)
    y, t = _chunked(StreamResampler(500.0, MODEL_HZ, 3, method=method), x, ts)
    assert abs(len(y) - len(x) * MODEL_HZ / 500.0) < 4
    settled = slice(20, None)
    want = np.stack([np.sin(2 * np.pi * 11.0 * (t - T0) + k) for k in range(3)], axis=1)
    assert np.abs(y[settled] - want[settled]).max() < tolerance
    # Time alignment: the lag that best explains the output, in output samples.
    lags = np.linspace(-0.2, 0.2, 401)
    errors = [np.abs(y[settled, 0] - np.sin(2 * np.pi * 11.0 * (t[settled] - T0 - lag / MODEL_HZ))).max() for lag in lags]
    assert abs(lags[int(np.argmin(errors))]) <= 0.01  # a hundredth of a sample
    np.testing.assert_allclose(np.diff(t), 1 / MODEL_HZ, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("method", "input_hz"), [(LINEAR, 500.0), (LINEAR, 620.0), (SOXR_QQ, 500.0), (SOXR_QQ, 1000.0)])
def test_chunks_of_random_size_equal_one_call(method, input_hz, dtype):
    x, ts = _sine(input_hz, seconds=4.0)
    y_chunked, t_chunked = _chunked(StreamResampler(input_hz, MODEL_HZ, 3, dtype, method=method), x, ts, seed=3)
    y_whole, t_whole = StreamResampler(input_hz, MODEL_HZ, 3, dtype, method=method).process(x, ts)
    assert y_whole.dtype == dtype
    assert np.array_equal(y_chunked, y_whole[: len(y_chunked)])
    np.testing.assert_allclose(t_chunked, t_whole[: len(t_chunked)], rtol=0, atol=1e-9)
    assert len(y_whole) - len(y_chunked) <= 1


@pytest.mark.parametrize("method", METHODS)
def test_reset_starts_a_new_signal(method):
    x, ts = _sine(500.0, seconds=1.0)
    resampler = StreamResampler(500.0, MODEL_HZ, 3, method=method)
    resampler.process(x[:333], ts[:333])
    resampler.reset()
    assert resampler.pending_samples == 0.0 and resampler.delay_s == 0.0
    assert resampler.samples_in == 0 and resampler.samples_out == 0
    y, t = resampler.process(x, ts)
    y_fresh, t_fresh = StreamResampler(500.0, MODEL_HZ, 3, method=method).process(x, ts)
    assert np.array_equal(y, y_fresh) and np.array_equal(t, t_fresh)


def _delays(resampler, chunk_samples=10, chunks=500):
    chunk = np.zeros((chunk_samples, resampler.n_channels), np.float32)
    delays = []
    for _ in range(chunks):
        resampler.process(chunk)
        delays.append(resampler.delay_s)
    return np.array(delays[20:])


@pytest.mark.parametrize("input_hz", [500.0, 512.0, 550.0, 620.0])
def test_linear_holds_back_at_most_one_output_sample(input_hz):
    resampler = StreamResampler(input_hz, MODEL_HZ, 2, lowpass_hz=LOWPASS_HZ)
    assert resampler.method == LINEAR
    delays = _delays(resampler)
    # An output comes out as soon as the input sample after its instant arrives.
    assert 0 < delays.min() and delays.max() <= 1 / MODEL_HZ + 1e-9
    if input_hz < MODEL_HZ:
        assert delays.max() <= 1 / input_hz
    assert delays.mean() <= 1e-3


def test_linear_hold_back_is_the_age_of_the_newest_output():
    """`delay_s` is the EEG time between the newest sample returned and the newest given."""
    x, ts = _sine(500.0, seconds=1.0)
    resampler = StreamResampler(500.0, MODEL_HZ, 3, method=LINEAR)
    for start in range(0, len(x), 7):
        _, t = resampler.process(x[start : start + 7], ts[start : start + 7])
        if len(t):
            assert resampler.delay_s == pytest.approx(ts[min(start + 7, len(x)) - 1] - t[-1], abs=1e-9)


@pytest.mark.parametrize("input_hz", [500.0, 1000.0, 1100.0, 2048.0, 256.0])
def test_soxr_holds_back_a_couple_of_samples(input_hz):
    delays = _delays(StreamResampler(input_hz, MODEL_HZ, 2, method=SOXR_QQ))
    # soxr QQ (cubic) needs 2 input samples after an output instant, plus one output sample.
    assert delays.max() <= 2 / input_hz + 1 / MODEL_HZ + 1e-9
    if input_hz >= 1000.0:
        assert delays.mean() <= 2e-3


def _apply_in_chunks(adapter, x, ts, n=10):
    ys, tss = [], []
    for start in range(0, len(x), n):
        y, t = adapter.apply(x[start : start + n], ts[start : start + n])
        ys.append(y.copy())
        tss.append(t.copy())
    return np.concatenate(ys), np.concatenate(tss)


@pytest.mark.parametrize(("input_hz", "method", "tolerance"), [(500.0, LINEAR, 3e-3), (1000.0, SOXR_QQ, 1e-4)])
def test_adapter_resamples_with_timestamps_of_the_eeg_instants(default_fields, input_hz, method, tolerance):
    x60, ts = _sine(input_hz, seconds=3.0, n_channels=60)
    source = SourceDescription(name="amp", labels=default_fields.eeg_channel_names, units=("uV",) * 60,
                               sfreq_hz=input_hz, channel_format="float32")
    plan = plan_adaptation(default_fields, source)
    assert plan.resample and plan.output_sfreq_hz == pytest.approx(MODEL_HZ)
    assert plan.resampler == method and f"resampled ({method}," in plan.describe()
    adapter = Adapter(plan, max_chunk_samples=10)
    phase = StreamResampler(input_hz, MODEL_HZ, 1, method=method).phase
    assert plan.output_input_position(MODEL_HZ) == pytest.approx(input_hz + phase)
    y, t = _apply_in_chunks(adapter, x60, ts)
    want = 1e-6 * np.sin(2 * np.pi * 11.0 * (t - T0))
    assert np.abs(y[20:, 0] - want[20:]).max() < 1e-6 * tolerance
    assert 0 < plan.resampler_delay_s[0] <= plan.resampler_delay_s[1] <= 2 / input_hz + 1 / MODEL_HZ


def test_integer_multiple_is_left_to_the_decimation(default_fields):
    source = SourceDescription(name="amp", labels=default_fields.eeg_channel_names, sfreq_hz=2 * MODEL_HZ, units=("V",) * 60)
    plan = plan_adaptation(default_fields, source)
    assert not plan.resample and plan.decimation == 2 and plan.output_sfreq_hz == 2 * MODEL_HZ
    assert plan.resampler == ""
    forced = plan_adaptation(default_fields, source, AdaptationOptions(resample_integer_multiples=True))
    assert forced.resample and forced.decimation == 1 and forced.output_sfreq_hz == MODEL_HZ
    assert forced.resampler == SOXR_QQ  # halving the rate: the band's mirror falls in sinc²'s main lobe


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_one_sample_chunks_equal_one_call(dtype):
    """One-sample chunks (what a slow LSL pull can return), each a fresh array freed after the
    call, give what one call gives: libsamplerate's read of the frame before a one-frame input
    is served from the previous sample, never from memory next to the chunk."""
    x, ts = _sine(500.0, seconds=1.0, n_channels=60)
    resampler = StreamResampler(500.0, MODEL_HZ, 60, dtype, method=LINEAR)
    ys = [resampler.process(np.array(x[i : i + 1], dtype=dtype) * 1.0, ts[i : i + 1])[0].copy() for i in range(len(x))]
    y_whole, _ = StreamResampler(500.0, MODEL_HZ, 60, dtype, method=LINEAR).process(x, ts)
    y_single = np.concatenate(ys)
    assert np.array_equal(y_single, y_whole[: len(y_single)]) and len(y_whole) - len(y_single) <= 1
    assert np.abs(y_single).max() <= 1.0
