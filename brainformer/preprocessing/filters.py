"""Filter design and the streaming preprocessor: one spec, run chunk by chunk with carried state.

A frozen `PreprocessingSpec` describes everything that changes one modality's signal (reference,
the SOS filter cascade, decimation, scaling); a `StreamingPreprocessor` runs it over chunks of any
size and carries the filter state and the decimation phase between them, so that the output does
not depend on how the input was chunked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.signal

from brainformer.preprocessing.errors import NonFiniteInputError, PreprocessingError
from brainformer.preprocessing.scaling import ChannelScaling, _scaling_from_config

__all__ = [
    "ANTI_ALIAS_FRACTION",
    "FilterBand",
    "design_band",
    "input_band",
    "is_zero_phase_target",
    "target_band",
    "zero_phase_backward_pass",
    "ANTI_ALIAS_ORDER",
    "ANTI_ALIAS_RIPPLE_DB",
    "RATE_RELATIVE_TOLERANCE",
    "PreprocessingSpec",
    "StreamingPreprocessor",
    "decimation_factor",
    "eeg_preprocessor",
    "meg_preprocessor",
]

logger = logging.getLogger(__name__)

#: Relative tolerance within which an input rate counts as equal to the model rate (or to an
#: integer multiple of it, for decimation).
RATE_RELATIVE_TOLERANCE = 1e-3
#: When decimating without a low-pass safely below the output Nyquist frequency, an anti-alias
#: Chebyshev type I low-pass (the filter of `scipy.signal.decimate`) is added at this fraction of
#: the output Nyquist frequency: -25 dB at the output Nyquist frequency, -68 dB at 1.5 times it.
ANTI_ALIAS_FRACTION = 0.8
ANTI_ALIAS_ORDER = 8
ANTI_ALIAS_RIPPLE_DB = 0.05


# --------------------------------------------------------------------------------------------
# Fast second-order-section kernel
# --------------------------------------------------------------------------------------------
# On a small chunk `scipy.signal.sosfilt` spends more time on argument checks, axis moves and
# copies than on filtering, and that overhead is most of the daemon's per-chunk budget. Its
# compiled kernel filters a C-contiguous (signals, samples) float64 array in place with state
# (signals, sections, 2) and is the same arithmetic, so it is used when present and verified against the public function at import;
# otherwise the public function is used (same numbers, slower).
try:  # pragma: no branch
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the scipy build
    _sosfilt_kernel = None


def _sosfilt_public(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> None:
    """Filter `x` (signals, samples) in place along time; `zi` (signals, sections, 2) updated."""
    y, zf = scipy.signal.sosfilt(sos, x, axis=1, zi=np.transpose(zi, (1, 0, 2)))
    x[...] = y
    zi[...] = np.transpose(zf, (1, 0, 2))


def _kernel_matches_public() -> bool:
    if _sosfilt_kernel is None:
        return False
    rng = np.random.default_rng(0)
    sos = scipy.signal.butter(4, [0.05, 0.3], btype="bandpass", output="sos")
    x = rng.standard_normal((3, 50))
    zi = rng.standard_normal((3, sos.shape[0], 2))
    x_public, zi_public = x.copy(), zi.copy()
    _sosfilt_public(sos, x_public, zi_public)
    try:
        _sosfilt_kernel(sos, x, zi)
    except Exception:  # noqa: BLE001 - any signature change means: do not use it
        return False
    return bool(np.array_equal(x, x_public) and np.array_equal(zi, zi_public))


_sosfilt_inplace = _sosfilt_kernel if _kernel_matches_public() else _sosfilt_public
if _sosfilt_inplace is _sosfilt_public:  # pragma: no cover - depends on the scipy build
    logger.info("scipy's sosfilt kernel is not usable here; using scipy.signal.sosfilt")


# --------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------
def decimation_factor(input_sfreq_hz: float, model_sfreq_hz: float) -> int:
    """Integer factor taking `input_sfreq_hz` to `model_sfreq_hz` (1 when equal).

    Raises `PreprocessingError` naming both rates when the input is neither equal to the model
    rate (relative tolerance `RATE_RELATIVE_TOLERANCE`) nor an integer multiple of it.
    """
    if not (math.isfinite(input_sfreq_hz) and input_sfreq_hz > 0):
        raise PreprocessingError(f"input sampling rate must be a positive number of Hz, got {input_sfreq_hz!r}")
    ratio = input_sfreq_hz / model_sfreq_hz
    factor = round(ratio)
    if factor >= 1 and abs(ratio - factor) <= RATE_RELATIVE_TOLERANCE * ratio:
        return int(factor)
    raise PreprocessingError(
        f"input sampling rate {input_sfreq_hz:g} Hz cannot be brought to the model rate "
        f"{model_sfreq_hz:g} Hz: it must equal it (relative tolerance {RATE_RELATIVE_TOLERANCE:g}) "
        f"or be an integer multiple of it"
    )


@dataclass(frozen=True)
class FilterBand:
    """The Butterworth band and notches of one signal path, as the config sets them.

    Attributes:
        highpass_hz, lowpass_hz: cut-offs (None: no such filter).
        order: Butterworth order of each of the two filters.
        notch_hz, notch_quality: line-noise notches and their quality factor.
        source: the config fields these came from, for error messages (e.g. ``"highpass_hz"``).
    """

    highpass_hz: float | None
    lowpass_hz: float | None
    order: int
    notch_hz: tuple[float, ...]
    notch_quality: float
    source: tuple[str, str] = ("highpass_hz", "lowpass_hz")


def input_band(config: Any) -> FilterBand:
    """The EEG's filters (and a causal target's, unless `target_band_hz` sets another band)."""
    return FilterBand(config.highpass_hz, config.lowpass_hz, int(config.filter_order), tuple(config.notch_hz or ()),
                      float(config.notch_quality))


def target_band(config: Any) -> FilterBand:
    """The filters of the MEG the model learns to predict: `target_band_hz` and
    `target_filter_order` where set, else the input's."""
    band = getattr(config, "target_band_hz", None)
    order = getattr(config, "target_filter_order", None)
    if band is None and order is None:
        return input_band(config)
    highpass_hz, lowpass_hz = (config.highpass_hz, config.lowpass_hz) if band is None else band
    source = ("highpass_hz", "lowpass_hz") if band is None else ("target_band_hz[0]", "target_band_hz[1]")
    return FilterBand(highpass_hz, lowpass_hz, int(config.filter_order if order is None else order),
                      tuple(config.notch_hz or ()), float(config.notch_quality), source)


