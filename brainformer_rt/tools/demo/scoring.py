"""Scoring the demo: running Pearson r, timestamp → recording sample, the true MEG.

Everything here is numpy (and MNE for reading the recording once): no model, no display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["CorrelationFigures", "DemoReference", "DemoScore", "PlaybackClock", "RunningCorrelation",
           "build_reference"]


class RunningCorrelation:
    """Pearson r per channel from running sums: add ``(n, channels)`` blocks in any order.

    Same conventions as :func:`brainformer.evaluation.pearson_r`: 0 where the prediction is
    constant, NaN where the truth is constant (a flat channel: nothing to predict).
    """

    def __init__(self, n_channels: int):
        self.n = 0
        self._sums = np.zeros((5, n_channels), dtype=np.float64)  # Σt, Σp, Σt², Σp², Σtp

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        """``truth``, ``predicted``: ``(n, channels)``, same units."""
        if truth.shape[0] == 0:
            return
        t = np.asarray(truth, dtype=np.float64)
        p = np.asarray(predicted, dtype=np.float64)
        self._sums[0] += t.sum(axis=0)
        self._sums[1] += p.sum(axis=0)
        self._sums[2] += np.einsum("nc,nc->c", t, t)
        self._sums[3] += np.einsum("nc,nc->c", p, p)
        self._sums[4] += np.einsum("nc,nc->c", t, p)
        self.n += t.shape[0]

    def r(self) -> np.ndarray:
        """``(channels,)`` Pearson r of everything added so far (NaN with fewer than 2 samples)."""
        if self.n < 2:
            return np.full(self._sums.shape[1], np.nan)
        st, sp, stt, spp, stp = self._sums
        n = float(self.n)
        var_t = stt - st * st / n
        var_p = spp - sp * sp / n
        cov = stp - st * sp / n
        # Cancellation leaves ~1e-16 relative noise in a constant channel's variance.
        flat_t = var_t <= 1e-12 * np.maximum(stt, np.finfo(float).tiny)
        flat_p = var_p <= 1e-12 * np.maximum(spp, np.finfo(float).tiny)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(var_t * var_p)
        r = np.where(flat_p, 0.0, r)
        return np.where(flat_t, np.nan, r)


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


@dataclass(frozen=True)
class PlaybackClock:
    """How the player maps its samples to the recording.

    Sample ``k`` of the stream (``k = 0`` the first one pushed) is recording sample
    ``(start_sample + k) mod n_samples`` and carries the timestamp ``t_start + k / sfreq_hz``.
    """

    t_start: float
    start_sample: int
    n_samples: int
    sfreq_hz: float

    def stream_samples(self, timestamps: np.ndarray) -> np.ndarray:
        """``(n,)`` timestamps → ``(n,)`` int64 stream sample numbers ``k``."""
        return np.rint((np.asarray(timestamps, dtype=np.float64) - self.t_start) * self.sfreq_hz).astype(np.int64)

    def recording_samples(self, k: np.ndarray) -> np.ndarray:
        return (self.start_sample + k) % self.n_samples


@dataclass
class DemoReference:
    """What the live predictions are compared with, computed once from the recording.

    Attributes:
        meg_true: ``(n_rows, n_meg)`` float32 true MEG at the model rate, preprocessed exactly as
            for training (scaled when the model has statistics).
        eeg_played: ``(n_samples, n_eeg)`` float32 the EEG the player plays (file order).
        recording_sfreq_hz: rate of the recording (and of the stream).
        decimation: recording samples per model sample.
        parts: ``{"train"|"validation"|"test": (start_row, stop_row)}`` from ``split_parts``.
        settle_rows: rows dropped after a (re)start of the filters.
        meg_names, meg_types: the model's MEG channels (``mag``/``grad``), payload order.
        scaling: the model's MEG scaling (``ChannelScaling``) or None (physical units).
        clean: ``(n_rows,)`` bool, rows outside every heartbeat and blink window (all True
            when the recording's artefacts are unknown), as in ``brainformer evaluate``.
        artefacts: what was found (``brainformer.evaluation.ArtefactEvents``), or None.
        delay: the delay the model's filters put on the brain signal
            (`brainformer_rt.serving.delay.published_delay`), or None: what the latency hides.
    """

    meg_true: np.ndarray
    eeg_played: np.ndarray
    recording_sfreq_hz: float
    decimation: int
    parts: dict
    settle_rows: int
    meg_names: list
    meg_types: list
    scaling: Any = None
    clean: Optional[np.ndarray] = None
    artefacts: Any = None
    delay: Optional[dict] = None

    def __post_init__(self) -> None:
        if self.clean is None:
            self.clean = np.ones(self.n_rows, dtype=bool)

    @property
    def n_rows(self) -> int:
        return int(self.meg_true.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.eeg_played.shape[0])

    @property
    def model_sfreq_hz(self) -> float:
        return self.recording_sfreq_hz / self.decimation

    def start_sample(self) -> int:
        """Recording sample the player starts at: ``settle_rows`` before the scored held-out
        rows, so the held-out part comes first and the daemon's filters have settled by then."""
        return max(self.parts["test"][0] - self.settle_rows, 0) * self.decimation

    def rows(self, recording_samples: np.ndarray) -> np.ndarray:
        """Recording samples → rows of ``meg_true`` (nearest model-rate sample)."""
        if self.decimation == 1:
            return recording_samples
        return np.rint(recording_samples / self.decimation).astype(np.int64) % self.n_rows

    def to_scaled(self, physical: np.ndarray) -> np.ndarray:
        """Daemon output ``(n, n_meg)`` T, T/m → the units of ``meg_true``."""
        values = np.asarray(physical, np.float64)
        return values if self.scaling is None else self.scaling.apply(values)

    def to_physical(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64)
        return values if self.scaling is None else self.scaling.invert(values)


def build_reference(recording: Path, model_config: Any) -> DemoReference:
    """Preprocess ``recording`` with the model's config (the training path).

    ``model_config`` is anything with the config's attributes (the preprocessing reads them by
    name), so the demo's own process can pass the fields of ``config.json`` without importing
    the model package. Raises ``ValueError`` naming the recording when the model cannot be
    scored on it.
    """
    import mne

    from brainformer.data import split_parts
    from brainformer.evaluation.artefacts import ArtefactMask, detect_artefacts
    from brainformer.preprocessing import PreprocessingError, decimation_factor, meg_scaling, preprocess_recording
    from brainformer.settings import DataSettings
    from brainformer_rt.serving.delay import published_delay
    from brainformer_rt.tools.player import RecordingSource

    raw = mne.io.read_raw_fif(recording, allow_maxshield=True, preload=True, verbose="error")
    try:
        decimation = decimation_factor(float(raw.info["sfreq"]), float(model_config.sfreq_hz))
        preprocessed = preprocess_recording(raw, model_config)
        scaling = meg_scaling(model_config)
        delay = published_delay(model_config)
    except PreprocessingError as error:
        raise ValueError(f"the model cannot be used on {recording.name}: {error}") from None
    data = DataSettings()
    parts = split_parts(preprocessed.n_samples, preprocessed.sfreq_hz, data)
    if parts["test"][1] - parts["test"][0] < 2:
        raise ValueError(f"{recording.name} is too short for a held-out part")
    played = RecordingSource.from_file(recording).data  # exactly what the player sends
    # The same heartbeat and blink windows as `brainformer evaluate`, over every row.
    artefacts = detect_artefacts(raw)
    mask = ArtefactMask.for_rows(artefacts, 0, preprocessed.n_samples, decimation)
    return DemoReference(
        meg_true=preprocessed.meg, eeg_played=played, recording_sfreq_hz=float(raw.info["sfreq"]),
        decimation=decimation, parts=parts, settle_rows=int(round(data.settle_s * preprocessed.sfreq_hz)),
        meg_names=list(model_config.meg_channel_names), meg_types=list(model_config.meg_channel_types),
        scaling=scaling, clean=mask.clean, artefacts=artefacts, delay=delay,
    )


@dataclass
class CorrelationFigures:
    """Mean r over channels by sensor type, and how many samples they rest on."""

    mag: float
    grad: float
    all: float
    n_samples: int


class DemoScore:
    """Everything measured in the demo process from the ZeroMQ output and the EEG stream.

    State (all of it): the counters below, the latencies of every message, the running
    correlations (held-out and in-sample, each on all and on clean rows), and the first
    prediction seen for each recording row (for the plot).
    """

    def __init__(self, reference: DemoReference, clock: PlaybackClock, hop_samples: int):
        self.reference = reference
        self.clock = clock
        self.hop_samples = hop_samples
        n_meg = len(reference.meg_names)
        self.held_out = RunningCorrelation(n_meg)
        self.in_sample = RunningCorrelation(n_meg)
        self.held_out_clean = RunningCorrelation(n_meg)  # outside heartbeat and blink windows
        self.in_sample_clean = RunningCorrelation(n_meg)
        self.latencies_s: list[float] = []
        self.messages = 0
        self.messages_missed = 0  # ZeroMQ seq gaps: served but lost before this process read them
        self.samples_out = 0
        self.windows_skipped_estimate = 0
        self._last_k: Optional[int] = None
        self.newest_k = -1  # newest predicted stream sample
        self.eeg_newest_k = -1  # newest EEG stream sample seen
        self.eeg_checked = 0
        self.eeg_mismatched = 0
        # First prediction of each row, in physical units (bounded: one recording's worth).
        self.first_prediction = np.full((reference.n_rows, n_meg), np.nan, dtype=np.float32)
        self._types = np.asarray(reference.meg_types)

    # -- input ---------------------------------------------------------------------------------
    def add_message(self, data: np.ndarray, timestamps: np.ndarray, latency_s: float) -> None:
        """One ZeroMQ message: ``data (n, n_meg)`` physical units, ``timestamps (n,)``."""
        ref = self.reference
        self.messages += 1
        self.latencies_s.append(latency_s)
        n = timestamps.shape[0]
        self.samples_out += n
        k = self.clock.stream_samples(timestamps)
        # Windows the daemon did not run: a message longer than a hop, or a hole before it.
        hop_raw = self.hop_samples * ref.decimation
        missing = 0 if self._last_k is None else max(int(k[0]) - self._last_k - ref.decimation, 0)
        self.windows_skipped_estimate += max(n // self.hop_samples - 1, 0) + missing // hop_raw
        self._last_k = int(k[-1])
        self.newest_k = max(self.newest_k, int(k[-1]))
        rows = ref.rows(self.clock.recording_samples(k))
        # The daemon's filters start at stream sample 0: its first second is still settling.
        settled = k >= ref.settle_rows * ref.decimation
        predicted = ref.to_scaled(data)
        clean = ref.clean[rows]
        for correlation, clean_correlation, part in ((self.held_out, self.held_out_clean, "test"),
                                                     (self.in_sample, self.in_sample_clean, "train")):
            start, stop = ref.parts[part]
            mask = settled & (rows >= start) & (rows < stop)
            if mask.any():
                correlation.add(ref.meg_true[rows[mask]], predicted[mask])
            mask &= clean
            if mask.any():
                clean_correlation.add(ref.meg_true[rows[mask]], predicted[mask])
        new = np.isnan(self.first_prediction[rows, 0])
        if new.any():
            self.first_prediction[rows[new]] = data[new]

    def add_eeg(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """EEG read from the player's stream: checks the timestamp → recording mapping."""
        if timestamps.shape[0] == 0:
            return
        k = self.clock.stream_samples(timestamps)
        expected = self.reference.eeg_played[self.clock.recording_samples(k)]
        equal = np.all(expected == data, axis=1)
        self.eeg_checked += int(equal.shape[0])
        self.eeg_mismatched += int(equal.shape[0] - equal.sum())
        self.eeg_newest_k = max(self.eeg_newest_k, int(k[-1]))

    # -- figures -------------------------------------------------------------------------------
    @property
    def samples_in(self) -> int:
        """EEG samples the stream has carried so far (the newest one seen, counted from 0)."""
        return max(self.eeg_newest_k, self.newest_k) + 1

    def recording_position_s(self) -> float:
        """Where in the recording the newest prediction is, in seconds."""
        if self.newest_k < 0:
            return math.nan
        return float(self.clock.recording_samples(np.array([self.newest_k]))[0]) / self.reference.recording_sfreq_hz

    def part_now(self) -> str:
        if self.newest_k < 0:
            return "–"
        row = int(self.reference.rows(self.clock.recording_samples(np.array([self.newest_k])))[0])
        for part in ("train", "validation", "test"):
            start, stop = self.reference.parts[part]
            if start <= row < stop:
                return {"test": "held-out part", "train": "training part",
                        "validation": "validation part (not scored)"}[part]
        return "settling (not scored)"

    def figures(self, correlation: RunningCorrelation) -> CorrelationFigures:
        r = correlation.r()
        return CorrelationFigures(
            mag=_nanmean(r[self._types == "mag"]), grad=_nanmean(r[self._types == "grad"]),
            all=_nanmean(r), n_samples=correlation.n,
        )

    def delay_budget(self) -> Any:
        """The delay as the brain sees it (`serving.delay.DelayBudget`): the filters' group delay
        at the band centre + the hop wait + the median latency measured here; None when the
        model's delay is unknown."""
        from brainformer_rt.serving.delay import delay_budget

        if self.reference.delay is None:
            return None
        median = self.latency_ms()["median"]
        return delay_budget(self.reference.delay, self.hop_samples, self.reference.model_sfreq_hz,
                            None if math.isnan(median) else median)

    def latency_ms(self) -> dict:
        if not self.latencies_s:
            return {"n": 0, "median": math.nan, "p99": math.nan, "max": math.nan}
        values = np.asarray(self.latencies_s) * 1e3
        median, p99 = np.percentile(values, [50, 99])
        return {"n": int(values.size), "median": float(median), "p99": float(p99), "max": float(values.max())}
