"""Preprocessing stage: the shared causal filters on the adapted EEG, plus the gap check.

The signal processing itself is :mod:`brainformer.preprocessing` (the one causal path shared with
training). The stream reaches this stage already adapted to the model's channels, units and rate
by the adaptation stage before it (:mod:`brainformer_rt.serving.adapt`, its own step of the
stream's pipe, ``pipeline.py``). This module holds:

- :class:`EEGPreprocessStage`: per chunk of adapted EEG, the stateful
  :class:`~brainformer.preprocessing.StreamingPreprocessor` (reference, filters, decimation,
  scaling);
- :class:`GapDetector`: finds discontinuities in the input timestamps, after which the stream is
  reset (see ``pipeline.py``), and estimates how many samples were lost in each.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from brainformer.preprocessing import eeg_preprocessor
from brainformer_rt.serving.timestamps import timestamp_jumps

__all__ = ["EEGPreprocessStage", "GapDetector"]

#: A forward timestamp step longer than the silence seen here by more than this is a clock jump.
CLOCK_JUMP_SLACK_S = 1.0


class EEGPreprocessStage:
    """The shared streaming preprocessing of one stream's adapted EEG.

    Args:
        config: the model's ``BrainformerConfig`` (or fields).
        input_sfreq_hz: the rate of the adapted EEG: the model's, or an integer multiple of it
            that this stage decimates.

    Raises:
        PreprocessingError: a rate the filters cannot be built for (one line).

    State (all of it): the preprocessor's filter state; :meth:`reset` forgets it.
    """

    def __init__(self, config: Any, input_sfreq_hz: float) -> None:
        self.preprocessor = eeg_preprocessor(config, input_sfreq_hz)
        self.input_sfreq_hz = float(input_sfreq_hz)
        self.n_channels = len(config.eeg_channel_names)

    def process(self, adapted: np.ndarray, timestamps: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Adapted ``(m, n_eeg)`` float32 volts in model order with the ``(m,)`` timestamps of
        their EEG instants → preprocessed ``(m', n_eeg)`` float32 and their timestamps
        (``m' = m / decimation``)."""
        return self.preprocessor.process(adapted, timestamps)

    def reset(self) -> None:
        """Forget the signal (after a gap): the next sample starts a fresh segment."""
        self.preprocessor.reset()


class GapDetector:
    """Finds discontinuities in one stream's input timestamps.

    A step between consecutive timestamps (including from the previous chunk's last one) larger
    than ``threshold_s``, or backwards by more than half a sample period, is a discontinuity.

    Missing samples are estimated from the timestamp step (``step / period - 1``). When the
    caller gives arrival times, a step that is backwards, or forwards by more than
    ``CLOCK_JUMP_SLACK_S`` beyond the silence seen on this side, is a clock jump on the source
    side; its missing samples are estimated from that silence instead (samples due between the
    previous chunk's arrival and this one's, minus those that came): a leap of the source's
    clock while samples keep arriving counts ~0, a restart with a reset clock counts its downtime.

    Args:
        sfreq_hz: the stream's nominal rate.
        threshold_s: largest step that still counts as continuous.
    """

    def __init__(self, sfreq_hz: float, threshold_s: float, max_chunk_samples: int = 4096) -> None:
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        if not threshold_s > 0:
            raise ValueError(f"threshold_s must be positive, got {threshold_s!r}")
        self.period_s = 1.0 / float(sfreq_hz)
        self.threshold_s = float(threshold_s)
        self.last_timestamp: Optional[float] = None
        self.last_arrival_s: Optional[float] = None  # arrival (local clock) of the previous chunk
        self._steps = np.empty(max(1, int(max_chunk_samples)), dtype=np.float64)  # reused, no allocation
        self.last_step_s = 0.0  # size of the last discontinuity found
        self.missing_samples = 0  # estimated samples lost in the last discontinuity

    def check(self, timestamps: np.ndarray, arrival_s: Optional[float] = None) -> int:
        """Index of the first sample after the last discontinuity in ``timestamps (n,)``, or -1.

        ``arrival_s``: when the chunk arrived (``local_clock()``), for the missing-sample
        estimate. 0 means the chunk itself starts after a discontinuity. The first chunk ever
        has none.
        """
        n = timestamps.shape[0]
        if n == 0:
            return -1
        previous = self.last_timestamp
        previous_arrival = self.last_arrival_s
        self.last_timestamp = float(timestamps[-1])
        self.last_arrival_s = arrival_s
        if n > self._steps.shape[0]:
            self._steps = np.empty(max(n, 2 * self._steps.shape[0]), dtype=np.float64)
        bad = timestamp_jumps(timestamps, previous, self._steps, self.threshold_s, self.period_s)
        steps = self._steps[:n]
        if not bad.any():
            return -1
        index = int(np.flatnonzero(bad)[-1])
        self.last_step_s = float(steps[index])
        by_silence = None  # samples due during the silence on this side, minus those that came
        silence_s = 0.0
        if arrival_s is not None and previous_arrival is not None:
            silence_s = arrival_s - previous_arrival
            by_silence = max(0, int(round(silence_s / self.period_s)) - n)
        if self.last_step_s > 0 and (by_silence is None or self.last_step_s <= silence_s + CLOCK_JUMP_SLACK_S):
            self.missing_samples = max(0, int(round(self.last_step_s / self.period_s)) - 1)
        else:  # a backward step, or the timestamps leapt further than time passed here: a clock jump
            self.missing_samples = by_silence or 0
        return index

    def reset(self) -> None:
        self.last_timestamp = None
        self.last_arrival_s = None
