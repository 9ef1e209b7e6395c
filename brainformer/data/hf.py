"""Hugging Face `datasets` view of a prepared dataset: an index of windows, cut on access.

`hf_windows` exposes the training windows as a `datasets.Dataset`: an index table (recording,
start_sample) whose transform cuts ``input_values`` / ``labels`` (or token ids) from the
memory-mapped arrays on access; `save_hf_windows` / `load_hf_windows` store and reopen it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brainformer.data.dataset_dir import load_prepared_dataset
from brainformer.data.errors import DataError
from brainformer.data.prepared import PreparedData
from brainformer.data.splits import SPLITS, window_index

__all__ = ["HF_WINDOWS_KEY", "hf_windows", "load_hf_windows", "save_hf_windows"]

HF_WINDOWS_KEY = "brainformer_windows"


def _array_state(array: np.ndarray) -> Any:
    """A memory map by its file (pickles and hashes in microseconds), anything else by value."""
    filename = getattr(array, "filename", None)
    if isinstance(array, np.memmap) and filename is not None and Path(filename).is_file():
        stat = Path(filename).stat()
        # Size and mtime make the `datasets` fingerprint change when the file is rewritten.
        return ("file", str(filename), stat.st_size, stat.st_mtime_ns)
    return ("array", np.asarray(array))


def _array_from_state(state: Any) -> np.ndarray:
    if state[0] == "file":
        return np.load(state[1], mmap_mode="r", allow_pickle=False)
    return state[1]


class _WindowCutter:
    """`datasets` transform: a batch of index rows → the windows they name.

    Input batch: ``{"recording": [int], "start_sample": [int]}``. Output batch: the same two
    columns plus ``input_values`` `(batch, window, n_eeg)` float32 and ``labels`` `(batch, window,
    n_meg)` float32, or int64 token ids when a quantizer is given.

    Pickling (DataLoader workers, the `datasets` fingerprint) sends memory-mapped arrays by file
    name, so neither ever reads or copies the recordings.
    """

    def __init__(self, eeg: Sequence[np.ndarray], meg: Sequence[np.ndarray], window_samples: int, quantizer: Any | None) -> None:
        self.eeg, self.meg = list(eeg), list(meg)
        self.window_samples = int(window_samples)
        self.quantizer = quantizer

    def __getstate__(self) -> dict[str, Any]:
        return {
            "eeg": [_array_state(a) for a in self.eeg],
            "meg": [_array_state(a) for a in self.meg],
            "window_samples": self.window_samples,
            "quantizer": None if self.quantizer is None else (self.quantizer.n_levels, self.quantizer.clip),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        from brainformer.quantization import MEGQuantizer

        self.eeg = [_array_from_state(a) for a in state["eeg"]]
        self.meg = [_array_from_state(a) for a in state["meg"]]
        self.window_samples = state["window_samples"]
        self.quantizer = None if state["quantizer"] is None else MEGQuantizer(*state["quantizer"])

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        w = self.window_samples
        pairs = list(zip(batch["recording"], batch["start_sample"]))
        eeg = np.stack([np.asarray(self.eeg[r][s : s + w], dtype=np.float32) for r, s in pairs]) if pairs else (
            np.zeros((0, w, self.eeg[0].shape[1]), np.float32)
        )
        meg = np.stack([np.asarray(self.meg[r][s : s + w], dtype=np.float32) for r, s in pairs]) if pairs else (
            np.zeros((0, w, self.meg[0].shape[1]), np.float32)
        )
        labels = np.asarray(self.quantizer.encode(meg), dtype=np.int64) if self.quantizer is not None else meg
        return {
            "recording": list(batch["recording"]),
            "start_sample": list(batch["start_sample"]),
            "input_values": eeg,
            "labels": labels,
        }


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{field} = {value!r} is invalid: expected an integer >= 1")
    return int(value)


def _open_prepared(prepared_or_dir: PreparedData | str | Path) -> tuple[PreparedData, str | None]:
    if isinstance(prepared_or_dir, PreparedData):
        return prepared_or_dir, None
    path = Path(prepared_or_dir)
    return load_prepared_dataset(path)[0], str(path.resolve())


def _attach_cutter(index: Any, prepared: PreparedData, window_samples: int, tokenize: bool) -> Any:
    from brainformer.quantization import MEGQuantizer

    quantizer = MEGQuantizer.from_config(prepared.fields) if tokenize else None
    cutter = _WindowCutter(
        [r.eeg for r in prepared.recordings], [r.meg for r in prepared.recordings], window_samples, quantizer
    )
    return index.with_transform(cutter)


def hf_windows(
    prepared_or_dir: PreparedData | str | Path,
    split: str,
    window_samples: int | None = None,
    hop_samples: int | None = None,
    tokenize: bool | None = None,
) -> Any:
    """The windows of one split as a Hugging Face `datasets.Dataset`.

    Rows are window indices only, two columns: ``recording`` (a `ClassLabel` whose names are the
    recordings' names) and ``start_sample`` (int64, the window's first row). A transform cuts
    each window from the read-only memory-mapped arrays when a row is read::

        ds = hf_windows("prepared/", "train")
        ds[0]["input_values"]   # (window_samples, n_eeg) float32, scaled EEG
        ds[0]["labels"]         # (window_samples, n_meg) float32 scaled MEG, or int64 token ids
        ds[0:8]["input_values"] # (8, window_samples, n_eeg)

    The windows are exactly those of `brainformer.training.ContinuousWindows` for the same
    split and hop (one definition, `window_index`): inside the split's part of each recording,
    never crossing into another part. Only the index is held (12 bytes a window, about 30 MB for
    19 h at a 16-sample hop); the signals stay on disk.

    The transform is not saved by ``Dataset.save_to_disk`` (`datasets` refuses non-JSON format
    arguments): save the index with `save_hf_windows` and open it with `load_hf_windows`, which
    attaches the transform again.

    Args:
        prepared_or_dir: a directory written by `brainformer prepare` / `build_dataset`, or a
            `PreparedData` (then the arrays are those in memory).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        window_samples: window length (default: the config's ``window_samples``).
        hop_samples: window step (default: the dataset's hop for that split, as `brainformer
            prepare` reports it).
        tokenize: labels as 255-level token ids (`brainformer.quantization.MEGQuantizer`, ids
            3–257) for the ``tokens`` head; default: as the dataset was prepared (``--tokenize``).

    Raises:
        DataError: an unknown split, a bad window or hop, or a directory that is not a
            prepared dataset.
    """
    import datasets

    if split not in SPLITS:
        raise DataError(f"split = {split!r} is invalid: expected one of {', '.join(SPLITS)}")
    prepared, prepared_dir = _open_prepared(prepared_or_dir)
    window = _positive_int(prepared.fields.window_samples if window_samples is None else window_samples, "window_samples")
    hop = _positive_int(prepared.hop_samples(split) if hop_samples is None else hop_samples, "hop_samples")
    tokenize = bool(prepared.data.tokenize if tokenize is None else tokenize)
    rows = window_index(prepared.recordings, split, window, hop)
    names = [rec.name for rec in prepared.recordings]
    features = datasets.Features({"recording": datasets.ClassLabel(names=names), "start_sample": datasets.Value("int64")})
    meta = {"prepared_dir": prepared_dir, "split": split, "window_samples": window, "hop_samples": hop, "tokenize": tokenize}
    info = datasets.DatasetInfo(description=json.dumps({HF_WINDOWS_KEY: meta}), features=features)
    index = datasets.Dataset.from_dict(
        {"recording": rows[:, 0].astype(np.int32), "start_sample": rows[:, 1]}, info=info, split=split
    )
    return _attach_cutter(index, prepared, window, tokenize)


def _windows_meta(windows: Any, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(windows.info.description or "")[HF_WINDOWS_KEY]
    except (ValueError, TypeError, KeyError):
        raise DataError(f"{where}: not a window index written by `hf_windows` / `save_hf_windows`") from None
    return meta


def save_hf_windows(windows: Any, path: str | Path) -> None:
    """Save the index of a window dataset from `hf_windows` (shuffled, selected or not) to `path`.

    Writes ``Dataset.save_to_disk`` of the index alone (`recording`, `start_sample`); it reads
    back with `datasets.load_from_disk` as a memory-mapped index, or with `load_hf_windows` as
    windows again.

    Raises:
        DataError: `windows` does not come from `hf_windows`, or comes from recordings in memory
            (write them with `build_dataset` first: the index refers to a dataset directory).
    """
    meta = _windows_meta(windows, "windows")
    if meta.get("prepared_dir") is None:
        raise DataError(
            "windows: cut from recordings in memory; write them with `build_dataset` (or `brainformer prepare`) "
            "and take the windows from that directory to save them"
        )
    windows.with_format(None).save_to_disk(str(path))


def load_hf_windows(path: str | Path, prepared_dir: str | Path | None = None) -> Any:
    """A window index saved by `save_hf_windows`, memory-mapped, with its transform attached again.

    Args:
        path: directory written by `save_hf_windows`.
        prepared_dir: the prepared dataset the windows are cut from (default: the directory
            recorded when the index was made; give it when the dataset has moved).

    Raises:
        DataError: `path` is not such an index, or it does not fit the prepared dataset (other
            recordings, or windows outside their split: prepared again with other settings).
    """
    import datasets

    path = Path(path)
    try:
        index = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"{path}: cannot open as a saved window index: {err}") from None
    if not isinstance(index, datasets.Dataset):
        raise DataError(f"{path}: a DatasetDict, not a window index written by `save_hf_windows`")
    meta = _windows_meta(index, str(path))
    source = prepared_dir if prepared_dir is not None else meta["prepared_dir"]
    prepared, _ = _open_prepared(source)
    names = [rec.name for rec in prepared.recordings]
    if index.features["recording"].names != names:
        raise DataError(
            f"{path}: windows of recordings {index.features['recording'].names[:5]} but {source} holds {names[:5]}"
        )
    # A shuffled or selected index is fine; a window outside its split is not.
    window, split = int(meta["window_samples"]), meta["split"]
    columns = index.with_format("numpy")[:]  # the two index columns only (12 bytes a window)
    recording, start = columns["recording"], columns["start_sample"]
    lo = np.array([rec.parts[split][0] for rec in prepared.recordings], dtype=np.int64)
    hi = np.array([rec.parts[split][1] for rec in prepared.recordings], dtype=np.int64)
    if len(start) and not np.all((start >= lo[recording]) & (start + window <= hi[recording])):
        raise DataError(f"{path}: windows outside the {split} part of {source}; make the index again with `hf_windows`")
    return _attach_cutter(index, prepared, window, bool(meta["tokenize"]))
