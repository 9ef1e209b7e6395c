"""Physics simulator of paired EEG/MEG recordings, and the Wiener oracle to measure models against.

Real paired EEG/MEG is scarce, so this module makes any amount of it from a real forward model:
dipolar sources in a spherical head, with realistic activity, projected through MNE forward
solutions onto the EEG electrodes and the Neuromag-306 MEG sensors, plus sensor noise. Because
the simulator knows every covariance, it also gives the best possible *instantaneous linear* map
from EEG to MEG (the Wiener oracle) and the R² that map reaches, which is what a model trained on
simulated data is compared with.

API (everything else is private)::

    raw, truth = simulate("sample", duration_s=60.0, seed=0)      # mne.io.RawArray + SimulationTruth
    simulate_data_command(layout, duration_s, sfreq_hz, seed, out)  # CLI: FIF + "<stem>-truth.npz"
    is_simulated(path) -> bool                                      # a truth sidecar sits next to it
    truth = load_truth(path)                                        # from the FIF path or the sidecar
    W = wiener_oracle(truth)                                        # (n_meg, n_eeg), raw physical units
    oracle = oracle_map(truth, config)                              # the same after preprocessing
    meg = oracle_prediction(path_or_truth, config, eeg_preprocessed=None)  # (n, n_meg) scaled units
    source = SyntheticSource("ds000117", seed=0)                    # live, endless
    eeg = source.read_eeg(n_samples)                                # (n, n_eeg) float32 volts

Layouts:
    ``sample``: the bundled recording's geometry (60 EEG + 306 MEG, real digitisation and head
    position, 600.615 Hz) and its channel names (``EEG 001``, ``MEG 0113``), so the bundled model
    applies to the simulated data as is.
    ``ds000117``: the canonical Neuromag-306 sensor array shipped with MNE
    (``mne.channels.read_meg_canonical_info("neuromag")``, device frame) and MNE's ``mgh70``
    70-electrode cap, at 1100 Hz, with the names ds000117 uses (``MEG0113``, ``EEG001`` …
    ``EEG060``, ``EEG065`` … ``EEG074``; EEG061–064 are EOG/ECG there). The cap's template
    positions are brought into the head frame by their fiducials (``info.set_montage``); the
    device → head transform is a pure translation of the head 50 mm below the helmet origin
    (smallest electrode–sensor distance 21 mm, median 28 mm, as in real recordings).

Head model (per layout, computed once per process, a few seconds): a spherical conductor fitted
to the head digitisation (``mne.make_sphere_model("auto", "auto", info)``, 4 shells), a volume
source grid at ``spacing_mm`` (12 mm: ~1000–1200 sources) restricted to a cortex-like shell
between 35 mm from the centre and 5 mm inside the inner skull, and the MNE forward solution
(``trans=None``: head and "MRI" frames coincide). Each source gets one fixed orientation, random
but smooth over ~1 cm like the normal of a folded cortical sheet, drawn from the ``subject``
number: a subject's anatomy (and hence its EEG → MEG map) stays the same across simulation
seeds while its activity changes. The EEG gain is the potential against infinity (MNE applies no
reference in the forward); the preprocessing's average reference removes it.

Activity (one "subject" per layout and ``subject`` number; time courses from ``seed``):
    background: 1/f (pink) noise on every source, spatially smooth (Gaussian correlation over
        15 mm), realised in sensor space through a factor of its sensor covariance (the same
        Gaussian distribution as simulating every source, to 1e-6 of its variance, and several
        times cheaper);
    alpha: 4 occipito-parietal dipoles, 8.3–11.7 Hz resonances with waxing/waning envelopes;
    evoked: 4 temporal/occipital dipoles answering random events (Bernoulli per sample, ~0.8/s)
        with delayed damped oscillations, sharing the events (so they are correlated);
    sparse: 2 strong superficial dipoles with rare high-amplitude beta (14–25 Hz) bursts;
    sensor noise: white + pink per channel, independent across channels, at realistic densities.
Every time course is a stationary process whose cross-spectral density is known exactly, so the
covariance of the data after any linear time-invariant preprocessing filter is computed, not
estimated: that is how the oracle follows the 1–40 Hz band-pass and the notch even though the
source classes have different spectra (an instantaneous map does not commute with filters
unless all sources share one spectrum).

Oracle: with C the covariance of [EEG; MEG] after the preprocessing filters, R the EEG reference
operator and MEG = W · EEG the estimator, W = C_me Rᵀ (R C_ee Rᵀ)⁺ and the expected R² of MEG
channel c is 1 − (C_mm − W R C_em)_cc / (C_mm)_cc. It is the best *instantaneous* linear
estimator; a model that looks at a window of EEG can exceed it (most of all for the evoked and
burst components, whose time courses are partly predictable), and, the bursts being
non-Gaussian, a non-linear one may too.

Determinism: the same (layout, duration, rate, seed, subject, spacing) gives the same samples on
a given machine; each random stream has its own `numpy.random.Generator`, so reading the activity
in chunks of any size gives the same samples. Generation starts after a 10 s burn-in, so the
slow filters start in their stationary regime.

Limits: the simulated recording is built in memory, or, above `IN_MEMORY_LIMIT_BYTES`, in a
temporary float64 memory-mapped file next to the output (8 bytes per channel and sample: 12 GB
for one hour of ds000117) that MNE writes from and that is deleted afterwards; the FIF itself is
float32 and split into 2 GB parts by MNE. No line noise, head movement or artefacts are simulated.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.signal

__all__ = [
    "LAYOUTS",
    "HeadModel",
    "OracleMap",
    "SimulationTruth",
    "SyntheticSource",
    "head_model",
    "is_simulated",
    "layout_info",
    "load_truth",
    "oracle_map",
    "oracle_prediction",
    "simulate",
    "simulate_data_command",
    "truth_path",
    "wiener_oracle",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("sample", "ds000117")
DEFAULT_SPACING_MM = 12.0
#: Sidecar next to a simulated FIF: ``sim_raw.fif`` → ``sim_raw-truth.npz``.
TRUTH_SUFFIX = "-truth.npz"
TRUTH_FORMAT_VERSION = 1
#: Simulated recordings larger than this (float64 bytes) are built in a memory-mapped temp file.
IN_MEMORY_LIMIT_BYTES = 1 << 30
MIN_SFREQ_HZ = 100.0  # the sparse beta bursts reach 25 Hz + bandwidth, the evoked kernels 10 Hz
MAX_SFREQ_HZ = 20000.0
CHUNK_SECONDS = 2.0
BURN_IN_SECONDS = 10.0

_SAMPLE_RECORDING = Path(__file__).resolve().parent / "recordings" / "test_raw.fif"
_DS000117_SFREQ_HZ = 1100.0
_DS000117_HEAD_BELOW_HELMET_M = 0.05
# Sources closer than this to the sphere centre are left out: the simulated activity is cortical.
_DEEP_EXCLUDE_MM = 35.0
_INNER_SKULL_MINDIST_MM = 5.0

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
_PINK_LOWEST_POLE_HZ = 0.1
_PINK_POLE_RATIO = 3.0
# Sensor noise: white density (unit/√Hz) and pink RMS, per channel type, before a per-channel
# log-normal jitter of 15 %. EEG: amplifier + electrode noise; MEG: SQUID floor + environment.
_NOISE_WHITE_DENSITY = {"eeg": 0.1e-6, "mag": 4e-15, "grad": 0.35e-12}
_NOISE_PINK_RMS = {"eeg": 2e-6, "mag": 80e-15, "grad": 1e-12}
# Display/conditioning units: µV, fT, fT/cm.
_UNIT_FACTOR = {"eeg": 1e6, "mag": 1e15, "grad": 1e13}
_UNIT_NAME = {"eeg": "µV", "mag": "fT", "grad": "fT/cm"}


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not available: choose one of {', '.join(LAYOUTS)}")
    return layout


def _check_sfreq(sfreq_hz: Any, layout: str) -> float:
    if sfreq_hz is None:
        return default_sfreq_hz(layout)
    if isinstance(sfreq_hz, bool) or not isinstance(sfreq_hz, (int, float)) or not math.isfinite(sfreq_hz):
        raise ValueError(f"sfreq_hz must be a number of Hz, got {sfreq_hz!r}")
    if not MIN_SFREQ_HZ <= sfreq_hz <= MAX_SFREQ_HZ:
        raise ValueError(f"sfreq_hz={sfreq_hz:g} is out of range: allowed {MIN_SFREQ_HZ:g}–{MAX_SFREQ_HZ:g} Hz")
    return float(sfreq_hz)


def _check_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_spacing(spacing_mm: Any) -> float:
    if isinstance(spacing_mm, bool) or not isinstance(spacing_mm, (int, float)) or not 5.0 <= spacing_mm <= 30.0:
        raise ValueError(f"spacing_mm must be a number of millimetres between 5 and 30, got {spacing_mm!r}")
    return float(spacing_mm)


def _n_samples(duration_s: Any, sfreq_hz: float) -> int:
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be a number of seconds, got {duration_s!r}")
    n = int(round(duration_s * sfreq_hz))
    if duration_s <= 0 or n < 1:
        raise ValueError(f"duration_s={duration_s!r} must be positive and hold at least one sample at {sfreq_hz:g} Hz")
    return n


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _base_info(layout: str) -> Any:
    """`mne.Info` of a layout at its own rate: EEG + MEG channels with positions and digitisation."""
    import mne

    if layout == "sample":
        raw = mne.io.read_raw_fif(_SAMPLE_RECORDING, preload=False, verbose="error")
        raw.pick(["meg", "eeg"]).del_proj()  # the file's SSP vectors describe its own noise
        info = raw.info.copy()
        info["bads"] = []
        return info

    canonical = mne.channels.read_meg_canonical_info("neuromag")
    montage = mne.channels.make_standard_montage("mgh70")
    meg_names = [ch["ch_name"].replace(" ", "") for ch in canonical["chs"]]
    meg_types = ["mag" if ch["coil_type"] == mne.io.constants.FIFF.FIFFV_COIL_VV_MAG_T3 else "grad" for ch in canonical["chs"]]
    info = mne.create_info(meg_names + montage.ch_names, _DS000117_SFREQ_HZ, meg_types + ["eeg"] * len(montage.ch_names))
    for channel, reference in zip(info["chs"], canonical["chs"]):
        channel["loc"][:] = reference["loc"]
        channel["coil_type"] = reference["coil_type"]
        channel["coord_frame"] = reference["coord_frame"]
    info.set_montage(montage)  # template positions → head frame through the cap's fiducials
    device_to_head = np.eye(4)
    device_to_head[2, 3] = _DS000117_HEAD_BELOW_HELMET_M
    info["dev_head_t"] = mne.transforms.Transform("meg", "head", device_to_head)
    return info


def default_sfreq_hz(layout: str) -> float:
    """The layout's own sampling rate: 600.614990234375 Hz (sample) or 1100 Hz (ds000117)."""
    return float(_base_info(_check_layout(layout))["sfreq"])