def is_zero_phase_target(config: Any) -> bool:
    """True when the model learns the MEG filtered forward and backward (no delay)."""
    return getattr(config, "target_phase", "causal") == "zero_phase"


def design_band(band: FilterBand, filter_sfreq_hz: float, decimation: int = 1) -> tuple[np.ndarray, tuple[str, ...]]:
    """Cascade of all filters of `band` at `filter_sfreq_hz` as SOS `(sections, 6)` float64, and a
    description of each stage; with `decimation` > 1, an anti-alias low-pass where the band's own
    low-pass does not protect the decimated rate."""
    nyquist_hz = filter_sfreq_hz / 2.0
    output_nyquist_hz = nyquist_hz / decimation
    order = int(band.order)
    highpass_hz = band.highpass_hz
    lowpass_hz = band.lowpass_hz
    stages: list[np.ndarray] = []
    names: list[str] = []
    if highpass_hz is not None:
        if not 0 < highpass_hz < nyquist_hz:
            raise PreprocessingError(
                f"config.{band.source[0]}={highpass_hz} must lie between 0 and the Nyquist frequency {nyquist_hz:g} Hz"
            )
        stages.append(scipy.signal.butter(order, highpass_hz, btype="highpass", fs=filter_sfreq_hz, output="sos"))
        names.append(f"high-pass {highpass_hz:g} Hz (order {order})")
    if lowpass_hz is not None:
        limit_hz = output_nyquist_hz if decimation == 1 else nyquist_hz
        if not 0 < lowpass_hz < limit_hz:
            raise PreprocessingError(
                f"config.{band.source[1]}={lowpass_hz} must lie between 0 and the Nyquist frequency {limit_hz:g} Hz"
            )
        stages.append(scipy.signal.butter(order, lowpass_hz, btype="lowpass", fs=filter_sfreq_hz, output="sos"))
        names.append(f"low-pass {lowpass_hz:g} Hz (order {order})")
    if decimation > 1:
        anti_alias_hz = ANTI_ALIAS_FRACTION * output_nyquist_hz
        if lowpass_hz is None or lowpass_hz > anti_alias_hz:
            stages.append(
                scipy.signal.cheby1(
                    ANTI_ALIAS_ORDER, ANTI_ALIAS_RIPPLE_DB, anti_alias_hz, btype="lowpass", fs=filter_sfreq_hz, output="sos"
                )
            )
            names.append(f"anti-alias low-pass {anti_alias_hz:g} Hz (Chebyshev I, order {ANTI_ALIAS_ORDER})")
    for notch_hz in band.notch_hz:
        if not 0 < notch_hz < nyquist_hz:
            logger.info("notch at %g Hz skipped: not below the Nyquist frequency %g Hz", notch_hz, nyquist_hz)
            continue
        b, a = scipy.signal.iirnotch(notch_hz, float(band.notch_quality), fs=filter_sfreq_hz)
        stages.append(scipy.signal.tf2sos(b, a))
        names.append(f"notch {notch_hz:g} Hz (Q {band.notch_quality:g})")
    if not stages:
        return np.zeros((0, 6)), ()
    sos = np.ascontiguousarray(np.vstack(stages), dtype=np.float64)
    return sos, tuple(names)


