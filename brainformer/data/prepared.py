"""Recordings → preprocessed, scaled continuous arrays with their parts (`PreparedData`).

Scaling statistics are fitted on the train parts (after settling) of all recordings together,
then every recording is preprocessed again with them, so the arrays are exactly what the
streaming preprocessor gives online. Nothing here imports torch or transformers: the config is
handled as `BrainformerFields`; `PreparedData.config` builds the `BrainformerConfig` for callers
that make a model.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from brainformer.config_fields import BrainformerFields
from brainformer.data.errors import DataError
from brainformer.data.readers import fields_for_recording, find_recordings, read_raw
from brainformer.data.splits import split_parts, window_starts
from brainformer.preprocessing import (
    ChannelStats,
    check_raw_compatible,
    decimation_factor_for_raw,
    finish_meg_target,
    is_zero_phase_target,
    iter_preprocessed_chunks,
    preprocess_recording,
)
from brainformer.settings import DataSettings, ExperimentSettings

if TYPE_CHECKING:
    from brainformer.configuration_brainformer import BrainformerConfig

__all__ = ["PreparedData", "PreparedRecording", "prepare_recordings"]

_ARRAY_KINDS = ("eeg", "meg", "times")


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


class PreparedData:
    """Recordings prepared for one model config (with the fitted scaling).

    Args:
        config: the model config, a `BrainformerFields` or a `BrainformerConfig`.
        data: the ``[data]`` settings the parts and hops come from.
        recordings: one `PreparedRecording` per file.

    Attributes:
        fields: the config's fields (`BrainformerFields`, read-only): all the data package reads.
        config: the `BrainformerConfig`, for building a model: the one given, or made from
            `fields` on first use (which imports transformers). Assigning a config replaces
            `fields` too.
        data, recordings: as given.
    """

    def __init__(self, config: BrainformerFields | BrainformerConfig, data: DataSettings, recordings: list[PreparedRecording]) -> None:
        self.config = config
        self.data = data
        self.recordings = recordings

    @property
    def fields(self) -> BrainformerFields:
        return self._fields

    @property
    def config(self) -> BrainformerConfig:
        if self._config is None:
            from brainformer.configuration_brainformer import BrainformerConfig

            self._config = BrainformerConfig(**self._fields.to_dict())
        return self._config

    @config.setter
    def config(self, config: BrainformerFields | BrainformerConfig) -> None:
        # Both change together, so the fields and the config never disagree.
        self._fields = BrainformerFields.from_config(config)
        self._config = None if isinstance(config, BrainformerFields) else config

    def hop_samples(self, split: str) -> int:
        if split == "train":
            return self.data.train_hop_samples
        return self.data.eval_hop_samples or self.fields.window_samples

    def n_windows(self, split: str) -> int:
        window, hop = self.fields.window_samples, self.hop_samples(split)
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


def _n_rows_at_model_rate(raw: Any, decimation: int) -> int:
    return int(-(-raw.n_times // decimation))


# Worker functions: top-level so a process pool can run them; each opens its file itself.
def _fit_statistics_worker(path: str, fields: BrainformerFields, data: DataSettings) -> tuple[ChannelStats, ChannelStats]:
    """Unscaled preprocessing of one file; statistics of its train part (after settling)."""
    raw = read_raw(path)
    plain = fields.replace(eeg_mean=None, eeg_std=None, meg_mean=None, meg_std=None)
    decimation = decimation_factor_for_raw(raw, plain)
    n_out = _n_rows_at_model_rate(raw, decimation)
    start, stop = split_parts(n_out, float(raw.info["sfreq"]) / decimation, data)["train"]
    eeg_stats, meg_stats = ChannelStats(fields.n_eeg_channels), ChannelStats(fields.n_meg_channels)
    if is_zero_phase_target(plain):
        # Every sample of a zero-phase target depends on the whole recording: preprocess it all.
        recording = preprocess_recording(raw, plain)
        return eeg_stats.update(recording.eeg[start:stop]), meg_stats.update(recording.meg[start:stop])
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


def _output_arrays(shapes: dict[str, tuple[int, ...]], name: str, arrays_dir: str | None) -> dict[str, np.ndarray]:
    """Empty eeg/meg/times arrays: in memory, or ``<arrays_dir>/<name>_<kind>.npy`` memory maps."""
    dtypes = {"eeg": np.float32, "meg": np.float32, "times": np.float64}
    if arrays_dir is None:
        return {k: np.empty(shapes[k], dtypes[k]) for k in _ARRAY_KINDS}
    return {
        k: np.lib.format.open_memmap(Path(arrays_dir) / f"{name}_{k}.npy", mode="w+", dtype=dtypes[k], shape=shapes[k])
        for k in _ARRAY_KINDS
    }


def _preprocess_worker(
    path: str, name: str, fields: BrainformerFields, data: DataSettings, arrays_dir: str | None
) -> PreparedRecording:
    """Scaled preprocessing of one file into memory or into ``<arrays_dir>/<name>_{eeg,meg,times}.npy``."""
    raw = read_raw(path)
    decimation = decimation_factor_for_raw(raw, fields)
    n_out = _n_rows_at_model_rate(raw, decimation)
    sfreq_hz = float(raw.info["sfreq"]) / decimation
    shapes = {"eeg": (n_out, fields.n_eeg_channels), "meg": (n_out, fields.n_meg_channels), "times": (n_out,)}
    arrays = _output_arrays(shapes, name, arrays_dir)
    row = 0
    for chunk in iter_preprocessed_chunks(raw, fields):  # (eeg, meg, times)
        m = chunk[0].shape[0]
        for kind, values in zip(_ARRAY_KINDS, chunk):
            arrays[kind][row : row + m] = values
        row += m
    finish_meg_target(arrays["meg"], fields)
    if arrays_dir is not None:
        for array in arrays.values():
            array.flush()
        # Memory maps are not sent back across processes; the caller reopens the files.
        arrays = {k: np.zeros((0,) + shapes[k][1:], arrays[k].dtype) for k in _ARRAY_KINDS}
    return PreparedRecording(
        name=name, source=str(path), sfreq_hz=sfreq_hz, parts=split_parts(n_out, sfreq_hz, data), **arrays
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


def _fit_scaling(
    files: Sequence[Path], fields: BrainformerFields, data: DataSettings, jobs: int, on_done: Callable[[], None] | None
) -> BrainformerFields:
    """`fields` with scaling statistics fitted on the train parts of all `files` together."""
    stats = _run_all(_fit_statistics_worker, [(str(f), fields, data) for f in files], jobs, on_done)
    eeg_total, meg_total = ChannelStats(fields.n_eeg_channels), ChannelStats(fields.n_meg_channels)
    for eeg_stats, meg_stats in stats:
        eeg_total.merge(eeg_stats)
        meg_total.merge(meg_stats)
    if eeg_total.count < 2:
        raise DataError(
            f"{', '.join(map(str, files[:3]))}: no training samples left after settling "
            f"(split={data.split}, validation_fraction={data.validation_fraction}, settle_s={data.settle_s})"
        )
    return fields.replace(
        eeg_mean=eeg_total.mean.tolist(), eeg_std=eeg_total.std.tolist(),
        meg_mean=meg_total.mean.tolist(), meg_std=meg_total.std.tolist(),
    )


def _preprocess_all(
    files: Sequence[Path],
    fields: BrainformerFields,
    data: DataSettings,
    arrays_dir: str | Path | None,
    jobs: int,
    on_done: Callable[[], None] | None,
) -> list[PreparedRecording]:
    """One scaled `PreparedRecording` per file; memory-mapped from `arrays_dir` when given."""
    target = None if arrays_dir is None else str(arrays_dir)
    if target is not None:
        Path(target).mkdir(parents=True, exist_ok=True)
    calls = [(str(f), name, fields, data, target) for f, name in zip(files, _unique_names(files))]
    recordings = _run_all(_preprocess_worker, calls, jobs, on_done)
    if target is not None:
        for rec in recordings:
            rec.eeg, rec.meg, rec.times = (
                np.load(Path(target) / f"{rec.name}_{k}.npy", mmap_mode="r") for k in _ARRAY_KINDS
            )
    return recordings


def prepare_recordings(
    paths: Iterable[str | Path],
    settings: ExperimentSettings,
    *,
    config: BrainformerFields | BrainformerConfig | None = None,
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
    data = settings.data
    if config is None:
        fields = fields_for_recording(read_raw(files[0]), settings.model)
    else:
        fields = BrainformerFields.from_config(config)
    # Headers first: a bad file late in a long list fails now, not after hours of work.
    for path in files:
        check_raw_compatible(read_raw(path), fields)

    def progress(stage: str) -> Callable[[], None] | None:
        return (lambda: on_progress(stage)) if on_progress else None

    if fields.eeg_mean is None or fields.meg_mean is None:
        fields = config = _fit_scaling(files, fields, data, jobs, progress("statistics"))
    recordings = _preprocess_all(files, fields, data, arrays_dir, jobs, progress("preprocess"))
    # A config given with its statistics is kept as it is (a trained model's, say).
    return PreparedData(config=fields if config is None else config, data=data, recordings=recordings)
