"""Electrode positions (head frame, metres) from stream meta-data or from a montage.

Two meta-data conventions are read from a channel's ``desc/channels/channel`` children:

- XDF (most LSL apps): ``location/X, Y, Z`` in millimetres;
- mne-lsl (`PlayerLSL`): ``loc/R0x, R0y, R0z`` in metres (MNE's ``info['chs'][i]['loc'][:3]``).

A montage is an MNE standard montage name (``"standard_1020"``, see
``mne.channels.get_builtin_montages()``) or a montage file MNE reads (``.fif``, ``.elc``,
``.sfp``, ``.loc``, ``.bvef``, …). Its positions are brought to the head frame as
``info.set_montage`` does, and matched to labels case- and space-insensitively. MNE is imported
only inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainformer.adaptation.channels import listing, normalize_label
from brainformer.adaptation.errors import AdaptationError

__all__ = ["Position", "channel_position", "load_montage", "montage_fiducials", "montage_positions",
           "position_is_broken", "standard_montage", "standard_template"]

Position = tuple[float, float, float]

#: MNE's code of the head coordinate frame (``FIFF.FIFFV_COORD_HEAD``), as mne-lsl writes it in
#: ``coord_frame``; a ``loc`` in another frame is not an electrode position on the head.
_HEAD_FRAME = "4"


def _xyz(values: Mapping[str, Any], keys: Sequence[str], scale: float) -> Position | None:
    try:
        xyz = tuple(float(str(values[k]).strip()) * scale for k in keys)
    except (KeyError, TypeError, ValueError):
        return None
    if not all(map(math.isfinite, xyz)) or not any(xyz):  # MNE writes 0 or NaN for "unknown"
        return None
    return xyz  # type: ignore[return-value]


def channel_position(metadata: Mapping[str, Any]) -> Position | None:
    """A channel's position in metres from its meta-data children, or None when it has none.

    `metadata` maps child names to values; nested children as mappings, e.g.
    ``{"label": "Fz", "location": {"X": "0.3", "Y": "58.5", "Z": "66.5"}}`` (mm) or
    ``{"loc": {"R0x": "0.0003", "R0y": "0.0585", "R0z": "0.0665"}}`` (m). ``loc`` wins when both
    are present (it is MNE's own value); it is used only in the head frame (mne-lsl's
    ``coord_frame`` 4, or no ``coord_frame``).
    """
    loc = metadata.get("loc")
    frame = str(metadata.get("coord_frame", _HEAD_FRAME)).strip()
    if isinstance(loc, Mapping) and frame == _HEAD_FRAME:  # mne-lsl also sends MEG sensors (device frame)
        position = _xyz(loc, ("R0x", "R0y", "R0z"), 1.0)
        if position is not None:
            return position
    location = metadata.get("location")
    if isinstance(location, Mapping):
        return _xyz(location, ("X", "Y", "Z"), 1e-3)
    return None


def _raw_xyz(values: Any, keys: Sequence[str]) -> tuple[float, ...] | None:
    try:
        return tuple(float(str(values[k]).strip()) for k in keys)
    except (KeyError, TypeError, ValueError):
        return None


def position_is_broken(metadata: Mapping[str, Any]) -> bool:
    """True when a channel's meta-data give a position that cannot be one: an infinite
    coordinate, or some coordinates NaN and others not. (All three NaN, or all zero, is how MNE
    writes "unknown": no position, not a broken one.)"""
    loc = metadata.get("loc")
    frame = str(metadata.get("coord_frame", _HEAD_FRAME)).strip()
    given = []
    if isinstance(loc, Mapping) and frame == _HEAD_FRAME:
        given.append(_raw_xyz(loc, ("R0x", "R0y", "R0z")))
    location = metadata.get("location")
    if isinstance(location, Mapping):
        given.append(_raw_xyz(location, ("X", "Y", "Z")))
    for xyz in given:
        if xyz is None:
            continue
        nan = [math.isnan(v) for v in xyz]
        if any(math.isinf(v) for v in xyz) or (any(nan) and not all(nan)):
            return True
    return False


#: Montage files whose positions carry their unit (ASA ``.elc``: ``UnitPosition mm``). MNE scales
#: every other kind to its standard head (median radius 95 mm), since their units are unknown.
_MEASURED_UNITS_SUFFIXES = (".elc",)


def load_montage(montage: str | Path) -> Any:
    """An MNE ``DigMontage`` from a standard montage name or a montage file.

    A ``.elc`` file's positions are kept as they are (converted to metres); those of other
    files without units (``.sfp``, ``.loc``, ``.bvef``, …) are scaled to MNE's standard head size,
    as ``mne.channels.read_custom_montage`` does by default.

    Raises:
        AdaptationError: an unknown name (the built-in names are listed) or an unreadable file.
    """
    import mne

    path = Path(montage)
    if path.exists():
        try:
            if path.name.lower().endswith((".fif", ".fif.gz")):
                return mne.channels.read_dig_fif(path, verbose="error")
            if path.suffix.lower() in _MEASURED_UNITS_SUFFIXES:
                # Positions with their unit (a digitised cap): kept as measured, not scaled.
                return mne.channels.read_custom_montage(path, head_size=None, verbose="error")
            return mne.channels.read_custom_montage(path, verbose="error")
        except Exception as err:  # noqa: BLE001 - MNE's reader errors vary by format: one line
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AdaptationError(f"montage file {path}: cannot read: {detail}") from None
    try:
        return standard_montage(str(montage))
    except ValueError:
        builtin = mne.channels.get_builtin_montages()
        raise AdaptationError(
            f"unknown montage {str(montage)!r}: not a file, nor an MNE standard montage "
            f"({', '.join(builtin[:6])}, … {len(builtin)} in all)"
        ) from None


#: Standard montages MNE renamed, old name → new name, with the same positions. MNE 1.13 warns
#: on ``standard_1020`` and 1.14 drops it; older MNE versions have only that name.
MONTAGE_RENAMES = {"standard_1020": "colin27_1020", "standard_1005": "colin27_1005"}
#: Each name of a renamed montage → its other name.
_OTHER_NAME = {**MONTAGE_RENAMES, **{new: old for old, new in MONTAGE_RENAMES.items()}}


def standard_montage(name: str) -> Any:
    """MNE's standard montage ``name``, by whichever of its names (:data:`MONTAGE_RENAMES`) this
    MNE knows, so that both names work with every MNE version; ValueError when MNE has neither."""
    import mne

    builtin = set(mne.channels.get_builtin_montages())
    if name not in builtin and _OTHER_NAME.get(name) in builtin:
        name = _OTHER_NAME[name]
    return mne.channels.make_standard_montage(name)


def montage_fiducials(montage: Any) -> Any:
    """`(3, 3)` nasion, LPA, RPA of a montage (a ``DigMontage``) in the head frame they define —
    the frame `montage_positions` puts its electrodes in — or None when it lacks any of them."""
    import numpy as np
    from mne.channels.montage import transform_to_head

    try:
        positions = transform_to_head(montage.copy()).get_positions()
    except Exception:  # noqa: BLE001 - a montage MNE cannot move into a head frame has no usable fiducials
        return None
    fiducials = [positions.get(name) for name in ("nasion", "lpa", "rpa")]
    if any(f is None for f in fiducials):
        return None
    fiducials = np.array(fiducials, dtype=np.float64)
    return fiducials if np.isfinite(fiducials).all() else None


def montage_positions(montage: Any, labels: Sequence[str]) -> list[Position | None]:
    """Head-frame positions (metres) of `labels` in `montage` (a ``DigMontage``, name or file),
    matched case- and space-insensitively; None for labels the montage lacks."""
    import mne

    if isinstance(montage, (str, Path)):
        montage = load_montage(montage)
    by_key = {normalize_label(name): name for name in montage.ch_names}
    names = [by_key.get(normalize_label(label)) for label in labels]
    present = sorted({n for n in names if n is not None})
    if not present:
        return [None] * len(labels)
    info = mne.create_info(present, 1000.0, "eeg")
    try:
        info.set_montage(montage, on_missing="ignore", verbose="error")
    except Exception as err:  # noqa: BLE001 - one line
        raise AdaptationError(f"montage: cannot place the channels {listing(present)}: {err}") from None
    head = {ch["ch_name"]: tuple(float(v) for v in ch["loc"][:3]) for ch in info["chs"]}
    out: list[Position | None] = []
    for name in names:
        xyz = head.get(name) if name is not None else None
        out.append(xyz if xyz is not None and all(map(math.isfinite, xyz)) and any(xyz) else None)
    return out


#: MNE's template montages whose labels orient a cap sent without fiducials (same template head:
#: the positions they share are identical), searched in this order.
TEMPLATE_MONTAGES = ("standard_1020", "standard_1005")


def standard_template(labels: Sequence[str]) -> Any:
    """``(positions (n, 3), fiducials (3, 3))`` of MNE's standard 10-20 / 10-05 template for
    `labels` (NaN rows for labels it does not know), in the head frame its fiducials define; None
    when it knows none of them."""
    import numpy as np

    positions: list[Position | None] = [None] * len(labels)
    fiducials = None
    for name in TEMPLATE_MONTAGES:
        montage = standard_montage(name)
        wanted = [i for i, p in enumerate(positions) if p is None]
        for i, p in zip(wanted, montage_positions(montage, [labels[i] for i in wanted])):
            positions[i] = p
        if fiducials is None:
            fiducials = montage_fiducials(montage)
    if fiducials is None or all(p is None for p in positions):
        return None
    return np.array([p if p is not None else (np.nan,) * 3 for p in positions], dtype=np.float64), fiducials
