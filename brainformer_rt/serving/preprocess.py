"""Preprocessing stage: source adaptation, the shared causal filters, plus gap and flat checks.

The signal processing itself is :mod:`brainformer.preprocessing` (the one causal path shared with
training); the stream is first adapted to the model's channels, units and rate by
:mod:`brainformer_rt.serving.adapt` (the :mod:`brainformer.adaptation` library). This stage adds
what only a live stream needs:

- :class:`EEGPreprocessStage`: per chunk, adapt (units, channels, interpolation, resampling),
  then run the stateful :class:`~brainformer.preprocessing.StreamingPreprocessor`;
- :class:`GapDetector`: finds discontinuities in the input timestamps, after which the stream is
  reset (see ``pipeline.py``), and estimates how many samples were lost in each;
- :class:`FlatChannelMonitor`: finds stream channels whose raw value did not change for a whole
  second (a disconnected electrode, a saturated amplifier).

A flat channel is never dropped from the output: the pipeline asks the adapter to re-plan
without it (its model electrode interpolated from the others, in a worker thread, swapped in
between two chunks) and to restore it when it changes again. Where that cannot be done (the
model has no electrode positions, too many electrodes are bad) it is served as it is — harmless
to the filters: after the average reference it carries minus the mean of the other channels, and
the high-pass removes its constant part — with a warning. Windows served while a channel is flat
are counted either way (``flat_windows``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import numpy as np

from brainformer.preprocessing import PreprocessingError, eeg_preprocessor
from brainformer_rt.serving.adapt import IncompatibleStreamError, SourceAdapter
from brainformer_rt.serving.timestamps import timestamp_jumps

logger = logging.getLogger(__name__)

__all__ = ["EEGPreprocessStage", "GapDetector", "FlatChannelMonitor"]

#: A forward timestamp step longer than the silence seen here by more than this is a clock jump.
CLOCK_JUMP_SLACK_S = 1.0


class EEGPreprocessStage:
    """Source adaptation + the shared streaming preprocessing, for one stream.

    Args:
        config: the model's ``BrainformerConfig``.
        description: the inlet's ``StreamDescription`` (used when ``source`` is None).
        max_chunk_samples: initial size of the adapter's buffers.
        source: the stream's ``SourceDescription`` from its full meta-data
            (:func:`~brainformer_rt.serving.adapt.stream_source`; positions included).
        options: ``AdaptationOptions`` (input unit, channel map, montage, missing limit).

    Raises:
        IncompatibleStreamError: one line, for a stream that cannot be served.

    State (all of it): the :class:`~brainformer_rt.serving.adapt.SourceAdapter` (plan, buffers,
    resampler state), the preprocessor's filter state, the flat-channel monitor and its
    gather buffer; :meth:`reset` forgets the signal in all three (the plan stays).
    """

    def __init__(self, config: Any, description: Any, max_chunk_samples: int = 4096, *,
                 source: Any = None, options: Any = None) -> None:
        from brainformer.adaptation import AdaptationError, SourceDescription

        if source is None:
            source = SourceDescription.from_stream(description)
        try:
            self.adapter = SourceAdapter(config, source, options, max_chunk_samples)
        except AdaptationError as error:
            raise IncompatibleStreamError(str(error)) from None
        self.name = getattr(description, "name", source.name)
        self.plan = self.adapter.base_plan
        self.decimation = self.adapter.decimation
        self.input_sfreq_hz = self.adapter.input_sfreq_hz
        #: Rate after adaptation and decimation: the model's.
        self.output_sfreq_hz = self.adapter.output_sfreq_hz / self.decimation
        #: Input samples per model-rate sample (the decimation, or the resampling ratio).
        self.input_per_output = self.input_sfreq_hz / self.output_sfreq_hz
        self.channel_names = self.adapter.channel_names
        self.n_channels = self.adapter.n_channels
        columns = self.adapter.monitored_columns
        self._monitored = np.empty((max(1, int(max_chunk_samples)), len(columns)), dtype=self.plan.stream_dtype)
        self.flat = FlatChannelMonitor(len(columns), block_samples=max(1, int(round(self.input_sfreq_hz))))
        try:
            self.preprocessor = eeg_preprocessor(config, self.adapter.output_sfreq_hz)
        except PreprocessingError as error:
            raise IncompatibleStreamError(f"{source.name}: {error}") from None

    def process(self, data: np.ndarray, timestamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Raw ``data (n, n_stream_channels)`` with ``timestamps (n,)`` → preprocessed
        ``(m, n_eeg)`` float32 in model order and the ``(m,)`` timestamps of the EEG instants
        they represent (``m ≈ n / input_per_output``).

        Raises ``brainformer.preprocessing.NonFiniteInputError`` for NaN/Inf (state untouched;
        :meth:`non_finite_channels` names the culprits).
        """
        adapted, adapted_timestamps = self.adapter.apply(data, timestamps)
        out = self.preprocessor.process(adapted, adapted_timestamps)
        self._watch(data)  # after the NaN check: a NaN chunk never reaches the monitor
        return out

    def _watch(self, data: np.ndarray) -> None:
        """The stream's EEG columns (raw) into the flat-channel monitor."""
        n = data.shape[0]
        if n > self._monitored.shape[0]:
            self._monitored = np.empty((max(n, 2 * self._monitored.shape[0]), self._monitored.shape[1]),
                                       self._monitored.dtype)
        monitored = self._monitored[:n]
        np.take(data, self.adapter.monitored_columns, axis=1, out=monitored)
        self.flat.update(monitored)

    @property
    def last_adapt_s(self) -> float:
        """Duration of the adaptation of the last chunk (the ``adapt`` stage timing)."""
        return self.adapter.last_apply_s

    def non_finite_channels(self) -> list[str]:
        """Stream labels of the channels holding NaN/Inf in the chunk last given to :meth:`process`."""
        return self.adapter.non_finite_channels()

    def flat_channel_names(self) -> list[str]:
        """Stream labels of the EEG channels currently flat (see :class:`FlatChannelMonitor`)."""
        return [self.adapter.monitored_labels[i] for i in np.flatnonzero(self.flat.flat)]

    def reset(self) -> None:
        """Forget the signal (after a gap): the next sample starts a fresh segment."""
        self.adapter.reset()
        self.preprocessor.reset()
        self.flat.reset()

    def close(self) -> None:
        """Stop the adapter's worker thread."""
        self.adapter.close()


