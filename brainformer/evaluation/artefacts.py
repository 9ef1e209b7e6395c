"""Heartbeats and blinks of a recording, and which scored rows they leave clean.

The cardiac field and eye blinks show in EEG and MEG alike, so a method that predicts them scores
well without saying anything about brain signal. They are found once, on the raw recording, with
MNE, and mapped onto the rows that are scored:

```
raw recording ─► detect_artefacts (MNE) ─► ArtefactEvents: R peaks and blinks, raw samples, notes
                                                 │
preprocessed rows [start, stop), decimation ─────┴─► ArtefactMask: clean / cardiac per row
```

- R peaks: `mne.preprocessing.find_ecg_events`, on an ECG channel when the recording has one,
  else on MNE's synthetic ECG (the mean of the magnetometers, or of the gradiometers). The synthetic ECG of a recording
  without a cardiac field (a simulation, noise) still yields "events"; they are kept only when
  their intervals are as regular as a heartbeat (`MAX_RR_VARIATION`), otherwise a note says why
  they were dropped.
- Blinks: `mne.preprocessing.find_eog_events` on the EOG channels; without one, a note says so
  and blinks are left out of the rule.
- A row is *cardiac* when it lies from `HEARTBEAT_WINDOW_S[0]` before to `HEARTBEAT_WINDOW_S[1]`
  after an R peak, and *clean* when it is neither cardiac nor within `BLINK_WINDOW_S` of a blink
  peak. The window reaches further after the peak than before because the QRS complex is followed
  by the T wave and because the causal band-pass the scores are computed through delays and
  smears both.

A simulated recording (`brainformer simulate-data`) holds neither: it is not searched, and every
row is clean. Importing this module costs numpy only; MNE is imported by `detect_artefacts`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainformer.evaluation.metrics import EvaluationError

logger = logging.getLogger(__name__)

#: Rows from this long before to this long after an R peak are cardiac, in seconds.
HEARTBEAT_WINDOW_S = (0.150, 0.250)
#: Rows within this long of a blink peak (either side) are left out, in seconds.
BLINK_WINDOW_S = 0.300
#: R–R intervals of detections on a synthetic ECG whose standard deviation exceeds this fraction
#: of their mean are no heartbeat: resting heart rhythm varies by a few per cent to about 15 %, the
#: peaks MNE picks in a signal without a cardiac field are spread at random.
MAX_RR_VARIATION = 0.25
#: Fewer detections than this cannot show a rhythm; they are kept as found.
_MIN_EVENTS_FOR_RHYTHM = 4
#: `brainformer simulate-data` writes this at the start of `info["description"]`.
_SIMULATION_DESCRIPTION = "brainformer simulation"


@dataclass(frozen=True)
class ArtefactEvents:
    """Heartbeats and blinks found in one raw recording.

    Attributes:
        sfreq_hz: rate of the raw recording.
        n_samples: samples of the raw recording.
        heartbeats: `(n_beats,)` int64 R peaks, samples from the recording's first sample (row 0
            of the preprocessing is sample 0).
        blinks: `(n_blinks,)` int64 blink peaks, same convention.
        ecg_source: the ECG channel used, `"synthetic ECG from the magnetometers"` (or
            gradiometers), or `"none"`.
        eog_source: the EOG channels used, or `"none"`.
        heart_rate_bpm: MNE's estimate, NaN without heartbeats.
        blinks_detected: False when there was no EOG channel (blinks are then not in the rule).
        notes: what could not be detected, and why.
    """

    sfreq_hz: float
    n_samples: int
    heartbeats: np.ndarray
    blinks: np.ndarray
    ecg_source: str = "none"
    eog_source: str = "none"
    heart_rate_bpm: float = math.nan
    blinks_detected: bool = False
    notes: tuple[str, ...] = ()

    @classmethod
    def none(cls, sfreq_hz: float, n_samples: int, note: str) -> "ArtefactEvents":
        """No artefacts (and one note saying why)."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(float(sfreq_hz), int(n_samples), empty, empty, notes=(note,))

    def to_dict(self) -> dict[str, Any]:
        return {
            "heartbeats": int(self.heartbeats.size),
            "blinks": int(self.blinks.size),
            "heart_rate_bpm": self.heart_rate_bpm if math.isfinite(self.heart_rate_bpm) else None,
            "ecg_source": self.ecg_source,
            "eog_source": self.eog_source,
            "blinks_detected": self.blinks_detected,
            "heartbeat_samples": self.heartbeats.tolist(),
            "blink_samples": self.blinks.tolist(),
            "notes": list(self.notes),
        }