@dataclass(frozen=True, eq=False)
class PreprocessingSpec:
    """Everything that changes one modality's signal, designed once from a config.

    Attributes:
        modality: ``"eeg"`` or ``"meg"``.
        channel_names: the model's channel order for this modality.
        input_sfreq_hz: rate of the incoming samples.
        output_sfreq_hz: rate after decimation (``input_sfreq_hz / decimation``).
        decimation: keep every `decimation`-th sample (1 = no decimation).
        average_reference: subtract the mean over channels from every sample (EEG only).
        sos: `(sections, 6)` float64 cascade of all filters, designed at the model's rate times
            `decimation` so that streams whose rate matches within tolerance get identical
            coefficients.
        stages: human-readable description of the filter stages, in order.
        scaling: per-channel scaling, or None (identity) when the config has no statistics.
        zero_phase: a zero-phase MEG target (offline only): the streaming pass filters forward
            and does not scale; `zero_phase_backward_pass` then runs `backward_sos` backward over
            the whole recording and scales.
        backward_sos: `(sections, 6)` the target band designed at the output rate (zero-phase
            targets), else empty.
    """

    modality: str
    channel_names: tuple[str, ...]
    input_sfreq_hz: float
    output_sfreq_hz: float
    decimation: int
    average_reference: bool
    sos: np.ndarray
    stages: tuple[str, ...]
    scaling: ChannelScaling | None
    zero_phase: bool = False
    backward_sos: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @classmethod
    def for_eeg(cls, config: Any, input_sfreq_hz: float) -> "PreprocessingSpec":
        """EEG: reference (per ``config.eeg_reference``), filters, decimation, ``eeg_*`` scaling."""
        reference = getattr(config, "eeg_reference", "none")
        if reference not in ("average", "none"):
            raise PreprocessingError(f"config.eeg_reference={reference!r}: allowed values are 'average' and 'none'")
        return cls._build(config, "eeg", list(config.eeg_channel_names), input_sfreq_hz, reference == "average",
                          input_band(config))

    @classmethod
    def for_meg(cls, config: Any, input_sfreq_hz: float) -> "PreprocessingSpec":
        """MEG, the model's target: no reference, the target band (`target_band`; the EEG's
        filters by default) with the EEG's decimation, ``meg_*`` scaling; zero phase when the
        config's `target_phase` says so."""
        return cls._build(config, "meg", list(config.meg_channel_names), input_sfreq_hz, False, target_band(config),
                          zero_phase=is_zero_phase_target(config))

    @classmethod
    def _build(cls, config: Any, modality: str, names: list[str], input_sfreq_hz: float, average_reference: bool,
               band: FilterBand, zero_phase: bool = False):
        model_sfreq_hz = float(config.sfreq_hz)
        decimation = decimation_factor(float(input_sfreq_hz), model_sfreq_hz)
        # Design at the nominal model rate so a stream announcing 600.615 Hz and a file at
        # 600.614990234375 Hz get the very same coefficients (no train/serve skew).
        sos, stages = design_band(band, model_sfreq_hz * decimation, decimation)
        sos.setflags(write=False)
        backward_sos = np.zeros((0, 6))
        if zero_phase:
            # The backward pass runs after decimation, at the model rate: the band alone.
            backward_sos, backward_stages = design_band(band, model_sfreq_hz)
            backward_sos.setflags(write=False)
            stages = stages + tuple(f"{stage}, backward" for stage in backward_stages)
        return cls(
            modality=modality,
            channel_names=tuple(names),
            input_sfreq_hz=float(input_sfreq_hz),
            output_sfreq_hz=float(input_sfreq_hz) / decimation,
            decimation=decimation,
            average_reference=average_reference,
            sos=sos,
            stages=stages,
            scaling=_scaling_from_config(config, modality, len(names)),
            zero_phase=zero_phase,
            backward_sos=backward_sos,
        )


