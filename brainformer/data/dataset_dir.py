"""Prepared datasets on disk: continuous memory-mapped arrays, windows cut on the fly.

`build_dataset` / `write_dataset` (what `brainformer prepare` runs) write each recording's
continuous preprocessed rows once, as ``.npy`` arrays (``arrays/<name>_{eeg,meg,times}.npy``),
next to ``brainformer_config.json`` (the model config with the fitted scaling, readable by
`BrainformerConfig.from_json_file`) and ``brainformer_prepare.json`` (format, settings and each
recording's part boundaries); `load_prepared_dataset` memory-maps them. Windows are not stored:
the training dataset (`brainformer.training.ContinuousWindows`) cuts them on the fly from the
parts, so the dataset is as large as the recordings (float32), whatever the hop, and never has
to fit in RAM. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from brainformer.config_fields import BrainformerFields
from brainformer.data.errors import DataError
from brainformer.data.prepared import PreparedData, PreparedRecording, prepare_recordings
from brainformer.data.splits import SPLITS
from brainformer.settings import DataSettings, ExperimentSettings

__all__ = [
    "ARRAYS_DIRNAME",
    "CONFIG_FILENAME",
    "COPY_CHUNK_SAMPLES",
    "DATASET_FORMAT",
    "PREPARE_INFO_FILENAME",
    "build_dataset",
    "check_dataset_target",
    "is_prepared_dataset",
    "load_prepare_info",
    "load_prepared_dataset",
    "write_dataset",
]

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "brainformer_config.json"
PREPARE_INFO_FILENAME = "brainformer_prepare.json"
#: Folder of a prepared dataset holding the continuous arrays.
ARRAYS_DIRNAME = "arrays"
#: Value of ``format`` in ``brainformer_prepare.json`` for continuous-array datasets.
DATASET_FORMAT = "brainformer-continuous-1"
#: Rows copied at a time when a prepared recording is written into a dataset directory.
COPY_CHUNK_SAMPLES = 65536


def _array_path(root: Path, name: str, kind: str) -> Path:
    return root / ARRAYS_DIRNAME / f"{name}_{kind}.npy"


def _array_specs(fields: BrainformerFields, n_samples: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "eeg": ((n_samples, fields.n_eeg_channels), np.float32),
        "meg": ((n_samples, fields.n_meg_channels), np.float32),
        "times": ((n_samples,), np.float64),
    }


def _is_file_of(array: np.ndarray, path: Path) -> bool:
    """Whether `array` is a memory map of `path` (then nothing needs copying)."""
    filename = getattr(array, "filename", None)
    return filename is not None and path.exists() and Path(filename).resolve() == path.resolve()


def _prepare_info(prepared: PreparedData, tokenize: bool) -> dict[str, Any]:
    return {
        "format": DATASET_FORMAT,
        "data": dataclasses.asdict(prepared.data) | {"tokenize": tokenize},
        "window_samples": prepared.fields.window_samples,
        "hop_samples": {split: prepared.hop_samples(split) for split in SPLITS},
        "n_windows": {split: prepared.n_windows(split) for split in SPLITS},
        "recordings": [
            {
                "name": rec.name,
                "source": rec.source,
                "n_samples": rec.n_samples,
                "sfreq_hz": rec.sfreq_hz,
                "parts": {k: list(v) for k, v in rec.parts.items()},
                "arrays": {kind: f"{ARRAYS_DIRNAME}/{rec.name}_{kind}.npy" for kind in ("eeg", "meg", "times")},
            }
            for rec in prepared.recordings
        ],
    }


def _write_arrays(
    rec: PreparedRecording, fields: BrainformerFields, out_dir: Path, on_samples: Callable[[int], None] | None
) -> None:
    """Copy one recording's arrays into ``out_dir/arrays``, chunk by chunk (unless already there)."""
    for kind, (shape, dtype) in _array_specs(fields, rec.n_samples).items():
        source, target = getattr(rec, kind), _array_path(out_dir, rec.name, kind)
        if _is_file_of(source, target):
            continue
        written = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, rec.n_samples, COPY_CHUNK_SAMPLES):
            stop = min(start + COPY_CHUNK_SAMPLES, rec.n_samples)
            written[start:stop] = source[start:stop]
            if on_samples and kind == "eeg":
                on_samples(stop - start)
        written.flush()
        del written