def layout_info(layout: str, sfreq_hz: float | None = None) -> Any:
    """A fresh `mne.Info` for a layout (EEG + MEG channels, positions, digitisation) at `sfreq_hz`."""
    _check_layout(layout)
    sfreq_hz = _check_sfreq(sfreq_hz, layout)
    info = _base_info(layout).copy()
    # MNE has no public setter for the rate of an Info; the rate is all that changes here.
    with info._unlock():
        info["sfreq"] = sfreq_hz
        info["lowpass"] = sfreq_hz / 2.0
        info["highpass"] = 0.0
    info["description"] = f"brainformer simulation, layout {layout}"
    return info


def _channel_groups(info: Any) -> tuple[list[int], list[int], list[str]]:
    """Indices of EEG and MEG channels in `info`, and the MEG channel types (`mag`/`grad`)."""
    import mne

    eeg = list(mne.pick_types(info, meg=False, eeg=True))
    meg = list(mne.pick_types(info, meg=True, eeg=False))
    types = info.get_channel_types(picks=meg)
    return eeg, meg, types


# --------------------------------------------------------------------------------------------
# Head model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HeadModel:
    """Geometry and free-orientation forward solution of one layout.

    Attributes:
        layout: ``"sample"`` or ``"ds000117"``.
        eeg_channel_names, meg_channel_names, meg_channel_types: channel sets, in the layout's order.
        sphere_center_m: `(3,)` centre of the fitted sphere, head frame (m).
        brain_radius_m: radius of the innermost shell (inner skull), m.
        source_positions_m: `(n_sources, 3)` head frame.
        gain_eeg_free: `(n_eeg, n_sources, 3)` V per A·m, one column per x/y/z dipole.
        gain_meg_free: `(n_meg, n_sources, 3)` T (mag) or T/m (grad) per A·m.
        spacing_mm: source grid spacing.
    """

    layout: str
    eeg_channel_names: tuple[str, ...]
    meg_channel_names: tuple[str, ...]
    meg_channel_types: tuple[str, ...]
    sphere_center_m: np.ndarray
    brain_radius_m: float
    source_positions_m: np.ndarray
    gain_eeg_free: np.ndarray
    gain_meg_free: np.ndarray
    spacing_mm: float

    @property
    def n_sources(self) -> int:
        return int(self.source_positions_m.shape[0])


def head_model(layout: str, spacing_mm: float = DEFAULT_SPACING_MM) -> HeadModel:
    """Sphere model, volume source grid and forward solution of a layout (cached per process)."""
    return _head_model(_check_layout(layout), _check_spacing(spacing_mm))


