"""The one causal, stateful preprocessing path shared by training, evaluation and the daemon.

```
raw EEG (n, n_eeg) ─ average reference ─ SOS high-pass ─ SOS low-pass ─ SOS notch ─ decimate ─ scale ─► model
raw MEG (n, n_meg) ─ SSP projections (offline) ─ same filters ─ decimate ─ scale ─► labels
```

Everything that changes the signal is described by a frozen `PreprocessingSpec`, built once from a
model config and the input sampling rate; a `StreamingPreprocessor` runs a spec over chunks of any
size and carries the filter state and the decimation phase between them, so a recording processed
offline in large chunks gives bit-for-bit the samples the daemon computes online from 16-sample
chunks. Zero-phase filtering (`filtfilt`) would look slightly better offline but the daemon cannot
do it, so it is never used here.

Scaling: ``scaled = (x - mean) / std`` per channel, with statistics fitted on the training split
(`fit_scaling`) and stored in the model config. A channel whose standard deviation is 0, or below
``FLAT_CHANNEL_RELATIVE_STD`` times the median over channels, is treated as flat: its scale is 0,
so it enters the model as zeros instead of as amplified noise, and un-scaling it yields its mean.

Example::

    spec = PreprocessingSpec.for_eeg(config, input_sfreq_hz=600.614990234375)
    pre = StreamingPreprocessor(spec, n_channels=config.n_eeg_channels)
    out, out_timestamps = pre.process(chunk, timestamps)  # (m, n_eeg) float32, (m,) float64
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import scipy.signal

logger = logging.getLogger(__name__)

#: Relative tolerance within which an input rate counts as equal to the model rate (or to an
#: integer multiple of it, for decimation).
RATE_RELATIVE_TOLERANCE = 1e-3
#: A channel whose std is below this fraction of the median std over channels is treated as flat.
FLAT_CHANNEL_RELATIVE_STD = 1e-6
#: When decimating without a low-pass safely below the output Nyquist frequency, an anti-alias
#: Chebyshev type I low-pass (the filter of `scipy.signal.decimate`) is added at this fraction of
#: the output Nyquist frequency: -25 dB at the output Nyquist frequency, -68 dB at 1.5 times it.
ANTI_ALIAS_FRACTION = 0.8
ANTI_ALIAS_ORDER = 8
ANTI_ALIAS_RIPPLE_DB = 0.05
#: Samples per chunk when a whole recording is run through the streaming preprocessor offline.
DEFAULT_CHUNK_SAMPLES = 16384


class PreprocessingError(ValueError):
    """Input the preprocessing cannot handle (rate, channels, non-finite values, statistics)."""


class NonFiniteInputError(PreprocessingError):
    """A chunk holds NaN or Inf; the preprocessor state was left untouched."""


# --------------------------------------------------------------------------------------------
# Fast second-order-section kernel
# --------------------------------------------------------------------------------------------
# `scipy.signal.sosfilt` spends ~50 µs per call on argument checks, axis moves and copies, which
# is most of the daemon's per-chunk budget. Its compiled kernel filters a C-contiguous
# (signals, samples) float64 array in place with state (signals, sections, 2) and is the same
# arithmetic, so it is used when present and verified against the public function at import;
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
# Scaling
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ChannelScaling:
    """Per-channel affine scaling ``scaled = (x - mean) * scale`` with ``scale = 1 / std``.

    Attributes:
        mean: `(channels,)` float64, physical units.
        std: `(channels,)` float64, physical units, as stored in the config.
        scale: `(channels,)` float64; 0 for flat channels (see the module docstring).
    """

    mean: np.ndarray
    std: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float], field: str = "std") -> "ChannelScaling":
        mean_arr = np.asarray(mean, dtype=np.float64)
        std_arr = np.asarray(std, dtype=np.float64)
        if mean_arr.ndim != 1 or mean_arr.shape != std_arr.shape:
            raise PreprocessingError(
                f"{field}: mean and std must be 1-D lists of the same length, got shapes "
                f"{mean_arr.shape} and {std_arr.shape}"
            )
        if not (np.all(np.isfinite(mean_arr)) and np.all(np.isfinite(std_arr)) and np.all(std_arr >= 0)):
            raise PreprocessingError(f"{field}: scaling statistics must be finite and std >= 0")
        threshold = FLAT_CHANNEL_RELATIVE_STD * float(np.median(std_arr)) if std_arr.size else 0.0
        flat = std_arr <= threshold
        scale = np.zeros_like(std_arr)
        np.divide(1.0, std_arr, out=scale, where=~flat)
        if flat.any():
            logger.info("%s: %d flat channel(s) get scale 0: indices %s", field, int(flat.sum()), np.flatnonzero(flat).tolist())
        for array in (mean_arr, std_arr, scale):
            array.setflags(write=False)
        return cls(mean=mean_arr, std=std_arr, scale=scale)

    @property
    def flat_channels(self) -> np.ndarray:
        """Indices of the channels treated as flat (scale 0)."""
        return np.flatnonzero(self.scale == 0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Physical `(..., channels)` → scaled `(..., channels)`.

        Computed in float64; float32 in → float32 out, anything else → float64.
        """
        x = np.asarray(x)
        out = x - self.mean
        out *= self.scale
        return out.astype(np.float32) if x.dtype == np.float32 else out

    def invert(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled `(..., channels)` → physical `(..., channels)`; flat channels give their mean.

        Computed in float64 (``scaled * std + mean``); float32 in → float32 out, else float64.
        """
        scaled = np.asarray(scaled)
        out = scaled * self.std
        out += self.mean
        return out.astype(np.float32) if scaled.dtype == np.float32 else out


def _scaling_from_config(config: Any, modality: str, n_channels: int) -> ChannelScaling | None:
    mean = getattr(config, f"{modality}_mean", None)
    std = getattr(config, f"{modality}_std", None)
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise PreprocessingError(f"config: {modality}_mean and {modality}_std must be both set or both None")
    scaling = ChannelScaling.from_stats(mean, std, field=f"{modality}_mean/{modality}_std")
    if scaling.mean.shape[0] != n_channels:
        raise PreprocessingError(
            f"config: {modality}_mean/{modality}_std have {scaling.mean.shape[0]} values but "
            f"{modality}_channel_names has {n_channels}"
        )
    return scaling


def meg_scaling(config: Any) -> ChannelScaling | None:
    """The config's MEG scaling, or None without statistics; build it once for a hot loop."""
    return _scaling_from_config(config, "meg", len(config.meg_channel_names))


def scale_meg(config: Any, physical: np.ndarray) -> np.ndarray:
    """MEG in physical units (T, T/m) `(..., n_meg)` → scaled units; identity without statistics."""
    scaling = _scaling_from_config(config, "meg", len(config.meg_channel_names))
    return np.asarray(physical) if scaling is None else scaling.apply(physical)


def unscale_meg(config: Any, scaled: np.ndarray) -> np.ndarray:
    """Scaled MEG `(..., n_meg)` (model output) → physical units (T for mag, T/m for grad)."""
    scaling = _scaling_from_config(config, "meg", len(config.meg_channel_names))
    return np.asarray(scaled) if scaling is None else scaling.invert(scaled)


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


def _design_filters(config: Any, filter_sfreq_hz: float, decimation: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Cascade of all filters as SOS `(sections, 6)` float64, and a description of each stage."""
    nyquist_hz = filter_sfreq_hz / 2.0
    output_nyquist_hz = nyquist_hz / decimation
    order = int(config.filter_order)
    highpass_hz = config.highpass_hz
    lowpass_hz = config.lowpass_hz
    stages: list[np.ndarray] = []
    names: list[str] = []
    if highpass_hz is not None:
        if not 0 < highpass_hz < nyquist_hz:
            raise PreprocessingError(
                f"config.highpass_hz={highpass_hz} must lie between 0 and the Nyquist frequency {nyquist_hz:g} Hz"
            )
        stages.append(scipy.signal.butter(order, highpass_hz, btype="highpass", fs=filter_sfreq_hz, output="sos"))
        names.append(f"high-pass {highpass_hz:g} Hz (order {order})")
    if lowpass_hz is not None:
        limit_hz = output_nyquist_hz if decimation == 1 else nyquist_hz
        if not 0 < lowpass_hz < limit_hz:
            raise PreprocessingError(
                f"config.lowpass_hz={lowpass_hz} must lie between 0 and the Nyquist frequency {limit_hz:g} Hz"
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
    for notch_hz in config.notch_hz or ():
        if not 0 < notch_hz < nyquist_hz:
            logger.info("notch at %g Hz skipped: not below the Nyquist frequency %g Hz", notch_hz, nyquist_hz)
            continue
        b, a = scipy.signal.iirnotch(notch_hz, float(config.notch_quality), fs=filter_sfreq_hz)
        stages.append(scipy.signal.tf2sos(b, a))
        names.append(f"notch {notch_hz:g} Hz (Q {config.notch_quality:g})")
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

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @classmethod
    def for_eeg(cls, config: Any, input_sfreq_hz: float) -> "PreprocessingSpec":
        """EEG: reference (per ``config.eeg_reference``), filters, decimation, ``eeg_*`` scaling."""
        reference = getattr(config, "eeg_reference", "none")
        if reference not in ("average", "none"):
            raise PreprocessingError(f"config.eeg_reference={reference!r}: allowed values are 'average' and 'none'")
        return cls._build(config, "eeg", list(config.eeg_channel_names), input_sfreq_hz, reference == "average")

    @classmethod
    def for_meg(cls, config: Any, input_sfreq_hz: float) -> "PreprocessingSpec":
        """MEG: no reference, the same filters and decimation as EEG, ``meg_*`` scaling."""
        return cls._build(config, "meg", list(config.meg_channel_names), input_sfreq_hz, False)

    @classmethod
    def _build(cls, config: Any, modality: str, names: list[str], input_sfreq_hz: float, average_reference: bool):
        model_sfreq_hz = float(config.sfreq_hz)
        decimation = decimation_factor(float(input_sfreq_hz), model_sfreq_hz)
        # Design at the nominal model rate so a stream announcing 600.615 Hz and a file at
        # 600.614990234375 Hz get the very same coefficients (no train/serve skew).
        sos, stages = _design_filters(config, model_sfreq_hz * decimation, decimation)
        sos.setflags(write=False)
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
        if spec.scaling is not None:
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


def eeg_preprocessor(config: Any, input_sfreq_hz: float) -> StreamingPreprocessor:
    """A fresh streaming preprocessor for the model's EEG channels at `input_sfreq_hz`."""
    spec = PreprocessingSpec.for_eeg(config, input_sfreq_hz)
    return StreamingPreprocessor(spec, spec.n_channels)


def meg_preprocessor(config: Any, input_sfreq_hz: float) -> StreamingPreprocessor:
    """A fresh streaming preprocessor for the model's MEG channels at `input_sfreq_hz`."""
    spec = PreprocessingSpec.for_meg(config, input_sfreq_hz)
    return StreamingPreprocessor(spec, spec.n_channels)


# --------------------------------------------------------------------------------------------
# Offline: whole recordings through the same streaming path
# --------------------------------------------------------------------------------------------
@dataclass
class PreprocessedRecording:
    """A recording after preprocessing, at the model rate.

    Attributes:
        eeg: `(n, n_eeg)` float32, model EEG channel order (scaled if the config has statistics).
        meg: `(n, n_meg)` float32, model MEG channel order (scaled if the config has statistics).
        times: `(n,)` float64 seconds from the first sample of the recording.
        sfreq_hz: rate of the rows (the input rate divided by the decimation factor).
        source: the file the recording came from (for messages).
    """

    eeg: np.ndarray
    meg: np.ndarray
    times: np.ndarray
    sfreq_hz: float
    source: str = "<in-memory raw>"

    @property
    def n_samples(self) -> int:
        return int(self.eeg.shape[0])


def raw_source_name(raw: Any) -> str:
    """The file a raw object was read from, or a placeholder for in-memory data."""
    filenames = [f for f in (getattr(raw, "filenames", None) or ()) if f is not None]
    return str(Path(filenames[0])) if filenames else "<in-memory raw>"


def _pick_indices(raw: Any, names: Sequence[str], modality: str, source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(raw.ch_names)}
    missing = [name for name in names if name not in index]
    if missing:
        shown = ", ".join(missing[:10]) + (f", … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise PreprocessingError(f"{source}: {modality.upper()} channels of the model config are missing from the file: {shown}")
    return np.array([index[name] for name in names], dtype=np.int64)


def _meg_projector(raw: Any, meg_names: Sequence[str], source: str) -> np.ndarray | None:
    """`(n_meg, n_meg)` SSP projector from the file's MEG-only projections, or None if none.

    Projections that touch non-MEG channels (e.g. an EEG average reference) are left out: EEG is
    referenced by the preprocessing itself, the same way online and offline.
    """
    from mne.proj import make_projector

    meg_set = set(meg_names)
    projs = [p for p in raw.info["projs"] if set(p["data"]["col_names"]) <= meg_set]
    skipped = [p["desc"] for p in raw.info["projs"] if not set(p["data"]["col_names"]) <= meg_set]
    if skipped:
        logger.info("%s: projections not applied to MEG (they involve other channels): %s", source, skipped)
    if not projs:
        return None
    # Bad channels are left out of the projection vectors, as `raw.apply_proj()` does.
    projector, n_vectors, _ = make_projector(projs, list(meg_names), bads=list(raw.info["bads"]))
    logger.debug("%s: applying %d SSP vectors to MEG", source, n_vectors)
    return np.asarray(projector.real, dtype=np.float64)


def _check_finite(data: np.ndarray, names: Sequence[str], times: np.ndarray, source: str) -> None:
    """Raise naming the file, time range and channels of the first non-finite values."""
    finite = np.isfinite(data)
    if finite.all():
        return
    bad_samples = np.flatnonzero(~finite.all(axis=0))
    bad_channels = [names[i] for i in np.flatnonzero(~finite.all(axis=1))]
    shown = ", ".join(bad_channels[:5]) + (f", … ({len(bad_channels)} in all)" if len(bad_channels) > 5 else "")
    raise PreprocessingError(
        f"{source}: NaN/Inf values at {times[bad_samples[0]]:.3f}–{times[bad_samples[-1]]:.3f} s "
        f"(channels {shown}); remove or repair that segment first"
    )


def check_raw_compatible(raw: Any, config: Any) -> None:
    """Raise `PreprocessingError` naming the file if `raw` lacks a model channel or has an unusable rate.

    Reads the header only: cheap enough to check every file of a dataset before processing any.
    """
    source = raw_source_name(raw)
    _pick_indices(raw, list(config.eeg_channel_names), "eeg", source)
    _pick_indices(raw, list(config.meg_channel_names), "meg", source)
    decimation_factor_for_raw(raw, config)


def iter_preprocessed_chunks(
    raw: Any, config: Any, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream a raw recording through the preprocessors, one chunk at a time.

    Reads the file lazily (only `chunk_samples` input samples in memory at once), applies the
    file's MEG SSP projections, and yields ``(eeg (m, n_eeg) float32, meg (m, n_meg) float32,
    times (m,) float64)`` per chunk.
    """
    if chunk_samples < 1:
        raise PreprocessingError(f"chunk_samples must be >= 1, got {chunk_samples}")
    source = raw_source_name(raw)
    eeg_names = list(config.eeg_channel_names)
    meg_names = list(config.meg_channel_names)
    eeg_idx = _pick_indices(raw, eeg_names, "eeg", source)
    meg_idx = _pick_indices(raw, meg_names, "meg", source)
    sfreq_hz = float(raw.info["sfreq"])
    try:
        eeg_pre = eeg_preprocessor(config, sfreq_hz)
        meg_pre = meg_preprocessor(config, sfreq_hz)
    except PreprocessingError as err:
        raise PreprocessingError(f"{source}: {err}") from None
    projector = _meg_projector(raw, meg_names, source)
    picks = np.concatenate([eeg_idx, meg_idx])
    n_eeg = len(eeg_idx)
    all_times = raw.times
    for start in range(0, raw.n_times, chunk_samples):
        stop = min(start + chunk_samples, raw.n_times)
        data = raw.get_data(picks=picks, start=start, stop=stop)  # (channels, n) physical units
        times = all_times[start:stop]
        _check_finite(data, eeg_names + meg_names, times, source)
        eeg_raw = data[:n_eeg].T  # (n, n_eeg)
        meg_raw = data[n_eeg:].T  # (n, n_meg)
        if projector is not None:
            meg_raw = meg_raw @ projector.T
        eeg_out, out_times = eeg_pre.process(eeg_raw, times)
        meg_out, _ = meg_pre.process(meg_raw, None)
        yield eeg_out, meg_out, out_times


def preprocess_recording(raw: Any, config: Any, chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> PreprocessedRecording:
    """Preprocess a whole MNE raw recording offline through the streaming path.

    Channels are picked by name in the config's order; MEG gets the file's SSP projections; EEG and
    MEG run through `eeg_preprocessor` / `meg_preprocessor` in chunks of `chunk_samples`, so the
    result equals what the daemon computes online. Scaled if the config holds statistics.

    Raises:
        PreprocessingError: naming the file, for missing channels, an unusable rate or NaN/Inf.
    """
    decimation = decimation_factor_for_raw(raw, config)
    n_out = int(-(-raw.n_times // decimation))
    eeg = np.empty((n_out, len(config.eeg_channel_names)), np.float32)
    meg = np.empty((n_out, len(config.meg_channel_names)), np.float32)
    times = np.empty(n_out, np.float64)
    row = 0
    for eeg_chunk, meg_chunk, time_chunk in iter_preprocessed_chunks(raw, config, chunk_samples):
        m = eeg_chunk.shape[0]
        eeg[row : row + m] = eeg_chunk
        meg[row : row + m] = meg_chunk
        times[row : row + m] = time_chunk
        row += m
    assert row == n_out, (row, n_out)  # decimation keeps samples 0, f, 2f, …
    return PreprocessedRecording(
        eeg=eeg, meg=meg, times=times, sfreq_hz=float(raw.info["sfreq"]) / decimation, source=raw_source_name(raw)
    )


def decimation_factor_for_raw(raw: Any, config: Any) -> int:
    """`decimation_factor` for a raw recording, with the file named in the error."""
    try:
        return decimation_factor(float(raw.info["sfreq"]), float(config.sfreq_hz))
    except PreprocessingError as err:
        raise PreprocessingError(f"{raw_source_name(raw)}: {err}") from None


# --------------------------------------------------------------------------------------------
# Fitting the scaling statistics
# --------------------------------------------------------------------------------------------
class ChannelStats:
    """Running per-channel mean and variance (Chan et al. pairwise update), float64.

    Feed `(n, channels)` blocks with `update`; combine partial results with `merge`. Numerically
    stable for MEG values around 1e-12 and for many blocks.
    """

    def __init__(self, n_channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)  # sum of squared deviations from the mean

    def update(self, block: np.ndarray) -> "ChannelStats":
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != self.mean.shape[0]:
            raise PreprocessingError(f"expected a block of shape (n, {self.mean.shape[0]}), got {block.shape}")
        if block.shape[0] == 0:
            return self
        other = ChannelStats(block.shape[1])
        other.count = block.shape[0]
        other.mean = block.mean(axis=0)
        other.m2 = ((block - other.mean) ** 2).sum(axis=0)
        return self.merge(other)

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        if other.count == 0:
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total
        return self

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (0 for an empty accumulator)."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)


def _as_stats(values: np.ndarray | Sequence[np.ndarray] | ChannelStats, n_channels: int, modality: str) -> ChannelStats:
    if isinstance(values, ChannelStats):
        stats = values
    else:
        blocks = [values] if isinstance(values, np.ndarray) else list(values)
        stats = ChannelStats(n_channels)
        for block in blocks:
            if np.asarray(block).ndim != 2 or np.asarray(block).shape[1] != n_channels:
                raise PreprocessingError(
                    f"fit_scaling: {modality} blocks must have shape (n, {n_channels}), got {np.asarray(block).shape}"
                )
            stats.update(block)
    if stats.mean.shape[0] != n_channels:
        raise PreprocessingError(f"fit_scaling: {modality} statistics cover {stats.mean.shape[0]} channels, expected {n_channels}")
    if stats.count < 2:
        raise PreprocessingError(f"fit_scaling: need at least 2 {modality} samples to fit scaling, got {stats.count}")
    if not (np.all(np.isfinite(stats.mean)) and np.all(np.isfinite(stats.m2))):
        raise PreprocessingError(f"fit_scaling: {modality} data hold NaN/Inf")
    return stats


def fit_scaling(
    config: Any,
    eeg: np.ndarray | Sequence[np.ndarray] | ChannelStats,
    meg: np.ndarray | Sequence[np.ndarray] | ChannelStats,
) -> Any:
    """A NEW config with ``eeg_mean/eeg_std/meg_mean/meg_std`` fitted on the data given.

    Args:
        config: model config; not modified.
        eeg: unscaled preprocessed EEG `(n, n_eeg)`, a list of such blocks, or a `ChannelStats`.
        meg: unscaled preprocessed MEG `(n, n_meg)`, a list of such blocks, or a `ChannelStats`.

    Pass only the training part (after dropping the settling period): the statistics become part
    of the model and must not see held-out data.
    """
    import copy

    eeg_stats = _as_stats(eeg, len(config.eeg_channel_names), "eeg")
    meg_stats = _as_stats(meg, len(config.meg_channel_names), "meg")
    fitted = copy.deepcopy(config)
    fitted.eeg_mean = [float(v) for v in eeg_stats.mean]
    fitted.eeg_std = [float(v) for v in eeg_stats.std]
    fitted.meg_mean = [float(v) for v in meg_stats.mean]
    fitted.meg_std = [float(v) for v in meg_stats.std]
    return fitted


def without_scaling(config: Any) -> Any:
    """A NEW config equal to `config` but with no scaling statistics (preprocessing → physical units)."""
    import copy

    plain = copy.deepcopy(config)
    plain.eeg_mean = plain.eeg_std = plain.meg_mean = plain.meg_std = None
    return plain
