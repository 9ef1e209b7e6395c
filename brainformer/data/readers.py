"""Finding and reading recordings: raw files (FIF first, anything MNE reads) and BIDS roots.

BIDS roots: MEG runs found with `mne_bids`, ds000117 layout ``sub-*/ses-meg/meg/*_meg.fif``, EEG
inside the MEG file. `fields_for_recording` derives the model config's fields (channels, rate)
from a recording without transformers; `config_for_recording` gives the `BrainformerConfig`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from brainformer.config_fields import BrainformerFields
from brainformer.data.errors import DataError

if TYPE_CHECKING:
    from brainformer.configuration_brainformer import BrainformerConfig

__all__ = ["channel_layout", "config_for_recording", "eeg_positions", "fields_for_recording", "find_recordings", "read_raw"]


def _is_bids_root(directory: Path) -> bool:
    return (directory / "dataset_description.json").is_file() or any(directory.glob("sub-*"))


def _bids_meg_runs(root: Path) -> list[Path]:
    """MEG FIF runs of a BIDS root (one path per run: split files continue from their first part)."""
    import mne_bids

    try:
        bids_paths = mne_bids.find_matching_paths(root, datatypes="meg", suffixes="meg", extensions=".fif")
    except Exception as err:  # noqa: BLE001 - any failure inside mne-bids becomes one clear line
        raise DataError(f"{root}: cannot search the BIDS root: {err}") from None
    runs = []
    for bids_path in bids_paths:
        if bids_path.subject == "emptyroom":  # empty-room noise: no subject, no EEG
            continue
        if bids_path.split not in (None, "01"):  # MNE reads the later split parts itself
            continue
        runs.append(Path(bids_path.fpath))
    return sorted(set(runs))


def find_recordings(paths: Iterable[str | Path]) -> list[Path]:
    """Recording files from files and BIDS roots, in the order given (BIDS runs sorted).

    Args:
        paths: raw files readable by MNE (FIF, EDF, BrainVision …; directory formats such as CTF
            ``.ds`` count as files) or BIDS roots.

    Raises:
        DataError: a path does not exist, a directory is not a BIDS root, or a BIDS root has no
            MEG runs.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if path.is_dir() and path.suffix.lower() not in (".ds", ".mff"):
            if not _is_bids_root(path):
                raise DataError(
                    f"{path}: a directory that is not a BIDS root (no dataset_description.json or sub-*); "
                    "pass recording files or a BIDS root"
                )
            runs = _bids_meg_runs(path)
            if not runs:
                raise DataError(f"{path}: BIDS root with no MEG runs (expected sub-*/[ses-*/]meg/*_meg.fif)")
            found.extend(runs)
        else:
            found.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DataError("no recordings given")
    return unique


def channel_layout(raw: Any) -> tuple[list[str], list[str], list[str]]:
    """`(eeg_names, meg_names, meg_types)` in file order; MEG = magnetometers and gradiometers.

    Channels marked bad are kept: the layout must be the same for every run of a dataset, and a
    dead channel is neutralised by its zero scale instead.
    """
    import mne

    info = raw.info
    eeg_idx = mne.pick_types(info, meg=False, eeg=True, exclude=[])
    meg_idx = mne.pick_types(info, meg=True, ref_meg=False, exclude=[])
    meg_types = [mne.channel_type(info, i) for i in meg_idx]
    keep = [i for i, t in zip(meg_idx, meg_types) if t in ("mag", "grad")]
    return (
        [info["ch_names"][i] for i in eeg_idx],
        [info["ch_names"][i] for i in keep],
        [mne.channel_type(info, i) for i in keep],
    )


