"""Spectral building blocks: every simulated time course is filtered noise with a known spectrum.

Each process here comes with its exact one-sided spectrum on a common frequency grid, so the
covariance of the data after any linear time-invariant filter can be computed (see
`SimulationTruth.sensor_covariance`) instead of estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

_PINK_LOWEST_POLE_HZ = 0.1
_PINK_POLE_RATIO = 3.0


def _frequency_grid(sfreq_hz: float) -> np.ndarray:
    """One-sided grid 0 … fs/2 fine enough (≥ 16 s of lags) for the narrowest spectral peak."""
    n_fft = 1 << int(math.ceil(math.log2(16.0 * sfreq_hz)))
    return np.fft.rfftfreq(n_fft, d=1.0 / sfreq_hz)


def _integration_weights(freqs_hz: np.ndarray) -> np.ndarray:
    """Trapezoid weights (Hz) on the uniform grid."""
    weights = np.full(freqs_hz.shape, freqs_hz[1] - freqs_hz[0])
    weights[[0, -1]] *= 0.5
    return weights


def _pink_sos(sfreq_hz: float) -> np.ndarray:
    """SOS of a unit-variance 1/f shaping filter for white noise.

    Real poles spaced by a factor 3 from 0.1 Hz upward, each followed by a zero at the geometric
    midpoint to the next pole: |H|² then falls by 10 dB per decade (1/f), flattening below 0.1 Hz
    so the variance stays finite.
    """
    poles_hz = []
    f = _PINK_LOWEST_POLE_HZ
    while f < 0.45 * sfreq_hz:
        poles_hz.append(f)
        f *= _PINK_POLE_RATIO
    poles = np.exp(-2 * np.pi * np.array(poles_hz) / sfreq_hz)
    zeros = np.exp(-2 * np.pi * np.array(poles_hz) * math.sqrt(_PINK_POLE_RATIO) / sfreq_hz)
    sos = scipy.signal.zpk2sos(zeros, poles, 1.0)
    # Unit variance: the impulse response's energy, over 20 time constants of the slowest pole.
    n = int(20 * sfreq_hz / (2 * np.pi * _PINK_LOWEST_POLE_HZ))
    impulse = np.zeros(n)
    impulse[0] = 1.0
    energy = float(np.sum(scipy.signal.sosfilt(sos, impulse) ** 2))
    sos[0, :3] /= math.sqrt(energy)
    return sos


def _linear_psd(sos_or_ba: Any, freqs_hz: np.ndarray, sfreq_hz: float, innovation_variance: float = 1.0) -> np.ndarray:
    """Complex one-sided 'amplitude spectrum' T with ∫₀^{fs/2} |T|² df = output variance."""
    w = 2 * np.pi * freqs_hz / sfreq_hz
    if isinstance(sos_or_ba, np.ndarray):
        _, h = scipy.signal.sosfreqz(sos_or_ba, worN=w)
    else:
        _, h = scipy.signal.freqz(sos_or_ba[0], sos_or_ba[1], worN=w)
    return h * math.sqrt(2.0 * innovation_variance / sfreq_hz)


def _ar2_resonator(center_hz: float, bandwidth_hz: float, sfreq_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-variance AR(2) resonance driven by unit white noise: `(b, a, (φ1, φ2))`."""
    radius = math.exp(-math.pi * bandwidth_hz / sfreq_hz)
    phi1 = 2 * radius * math.cos(2 * math.pi * center_hz / sfreq_hz)
    phi2 = -radius * radius
    variance = (1 - phi2) / ((1 + phi2) * ((1 - phi2) ** 2 - phi1**2))
    b = np.array([1.0 / math.sqrt(variance)])
    a = np.array([1.0, -phi1, -phi2])
    return b, a, np.array([phi1, phi2])


def _ar2_autocorrelation(phi: np.ndarray, n_lags: int) -> np.ndarray:
    """Normalised autocorrelation ρ(0…n_lags−1) of a stationary AR(2) (Yule–Walker recursion)."""
    phi1, phi2 = phi
    rho = np.empty(n_lags)
    rho[0] = 1.0
    rho[1] = phi1 / (1 - phi2)
    for k in range(2, n_lags):
        rho[k] = phi1 * rho[k - 1] + phi2 * rho[k - 2]
    return rho


def _psd_from_autocorrelation(autocorrelation: np.ndarray, n_fft: int, sfreq_hz: float) -> np.ndarray:
    """One-sided PSD (unit²/Hz) on `rfftfreq(n_fft)` from R(0 … n_fft/2)."""
    half = n_fft // 2
    r = np.zeros(half + 1)
    m = min(len(autocorrelation), half + 1)
    r[:m] = autocorrelation[:m]
    symmetric = np.concatenate([r, r[-2:0:-1]])
    two_sided = np.fft.rfft(symmetric).real  # Σ_k R(k) e^{-iωk}
    return np.clip(2.0 * two_sided / sfreq_hz, 0.0, None)


@dataclass(frozen=True, eq=False)
class _BurstProcess:
    """Carrier (unit-variance AR(2) resonance) × envelope |u|^power, u a slow unit AR(1)."""

    carrier_b: np.ndarray
    carrier_a: np.ndarray
    envelope_coefficient: float
    envelope_power: int  # 1: |u| (waxing/waning), 2: u² (sparse bursts)

    @property
    def norm(self) -> float:
        # E[|u|^(2p)] = 1 (p = 1) or 3 (p = 2): divide so the product has unit variance.
        return 1.0 if self.envelope_power == 1 else 1.0 / math.sqrt(3.0)

    def psd(self, phi: np.ndarray, freqs_hz: np.ndarray, sfreq_hz: float) -> np.ndarray:
        n_fft = 2 * (len(freqs_hz) - 1)
        lags = np.arange(n_fft // 2 + 1)
        rho_u = self.envelope_coefficient ** lags
        if self.envelope_power == 1:
            # E|u₀||u_k| for jointly Gaussian unit variables with correlation ρ.
            rho_u = np.clip(rho_u, 0.0, 1.0)
            envelope = (2 / np.pi) * (np.sqrt(1 - rho_u**2) + rho_u * np.arcsin(rho_u))
        else:
            envelope = 1 + 2 * rho_u**2  # E[u₀² u_k²]
        autocorrelation = self.norm**2 * envelope * _ar2_autocorrelation(phi, len(lags))
        return _psd_from_autocorrelation(autocorrelation, n_fft, sfreq_hz)