def _is_simulation(raw: Any) -> bool:
    from brainformer.simulation import is_simulated

    filenames = [name for name in (getattr(raw, "filenames", None) or []) if name]
    if any(is_simulated(Path(name)) for name in filenames):
        return True
    return str(raw.info.get("description") or "").startswith(_SIMULATION_DESCRIPTION)


def detect_artefacts(raw: Any) -> ArtefactEvents:
    """Find the heartbeats and blinks of a raw MNE recording (read, not modified).

    Never raises for a recording without ECG or EOG: what is missing is named in `notes`.
    """
    sfreq = float(raw.info["sfreq"])
    n_samples = int(raw.n_times)
    if _is_simulation(raw):
        return ArtefactEvents.none(
            sfreq, n_samples, "simulated recording: the simulator adds no heartbeats or blinks; every sample is clean"
        )
    notes: list[str] = []
    heartbeats, ecg_source, heart_rate = _heartbeats(raw, notes)
    blinks, eog_source = _blinks(raw, notes)
    return ArtefactEvents(
        sfreq_hz=sfreq, n_samples=n_samples, heartbeats=heartbeats, blinks=blinks if blinks is not None else np.zeros(0, np.int64),
        ecg_source=ecg_source, eog_source=eog_source, heart_rate_bpm=heart_rate, blinks_detected=blinks is not None,
        notes=tuple(notes),
    )


def _filter_length(raw: Any) -> str:
    """MNE's default detection filter (10 s), shortened for a recording under 20 s: MNE rounds
    the length up to a power of two, and a filter longer than the signal distorts it."""
    duration_s = raw.n_times / float(raw.info["sfreq"])
    return "10s" if duration_s >= 2 * 10.0 else f"{0.4 * duration_s:.3f}s"


def _heartbeats(raw: Any, notes: list[str]) -> tuple[np.ndarray, str, float]:
    """`(R peaks, source, heart rate)`; no peaks (and a note) when none can be found."""
    import mne

    ecg_names = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, ecg=True)]
    # MNE's synthetic ECG averages the magnetometers, or the gradiometers when there are none.
    kinds = raw.get_channel_types(unique=True)
    sensors = "magnetometers" if "mag" in kinds else "gradiometers" if "grad" in kinds else None
    source = ecg_names[0] if ecg_names else f"synthetic ECG from the {sensors}"
    if not ecg_names and sensors is None:
        notes.append("no ECG channel and no MEG sensors for a synthetic ECG: heartbeats not detected")
        return np.zeros(0, np.int64), "none", math.nan
    try:
        events, _, heart_rate = mne.preprocessing.find_ecg_events(
            raw, ch_name=ecg_names[0] if ecg_names else None, filter_length=_filter_length(raw), verbose="error"
        )
    except (RuntimeError, ValueError) as err:  # MNE raises these for a signal it cannot use
        notes.append(f"heartbeats not detected ({source}): {err}")
        return np.zeros(0, np.int64), "none", math.nan
    peaks = np.sort(events[:, 0].astype(np.int64) - int(raw.first_samp))
    if peaks.size == 0:
        notes.append(f"no heartbeat found in the {source}")
        return peaks, source, math.nan
    if not ecg_names and peaks.size >= _MIN_EVENTS_FOR_RHYTHM:
        intervals = np.diff(peaks)
        variation = float(intervals.std() / intervals.mean())
        if variation > MAX_RR_VARIATION:
            notes.append(
                f"the {source} gives {peaks.size} peaks without a heart rhythm (R–R intervals vary by "
                f"{100 * variation:.0f} %, a heartbeat by at most {100 * MAX_RR_VARIATION:.0f} %): "
                "no cardiac field in the MEG, heartbeats not in the rule"
            )
            return np.zeros(0, np.int64), "none", math.nan
    return peaks, source, float(heart_rate)


