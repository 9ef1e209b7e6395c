"""The subject plan: anatomy, generators and noise levels of one simulated subject at one rate.

Everything here is drawn from the ``subject`` number, never from the seed: a subject's anatomy
(and hence its EEG → MEG map) stays the same across simulation seeds while its activity changes.
One random stream draws, in this order: the source orientations, the alpha, evoked and sparse
generators, then the sensor-noise levels. The order is part of the result (reordering the draws
changes every subject), so the helpers below are called in exactly that order by `_plan`.

Activity:
    background: 1/f (pink) noise on every source, spatially smooth (Gaussian correlation over
        15 mm), realised in sensor space through a factor of its sensor covariance (the same
        Gaussian distribution as simulating every source, to 1e-6 of its variance, and cheaper);
    alpha: 4 occipito-parietal dipoles, 8.3–11.7 Hz resonances with waxing/waning envelopes;
    evoked: 4 temporal/occipital dipoles answering random events (Bernoulli per sample, 0.8/s)
        with delayed damped oscillations, sharing the events (so they are correlated);
    sparse: 2 strong superficial dipoles with rare high-amplitude beta (14–25 Hz) bursts;
    sensor noise: white + pink per channel, independent across channels, at realistic densities.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.signal

from brainformer.simulation.layouts import LAYOUTS, HeadModel, head_model
from brainformer.simulation.spectra import _ar2_resonator, _BurstProcess, _frequency_grid, _linear_psd, _pink_sos
from brainformer.simulation.truth import SimulationTruth, _background_covariance

# Activity levels, SI units. Dipole moments are root-mean-square over time. The background is
# specified per 12 mm grid cell (see `_plan` for other spacings). With these levels the raw data
# have RMS ≈ 12–15 µV (EEG), 500–700 fT (mag) and 110–160 fT/cm (grad, white noise up to Nyquist
# included), like the bundled real recording (14 µV, 390 fT, 72 fT/cm).
_BACKGROUND_MOMENT_RMS_AM = 2.2e-9
# Background activity is spatially smooth: a Gaussian correlation between sources at this distance.
_BACKGROUND_CORRELATION_LENGTH_M = 0.015
_ORIENTATION_SMOOTHING_M = 0.010
_BACKGROUND_DROPPED_VARIANCE = 1e-6
_ALPHA_MOMENT_RMS_AM = 60e-9
_EVOKED_MOMENT_RMS_AM = 15e-9
_SPARSE_MOMENT_RMS_AM = 60e-9
_N_ALPHA, _N_EVOKED, _N_SPARSE = 4, 4, 2
_EVENT_RATE_HZ = 0.8
# Sensor noise: white density (unit/√Hz) and pink RMS, per channel type, before a per-channel
# log-normal jitter of 15 %. EEG: amplifier + electrode noise; MEG: SQUID floor + environment.
_NOISE_WHITE_DENSITY = {"eeg": 0.1e-6, "mag": 4e-15, "grad": 0.35e-12}
_NOISE_PINK_RMS = {"eeg": 2e-6, "mag": 80e-15, "grad": 1e-12}


@dataclass(frozen=True, eq=False)
class _EvokedKernel:
    b: np.ndarray  # includes the latency (leading zeros) and the unit-variance normalisation
    a: np.ndarray


@dataclass(frozen=True, eq=False)
class _Plan:
    """One simulated subject at one rate: the truth (seed 0) plus what the generator needs."""

    truth: SimulationTruth
    pink_sos: np.ndarray
    background_factor_eeg: np.ndarray  # (n_eeg, r)
    background_factor_meg: np.ndarray  # (n_meg, r)
    alpha: tuple[_BurstProcess, ...]
    evoked: tuple[_EvokedKernel, ...]
    sparse: tuple[_BurstProcess, ...]
    event_probability: float
    leads_eeg: np.ndarray  # (n_eeg, K) sensor pattern per unit component, order alpha, evoked, sparse
    leads_meg: np.ndarray  # (n_meg, K)
    noise_white_sd_eeg: np.ndarray
    noise_pink_sd_eeg: np.ndarray
    noise_white_sd_meg: np.ndarray
    noise_pink_sd_meg: np.ndarray


@dataclass(frozen=True, eq=False)
class _Regions:
    """Source indices by region, from the direction and depth of each source.

    Head frame: +x right, +y front, +z up.
    """

    everything: np.ndarray
    superficial: np.ndarray
    posterior: np.ndarray
    temporal_left: np.ndarray
    temporal_right: np.ndarray
    occipital: np.ndarray

    @classmethod
    def of(cls, head: HeadModel) -> "_Regions":
        offset = head.source_positions_m - head.sphere_center_m
        depth_ratio = np.linalg.norm(offset, axis=1) / head.brain_radius_m
        direction = offset / np.linalg.norm(offset, axis=1, keepdims=True)
        return cls(
            everything=np.arange(head.n_sources),
            superficial=np.flatnonzero(depth_ratio >= 0.7),
            posterior=np.flatnonzero((direction[:, 1] < -0.4) & (direction[:, 2] > -0.2) & (depth_ratio >= 0.55)),
            temporal_left=np.flatnonzero((direction[:, 0] < -0.7) & (direction[:, 2] < 0.3)),
            temporal_right=np.flatnonzero((direction[:, 0] > 0.7) & (direction[:, 2] < 0.3)),
            occipital=np.flatnonzero(direction[:, 1] < -0.7),
        )


@dataclass(eq=False)
class _Components:
    """The single-dipole generators in the order they are made (alpha, evoked, sparse).

    The lists become the truth's ``component_*`` fields; a driver of 0 is the shared event train,
    any other driver belongs to one component only.
    """

    sfreq_hz: float
    freqs_hz: np.ndarray
    kinds: list[str] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    moments: list[float] = field(default_factory=list)
    drivers: list[int] = field(default_factory=list)
    transfers: list[np.ndarray] = field(default_factory=list)

    def add(self, kind: str, source: int, moment: float, driver: int, transfer: np.ndarray) -> None:
        self.kinds.append(kind)
        self.sources.append(int(source))
        self.moments.append(moment)
        self.drivers.append(driver)
        self.transfers.append(transfer)

    def add_burst(
        self, kind: str, center_hz: float, bandwidth_hz: float, envelope_hz: float, power: int, source: int, moment: float
    ) -> _BurstProcess:
        b, a, phi = _ar2_resonator(center_hz, bandwidth_hz, self.sfreq_hz)
        process = _BurstProcess(b, a, math.exp(-2 * math.pi * envelope_hz / self.sfreq_hz), power)
        transfer = np.sqrt(process.psd(phi, self.freqs_hz, self.sfreq_hz)).astype(np.complex128)
        self.add(kind, source, moment, len(self.drivers) + 1, transfer)  # its own driver
        return process


def _pick_sources(rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray, count: int) -> np.ndarray:
    pool = candidates if candidates.size >= count else fallback
    return rng.choice(pool, size=count, replace=False)


def _impulse_variance(event_probability: float) -> float:
    # Event amplitude A = 0.5 + v/p for a uniform v < p: uniform on [0.5, 1.5), E[A] = 1, E[A²] = 13/12.
    return event_probability * 13.0 / 12.0 - event_probability**2


def _orientations(rng: np.random.Generator, head: HeadModel) -> np.ndarray:
    """`(n_src, 3)` unit orientations, varying smoothly over about a centimetre as the normal of a
    folded cortical sheet does (random vectors smoothed with the background's kernel)."""
    smoothing = _background_covariance(head.source_positions_m, np.ones(head.n_sources), _ORIENTATION_SMOOTHING_M)
    orientations = smoothing @ rng.standard_normal((head.n_sources, 3))
    orientations /= np.linalg.norm(orientations, axis=1, keepdims=True)
    return orientations


def _alpha_generators(rng: np.random.Generator, regions: _Regions, components: _Components) -> tuple[_BurstProcess, ...]:
    """Occipito-parietal resonances around one subject-wide alpha peak, waxing and waning."""
    alpha_peak_hz = rng.uniform(9.0, 11.0)
    return tuple(
        components.add_burst("alpha", alpha_peak_hz + rng.uniform(-0.7, 0.7), 1.5, rng.uniform(0.15, 0.4), 1, source,
                             _ALPHA_MOMENT_RMS_AM * rng.uniform(0.7, 1.3))
        for source in _pick_sources(rng, regions.posterior, regions.superficial, _N_ALPHA)
    )


def _evoked_kernel(rng: np.random.Generator, sfreq_hz: float, impulse_variance: float) -> tuple[_EvokedKernel, np.ndarray]:
    """A damped sine after a latency, scaled to unit variance under the event train; and its
    impulse response."""
    latency = int(round(rng.uniform(0.07, 0.2) * sfreq_hz))
    frequency_hz = rng.uniform(4.0, 10.0)
    decay_s = rng.uniform(0.04, 0.1)
    radius = math.exp(-1.0 / (decay_s * sfreq_hz))
    omega = 2 * math.pi * frequency_hz / sfreq_hz
    a = np.array([1.0, -2 * radius * math.cos(omega), radius**2])
    b = np.concatenate([np.zeros(latency + 1), [radius * math.sin(omega)]])  # damped sine after the latency
    impulse = np.zeros(latency + int(30 * decay_s * sfreq_hz) + 2)
    impulse[0] = 1.0
    response = scipy.signal.lfilter(b, a, impulse)
    scale = 1.0 / math.sqrt(impulse_variance * float(np.sum(response**2)))
    return _EvokedKernel(b * scale, a), response * scale


def _evoked_generators(
    rng: np.random.Generator, regions: _Regions, components: _Components, event_probability: float
) -> tuple[tuple[_EvokedKernel, ...], list[np.ndarray]]:
    """One temporal source per hemisphere and two occipital ones, all driven by the events;
    returns the kernels and their impulse responses."""
    impulse_variance = _impulse_variance(event_probability)
    evoked_sources = np.concatenate([
        _pick_sources(rng, regions.temporal_left, regions.superficial, 1),
        _pick_sources(rng, regions.temporal_right, regions.superficial, 1),
        _pick_sources(rng, regions.occipital, regions.superficial, _N_EVOKED - 2),
    ])
    kernels: list[_EvokedKernel] = []
    impulse_responses: list[np.ndarray] = []
    for source in evoked_sources:
        kernel, response = _evoked_kernel(rng, components.sfreq_hz, impulse_variance)
        kernels.append(kernel)
        impulse_responses.append(response)
        transfer = _linear_psd((kernel.b, kernel.a), components.freqs_hz, components.sfreq_hz, impulse_variance)
        components.add("evoked", source, _EVOKED_MOMENT_RMS_AM * rng.uniform(0.7, 1.3), 0, transfer)  # 0: the event train
    return tuple(kernels), impulse_responses


def _sparse_generators(rng: np.random.Generator, regions: _Regions, components: _Components) -> tuple[_BurstProcess, ...]:
    """Strong superficial dipoles with rare high-amplitude beta bursts."""
    return tuple(
        components.add_burst("sparse", rng.uniform(14.0, 25.0), 3.0, rng.uniform(0.1, 0.25), 2, source,
                             _SPARSE_MOMENT_RMS_AM * rng.uniform(0.7, 1.3))
        for source in _pick_sources(rng, regions.superficial, regions.everything, _N_SPARSE)
    )


def _component_covariance(kinds: list[str], impulse_responses: list[np.ndarray], impulse_variance: float) -> np.ndarray:
    """`(K, K)` exact covariance of the unit time courses: identity but for the evoked block,
    whose components share the event train."""
    component_cov = np.eye(len(kinds))
    evoked_idx = [i for i, kind in enumerate(kinds) if kind == "evoked"]
    length = max(len(r) for r in impulse_responses)
    responses = np.zeros((len(impulse_responses), length))
    for i, response in enumerate(impulse_responses):
        responses[i, : len(response)] = response
    component_cov[np.ix_(evoked_idx, evoked_idx)] = impulse_variance * responses @ responses.T
    return component_cov


def _noise_sd(rng: np.random.Generator, channel_types: tuple[str, ...], sfreq_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel white and pink sensor-noise standard deviations, with a 15 % log-normal jitter."""
    jitter = np.exp(0.15 * rng.standard_normal((2, len(channel_types))))
    white_sd = np.array([_NOISE_WHITE_DENSITY[t] for t in channel_types]) * math.sqrt(sfreq_hz / 2) * jitter[0]
    pink_sd = np.array([_NOISE_PINK_RMS[t] for t in channel_types]) * jitter[1]
    return white_sd, pink_sd


def _background_factor(sensor_cov: np.ndarray) -> np.ndarray:
    """`(channels, r)` factor F with F Fᵀ ≈ `sensor_cov`, the background's sensor covariance.

    Computed on the correlation scale so EEG and MEG keep the same precision, and truncated where
    the dropped eigenvalues hold < 1e-6 of the variance (about half the rank).
    """
    sensor_sd = np.sqrt(np.diag(sensor_cov))
    eigenvalues, eigenvectors = np.linalg.eigh(sensor_cov / np.outer(sensor_sd, sensor_sd))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    kept = int(np.searchsorted(np.cumsum(eigenvalues) / np.sum(eigenvalues), 1.0 - _BACKGROUND_DROPPED_VARIANCE)) + 1
    eigenvalues, eigenvectors = eigenvalues[:kept], eigenvectors[:, :kept]
    # Fix each eigenvector's sign (largest entry positive) so the factor does not depend on LAPACK.
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(kept)])
    return eigenvectors * signs * np.sqrt(eigenvalues) * sensor_sd[:, None]


@functools.lru_cache(maxsize=8)
def _plan(layout: str, sfreq_hz: float, subject: int, spacing_mm: float) -> _Plan:
    """The plan of `subject` for a layout at `sfreq_hz` (cached: the forward model is slow)."""
    head = head_model(layout, spacing_mm)
    rng = np.random.default_rng([subject, LAYOUTS.index(layout), 20_240_117])
    n_eeg, n_src = len(head.eeg_channel_names), head.n_sources

    orientations = _orientations(rng, head)
    gain_eeg = np.einsum("csx,sx->cs", head.gain_eeg_free, orientations)
    gain_meg = np.einsum("csx,sx->cs", head.gain_meg_free, orientations)

    regions = _Regions.of(head)
    freqs = _frequency_grid(sfreq_hz)
    components = _Components(sfreq_hz, freqs)
    event_probability = _EVENT_RATE_HZ / sfreq_hz
    alpha = _alpha_generators(rng, regions, components)
    evoked, impulse_responses = _evoked_generators(rng, regions, components, event_probability)
    sparse = _sparse_generators(rng, regions, components)
    component_cov = _component_covariance(components.kinds, impulse_responses, _impulse_variance(event_probability))
    white_sd, pink_sd = _noise_sd(rng, ("eeg",) * n_eeg + head.meg_channel_types, sfreq_hz)

    # Background: a smooth current-density field sampled on the grid (a cell's moment is density
    # × volume, hence the variance scales with the sixth power of the spacing), every source with
    # the same 1/f spectrum, realised through a factor of its sensor covariance G B Gᵀ.
    background_variance = np.full(n_src, _BACKGROUND_MOMENT_RMS_AM**2 * (spacing_mm / 12.0) ** 6)
    background_cov = _background_covariance(head.source_positions_m, background_variance, _BACKGROUND_CORRELATION_LENGTH_M)
    gain = np.vstack([gain_eeg, gain_meg])
    factor = _background_factor(gain @ background_cov @ gain.T)

    pink_sos = _pink_sos(sfreq_hz)
    pink_psd = np.abs(_linear_psd(pink_sos, freqs, sfreq_hz)) ** 2
    leads = gain[:, components.sources] * np.asarray(components.moments)
    truth = SimulationTruth(
        layout=layout, seed=0, subject=subject, sfreq_hz=sfreq_hz, spacing_mm=spacing_mm,
        eeg_channel_names=head.eeg_channel_names, meg_channel_names=head.meg_channel_names,
        meg_channel_types=head.meg_channel_types,
        gain_eeg=gain_eeg, gain_meg=gain_meg,
        source_positions_m=head.source_positions_m, source_orientations=orientations,
        background_variance_am2=background_variance,
        background_correlation_length_m=_BACKGROUND_CORRELATION_LENGTH_M, pink_psd=pink_psd,
        component_kinds=tuple(components.kinds), component_sources=np.asarray(components.sources, dtype=np.int64),
        component_moments_am=np.asarray(components.moments),
        component_drivers=np.asarray(components.drivers, dtype=np.int64),
        component_covariance=component_cov, component_transfer=np.vstack(components.transfers),
        noise_white_variance_eeg=white_sd[:n_eeg] ** 2, noise_pink_variance_eeg=pink_sd[:n_eeg] ** 2,
        noise_white_variance_meg=white_sd[n_eeg:] ** 2, noise_pink_variance_meg=pink_sd[n_eeg:] ** 2,
        freqs_hz=freqs,
    )
    return _Plan(
        truth=truth, pink_sos=pink_sos,
        background_factor_eeg=np.ascontiguousarray(factor[:n_eeg]),
        background_factor_meg=np.ascontiguousarray(factor[n_eeg:]),
        alpha=alpha, evoked=evoked, sparse=sparse, event_probability=event_probability,
        leads_eeg=np.ascontiguousarray(leads[:n_eeg]), leads_meg=np.ascontiguousarray(leads[n_eeg:]),
        noise_white_sd_eeg=white_sd[:n_eeg], noise_pink_sd_eeg=pink_sd[:n_eeg],
        noise_white_sd_meg=white_sd[n_eeg:], noise_pink_sd_meg=pink_sd[n_eeg:],
    )