# --------------------------------------------------------------------------------------------
# Streaming preprocessor
# --------------------------------------------------------------------------------------------
class StreamingPreprocessor:
    """Runs a `PreprocessingSpec` chunk by chunk, with state; the output does not depend on chunking.

    State (all of it): the filter state `(channels, sections, 2)` float64, initialised at the first
    sample after construction or `reset()` to the steady state for that sample
    (``sosfilt_zi * x0``), and the decimation phase (samples seen modulo the factor). The first
    sample after a (re)start is always kept. Internally float64; output float32.
    """

    def __init__(self, spec: PreprocessingSpec, n_channels: int) -> None:
        if n_channels != spec.n_channels:
            raise PreprocessingError(
                f"{spec.modality}: the preprocessor was built for {spec.n_channels} channels, got n_channels={n_channels}"
            )
        self.spec = spec
        self.n_channels = n_channels
        self._sos = np.array(spec.sos)  # writable copy: the compiled kernel needs a writable buffer
        n_sections = spec.sos.shape[0]
        self._zi_unit = scipy.signal.sosfilt_zi(spec.sos) if n_sections else np.zeros((0, 2))  # (sections, 2)
        self._zi = np.zeros((n_channels, n_sections, 2))
        self._started = False
        self._phase = 0  # samples seen since (re)start, modulo the decimation factor
        # Flat float64 work buffers, grown on demand and reused: (channels, n) and (n, channels).
        self._work = np.empty(0)
        self._work_rows = np.empty(0)
        # A zero-phase target is scaled after its backward pass (`zero_phase_backward_pass`).
        if spec.scaling is not None and not spec.zero_phase:
            self._mean = spec.scaling.mean[:, None]
            self._scale = spec.scaling.scale[:, None]
        else:
            self._mean = self._scale = None

    def reset(self) -> None:
        """Forget the filter state and decimation phase (after a gap in the input)."""
        self._started = False
        self._phase = 0

    def process(self, chunk: np.ndarray, timestamps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocess the next samples.

        Args:
            chunk: `(n, channels)` raw samples in physical units, any float dtype.
            timestamps: `(n,)` time of each sample (seconds), or None.

        Returns:
            `(out, out_timestamps)`: `(m, channels)` float32 new array and `(m,)` float64 timestamps
            of the kept samples (None when `timestamps` is None), ``m ≈ n / decimation``.

        Raises:
            NonFiniteInputError: the chunk holds NaN/Inf; the state is left as it was.
        """
        if chunk.ndim != 2 or chunk.shape[1] != self.n_channels:
            raise PreprocessingError(
                f"{self.spec.modality}: expected a chunk of shape (n, {self.n_channels}), got {chunk.shape}"
            )
        n = chunk.shape[0]
        if timestamps is not None and not isinstance(timestamps, np.ndarray):
            timestamps = np.asarray(timestamps, dtype=np.float64)
        if timestamps is not None and len(timestamps) != n:
            raise PreprocessingError(f"{self.spec.modality}: {n} samples but {len(timestamps)} timestamps")
        if n == 0:
            return np.empty((0, self.n_channels), np.float32), None if timestamps is None else np.empty(0)
        size = self.n_channels * n
        if self._work.size < size:
            self._work = np.empty(max(size, 2 * self._work.size))
            self._work_rows = np.empty_like(self._work)
        x = self._work[:size].reshape(self.n_channels, n)  # (channels, n), C-contiguous for the kernel
        if self.spec.average_reference:
            rows = self._work_rows[:size].reshape(n, self.n_channels)  # (n, channels), C-contiguous
            np.copyto(rows, chunk)
            # Summing each sample's channels along the contiguous axis runs the very same float
            # operations for every sample whatever the chunk size (a reduction across rows would
            # switch algorithm for 1-sample chunks and break chunk invariance in the last bits).
            rows -= (np.add.reduce(rows, axis=1) / self.n_channels)[:, None]
            np.copyto(x, rows.T)
        else:
            np.copyto(x, chunk.T)
        if not math.isfinite(float(x.sum())):
            raise NonFiniteInputError(f"{self.spec.modality}: chunk holds NaN or Inf values")
        if not self._started:
            self._zi[...] = self._zi_unit[None, :, :] * x[:, 0, None, None]
            self._started = True
        if self._sos.shape[0]:
            _sosfilt_inplace(self._sos, x, self._zi)
        factor = self.spec.decimation
        first = (-self._phase) % factor
        self._phase = (self._phase + n) % factor
        kept = x[:, first::factor] if factor > 1 else x
        if self._scale is not None:
            kept = (kept - self._mean) * self._scale
        out = np.ascontiguousarray(kept.T, dtype=np.float32)  # (m, channels), a new array the caller may keep
        out_timestamps = None
        if timestamps is not None:
            out_timestamps = np.array(timestamps[first::factor] if factor > 1 else timestamps, dtype=np.float64)
        return out, out_timestamps


def zero_phase_backward_pass(spec: PreprocessingSpec, forward: np.ndarray, chunk_samples: int = 16384) -> None:
    """Finish a zero-phase target in place: `forward (n, channels)` (a whole recording's MEG
    after the streaming, forward pass of `spec`) is filtered backward in time through
    `spec.backward_sos`, then scaled.

    Chunk by chunk from the end, with the filter state carried between chunks and started at the
    steady state of the last sample (as the forward pass starts at the first), so a memory-mapped
    recording of any length needs one chunk of memory. Forward then backward through the same
    Butterworth band cancels the phase: the result lags the MEG by nothing at any frequency.
    """
    if not spec.zero_phase:
        raise PreprocessingError(f"{spec.modality}: zero_phase_backward_pass needs a zero-phase spec")
    n, n_channels = forward.shape
    if n_channels != spec.n_channels:
        raise PreprocessingError(f"{spec.modality}: expected (n, {spec.n_channels}), got {forward.shape}")
    sos = np.array(spec.backward_sos)  # writable: the compiled kernel needs it
    n_sections = sos.shape[0]
    zi = np.zeros((n_channels, n_sections, 2))
    zi_unit = scipy.signal.sosfilt_zi(sos) if n_sections else np.zeros((0, 2))
    started = False
    for stop in range(n, 0, -chunk_samples):
        start = max(stop - chunk_samples, 0)
        x = np.ascontiguousarray(forward[start:stop][::-1].T, dtype=np.float64)  # (channels, m), time reversed
        if not started:
            zi[...] = zi_unit[None, :, :] * x[:, 0, None, None]
            started = True
        if n_sections:
            _sosfilt_inplace(sos, x, zi)
        if spec.scaling is not None:
            x = (x - spec.scaling.mean[:, None]) * spec.scaling.scale[:, None]
        forward[start:stop] = x.T[::-1]


def eeg_preprocessor(config: Any, input_sfreq_hz: float) -> StreamingPreprocessor:
    """A fresh streaming preprocessor for the model's EEG channels at `input_sfreq_hz`."""
    spec = PreprocessingSpec.for_eeg(config, input_sfreq_hz)
    return StreamingPreprocessor(spec, spec.n_channels)


def meg_preprocessor(config: Any, input_sfreq_hz: float) -> StreamingPreprocessor:
    """A fresh streaming preprocessor for the model's MEG channels at `input_sfreq_hz`."""
    spec = PreprocessingSpec.for_meg(config, input_sfreq_hz)
    return StreamingPreprocessor(spec, spec.n_channels)