@functools.lru_cache(maxsize=4)
def _head_model(layout: str, spacing_mm: float) -> HeadModel:
    import mne

    info = _base_info(layout)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose="error")
    source_space = mne.setup_volume_source_space(
        sphere=sphere, pos=spacing_mm, mindist=_INNER_SKULL_MINDIST_MM, exclude=_DEEP_EXCLUDE_MM, verbose="error"
    )
    forward = mne.make_forward_solution(info, trans=None, src=source_space, bem=sphere, eeg=True, meg=True, verbose="error")
    rows = {name: i for i, name in enumerate(forward["sol"]["row_names"])}
    eeg_idx, meg_idx, meg_types = _channel_groups(info)
    eeg_names = [info["ch_names"][i] for i in eeg_idx]
    meg_names = [info["ch_names"][i] for i in meg_idx]
    gain = forward["sol"]["data"].reshape(len(rows), -1, 3)  # (channels, sources, xyz), head frame
    model = HeadModel(
        layout=layout,
        eeg_channel_names=tuple(eeg_names),
        meg_channel_names=tuple(meg_names),
        meg_channel_types=tuple(meg_types),
        sphere_center_m=np.asarray(sphere["r0"], dtype=np.float64),
        brain_radius_m=float(sphere["layers"][0]["rad"]),
        source_positions_m=np.asarray(forward["source_rr"], dtype=np.float64),
        gain_eeg_free=np.ascontiguousarray(gain[[rows[n] for n in eeg_names]]),
        gain_meg_free=np.ascontiguousarray(gain[[rows[n] for n in meg_names]]),
        spacing_mm=spacing_mm,
    )
    logger.info("head model %s: %d sources at %g mm, %d EEG + %d MEG channels",
                layout, model.n_sources, spacing_mm, len(eeg_names), len(meg_names))
    return model


# --------------------------------------------------------------------------------------------
# Spectral building blocks: every time course is filtered noise with a known spectrum
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SimulationTruth:
    """Everything the oracle needs about one simulated recording (saved as the truth sidecar).

    Sources: `n_src` fixed-orientation dipoles; components: `K` single-dipole generators (alpha,
    evoked, sparse) on top of the background. Spectra are one-sided on `freqs_hz`: a density
    `psd` integrates (∫₀^{fs/2} · df) to the variance, and a complex `component_transfer` T gives
    the cross-spectrum of components i and j as T_i conj(T_j) when they share a driver.

    Attributes:
        layout, seed, subject, sfreq_hz, spacing_mm: how it was made.
        eeg_channel_names `(n_eeg,)`, meg_channel_names `(n_meg,)`, meg_channel_types `(n_meg,)`.
        gain_eeg: `(n_eeg, n_src)` V per A·m (potential against infinity).
        gain_meg: `(n_meg, n_src)` T (mag) or T/m (grad) per A·m.
        source_positions_m: `(n_src, 3)` head frame; source_orientations: `(n_src, 3)` unit.
        background_variance_am2: `(n_src,)` variance of each source's 1/f background, (A·m)².
        background_correlation_length_m: the background of sources at distance d correlates by
            exp(−d² / 2ℓ²) (see `background_covariance`).
        pink_psd: `(F,)` unit-variance 1/f density (background and pink sensor noise), 1/Hz.
        component_kinds `(K,)` (``alpha``/``evoked``/``sparse``), component_sources `(K,)`,
        component_moments_am `(K,)` RMS dipole moments, component_drivers `(K,)` (components
        with the same driver are correlated), component_covariance `(K, K)` of the unit time
        courses (exact), component_transfer `(K, F)` complex, 1/√Hz.
        noise_white_variance_eeg/meg, noise_pink_variance_eeg/meg: `(n_eeg,)`/`(n_meg,)` sensor
        noise variances (V², T², (T/m)²); sensor noise is independent across channels.
        freqs_hz: `(F,)` the frequency grid.
    """

    layout: str
    seed: int
    subject: int
    sfreq_hz: float
    spacing_mm: float
    eeg_channel_names: tuple[str, ...]
    meg_channel_names: tuple[str, ...]
    meg_channel_types: tuple[str, ...]
    gain_eeg: np.ndarray
    gain_meg: np.ndarray
    source_positions_m: np.ndarray
    source_orientations: np.ndarray
    background_variance_am2: np.ndarray
    background_correlation_length_m: float
    pink_psd: np.ndarray
    component_kinds: tuple[str, ...]
    component_sources: np.ndarray
    component_moments_am: np.ndarray
    component_drivers: np.ndarray
    component_covariance: np.ndarray
    component_transfer: np.ndarray
    noise_white_variance_eeg: np.ndarray
    noise_pink_variance_eeg: np.ndarray
    noise_white_variance_meg: np.ndarray
    noise_pink_variance_meg: np.ndarray
    freqs_hz: np.ndarray

    @property
    def n_eeg(self) -> int:
        return len(self.eeg_channel_names)

    @property
    def n_meg(self) -> int:
        return len(self.meg_channel_names)

    @property
    def component_patterns_am(self) -> np.ndarray:
        """`(K, n_src)` dipole moment of each component per unit of its time course, A·m."""
        patterns = np.zeros((len(self.component_kinds), self.gain_eeg.shape[1]))
        patterns[np.arange(len(self.component_kinds)), self.component_sources] = self.component_moments_am
        return patterns

    def source_covariance(self) -> np.ndarray:
        """`(n_src, n_src)` covariance of the source moments, (A·m)², unfiltered."""
        patterns = self.component_patterns_am
        return self.background_covariance() + patterns.T @ self.component_covariance @ patterns

    def background_covariance(self) -> np.ndarray:
        """`(n_src, n_src)` covariance of the 1/f background moments, (A·m)², unfiltered."""
        return _background_covariance(self.source_positions_m, self.background_variance_am2, self.background_correlation_length_m)

    def noise_covariance_eeg(self) -> np.ndarray:
        """`(n_eeg, n_eeg)` diagonal sensor-noise covariance, V², unfiltered."""
        return np.diag(self.noise_white_variance_eeg + self.noise_pink_variance_eeg)

    def noise_covariance_meg(self) -> np.ndarray:
        """`(n_meg, n_meg)` diagonal sensor-noise covariance, T² / (T/m)², unfiltered."""
        return np.diag(self.noise_white_variance_meg + self.noise_pink_variance_meg)

    def sensor_covariance(self, power_response: np.ndarray | None = None) -> np.ndarray:
        """`(n_eeg + n_meg, n_eeg + n_meg)` covariance of [EEG; MEG] (physical units).

        Args:
            power_response: `(F,)` |H(f)|² of a linear filter applied to every channel (on
                `freqs_hz`), or None for the unfiltered data (exact variances).
        """
        gain = np.vstack([self.gain_eeg, self.gain_meg])  # (channels, n_src)
        leads = gain[:, self.component_sources] * self.component_moments_am  # (channels, K)
        if power_response is None:
            background_gain = white_gain = pink_gain = 1.0
            component_cov = self.component_covariance
        else:
            power = np.asarray(power_response, dtype=np.float64)
            if power.shape != self.freqs_hz.shape:
                raise ValueError(f"power_response must have shape {self.freqs_hz.shape}, got {power.shape}")
            weights = _integration_weights(self.freqs_hz)
            pink_gain = float(np.sum(weights * power * self.pink_psd) / np.sum(weights * self.pink_psd))
            background_gain = pink_gain
            white_gain = float(np.sum(weights * power) / np.sum(weights))
            same_driver = self.component_drivers[:, None] == self.component_drivers[None, :]
            transfer = self.component_transfer
            cross = np.einsum("f,if,jf->ij", weights, transfer, transfer.conj()).real * same_driver
            filtered = np.einsum("f,if,jf->ij", weights * power, transfer, transfer.conj()).real * same_driver
            # Correct the grid's small integration error with the exact unfiltered variances.
            correction = np.sqrt(np.diag(self.component_covariance) / np.diag(cross))
            component_cov = filtered * np.outer(correction, correction)
        cov = background_gain * (gain @ self.background_covariance() @ gain.T)
        cov += leads @ component_cov @ leads.T
        noise = np.concatenate([
            white_gain * self.noise_white_variance_eeg + pink_gain * self.noise_pink_variance_eeg,
            white_gain * self.noise_white_variance_meg + pink_gain * self.noise_pink_variance_meg,
        ])
        cov[np.diag_indices_from(cov)] += noise
        return cov

    # -- sidecar -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the truth as a compressed ``.npz`` (no pickles). Adds, for other readers, the
        dense `source_covariance_am2`, `noise_covariance_eeg` and `noise_covariance_meg`."""
        path = Path(path)
        arrays: dict[str, Any] = {"format_version": np.array(TRUTH_FORMAT_VERSION)}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            arrays[item.name] = np.array(list(value)) if isinstance(value, tuple) else np.asarray(value)
        arrays["source_covariance_am2"] = self.source_covariance()
        arrays["noise_covariance_eeg"] = self.noise_covariance_eeg()
        arrays["noise_covariance_meg"] = self.noise_covariance_meg()
        with open(path, "wb") as handle:  # np.savez would append ".npz" to other names
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SimulationTruth":
        """Read a sidecar written by `save`; `ValueError` naming the file if it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a simulation truth file ({err})") from None
        version = int(stored.get("format_version", -1))
        if version != TRUTH_FORMAT_VERSION:
            raise ValueError(f"{path}: truth format version {version}, this version of brainformer reads {TRUTH_FORMAT_VERSION}")
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in stored:
                raise ValueError(f"{path}: truth file lacks {item.name!r}")
            value = stored[item.name]
            if item.name in ("layout",):
                value = str(value)
            elif item.name in ("seed", "subject"):
                value = int(value)
            elif item.name in ("sfreq_hz", "spacing_mm", "background_correlation_length_m"):
                value = float(value)
            elif item.name.endswith("_names") or item.name.endswith("_types") or item.name == "component_kinds":
                value = tuple(str(v) for v in value)
            values[item.name] = value
        return cls(**values)


