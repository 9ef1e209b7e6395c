"""The Wiener oracle: the best instantaneous linear map from EEG to MEG, and the R² it reaches;
the causal limit (the best linear filter on given past lags), the linear limit (the best linear
filter of unlimited history and future), the informed limit
(the best predictor of any kind) and the noise ceiling (the noiseless MEG against the measured).

With C the covariance of [EEG; MEG] after the preprocessing filters, R the EEG reference operator
and MEG = W · EEG the estimator, W = C_me Rᵀ (R C_ee Rᵀ)⁺ and the expected R² of MEG channel c is
1 − (C_mm − W R C_em)_cc / (C_mm)_cc. The covariances are computed from the truth, not estimated:
every simulated time course has a known spectrum, so the oracle follows the band-pass and the
notch even though the source classes have different spectra (an instantaneous map does not
commute with filters unless all sources share one spectrum).

It is the best *instantaneous* linear estimator; a model that looks at a window of EEG can exceed
it (most of all for the evoked and burst components, whose time courses are partly predictable),
and, the bursts being non-Gaussian, a non-linear one may too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.signal

from brainformer.simulation.truth import SimulationTruth, load_truth

# Conditioning units: µV, fT, fT/cm, so the EEG and MEG blocks are of similar magnitude.
_UNIT_FACTOR = {"eeg": 1e6, "mag": 1e15, "grad": 1e13}


def default_config(truth: SimulationTruth) -> Any:
    """A model config with default preprocessing for a simulated layout (for summaries).

    The one place the simulator builds a config (importing it costs transformers and torch).
    """
    from brainformer.config_fields import BrainformerFields as Config

    return Config(
        eeg_channel_names=list(truth.eeg_channel_names),
        meg_channel_names=list(truth.meg_channel_names),
        meg_channel_types=list(truth.meg_channel_types),
        sfreq_hz=truth.sfreq_hz,
    )


def _unit_factors(meg_types: tuple[str, ...], n_eeg: int) -> np.ndarray:
    return np.array([_UNIT_FACTOR["eeg"]] * n_eeg + [_UNIT_FACTOR[t] for t in meg_types])


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


def noise_ceiling(truth: SimulationTruth, config: Any = None) -> np.ndarray:
    """`(n_meg,)` expected R² of the noiseless MEG against the measured one: the physical limit.

    No predictor, however it uses the EEG, can reach more in expectation: the MEG sensor noise is
    independent of everything the EEG carries. It is ``1 − noise / total`` per MEG channel, both
    variances after `config`'s filters (raw data for None), channels in the config's order.
    Per-channel scaling does not change it.
    """
    meg_names = list(truth.meg_channel_names) if config is None else list(config.meg_channel_names)
    power = None if config is None else _preprocessing_power(truth, config)[0]
    meg_idx = _channel_order(truth.meg_channel_names, meg_names, "MEG")
    total = np.diag(truth.sensor_covariance(power))[truth.n_eeg:]
    noise = truth.meg_noise_variance(power)
    return (1.0 - noise / total)[meg_idx]


def linear_limit(truth: SimulationTruth, config: Any) -> np.ndarray:
    """`(n_meg,)` expected R² of the best linear time-invariant filter EEG → MEG, with unlimited
    history *and future* (non-causal), after `config`'s preprocessing: what no linear method,
    however long its lags, can exceed; a model beyond it has found non-linear (non-Gaussian)
    structure.

    Per frequency f the best linear estimate leaves the error spectrum
    ``S_mm(f) − S_me(f) S_ee(f)⁺ S_em(f)``; its integral over f is the error variance. The spectra
    are those of the truth (1/f background, component transfer functions, white + pink sensor
    noise) times the filters' |H(f)|², only where the filters pass more than 1e-6 of the power.
    """
    return _spectral_limit(truth, config, components_known=False)


def informed_limit(truth: SimulationTruth, config: Any) -> np.ndarray:
    """`(n_meg,)` expected R² of the best predictor of *any* kind, linear or not, causal or not,
    even one told the exact time course of every alpha, evoked and burst component.

    The components are the simulator's only non-Gaussian activity; the background and the sensor
    noise are Gaussian and independent of them. Given the components, MEG and EEG are therefore
    jointly Gaussian and the best estimate is the components' own MEG field plus the non-causal
    Wiener filter of the rest of the EEG; its error is `linear_limit`'s with the component spectra
    removed. Knowing the components is more than any function of the EEG can know, so no model
    trained on EEG exceeds this R²: ``informed_limit − linear_limit`` bounds what non-linear
    structure can add over the best linear filter.
    """
    return _spectral_limit(truth, config, components_known=True)


def causal_limit(truth: SimulationTruth, config: Any, lags: Sequence[int]) -> np.ndarray:
    """`(n_meg,)` expected R² of the best *causal* linear filter on the given EEG lags (samples
    into the past, 0 = the current sample), after `config`'s preprocessing: what a lagged ridge on
    those lags reaches with unlimited training data, and what no linear model seeing only those
    past samples can exceed (e.g. ``range(0, 128, 4)`` for a 128-sample window).

    The normal equations are solved exactly from the true covariance functions
    ``C(τ) = ∫ S(f) e^{i2πfτ} df`` (one-sided spectra: the real part): with R the block-Toeplitz
    matrix of C_ee over lag differences and P the C_me of each lag, the explained variance of MEG
    channel m is ``(P R⁻¹ Pᵀ)_mm``.
    """
    lags = sorted(set(int(lag) for lag in lags))
    if not lags or lags[0] < 0:
        raise ValueError(f"lags must be samples into the past (>= 0), at least one; got {lags}")
    return _lagged_filter_limit(truth, config, lags)


def hop_limit(truth: SimulationTruth, config: Any, lags: Sequence[int], hop_samples: int) -> np.ndarray:
    """`(n_meg,)` expected R² of the best linear filter on the past `lags` plus whatever future
    the served hop holds, averaged over the hop's samples: what a model serving the newest
    `hop_samples` of each window can reach linearly.

    A window is served once it is complete, so the sample `j` places before its newest one is
    predicted with `j` samples of its own future in the window (0 … `hop_samples` − 1): a model
    may use them, a causal lagged ridge does not. Each position's best filter (past `lags` and
    future lags −1 … −j) is solved as in `causal_limit`; the mean over positions is this limit.
    """
    lags = sorted(set(int(lag) for lag in lags))
    if not lags or lags[0] < 0:
        raise ValueError(f"lags must be samples into the past (>= 0), at least one; got {lags}")
    if isinstance(hop_samples, bool) or not isinstance(hop_samples, (int, np.integer)) or hop_samples < 1:
        raise ValueError(f"hop_samples must be an integer >= 1, got {hop_samples!r}")
    covariances = _lag_covariances(truth, config, lags[-1], int(hop_samples) - 1)
    per_position = [_lagged_filter_limit(truth, config, list(range(-j, 0)) + lags, covariances) for j in range(hop_samples)]
    return np.mean(per_position, axis=0)


def _lag_covariances(truth: SimulationTruth, config: Any, max_past: int, max_future: int) -> dict[str, Any]:
    """The true covariance functions of the preprocessed data over lags −`max_future` …
    `max_past`: `c_ee (2·span + 1, n_eeg, n_eeg)` over lag differences −span … span (span =
    max_past + max_future), `c_me (span + 1, n_meg, n_eeg)` over lags −max_future … max_past,
    `total (n_meg,)` the MEG variances."""
    span = max_past + max_future
    differences = np.arange(-span, span + 1)
    n_eeg, n_meg = len(config.eeg_channel_names), len(config.meg_channel_names)
    c_ee = np.zeros((differences.size, n_eeg, n_eeg))
    c_me = np.zeros((span + 1, n_meg, n_eeg))
    total = np.zeros(n_meg)
    lag_index = np.arange(-max_future, max_past + 1) + span  # columns of `phase` for those lags
    for chunk in _preprocessed_spectra(truth, config, components_known=False):
        phase = np.exp(2j * np.pi * np.outer(chunk["freqs_hz"], differences) / truth.sfreq_hz)  # (f, τ)
        weighted = chunk["weight"][:, :, None]  # (f, 1, 1)
        c_ee += np.tensordot(phase, weighted * chunk["s_ee"], axes=(0, 0)).real
        c_me += np.tensordot(phase[:, lag_index], weighted * chunk["s_me"], axes=(0, 0)).real
        total += (chunk["weight"] * chunk["s_mm"]).sum(axis=0)
    return {"span": span, "max_future": max_future, "c_ee": c_ee, "c_me": c_me, "total": total}


def _lagged_filter_limit(truth: SimulationTruth, config: Any, lags: list[int],
                         covariances: dict[str, Any] | None = None) -> np.ndarray:
    """`(n_meg,)` R² of the best linear filter on sorted `lags` (negative: future samples)."""
    if covariances is None:
        covariances = _lag_covariances(truth, config, max(lags[-1], 0), max(-lags[0], 0))
    span, future = covariances["span"], covariances["max_future"]
    c_ee, c_me = covariances["c_ee"], covariances["c_me"]
    # E[EEG(t−k) EEG(t−j)ᵀ] = C_ee(j − k); E[MEG(t) EEG(t−j)ᵀ] = C_me(j).
    gram = np.block([[c_ee[(j - k) + span] for j in lags] for k in lags])
    cross = np.concatenate([c_me[lag + future] for lag in lags], axis=1)  # (n_meg, lags·n_eeg)
    explained = np.einsum("mi,mi->m", cross, np.linalg.lstsq(gram, cross.T, rcond=1e-12)[0].T)
    return explained / covariances["total"]


def envelope_informed_limit(truth: SimulationTruth, config: Any, draws: int = 128) -> np.ndarray:
    """`(n_meg,)` expected R² of the best linear filter told each burst component's (alpha, sparse
    beta) instantaneous *power*, not its time course: a realistic bound on what estimating
    envelopes from the EEG can add over `linear_limit` (told the whole time courses,
    `informed_limit` is far above anything a model of the EEG can know).

    A burst component is a Gaussian carrier times a slow envelope (`spectra._BurstProcess`);
    given the envelopes, EEG and MEG are Gaussian with each burst component's spectrum scaled by
    its power. Quasi-static: the power is held constant over the filter's span (the envelopes
    change over 0.4–1.6 s, the filters need tens of ms), and the best filter is the non-causal
    Wiener filter for that power. The expectation is over the powers' distribution (alpha |u|²,
    sparse u⁴/3, u standard normal, independent across components), on `draws` scrambled Sobol
    points (fixed seed: deterministic); the evoked responses stay unconditioned. What each draw
    adds is measured against `linear_limit`'s filter under the same powers (never negative, and
    the filter's expected residual is exactly the linear limit's), only where the bursts hold
    more than `_BURST_POWER_FRACTION` of the EEG's power, on every `_ENVELOPE_FREQUENCY_STEP`-th
    frequency of the truth's grid (the spectra are smooth on that scale). Woodbury's identity on
    the K components makes a draw cost K×K solves per frequency.
    """
    from scipy.stats import norm, qmc

    bursts = np.array([kind in ("alpha", "sparse") for kind in truth.component_kinds])
    quartic = np.array([kind == "sparse" for kind in truth.component_kinds])
    u = norm.ppf(np.clip(qmc.Sobol(int(bursts.sum()), scramble=True, seed=0).random(draws), 1e-12, 1 - 1e-12))
    powers = np.ones((draws, bursts.size))
    powers[:, bursts] = np.where(quartic[bursts], u**4 / 3.0, u**2)
    total, residual = 0.0, 0.0
    for chunk in _preprocessed_spectra(truth, config, components_known=True):
        weight = chunk["weight"]  # (f, 1)
        burst_eeg = np.einsum("ek,fkk->f", chunk["lead_e"][:, bursts] ** 2, chunk["components"][:, bursts][:, :, bursts].real)
        busy = np.flatnonzero(burst_eeg > _BURST_POWER_FRACTION * np.trace(chunk["s_ee"], axis1=1, axis2=2).real)
        rows = busy[busy % _ENVELOPE_FREQUENCY_STEP == 0]
        gain_at = _envelope_gain(chunk, rows)
        residual = residual + (weight * gain_at.linear_residual).sum(axis=0)  # the linear limit's
        if rows.size:
            gain = sum(gain_at(power) for power in powers) / draws  # (rows, n_meg), ≥ 0
            residual = residual - (_ENVELOPE_FREQUENCY_STEP * weight[rows] * gain).sum(axis=0)
        total = total + (weight * chunk["s_mm"]).sum(axis=0)
    return 1.0 - residual / total


#: `envelope_informed_limit`: frequencies where the burst components hold more than this share of
#: the EEG's power are conditioned on the powers; every this-many-th of them is integrated.
_BURST_POWER_FRACTION = 1e-2
_ENVELOPE_FREQUENCY_STEP = 4


class _envelope_gain:
    """For one chunk of `_preprocessed_spectra(..., components_known=True)` (its `s_ee`, `s_me`
    are the Gaussian part N): `linear_residual (f, n_meg)`, the error density of the Wiener filter
    W for the mean powers (`linear_limit`'s), and, called with the components' powers π (K,),
    `(len(rows), n_meg)`: how much less the filter for π leaves than W does under π, at `rows`.

    With S(π) the components' cross-spectra scaled by √π, L, L_m their EEG and MEG leads:
    s_ee = N + L S Lᵀ, s_me = N_me + L_m S Lᵀ and s_ee⁻¹ = N⁻¹ − N⁻¹ L S (I + A S)⁻¹ Lᵀ N⁻¹,
    A = Lᵀ N⁻¹ L (valid for a singular S). The optimal filter explains diag(s_me s_ee⁻¹ s_meᴴ);
    W explains 2 Re diag(W s_meᴴ) − diag(W s_ee Wᴴ).
    """

    def __init__(self, chunk: dict[str, np.ndarray], rows: np.ndarray) -> None:
        lead_e, lead_m, components = chunk["lead_e"], chunk["lead_m"], chunk["components"]
        mean_ee = chunk["s_ee"] + lead_e @ components @ lead_e.T
        mean_me = chunk["s_me"] + lead_m @ components @ lead_e.T
        wiener = mean_me @ np.linalg.pinv(mean_ee, rcond=1e-10, hermitian=True)  # W (f, m, e)
        mean_mm = chunk["s_mm_unknown"] + np.einsum("mk,fkl,ml->fm", lead_m, components, lead_m).real
        self.linear_residual = mean_mm - np.einsum("fme,fme->fm", wiener, mean_me.conj()).real
        self.lead_m, self.components = lead_m, components[rows]
        gaussian = chunk["s_ee"][rows]
        inverse = np.linalg.pinv(gaussian, rcond=1e-10, hermitian=True)  # N⁻¹ (r, e, e)
        projection = chunk["s_me"][rows] @ inverse  # Q = N_me N⁻¹
        self.q0 = np.einsum("fme,fme->fm", projection, chunk["s_me"][rows].conj()).real  # diag(Q N_meᴴ)
        self.b = projection @ lead_e  # Q L (r, m, K)
        self.a = lead_e.T @ inverse @ lead_e  # Lᵀ N⁻¹ L (r, K, K)
        w = wiener[rows]
        self.w_gaussian = (2 * np.einsum("fme,fme->fm", w, chunk["s_me"][rows].conj()).real
                           - np.einsum("fme,fed,fmd->fm", w, gaussian, w.conj()).real)  # W's Gaussian part
        self.wl = w @ lead_e  # W L (r, m, K)
        self.identity = np.eye(lead_e.shape[1])

    def __call__(self, power: np.ndarray) -> np.ndarray:
        scale = np.sqrt(power)
        cross = self.components * np.outer(scale, scale)  # S(π) (r, K, K), Hermitian
        lead_m, b, a = self.lead_m, self.b, self.a
        sa = cross @ a
        optimal = (self.q0 + 2 * np.einsum("mk,fkl,fml->fm", lead_m, cross, b.conj()).real
                   + np.einsum("mk,fkl,ml->fm", lead_m, sa @ cross, lead_m).real)
        v = b + np.einsum("mk,fkl->fml", lead_m, sa)  # s_me N⁻¹ L
        optimal -= np.einsum("fmk,fkl,fml->fm", v, cross @ np.linalg.inv(self.identity + a @ cross), v.conj()).real
        fixed = (self.w_gaussian + 2 * np.einsum("fmk,fkl,ml->fm", self.wl, cross, lead_m).real
                 - np.einsum("fmk,fkl,fml->fm", self.wl, cross, self.wl.conj()).real)
        return optimal - fixed


def planted_share(truth: SimulationTruth, config: Any) -> np.ndarray:
    """`(n_meg,)` expected share of each MEG channel's variance that the planted non-linear term
    holds after `config`'s MEG preprocessing (`brainformer.simulation.planted`; zeros without
    one): what a perfect model gains over any linear one, channel by channel. For the default
    1–40 Hz band it is the share the simulation was asked for (the term is calibrated to it);
    for another band the term's variance follows the ratio of its realised power in the two bands.
    `planted_meg` gives the term itself, to measure its share on any rows.
    """
    meg_idx = _channel_order(truth.meg_channel_names, list(config.meg_channel_names), "MEG")
    if truth.planted_source is None:
        return np.zeros(len(meg_idx))
    from brainformer.simulation.planted import SHARE_BAND_HZ, SHARE_BAND_ORDER, _band_sos

    filtered, power = _planted_through_meg_filters(truth, config)
    share_band = np.array(_band_sos(*SHARE_BAND_HZ, SHARE_BAND_ORDER, truth.sfreq_hz))
    in_share_band, _ = scipy.signal.sosfilt(share_band, truth.planted_source.astype(np.float64),
                                            zi=scipy.signal.sosfilt_zi(share_band) * float(truth.planted_source[0]))
    settle = int(round(_PLANTED_SETTLE_S * truth.sfreq_hz))
    # The calibration gives the term unit variance in the share band, in expectation.
    variance = float(np.var(filtered[settle:]) / np.var(in_share_band[settle:]))
    planted = variance * np.asarray(truth.planted_meg_pattern, dtype=np.float64) ** 2
    rest = np.diag(truth.sensor_covariance(power))[truth.n_eeg:]
    return (planted / (rest + planted))[meg_idx]


def planted_meg(truth: SimulationTruth, config: Any) -> np.ndarray:
    """`(n, n_meg)` float64: the planted term exactly as it is in the recording's MEG after
    `config`'s preprocessing (filters as `brainformer.preprocessing` runs them, from the first
    sample; the config's MEG scaling when it has one), channels in the config's order; zeros
    without a planted term. Its share of the preprocessed MEG on any rows is the R² a perfect
    model gains there over any linear one."""
    meg_idx = _channel_order(truth.meg_channel_names, list(config.meg_channel_names), "MEG")
    if truth.planted_source is None:
        raise ValueError("the simulation has no planted term (simulate(..., planted_share=s) adds one)")
    from brainformer.preprocessing import PreprocessingSpec

    filtered, _ = _planted_through_meg_filters(truth, config)
    pattern = np.asarray(truth.planted_meg_pattern, dtype=np.float64)[meg_idx]
    scaling = PreprocessingSpec.for_meg(config, truth.sfreq_hz).scaling
    if scaling is not None:
        pattern = pattern * scaling.scale  # an additive term: the mean is the rest's
    return np.outer(filtered, pattern)


#: The planted term's variance is measured after this many seconds (the filters' start forgotten).
_PLANTED_SETTLE_S = 2.0


def _planted_through_meg_filters(truth: SimulationTruth, config: Any) -> tuple[np.ndarray, np.ndarray]:
    """The planted source through `config`'s MEG filters (forward from the first sample's steady
    state, backward too for a zero-phase target, then decimated), and their |H|² on the truth's grid."""
    from brainformer.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec.for_meg(config, truth.sfreq_hz)
    source = np.asarray(truth.planted_source, dtype=np.float64)
    sos, backward_sos = np.array(spec.sos), np.array(spec.backward_sos)  # writable: scipy's kernel needs it
    power = truth.filter_power_response(sos)
    if sos.shape[0]:
        source, _ = scipy.signal.sosfilt(sos, source, zi=scipy.signal.sosfilt_zi(sos) * source[0])
    source = source[:: spec.decimation]
    if spec.zero_phase and backward_sos.shape[0]:
        backward = source[::-1]
        source = scipy.signal.sosfilt(backward_sos, backward, zi=scipy.signal.sosfilt_zi(backward_sos) * backward[0])[0][::-1]
        power = power * truth.filter_power_response(backward_sos)
    return source, power