def build_dataset(
    prepared: PreparedData,
    out_dir: str | Path,
    tokenize: bool = False,
    on_samples: Callable[[int], None] | None = None,
) -> PreparedData:
    """Write `prepared` as a dataset directory and return it, loaded back memory-mapped.

    The directory holds each recording's continuous preprocessed rows once (never the
    overlapping windows, which would multiply the size by ``window_samples / hop_samples``):

    ```
    out_dir/brainformer_config.json      model config with the fitted scaling
    out_dir/brainformer_prepare.json     format, [data] settings, recordings with their parts
    out_dir/arrays/<name>_eeg.npy        (n, n_eeg) float32, scaled
    out_dir/arrays/<name>_meg.npy        (n, n_meg) float32, scaled
    out_dir/arrays/<name>_times.npy      (n,) float64 seconds
    ```

    Training cuts windows from the memory-mapped arrays on the fly (inside each part only), so
    a dataset of any length is read from disk as it is used and never held in RAM.

    Args:
        prepared: from `prepare_recordings`; recordings already memory-mapped from
            ``out_dir/arrays`` (``prepare_recordings(arrays_dir=out_dir / "arrays")``) are not
            copied.
        out_dir: directory to write; created if missing.
        tokenize: recorded in ``brainformer_prepare.json`` (labels for the ``tokens`` head are
            quantised on the fly, so any dataset serves both heads).
        on_samples: called with the number of rows copied (progress).

    Raises:
        DataError: no training window fits.
    """
    out_dir = Path(out_dir)
    fields = prepared.fields
    if prepared.n_windows("train") == 0:
        raise DataError(
            f"{', '.join(r.source for r in prepared.recordings[:3])}: no training window fits: the train part "
            f"after settling is shorter than window_samples={fields.window_samples}"
        )
    for split in SPLITS:
        if prepared.n_windows(split) == 0:
            logger.warning("split %s has no windows", split)
    (out_dir / ARRAYS_DIRNAME).mkdir(parents=True, exist_ok=True)
    for rec in prepared.recordings:
        _write_arrays(rec, fields, out_dir, on_samples)
    fields.to_json_file(out_dir / CONFIG_FILENAME)
    (out_dir / PREPARE_INFO_FILENAME).write_text(json.dumps(_prepare_info(prepared, tokenize), indent=2) + "\n")
    return load_prepared_dataset(out_dir)[0]


