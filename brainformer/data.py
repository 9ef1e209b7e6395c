"""Recordings → preprocessed continuous arrays → train / validation / test parts → dataset directories.

Readers: any MNE-readable raw file (FIF first) and BIDS roots (MEG runs found with `mne_bids`,
ds000117 layout ``sub-*/ses-meg/meg/*_meg.fif``, EEG inside the MEG file).

Splitting, per recording of n samples at the model rate (all in time, never shuffled across):

```
0                 split·(1-validation_fraction)·n        split·n                      n
|── settle ─ train ──────────────|── settle ─ validation ──|── settle ─ test ───────────|
```

`settle_s` seconds are dropped at the start of each part (the causal filters settle after the
first sample and after nothing else, but a part's first window must not see the previous part's
data), and no window crosses a boundary. Scaling statistics are fitted on the train parts (after
settling) of all recordings together, then every recording is preprocessed again with them, so
the arrays are exactly what the streaming preprocessor gives online.

Datasets: `build_dataset` / `brainformer prepare` write each recording's continuous
preprocessed rows once, as ``.npy`` arrays (``arrays/<name>_{eeg,meg,times}.npy``), next to
``brainformer_config.json`` (the model config with the fitted scaling) and
``brainformer_prepare.json`` (format, settings and each recording's part boundaries);
`load_prepared_dataset` memory-maps them. Windows are not stored: the training dataset
(`brainformer.training.ContinuousWindows`) cuts them on the fly from the parts, so the dataset is
as large as the recordings (float32), whatever the hop, and never has to fit in RAM.
`hf_windows` exposes the same windows as a Hugging Face `datasets.Dataset`: an index table
(recording, start_sample) whose transform cuts ``input_values`` / ``labels`` (or token ids) from
the memory-mapped arrays on access; `save_hf_windows` / `load_hf_windows` store and reopen it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from brainformer.preprocessing import (
    ChannelStats,
    PreprocessingError,
    check_raw_compatible,
    decimation_factor_for_raw,
    fit_scaling,
    iter_preprocessed_chunks,
    without_scaling,
)
from brainformer.settings import DataSettings, ExperimentSettings, SettingsError

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "brainformer_config.json"
PREPARE_INFO_FILENAME = "brainformer_prepare.json"
SPLITS = ("train", "validation", "test")
#: Folder of a prepared dataset holding the continuous arrays.
ARRAYS_DIRNAME = "arrays"
#: Value of ``format`` in ``brainformer_prepare.json`` for continuous-array datasets.
DATASET_FORMAT = "brainformer-continuous-1"
#: Rows copied at a time when a prepared recording is written into a dataset directory.
COPY_CHUNK_SAMPLES = 65536


class DataError(ValueError):
    """A recording, BIDS root or dataset that cannot be used; the message names the path."""


# --------------------------------------------------------------------------------------------
# Finding and reading recordings
# --------------------------------------------------------------------------------------------
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


def config_for_recording(raw: Any, model_kwargs: dict[str, Any] | None = None) -> Any:
    """A `BrainformerConfig` for this recording: its channels and rate, plus the model kwargs.

    Keys in `model_kwargs` win over the file (e.g. ``sfreq_hz = 550.0`` to decimate a 1100 Hz
    recording, or a subset of ``eeg_channel_names``); MEG types of named MEG channels come from
    the file when not given.
    """
    from brainformer.configuration_brainformer import BrainformerConfig
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
    try:
        return BrainformerConfig(**kwargs)
    except ValueError as err:
        raise DataError(f"{source}: {err}") from None


# --------------------------------------------------------------------------------------------
# Parts and windows
# --------------------------------------------------------------------------------------------
def split_parts(n_samples: int, sfreq_hz: float, data: DataSettings) -> dict[str, tuple[int, int]]:
    """Usable ``[start, stop)`` rows of each part (settling dropped), keyed train/validation/test.

    The same definition serves training (windows), evaluation (continuous test segments) and
    the ridge baselines (λ chosen on validation). A part too short for its settling is empty.
    """
    n_samples = int(n_samples)
    test_start = int(round(data.split * n_samples))
    validation_start = int(round(data.split * (1.0 - data.validation_fraction) * n_samples))
    settle = int(round(data.settle_s * sfreq_hz))

    def usable(start: int, stop: int) -> tuple[int, int]:
        return (min(start + settle, stop), stop)

    return {
        "train": usable(0, validation_start),
        "validation": usable(validation_start, test_start),
        "test": usable(test_start, n_samples),
    }


def window_starts(start: int, stop: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """First rows of the windows of `window_samples` that fit in ``[start, stop)``, every `hop_samples`."""
    if stop - start < window_samples:
        return np.zeros(0, dtype=np.int64)
    return np.arange(start, stop - window_samples + 1, hop_samples, dtype=np.int64)


def window_index(
    recordings: Sequence["PreparedRecording"], part: str | Sequence[str], window_samples: int, hop_samples: int
) -> np.ndarray:
    """Every window of one part (or of adjacent parts together) of `recordings`.

    The single definition of which windows exist, shared by the torch dataset
    (`brainformer.training.ContinuousWindows`) and the Hugging Face view (`hf_windows`).

    Args:
        recordings: prepared recordings (their ``parts``).
        part: ``"train"``, ``"validation"`` or ``"test"``, or several adjacent parts (e.g.
            ``("train", "validation")``), which then form one continuous stretch per recording.
        window_samples, hop_samples: window length and step in rows.

    Returns:
        `(n_windows, 4)` int64 rows ``(recording, start_sample, stretch_start, stretch_stop)``:
        the recording's position in `recordings`, the window's first row, and the ``[start, stop)``
        rows of the stretch it lies in (every window satisfies
        ``stretch_start <= start_sample <= stretch_stop - window_samples``).
    """
    parts = (part,) if isinstance(part, str) else tuple(part)
    blocks = []
    for i, rec in enumerate(recordings):
        spans = [rec.parts[p] for p in parts if rec.parts[p][1] > rec.parts[p][0]]
        if not spans:
            continue
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        starts = window_starts(lo, hi, window_samples, hop_samples)
        block = np.empty((len(starts), 4), dtype=np.int64)
        block[:, 0], block[:, 1], block[:, 2], block[:, 3] = i, starts, lo, hi
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros((0, 4), dtype=np.int64)


@dataclass
class PreparedRecording:
    """One recording, preprocessed and scaled, with its parts.

    Attributes:
        name: unique name (the file stem), used in the dataset's ``recording`` column.
        source: the file it was read from.
        eeg: `(n, n_eeg)` float32, scaled (memory-mapped when prepared with an `arrays_dir`).
        meg: `(n, n_meg)` float32, scaled.
        times: `(n,)` float64 seconds from the first sample of the file.
        sfreq_hz: rate of the rows.
        parts: usable ``[start, stop)`` rows per part (see `split_parts`).
    """

    name: str
    source: str
    eeg: np.ndarray
    meg: np.ndarray
    times: np.ndarray
    sfreq_hz: float
    parts: dict[str, tuple[int, int]]

    @property
    def n_samples(self) -> int:
        return int(self.eeg.shape[0])

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`(eeg (m, n_eeg), meg (m, n_meg))` views of one part's usable rows."""
        start, stop = self.parts[name]
        return self.eeg[start:stop], self.meg[start:stop]

    def window_starts(self, part: str, window_samples: int, hop_samples: int) -> np.ndarray:
        start, stop = self.parts[part]
        return window_starts(start, stop, window_samples, hop_samples)


