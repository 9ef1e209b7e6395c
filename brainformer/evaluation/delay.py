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
import scipy.fft
import scipy.signal

from brainformer.evaluation.metrics import EvaluationError

__all__ = [
    "DEFAULT_MAX_LAG_S", "EffectiveDelay", "band_effective_delays", "delays_table", "effective_delay", "envelope",
    "lag_correlation",
    "zero_phase_band",
]

#: Lags scanned on either side of zero (seconds): beyond the slowest delay of a 4 Hz high-pass.
DEFAULT_MAX_LAG_S = 0.25
#: Butterworth order of the zero-phase band-passes that pick one band out of both signals.
BAND_FILTER_ORDER = 4
#: Rows of the prediction per FFT block of `_sliding_products` (bounds its memory and FFT size).
_FFT_BLOCK_ROWS = 4096
#: A truth window whose centred sum of squares is below this share of its raw sum of squares is
#: constant but for rounding.
_CONSTANT_RELATIVE_SS = 1e-12


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

    All lags at once: the products come from FFT cross-correlations (`_sliding_products`) and each
    lag's truth statistics from sums updated row by row, so the cost grows as n·log n, not n × lags (minutes of
    test data at ±150 lags took hours with one pass per lag).
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
    m = n - 2 * max_lag  # the rows scored: predicted[max_lag : n − max_lag]
    p = predicted[max_lag : n - max_lag] - predicted[max_lag : n - max_lag].mean(axis=0)
    p_norm = np.sqrt(np.einsum("ij,ij->j", p, p))
    # Lag `lag` pairs these rows with truth[k : k + m], k = max_lag − lag. Centring the truth by its
    # overall mean changes no correlation and keeps the sums below well conditioned.
    t = truth - truth.mean(axis=0)
    offsets = max_lag - lags  # (lags,) values of k
    # Sums over truth[k : k + m] for k = 0 … 2·max_lag: the first window's, then each next one
    # gains row k + m − 1 and loses row k − 1.
    head, tail = t[: 2 * max_lag], t[m : m + 2 * max_lag]
    window_sum = np.concatenate([t[:m].sum(axis=0)[None], tail - head]).cumsum(axis=0)[offsets]  # (lags, channels)
    window_sq = np.concatenate([np.einsum("ij,ij->j", t[:m], t[:m])[None], tail**2 - head**2]).cumsum(axis=0)[offsets]
    t_ss = np.clip(window_sq - window_sum**2 / m, 0.0, None)
    products = _sliding_products(p, t, 2 * max_lag)[offsets]  # (lags, channels)
    # A window that is constant leaves only rounding in t_ss: treat it as constant.
    valid = (p_norm > 0)[None, :] & (t_ss > _CONSTANT_RELATIVE_SS * np.maximum(window_sq, np.finfo(float).tiny))
    denominator = np.sqrt(t_ss) * p_norm[None, :]
    r = np.where(valid, products / np.where(valid, denominator, 1.0), 0.0)
    counts = valid.sum(axis=1)
    mean_r = np.full(lags.size, np.nan)
    np.divide(r.sum(axis=1), counts, out=mean_r, where=counts > 0)
    return lags, mean_r


def _sliding_products(p: np.ndarray, t: np.ndarray, max_offset: int) -> np.ndarray:
    """`(max_offset + 1, channels)`: row k is Σ_i p[i]·t[k + i] per channel, for `p (m, channels)` and
    `t (m + max_offset, channels)`.

    Blocks of `p` are cross-correlated with the rows of `t` they meet, by FFTs just long enough that
    the circular correlation does not wrap for k ≤ max_offset, and summed in the frequency domain:
    one inverse FFT for the whole signal.
    """
    m, channels = p.shape
    size = scipy.fft.next_fast_len(_FFT_BLOCK_ROWS + max_offset, real=True)
    spectrum = np.zeros((size // 2 + 1, channels), dtype=np.complex128)
    for start in range(0, m, _FFT_BLOCK_ROWS):
        stop = min(start + _FFT_BLOCK_ROWS, m)
        spectrum += np.conj(scipy.fft.rfft(p[start:stop], size, axis=0)) * scipy.fft.rfft(t[start : stop + max_offset], size, axis=0)
    return scipy.fft.irfft(spectrum, size, axis=0)[: max_offset + 1]


def effective_delay(truth: np.ndarray, predicted: np.ndarray, sfreq_hz: float,
                    max_lag_s: float = DEFAULT_MAX_LAG_S) -> EffectiveDelay:
    """The lag (ms) at which `predicted (n, channels)` best matches `truth (n, channels)`."""
    lags, mean_r = lag_correlation(truth, predicted, sfreq_hz, max_lag_s)
    if not np.any(np.isfinite(mean_r)):
        raise EvaluationError("no channel varies in both the truth and the prediction")
    best = int(np.nanargmax(mean_r))
    lags_ms = 1e3 * lags / sfreq_hz
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
