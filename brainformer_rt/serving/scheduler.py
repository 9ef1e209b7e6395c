"""The serve loops: pull, window, one batched forward, publish (one stream, or several).

The three loop designs (blocking pull in one thread; pull threads with a batching thread;
busy polling) and how each fault is handled are described in docs/internals.md ("The serve
daemon: loops and faults").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np

from brainformer_rt.serving.logs import DAEMON_LOGGER_NAME, log_event
from brainformer_rt.serving.metrics import ServeMetrics
from brainformer_rt.serving.pipeline import StreamPipeline
from brainformer_rt.serving.signals import StopRequest

if TYPE_CHECKING:
    from brainformer.settings import ServeSettings

logger = logging.getLogger(DAEMON_LOGGER_NAME)

__all__ = ["Scheduler", "unscale_meg_into", "SILENCE_CHECK_INTERVAL_S"]

#: Busy polling over several streams: how often the sweep checks for silent streams.
SILENCE_CHECK_INTERVAL_S = 0.2


def unscale_meg_into(scaled: np.ndarray, meg_mean: Optional[np.ndarray], meg_std: Optional[np.ndarray],
                     work: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Scaled ``(n, n_meg)`` float32 → physical units (T, T/m) into ``out`` ``(n, n_meg)`` float32.

    The same arithmetic as ``brainformer.preprocessing.unscale_meg`` (float64 ``x * std + mean``,
    then float32), without allocating: ``work`` is a float64 buffer with at least ``n`` rows.
    ``meg_std`` None means the model has no scaling statistics (identity).
    """
    if meg_std is None:
        np.copyto(out, scaled)
        return out
    rows = work[: scaled.shape[0]]
    np.multiply(scaled, meg_std, out=rows)
    np.add(rows, meg_mean, out=rows)
    np.copyto(out, rows, casting="same_kind")
    return out


