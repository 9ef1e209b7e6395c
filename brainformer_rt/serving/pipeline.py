"""One served stream's state machine: inlet → gap check → adaptation → preprocessing → ring
buffer → windower, and, after the batched forward, the stream's own linear path.

How the loops drive it, and what each fault does to it, is in docs/internals.md ("The serve
daemon: loops and faults"). :func:`open_stages` makes a stream's two signal stages from its
meta-data: the adaptation (``adapt.py``) and the preprocessing (``preprocess.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from brainformer_rt.serving.logs import DAEMON_LOGGER_NAME, EventThrottle, log_event
from brainformer_rt.serving.metrics import StreamCounters, StreamGauges

logger = logging.getLogger(DAEMON_LOGGER_NAME)

__all__ = ["StreamPipeline", "StreamStages", "open_stages", "LOG_REPEAT_INTERVAL_S", "FOREIGN_CLOCK_THRESHOLD_S"]

#: A repeating fault (NaN chunks, NaN predictions) is logged at most once per this many seconds.
LOG_REPEAT_INTERVAL_S = 5.0
#: A segment whose timestamps are further than this from this machine's clock at arrival is
#: stamped by another clock (e.g. the source's clock was reset): see StreamPipeline._decide_offset.
FOREIGN_CLOCK_THRESHOLD_S = 1.0


@dataclass
class StreamStages:
    """The two signal stages of one stream, in pipe order: ``adapt`` (a
    :class:`~brainformer_rt.serving.adapt.SourceAdapter`: the stream's units, channels, cap and rate
    → the model's EEG in volts; the stream's linear path and expected quality) and ``preprocess``
    (an :class:`~brainformer_rt.serving.preprocess.EEGPreprocessStage`: the training filters).
    :class:`StreamPipeline` runs them as two steps; :meth:`process` runs both for offline use."""

    adapt: Any
    preprocess: Any

    @property
    def plan(self) -> Any:
        """The adaptation plan made when the stream opened."""
        return self.adapt.base_plan

    @property
    def quality(self) -> Any:
        """The cap's expected quality (``CapQuality``), None for a model without statistics."""
        return self.adapt.quality

    @property
    def decimation(self) -> int:
        return self.adapt.decimation

    @property
    def n_channels(self) -> int:
        return self.adapt.n_channels

    @property
    def input_sfreq_hz(self) -> float:
        return self.adapt.input_sfreq_hz

    @property
    def output_sfreq_hz(self) -> float:
        """The model's rate: after adaptation and decimation."""
        return self.adapt.output_sfreq_hz / self.adapt.decimation

    @property
    def input_per_output(self) -> float:
        """Input samples per model-rate sample (the decimation, or the resampling ratio)."""
        return self.input_sfreq_hz / self.output_sfreq_hz

    def process(self, data: np.ndarray, timestamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Raw ``(n, n_stream_channels)`` → preprocessed ``(m, n_eeg)`` float32 and timestamps:
        both stages, one after the other."""
        return self.preprocess.process(*self.adapt.apply(data, timestamps))

    def reset(self) -> None:
        self.adapt.reset()
        self.preprocess.reset()

    def close(self) -> None:
        self.adapt.close()


def open_stages(config: Any, description: Any = None, max_chunk_samples: int = 4096, *, source: Any = None,
                options: Any = None, statistics: Any = None, full: Any = None,
                min_expected_share: Optional[float] = None) -> StreamStages:
    """A stream's adaptation and preprocessing stages, planned against the model.

    Args:
        config: the model's ``BrainformerConfig`` (or fields).
        description: the inlet's ``StreamDescription`` (used when ``source`` is None).
        max_chunk_samples: initial size of the adapter's buffers.
        source: the stream's ``SourceDescription`` from its full meta-data
            (:func:`~brainformer_rt.serving.adapt.stream_source`; positions included).
        options: ``AdaptationOptions`` (input unit, channel map, montage, missing limit).
        statistics, full, min_expected_share: the model's linear path statistics, their
            full-cap solution and the floor of the expected quality (see ``SourceAdapter``).

    Raises:
        IncompatibleStreamError: one line, for a stream that cannot be served.
    """
    from brainformer.adaptation import AdaptationError, SourceDescription
    from brainformer.preprocessing import PreprocessingError
    from brainformer_rt.serving.adapt import IncompatibleStreamError, SourceAdapter
    from brainformer_rt.serving.preprocess import EEGPreprocessStage

    if source is None:
        source = SourceDescription.from_stream(description)
    try:
        adapt = SourceAdapter(config, source, options, max_chunk_samples, statistics=statistics, full=full,
                              min_expected_share=min_expected_share)
    except AdaptationError as error:
        raise IncompatibleStreamError(str(error)) from None
    try:
        preprocess = EEGPreprocessStage(config, adapt.output_sfreq_hz)
    except PreprocessingError as error:
        adapt.close()
        raise IncompatibleStreamError(f"{source.name}: {error}") from None
    return StreamStages(adapt, preprocess)


class StreamPipeline:
    """One served stream: inlet → gap check → adaptation → preprocessing → ring buffer →
    windower → (batched forward) → its linear path → sinks.

    Args:
        key: the stream as given in the settings (``--stream``); names metrics and outputs.
        inlet: an open ``EEGInlet``.
        stages: its adaptation and preprocessing stages (:func:`open_stages`, validated against
            the model).
        window_samples, hop_samples: model window and serving hop (model-rate samples).
        gap_threshold_s: see :class:`~brainformer_rt.serving.preprocess.GapDetector`.
        counters: this stream's ``StreamCounters`` in the daemon's metrics.
        publishers: sinks; each has ``publish(data (n, n_meg), timestamps (n,))`` and ``close()``.
        n_output_channels: MEG channels of the predictions.
        gauges: this stream's ``StreamGauges`` (a private one when None).
        max_publish: most samples one window publishes: the engine's ``output_samples``
            (default: the whole window).
        silence_s: input silent for longer than this is logged once and counted (``silences``).
        metrics: the daemon's ``ServeMetrics``, for the ``adapt`` stage timing (None: not timed).

    State (all of it): the stages' own (adaptation, preprocessing, ring buffer, windower, gap detector), the
    hand-off slot (``pending_*``, used with several streams, guarded by the scheduler's
    condition lock), and the bookkeeping listed in :meth:`_reset_variables` (outages, NaN input,
    silence, the timestamp offset of the current segment).
    """

    def __init__(self, key: str, inlet: Any, stages: StreamStages, window_samples: int, hop_samples: int,
                 gap_threshold_s: float, counters: StreamCounters, publishers: Sequence[Any],
                 n_output_channels: int, gauges: Optional[StreamGauges] = None, silence_s: float = 1.0,
                 max_publish: Optional[int] = None, metrics: Any = None) -> None:
        from brainformer_rt.serving.preprocess import GapDetector
        from brainformer_rt.serving.ring_buffer import RingBuffer
        from brainformer_rt.serving.windower import Windower

        self.key = key
        self.inlet = inlet
        self.stages = stages
        self.adapt = stages.adapt
        self.preprocess = stages.preprocess
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.counters = counters
        self.gauges = gauges if gauges is not None else StreamGauges()
        self.silence_s = silence_s
        self.publishers = list(publishers)
        self.ring = RingBuffer(max(4 * window_samples, 1024), stages.n_channels)
        self.windower = Windower(window_samples, hop_samples, max_publish)
        self.gaps = GapDetector(stages.input_sfreq_hz, gap_threshold_s, inlet.max_chunk_samples)
        self.physical = np.empty((window_samples, n_output_channels), dtype=np.float32)  # un-scaled output rows
        # The hand-off slot (several streams; guarded by the scheduler's condition lock).
        self.pending_window = np.empty((window_samples, stages.n_channels), dtype=np.float32)
        self.pending_timestamps = np.empty(window_samples, dtype=np.float64)
        self.throttle = EventThrottle(LOG_REPEAT_INTERVAL_S)
        self.metrics = metrics
        #: The feedback stage fed with every published hop (``serving/feedback.py``), or None.
        self.feedback: Optional[Any] = None
        #: Input samples per model-rate sample (decimation or resampling ratio).
        self.input_per_output = float(stages.input_per_output)
        self.adapt.on_replanned = self._replanned
        self.adapt.on_amplitude_warning = self._amplitude_warning
        self.gauges.interpolated_channels = self.adapt.n_interpolated
        self.gauges.resampler_delay_s = self.adapt.base_plan.resampler_delay_s[0]
        if self.adapt.quality is not None:
            self.gauges.expected_r = self.adapt.quality.r
        self._reset_variables()

    def _reset_variables(self) -> None:
        """Every piece of this stream's bookkeeping at its start value: the one list of it.

        The stages (preprocessing, ring, windower, gap detector) keep their own state; what a gap
        resets of it all is :meth:`reset`.
        """
        self.pending_publish = 0  # > 0: a window waits in the slot, publishing this many samples
        self.pending_generation = 0  # the segment the waiting window belongs to
        self.generation = 0  # +1 at every reset: tells windows from before a reset apart
        self.failed: Optional[BaseException] = None  # set when this stream's loop gave up
        self._started = False  # a first chunk arrived
        # Outage: the last input arrival before a reset (gap or NaN), until a prediction is out again.
        self.outage_since: Optional[float] = None
        self.published_any = False
        # NaN/Inf input: raw samples since the outage began (dropped ones and the refill) and the
        # windows that would have been due in them, already counted in nan_windows.
        self._nan_outage = False
        self._nan_raw_samples = 0
        self._nan_windows_counted = 0
        self._silent = False  # no input for longer than silence_s
        self._bad_channels: tuple = ()  # stream channels the adapter leaves out as bad (flat)
        self._reset_segment_variables()

    def _reset_segment_variables(self) -> None:
        """What one segment (the input between two resets) knows about itself."""
        # Timestamps of the segment relative to this machine's clock (see _decide_offset).
        self._lag_min_s = math.inf
        self._offset_decided = False

    # -- input ------------------------------------------------------------------------------------
    def ingest(self, data: np.ndarray, timestamps: np.ndarray, arrival_s: Optional[float] = None) -> None:
        """Check, preprocess and buffer one pulled chunk ``(n, n_stream_channels)``, ``(n,)``.

        ``arrival_s``: ``local_clock()`` when the chunk was pulled (silence, gap-size and
        clock-offset bookkeeping); None in tests that do not care.
        """
        from brainformer.preprocessing import NonFiniteInputError

        counters, gauges = self.counters, self.gauges
        n = timestamps.shape[0]
        counters.samples_in += n
        previous_arrival = gauges.last_arrival
        if arrival_s is not None:
            gauges.last_arrival = arrival_s
            gauges.input_lag_s = arrival_s - float(timestamps[-1])
            if self._silent:
                self._silent = False
                log_event(logger, logging.INFO, "input_resumed", "stream %r: input resumed after %.2f s of silence",
                          self.key, arrival_s - previous_arrival, stream=self.key,
                          silence_s=arrival_s - previous_arrival, silences=counters.silences)
        if not self._started:
            self._started = True
            counters.first_timestamp = float(timestamps[0])
            self.gaps.check(timestamps, arrival_s)
        else:
            start = self.gaps.check(timestamps, arrival_s)
            if start >= 0:
                counters.gaps += 1
                counters.gap_samples += self.gaps.missing_samples
                counters.reconnects = getattr(self.inlet, "reconnects", counters.reconnects)
                log_event(logger, logging.WARNING, "gap",
                          "stream %r: gap of %+.3f s in the input timestamps (~%d samples missing); resetting, "
                          "next prediction after a full window", self.key, self.gaps.last_step_s,
                          self.gaps.missing_samples, stream=self.key, step_s=self.gaps.last_step_s,
                          missing_samples=self.gaps.missing_samples, gaps=counters.gaps,
                          gap_samples=counters.gap_samples, reconnects=counters.reconnects)
                self._end_nan_outage()
                self._begin_outage(previous_arrival)
                self.reset()
                data, timestamps = data[start:], timestamps[start:]
                counters.last_reset_timestamp = float(timestamps[0])
        try:
            adapted, adapted_timestamps = self.adapt.apply(data, timestamps)
        except NonFiniteInputError:
            self._nan_input(timestamps.shape[0], previous_arrival)
            return
        out, out_timestamps = self.preprocess.process(adapted, adapted_timestamps)
        if self.metrics is not None:
            self.metrics.add_adapt(self.key, self.adapt.last_apply_s)
        self.ring.write(out, out_timestamps)
        counters.samples_preprocessed += out.shape[0]
        if arrival_s is not None and not self._offset_decided:
            self._lag_min_s = min(self._lag_min_s, arrival_s - float(timestamps[-1]))
        if self._nan_outage:
            self._count_nan_refill(timestamps.shape[0])
        if self.adapt.flat.changed:
            self._flat_changed()
        gauges.buffer_fill = min(1.0, (self.ring.total_written - self.windower.origin) / self.window_samples)

    def _begin_outage(self, last_arrival: float) -> None:
        if self.outage_since is None and self.published_any and math.isfinite(last_arrival):
            self.outage_since = last_arrival

    def _nan_input(self, n_samples: int, previous_arrival: float) -> None:
        """A chunk with NaN/Inf: dropped, the stream reset (its filters must not see a hole)."""
        counters = self.counters
        counters.nan_chunks += 1
        if not self._nan_outage:
            self._nan_outage = True
            self._nan_raw_samples = 0
            self._nan_windows_counted = 0
        self._nan_raw_samples += n_samples
        self._count_nan_windows()
        self._begin_outage(previous_arrival)
        ready, suppressed = self.throttle.ready("nan")
        if ready:
            channels = self.adapt.non_finite_channels()
            log_event(logger, logging.WARNING, "nan_input",
                      "stream %r: %d samples with NaN/Inf in %s dropped; resetting, no prediction until a full "
                      "finite window%s", self.key, n_samples, _channel_list(channels),
                      f" ({suppressed} more such chunks since the last message)" if suppressed else "",
                      stream=self.key, channels=channels, nan_chunks=counters.nan_chunks,
                      nan_windows=counters.nan_windows)
        self.reset()

    def _count_nan_windows(self) -> None:
        """Windows that would have been due (one per hop of model-rate samples) since the NaN
        input began and that the refill keeps from being served: counted as ``nan_windows``."""
        due = int(self._nan_raw_samples / self.input_per_output) // self.hop_samples
        if due > self._nan_windows_counted:
            self.counters.nan_windows += due - self._nan_windows_counted
            self._nan_windows_counted = due

    def _count_nan_refill(self, n_raw_samples: int) -> None:
        if self.ring.total_written - self.windower.origin >= self.window_samples:
            self._end_nan_outage()  # a finite window is complete: the windower serves it now
            return
        self._nan_raw_samples += n_raw_samples
        self._count_nan_windows()

    def _end_nan_outage(self) -> None:
        if self._nan_outage:
            self._nan_outage = False
            self.throttle.forget("nan")

    def _flat_changed(self) -> None:
        names = self.adapt.flat_channel_names()
        self.gauges.flat_channels = len(names)
        if names:
            log_event(logger, logging.WARNING, "flat_channels",
                      "stream %r: %s flat for the last second (no change at all); re-planning with it "
                      "interpolated from the other electrodes", self.key, _channel_list(names),
                      stream=self.key, channels=names, flat_channels=len(names),
                      flat_windows=self.counters.flat_windows)
        else:
            log_event(logger, logging.INFO, "flat_channels", "stream %r: no flat channel any more", self.key,
                      stream=self.key, channels=[], flat_channels=0, flat_windows=self.counters.flat_windows)
        self.adapt.request_bad_channels(names)  # off the hot path: the worker thread re-plans

    def _replanned(self, plan: Any, bad: Sequence[str], error: Optional[str]) -> None:
        """From the adapter's worker thread: a re-plan for ``bad`` stream channels was swapped in
        (or refused with ``error``: then the channels are served as they are)."""
        counters, gauges = self.counters, self.gauges
        if plan is None:
            counters.replans_refused += 1
            log_event(logger, logging.WARNING, "adaptation_replan_refused",
                      "stream %r: cannot leave %s out: %s; served as it is", self.key, _channel_list(bad), error,
                      stream=self.key, channels=list(bad), error=error, replans_refused=counters.replans_refused)
            return
        newly = len(set(bad) - set(self._bad_channels))
        self._bad_channels = tuple(bad)
        counters.replans += 1
        counters.channels_interpolated += newly
        gauges.bad_channels = len(bad)
        gauges.interpolated_channels = len(plan.interpolated)
        quality = self.adapt.quality
        expected = {} if quality is None else {"expected_quality": quality.to_dict()}
        if quality is not None:
            gauges.expected_r = quality.r
        said = "" if quality is None else f"; linear path re-solved: expected r {quality.r:.3f} ({100 * quality.share:.0f} % of the full cap)"
        if bad:
            log_event(logger, logging.WARNING, "adaptation_replanned",
                      "stream %r: %s left out as bad; %d model electrode(s) now interpolated (%s)%s; swapped in "
                      "between two chunks, no gap", self.key, _channel_list(bad), len(plan.interpolated),
                      ", ".join(f"{m!r} from nearest {s!r} {1e3 * d:.0f} mm" for m, s, d in plan.interpolated[:8])
                      + (f", … ({len(plan.interpolated)} in all)" if len(plan.interpolated) > 8 else ""), said,
                      stream=self.key, channels=list(bad), interpolated=[m for m, _, _ in plan.interpolated],
                      replans=counters.replans, channels_interpolated=counters.channels_interpolated, **expected)
        else:
            log_event(logger, logging.INFO, "adaptation_replanned",
                      "stream %r: every channel back; the start-up plan is in use again%s", self.key, said,
                      stream=self.key, channels=[], interpolated=[m for m, _, _ in plan.interpolated],
                      replans=counters.replans, channels_interpolated=counters.channels_interpolated, **expected)

    def _amplitude_warning(self, line: str) -> None:
        log_event(logger, logging.WARNING, "amplitude_warning", "stream %r: %s", self.key, line,
                  stream=self.key, warning=line)

    def check_silence(self, now: float) -> None:
        """Called when a pull returned nothing: log (once) and count input silent for ``silence_s``."""
        last = self.gauges.last_arrival
        if self._silent or not math.isfinite(last) or now - last < self.silence_s:
            return
        self._silent = True
        self.counters.silences += 1
        log_event(logger, logging.WARNING, "input_silent",
                  "stream %r: no input for %.1f s (source stopped or disconnected?); serving resumes when it is back",
                  self.key, now - last, stream=self.key, silence_s=now - last, silences=self.counters.silences)

    # -- windows ----------------------------------------------------------------------------------
    def poll(self) -> int:
        """Samples to publish if a window is due now (see :class:`~brainformer_rt.serving.windower.Windower`), else 0."""
        n_publish = self.windower.poll(self.ring.total_written)
        if n_publish:
            if not self._offset_decided:
                self._decide_offset()
            if self.gauges.flat_channels:
                self.counters.flat_windows += 1
            self._sync_window_counters()
        return n_publish

    def _decide_offset(self) -> None:
        """Are this segment's timestamps in this machine's clock? Decided at its first window
        from the smallest age seen at arrival (normally just the transport time). A source whose
        clock was reset (or that stamps with another clock) is seconds off: the difference is
        removed before ages (staleness) and latencies are measured, so the segment is served
        instead of being dropped as stale forever. Published timestamps stay the source's."""
        self._offset_decided = True
        lag = self._lag_min_s
        offset = lag if math.isfinite(lag) and abs(lag) > FOREIGN_CLOCK_THRESHOLD_S else 0.0
        if offset:
            log_event(logger, logging.WARNING, "timestamp_offset",
                      "stream %r: its timestamps are %.3f s %s this machine's clock (source clock reset?); ages and "
                      "latencies are measured with that offset removed", self.key, abs(offset),
                      "behind" if offset > 0 else "ahead of", stream=self.key, timestamp_offset_s=offset)
        elif self.gauges.timestamp_offset_s:
            log_event(logger, logging.INFO, "timestamp_offset", "stream %r: its timestamps are in this machine's "
                      "clock again", self.key, stream=self.key, timestamp_offset_s=0.0)
        self.gauges.timestamp_offset_s = offset

    def input_samples_until_due(self) -> int:
        """Input samples the next window still needs at least (>= 1): the windower's model-rate
        count at the stream's rate. A lower bound, so a pull that waits for them never waits
        past the sample that makes the window due."""
        needed = self.windower.samples_until_due(self.ring.total_written)
        return int(math.floor((needed - 1) * self.input_per_output)) + 1

    def age_s(self, now: float, timestamp: float) -> float:
        """How old a sample stamped ``timestamp`` is at ``now`` (``local_clock()``)."""
        return now - timestamp - self.gauges.timestamp_offset_s

    def published(self, now: float, generation: int) -> None:
        """A prediction of this stream went out at ``now`` (``local_clock()``); it was computed
        from a window of segment ``generation`` (see :meth:`reset`)."""
        if not self.published_any:
            self.published_any = True
            log_event(logger, logging.INFO, "first_prediction", "stream %r: first prediction published", self.key,
                      stream=self.key, windows_served=self.counters.windows_served)
        if self.outage_since is not None and generation == self.generation:  # not a window from before
            outage_s = now - self.outage_since
            self.outage_since = None
            self.gauges.last_outage_s = outage_s
            log_event(logger, logging.INFO, "publishing_resumed",
                      "stream %r: publishing again, %.2f s after the last input before the interruption", self.key,
                      outage_s, stream=self.key, outage_s=outage_s, gaps=self.counters.gaps,
                      nan_chunks=self.counters.nan_chunks, reconnects=self.counters.reconnects)

    def drop_window(self, n_publish: int, stale: bool) -> None:
        """The window just returned by :meth:`poll` is not served."""
        self.windower.drop(n_publish)
        if stale:
            self.counters.windows_stale += 1
        self._sync_window_counters()

    def hand_off(self, n_publish: int, window: np.ndarray, timestamps: np.ndarray) -> None:
        """Put a due window into the hand-off slot (the caller holds the scheduler's lock). A
        window still waiting there is replaced by this newer one (counted as skipped)."""
        if self.pending_publish:
            n_publish = self.windower.supersede(self.pending_publish, n_publish)
            self._sync_window_counters()
        np.copyto(self.pending_window, window)
        np.copyto(self.pending_timestamps, timestamps)
        self.pending_publish = n_publish
        self.pending_generation = self.generation

    def _sync_window_counters(self) -> None:
        self.windower.counts.copy_to(self.counters)

    def reset(self) -> None:
        """Start over after a gap: fresh filter state, empty buffer, wait for a full window, and
        decide the new segment's timestamp offset afresh."""
        self.stages.reset()
        self.ring.clear()
        self.windower.reset(self.ring.total_written)
        self.gauges.buffer_fill = 0.0
        self.generation += 1
        self._reset_segment_variables()

    def continuity(self) -> tuple:
        """``(segment, samples_left_out, windows_left_out)``: counters that change whenever
        published predictions were left out (a reset; samples of skipped or stale windows; NaN
        predictions): what the feedback stage checks before each hop."""
        return (self.generation, self.counters.samples_unpublished, self.counters.nan_windows)

    def close(self) -> None:
        self.stages.close()
        if self.feedback is not None:
            self.feedback.close()
        for publisher in self.publishers:
            try:
                publisher.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                logger.exception("stream %r: closing %s failed", self.key, type(publisher).__name__)
        try:
            self.inlet.close()
        except Exception:  # noqa: BLE001
            logger.exception("stream %r: closing the inlet failed", self.key)


def _channel_list(names: Sequence[str], limit: int = 6) -> str:
    if not names:
        return "no channel"
    shown = ", ".join(repr(n) for n in names[:limit])
    word = "channel" if len(names) == 1 else "channels"
    return f"{word} {shown}" + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