def read_raw(path: str | Path) -> Any:
    """Open a raw recording lazily (data read on demand) and check it has EEG and MEG channels.

    Raises:
        DataError: the file is missing, unreadable, or lacks EEG or MEG channels.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    try:
        name = path.name.lower()
        if name.endswith(".fif") or name.endswith(".fif.gz"):
            raw = mne.io.read_raw_fif(path, preload=False, verbose="error")
        else:
            raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:  # noqa: BLE001 - reader errors vary by format; report them in one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read as a raw recording: {detail}") from None
    eeg, meg, _ = channel_layout(raw)
    present = sorted(set(raw.get_channel_types()))
    if not eeg:
        raise DataError(f"{path}: no EEG channels (channel types in the file: {', '.join(present)})")
    if not meg:
        raise DataError(f"{path}: no MEG channels (channel types in the file: {', '.join(present)})")
    return raw


def eeg_positions(raw: Any, names: Iterable[str]) -> list[list[float]] | None:
    """Head-frame positions in metres of the EEG channels `names` (the recording's montage), or
    None when any of them has no usable position (not in the head frame, zero or NaN)."""
    from mne.io.constants import FIFF

    index = {name: i for i, name in enumerate(raw.info["ch_names"])}
    positions = []
    for name in names:
        channel = raw.info["chs"][index[name]] if name in index else None
        if channel is None or channel["coord_frame"] != FIFF.FIFFV_COORD_HEAD:
            return None
        xyz = [float(v) for v in channel["loc"][:3]]
        if not all(map(math.isfinite, xyz)) or not any(xyz):
            return None
        positions.append(xyz)
    return positions


def eeg_fiducials(raw: Any) -> list[list[float]] | None:
    """The head's fiducials ``[nasion, LPA, RPA]`` (head frame, metres) from the recording's
    digitisation, or None when any of them is missing or not in the head frame."""
    from mne.io.constants import FIFF

    wanted = (FIFF.FIFFV_POINT_NASION, FIFF.FIFFV_POINT_LPA, FIFF.FIFFV_POINT_RPA)
    found = {}
    for point in raw.info.get("dig") or ():
        if point["kind"] == FIFF.FIFFV_POINT_CARDINAL and point["coord_frame"] == FIFF.FIFFV_COORD_HEAD:
            found.setdefault(int(point["ident"]), [float(v) for v in point["r"]])
    if not all(ident in found for ident in wanted):
        return None
    fiducials = [found[ident] for ident in wanted]
    return fiducials if all(math.isfinite(v) for xyz in fiducials for v in xyz) else None


def fields_for_recording(raw: Any, model_kwargs: dict[str, Any] | None = None) -> BrainformerFields:
    """The model config's fields for this recording: its channels and rate, plus the model kwargs.

    Keys in `model_kwargs` win over the file (e.g. ``sfreq_hz = 550.0`` to decimate a 1100 Hz
    recording, or a subset of ``eeg_channel_names``); MEG types of named MEG channels and the
    positions of the EEG electrodes (``eeg_positions_m``, from the montage) and the head's
    fiducials (``eeg_fiducials_m``, from the digitisation) come from the file when not given.

    Raises:
        DataError: naming the recording, for a model kwarg that is not a valid config field or
            MEG channels named in `model_kwargs` that the file lacks.
    """
    from brainformer.preprocessing import raw_source_name

    source = raw_source_name(raw)
    eeg, meg, meg_types = channel_layout(raw)
    kwargs: dict[str, Any] = {
        "eeg_channel_names": eeg,
        "meg_channel_names": meg,
        "meg_channel_types": meg_types,
        "sfreq_hz": float(raw.info["sfreq"]),
    }
    model_kwargs = dict(model_kwargs or {})
    if "meg_channel_names" in model_kwargs and "meg_channel_types" not in model_kwargs:
        file_types = dict(zip(meg, meg_types))
        missing = [n for n in model_kwargs["meg_channel_names"] if n not in file_types]
        if missing:
            raise DataError(f"{source}: model.meg_channel_names not in the file: {', '.join(missing[:10])}")
        model_kwargs["meg_channel_types"] = [file_types[n] for n in model_kwargs["meg_channel_names"]]
    kwargs.update(model_kwargs)
    if "eeg_positions_m" not in model_kwargs and isinstance(kwargs["eeg_channel_names"], (list, tuple)):
        kwargs["eeg_positions_m"] = eeg_positions(raw, kwargs["eeg_channel_names"])
    if "eeg_fiducials_m" not in model_kwargs and kwargs.get("eeg_positions_m") is not None:
        kwargs["eeg_fiducials_m"] = eeg_fiducials(raw)
    try:
        return BrainformerFields.from_dict(kwargs)
    except ValueError as err:
        raise DataError(f"{source}: {err}") from None


def config_for_recording(raw: Any, model_kwargs: dict[str, Any] | None = None) -> BrainformerConfig:
    """`fields_for_recording` as a `BrainformerConfig`, to build a model (imports transformers)."""
    from brainformer.configuration_brainformer import BrainformerConfig

    return BrainformerConfig(**fields_for_recording(raw, model_kwargs).to_dict())
