"""A stream's description from its LSL meta-data XML (``StreamInfo.as_xml()``), without pylsl.

Reads ``name``, ``channel_count``, ``channel_format``, ``nominal_srate`` and, per channel,
``desc/channels/channel/{label, type, unit}`` and the position (XDF ``location`` in mm or
mne-lsl ``loc`` in m, see `positions.channel_position`)::

    source = source_from_lsl_xml(inlet.info().as_xml())   # a full info, from an opened inlet
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any

from brainformer.adaptation.errors import AdaptationError
from brainformer.adaptation.plan import SourceDescription
from brainformer.adaptation.positions import channel_position, position_is_broken

__all__ = ["channel_metadata", "source_from_lsl_xml"]


def _as_dict(element: ElementTree.Element) -> Any:
    """An element's children as a mapping (leaf text as str; repeated tags keep the first)."""
    children = list(element)
    if not children:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        out.setdefault(child.tag, _as_dict(child))
    return out


def channel_metadata(xml: str) -> list[dict[str, Any]]:
    """``desc/channels/channel`` of a stream's XML, one mapping per channel, in order."""
    root = _parse(xml)
    channels = root.find("desc/channels")
    if channels is None:
        return []
    return [_as_dict(channel) for channel in channels.findall("channel")]


def _parse(xml: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise AdaptationError(f"stream meta-data is not valid XML: {err}") from None


def source_from_lsl_xml(xml: str) -> SourceDescription:
    """The `SourceDescription` of a stream from its full XML meta-data (labels, types, units,
    positions padded with ``""`` / None to ``channel_count``)."""
    root = _parse(xml)
    name = (root.findtext("name") or "").strip()
    try:
        n_channels = int((root.findtext("channel_count") or "0").strip())
        rate = float((root.findtext("nominal_srate") or "0").strip())
    except ValueError as err:
        raise AdaptationError(f"LSL stream {name!r}: unreadable channel_count or nominal_srate: {err}") from None
    channels = channel_metadata(xml)[:n_channels]
    channels += [{}] * (n_channels - len(channels))

    def text(channel: Any, key: str) -> str:
        value = channel.get(key, "") if isinstance(channel, dict) else ""
        return value if isinstance(value, str) else ""

    return SourceDescription(
        name=f"LSL stream {name!r}",
        labels=tuple(text(c, "label") for c in channels),
        types=tuple(text(c, "type") for c in channels),
        units=tuple(text(c, "unit") for c in channels),
        positions_m=tuple(channel_position(c) if isinstance(c, dict) else None for c in channels),
        sfreq_hz=rate,
        channel_format=(root.findtext("channel_format") or "").strip(),
        broken_positions=tuple(i for i, c in enumerate(channels) if isinstance(c, dict) and position_is_broken(c)),
    )