def _spectral_limit(truth: SimulationTruth, config: Any, components_known: bool) -> np.ndarray:
    """The R² of `linear_limit` (`components_known` False) or of `informed_limit` (True)."""
    total, residual = 0.0, 0.0
    for chunk in _preprocessed_spectra(truth, config, components_known):
        explained = np.einsum("fme,fme->fm", chunk["s_me"] @ np.linalg.pinv(chunk["s_ee"], rcond=1e-10, hermitian=True), chunk["s_me"].conj()).real
        total = total + (chunk["weight"] * chunk["s_mm"]).sum(axis=0)
        residual = residual + (chunk["weight"] * (chunk["s_mm_unknown"] - explained)).sum(axis=0)
    return 1.0 - residual / total


def _preprocessed_spectra(truth: SimulationTruth, config: Any, components_known: bool) -> Iterator[dict[str, np.ndarray]]:
    """The one-sided (cross-)spectra of the preprocessed EEG and MEG, in batches of frequencies
    where the filters pass more than 1e-6 of the power (bounded memory): `freqs_hz (f,)`,
    `weight (f, 1)` (integration weight × filter power), `s_ee (f, n_eeg, n_eeg)`, `s_me (f, n_meg,
    n_eeg)`, `s_mm (f, n_meg)` and `s_mm_unknown`, the MEG's own power left unknown when the
    components' time courses are known (`components_known`; else equal to `s_mm`)."""
    power, average_reference = _preprocessing_power(truth, config)
    eeg_idx = _channel_order(truth.eeg_channel_names, list(config.eeg_channel_names), "EEG")
    meg_idx = _channel_order(truth.meg_channel_names, list(config.meg_channel_names), "MEG")
    units = _unit_factors(truth.meg_channel_types, truth.n_eeg)
    eeg_units, meg_units = units[eeg_idx], units[truth.n_eeg + meg_idx]
    gain_e = truth.gain_eeg[eeg_idx] * eeg_units[:, None]
    gain_m = truth.gain_meg[meg_idx] * meg_units[:, None]
    if average_reference:
        gain_e = gain_e - gain_e.mean(axis=0)
    background = truth.background_covariance()
    bg_ee, bg_me = gain_e @ background @ gain_e.T, gain_m @ background @ gain_e.T
    bg_mm = np.einsum("ms,st,mt->m", gain_m, background, gain_m)
    lead_e = gain_e[:, truth.component_sources] * truth.component_moments_am  # (n_eeg, K)
    lead_m = gain_m[:, truth.component_sources] * truth.component_moments_am  # (n_meg, K)
    spectra = _unit_spectra(truth)
    noise_e = _noise_densities(truth.noise_white_variance_eeg[eeg_idx], truth.noise_pink_variance_eeg[eeg_idx], eeg_units, spectra)
    noise_m = _noise_densities(truth.noise_white_variance_meg[meg_idx], truth.noise_pink_variance_meg[meg_idx], meg_units, spectra)
    reference = np.eye(len(eeg_idx)) - 1.0 / len(eeg_idx) if average_reference else np.eye(len(eeg_idx))
    passed = np.flatnonzero(power > 1e-6)
    for chunk in np.array_split(passed, max(1, len(passed) // _LINEAR_LIMIT_CHUNK)):
        pink = spectra["pink"][chunk][:, None, None]
        components = spectra["components"][chunk]  # (f, K, K) cross-spectra of the unit time courses
        s_ee = pink * bg_ee + noise_e[chunk][:, :, None] * np.eye(len(eeg_idx))
        s_me = pink * bg_me
        gaussian_mm = pink[:, :, 0] * bg_mm + noise_m[chunk]
        s_mm = gaussian_mm + np.einsum("mk,fkl,ml->fm", lead_m, components, lead_m).real
        if not components_known:  # known components leave only the Gaussian part to be estimated
            s_ee = s_ee + lead_e @ components @ lead_e.T
            s_me = s_me + lead_m @ components @ lead_e.T
        yield {
            "freqs_hz": truth.freqs_hz[chunk],
            "weight": (power[chunk] * spectra["weights"][chunk])[:, None],
            "s_ee": reference @ s_ee @ reference,  # the reference acts on the noise too
            "s_me": s_me @ reference,
            "s_mm": s_mm,
            "s_mm_unknown": gaussian_mm if components_known else s_mm,
            "lead_e": reference @ lead_e,  # (n_eeg, K) as referenced
            "lead_m": lead_m,  # (n_meg, K)
            "components": components,
        }


#: Frequencies per batch of `linear_limit` (its spectra are (f, n_meg, n_eeg) complex arrays).
_LINEAR_LIMIT_CHUNK = 128


def _unit_spectra(truth: SimulationTruth) -> dict[str, np.ndarray]:
    """Spectral densities on the truth's grid, each integrating to the unit (or the true) variance:
    `weights (F,)` of the integral, `pink (F,)` 1/f, `white (F,)` flat, `components (F, K, K)`."""
    from brainformer.simulation.spectra import _integration_weights

    weights = _integration_weights(truth.freqs_hz)
    transfer = truth.component_transfer  # (K, F)
    same_driver = truth.component_drivers[:, None] == truth.component_drivers[None, :]
    unfiltered = np.einsum("f,if,jf->ij", weights, transfer, transfer.conj()).real * same_driver
    # The grid's small integration error, corrected with the exact variances (as sensor_covariance does).
    transfer = transfer * np.sqrt(np.diag(truth.component_covariance) / np.diag(unfiltered))[:, None]
    components = np.einsum("if,jf->fij", transfer, transfer.conj()) * same_driver
    return {
        "weights": weights,
        "pink": truth.pink_psd / np.sum(weights * truth.pink_psd),
        "white": np.full_like(weights, 1.0 / np.sum(weights)),
        "components": components,
    }


def _noise_densities(white: np.ndarray, pink: np.ndarray, units: np.ndarray, spectra: dict[str, np.ndarray]) -> np.ndarray:
    """`(F, channels)` sensor-noise density of white and pink variances (per channel), in `units`."""
    return (np.outer(spectra["white"], white) + np.outer(spectra["pink"], pink)) * units**2


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
