"""The effective delay: a prediction shifted by a known lag is found at that lag, overall and per band."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from brainformer.evaluation import EvaluationError, band_effective_delays, effective_delay, lag_correlation
from brainformer.preprocessing import design_band, input_band
from brainformer.config_fields import BrainformerFields

SFREQ_HZ = 600.0


def noise(n: int = 12000, channels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, channels))


@pytest.mark.parametrize("shift", [0, 7, 30, -12])
def test_a_prediction_shifted_by_a_known_lag_is_found_at_that_lag(shift):
    truth = scipy.signal.sosfiltfilt(scipy.signal.butter(4, [4, 30], "bandpass", fs=SFREQ_HZ, output="sos"), noise(), axis=0)
    predicted = np.roll(truth, shift, axis=0)  # predicted[t] = truth[t − shift]: late by `shift`
    found = effective_delay(truth, predicted, SFREQ_HZ)
    assert found.lag_ms == pytest.approx(1e3 * shift / SFREQ_HZ)
    assert found.r_at_lag == pytest.approx(1.0, abs=1e-9)
    assert (found.r_at_zero < 0.99) == (shift != 0)


def test_the_default_filters_delay_envelopes_by_their_group_delay_and_cycles_by_their_phase_delay():
    # White noise through the default model's causal 4–30 Hz filters against the same noise
    # through them forward and backward (no delay): per band, the envelope lags by about the
    # filters' group delay there (74 ms at 6 Hz, 33 ms at 10 Hz, 22 ms at 20 Hz) and the cycles by
    # about their phase delay (−3 ms at 10 Hz, +11 ms at 20 Hz).
    fields = BrainformerFields(highpass_hz=4.0, lowpass_hz=30.0, filter_order=4, notch_hz=(60.0,), sfreq_hz=SFREQ_HZ)
    sos, _ = design_band(input_band(fields), SFREQ_HZ)
    raw = noise(60000, 2, seed=1)
    causal = scipy.signal.sosfilt(sos, raw, axis=0)
    zero_phase = scipy.signal.sosfiltfilt(sos, raw, axis=0)
    delays = band_effective_delays(zero_phase, causal, SFREQ_HZ)
    assert set(delays) == {"all", "theta", "alpha", "beta", "theta envelope", "alpha envelope", "beta envelope"}
    assert delays["alpha envelope"].lag_ms == pytest.approx(32.6, abs=5.0)
    assert delays["beta envelope"].lag_ms == pytest.approx(22.4, abs=5.0)
    assert delays["theta envelope"].lag_ms > delays["alpha envelope"].lag_ms > delays["beta envelope"].lag_ms
    assert delays["alpha"].lag_ms == pytest.approx(-3.0, abs=2.0)
    assert delays["beta"].lag_ms == pytest.approx(10.9, abs=2.0)
    assert delays["alpha envelope"].r_at_lag > delays["alpha envelope"].r_at_zero
    assert delays["all"].lag_ms > 0


def test_lag_correlation_scores_every_lag_on_the_same_rows_and_refuses_short_or_mismatched_input():
    lags, mean_r = lag_correlation(noise(1000), noise(1000, seed=2), SFREQ_HZ, max_lag_s=0.01)
    assert lags.tolist() == list(range(-6, 7)) and mean_r.shape == (13,)
    with pytest.raises(EvaluationError, match="too few"):
        lag_correlation(noise(100), noise(100), SFREQ_HZ, max_lag_s=0.1)
    with pytest.raises(EvaluationError, match="both be"):
        lag_correlation(noise(1000), noise(1000, channels=3), SFREQ_HZ)


def test_phase_locking_finds_a_constant_phase_error_and_the_lag_of_a_delayed_phase():
    """A phase offset by a constant: locking value 1, mean error that constant, at every lag
    where the truth is the same signal; a copy delayed by 12 samples: the real part of the
    locking peaks at lag 12."""
    from brainformer.evaluation.delay import lag_phase_locking

    sfreq_hz = 600.0
    rng = np.random.default_rng(0)
    phase = np.cumsum(2 * np.pi * (10.0 + rng.normal(0, 3.0, 6000)) / sfreq_hz)[:, None]  # a drifting 10 Hz rhythm
    lags, locking = lag_phase_locking(phase, phase + 0.5, sfreq_hz, max_lag_s=0.05)
    zero = int(np.flatnonzero(lags == 0)[0])
    assert abs(locking[zero]) == pytest.approx(1.0)
    assert np.angle(locking[zero]) == pytest.approx(0.5)
    delayed = np.vstack([np.zeros((12, 1)), phase[:-12]])
    lags, locking = lag_phase_locking(phase, delayed, sfreq_hz, max_lag_s=0.05)
    assert lags[int(np.argmax(locking.real))] == 12
    assert abs(locking[int(np.argmax(locking.real))]) == pytest.approx(1.0, abs=1e-3)


def direct_lag_correlation(truth: np.ndarray, predicted: np.ndarray, max_lag: int, lags: np.ndarray) -> np.ndarray:
    """The definition, one lag at a time: mean over non-constant channels of corr(predicted[t], truth[t − lag])
    on the rows where every lag exists."""
    n = truth.shape[0]
    p = predicted[max_lag : n - max_lag]
    out = []
    for lag in lags:
        t = truth[max_lag - lag : n - max_lag - lag]
        keep = (p.std(axis=0) > 0) & (t.std(axis=0) > 0)
        out.append(np.mean([np.corrcoef(p[:, c], t[:, c])[0, 1] for c in np.flatnonzero(keep)]))
    return np.array(out)


@pytest.mark.parametrize("step", [1, 5])
def test_lag_correlation_is_the_correlation_at_each_lag_and_leaves_constant_channels_out(step):
    truth = noise(3000, 5, seed=3) + 10.0  # an offset: the centring must not matter
    predicted = 0.5 * np.roll(truth, 9, axis=0) + noise(3000, 5, seed=4)
    truth[:, 2] = 7.0  # a constant truth channel
    predicted[:, 4] = -1.5  # a constant prediction
    lags, mean_r = lag_correlation(truth, predicted, SFREQ_HZ, max_lag_s=0.05, step_samples=step)
    assert lags.tolist() == list(range(-30, 31, step))
    np.testing.assert_allclose(mean_r, direct_lag_correlation(truth, predicted, 30, lags), rtol=0, atol=1e-10)
    if step == 1:
        assert lags[np.argmax(mean_r)] == 9


def test_lag_correlation_of_a_prediction_with_no_varying_channel_is_nan():
    truth = noise(500, 2)
    _, mean_r = lag_correlation(truth, np.ones_like(truth), SFREQ_HZ, max_lag_s=0.01)
    assert np.isnan(mean_r).all()


def test_a_silent_prediction_has_no_delay_and_does_not_fail_the_others():
    # A path that is off (e.g. a model's skip path alone when it has none) predicts zeros: its
    # delay is NaN, every band included, so a report of several methods still completes.
    truth = noise(3000)
    delays = band_effective_delays(truth, np.zeros_like(truth), SFREQ_HZ)
    assert all(np.isnan(d.lag_ms) and np.isnan(d.r_at_lag) and np.isnan(d.r_at_zero) for d in delays.values())
    assert not np.isnan(effective_delay(truth, truth, SFREQ_HZ).lag_ms)