def truth_path(path: str | Path) -> Path:
    """Sidecar path of a simulated FIF: ``dir/name.fif`` → ``dir/name-truth.npz``."""
    path = Path(path)
    if str(path).endswith(TRUTH_SUFFIX):
        return path
    name = path.name
    for suffix in (".fif.gz", ".fif"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + TRUTH_SUFFIX)


def is_simulated(path: str | Path) -> bool:
    """True if `path` is a simulated recording: its truth sidecar exists."""
    return truth_path(path).is_file()


def load_truth(path: str | Path) -> SimulationTruth:
    """The `SimulationTruth` of a simulated FIF (or of the sidecar path itself).

    Raises:
        FileNotFoundError: no sidecar (the recording is not a simulation).
        ValueError: the sidecar is unreadable or from another format version.
    """
    sidecar = truth_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{path}: no simulation truth sidecar ({sidecar.name}); not a simulated recording")
    return SimulationTruth.load(sidecar)


# --------------------------------------------------------------------------------------------
# The subject plan: anatomy, generators and noise levels (independent of the seed)
# --------------------------------------------------------------------------------------------
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


def _background_covariance(positions_m: np.ndarray, variance: np.ndarray, length_m: float) -> np.ndarray:
    """`(n_src, n_src)` Gaussian-correlated covariance of the background moments."""
    from scipy.spatial.distance import cdist

    squared = cdist(positions_m, positions_m, "sqeuclidean")
    sd = np.sqrt(variance)
    return sd[:, None] * np.exp(-0.5 * squared / length_m**2) * sd[None, :]


def _unit_factors(meg_types: tuple[str, ...], n_eeg: int) -> np.ndarray:
    return np.array([_UNIT_FACTOR["eeg"]] * n_eeg + [_UNIT_FACTOR[t] for t in meg_types])


def _pick_sources(rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray, count: int) -> np.ndarray:
    pool = candidates if candidates.size >= count else fallback
    return rng.choice(pool, size=count, replace=False)


def _impulse_variance(event_probability: float) -> float:
    # Event amplitude A = 0.5 + v/p for a uniform v < p: uniform on [0.5, 1.5), E[A] = 1, E[A²] = 13/12.
    return event_probability * 13.0 / 12.0 - event_probability**2


