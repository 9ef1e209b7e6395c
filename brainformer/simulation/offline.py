"""Offline simulation: a whole recording as an `mne.io.RawArray`, and written to a FIF + sidecar.

The recording is built in memory, or, above `IN_MEMORY_LIMIT_BYTES`, in a temporary float64
memory-mapped file next to the output (8 bytes per channel and sample) that MNE writes from and
that is deleted afterwards; the FIF itself is float32 and split into 2 GB parts by MNE.

No console output here: a caller that wants a progress bar passes a ``progress(done, total)``
callback (the `simulate-data` command does).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from brainformer.simulation.generator import CHUNK_SECONDS, _ActivityGenerator
from brainformer.simulation.layouts import (
    DEFAULT_SPACING_MM,
    _base_info,
    _channel_groups,
    _check_layout,
    _check_nonnegative_int,
    _check_sfreq,
    _check_spacing,
    _n_samples,
    layout_info,
)
from brainformer.simulation.plan import _plan
from brainformer.simulation.planted import CALIBRATION_SECONDS, CALIBRATION_SEED, _PlantedTerm, calibrated_term, check_planted_share
from brainformer.simulation.truth import SimulationTruth, truth_path

logger = logging.getLogger(__name__)

#: Simulated recordings larger than this (float64 bytes) are built in a memory-mapped temp file.
IN_MEMORY_LIMIT_BYTES = 1 << 30

#: ``progress(samples_done, samples_total)``, called after each generated chunk.
ProgressCallback = Callable[[int, int], None]


def simulate(
    layout: str,
    duration_s: float,
    sfreq_hz: float | None = None,
    seed: int = 0,
    *,
    subject: int = 0,
    spacing_mm: float = DEFAULT_SPACING_MM,
    planted_share: float = 0.0,
    progress: ProgressCallback | None = None,
    out_array: np.ndarray | None = None,
) -> tuple[Any, SimulationTruth]:
    """Simulate a paired EEG/MEG recording.

    Args:
        layout: ``"sample"`` or ``"ds000117"``.
        duration_s: length in seconds.
        sfreq_hz: sampling rate; None for the layout's own (600.615 Hz / 1100 Hz).
        seed: the activity (time courses and noise); same seed → same samples.
        subject: the anatomy-level draw (orientations, generator sites and rhythms, noise levels).
        spacing_mm: source grid spacing (finer = more sources, slower forward).
        planted_share: 0 (default) for none, else add the planted non-linear term
            (`brainformer.simulation.planted`) holding this share of each MEG channel's variance
            in 1–40 Hz; the EEG is the same either way. Its time course goes into the truth.
        progress: optional ``progress(samples_done, samples_total)``, called after each chunk.
        out_array: optional preallocated float64 `(n_channels, n_samples)` array (e.g. a
            `numpy.memmap`) to build the recording in; channels in the layout's order.

    Returns:
        `(raw, truth)`: an `mne.io.RawArray` with the layout's EEG and MEG channels in volts and
        T / T/m (no projections, no reference applied), and the `SimulationTruth`.
    """
    import mne

    _check_layout(layout)
    sfreq_hz = _check_sfreq(sfreq_hz, layout)
    n_samples = _n_samples(duration_s, sfreq_hz)
    seed = _check_nonnegative_int("seed", seed)
    subject = _check_nonnegative_int("subject", subject)
    spacing_mm = _check_spacing(spacing_mm)
    planted_share = check_planted_share(planted_share)
    info = layout_info(layout, sfreq_hz)
    eeg_idx, meg_idx, _ = _channel_groups(info)
    data = _output_array(out_array, len(info["ch_names"]), n_samples)
    plan = _plan(layout, sfreq_hz, subject, spacing_mm)
    planted = _planted_term(layout, sfreq_hz, subject, spacing_mm, planted_share) if planted_share > 0 else None
    generator = _ActivityGenerator(plan, seed, with_meg=True, planted=planted)
    planted_source = np.empty(n_samples, dtype=np.float32) if planted is not None else None
    # Plain slices when the channel groups are contiguous (they are for both layouts): no gathers.
    _fill(data, generator, _rows(eeg_idx), _rows(meg_idx), max(1, int(CHUNK_SECONDS * sfreq_hz)), progress, planted_source)
    raw = mne.io.RawArray(data, info, copy="auto", verbose="error")
    logger.info("simulated %s: %d samples at %g Hz, seed %d, subject %d", layout, n_samples, sfreq_hz, seed, subject)
    truth = dataclasses.replace(plan.truth, seed=seed)
    if planted is not None:
        truth = dataclasses.replace(truth, planted_share=planted_share, planted_meg_pattern=planted.meg_pattern,
                                    planted_source=planted_source)
    return raw, truth


@functools.lru_cache(maxsize=8)
def _planted_term(layout: str, sfreq_hz: float, subject: int, spacing_mm: float, share: float) -> _PlantedTerm:
    """The planted term of a subject, calibrated on EEG of its own seed (cached: minutes of EEG)."""
    plan = _plan(layout, sfreq_hz, subject, spacing_mm)
    eeg, _ = _ActivityGenerator(plan, CALIBRATION_SEED, with_meg=False).generate(int(CALIBRATION_SECONDS * sfreq_hz))
    return calibrated_term(plan, eeg, share)


def _output_array(out_array: np.ndarray | None, n_channels: int, n_samples: int) -> np.ndarray:
    """`out_array` once checked to be float64 `(n_channels, n_samples)`, else a new such array."""
    if out_array is None:
        return np.empty((n_channels, n_samples))
    if out_array.shape != (n_channels, n_samples) or out_array.dtype != np.float64:
        raise ValueError(f"out_array must be float64 of shape {(n_channels, n_samples)}, got {out_array.dtype} {out_array.shape}")
    return out_array


def _fill(
    data: np.ndarray,
    generator: _ActivityGenerator,
    eeg_rows: slice | list[int],
    meg_rows: slice | list[int],
    chunk: int,
    progress: ProgressCallback | None,
    planted_source: np.ndarray | None = None,
) -> None:
    """Write the generator's EEG and MEG into `data` `(channels, n_samples)`, `chunk` samples at a
    time, and the planted source into `planted_source` `(n_samples,)` when given."""
    n_samples = data.shape[1]
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        eeg, meg = generator.generate(stop - start)
        data[eeg_rows, start:stop] = eeg.T
        data[meg_rows, start:stop] = meg.T
        if planted_source is not None:
            planted_source[start:stop] = generator.planted_source
        if progress is not None:
            progress(stop, n_samples)


def _rows(indices: list[int]) -> slice | list[int]:
    if indices and list(indices) == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return list(indices)


def write_simulation(
    layout: str,
    duration_s: float,
    sfreq_hz: float | None,
    seed: int,
    out: str | Path,
    *,
    planted_share: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[Path, SimulationTruth, int]:
    """Simulate, write the FIF at `out` and its truth sidecar; returns (sidecar path, truth, samples).

    Everything is checked before anything is written: a bad argument (or an `out` that is not a
    ``.fif`` / ``.fif.gz`` file name) raises `ValueError` naming it.
    """
    out = Path(out)
    _check_layout(layout)
    rate = _check_sfreq(sfreq_hz, layout)
    n_samples = _n_samples(duration_s, rate)
    _check_nonnegative_int("seed", seed)
    check_planted_share(planted_share)
    if not (out.name.endswith(".fif") or out.name.endswith(".fif.gz")):
        raise ValueError(f"--out {out}: the file name must end in .fif (or .fif.gz)")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out}: is a directory, expected a FIF file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    n_channels = len(_base_info(layout)["ch_names"])
    nbytes = n_channels * n_samples * 8
    backing = None
    try:
        out_array = None
        if nbytes > IN_MEMORY_LIMIT_BYTES:
            backing = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp", delete=False)
            backing.close()
            logger.info("building %.1f GB in a memory-mapped temporary file %s", nbytes / 1e9, backing.name)
            out_array = np.memmap(backing.name, dtype=np.float64, mode="w+", shape=(n_channels, n_samples))
        raw, truth = simulate(layout, duration_s, rate, seed, planted_share=planted_share, progress=progress,
                              out_array=out_array)
        with warnings.catch_warnings():
            # MNE prefers names ending in raw.fif; any .fif name reads back the same.
            warnings.filterwarnings("ignore", message=".*does not conform to MNE naming conventions.*")
            raw.save(out, overwrite=True, verbose="error")
        del raw, out_array
    finally:
        if backing is not None:
            os.unlink(backing.name)
    return truth.save(truth_path(out)), truth, n_samples
