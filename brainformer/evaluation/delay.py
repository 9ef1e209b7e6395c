"""The effective delay of a prediction: the lag at which it best matches the brain as it is now.

A closed loop feels the delay between what the brain does and the prediction it acts on. Against
the zero-phase band-passed MEG (the band-limited brain signal with no delay added), a prediction
that lags by `d` correlates best when shifted back by `d`:

    r(lag) = mean over channels of corr(predicted[t], truth[t − lag]),   lag = 0 … max_lag

The effective delay is the lag of the highest mean r; r at that lag and at zero lag say what a
consumer gets if it corrects for the delay (it cannot, live) and what it gets as served. Negative
lags (a prediction ahead of the brain) are scanned too.

Per band (theta, alpha, beta) both signals are first band-passed with the same zero-phase filter,
which shifts neither, and two delays are measured, because a filter delays a rhythm's cycles and
its envelope by different amounts:

- the **signal** lag, from the band-passed signals: in a narrow band the correlation peaks where
  the cycles line up, i.e. at the phase delay (modulo one cycle) — what phase-locked feedback
  feels;
- the **envelope** lag, from the band-passed signals' Hilbert envelopes: the group delay — what
  power (envelope) feedback feels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.signal

from brainformer.evaluation.metrics import EvaluationError

__all__ = [
    "DEFAULT_MAX_LAG_S", "EffectiveDelay", "band_effective_delays", "delays_table", "effective_delay", "envelope",
    "lag_correlation", "lag_phase_locking",
    "zero_phase_band",
]

#: Lags scanned on either side of zero (seconds): beyond the slowest delay of a 4 Hz high-pass.
DEFAULT_MAX_LAG_S = 0.25
#: Butterworth order of the zero-phase band-passes that pick one band out of both signals.
BAND_FILTER_ORDER = 4
#: A channel whose variance is below this fraction of its squared peak is constant (rounding only).
_CONSTANT = 1e-20


@dataclass(frozen=True)
class EffectiveDelay:
    """Where a prediction best matches the truth.

    Attributes:
        lag_ms: the lag of the highest mean r (positive: the prediction lags the truth).
        r_at_lag: mean r at that lag.
        r_at_zero: mean r at zero lag, as served.
        lags_ms, mean_r: the whole curve, for plots.
    """

    lag_ms: float
    r_at_lag: float
    r_at_zero: float
    lags_ms: np.ndarray
    mean_r: np.ndarray

    def to_dict(self, curve: bool = False) -> dict[str, Any]:
        out = {"lag_ms": round(self.lag_ms, 2), "r_at_lag": round(self.r_at_lag, 4), "r_at_zero": round(self.r_at_zero, 4)}
        if curve:
            out |= {"lags_ms": np.round(self.lags_ms, 3).tolist(), "mean_r": np.round(self.mean_r, 5).tolist()}
        return out


def lag_correlation(truth: np.ndarray, predicted: np.ndarray, sfreq_hz: float,
                    max_lag_s: float = DEFAULT_MAX_LAG_S, step_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`(lags in samples, mean r)` of `predicted[t]` against `truth[t − lag]`, `(n, channels)` each.

    Every lag is scored on the same rows (those where all lags exist), so the curve compares like
    with like; channels where either signal is constant are left out of the mean.
    """
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if truth.shape != predicted.shape or truth.ndim != 2:
        raise EvaluationError(f"truth and prediction must both be (n, channels), got {truth.shape} and {predicted.shape}")
    max_lag = int(round(max_lag_s * sfreq_hz))
    n = truth.shape[0]
    if n <= 2 * max_lag + 2:
        raise EvaluationError(f"{n} samples are too few to scan lags of ±{max_lag} samples")
    lags = np.arange(-max_lag, max_lag + 1, step_samples)
    m = n - 2 * max_lag  # rows scored at every lag
    p = predicted[max_lag : n - max_lag]
    p_peak = np.abs(p).max(axis=0)
    p = p - p.mean(axis=0)
    p_norm = np.sqrt((p * p).sum(axis=0))
    # Row i of the prediction meets truth row i + offset, offset = max_lag − lag. The products
    # for every offset at once are a cross-correlation (FFT: O(n log n), not O(n · lags)); the
    # truth's sum and sum of squares over each offset's rows come from cumulative sums. Since the
    # prediction's rows sum to zero, the truth's mean drops out of the cross term.
    t_peak = np.abs(truth).max(axis=0)
    t = truth - truth.mean(axis=0)
    cross = scipy.signal.fftconvolve(t, p[::-1], mode="valid", axes=0)  # (2 max_lag + 1, channels)
    cumulative = np.zeros((n + 1, t.shape[1]))
    np.cumsum(t, axis=0, out=cumulative[1:])
    squares = np.zeros((n + 1, t.shape[1]))
    np.cumsum(t * t, axis=0, out=squares[1:])
    offsets = max_lag - lags
    sums = cumulative[offsets + m] - cumulative[offsets]
    t_var = np.maximum(squares[offsets + m] - squares[offsets] - sums * sums / m, 0.0)  # (lags, channels)
    t_norm = np.sqrt(t_var)
    # A constant signal leaves only rounding in its variance (relative 1e-16 of its size, squared):
    # such a channel is left out, as one whose variance is exactly zero.
    valid = (p_norm ** 2 > _CONSTANT * m * p_peak ** 2) & (t_var > _CONSTANT * m * t_peak ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(valid, cross[offsets] / (p_norm * t_norm), 0.0)
    counts = valid.sum(axis=1)
    mean_r = np.where(counts > 0, r.sum(axis=1) / np.maximum(counts, 1), np.nan)
    return lags, mean_r


def lag_phase_locking(truth_phase: np.ndarray, predicted_phase: np.ndarray, sfreq_hz: float,
                      max_lag_s: float = DEFAULT_MAX_LAG_S, step_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`(lags in samples, mean phase locking)` of `predicted_phase[t]` against `truth_phase[t − lag]`
    (radians, `(n, channels)` each), on the same rows for every lag, as `lag_correlation`.

    The locking at a lag is complex: per channel the mean of ``exp(i (predicted[t] − truth[t − lag]))``,
    averaged over channels. Its modulus is the phase locking value (1: a constant phase
    difference), its angle the mean phase error, and its real part the locking counted only where
    the phases agree, which (like r) peaks at the lag where the phases line up.
    """
    truth_phase = np.asarray(truth_phase, dtype=np.float64)
    predicted_phase = np.asarray(predicted_phase, dtype=np.float64)
    if truth_phase.shape != predicted_phase.shape or truth_phase.ndim != 2:
        raise EvaluationError(f"truth and prediction must both be (n, channels), got {truth_phase.shape} and "
                              f"{predicted_phase.shape}")
    max_lag = int(round(max_lag_s * sfreq_hz))
    n = truth_phase.shape[0]
    if n <= 2 * max_lag + 2:
        raise EvaluationError(f"{n} samples are too few to scan lags of ±{max_lag} samples")
    lags = np.arange(-max_lag, max_lag + 1, step_samples)
    predicted_unit = np.exp(1j * predicted_phase[max_lag : n - max_lag])
    truth_unit = np.exp(-1j * truth_phase)
    locking = np.empty(lags.size, dtype=np.complex128)
    for i, lag in enumerate(lags):
        locking[i] = (predicted_unit * truth_unit[max_lag - lag : n - max_lag - lag]).mean(axis=0).mean()
    return lags, locking


def effective_delay(truth: np.ndarray, predicted: np.ndarray, sfreq_hz: float,
                    max_lag_s: float = DEFAULT_MAX_LAG_S) -> EffectiveDelay:
    """The lag (ms) at which `predicted (n, channels)` best matches `truth (n, channels)`; NaN
    lag and r where no channel varies in both (a silent prediction, e.g. a path that is off, has
    no delay to find, and a report of several methods must not fail on it)."""
    lags, mean_r = lag_correlation(truth, predicted, sfreq_hz, max_lag_s)
    lags_ms = 1e3 * lags / sfreq_hz
    if not np.any(np.isfinite(mean_r)):
        return EffectiveDelay(lag_ms=float("nan"), r_at_lag=float("nan"), r_at_zero=float("nan"),
                              lags_ms=lags_ms, mean_r=mean_r)
    best = int(np.nanargmax(mean_r))
    return EffectiveDelay(lag_ms=float(lags_ms[best]), r_at_lag=float(mean_r[best]),
                          r_at_zero=float(mean_r[lags.size // 2]), lags_ms=lags_ms, mean_r=mean_r)


def zero_phase_band(signal: np.ndarray, sfreq_hz: float, band_hz: tuple[float, float]) -> np.ndarray:
    """`signal (n, channels)` band-passed forward and backward (no shift), Butterworth."""
    sos = scipy.signal.butter(BAND_FILTER_ORDER, band_hz, btype="bandpass", fs=sfreq_hz, output="sos")
    return scipy.signal.sosfiltfilt(sos, np.asarray(signal, dtype=np.float64), axis=0)


def envelope(signal: np.ndarray) -> np.ndarray:
    """Hilbert envelope of each column of a band-limited `signal (n, channels)`."""
    return np.abs(scipy.signal.hilbert(np.asarray(signal, dtype=np.float64), axis=0))


def band_effective_delays(truth: np.ndarray, predicted: np.ndarray, sfreq_hz: float,
                          bands_hz: Mapping[str, tuple[float, float]] | None = None,
                          max_lag_s: float = DEFAULT_MAX_LAG_S) -> dict[str, EffectiveDelay]:
    """The effective delay over the whole signal (``"all"``) and per band (theta, alpha, beta by
    default: `brainformer.preprocessing.BANDS_HZ`), each band picked out of both signals by the
    same zero-phase band-pass: ``"<band>"`` for the signal lag, ``"<band> envelope"`` for the
    envelope lag (see the module docstring)."""
    if bands_hz is None:
        from brainformer.preprocessing import BANDS_HZ

        bands_hz = BANDS_HZ
    out = {"all": effective_delay(truth, predicted, sfreq_hz, max_lag_s)}
    for name, band in bands_hz.items():
        truth_band = zero_phase_band(truth, sfreq_hz, band)
        predicted_band = zero_phase_band(predicted, sfreq_hz, band)
        out[name] = effective_delay(truth_band, predicted_band, sfreq_hz, max_lag_s)
        out[f"{name} envelope"] = effective_delay(envelope(truth_band), envelope(predicted_band), sfreq_hz, max_lag_s)
    return out


def delays_table(delays: Mapping[str, EffectiveDelay], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows ``{band, lag_ms, r_at_lag, r_at_zero}`` for reports."""
    return [{"band": name} | delays[name].to_dict() for name in (names or list(delays))]