def check_dataset_target(out: Path) -> None:
    """Refuse an `out` that `write_dataset` must not replace: a file, or a non-empty directory
    that is not a prepared dataset."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_prepared_dataset(out):
        raise DataError(f"{out}: directory exists, is not empty and is not a prepared dataset; choose another")


def write_dataset(
    paths: Sequence[str | Path],
    out: str | Path,
    settings: ExperimentSettings,
    *,
    jobs: int = 1,
    on_progress: Callable[[str], None] | None = None,
) -> PreparedData:
    """`brainformer prepare`: recordings / BIDS roots → the dataset directory `out`, loaded back.

    Recordings are processed `jobs` at a time (process pool), each streamed from its file into
    memory-mapped arrays in a staging directory next to `out`, which becomes `out` once complete.
    An existing prepared dataset at `out` is replaced; any other non-empty directory is refused.
    On any error nothing is left behind.

    Args:
        paths, settings, jobs, on_progress: as for `prepare_recordings`.
        out: dataset directory to write.

    Raises:
        DataError / PreprocessingError: as `prepare_recordings` and `build_dataset`, or an `out`
            that `check_dataset_target` refuses; OSError when the disk refuses.
    """
    out = Path(out)
    check_dataset_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same file system as `out`: the finished dataset is moved into place, not copied.
    staging = out.parent / f".brainformer-prepare-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # not mkdtemp: the dataset keeps the umask's permissions
    try:
        prepared = prepare_recordings(
            paths, settings, arrays_dir=staging / ARRAYS_DIRNAME, jobs=jobs, on_progress=on_progress
        )
        build_dataset(prepared, staging, tokenize=settings.data.tokenize)
        del prepared  # release the memory maps before the directory moves
        if out.is_dir():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed
    return load_prepared_dataset(out)[0]


def is_prepared_dataset(path: str | Path) -> bool:
    """Whether `path` is a directory written by `build_dataset` / `brainformer prepare` (any version)."""
    path = Path(path)
    return (path / CONFIG_FILENAME).is_file() and (
        (path / PREPARE_INFO_FILENAME).is_file() or (path / "dataset_dict.json").is_file()
    )


def _load_fields(path: Path) -> BrainformerFields:
    try:
        return BrainformerFields.from_json_file(path / CONFIG_FILENAME)
    except (ValueError, OSError) as err:
        raise DataError(f"{path / CONFIG_FILENAME}: invalid model config: {err}") from None


def _load_recording(path: Path, entry: dict[str, Any], fields: BrainformerFields) -> PreparedRecording:
    """One recording of ``brainformer_prepare.json``, its arrays memory-mapped and checked."""
    arrays = {}
    for kind, (shape, dtype) in _array_specs(fields, int(entry["n_samples"])).items():
        file = _array_path(path, entry["name"], kind)
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{file}: cannot open the prepared array: {err}") from None
        if array.shape != shape or array.dtype != np.dtype(dtype):
            raise DataError(f"{file}: expected {np.dtype(dtype)} {shape}, found {array.dtype} {array.shape}")
        arrays[kind] = array
    return PreparedRecording(
        name=entry["name"], source=entry["source"], sfreq_hz=float(entry["sfreq_hz"]),
        parts={k: (int(v[0]), int(v[1])) for k, v in entry["parts"].items()}, **arrays,
    )


def load_prepared_dataset(path: str | Path) -> tuple[PreparedData, BrainformerFields]:
    """`(PreparedData, BrainformerFields)` of a directory written by `build_dataset`.

    The recordings' arrays are memory-mapped read-only (``numpy.load(mmap_mode="r")``, no
    pickles): opening a dataset costs no RAM, rows are read when windows are cut. The model
    config comes as its fields (no transformers import); ``PreparedData.config`` gives the
    `BrainformerConfig`.

    Raises:
        DataError: naming the directory or file when it is not such a dataset, was written in
            the older windowed format, or an array is missing or of the wrong shape.
    """
    path = Path(path)
    if not is_prepared_dataset(path):
        raise DataError(f"{path}: not a dataset written by `brainformer prepare` (no {CONFIG_FILENAME} / {PREPARE_INFO_FILENAME})")
    try:
        info = load_prepare_info(path)
    except (OSError, ValueError):
        info = {}
    if info.get("format") != DATASET_FORMAT:
        raise DataError(
            f"{path}: a dataset of stored windows written by an older `brainformer prepare`; "
            "run `brainformer prepare` again (datasets now store continuous recordings)"
        )
    fields = _load_fields(path)
    try:
        data = DataSettings(**info["data"])
    except (TypeError, ValueError) as err:
        raise DataError(f"{path / PREPARE_INFO_FILENAME}: invalid [data] settings: {err}") from None
    recordings = [_load_recording(path, entry, fields) for entry in info["recordings"]]
    return PreparedData(config=fields, data=data, recordings=recordings), fields


def load_prepare_info(path: str | Path) -> dict[str, Any]:
    """The ``brainformer_prepare.json`` of a prepared dataset (settings, recordings, part boundaries)."""
    return json.loads((Path(path) / PREPARE_INFO_FILENAME).read_text())
