"""Offline: whole MNE recordings through the same streaming path as the daemon.

Channels are picked by name in the config's order, MEG gets the file's SSP projections, and the
samples are fed to `eeg_preprocessor` / `meg_preprocessor` in chunks, so a recording processed
here equals what the daemon computes online. Errors name the file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from brainformer.preprocessing.errors import PreprocessingError
from brainformer.preprocessing.filters import (
    PreprocessingSpec,
    decimation_factor,
    eeg_preprocessor,
    is_zero_phase_target,
    meg_preprocessor,
    zero_phase_backward_pass,
)

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "PreprocessedRecording",
    "check_raw_compatible",
    "decimation_factor_for_raw",
    "finish_meg_target",
    "iter_preprocessed_chunks",
    "needs_resampling",
    "preprocess_recording",
    "raw_source_name",
]

logger = logging.getLogger(__name__)

#: Samples per chunk when a whole recording is run through the streaming preprocessor offline.
DEFAULT_CHUNK_SAMPLES = 16384


@dataclass
class PreprocessedRecording:
    """A recording after preprocessing, at the model rate.

    Attributes:
        eeg: `(n, n_eeg)` float32, model EEG channel order (scaled if the config has statistics).
        meg: `(n, n_meg)` float32, model MEG channel order (scaled if the config has statistics).
        times: `(n,)` float64 seconds from the first sample of the recording.
        sfreq_hz: rate of the rows (the input rate divided by the decimation factor).
        source: the file the recording came from (for messages).
    """

    eeg: np.ndarray
    meg: np.ndarray
    times: np.ndarray
    sfreq_hz: float
    source: str = "<in-memory raw>"

    @property
    def n_samples(self) -> int:
        return int(self.eeg.shape[0])


def raw_source_name(raw: Any) -> str:
    """The file a raw object was read from, or a placeholder for in-memory data."""
    filenames = [f for f in (getattr(raw, "filenames", None) or ()) if f is not None]
    return str(Path(filenames[0])) if filenames else "<in-memory raw>"


def _pick_indices(raw: Any, names: Sequence[str], modality: str, source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(raw.ch_names)}
    missing = [name for name in names if name not in index]
    if missing:
        shown = ", ".join(missing[:10]) + (f", … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise PreprocessingError(f"{source}: {modality.upper()} channels of the model config are missing from the file: {shown}")
    return np.array([index[name] for name in names], dtype=np.int64)


def _meg_projector(raw: Any, meg_names: Sequence[str], source: str) -> np.ndarray | None:
    """`(n_meg, n_meg)` SSP projector from the file's MEG-only projections, or None if none.

    Projections that touch non-MEG channels (e.g. an EEG average reference) are left out: EEG is
    referenced by the preprocessing itself, the same way online and offline.
    """
    from mne.proj import make_projector

    meg_set = set(meg_names)
    projs = [p for p in raw.info["projs"] if set(p["data"]["col_names"]) <= meg_set]
    skipped = [p["desc"] for p in raw.info["projs"] if not set(p["data"]["col_names"]) <= meg_set]
    if skipped:
        logger.info("%s: projections not applied to MEG (they involve other channels): %s", source, skipped)
    if not projs:
        return None
    # Bad channels are left out of the projection vectors, as `raw.apply_proj()` does.
    projector, n_vectors, _ = make_projector(projs, list(meg_names), bads=list(raw.info["bads"]))
    logger.debug("%s: applying %d SSP vectors to MEG", source, n_vectors)
    return np.asarray(projector.real, dtype=np.float64)


def _check_finite(data: np.ndarray, names: Sequence[str], times: np.ndarray, source: str) -> None:
    """Raise naming the file, time range and channels of the first non-finite values."""
    finite = np.isfinite(data)
    if finite.all():
        return
    bad_samples = np.flatnonzero(~finite.all(axis=0))
    bad_channels = [names[i] for i in np.flatnonzero(~finite.all(axis=1))]
    shown = ", ".join(bad_channels[:5]) + (f", … ({len(bad_channels)} in all)" if len(bad_channels) > 5 else "")
    raise PreprocessingError(
        f"{source}: NaN/Inf values at {times[bad_samples[0]]:.3f}–{times[bad_samples[-1]]:.3f} s "
        f"(channels {shown}); remove or repair that segment first"
    )


def needs_resampling(input_sfreq_hz: float, model_sfreq_hz: float) -> bool:
    """True when `input_sfreq_hz` is neither the model rate nor an integer multiple of it: such
    input is first resampled to the model rate (`brainformer.adaptation.StreamResampler`, the
    resampler of the daemon's adaptation stage), then preprocessed at the model rate."""
    try:
        decimation_factor(input_sfreq_hz, model_sfreq_hz)
    except PreprocessingError:
        return math.isfinite(input_sfreq_hz) and input_sfreq_hz > 0
    return False


def check_raw_compatible(raw: Any, config: Any) -> None:
    """Raise `PreprocessingError` naming the file if `raw` lacks a model channel or has an unusable rate.

    Reads the header only: cheap enough to check every file of a dataset before processing any.
    """
    source = raw_source_name(raw)
    _pick_indices(raw, list(config.eeg_channel_names), "eeg", source)
    _pick_indices(raw, list(config.meg_channel_names), "meg", source)
    decimation_factor_for_raw(raw, config)


def iter_preprocessed_chunks(
    raw: Any, config: Any, chunk_samples: int = DEFAULT_CHUNK_SAMPLES, resample: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream a raw recording through the preprocessors, one chunk at a time.

    Reads the file lazily (only `chunk_samples` input samples in memory at once), applies the
    file's MEG SSP projections, and yields ``(eeg (m, n_eeg) float32, meg (m, n_meg) float32,
    times (m,) float64)`` per chunk. With `resample`, a rate that is neither the model's nor an
    integer multiple of it is first resampled to the model rate by the adaptation stage's
    streaming resampler (`needs_resampling`; times are then those of the EEG instants each output
    row represents); without it, such a rate is refused as before.
    """
    if chunk_samples < 1:
        raise PreprocessingError(f"chunk_samples must be >= 1, got {chunk_samples}")
    source = raw_source_name(raw)
    eeg_names = list(config.eeg_channel_names)
    meg_names = list(config.meg_channel_names)
    eeg_idx = _pick_indices(raw, eeg_names, "eeg", source)
    meg_idx = _pick_indices(raw, meg_names, "meg", source)
    sfreq_hz = float(raw.info["sfreq"])
    eeg_resampler = meg_resampler = None
    if resample and needs_resampling(sfreq_hz, float(config.sfreq_hz)):
        from brainformer.adaptation.resampling import StreamResampler

        model_hz = float(config.sfreq_hz)
        # The converter is chosen as the daemon chooses it (from the model's band): one code path.
        eeg_resampler = StreamResampler(sfreq_hz, model_hz, len(eeg_names), np.float64, chunk_samples,
                                        lowpass_hz=config.lowpass_hz)
        meg_resampler = StreamResampler(sfreq_hz, model_hz, len(meg_names), np.float64, chunk_samples,
                                        lowpass_hz=config.lowpass_hz)
        logger.info("%s: resampling %g Hz to the model rate %g Hz (%s)", source, sfreq_hz, model_hz,
                    eeg_resampler.method)
        sfreq_hz = model_hz
    try:
        eeg_pre = eeg_preprocessor(config, sfreq_hz)
        meg_pre = meg_preprocessor(config, sfreq_hz)
    except PreprocessingError as err:
        raise PreprocessingError(f"{source}: {err}") from None
    projector = _meg_projector(raw, meg_names, source)
    picks = np.concatenate([eeg_idx, meg_idx])
    n_eeg = len(eeg_idx)
    all_times = raw.times
    for start in range(0, raw.n_times, chunk_samples):
        stop = min(start + chunk_samples, raw.n_times)
        data = raw.get_data(picks=picks, start=start, stop=stop)  # (channels, n) physical units
        times = all_times[start:stop]
        _check_finite(data, eeg_names + meg_names, times, source)
        eeg_raw = data[:n_eeg].T  # (n, n_eeg)
        meg_raw = data[n_eeg:].T  # (n, n_meg)
        if projector is not None:
            meg_raw = meg_raw @ projector.T
        if eeg_resampler is not None:
            last = stop == raw.n_times  # offline: flush the samples the resampler holds back
            eeg_raw, times = eeg_resampler.process(eeg_raw, times, last=last)
            meg_raw, _ = meg_resampler.process(meg_raw, None, last=last)
        eeg_out, out_times = eeg_pre.process(eeg_raw, times)
        meg_out, _ = meg_pre.process(meg_raw, None)
        yield eeg_out, meg_out, out_times


def preprocess_recording(
    raw: Any, config: Any, chunk_samples: int = DEFAULT_CHUNK_SAMPLES, resample: bool = False
) -> PreprocessedRecording:
    """Preprocess a whole MNE raw recording offline through the streaming path.

    Channels are picked by name in the config's order; MEG gets the file's SSP projections; EEG and
    MEG run through `eeg_preprocessor` / `meg_preprocessor` in chunks of `chunk_samples`, so the
    result equals what the daemon computes online. Scaled if the config holds statistics. With
    `resample`, any other rate than the model's or an integer multiple is resampled first (see
    `iter_preprocessed_chunks`).

    Raises:
        PreprocessingError: naming the file, for missing channels, an unusable rate or NaN/Inf.
    """
    resample = resample and needs_resampling(float(raw.info["sfreq"]), float(config.sfreq_hz))
    decimation = 1 if resample else decimation_factor_for_raw(raw, config)
    # Resampled: at most one row more than the rate ratio gives (the count is soxr's).
    n_out = int(math.ceil(raw.n_times * float(config.sfreq_hz) / float(raw.info["sfreq"]))) + 1 if resample else (
        int(-(-raw.n_times // decimation))
    )
    eeg = np.empty((n_out, len(config.eeg_channel_names)), np.float32)
    meg = np.empty((n_out, len(config.meg_channel_names)), np.float32)
    times = np.empty(n_out, np.float64)
    row = 0
    for eeg_chunk, meg_chunk, time_chunk in iter_preprocessed_chunks(raw, config, chunk_samples, resample):
        m = eeg_chunk.shape[0]
        eeg[row : row + m] = eeg_chunk
        meg[row : row + m] = meg_chunk
        times[row : row + m] = time_chunk
        row += m
    finish_meg_target(meg[:row], config)
    if resample:
        eeg, meg, times = eeg[:row], meg[:row], times[:row]
        sfreq_hz = float(config.sfreq_hz)
    else:
        assert row == n_out, (row, n_out)  # decimation keeps samples 0, f, 2f, …
        sfreq_hz = float(raw.info["sfreq"]) / decimation
    return PreprocessedRecording(eeg=eeg, meg=meg, times=times, sfreq_hz=sfreq_hz, source=raw_source_name(raw))


def finish_meg_target(meg: np.ndarray, config: Any) -> None:
    """Finish a whole recording's MEG `(n, n_meg)` from `iter_preprocessed_chunks` in place: for a
    zero-phase target, its backward pass and scaling; nothing for a causal one."""
    if is_zero_phase_target(config):
        zero_phase_backward_pass(PreprocessingSpec.for_meg(config, float(config.sfreq_hz)), meg)


def decimation_factor_for_raw(raw: Any, config: Any) -> int:
    """`decimation_factor` for a raw recording, with the file named in the error."""
    try:
        return decimation_factor(float(raw.info["sfreq"]), float(config.sfreq_hz))
    except PreprocessingError as err:
        raise PreprocessingError(f"{raw_source_name(raw)}: {err}") from None