def _blinks(raw: Any, notes: list[str]) -> tuple[np.ndarray | None, str]:
    """`(blink peaks, source)`; `None` (and a note) without an EOG channel."""
    import mne

    eog_names = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, eog=True)]
    if not eog_names:
        notes.append("no EOG channel: blinks not detected and not left out")
        return None, "none"
    try:
        events = mne.preprocessing.find_eog_events(raw, ch_name=eog_names, filter_length=_filter_length(raw), verbose="error")
    except (RuntimeError, ValueError) as err:
        notes.append(f"blinks not detected ({', '.join(eog_names)}): {err}")
        return None, "none"
    return np.sort(events[:, 0].astype(np.int64) - int(raw.first_samp)), ", ".join(eog_names)


@dataclass(frozen=True)
class ArtefactMask:
    """Which of the scored rows `[first_row, first_row + n)` are clean, and which are cardiac.

    Row `r` of the preprocessing is raw sample `r · decimation` (it keeps samples 0, f, 2f, …).

    Attributes:
        events: what was found in the raw recording.
        first_row: row of `clean[0]`.
        decimation: raw samples per row.
        clean: `(n,)` bool, True outside every heartbeat and blink window.
        cardiac: `(n,)` bool, True inside a heartbeat window.
    """

    events: ArtefactEvents
    first_row: int
    decimation: int
    clean: np.ndarray = field(repr=False)
    cardiac: np.ndarray = field(repr=False)

    @classmethod
    def for_rows(cls, events: ArtefactEvents, start: int, stop: int, decimation: int = 1) -> "ArtefactMask":
        """The mask of rows `[start, stop)` of a recording preprocessed with `decimation`."""
        if decimation < 1 or stop <= start or start < 0:
            raise EvaluationError(f"need decimation >= 1 and rows 0 <= start < stop, got {decimation}, [{start}, {stop})")
        samples = np.arange(start, stop, dtype=np.int64) * decimation
        # Bounds in whole samples, so that the rule is exact in time: −before ≤ (s − peak)/sfreq ≤ after.
        before, after = (int(math.floor(w * events.sfreq_hz + 1e-9)) for w in HEARTBEAT_WINDOW_S)
        blink = int(math.floor(BLINK_WINDOW_S * events.sfreq_hz + 1e-9))
        cardiac = _near(samples, events.heartbeats, before, after)
        blinking = _near(samples, events.blinks, blink, blink)
        return cls(events=events, first_row=int(start), decimation=int(decimation), clean=~(cardiac | blinking), cardiac=cardiac)

    @property
    def n_rows(self) -> int:
        return int(self.clean.size)

    @property
    def clean_share(self) -> float:
        return float(self.clean.mean()) if self.clean.size else math.nan

    @property
    def notes(self) -> tuple[str, ...]:
        return self.events.notes

    def events_in_rows(self) -> tuple[int, int]:
        """`(heartbeats, blinks)` whose peak lies in the rows of the mask."""
        lo, hi = self.first_row * self.decimation, (self.first_row + self.n_rows) * self.decimation
        count = lambda peaks: int(((peaks >= lo) & (peaks < hi)).sum())  # noqa: E731
        return count(self.events.heartbeats), count(self.events.blinks)

    def to_dict(self) -> dict[str, Any]:
        beats, blinks = self.events_in_rows()
        return {
            **self.events.to_dict(),
            "heartbeat_window_s": list(HEARTBEAT_WINDOW_S),
            "blink_window_s": BLINK_WINDOW_S,
            "scored_rows": [self.first_row, self.first_row + self.n_rows],
            "heartbeats_in_scored_rows": beats,
            "blinks_in_scored_rows": blinks,
            "n_scored": self.n_rows,
            "n_clean": int(self.clean.sum()),
            "n_cardiac": int(self.cardiac.sum()),
            "clean_share": self.clean_share,
        }


def _near(samples: np.ndarray, peaks: np.ndarray, before: int, after: int) -> np.ndarray:
    """`(n,)` True where `peak − before ≤ sample ≤ peak + after` for some peak (samples sorted)."""
    out = np.zeros(samples.shape, dtype=bool)
    for peak in peaks:
        lo = np.searchsorted(samples, peak - before, side="left")
        hi = np.searchsorted(samples, peak + after, side="right")
        out[lo:hi] = True
    return out
