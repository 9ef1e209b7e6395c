"""The adaptation plan: how one source's samples become the model's EEG, decided once.

`plan_adaptation` (model fields, `SourceDescription`, `AdaptationOptions`) → `AdaptationPlan`,
a frozen description of everything the `Adapter` does per chunk:

- units: a factor to volts per used stream column (`units`), folded into the matrix;
- channels: model channels matched by label (`channels`), the rest of the stream ignored and
  listed (triggers, EOG, aux, extra electrodes);
- interpolation: model electrodes the stream lacks (or that went bad) computed by spherical
  splines from the electrodes it has, on the model's electrode positions (``eeg_positions_m``);
  a stream from another cap (electrodes with positions from its meta-data or from a montage,
  labels not the model's) is first placed on the model's head (`coregistration`), then mapped
  onto the model's electrodes the same way;
- rate: resampled to the model rate, by linear interpolation where the model's band allows it,
  else soxr QQ (`resampling.resampler_method`); an integer multiple is left to the
  preprocessing's decimation.

All of that is one `(n_model, n_used)` matrix applied to the used stream columns, plus a
resampler. Re-planning for bad channels (`AdaptationPlan.with_bad_channels`) runs off the hot
path; the `Adapter` swaps the new plan in between two chunks.

Every refusal is an `AdaptationError` with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from brainformer.adaptation.channels import load_channel_map, listing, match_channels, normalize_label
from brainformer.adaptation.coregistration import CapPlacement, check_positions, place_cap
from brainformer.adaptation.errors import AdaptationError
from brainformer.adaptation.interpolation import DEFAULT_SPLINE_REG, fit_origin, nearest_distances, spline_matrix
from brainformer.adaptation.positions import (
    Position,
    load_montage,
    montage_fiducials,
    montage_positions,
    standard_template,
)
from brainformer.adaptation.resampling import StreamResampler, linear_error_db, resampler_method
from brainformer.adaptation.units import amplitude_warning, unit_name, volt_factor

__all__ = [
    "FLOAT_FORMATS",
    "AdaptationOptions",
    "AdaptationPlan",
    "ModelEEG",
    "SourceDescription",
    "plan_adaptation",
]

#: Channel formats (liblsl names) EEG can be read from.
FLOAT_FORMATS = ("float32", "double64")
#: A model electrode whose nearest source electrode is farther than this is named in a warning.
FAR_ELECTRODE_M = 0.03
#: Fewest source electrodes a spherical-spline fit is attempted from.
MIN_SPLINE_SOURCES = 4


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceDescription:
    """What a source says about itself: one entry per channel in `labels`, `types`, `units`,
    `positions_m` (``""`` / None where it says nothing; shorter tuples are padded).

    Attributes:
        name: for messages (the LSL stream name, the file).
        labels: channel labels, in column order.
        types: channel types (any case: ``EEG``, ``eeg``, ``stim``, …).
        units: channel units as sent (``microvolts``, ``µV``, ``-6``, …).
        positions_m: electrode positions, head frame, metres (see `positions.channel_position`).
        sfreq_hz: nominal rate; 0 for an irregular stream.
        channel_format: liblsl format name (``float32``, ``double64``, ``int16``, …).
        broken_positions: columns whose meta-data give a position that is not finite (an
            ``Inf``, or some coordinates ``NaN`` and others not); refused where it is needed.
    """

    name: str
    labels: tuple[str, ...]
    sfreq_hz: float
    types: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    positions_m: tuple[Position | None, ...] = ()
    channel_format: str = "float32"
    broken_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, fill in (("types", ""), ("units", ""), ("positions_m", None)):
            values = tuple(getattr(self, name))
            if len(values) > n:
                raise AdaptationError(f"{self.name}: {len(values)} channel {name} for {n} channels")
            object.__setattr__(self, name, values + (fill,) * (n - len(values)))
        object.__setattr__(self, "labels", tuple(self.labels))
        positions = tuple(None if p is None else tuple(float(c) for c in p) for p in self.positions_m)
        object.__setattr__(self, "positions_m", positions)

    @property
    def n_channels(self) -> int:
        return len(self.labels)

    @classmethod
    def from_raw(cls, raw: Any, name: str | None = None) -> SourceDescription:
        """An MNE raw as a source: its labels, types, volts (what ``get_data`` returns), head-frame
        positions and rate, format ``double64``: what offline code feeds the `Adapter`."""
        from mne.io.constants import FIFF

        positions = []
        for ch in raw.info["chs"]:
            xyz = tuple(float(v) for v in ch["loc"][:3])
            usable = ch["coord_frame"] == FIFF.FIFFV_COORD_HEAD and all(map(math.isfinite, xyz)) and any(xyz)
            positions.append(xyz if usable else None)
        filenames = [f for f in (getattr(raw, "filenames", None) or ()) if f is not None]
        return cls(
            name=name or (str(filenames[0]) if filenames else "<in-memory raw>"),
            labels=tuple(raw.ch_names),
            types=tuple(raw.get_channel_types()),
            units=tuple("V" if t == "eeg" else "" for t in raw.get_channel_types()),
            positions_m=tuple(positions),
            sfreq_hz=float(raw.info["sfreq"]),
            channel_format="double64",
        )

    @classmethod
    def from_stream(cls, description: Any, positions_m: Sequence[Position | None] = ()) -> SourceDescription:
        """From an inlet's stream description (``name``, ``channel_labels``, ``channel_types``,
        ``channel_units``, ``sfreq_hz``, ``channel_format``) and positions read from its
        meta-data with `positions.channel_position`."""
        return cls(
            name=f"LSL stream {description.name!r}",
            labels=tuple(description.channel_labels),
            types=tuple(description.channel_types),
            units=tuple(description.channel_units),
            positions_m=tuple(positions_m),
            sfreq_hz=float(description.sfreq_hz),
            channel_format=str(description.channel_format),
        )


@dataclass(frozen=True)
class AdaptationOptions:
    """Choices of the user (``[adaptation]`` settings, ``brainformer-rt`` options).

    Attributes:
        channel_map: stream label → model label, applied before matching; a mapping or the path
            of a TOML file (`channels.load_channel_map`).
        montage: electrode positions of the stream's channels: an MNE standard montage name
            (``"standard_1020"``) or a montage file; overrides positions from the meta-data.
        input_unit: unit of every used channel, overriding the meta-data (``"uV"``, ``"-6"``, …).
        max_missing_fraction: largest fraction of the model's electrodes that may be missing
            (or bad) and interpolated, in [0, 1]; more is an error naming them. None: no limit
            (where the expected quality of the cap decides instead, `brainformer.adaptation.resolve`).
        spline_reg: regularisation of the spherical splines (MNE's `interpolate_bads` value).
        origin_m: sphere centre for the splines (head frame, m); None: the sphere MNE fits to
            the model's electrodes.
        resample_integer_multiples: resample a rate that is an integer multiple of the model's
            instead of leaving it to the preprocessing's decimation.
    """

    channel_map: Mapping[str, str] | str | Path | None = None
    montage: str | Path | None = None
    input_unit: str | None = None
    max_missing_fraction: float | None = 0.25
    spline_reg: float = DEFAULT_SPLINE_REG
    origin_m: tuple[float, float, float] | None = None
    resample_integer_multiples: bool = False

    def __post_init__(self) -> None:
        channel_map = self.channel_map
        if isinstance(channel_map, (str, Path)):
            channel_map = load_channel_map(channel_map)
        if channel_map is not None:
            if not isinstance(channel_map, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in channel_map.items()
            ):
                raise AdaptationError(f"adaptation.channel_map = {channel_map!r}: expected stream label = model label strings")
            channel_map = dict(channel_map)
        object.__setattr__(self, "channel_map", channel_map)
        fraction = self.max_missing_fraction
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0.0 <= fraction <= 1.0):
            raise AdaptationError(f"adaptation.max_missing_fraction = {fraction!r}: expected a fraction in [0, 1]")
        reg = self.spline_reg
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not (math.isfinite(reg) and reg >= 0):
            raise AdaptationError(f"adaptation.spline_reg = {reg!r}: expected a finite number >= 0")
        if self.input_unit is not None:
            if volt_factor(self.input_unit, "adaptation.input_unit") is None:
                raise AdaptationError("adaptation.input_unit = '': expected a unit such as V, mV, uV or -6")
        if self.origin_m is not None:
            origin = tuple(self.origin_m)
            if len(origin) != 3 or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in origin):
                raise AdaptationError(f"adaptation.origin_m = {self.origin_m!r}: expected [x, y, z] in metres")
            object.__setattr__(self, "origin_m", tuple(float(c) for c in origin))


@dataclass(frozen=True)
class ModelEEG:
    """What adaptation needs of a model: its EEG labels, electrode positions, rate, low-pass
    corner (None: no low-pass; the corner bounds the band the resampler must keep clean) and its
    head's fiducials (nasion, LPA, RPA; None: unknown), onto which a montage's are placed."""

    channel_names: tuple[str, ...]
    positions_m: tuple[Position, ...] | None
    sfreq_hz: float
    lowpass_hz: float | None = None
    fiducials_m: tuple[Position, ...] | None = None

    @classmethod
    def from_fields(cls, fields: Any) -> ModelEEG:
        """From `BrainformerFields`, a `BrainformerConfig` or anything with the same attributes."""
        positions = getattr(fields, "eeg_positions_m", None)
        fiducials = getattr(fields, "eeg_fiducials_m", None)
        return cls(
            channel_names=tuple(fields.eeg_channel_names),
            positions_m=None if positions is None else tuple(tuple(float(c) for c in p) for p in positions),
            sfreq_hz=float(fields.sfreq_hz),
            lowpass_hz=None if getattr(fields, "lowpass_hz", None) is None else float(fields.lowpass_hz),
            fiducials_m=None if fiducials is None else tuple(tuple(float(c) for c in p) for p in fiducials),
        )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AdaptationPlan:
    """How the `Adapter` turns `(n, source.n_channels)` chunks into `(m, n_model)` float32 volts.

    Attributes:
        model, source, options: what it was planned from (kept for re-planning).
        bad_channels: stream labels left out as bad.
        used_columns: `(n_used,)` stream columns read per chunk.
        matrix: `(n_model, n_used)` float64, read-only: model EEG in volts = matrix @ used
            columns (unit factors, selection and interpolation folded in).
        is_selection: every model channel is one stream column times its unit factor (no
            interpolation): applied as a gather instead of a matmul.
        units: ``(stream label, unit as sent, factor to volts)`` per used column.
        channels: ``(model label, stream label)`` for the model channels read directly.
        interpolated: ``(model label, nearest source label, distance in m)`` per interpolated
            model electrode; `mode` says why (``"missing"`` electrodes or ``"other cap"``).
        ignored: ``(stream label, reason)`` for the stream channels not used.
        origin_m: sphere centre of the splines, or None without interpolation.
        input_sfreq_hz: the source's rate.
        output_sfreq_hz: the rate of the adapter's output: the model's, or an integer multiple
            of it that the preprocessing decimates by `decimation`.
        resample: True when the adapter resamples (with `resampler`).
        resampler_delay_s: mean and largest hold-back of the resampler measured at planning,
            in seconds (0, 0 without resampling).
        warnings: one line each (units taken as volts, far electrodes, unused map keys, …).
        spatial: `(n_model, n_used)` float64, read-only: `matrix` before the unit factors (volts
            in, volts out): selection and interpolation only.
        used_model_index: per used column, the model electrode it is (read by label), or -1
            for an electrode of another cap.
        used_positions_m: per used column, the position of an electrode of another cap as
            placed on the model's head (None for the model's own electrodes).
        placement: how the other cap was placed on the model's head (`CapPlacement`), or None.
    """

    model: ModelEEG
    source: SourceDescription
    options: AdaptationOptions
    bad_channels: tuple[str, ...]
    used_columns: np.ndarray
    matrix: np.ndarray
    is_selection: bool
    units: tuple[tuple[str, str, float], ...]
    channels: tuple[tuple[str, str], ...]
    interpolated: tuple[tuple[str, str, float], ...]
    mode: str
    ignored: tuple[tuple[str, str], ...]
    origin_m: tuple[float, float, float] | None
    input_sfreq_hz: float
    output_sfreq_hz: float
    decimation: int
    resample: bool
    resampler_delay_s: tuple[float, float]
    warnings: tuple[str, ...] = field(default=())
    spatial: np.ndarray | None = None
    used_model_index: tuple[int, ...] = ()
    used_positions_m: tuple[Position | None, ...] = ()
    placement: CapPlacement | None = None

    @property
    def n_model_channels(self) -> int:
        return len(self.model.channel_names)

    @property
    def n_stream_channels(self) -> int:
        return self.source.n_channels

    @property
    def stream_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.source.channel_format == "float32" else np.float64)

    def with_bad_channels(self, bad_channels: Sequence[str | int]) -> AdaptationPlan:
        """The plan re-made with these stream channels (labels or columns) left out as bad, their
        model electrodes interpolated: run it off the hot path, then `Adapter.set_plan`."""
        return plan_adaptation(self.model, self.source, self.options, bad_channels=bad_channels,
                               placement=self.placement)

    def amplitude_warning(self, volts: np.ndarray) -> str | None:
        """Check the first seconds of the adapter's output `(n, n_model)` (volts) for EEG
        amplitudes far outside what the declared unit makes plausible (off the hot path); a
        one-line warning naming the likely unit, or None. See `units.amplitude_warning`."""
        factors = [factor for _, _, factor in self.units]
        declared = max(set(factors), key=factors.count) if factors else 1.0
        return amplitude_warning(volts, declared)

    @property
    def resampler(self) -> str:
        """The converter the adapter resamples with (`resampling.LINEAR` or `SOXR_QQ`), ``""``
        without resampling: decided by the rates and the model's low-pass corner."""
        if not self.resample:
            return ""
        return resampler_method(self.input_sfreq_hz, self.output_sfreq_hz, self.model.lowpass_hz)

    def output_input_position(self, output_index: int | np.ndarray) -> float | np.ndarray:
        """Fractional input sample index (since the stream opened) that output sample
        `output_index` represents: ``k * input_rate / output_rate`` plus the resampler's phase
        (`StreamResampler.input_position`), ``k`` without resampling."""
        if not self.resample:
            return output_index * (self.input_sfreq_hz / self.output_sfreq_hz)
        resampler = StreamResampler(self.input_sfreq_hz, self.output_sfreq_hz, 1, max_chunk_samples=1, method=self.resampler)
        return resampler.input_position(output_index)

    def describe(self) -> str:
        """Human-readable plan, several lines: for ``brainformer-rt check`` and the serve log."""
        n_model = self.n_model_channels
        lines = [
            f"{self.source.name} → model EEG ({n_model} channels, {self.model.sfreq_hz:g} Hz): "
            f"{self.source.n_channels} channels, {self.source.channel_format}, {len(self.used_columns)} used"
        ]
        by_unit: dict[tuple[str, float], int] = {}
        for _, sent, factor in self.units:
            by_unit[(sent, factor)] = by_unit.get((sent, factor), 0) + 1
        shown = ", ".join(
            f"{sent or '(none)'!r} → {unit_name(factor)} ×{factor:g} ({count})" for (sent, factor), count in by_unit.items()
        )
        override = f" (input unit overridden: {self.options.input_unit!r})" if self.options.input_unit else ""
        lines.append(f"  units: {shown}{override}")
        renamed = [(m, s) for m, s in self.channels if normalize_label(m) != normalize_label(s)]
        text = f"  channels: {len(self.channels)} of {n_model} model channels read by label"
        if renamed:
            text += f" ({len(renamed)} renamed: " + ", ".join(f"{s!r}→{m!r}" for m, s in renamed[:6])
            text += ", …)" if len(renamed) > 6 else ")"
        lines.append(text)
        if self.ignored:
            groups: dict[str, list[str]] = {}
            for label, why in self.ignored:
                groups.setdefault(why, []).append(label)
            lines.append(
                f"  ignored ({len(self.ignored)}): "
                + "; ".join(f"{why}: {listing(labels, 4)}" for why, labels in groups.items())
            )
        if self.bad_channels:
            lines.append(f"  bad, left out ({len(self.bad_channels)}): {listing(self.bad_channels)}")
        if self.interpolated:
            n_sources = int(np.count_nonzero(np.any(self.matrix[[self.model.channel_names.index(m) for m, _, _ in self.interpolated]] != 0, axis=0)))
            origin = ", ".join(f"{1e3 * c:.1f}" for c in self.origin_m or ())
            reason = "missing or bad" if self.mode == "missing" else "another cap"
            lines.append(
                f"  interpolated ({len(self.interpolated)}, {reason}; spherical splines from {n_sources} electrodes, "
                f"origin ({origin}) mm): "
                + ", ".join(f"{m!r} (nearest {s!r} {1e3 * d:.0f} mm)" for m, s, d in self.interpolated[:12])
                + (", …" if len(self.interpolated) > 12 else "")
            )
            far = max(d for _, _, d in self.interpolated)
            lines.append(f"  farthest model electrode from a stream electrode: {1e3 * far:.0f} mm")
        if self.placement is not None:
            lines.append(f"  {self.placement.describe()}")
        if self.resample:
            mean_s, max_s = self.resampler_delay_s
            band = "its whole band" if self.model.lowpass_hz is None else f"0-{self.model.lowpass_hz:g} Hz"
            error_db = linear_error_db(self.input_sfreq_hz, self.output_sfreq_hz, self.model.lowpass_hz)
            lines.append(
                f"  rate: {self.input_sfreq_hz:g} Hz → {self.output_sfreq_hz:g} Hz resampled ({self.resampler}, "
                f"ratio {self.output_sfreq_hz / self.input_sfreq_hz:.6g}; linear interpolation's error in the model's "
                f"band ({band}) would be {error_db:.1f} dB; holds back {1e3 * mean_s:.1f} ms on average, "
                f"{1e3 * max_s:.1f} ms at most; every output sample keeps the timestamp of its EEG instant)"
            )
        elif self.decimation > 1:
            lines.append(f"  rate: {self.input_sfreq_hz:g} Hz = {self.decimation} × the model rate: decimated by the preprocessing")
        else:
            lines.append(f"  rate: {self.input_sfreq_hz:g} Hz (the model rate)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
def _rate(model_hz: float, source: SourceDescription, options: AdaptationOptions) -> tuple[float, int, bool]:
    """(output rate, decimation left to the preprocessing, resample?)."""
    from brainformer.preprocessing import PreprocessingError, decimation_factor

    rate = source.sfreq_hz
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise AdaptationError(f"{source.name} has an irregular or unknown rate ({rate!r}); the model needs a regular rate")
    try:
        factor = decimation_factor(float(rate), model_hz)
    except PreprocessingError:
        return model_hz, 1, True
    if factor == 1:
        return float(rate), 1, False
    if options.resample_integer_multiples:
        return model_hz, 1, True
    return float(rate), factor, False


def _measure_resampler_delay(input_hz: float, output_hz: float, lowpass_hz: float | None) -> tuple[float, float]:
    """Mean and largest hold-back (s) of the resampler over 2 s of 10-sample chunks."""
    resampler = StreamResampler(input_hz, output_hz, 1, max_chunk_samples=10, lowpass_hz=lowpass_hz)
    zeros = np.zeros((10, 1), np.float32)
    delays = []
    for _ in range(max(1, int(2 * input_hz / 10))):
        resampler.process(zeros)
        delays.append(resampler.delay_s)
    tail = delays[len(delays) // 4 :]
    return float(np.mean(tail)), float(np.max(tail))


def _bad_labels(source: SourceDescription, bad_channels: Sequence[str | int]) -> set[int]:
    keys = {}
    for i, label in enumerate(source.labels):
        keys.setdefault(normalize_label(label), i)
    columns = set()
    unknown = []
    for bad in bad_channels:
        if isinstance(bad, (int, np.integer)) and not isinstance(bad, bool):
            if not 0 <= int(bad) < source.n_channels:
                unknown.append(str(bad))
            else:
                columns.add(int(bad))
        elif isinstance(bad, str) and normalize_label(bad) in keys:
            columns.add(keys[normalize_label(bad)])
        else:
            unknown.append(str(bad))
    if unknown:
        raise AdaptationError(f"{source.name}: bad channels {listing(unknown)} are not channels of the stream")
    return columns


class _Wiring(NamedTuple):
    """Which stream column feeds which model row, before any interpolation."""

    direct: list[tuple[int, int]]  # (model row, stream column) matched by label and not bad
    targets: list[int]  # model rows to interpolate: unmatched, or matched to a bad column
    candidates: list[int]  # stream columns that look like EEG, bad ones left out
    foreign: list[int]  # candidates with a position: extra sources for the interpolation

    @property
    def used(self) -> list[int]:
        """The stream columns the plan reads, ascending: the direct ones, plus the foreign ones
        when something is interpolated."""
        return sorted({i for _, i in self.direct} | (set(self.foreign) if self.targets else set()))


class _Spline(NamedTuple):
    """The interpolation of `_Wiring.targets`: rows `weights` `(n_targets, n_sources)` over `sources`."""

    sources: list[int]
    origin: np.ndarray
    weights: np.ndarray
    interpolated: tuple[tuple[str, str, float], ...]  # (model electrode, nearest source, distance m)
    placed: list[Position]  # the positions of `_Wiring.foreign` on the model's head
    placement: CapPlacement | None


def plan_adaptation(
    model: Any,
    source: SourceDescription,
    options: AdaptationOptions | None = None,
    bad_channels: Sequence[str | int] = (),
    placement: CapPlacement | None = None,
) -> AdaptationPlan:
    """Plan how `source` becomes the model's EEG (see the module docstring).

    Args:
        model: `ModelEEG`, `BrainformerFields` or `BrainformerConfig`.
        source: what the stream (or file) says about itself.
        options: user choices (channel map, montage, unit override, missing limit, …).
        bad_channels: stream channels (labels or columns) to leave out as bad.
        placement: the placement of another cap on the model's head to keep (a re-plan of the
            same stream); None: fitted here (`coregistration.place_cap`).

    Raises:
        AdaptationError: one line: a non-float format, an irregular rate, no EEG channel at all,
            an unknown unit without override, more missing electrodes than allowed (named),
            interpolation needed but no positions, an unknown montage, a bad channel map,
            duplicated labels, positions not finite, duplicated or in implausible units, an
            electrode off the model's head.
    """
    model = model if isinstance(model, ModelEEG) else ModelEEG.from_fields(model)
    options = options or AdaptationOptions()
    _check_format(source)
    output_hz, decimation, resample = _rate(model.sfreq_hz, source, options)
    bad_columns = _bad_labels(source, bad_channels)
    match = match_channels(source.labels, source.types, model.channel_names, options.channel_map, source.name)
    warnings = [f"channel map keys not in the stream: {listing(match.unused_map_keys)}"] if match.unused_map_keys else []
    # Positions of the stream's channels: the montage, else the meta-data.
    montage = load_montage(options.montage) if options.montage is not None else None
    stream_positions = montage_positions(montage, source.labels) if montage is not None else list(source.positions_m)
    _check_eeg_channels(source, match, bad_columns, stream_positions, montage is not None)
    wiring = _wire_channels(model, source, match, bad_columns, stream_positions)
    ignored = _ignored_channels(source, match, wiring, bad_columns, stream_positions, options)
    spline = (_interpolate(model, source, options, montage, wiring, stream_positions, warnings, placement)
              if wiring.targets else None)
    used = wiring.used
    matrix = _selection_matrix(len(model.channel_names), used, wiring, spline)
    spatial = matrix.copy()
    spatial.setflags(write=False)
    units = _fold_units(matrix, used, source, options, warnings)
    matrix.setflags(write=False)
    direct = {i: j for j, i in wiring.direct}
    placed = {} if spline is None else dict(zip(wiring.foreign, spline.placed))
    used_columns = np.array(used, dtype=np.int64)
    used_columns.setflags(write=False)
    return AdaptationPlan(
        model=model,
        source=source,
        options=options,
        bad_channels=tuple(source.labels[i] for i in sorted(bad_columns)),
        used_columns=used_columns,
        matrix=matrix,
        is_selection=not wiring.targets,
        units=units,
        channels=tuple((model.channel_names[j], source.labels[i]) for j, i in wiring.direct),
        interpolated=() if spline is None else spline.interpolated,
        # The model's cap with electrodes missing (limited), or another cap (nothing matched by label).
        mode="other cap" if wiring.targets and not wiring.direct else "missing",
        ignored=ignored,
        origin_m=None if spline is None else tuple(float(c) for c in spline.origin),
        input_sfreq_hz=float(source.sfreq_hz),
        output_sfreq_hz=output_hz,
        decimation=decimation,
        resample=resample,
        resampler_delay_s=_measure_resampler_delay(float(source.sfreq_hz), output_hz, model.lowpass_hz) if resample else (0.0, 0.0),
        warnings=tuple(warnings),
        spatial=spatial,
        used_model_index=tuple(direct.get(i, -1) for i in used),
        used_positions_m=tuple(placed.get(i) for i in used),
        placement=None if spline is None else spline.placement,
    )


def _check_format(source: SourceDescription) -> None:
    if source.channel_format not in FLOAT_FORMATS:
        raise AdaptationError(
            f"{source.name} has channel format {source.channel_format!r}; EEG must be {' or '.join(FLOAT_FORMATS)}"
        )
    if source.n_channels == 0:
        raise AdaptationError(f"{source.name} has no channels")


def _check_eeg_channels(
    source: SourceDescription, match: Any, bad_columns: set[int], stream_positions: Sequence[Any], from_montage: bool
) -> None:
    """Refuse what makes the stream's EEG ambiguous: two EEG channels of one label, and positions
    that are not finite, duplicated or in implausible units (`coregistration.check_positions`)."""
    eeg = sorted(
        ({i for i in match.stream_index if i >= 0} | set(match.candidates)) - bad_columns
    )
    first: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for i in eeg:
        key = normalize_label(source.labels[i])
        if key in first:
            repeated.setdefault(key, [first[key]]).append(i)
        first.setdefault(key, i)
    if repeated:
        shown = "; ".join(f"{source.labels[columns[0]]!r} at columns {', '.join(map(str, columns))}"
                          for columns in list(repeated.values())[:6])
        raise AdaptationError(f"{source.name}: EEG channels share a label ({shown}); each electrode needs its own")
    broken = [] if from_montage else [source.labels[i] for i in eeg if i in set(source.broken_positions)]
    check_positions(source.name, [source.labels[i] for i in eeg], [stream_positions[i] for i in eeg], broken)


def _wire_channels(
    model: ModelEEG, source: SourceDescription, match: Any, bad_columns: set[int], stream_positions: Sequence[Any]
) -> _Wiring:
    """Split the label match into direct copies and rows to interpolate; refuse a stream with no EEG for the model."""
    direct = [(j, i) for j, i in enumerate(match.stream_index) if i >= 0 and i not in bad_columns]
    targets = [j for j, i in enumerate(match.stream_index) if i < 0 or i in bad_columns]
    candidates = [i for i in match.candidates if i not in bad_columns]
    foreign = [i for i in candidates if stream_positions[i] is not None]
    if not direct and not foreign:
        eeg_like = [source.labels[i] for i in candidates]
        raise AdaptationError(
            f"{source.name}: no EEG channel for the model: none of its {source.n_channels} channels is labelled like the "
            f"model's ({listing(list(model.channel_names), 3)})"
            + (f" and its EEG channels {listing(eeg_like, 4)} have no positions (give a montage)" if eeg_like else "")
        )
    return _Wiring(direct, targets, candidates, foreign)


def _ignored_channels(
    source: SourceDescription,
    match: Any,
    wiring: _Wiring,
    bad_columns: set[int],
    stream_positions: Sequence[Any],
    options: AdaptationOptions,
) -> tuple[tuple[str, str], ...]:
    """(label, reason) for every stream channel the plan neither reads nor lists as bad."""
    used = set(wiring.used)
    reasons = dict(match.ignored)
    ignored = []
    for i in range(source.n_channels):
        if i in used or i in bad_columns:
            continue
        reason = reasons.get(i, "not used")
        if wiring.targets and i in wiring.candidates and stream_positions[i] is None:
            reason += "; not in the montage" if options.montage is not None else "; no position"
        ignored.append((source.labels[i] or f"#{i}", reason))
    return tuple(ignored)


def _interpolate(
    model: ModelEEG,
    source: SourceDescription,
    options: AdaptationOptions,
    montage: Any,
    wiring: _Wiring,
    stream_positions: Sequence[Any],
    warnings: list[str],
    placement: CapPlacement | None = None,
) -> _Spline:
    """Spherical-spline weights for `wiring.targets` from every other usable electrode, the
    electrodes of another cap placed on the model's head first (`_place_foreign`); warns (into
    `warnings`) about model electrodes far from any stream electrode."""
    name, names, direct, targets = source.name, model.channel_names, wiring.direct, wiring.targets
    target_positions = _target_positions(model, montage)
    missing_names = [names[j] for j in targets]
    # Often the same electrodes under other names: say which, since a channel map fixes that.
    unknown = [source.labels[i] for i in wiring.candidates]
    hint = f"; stream channels the model does not know: {listing(unknown)}" if unknown else ""
    if target_positions is None:
        raise AdaptationError(
            f"{name}: the model has no electrode positions (eeg_positions_m) to interpolate its EEG channels "
            f"{listing(missing_names)} from the stream's; re-prepare the model, or give a montage with its labels"
            + hint
        )
    limit = options.max_missing_fraction
    if direct and limit is not None and len(targets) > limit * len(names):
        raise AdaptationError(
            f"{name}: {len(targets)} of the model's {len(names)} EEG channels are missing or bad, more than "
            f"{100 * options.max_missing_fraction:g} %: {listing(missing_names, 12)}" + hint
        )
    # A directly copied electrode sits where the model has it, whatever the stream says.
    direct_positions = {i: target_positions[j] for j, i in direct}
    sources = [i for _, i in direct] + wiring.foreign
    if len(sources) < MIN_SPLINE_SOURCES:
        raise AdaptationError(
            f"{name}: only {len(sources)} electrodes to interpolate {listing(missing_names)} from; "
            f"need at least {MIN_SPLINE_SOURCES}"
        )
    placed, placement = _place_foreign(model, source, montage, wiring, stream_positions, placement)
    source_positions = np.array([direct_positions[i] for _, i in direct] + placed, dtype=np.float64).reshape(-1, 3)
    to_positions = np.array([target_positions[j] for j in targets], dtype=np.float64)
    origin = np.array(options.origin_m) if options.origin_m is not None else fit_origin(np.array(target_positions))
    weights = spline_matrix(source_positions, to_positions, origin, options.spline_reg)  # (n_targets, n_sources)
    nearest, distance = nearest_distances(to_positions, source_positions)
    interpolated = tuple((names[j], source.labels[sources[k]], float(d)) for j, k, d in zip(targets, nearest, distance))
    far = [f"{m!r} ({1e3 * d:.0f} mm)" for m, _, d in interpolated if d > FAR_ELECTRODE_M]
    if far:
        warnings.append(
            f"{len(far)} interpolated model electrode(s) are more than {1e3 * FAR_ELECTRODE_M:.0f} mm from any "
            f"stream electrode: {', '.join(far[:8])}{', …' if len(far) > 8 else ''}"
        )
    return _Spline(sources, origin, weights, interpolated, placed, placement)


def _place_foreign(
    model: ModelEEG,
    source: SourceDescription,
    montage: Any,
    wiring: _Wiring,
    stream_positions: Sequence[Any],
    placement: CapPlacement | None,
) -> tuple[list[Position], CapPlacement | None]:
    """The positions of the other cap's electrodes (`wiring.foreign`) on the model's head, and
    how they were placed (`coregistration.place_cap`: by the montage's fiducials, by electrodes
    shared with the model, or oriented by the standard positions of their labels; `placement`
    kept when given). Without model positions (the montage gives the model's electrodes too)
    they are used as they are."""
    given = np.array([stream_positions[i] for i in wiring.foreign], dtype=np.float64).reshape(-1, 3)
    if not len(given) or model.positions_m is None:
        return [tuple(p) for p in given], None
    if placement is None:
        model_positions = np.array(model.positions_m)
        shared = [(stream_positions[i], model_positions[j]) for j, i in wiring.direct if stream_positions[i] is not None]
        pairs = (np.array([a for a, _ in shared]), np.array([b for _, b in shared])) if shared else None
        labels = [source.labels[i] for i in wiring.foreign]
        placed, placement = place_cap(
            given, labels, model_positions, None if model.fiducials_m is None else np.array(model.fiducials_m),
            montage_fiducials(montage) if montage is not None else None, pairs, source.name,
            template=None if montage is not None else standard_template(labels),
        )
    else:
        placed = placement.apply(given)
    return [tuple(float(c) for c in p) for p in placed], placement


def _target_positions(model: ModelEEG, montage: Any) -> tuple[Position, ...] | None:
    """The model's electrode positions, else the montage's for the model's labels (all or none)."""
    if model.positions_m is not None or montage is None:
        return model.positions_m
    from_montage = montage_positions(montage, model.channel_names)
    return None if any(p is None for p in from_montage) else tuple(from_montage)  # type: ignore[arg-type]


def _selection_matrix(n_model: int, used: list[int], wiring: _Wiring, spline: _Spline | None) -> np.ndarray:
    """`(n_model, len(used))`: a 1 per direct copy, the spline weights on the interpolated rows."""
    column = {i: c for c, i in enumerate(used)}
    matrix = np.zeros((n_model, len(used)))
    for j, i in wiring.direct:
        matrix[j, column[i]] = 1.0
    if spline is not None:
        for row, j in enumerate(wiring.targets):
            for k, i in enumerate(spline.sources):
                matrix[j, column[i]] = spline.weights[row, k]
    return matrix


def _fold_units(
    matrix: np.ndarray, used: list[int], source: SourceDescription, options: AdaptationOptions, warnings: list[str]
) -> tuple[tuple[str, str, float], ...]:
    """Scale each used column of `matrix` to volts in place; (label, unit sent, factor) per column."""
    units = []
    missing_unit = []
    for c, i in enumerate(used):
        sent = source.units[i]
        if options.input_unit is not None:
            factor = volt_factor(options.input_unit, "adaptation.input_unit")
        else:
            factor = volt_factor(sent, f"{source.name}: channel {source.labels[i]!r} has unit")
            if factor is None:
                missing_unit.append(source.labels[i])
                factor = 1.0
        units.append((source.labels[i], sent, float(factor)))
        matrix[:, c] *= factor
    if missing_unit:
        warnings.append(f"{len(missing_unit)} channel(s) give no unit, taken as volts: {listing(missing_unit, 4)}")
    return tuple(units)
