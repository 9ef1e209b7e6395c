"""The delay as the brain sees it, measured: the effective delay of a system's published
prediction against the brain, and the delay budget beside the transport latency.

The players play a recording whose true MEG is known, and each writes its playback clock
(``simulate --clock-file``), so a published sample's timestamp names the recording sample it was
predicted for (`PlaybackClock`, the demo's mapping). The payload of one output (the first
stream's LSL outlet) is kept over the measured period, laid out on the stream's sample grid, and
compared with the **zero-phase truth**: the recording's MEG band-passed forward and backward in
the model's target band (`preprocess_recording` with ``target_phase = "zero_phase"``), the brain
signal in band with no delay added. `brainformer.evaluation.band_effective_delays` finds the lag
of the best match, overall and per band (signal lag ≈ phase delay, envelope lag ≈ group delay),
with r at that lag and at zero lag.

Each prediction carries the timestamp of its EEG sample, so transport and compute are not in the
effective delay: it is how late the model's output is against the brain (for a causal target,
the filters' delay). What a closed loop feels on top is in the **budget**
(`brainformer_rt.serving.delay.DelayBudget`): the filters' group delay at the band centre, the
mean hop wait and the median end-to-end latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from brainformer_rt.tools.demo.files import read_json
from brainformer_rt.tools.demo.scoring import PlaybackClock

__all__ = ["BANDS", "DelayProbe", "PayloadKeeper", "ZeroPhaseTruth", "effective_delays", "read_clock"]

#: The effective delays reported, in table order.
BANDS = ("all", "theta", "theta envelope", "alpha", "alpha envelope", "beta", "beta envelope")


class PayloadKeeper:
    """Every message one output delivered, with its data: ``(received_s, timestamps (n,), data (n, channels))``.
    One writer thread (list.append is atomic)."""

    def __init__(self) -> None:
        self.items: List[Tuple[float, np.ndarray, np.ndarray]] = []

    def add(self, received_s: float, timestamps: np.ndarray, data: np.ndarray) -> None:
        self.items.append((received_s, timestamps, data))

    def between(self, start_s: float, end_s: float) -> Tuple[np.ndarray, np.ndarray]:
        """``(timestamps (n,), data (n, channels))`` of the messages received in ``[start_s, end_s)``."""
        kept = [(t, d) for received, t, d in self.items if start_s <= received < end_s]
        if not kept:
            return np.zeros(0), np.zeros((0, 0), np.float32)
        return np.concatenate([t for t, _ in kept]), np.concatenate([d for _, d in kept])


def read_clock(path: Path) -> Optional[PlaybackClock]:
    """The playback clock a player wrote (``simulate --clock-file``), or None while it has not
    (or for an endless source)."""
    values = read_json(path)
    if values.get("n_samples") is None or values.get("start_sample") is None:
        return None
    return PlaybackClock(t_start=float(values["t_start"]), start_sample=int(values["start_sample"]),
                         n_samples=int(values["n_samples"]), sfreq_hz=float(values["sfreq_hz"]))


@dataclass
class ZeroPhaseTruth:
    """The recording's MEG as it is now, in the model's target band.

    Attributes:
        meg: ``(n_rows, n_meg)`` float32 at the model rate (scaled like the model's target: r is
            blind to a channel's scale).
        sfreq_hz: the model rate.
        recording_sfreq_hz: the recording's rate.
    """

    meg: np.ndarray
    sfreq_hz: float
    recording_sfreq_hz: float

    @classmethod
    def from_recording(cls, recording: str | Path, model_fields: Any) -> "ZeroPhaseTruth":
        """The zero-phase target of ``model_fields`` computed over ``recording`` (ValueError naming
        the recording when the model's preprocessing cannot run on it)."""
        import mne

        from brainformer.preprocessing import PreprocessingError, preprocess_recording

        raw = mne.io.read_raw_fif(recording, allow_maxshield=True, preload=True, verbose="error")
        try:
            zero_phase = preprocess_recording(raw, model_fields.replace(target_phase="zero_phase"))
        except PreprocessingError as error:
            raise ValueError(f"the zero-phase truth of {Path(recording).name}: {error}") from None
        return cls(meg=zero_phase.meg, sfreq_hz=float(zero_phase.sfreq_hz), recording_sfreq_hz=float(raw.info["sfreq"]))

    def aligned(self, clock: PlaybackClock, timestamps: np.ndarray, data: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
        """The published samples laid out on the model's sample grid from the first to the last,
        and the truth at the same instants: ``(truth (m, n_meg), predicted (m, n_meg), missing)``.

        Rows no message carried (windows skipped, messages lost) are filled with the prediction's
        mean: they add nothing to a correlation, and shift no lag. ``clock`` must be the player's
        at the recording's own rate (a resampled source's samples do not fall on its grid).
        """
        if not np.isclose(clock.sfreq_hz, self.recording_sfreq_hz, rtol=1e-6):
            raise ValueError(f"the player plays at {clock.sfreq_hz:g} Hz, not at the recording's "
                             f"{self.recording_sfreq_hz:g} Hz")
        per_row = self.recording_sfreq_hz / self.sfreq_hz  # recording samples per model sample
        k = clock.stream_samples(timestamps)
        index = np.rint(k / per_row).astype(np.int64)
        first = int(index.min())
        span = int(index.max()) - first + 1
        predicted = np.empty((span, data.shape[1]), dtype=np.float64)
        published = np.zeros(span, dtype=bool)
        predicted[index - first] = data
        published[index - first] = True
        predicted[~published] = predicted[published].mean(axis=0)
        # Each grid row's recording sample, and the truth's row of it (the recording wraps).
        grid_k = np.rint((first + np.arange(span)) * per_row).astype(np.int64)
        rows = np.rint(clock.recording_samples(grid_k) / per_row).astype(np.int64) % self.meg.shape[0]
        return self.meg[rows], predicted, int(span - published.sum())


def effective_delays(truth: ZeroPhaseTruth, clock: PlaybackClock, timestamps: np.ndarray,
                     data: np.ndarray) -> Dict[str, Any]:
    """The effective delay of the published ``data (n, n_meg)`` stamped ``timestamps (n,)``
    against the zero-phase truth, overall and per band (`BANDS`): ``lag_ms``, ``r_at_lag``,
    ``r_at_zero`` each, the samples measured and the fraction no message carried. ValueError
    when there are too few samples to scan the lags."""
    from brainformer.evaluation import EvaluationError, band_effective_delays

    if len(timestamps) == 0:
        raise ValueError("no prediction was received")
    expected, predicted, missing = truth.aligned(clock, timestamps, data)
    try:
        delays = band_effective_delays(expected, predicted, truth.sfreq_hz)
    except EvaluationError as error:
        raise ValueError(str(error)) from None
    return {
        "against": "the recording's MEG band-passed with zero phase in the model's target band (no delay added)",
        "samples": int(predicted.shape[0]),
        "missing_fraction": missing / predicted.shape[0],
        "bands": {name: delays[name].to_dict() for name in BANDS},
    }


@dataclass(frozen=True)
class DelayProbe:
    """How one phase's effective delay is measured: the run's truth, and the stream whose LSL
    output is kept, with its player's clock file."""

    truth: ZeroPhaseTruth
    stream: str
    clock_path: Path

    def measure(self, payload: PayloadKeeper, start_s: float, end_s: float) -> Dict[str, Any]:
        """`effective_delays` of what ``payload`` received in ``[start_s, end_s)``; ``{"error":
        why}`` when it cannot be measured (the run's other figures stand)."""
        clock = read_clock(self.clock_path)
        if clock is None:
            return {"error": f"the player of {self.stream} wrote no playback clock ({self.clock_path.name})"}
        try:
            return {"stream": self.stream, "output": "lsl",
                    **effective_delays(self.truth, clock, *payload.between(start_s, end_s))}
        except ValueError as error:
            return {"error": str(error)}
