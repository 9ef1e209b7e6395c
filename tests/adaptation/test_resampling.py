"""soxr streaming resampling: time-aligned with the timestamp mapping, chunk-invariant, short delay."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.adaptation import (
    AdaptationOptions, Adapter, SourceDescription, StreamResampler, plan_adaptation,
)

MODEL_HZ = 600.614990234375
T0 = 4711.25  # an LSL-like clock


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


def test_sine_stays_a_sine_at_the_right_phase():
    x, ts = _sine(500.0)
    y, t = _chunked(StreamResampler(500.0, MODEL_HZ, 3), x, ts)
    assert abs(len(y) - len(x) * MODEL_HZ / 500.0) < 4
    settled = slice(20, None)
    want = np.stack([np.sin(2 * np.pi * 11.0 * (t - T0) + k) for k in range(3)], axis=1)
    assert np.abs(y[settled] - want[settled]).max() < 1e-4
    # Time alignment: the lag that best explains the output, in output samples.
    lags = np.linspace(-0.2, 0.2, 401)
    errors = [np.abs(y[settled, 0] - np.sin(2 * np.pi * 11.0 * (t[settled] - T0 - lag / MODEL_HZ))).max() for lag in lags]
    assert abs(lags[int(np.argmin(errors))]) <= 0.01  # a hundredth of a sample
    np.testing.assert_allclose(np.diff(t), 1 / MODEL_HZ, rtol=1e-9)


def test_chunks_of_random_size_equal_one_call():
    x, ts = _sine(500.0, seconds=4.0)
    y_chunked, t_chunked = _chunked(StreamResampler(500.0, MODEL_HZ, 3), x, ts, seed=3)
    y_whole, t_whole = StreamResampler(500.0, MODEL_HZ, 3).process(x, ts)
    assert np.array_equal(y_chunked, y_whole[: len(y_chunked)])
    np.testing.assert_allclose(t_chunked, t_whole[: len(t_chunked)], rtol=0, atol=1e-9)
    assert len(y_whole) - len(y_chunked) <= 1


@pytest.mark.parametrize("input_hz", [500.0, 1000.0, 1100.0, 2048.0, 256.0])
def test_hold_back_is_a_couple_of_samples(input_hz):
    resampler = StreamResampler(input_hz, MODEL_HZ, 2)
    chunk = np.zeros((10, 2), np.float32)
    delays = []
    for _ in range(500):
        resampler.process(chunk)
        delays.append(resampler.delay_s)
    # soxr QQ (cubic) needs 2 input samples after an output instant, plus one output sample.
    assert max(delays) <= 2 / input_hz + 1 / MODEL_HZ + 1e-9
    if input_hz >= 1000.0:
        assert np.mean(delays) <= 2e-3


def test_adapter_resamples_with_timestamps_of_the_eeg_instants(default_fields):
    x60, ts = _sine(500.0, seconds=3.0, n_channels=60)
    source = SourceDescription(name="amp", labels=default_fields.eeg_channel_names, units=("uV",) * 60,
                               sfreq_hz=500.0, channel_format="float32")
    plan = plan_adaptation(default_fields, source)
    assert plan.resample and plan.output_sfreq_hz == pytest.approx(MODEL_HZ)
    assert plan.output_input_position(MODEL_HZ) == pytest.approx(500.0)
    adapter = Adapter(plan, max_chunk_samples=10)
    ys, tss = [], []
    for start in range(0, len(x60), 10):
        y, t = adapter.apply(x60[start : start + 10], ts[start : start + 10])
        ys.append(y.copy())
        tss.append(t.copy())
    y, t = np.concatenate(ys), np.concatenate(tss)
    want = 1e-6 * np.sin(2 * np.pi * 11.0 * (t - T0))
    assert np.abs(y[20:, 0] - want[20:]).max() < 1e-10
    assert "resampled (soxr QQ" in plan.describe()


def test_integer_multiple_is_left_to_the_decimation(default_fields):
    source = SourceDescription(name="amp", labels=default_fields.eeg_channel_names, sfreq_hz=2 * MODEL_HZ, units=("V",) * 60)
    plan = plan_adaptation(default_fields, source)
    assert not plan.resample and plan.decimation == 2 and plan.output_sfreq_hz == 2 * MODEL_HZ
    forced = plan_adaptation(default_fields, source, AdaptationOptions(resample_integer_multiples=True))
    assert forced.resample and forced.decimation == 1 and forced.output_sfreq_hz == MODEL_HZ