@functools.lru_cache(maxsize=8)
def _plan(layout: str, sfreq_hz: float, subject: int, spacing_mm: float) -> _Plan:
    head = head_model(layout, spacing_mm)
    rng = np.random.default_rng([subject, LAYOUTS.index(layout), 20_240_117])
    n_eeg, n_meg, n_src = len(head.eeg_channel_names), len(head.meg_channel_names), head.n_sources

    # Anatomy: one orientation per source, varying smoothly over about a centimetre as the normal
    # of a folded cortical sheet does (random vectors smoothed with the background's kernel).
    smoothing = _background_covariance(head.source_positions_m, np.ones(n_src), _ORIENTATION_SMOOTHING_M)
    orientations = smoothing @ rng.standard_normal((n_src, 3))
    orientations /= np.linalg.norm(orientations, axis=1, keepdims=True)
    gain_eeg = np.einsum("csx,sx->cs", head.gain_eeg_free, orientations)
    gain_meg = np.einsum("csx,sx->cs", head.gain_meg_free, orientations)

    # Regions from the direction and depth of each source (head frame: +x right, +y front, +z up).
    offset = head.source_positions_m - head.sphere_center_m
    depth_ratio = np.linalg.norm(offset, axis=1) / head.brain_radius_m
    direction = offset / np.linalg.norm(offset, axis=1, keepdims=True)
    everything = np.arange(n_src)
    superficial = np.flatnonzero(depth_ratio >= 0.7)
    posterior = np.flatnonzero((direction[:, 1] < -0.4) & (direction[:, 2] > -0.2) & (depth_ratio >= 0.55))
    temporal_left = np.flatnonzero((direction[:, 0] < -0.7) & (direction[:, 2] < 0.3))
    temporal_right = np.flatnonzero((direction[:, 0] > 0.7) & (direction[:, 2] < 0.3))
    occipital = np.flatnonzero(direction[:, 1] < -0.7)

    freqs = _frequency_grid(sfreq_hz)
    kinds: list[str] = []
    sources: list[int] = []
    moments: list[float] = []
    drivers: list[int] = []
    transfers: list[np.ndarray] = []

    def burst(kind: str, center_hz: float, bandwidth_hz: float, envelope_hz: float, power: int, source: int, moment: float):
        b, a, phi = _ar2_resonator(center_hz, bandwidth_hz, sfreq_hz)
        process = _BurstProcess(b, a, math.exp(-2 * math.pi * envelope_hz / sfreq_hz), power)
        kinds.append(kind)
        sources.append(int(source))
        moments.append(moment)
        drivers.append(len(drivers) + 1)  # its own driver
        transfers.append(np.sqrt(process.psd(phi, freqs, sfreq_hz)).astype(np.complex128))
        return process

    alpha_peak_hz = rng.uniform(9.0, 11.0)
    alpha = tuple(
        burst("alpha", alpha_peak_hz + rng.uniform(-0.7, 0.7), 1.5, rng.uniform(0.15, 0.4), 1, source,
              _ALPHA_MOMENT_RMS_AM * rng.uniform(0.7, 1.3))
        for source in _pick_sources(rng, posterior, superficial, _N_ALPHA)
    )

    # Evoked: one temporal source per hemisphere and two occipital ones, all driven by the events.
    event_probability = _EVENT_RATE_HZ / sfreq_hz
    impulse_variance = _impulse_variance(event_probability)
    evoked_sources = np.concatenate([
        _pick_sources(rng, temporal_left, superficial, 1),
        _pick_sources(rng, temporal_right, superficial, 1),
        _pick_sources(rng, occipital, superficial, _N_EVOKED - 2),
    ])
    evoked: list[_EvokedKernel] = []
    impulse_responses: list[np.ndarray] = []
    for source in evoked_sources:
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
        evoked.append(_EvokedKernel(b * scale, a))
        impulse_responses.append(response * scale)
        kinds.append("evoked")
        sources.append(int(source))
        moments.append(_EVOKED_MOMENT_RMS_AM * rng.uniform(0.7, 1.3))
        drivers.append(0)  # the shared event train
        transfers.append(_linear_psd((b * scale, a), freqs, sfreq_hz, impulse_variance))

    sparse = tuple(
        burst("sparse", rng.uniform(14.0, 25.0), 3.0, rng.uniform(0.1, 0.25), 2, source,
              _SPARSE_MOMENT_RMS_AM * rng.uniform(0.7, 1.3))
        for source in _pick_sources(rng, superficial, everything, _N_SPARSE)
    )
    # Bookkeeping order is alpha, evoked, sparse: the order the components were made in above.
    n_components = len(kinds)
    component_cov = np.eye(n_components)
    evoked_idx = [i for i, kind in enumerate(kinds) if kind == "evoked"]
    length = max(len(r) for r in impulse_responses)
    responses = np.zeros((len(impulse_responses), length))
    for i, response in enumerate(impulse_responses):
        responses[i, : len(response)] = response
    component_cov[np.ix_(evoked_idx, evoked_idx)] = impulse_variance * responses @ responses.T

    # Noise levels per channel.
    channel_types = ("eeg",) * n_eeg + head.meg_channel_types
    jitter = np.exp(0.15 * rng.standard_normal((2, n_eeg + n_meg)))
    white_sd = np.array([_NOISE_WHITE_DENSITY[t] for t in channel_types]) * math.sqrt(sfreq_hz / 2) * jitter[0]
    pink_sd = np.array([_NOISE_PINK_RMS[t] for t in channel_types]) * jitter[1]

    # Background: a smooth current-density field sampled on the grid (a cell's moment is density
    # × volume, hence the variance scales with the sixth power of the spacing), every source with
    # the same 1/f spectrum. Its sensor covariance G B Gᵀ is realised through a factor F with
    # F Fᵀ ≈ G B Gᵀ, computed on the correlation scale so EEG and MEG keep the same precision and
    # truncated where the dropped eigenvalues hold < 1e-6 of the variance (about half the rank).
    background_variance = np.full(n_src, _BACKGROUND_MOMENT_RMS_AM**2 * (spacing_mm / 12.0) ** 6)
    background_cov = _background_covariance(head.source_positions_m, background_variance, _BACKGROUND_CORRELATION_LENGTH_M)
    gain = np.vstack([gain_eeg, gain_meg])
    sensor_cov = gain @ background_cov @ gain.T
    sensor_sd = np.sqrt(np.diag(sensor_cov))
    eigenvalues, eigenvectors = np.linalg.eigh(sensor_cov / np.outer(sensor_sd, sensor_sd))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    kept = int(np.searchsorted(np.cumsum(eigenvalues) / np.sum(eigenvalues), 1.0 - _BACKGROUND_DROPPED_VARIANCE)) + 1
    eigenvalues, eigenvectors = eigenvalues[:kept], eigenvectors[:, :kept]
    # Fix each eigenvector's sign (largest entry positive) so the factor does not depend on LAPACK.
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(kept)])
    factor = eigenvectors * signs * np.sqrt(eigenvalues) * sensor_sd[:, None]

    pink_sos = _pink_sos(sfreq_hz)
    pink_psd = np.abs(_linear_psd(pink_sos, freqs, sfreq_hz)) ** 2
    leads = gain[:, sources] * np.asarray(moments)
    truth = SimulationTruth(
        layout=layout, seed=0, subject=subject, sfreq_hz=sfreq_hz, spacing_mm=spacing_mm,
        eeg_channel_names=head.eeg_channel_names, meg_channel_names=head.meg_channel_names,
        meg_channel_types=head.meg_channel_types,
        gain_eeg=gain_eeg, gain_meg=gain_meg,
        source_positions_m=head.source_positions_m, source_orientations=orientations,
        background_variance_am2=background_variance,
        background_correlation_length_m=_BACKGROUND_CORRELATION_LENGTH_M, pink_psd=pink_psd,
        component_kinds=tuple(kinds), component_sources=np.asarray(sources, dtype=np.int64),
        component_moments_am=np.asarray(moments), component_drivers=np.asarray(drivers, dtype=np.int64),
        component_covariance=component_cov, component_transfer=np.vstack(transfers),
        noise_white_variance_eeg=white_sd[:n_eeg] ** 2, noise_pink_variance_eeg=pink_sd[:n_eeg] ** 2,
        noise_white_variance_meg=white_sd[n_eeg:] ** 2, noise_pink_variance_meg=pink_sd[n_eeg:] ** 2,
        freqs_hz=freqs,
    )
    return _Plan(
        truth=truth, pink_sos=pink_sos,
        background_factor_eeg=np.ascontiguousarray(factor[:n_eeg]),
        background_factor_meg=np.ascontiguousarray(factor[n_eeg:]),
        alpha=alpha, evoked=tuple(evoked), sparse=sparse, event_probability=event_probability,
        leads_eeg=np.ascontiguousarray(leads[:n_eeg]), leads_meg=np.ascontiguousarray(leads[n_eeg:]),
        noise_white_sd_eeg=white_sd[:n_eeg], noise_pink_sd_eeg=pink_sd[:n_eeg],
        noise_white_sd_meg=white_sd[n_eeg:], noise_pink_sd_meg=pink_sd[n_eeg:],
    )


# --------------------------------------------------------------------------------------------
# The stateful generator
# --------------------------------------------------------------------------------------------
_STREAMS = ("background", "alpha_carrier", "alpha_envelope", "events", "sparse_carrier", "sparse_envelope",
            "eeg_white", "eeg_pink", "meg_white", "meg_pink")