@dataclass
class PreparedData:
    """Recordings prepared for one model config (with the fitted scaling)."""

    config: Any
    data: DataSettings
    recordings: list[PreparedRecording]

    def hop_samples(self, split: str) -> int:
        if split == "train":
            return self.data.train_hop_samples
        return self.data.eval_hop_samples or self.config.window_samples

    def n_windows(self, split: str) -> int:
        window, hop = self.config.window_samples, self.hop_samples(split)
        return sum(len(r.window_starts(split, window, hop)) for r in self.recordings)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        stem = path.name.split(".")[0] or path.name
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}-{k}", k + 1
        names.append(name)
    return names


# Worker functions: top-level so a process pool can run them; each opens its file itself.
def _fit_statistics_worker(path: str, config: Any, data: DataSettings) -> tuple[ChannelStats, ChannelStats]:
    """Unscaled preprocessing of one file; statistics of its train part (after settling)."""
    raw = read_raw(path)
    plain = without_scaling(config)
    decimation = decimation_factor_for_raw(raw, plain)
    n_out = int(-(-raw.n_times // decimation))
    start, stop = split_parts(n_out, float(raw.info["sfreq"]) / decimation, data)["train"]
    eeg_stats, meg_stats = ChannelStats(len(config.eeg_channel_names)), ChannelStats(len(config.meg_channel_names))
    row = 0
    for eeg, meg, _ in iter_preprocessed_chunks(raw, plain):
        lo, hi = max(start - row, 0), min(stop - row, eeg.shape[0])
        if lo < hi:
            eeg_stats.update(eeg[lo:hi])
            meg_stats.update(meg[lo:hi])
        row += eeg.shape[0]
        if row >= stop:
            break
    return eeg_stats, meg_stats


def _preprocess_worker(
    path: str, name: str, config: Any, data: DataSettings, arrays_dir: str | None
) -> PreparedRecording:
    """Scaled preprocessing of one file into memory or into ``<arrays_dir>/<name>_{eeg,meg,times}.npy``."""
    raw = read_raw(path)
    decimation = decimation_factor_for_raw(raw, config)
    n_out = int(-(-raw.n_times // decimation))
    sfreq_hz = float(raw.info["sfreq"]) / decimation
    shapes = {"eeg": (n_out, len(config.eeg_channel_names)), "meg": (n_out, len(config.meg_channel_names)), "times": (n_out,)}
    dtypes = {"eeg": np.float32, "meg": np.float32, "times": np.float64}
    if arrays_dir is None:
        arrays = {k: np.empty(shapes[k], dtypes[k]) for k in shapes}
    else:
        arrays = {
            k: np.lib.format.open_memmap(Path(arrays_dir) / f"{name}_{k}.npy", mode="w+", dtype=dtypes[k], shape=shapes[k])
            for k in shapes
        }
    row = 0
    for eeg, meg, times in iter_preprocessed_chunks(raw, config):
        m = eeg.shape[0]
        arrays["eeg"][row : row + m] = eeg
        arrays["meg"][row : row + m] = meg
        arrays["times"][row : row + m] = times
        row += m
    if arrays_dir is not None:
        for array in arrays.values():
            array.flush()
        # Memory maps are not sent back across processes; the caller reopens the files.
        arrays = {k: np.zeros((0,) + shapes[k][1:], dtypes[k]) for k in shapes}
    return PreparedRecording(
        name=name,
        source=str(path),
        eeg=arrays["eeg"],
        meg=arrays["meg"],
        times=arrays["times"],
        sfreq_hz=sfreq_hz,
        parts=split_parts(n_out, sfreq_hz, data),
    )


def _run_all(function: Callable, calls: list[tuple], jobs: int, on_done: Callable[[], None] | None) -> list:
    """`function(*args)` for each call, in order; in a process pool when ``jobs > 1``."""
    if jobs <= 1 or len(calls) <= 1:
        results = []
        for args in calls:
            results.append(function(*args))
            if on_done:
                on_done()
        return results
    with ProcessPoolExecutor(max_workers=min(jobs, len(calls))) as pool:
        futures = [pool.submit(function, *args) for args in calls]
        results = []
        for future in futures:
            results.append(future.result())
            if on_done:
                on_done()
        return results


def prepare_recordings(
    paths: Iterable[str | Path],
    settings: ExperimentSettings,
    *,
    config: Any | None = None,
    arrays_dir: str | Path | None = None,
    jobs: int = 1,
    on_progress: Callable[[str], None] | None = None,
) -> PreparedData:
    """Preprocess recordings, fit scaling on their train parts, and cut them into parts.

    Args:
        paths: recording files and/or BIDS roots (see `find_recordings`).
        settings: model kwargs (`settings.model`) and split/window settings (`settings.data`).
        config: use this model config instead of deriving one from the first recording; if it
            holds scaling statistics they are used as they are (no fitting), e.g. to evaluate a
            trained model on new data.
        arrays_dir: write the continuous arrays there as ``.npy`` files and memory-map them
            (large datasets); None keeps them in memory.
        jobs: recordings processed in parallel (process pool).
        on_progress: called with ``"statistics"`` or ``"preprocess"`` after each recording.

    Returns:
        `PreparedData` with the fitted config and one `PreparedRecording` per file.

    Raises:
        DataError / PreprocessingError: naming the file, for unreadable files, missing channels,
            unusable rates, NaN segments, or no training data at all.
    """
    files = find_recordings(paths)
    names = _unique_names(files)
    data = settings.data
    if config is None:
        config = config_for_recording(read_raw(files[0]), settings.model)
    # Headers first: a bad file late in a long list fails now, not after hours of work.
    for path in files:
        check_raw_compatible(read_raw(path), config)
    if config.eeg_mean is None or config.meg_mean is None:
        stats = _run_all(
            _fit_statistics_worker,
            [(str(f), config, data) for f in files],
            jobs,
            (lambda: on_progress("statistics")) if on_progress else None,
        )
        eeg_total, meg_total = ChannelStats(config.n_eeg_channels), ChannelStats(config.n_meg_channels)
        for eeg_stats, meg_stats in stats:
            eeg_total.merge(eeg_stats)
            meg_total.merge(meg_stats)
        if eeg_total.count < 2:
            raise DataError(
                f"{', '.join(map(str, files[:3]))}: no training samples left after settling "
                f"(split={data.split}, validation_fraction={data.validation_fraction}, settle_s={data.settle_s})"
            )
        config = fit_scaling(config, eeg_total, meg_total)
    if arrays_dir is not None:
        Path(arrays_dir).mkdir(parents=True, exist_ok=True)
    recordings = _run_all(
        _preprocess_worker,
        [(str(f), n, config, data, None if arrays_dir is None else str(arrays_dir)) for f, n in zip(files, names)],
        jobs,
        (lambda: on_progress("preprocess")) if on_progress else None,
    )
    if arrays_dir is not None:
        for rec in recordings:
            rec.eeg, rec.meg, rec.times = (
                np.load(Path(arrays_dir) / f"{rec.name}_{k}.npy", mmap_mode="r") for k in ("eeg", "meg", "times")
            )
    return PreparedData(config=config, data=data, recordings=recordings)


# --------------------------------------------------------------------------------------------
# Prepared datasets on disk: continuous memory-mapped arrays, windows cut on the fly
# --------------------------------------------------------------------------------------------
def _array_path(root: Path, name: str, kind: str) -> Path:
    return root / ARRAYS_DIRNAME / f"{name}_{kind}.npy"


def _array_specs(config: Any, n_samples: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "eeg": ((n_samples, config.n_eeg_channels), np.float32),
        "meg": ((n_samples, config.n_meg_channels), np.float32),
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
        "window_samples": prepared.config.window_samples,
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
    config = prepared.config
    if prepared.n_windows("train") == 0:
        raise DataError(
            f"{', '.join(r.source for r in prepared.recordings[:3])}: no training window fits: the train part "
            f"after settling is shorter than window_samples={config.window_samples}"
        )
    for split in SPLITS:
        if prepared.n_windows(split) == 0:
            logger.warning("split %s has no windows", split)
    (out_dir / ARRAYS_DIRNAME).mkdir(parents=True, exist_ok=True)
    for rec in prepared.recordings:
        for kind, (shape, dtype) in _array_specs(config, rec.n_samples).items():
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
    config.to_json_file(str(out_dir / CONFIG_FILENAME))
    (out_dir / PREPARE_INFO_FILENAME).write_text(json.dumps(_prepare_info(prepared, tokenize), indent=2) + "\n")
    return load_prepared_dataset(out_dir)[0]


def is_prepared_dataset(path: str | Path) -> bool:
    """Whether `path` is a directory written by `build_dataset` / `brainformer prepare` (any version)."""
    path = Path(path)
    return (path / CONFIG_FILENAME).is_file() and (
        (path / PREPARE_INFO_FILENAME).is_file() or (path / "dataset_dict.json").is_file()
    )


def load_prepared_dataset(path: str | Path) -> tuple[PreparedData, Any]:
    """`(PreparedData, BrainformerConfig)` of a directory written by `build_dataset`.

    The recordings' arrays are memory-mapped read-only (``numpy.load(mmap_mode="r")``, no
    pickles): opening a dataset costs no RAM, rows are read when windows are cut.

    Raises:
        DataError: naming the directory or file when it is not such a dataset, was written in
            the older windowed format, or an array is missing or of the wrong shape.
    """
    from brainformer.configuration_brainformer import BrainformerConfig

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
    try:
        config = BrainformerConfig.from_json_file(str(path / CONFIG_FILENAME))
    except (ValueError, OSError) as err:
        raise DataError(f"{path / CONFIG_FILENAME}: invalid model config: {err}") from None
    try:
        data = DataSettings(**info["data"])
    except (TypeError, ValueError) as err:
        raise DataError(f"{path / PREPARE_INFO_FILENAME}: invalid [data] settings: {err}") from None
    recordings = []
    for entry in info["recordings"]:
        n = int(entry["n_samples"])
        arrays = {}
        for kind, (shape, dtype) in _array_specs(config, n).items():
            file = _array_path(path, entry["name"], kind)
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{file}: cannot open the prepared array: {err}") from None
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise DataError(f"{file}: expected {np.dtype(dtype)} {shape}, found {array.dtype} {array.shape}")
            arrays[kind] = array
        recordings.append(
            PreparedRecording(
                name=entry["name"], source=entry["source"], sfreq_hz=float(entry["sfreq_hz"]),
                parts={k: (int(v[0]), int(v[1])) for k, v in entry["parts"].items()}, **arrays,
            )
        )
    return PreparedData(config=config, data=data, recordings=recordings), config


def load_prepare_info(path: str | Path) -> dict[str, Any]:
    """The ``brainformer_prepare.json`` of a prepared dataset (settings, recordings, part boundaries)."""
    return json.loads((Path(path) / PREPARE_INFO_FILENAME).read_text())


# --------------------------------------------------------------------------------------------
# Hugging Face `datasets` view: an index of windows, cut from the arrays on access
# --------------------------------------------------------------------------------------------
#: Key, in the JSON of a window dataset's ``info.description``, of what `load_hf_windows` needs.
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


def _open_prepared(prepared_or_dir: "PreparedData | str | Path") -> tuple[PreparedData, str | None]:
    if isinstance(prepared_or_dir, PreparedData):
        return prepared_or_dir, None
    path = Path(prepared_or_dir)
    return load_prepared_dataset(path)[0], str(path.resolve())


def _attach_cutter(index: Any, prepared: PreparedData, window_samples: int, tokenize: bool) -> Any:
    from brainformer.quantization import MEGQuantizer

    quantizer = MEGQuantizer.from_config(prepared.config) if tokenize else None
    cutter = _WindowCutter(
        [r.eeg for r in prepared.recordings], [r.meg for r in prepared.recordings], window_samples, quantizer
    )
    return index.with_transform(cutter)


def hf_windows(
    prepared_or_dir: "PreparedData | str | Path",
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
    window = _positive_int(prepared.config.window_samples if window_samples is None else window_samples, "window_samples")
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


# --------------------------------------------------------------------------------------------
# `brainformer prepare`
# --------------------------------------------------------------------------------------------
def _directory_size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare_command(
    data: Sequence[Path],
    out: Path,
    config_file: Path | None,
    split: float | None,
    tokenize: bool,
    jobs: int,
) -> None:
    """`brainformer prepare`: recordings / BIDS roots → dataset directory, with progress bars.

    Recordings are processed `jobs` at a time (process pool), each streamed from its file into
    memory-mapped arrays in a staging directory next to `out`, which becomes `out` once complete.
    `split` (when not None) and `tokenize` (when True) override the ``[data]`` section of the
    config file. An existing prepared dataset at `out` is replaced; any other non-empty directory
    is refused. Bad input prints one line and exits with code 2, and leaves nothing behind.
    """
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=True)

    def fail(message: str) -> None:
        console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        raise typer.Exit(2)

    staging: Path | None = None
    try:
        if jobs < 1:
            fail(f"--jobs {jobs}: expected an integer >= 1")
        settings = _load_settings_for_command(config_file, split, tokenize)
        out = Path(out)
        if out.exists() and not out.is_dir():
            fail(f"--out {out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not is_prepared_dataset(out):
            fail(f"--out {out}: directory exists, is not empty and is not a prepared dataset; choose another")
        files = find_recordings(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Same file system as `out`: the finished dataset is moved into place, not copied.
        staging = out.parent / f".brainformer-prepare-{uuid.uuid4().hex[:12]}"
        staging.mkdir()  # not mkdtemp: the dataset keeps the umask's permissions
        columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        progress = Progress(*columns, console=console)
        with _transient_on_error(progress):
            tasks = {
                "statistics": progress.add_task("statistics", total=len(files)),
                "preprocess": progress.add_task("preprocessing", total=len(files)),
            }
            prepared = prepare_recordings(
                files,
                settings,
                arrays_dir=staging / ARRAYS_DIRNAME,
                jobs=jobs,
                on_progress=lambda stage: progress.advance(tasks[stage]),
            )
            dataset = build_dataset(prepared, staging, tokenize=settings.data.tokenize)
        del dataset  # release the memory maps before the directory moves
        if out.is_dir():
            shutil.rmtree(out)
        staging.rename(out)
        staging = None
        dataset, _ = load_prepared_dataset(out)
    except (DataError, PreprocessingError, SettingsError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"{err.filename or out}: {err.strerror}")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    table = Table(title=f"dataset written to {out}")
    for column in ("split", "minutes", "windows", "window", "hop"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split_name in SPLITS:
        rows = sum(r.parts[split_name][1] - r.parts[split_name][0] for r in dataset.recordings)
        table.add_row(
            split_name,
            f"{rows / dataset.config.sfreq_hz / 60:.2f}",
            str(dataset.n_windows(split_name)),
            str(dataset.config.window_samples),
            str(dataset.hop_samples(split_name)),
        )
    console.print(table)
    console.print(
        f"{len(dataset.recordings)} recording(s), {dataset.config.n_eeg_channels} EEG → "
        f"{dataset.config.n_meg_channels} MEG channels at {dataset.config.sfreq_hz:g} Hz, "
        f"continuous float32 arrays (windows cut while training), "
        f"{_directory_size_bytes(out) / 2**20:.1f} MiB"
    )


@contextlib.contextmanager
def _transient_on_error(progress: Any) -> Iterator[None]:
    """Run `progress`; if the body fails, erase the bars so the error stays the only output line."""
    with progress:
        try:
            yield
        except BaseException:
            progress.live.transient = True
            raise


def _load_settings_for_command(config_file: Path | None, split: float | None, tokenize: bool) -> ExperimentSettings:
    from brainformer.settings import load_settings

    settings = load_settings(config_file)
    overrides: dict[str, Any] = {}
    if split is not None:
        if not (isinstance(split, (int, float)) and math.isfinite(split) and 0 < split < 1):
            raise SettingsError(f"--split {split}: expected a fraction strictly between 0 and 1")
        overrides["split"] = float(split)
    if tokenize:
        overrides["tokenize"] = True
    if overrides:
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, **overrides))
    return settings