class FlatChannelMonitor:
    """Finds channels whose raw value did not change at all during a block of input samples.

    Per chunk it folds the per-channel minimum and maximum into two ``(n_channels,)`` arrays (no
    allocation); at the end of every ``block_samples`` block the channels with maximum ==
    minimum are flat until a later block shows them changing.

    Args:
        n_channels: channels of the chunks given to :meth:`update`.
        block_samples: samples per decision (the daemon uses one second of input).

    Attributes:
        flat: ``(n_channels,)`` bool, the decision of the last complete block.
        changed: True when the last :meth:`update` completed a block whose decision differs from
            the previous one (the caller logs the change).
    """

    def __init__(self, n_channels: int, block_samples: int) -> None:
        if block_samples < 1:
            raise ValueError(f"block_samples must be >= 1, got {block_samples}")
        self.block_samples = int(block_samples)
        self.flat = np.zeros(n_channels, dtype=bool)
        self.changed = False
        self._low = np.empty(n_channels, dtype=np.float64)
        self._high = np.empty(n_channels, dtype=np.float64)
        self._chunk_low = np.empty(n_channels, dtype=np.float64)
        self._chunk_high = np.empty(n_channels, dtype=np.float64)
        self._decision = np.zeros(n_channels, dtype=bool)
        self._filled = 0

    @property
    def n_flat(self) -> int:
        return int(np.count_nonzero(self.flat))

    def update(self, chunk: np.ndarray) -> None:
        """Fold ``chunk (n, n_channels)`` (finite values) into the current block."""
        self.changed = False
        if chunk.shape[0] == 0:
            return
        if self._filled == 0:
            np.minimum.reduce(chunk, axis=0, out=self._low)
            np.maximum.reduce(chunk, axis=0, out=self._high)
        elif chunk.shape[0] == 1:  # the common 1-sample chunk: two ufunc calls instead of four
            np.minimum(self._low, chunk[0], out=self._low)
            np.maximum(self._high, chunk[0], out=self._high)
        else:
            np.minimum.reduce(chunk, axis=0, out=self._chunk_low)
            np.maximum.reduce(chunk, axis=0, out=self._chunk_high)
            np.minimum(self._low, self._chunk_low, out=self._low)
            np.maximum(self._high, self._chunk_high, out=self._high)
        self._filled += chunk.shape[0]
        if self._filled >= self.block_samples:
            np.equal(self._low, self._high, out=self._decision)
            self.changed = not np.array_equal(self._decision, self.flat)
            np.copyto(self.flat, self._decision)
            self._filled = 0

    def reset(self) -> None:
        """Start a new block (after a gap); the last decision stays until the next block ends."""
        self._filled = 0
        self.changed = False


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