class _ActivityGenerator:
    """Draws consecutive chunks of EEG (and MEG) for one plan and seed.

    All state lives here: one random stream per kind of draw (so chunking never changes which
    number goes where) and the filter states. EEG-only mode skips the MEG streams and sums;
    the EEG is the same either way.
    """

    def __init__(self, plan: _Plan, seed: int, with_meg: bool) -> None:
        self.plan = plan
        self.with_meg = with_meg
        children = np.random.SeedSequence([seed, LAYOUTS.index(plan.truth.layout)]).spawn(len(_STREAMS))
        self.rng = {name: np.random.Generator(np.random.PCG64(child)) for name, child in zip(_STREAMS, children)}
        n_sections = plan.pink_sos.shape[0]
        n_eeg, n_meg = plan.leads_eeg.shape[0], plan.leads_meg.shape[0]
        # sosfilt along axis 0 keeps its state as (sections, 2, signals).
        self.background_state = np.zeros((n_sections, 2, plan.background_factor_eeg.shape[1]))
        self.eeg_pink_state = np.zeros((n_sections, 2, n_eeg))
        self.meg_pink_state = np.zeros((n_sections, 2, n_meg))
        self.alpha_state = [(np.zeros(2), np.zeros(1)) for _ in plan.alpha]
        self.sparse_state = [(np.zeros(2), np.zeros(1)) for _ in plan.sparse]
        self.evoked_state = [np.zeros(max(len(k.a), len(k.b)) - 1) for k in plan.evoked]
        self.samples_generated = 0
        burn_in = int(BURN_IN_SECONDS * plan.truth.sfreq_hz)
        chunk = max(1, int(CHUNK_SECONDS * plan.truth.sfreq_hz))
        for start in range(0, burn_in, chunk):
            self.generate(min(chunk, burn_in - start))
        self.samples_generated = 0

    def _bursts(
        self, processes: tuple[_BurstProcess, ...], states: list, carrier: str, envelope: str, n: int
    ) -> np.ndarray:
        """`(n, len(processes))` unit-variance burst time courses; `states` updated in place."""
        k = len(processes)
        carrier_noise = self.rng[carrier].standard_normal((n, k))
        envelope_noise = self.rng[envelope].standard_normal((n, k))
        out = np.empty((n, k))
        for i, (process, (carrier_state, envelope_state)) in enumerate(zip(processes, states)):
            c, carrier_state = scipy.signal.lfilter(
                process.carrier_b, process.carrier_a, carrier_noise[:, i], zi=carrier_state
            )
            rho = process.envelope_coefficient
            u, envelope_state = scipy.signal.lfilter(
                [math.sqrt(1 - rho * rho)], [1.0, -rho], envelope_noise[:, i], zi=envelope_state
            )
            out[:, i] = np.abs(u) ** process.envelope_power * c * process.norm
            states[i] = (carrier_state, envelope_state)
        return out

    def _components(self, n: int) -> np.ndarray:
        """`(n, K)` unit time courses in the order alpha, evoked, sparse."""
        plan = self.plan
        alpha = self._bursts(plan.alpha, self.alpha_state, "alpha_carrier", "alpha_envelope", n)
        draws = self.rng["events"].random(n)
        p = plan.event_probability
        impulses = np.where(draws < p, 0.5 + draws / p, 0.0) - p  # minus the mean: zero-mean drive
        evoked = np.empty((n, len(plan.evoked)))
        for i, kernel in enumerate(plan.evoked):
            evoked[:, i], self.evoked_state[i] = scipy.signal.lfilter(kernel.b, kernel.a, impulses, zi=self.evoked_state[i])
        sparse = self._bursts(plan.sparse, self.sparse_state, "sparse_carrier", "sparse_envelope", n)
        return np.hstack([alpha, evoked, sparse])

    def _pink(self, stream: str, n: int, width: int, state_name: str) -> np.ndarray:
        white = self.rng[stream].standard_normal((n, width))
        out, state = scipy.signal.sosfilt(self.plan.pink_sos, white, axis=0, zi=getattr(self, state_name))
        setattr(self, state_name, state)
        return out

    def generate(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Next `n` samples: EEG `(n, n_eeg)` volts and MEG `(n, n_meg)` T / T/m (None if EEG-only)."""
        plan = self.plan
        rank = plan.background_factor_eeg.shape[1]
        background = self._pink("background", n, rank, "background_state")  # (n, r)
        components = self._components(n)  # (n, K)
        eeg = background @ plan.background_factor_eeg.T + components @ plan.leads_eeg.T
        n_eeg = plan.leads_eeg.shape[0]
        eeg += self.rng["eeg_white"].standard_normal((n, n_eeg)) * plan.noise_white_sd_eeg
        eeg += self._pink("eeg_pink", n, n_eeg, "eeg_pink_state") * plan.noise_pink_sd_eeg
        meg = None
        if self.with_meg:
            n_meg = plan.leads_meg.shape[0]
            meg = background @ plan.background_factor_meg.T + components @ plan.leads_meg.T
            meg += self.rng["meg_white"].standard_normal((n, n_meg)) * plan.noise_white_sd_meg
            meg += self._pink("meg_pink", n, n_meg, "meg_pink_state") * plan.noise_pink_sd_meg
        self.samples_generated += n
        return eeg, meg


# --------------------------------------------------------------------------------------------
# Offline simulation
# --------------------------------------------------------------------------------------------
def simulate(
    layout: str,
    duration_s: float,
    sfreq_hz: float | None = None,
    seed: int = 0,
    *,
    subject: int = 0,
    spacing_mm: float = DEFAULT_SPACING_MM,
    progress: bool = False,
    out_array: np.ndarray | None = None,
) -> tuple[Any, SimulationTruth]:
    """Simulate a paired EEG/MEG recording.

    Args:
        layout: ``"sample"`` or ``"ds000117"``.
        duration_s: length in seconds.
        sfreq_hz: sampling rate; None for the layout's own (600.615 Hz / 1100 Hz).
        seed: the activity (time courses and noise); same seed → same samples.
        subject: the anatomy-level draw (orientations, generator sites and rhythms, noise levels).
        spacing_mm: source grid spacing (finer = more sources, slower forward).
        progress: show a rich progress bar.
        out_array: optional preallocated float64 `(n_channels, n_samples)` array (e.g. a
            `numpy.memmap`) to build the recording in; channels in the layout's order.

    Returns:
        `(raw, truth)`: an `mne.io.RawArray` with the layout's EEG and MEG channels in volts and
        T / T/m (no projections, no reference applied), and the `SimulationTruth`.
    """
    import mne

    _check_layout(layout)
    sfreq_hz = _check_sfreq(sfreq_hz, layout)
    n_samples = _n_samples(duration_s, sfreq_hz)
    seed = _check_nonnegative_int("seed", seed)
    subject = _check_nonnegative_int("subject", subject)
    spacing_mm = _check_spacing(spacing_mm)
    info = layout_info(layout, sfreq_hz)
    eeg_idx, meg_idx, _ = _channel_groups(info)
    n_channels = len(info["ch_names"])
    if out_array is None:
        data = np.empty((n_channels, n_samples))
    else:
        if out_array.shape != (n_channels, n_samples) or out_array.dtype != np.float64:
            raise ValueError(f"out_array must be float64 of shape {(n_channels, n_samples)}, got {out_array.dtype} {out_array.shape}")
        data = out_array

    # Plain slices when the channel groups are contiguous (they are for both layouts): no gathers.
    eeg_rows, meg_rows = _rows(eeg_idx), _rows(meg_idx)
    plan = _plan(layout, sfreq_hz, subject, spacing_mm)
    generator = _ActivityGenerator(plan, seed, with_meg=True)
    chunk = max(1, int(CHUNK_SECONDS * sfreq_hz))
    with _progress_bar(progress, f"simulating {layout}", n_samples) as advance:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            eeg, meg = generator.generate(stop - start)
            data[eeg_rows, start:stop] = eeg.T
            data[meg_rows, start:stop] = meg.T
            advance(stop - start)
    raw = mne.io.RawArray(data, info, copy="auto", verbose="error")
    logger.info("simulated %s: %d samples at %g Hz, seed %d, subject %d", layout, n_samples, sfreq_hz, seed, subject)
    truth = dataclasses.replace(plan.truth, seed=seed)
    return raw, truth


def _rows(indices: list[int]) -> slice | list[int]:
    if indices and list(indices) == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return list(indices)


class _progress_bar:
    """Context manager yielding `advance(n)`; a rich bar when enabled, a no-op otherwise."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self._progress = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                  TimeRemainingColumn(), transient=True)
        self._progress.__enter__()
        task = self._progress.add_task(self.description, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def simulate_data_command(layout: str, duration_s: float, sfreq_hz: float | None, seed: int, out: Path) -> None:
    """CLI `simulate-data`: write a simulated raw FIF and its truth sidecar, print a summary.

    Bad input exits with code 2 and one line naming the problem.
    """
    import typer
    from rich.console import Console

    console = Console()
    try:
        truth_file, truth, n_samples = _write_simulation(layout, duration_s, sfreq_hz, seed, Path(out))
    except ValueError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(code=2) from None
    from rich.table import Table

    table = Table(title=f"simulated {layout}", show_header=False)
    table.add_row("recording", str(out))
    table.add_row("truth sidecar", str(truth_file))
    table.add_row("duration", f"{n_samples / truth.sfreq_hz:g} s ({n_samples} samples at {truth.sfreq_hz:g} Hz)")
    table.add_row("channels", f"{truth.n_eeg} EEG + {truth.n_meg} MEG")
    table.add_row("seed / subject", f"{truth.seed} / {truth.subject}")
    try:
        config = _default_config(truth)
        r2 = oracle_map(truth, config).expected_r2
        table.add_row("oracle R² (default preprocessing)", f"{float(np.mean(r2)):.3f} mean over MEG channels")
    except Exception as err:  # noqa: BLE001 - the summary must not fail a finished simulation
        logger.warning("oracle R² not computed: %s", err)
    console.print(table)


def _write_simulation(
    layout: str, duration_s: float, sfreq_hz: float | None, seed: int, out: Path
) -> tuple[Path, SimulationTruth, int]:
    """Simulate, write the FIF and the sidecar; returns (sidecar path, truth, samples)."""
    _check_layout(layout)
    rate = _check_sfreq(sfreq_hz, layout)
    n_samples = _n_samples(duration_s, rate)
    _check_nonnegative_int("seed", seed)
    if not (out.name.endswith(".fif") or out.name.endswith(".fif.gz")):
        raise ValueError(f"--out {out}: the file name must end in .fif (or .fif.gz)")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out}: is a directory, expected a FIF file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    n_channels = len(_base_info(layout)["ch_names"])
    nbytes = n_channels * n_samples * 8
    backing = None
    try:
        out_array = None
        if nbytes > IN_MEMORY_LIMIT_BYTES:
            backing = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp", delete=False)
            backing.close()
            logger.info("building %.1f GB in a memory-mapped temporary file %s", nbytes / 1e9, backing.name)
            out_array = np.memmap(backing.name, dtype=np.float64, mode="w+", shape=(n_channels, n_samples))
        raw, truth = simulate(layout, duration_s, rate, seed, progress=True, out_array=out_array)
        with warnings.catch_warnings():
            # MNE prefers names ending in raw.fif; any .fif name reads back the same.
            warnings.filterwarnings("ignore", message=".*does not conform to MNE naming conventions.*")
            raw.save(out, overwrite=True, verbose="error")
        del raw, out_array
    finally:
        if backing is not None:
            os.unlink(backing.name)
    return truth.save(truth_path(out)), truth, n_samples


def _default_config(truth: SimulationTruth) -> Any:
    """A model config with default preprocessing for a simulated layout (for the summary)."""
    from brainformer.configuration_brainformer import BrainformerConfig

    return BrainformerConfig(
        eeg_channel_names=list(truth.eeg_channel_names),
        meg_channel_names=list(truth.meg_channel_names),
        meg_channel_types=list(truth.meg_channel_types),
        sfreq_hz=truth.sfreq_hz,
    )


# --------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class OracleMap:
    """The Wiener-optimal instantaneous linear map from (preprocessed) EEG to MEG.

    Attributes:
        weights: `(n_meg, n_eeg)`; ``meg ≈ eeg @ weights.T`` in physical units after the
            preprocessing filters, with EEG already referenced as the preprocessing does.
        expected_r2: `(n_meg,)` R² the map reaches on each MEG channel (in expectation).
        eeg_channel_names, meg_channel_names: column / row order.
    """

    weights: np.ndarray
    expected_r2: np.ndarray
    eeg_channel_names: tuple[str, ...]
    meg_channel_names: tuple[str, ...]


def _channel_order(have: tuple[str, ...], want: list[str], modality: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(have)}
    missing = [name for name in want if name not in index]
    if missing:
        shown = ", ".join(missing[:8]) + (f", … ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ValueError(f"the model's {modality} channels are not in the simulation: {shown}")
    return np.array([index[name] for name in want], dtype=np.int64)


def _preprocessing_power(truth: SimulationTruth, config: Any) -> tuple[np.ndarray, bool]:
    """|H|² of the preprocessing filters on the truth's grid, and whether EEG is average-referenced."""
    from brainformer.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec.for_eeg(config, truth.sfreq_hz)
    if spec.sos.shape[0] == 0:
        return np.ones_like(truth.freqs_hz), spec.average_reference
    # The filter sees samples: evaluate it at the digital frequency of each grid point.
    _, response = scipy.signal.sosfreqz(spec.sos, worN=2 * np.pi * truth.freqs_hz / truth.sfreq_hz)
    return np.abs(response) ** 2, spec.average_reference


def oracle_map(truth: SimulationTruth, config: Any = None) -> OracleMap:
    """The Wiener oracle for `truth`, for raw data (`config` None) or after `config`'s preprocessing.

    With a config (a `BrainformerConfig` or anything with the same preprocessing fields), the
    covariances are those of the data after the config's filters (designed exactly as
    `brainformer.preprocessing` designs them) and its EEG reference, for the config's channels in
    the config's order. Per-channel scaling does not change the map's R² and is applied by
    `oracle_prediction`.
    """
    eeg_names, meg_names = list(truth.eeg_channel_names), list(truth.meg_channel_names)
    power, average_reference = None, False
    if config is not None:
        eeg_names, meg_names = list(config.eeg_channel_names), list(config.meg_channel_names)
        power, average_reference = _preprocessing_power(truth, config)
    eeg_idx = _channel_order(truth.eeg_channel_names, eeg_names, "EEG")
    meg_idx = _channel_order(truth.meg_channel_names, meg_names, "MEG") + truth.n_eeg
    cov = truth.sensor_covariance(power)
    # Work in µV / fT / fT·cm⁻¹ so the EEG and MEG blocks are of similar magnitude.
    units = _unit_factors(truth.meg_channel_types, truth.n_eeg)
    cov = cov * np.outer(units, units)
    c_ee = cov[np.ix_(eeg_idx, eeg_idx)]
    c_me = cov[np.ix_(meg_idx, eeg_idx)]
    c_mm_diag = np.diag(cov)[meg_idx]
    if average_reference:
        reference = np.eye(len(eeg_idx)) - 1.0 / len(eeg_idx)
        c_ee = reference @ c_ee @ reference
        c_me = c_me @ reference
    weights = c_me @ np.linalg.pinv(c_ee, rcond=1e-10, hermitian=True)
    residual = c_mm_diag - np.einsum("me,me->m", weights, c_me)
    expected_r2 = 1.0 - residual / c_mm_diag
    weights = weights / units[meg_idx][:, None] * units[eeg_idx][None, :]
    return OracleMap(weights, expected_r2, tuple(eeg_names), tuple(meg_names))


def wiener_oracle(truth: SimulationTruth) -> np.ndarray:
    """`(n_meg, n_eeg)` W = C_me C_ee⁻¹ for the raw (unfiltered, unreferenced) simulated data."""
    return oracle_map(truth, None).weights


def oracle_prediction(
    recording: str | Path | SimulationTruth, config: Any, eeg_preprocessed: np.ndarray | None = None
) -> np.ndarray:
    """The oracle's MEG prediction in the model's scaled units, `(n, n_meg)` float64.

    Args:
        recording: a simulated FIF (its truth sidecar is read) or a `SimulationTruth`.
        config: the model config whose preprocessing and channels the data went through.
        eeg_preprocessed: `(n, n_eeg)` EEG after `config`'s preprocessing (scaled, config order).
            None: read the recording and preprocess its EEG with `brainformer.preprocessing`
            (then `recording` must be a path).

    Raises:
        FileNotFoundError: `recording` is a path without a truth sidecar (not a simulation).
        ValueError: channels of the config missing from the simulation, or bad shapes.
    """
    truth = recording if isinstance(recording, SimulationTruth) else load_truth(recording)
    if eeg_preprocessed is None:
        if isinstance(recording, SimulationTruth):
            raise ValueError("oracle_prediction: pass eeg_preprocessed, or a recording path to read it from")
        eeg_preprocessed = _preprocessed_eeg(Path(recording), config)
    eeg_scaled = np.asarray(eeg_preprocessed, dtype=np.float64)
    n_eeg = len(config.eeg_channel_names)
    if eeg_scaled.ndim != 2 or eeg_scaled.shape[1] != n_eeg:
        raise ValueError(f"eeg_preprocessed must have shape (n, {n_eeg}), got {eeg_scaled.shape}")
    from brainformer.preprocessing import PreprocessingSpec

    eeg_spec = PreprocessingSpec.for_eeg(config, truth.sfreq_hz)
    meg_spec = PreprocessingSpec.for_meg(config, truth.sfreq_hz)
    mapping = oracle_map(truth, config)
    weights = mapping.weights
    eeg_physical = eeg_scaled
    if eeg_spec.scaling is not None:
        eeg_physical = eeg_spec.scaling.invert(eeg_scaled)
        # A channel the model sees as flat (scale 0) carries nothing the model could use.
        flat = eeg_spec.scaling.flat_channels
        if flat.size:
            usable = np.setdiff1d(np.arange(n_eeg), flat)
            sub_config = _ConfigView(config, [config.eeg_channel_names[i] for i in usable])
            weights = np.zeros_like(weights)
            weights[:, usable] = oracle_map(truth, sub_config).weights
    meg_physical = eeg_physical @ weights.T
    if meg_spec.scaling is not None:
        return meg_spec.scaling.apply(meg_physical).astype(np.float64)
    return meg_physical


class _ConfigView:
    """A config seen with a subset of its EEG channels (everything else delegated)."""

    def __init__(self, config: Any, eeg_channel_names: list[str]) -> None:
        self._config = config
        self.eeg_channel_names = eeg_channel_names
        self.eeg_mean = self.eeg_std = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def _preprocessed_eeg(path: Path, config: Any) -> np.ndarray:
    """The recording's EEG through the config's preprocessing (the serving path), `(n, n_eeg)`."""
    import mne

    from brainformer.preprocessing import iter_preprocessed_chunks

    raw = mne.io.read_raw_fif(path, preload=False, verbose="error")
    return np.concatenate([eeg for eeg, _, _ in iter_preprocessed_chunks(raw, config)])


# --------------------------------------------------------------------------------------------
# Live source
# --------------------------------------------------------------------------------------------
class SyntheticSource:
    """The simulator as an endless live EEG source (for `brainformer-rt simulate --synthetic`).

    Consecutive `read_eeg` calls continue one recording seamlessly: the result does not depend
    on how the samples are split into calls, and equals the EEG `simulate` gives for the same
    layout, rate, seed, subject and spacing.

    Attributes:
        layout, sfreq_hz, eeg_channel_names, meg_channel_names, meg_channel_types, truth.
        samples_generated: samples returned so far.
    """

    def __init__(
        self,
        layout: str,
        seed: int = 0,
        sfreq_hz: float | None = None,
        *,
        subject: int = 0,
        spacing_mm: float = DEFAULT_SPACING_MM,
        with_meg: bool = False,
    ) -> None:
        self.layout = _check_layout(layout)
        self.sfreq_hz = _check_sfreq(sfreq_hz, layout)
        seed = _check_nonnegative_int("seed", seed)
        plan = _plan(layout, self.sfreq_hz, _check_nonnegative_int("subject", subject), _check_spacing(spacing_mm))
        self.truth = dataclasses.replace(plan.truth, seed=seed)
        self.eeg_channel_names = list(plan.truth.eeg_channel_names)
        self.meg_channel_names = list(plan.truth.meg_channel_names)
        self.meg_channel_types = list(plan.truth.meg_channel_types)
        self._generator = _ActivityGenerator(plan, seed, with_meg=with_meg)

    @property
    def samples_generated(self) -> int:
        return self._generator.samples_generated

    def _check_count(self, n_samples: Any) -> int:
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
            raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
        return int(n_samples)

    def read_eeg(self, n_samples: int) -> np.ndarray:
        """The next `n_samples` of EEG, `(n_samples, n_eeg)` float32 volts."""
        n = self._check_count(n_samples)
        if n == 0:
            return np.empty((0, len(self.eeg_channel_names)), np.float32)
        eeg, _ = self._generator.generate(n)
        return eeg.astype(np.float32)

    def read_eeg_meg(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n_samples` of EEG `(n, n_eeg)` and MEG `(n, n_meg)`, float32 (needs `with_meg=True`)."""
        if not self._generator.with_meg:
            raise RuntimeError("this SyntheticSource was made with with_meg=False; it only produces EEG")
        n = self._check_count(n_samples)
        if n == 0:
            return (np.empty((0, len(self.eeg_channel_names)), np.float32),
                    np.empty((0, len(self.meg_channel_names)), np.float32))
        eeg, meg = self._generator.generate(n)
        return eeg.astype(np.float32), meg.astype(np.float32)
