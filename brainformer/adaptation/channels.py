"""Stream channels → model EEG channels, by label.

Labels are compared case- and space-insensitively (``"EEG 001"`` = ``"eeg001"``) after an
optional channel map (stream label → model label, e.g. from a TOML file). Channels the model does
not use (triggers, EOG, aux, extra electrodes) are left out and listed with the reason.

A channel map file is a TOML table of strings, at the top level or under ``[channel_map]``::

    [channel_map]
    "Fp1-REF" = "EEG 001"
    "Fp2-REF" = "EEG 002"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from brainformer.adaptation.errors import AdaptationError

__all__ = ["EEG_TYPES", "ChannelMatch", "listing", "load_channel_map", "match_channels", "normalize_label"]

#: Stream channel types (case-folded) that may hold EEG electrodes; "" = not given.
EEG_TYPES = frozenset({"eeg", ""})


def normalize_label(label: str) -> str:
    """The key labels are matched by: case-folded, white space removed."""
    return "".join(label.casefold().split())


def listing(names: Sequence[str], limit: int = 8) -> str:
    """``'a', 'b', … (12 in all)``: a short list of names for a one-line message."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def load_channel_map(path: str | Path) -> dict[str, str]:
    """A channel map (stream label → model label) from a TOML file; see the module docstring.

    Raises:
        AdaptationError: naming the file (and key) when it is missing, not TOML or not a table of
            strings.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise AdaptationError(f"channel map {path}: cannot read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise AdaptationError(f"channel map {path}: not valid TOML: {err}") from None
    table = data.get("channel_map", data)
    if not isinstance(table, dict):
        raise AdaptationError(f"channel map {path}: [channel_map] must be a table of stream label = model label")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise AdaptationError(
                f"channel map {path}: {key!r} = {value!r}: expected a model channel label (a non-empty string)"
            )
    return dict(table)


@dataclass(frozen=True)
class ChannelMatch:
    """Which stream column feeds which model channel, by label.

    Attributes:
        stream_index: one entry per model channel: its stream column, or -1 when the stream has
            no channel of that label.
        ignored: ``(stream column, reason)`` for every stream channel not matched to a model
            channel, in stream order (``reason`` names its type or says it is not a model label).
        candidates: stream columns not matched by label that may still be EEG electrodes (type
            EEG or not given): sources for interpolation when they have positions.
        unused_map_keys: channel map keys no stream channel has.
    """

    stream_index: tuple[int, ...]
    ignored: tuple[tuple[int, str], ...]
    candidates: tuple[int, ...]
    unused_map_keys: tuple[str, ...]

    @property
    def missing(self) -> tuple[int, ...]:
        """Model channel indices with no stream channel."""
        return tuple(j for j, i in enumerate(self.stream_index) if i < 0)


def match_channels(
    stream_labels: Sequence[str],
    stream_types: Sequence[str],
    model_labels: Sequence[str],
    channel_map: Mapping[str, str] | None = None,
    source: str = "stream",
) -> ChannelMatch:
    """Match stream channels to the model's EEG channels by label (see the module docstring).

    A stream channel whose label (after the map) is a model label is used whatever its type; the
    others are ignored, and those of type EEG (or of no type) are kept as interpolation candidates.

    Raises:
        AdaptationError: two stream channels matching the same model channel, two model labels
            equal up to case and spaces, or a channel map value that is not a model label.
    """
    model_keys: dict[str, int] = {}
    for j, label in enumerate(model_labels):
        key = normalize_label(label)
        if key in model_keys:
            raise AdaptationError(
                f"model EEG channels {model_labels[model_keys[key]]!r} and {label!r} differ only in case or spaces"
            )
        model_keys[key] = j
    mapping = {normalize_label(k): v for k, v in (channel_map or {}).items()}
    unknown_targets = [v for v in mapping.values() if normalize_label(v) not in model_keys]
    if unknown_targets:
        raise AdaptationError(f"channel map: {listing(unknown_targets)} are not model EEG channels")
    stream_keys = [normalize_label(label) for label in stream_labels]
    unused = tuple(k for k in (channel_map or {}) if normalize_label(k) not in set(stream_keys))

    stream_index = [-1] * len(model_labels)
    ignored: list[tuple[int, str]] = []
    candidates: list[int] = []
    for i, (label, key) in enumerate(zip(stream_labels, stream_keys)):
        kind = (stream_types[i] if i < len(stream_types) else "").strip().casefold()
        target = normalize_label(mapping[key]) if key in mapping else key
        j = model_keys.get(target) if key else None
        if j is None:
            if not key:
                ignored.append((i, "no label"))
            elif kind not in EEG_TYPES:
                ignored.append((i, f"type {kind}"))
            else:
                ignored.append((i, "not a model channel"))
                candidates.append(i)
            continue
        if stream_index[j] >= 0:
            first = stream_labels[stream_index[j]]
            raise AdaptationError(
                f"{source}: channels {first!r} and {label!r} both match the model's EEG channel {model_labels[j]!r}"
            )
        stream_index[j] = i
    return ChannelMatch(tuple(stream_index), tuple(ignored), tuple(candidates), unused)