class Scheduler:
    """The serve loops: serves ``pipelines`` with one model ``engine`` until stopped.

    One stream: :meth:`_run_single`; several: pull threads and one batching thread
    (:meth:`_run_many`), or one busy-polling thread (:meth:`_run_many_polling`).

    Args:
        pipelines: the streams (see :class:`~brainformer_rt.serving.pipeline.StreamPipeline`).
        engine: a set-up engine (``engine.batch_size >= 1``; with more streams than the batch
            size, pending windows are served in several forwards).
        meg_mean, meg_std: ``(n_meg,)`` float64 un-scaling statistics, or None (identity).
        settings: the serve settings (timeouts, staleness, duration).
        metrics: where everything is counted and timed.
        stop: the stop request (signals).
    """

    def __init__(self, pipelines: Sequence[StreamPipeline], engine: Any, meg_mean: Optional[np.ndarray],
                 meg_std: Optional[np.ndarray], settings: ServeSettings, metrics: ServeMetrics, stop: StopRequest,
                 clock=None) -> None:
        if clock is None:
            import pylsl

            clock = pylsl.local_clock
        self.clock = clock
        self.pipelines = list(pipelines)
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.window_samples = engine.window_samples
        self._meg_mean = meg_mean
        self._meg_std = meg_std
        n_out = engine.n_output_channels
        # (batch, S, n_meg) predictions of one forward (the newest S samples of each window),
        # (batch, T) timestamps of its windows.
        self.output_samples = engine.output_samples
        self._predictions = np.empty((engine.batch_size, self.output_samples, n_out), dtype=np.float32)
        self._batch_timestamps = np.empty((engine.batch_size, self.window_samples), dtype=np.float64)
        self._unscale_work = np.empty((self.window_samples, n_out), dtype=np.float64)
        self._cond = threading.Condition()
        self._next_progress = 0.0
        self._end = math.inf
        self._warmup_end: Optional[float] = None

    # -- shared: forward + publish ------------------------------------------------------------------
    def _serve_batch(self, items: List[Tuple[StreamPipeline, int, np.ndarray, int]]) -> None:
        """Windows are in ``engine.input_buffer[:k]``; ``items[i] = (pipeline, n_publish,
        timestamps (T,), generation)`` for row ``i``. Forward once, then add each stream's linear
        path correction (``SourceAdapter.correct``), un-scale and publish each row's newest
        ``n_publish`` samples with their input timestamps."""
        k = len(items)
        started = time.perf_counter()
        predictions = self.engine.infer(self.engine.input_buffer[:k], out=self._predictions[:k])
        forwarded = time.perf_counter()
        self.metrics.add_forward(forwarded - started, k)
        T, S = self.window_samples, self.output_samples
        windows = self.engine.input_buffer  # the forward reads them and leaves them as they were
        feedback = []  # (stage, predictions, timestamps) of the rows published: after every row's MEG
        for row, (pipeline, n_publish, timestamps, generation) in enumerate(items):
            scaled = predictions[row, S - n_publish:]  # (n_publish, n_meg); n_publish <= S (windower)
            # This stream's own linear path (re-solved for its electrodes): a correction of the
            # batched forward's rows, so streams of other caps share the forward.
            pipeline.adapt.correct(windows[row], scaled)
            if not math.isfinite(float(scaled.sum())):
                # Counted as served (the forward ran) and as a NaN window; nothing is published.
                pipeline.counters.nan_windows += 1
                ready, suppressed = pipeline.throttle.ready("nan_prediction")
                if ready:
                    log_event(logger, logging.WARNING, "nan_prediction",
                              "stream %r: the model predicted NaN/Inf; window not published%s", pipeline.key,
                              f" ({suppressed} more since the last message)" if suppressed else "",
                              stream=pipeline.key, nan_windows=pipeline.counters.nan_windows)
                continue
            physical = self._unscale(scaled, pipeline.physical[:n_publish])
            out_timestamps = timestamps[T - n_publish:]
            for publisher in pipeline.publishers:
                if publisher.publish(physical, out_timestamps) is False:
                    pipeline.counters.zmq_drops += 1
            now = self.clock()
            self.metrics.add_e2e(pipeline.key, pipeline.age_s(now, float(timestamps[-1])))
            pipeline.counters.samples_published += n_publish
            pipeline.published(now, generation)
            if pipeline.feedback is not None:
                feedback.append((pipeline.feedback, physical, out_timestamps))
        self.metrics.add_stage("publish", time.perf_counter() - forwarded)
        # The feedback stages run once every stream's MEG went out: no MEG waits for them.
        for stage, physical, out_timestamps in feedback:
            stage.step(physical, out_timestamps)
            self.metrics.add_stage("feedback", stage.last_step_s)

    def _unscale(self, scaled: np.ndarray, out: np.ndarray) -> np.ndarray:
        return unscale_meg_into(scaled, self._meg_mean, self._meg_std, self._unscale_work, out)

    def _is_stale(self, pipeline: StreamPipeline, newest_timestamp: float) -> bool:
        return pipeline.age_s(self.clock(), newest_timestamp) > self.settings.max_input_age_s

    def _pull_and_ingest(self, pipeline: StreamPipeline, wait: bool = True) -> bool:
        """One pull (and a drain when the inlet buffer was full); True when data came. ``wait``:
        wait up to ``pull_timeout_s`` for the next window's samples (blocking in liblsl, or
        spinning with ``busy_poll``); otherwise take what is there."""
        inlet = pipeline.inlet
        needed = pipeline.input_samples_until_due()
        timeout_s = self.settings.pull_timeout_s if wait else 0.0
        if self.settings.busy_poll and wait:
            inlet.spin_until_available(needed, timeout_s)
            timeout_s = 0.0  # the waiting is done
        data, timestamps = inlet.pull(timeout_s, needed)
        if timestamps.shape[0] == 0:
            pipeline.check_silence(self.clock())
            return False
        pulled = time.perf_counter()
        arrival = self.clock()
        # Transport: newest sample pushed (its timestamp) → we hold it.
        self.metrics.add_stage("pull", pipeline.age_s(arrival, float(timestamps[-1])))
        try:
            pipeline.ingest(data, timestamps, arrival)
            while timestamps.shape[0] == inlet.max_chunk_samples:  # more may be waiting
                data, timestamps = inlet.pull(0.0)
                if timestamps.shape[0]:
                    pipeline.ingest(data, timestamps, self.clock())
        except Exception:  # noqa: BLE001 - a broken chunk resets the stream, never kills the daemon
            logger.exception("stream %r: preprocessing failed; resetting the stream", pipeline.key,
                             extra={"event": "stream_error", "stream": pipeline.key})
            pipeline.reset()
            return True
        pipeline.gauges.clock_offset_s = getattr(inlet, "clock_offset_s", 0.0)
        self.metrics.add_stage("preprocess", time.perf_counter() - pulled)
        return True

    def _progress(self) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self.settings.stats_interval_s
        for key, counters in self.metrics.streams.items():
            recent = self.metrics.e2e[key].recent(1024)
            p99 = float(np.percentile(recent, 99.0)) * 1e3 if recent.size else math.nan
            log_event(logger, logging.INFO, "progress",
                      "stream %r: %d windows served, %d skipped, %d stale, %d gaps, %d NaN windows; e2e p99 %.3f ms "
                      "(last %d)", key, counters.windows_served, counters.windows_skipped, counters.windows_stale,
                      counters.gaps, counters.nan_windows, p99, recent.size,
                      stream=key, samples_in=counters.samples_in, windows_served=counters.windows_served,
                      windows_skipped=counters.windows_skipped, windows_stale=counters.windows_stale,
                      gaps=counters.gaps, gap_samples=counters.gap_samples, reconnects=counters.reconnects,
                      nan_windows=counters.nan_windows, flat_windows=counters.flat_windows,
                      zmq_drops=counters.zmq_drops, e2e_p99_ms=p99)

    # -- loops --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until a stop request or ``duration_s``."""
        self.metrics.clock = self.clock
        self.metrics.started_at = self.metrics.timings_started_at = self.clock()
        self._end = time.monotonic() + self.settings.duration_s
        self._warmup_end = time.monotonic() + self.settings.warmup_s if self.settings.warmup_s > 0 else None
        self._next_progress = time.monotonic() + self.settings.stats_interval_s
        try:
            if len(self.pipelines) == 1:
                self._run_single(self.pipelines[0])
            elif self.settings.busy_poll:
                self._run_many_polling()
            else:
                self._run_many()
        finally:
            self.metrics.stopped_at = self.clock()

    def _running(self) -> bool:
        if self._warmup_end is not None and time.monotonic() >= self._warmup_end:
            self._warmup_end = None
            self.metrics.reset_timings()
            logger.info("warm-up of %g s over: timings from now on", self.settings.warmup_s)
        return not self.stop.is_set() and time.monotonic() < self._end

    def _run_single(self, pipeline: StreamPipeline) -> None:
        """Everything in this thread: blocking pull → preprocess → window → forward → publish."""
        input_buffer = self.engine.input_buffer
        while self._running():
            if not self._pull_and_ingest(pipeline):
                continue
            fresh = self._fresh_window(pipeline)
            if fresh is not None:
                n_publish, window, timestamps = fresh
                np.copyto(input_buffer[0], window)
                # The ring is not written again before publishing: its timestamp view stays valid.
                self._serve_batch([(pipeline, n_publish, timestamps, pipeline.generation)])
            self._progress()  # also while every window is stale: that is when it matters most

    def _run_many(self) -> None:
        """Pull threads fill hand-off slots; this thread batches pending windows into one forward."""
        threads = [threading.Thread(target=self._pull_loop, args=(p,), name=f"pull-{p.key}", daemon=True)
                   for p in self.pipelines]
        for thread in threads:
            thread.start()
        try:
            batch = self.engine.batch_size
            input_buffer = self.engine.input_buffer
            while self._running():
                with self._cond:
                    if not any(p.pending_publish for p in self.pipelines):
                        self._cond.wait(self.settings.pull_timeout_s)
                    pending = [p for p in self.pipelines if p.pending_publish]
                    items = []
                    for row, pipeline in enumerate(pending[:batch]):
                        np.copyto(input_buffer[row], pipeline.pending_window)
                        np.copyto(self._batch_timestamps[row], pipeline.pending_timestamps)
                        items.append((pipeline, pipeline.pending_publish, self._batch_timestamps[row],
                                      pipeline.pending_generation))
                        pipeline.pending_publish = 0
                if items:
                    self._serve_batch(items)
                self._progress()
                self._raise_if_every_stream_failed()
        finally:
            self.stop.event.set()
            for thread in threads:
                thread.join(timeout=2.0)

    def _run_many_polling(self) -> None:
        """Several streams, busy polling: this one thread sweeps every inlet without sleeping,
        ingests each stream whose next window's samples are there, and serves the windows that
        became due in one sweep as one batched forward. A silent or dead stream is one cheap
        ``samples_available()`` call per sweep: it holds up nobody."""
        input_buffer = self.engine.input_buffer
        next_silence_check = 0.0
        while self._running():
            items = []
            for pipeline in self.pipelines:
                if pipeline.failed is not None:
                    continue
                try:
                    item = self._take_due_window(pipeline)
                except Exception as error:  # noqa: BLE001 - one stream's failure must not stop the others
                    pipeline.failed = error
                    logger.exception("stream %r: stopped serving it", pipeline.key, extra={"stream": pipeline.key})
                    continue
                if item is None:
                    continue
                row = len(items)
                n_publish, window, timestamps = item
                np.copyto(input_buffer[row], window)
                np.copyto(self._batch_timestamps[row], timestamps)
                items.append((pipeline, n_publish, self._batch_timestamps[row], pipeline.generation))
                if len(items) == self.engine.batch_size:
                    self._serve_batch(items)
                    items = []
            if items:
                self._serve_batch(items)
            self._progress()
            now = time.monotonic()
            if now >= next_silence_check:  # a few times per second is enough to report silence
                next_silence_check = now + SILENCE_CHECK_INTERVAL_S
                clock = self.clock()
                for pipeline in self.pipelines:
                    pipeline.check_silence(clock)
            self._raise_if_every_stream_failed()

    def _take_due_window(self, pipeline: StreamPipeline) -> Optional[Tuple[int, np.ndarray, np.ndarray]]:
        """Without waiting: ingest ``pipeline``'s input if its next window's samples are there;
        what :meth:`_fresh_window` gives then, else None."""
        if pipeline.inlet.samples_available() < pipeline.input_samples_until_due():
            return None
        if not self._pull_and_ingest(pipeline, wait=False):
            return None
        return self._fresh_window(pipeline)

    def _fresh_window(self, pipeline: StreamPipeline) -> Optional[Tuple[int, np.ndarray, np.ndarray]]:
        """After an ingest: ``(n_publish, window, timestamps)`` when a window is due and not stale
        (views of the ring, valid until it is written again); a stale one is dropped and counted."""
        n_publish = pipeline.poll()
        if not n_publish:
            return None
        window, timestamps = pipeline.ring.latest(self.window_samples)
        if self._is_stale(pipeline, float(timestamps[-1])):
            pipeline.drop_window(n_publish, stale=True)
            return None
        return n_publish, window, timestamps

    def _raise_if_every_stream_failed(self) -> None:
        if all(p.failed is not None for p in self.pipelines):
            raise RuntimeError("every stream failed: " + "; ".join(f"{p.key}: {p.failed}" for p in self.pipelines))

    def _pull_loop(self, pipeline: StreamPipeline) -> None:
        """Pull thread of one stream (several-stream mode)."""
        try:
            while self._running():
                if not self._pull_and_ingest(pipeline):
                    continue
                fresh = self._fresh_window(pipeline)
                if fresh is None:
                    continue
                with self._cond:
                    pipeline.hand_off(*fresh)
                    self._cond.notify()
        except Exception as error:  # noqa: BLE001 - one stream's failure must not stop the others
            pipeline.failed = error
            logger.exception("stream %r: pull thread stopped", pipeline.key, extra={"stream": pipeline.key})
