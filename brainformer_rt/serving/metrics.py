"""Serving metrics: counters, per-stage timings and end-to-end latency, in one object.

Everything the daemon measures lives in one :class:`ServeMetrics` so that the final table (drawn by the
command layer), the stats JSON and the Prometheus exporter (``prometheus.py``) read the same numbers. The hot path
only does integer additions and writes one float into a preallocated ring (:class:`TimingRing`);
percentiles are computed when a summary is asked for, never per window, and the exporter folds
the values added since its last scrape into its histograms (:meth:`ServeMetrics.take_new`).

Per stream there are counters (:class:`StreamCounters`: only ever grow) and gauges
(:class:`StreamGauges`: the current state, e.g. how full the window is after a gap).

Units: times are recorded in seconds (``local_clock()`` differences) and summarised in
milliseconds (keys end in ``_ms``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

__all__ = ["TimingRing", "StreamCounters", "StreamGauges", "ServeMetrics", "STAGES", "ADAPT_STAGE"]

#: The timed stages of one loop iteration, in pipeline order.
STAGES = ("pull", "preprocess", "forward", "publish")
#: The source adaptation (units, channels, interpolation, resampling) of one pull: a part of the
#: ``preprocess`` stage, timed on its own per stream (``ServeMetrics.adapt``).
ADAPT_STAGE = "adapt"

#: Values kept per ring: at 600 Hz with hop 16 this is ~30 min of windows.
DEFAULT_RING_CAPACITY = 65536


class TimingRing:
    """Fixed-size ring of float64 durations; the newest ``capacity`` values are kept.

    ``add`` is O(1) and allocation-free; :meth:`summary` computes percentiles over what is kept.
    """

    __slots__ = ("values_s", "capacity", "count", "clears", "_next")

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.values_s = np.zeros(capacity, dtype=np.float64)
        self.capacity = capacity
        self.count = 0  # values added in total since the last clear (may exceed capacity)
        self.clears = 0  # times clear() was called (tells a reader that `count` restarted)
        self._next = 0

    def add(self, value_s: float) -> None:
        self.values_s[self._next] = value_s
        self._next += 1
        if self._next == self.capacity:
            self._next = 0
        self.count += 1

    def clear(self) -> None:
        self.count = 0
        self._next = 0
        self.clears += 1

    def recent(self, n: int) -> np.ndarray:
        """Up to the ``n`` newest values (a view when they do not wrap, else a copy)."""
        n = min(n, self.count, self.capacity)
        if n <= self._next:
            return self.values_s[self._next - n:self._next]
        return np.concatenate([self.values_s[self.capacity - (n - self._next):], self.values_s[:self._next]])

    def kept(self) -> np.ndarray:
        """The kept values (a view, unordered once the ring wrapped), shape ``(min(count, capacity),)``."""
        return self.values_s[: min(self.count, self.capacity)]

    def summary(self) -> Dict[str, float]:
        """``{count, mean_ms, median_ms, p95_ms, p99_ms, max_ms}`` over the kept values (NaN when empty)."""
        return summarise(self.kept(), self.count)


def summarise(values_s: np.ndarray, count: Optional[int] = None) -> Dict[str, float]:
    """Percentile summary of durations in seconds, reported in milliseconds."""
    n = int(values_s.shape[0])
    if n == 0:
        nan = math.nan
        return {"count": int(count or 0), "mean_ms": nan, "median_ms": nan, "p95_ms": nan, "p99_ms": nan, "max_ms": nan}
    median, p95, p99 = np.percentile(values_s, [50.0, 95.0, 99.0])
    return {
        "count": int(count if count is not None else n),
        "mean_ms": float(values_s.mean()) * 1e3,
        "median_ms": float(median) * 1e3,
        "p95_ms": float(p95) * 1e3,
        "p99_ms": float(p99) * 1e3,
        "max_ms": float(values_s.max()) * 1e3,
    }


@dataclass
class StreamCounters:
    """Counters of one served stream (all plain ints: an exporter may read them at any time)."""

    samples_in: int = 0  # raw samples pulled from the inlet
    samples_preprocessed: int = 0  # samples that came out of preprocessing into the ring buffer
    samples_published: int = 0  # predicted samples published (per output, not per sink)
    samples_unpublished: int = 0  # samples that never got a prediction (backlog beyond one window)
    windows_served: int = 0
    windows_skipped: int = 0  # windows never computed because a newer one was served
    windows_stale: int = 0  # due windows dropped because their newest sample was too old
    gaps: int = 0  # discontinuities in the input timestamps: lost data, clock jumps, restarts, chunks
    #                out of order (each resets the stream)
    gap_samples: int = 0  # samples missing in those gaps (estimated, see preprocess.GapDetector)
    reconnects: int = 0  # connections liblsl re-established to a restarted source (see inlet.py)
    silences: int = 0  # times the input stopped for longer than the silence threshold
    nan_chunks: int = 0  # input chunks dropped because they held NaN/Inf (each resets the stream)
    nan_windows: int = 0  # windows not served because of NaN/Inf: due while input held NaN/Inf or
    #                       was refilling after it, or whose prediction held NaN/Inf
    flat_windows: int = 0  # windows served while at least one input channel was flat
    zmq_drops: int = 0  # ZeroMQ messages the socket refused as a whole (PUB drops per subscriber
    #                     silently at its high-water mark: subscribers see that as a seq jump)
    replans: int = 0  # adaptation re-plans swapped in (channels gone bad or recovered)
    replans_refused: int = 0  # re-plans that could not be made (no positions, too many bad)
    channels_interpolated: int = 0  # stream channels that went bad and were replaced by interpolation
    first_timestamp: float = math.nan  # timestamp of the first raw sample the daemon processed
    last_reset_timestamp: float = math.nan  # first raw sample after the last gap reset

    def to_dict(self) -> Dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class StreamGauges:
    """The current state of one served stream (plain numbers, read by the exporter at any time).

    ``buffer_fill``: fraction of a model window the stream holds since its last reset (1.0 when
    serving; below while refilling after the start, a gap or NaN input). ``clock_offset_s``:
    liblsl's offset added to the stream's timestamps (0 on this host). ``timestamp_offset_s``:
    how far the current segment's timestamps are behind this machine's clock when they are not
    in it (e.g. the source's clock was reset; 0 normally), removed before ages and latencies are
    measured. ``input_lag_s``: age of the newest sample when it was pulled. ``last_arrival``:
    ``local_clock()`` of the newest pull that returned data. ``flat_channels``: channels flat in
    the last second. ``last_outage_s``: last sample before the newest reset → first prediction
    published after it. ``bad_channels``: stream channels left out as bad now;
    ``interpolated_channels``: model electrodes interpolated now (missing from the stream, bad,
    or another cap); ``resampler_delay_s``: mean hold-back of the resampler (0: no resampling);
    ``expected_r``: the expected r of the stream's cap as it is now (the linear path re-solved
    for its electrodes; NaN for a model without statistics).
    """

    buffer_fill: float = 0.0
    clock_offset_s: float = 0.0
    timestamp_offset_s: float = 0.0
    input_lag_s: float = math.nan
    last_arrival: float = math.nan
    flat_channels: int = 0
    last_outage_s: float = math.nan
    bad_channels: int = 0
    interpolated_channels: int = 0
    resampler_delay_s: float = 0.0
    expected_r: float = math.nan

    def to_dict(self) -> Dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ServeMetrics:
    """All serving metrics of one daemon: per-stream counters, per-stage timings, e2e latency.

    Args:
        stream_names: the served streams, in order.
        capacity: values kept per timing ring.

    Attributes:
        streams: ``{name: StreamCounters}``.
        stages: ``{stage: TimingRing}``: ``pull`` = transport, the newest pulled sample's
            timestamp → the pull returned (``local_clock()``; the time spent idle waiting for
            data is not a cost and is not counted); ``preprocess`` = gap check + re-order +
            filters + ring-buffer write of one pull; ``forward`` = one batched engine call;
            ``publish`` = un-scale + every sink of one forward's windows.
        adapt: ``{name: TimingRing}``: the source adaptation of one pull (units, channels,
            interpolation, resampling; a part of ``preprocess``).
        e2e: ``{name: TimingRing}``: newest input sample's timestamp → publish done
            (``local_clock()``), one value per published window.
        batch_sizes: ``TimingRing`` of the number of windows per forward (stored as floats).
    """

    def __init__(self, stream_names: Iterable[str], capacity: int = DEFAULT_RING_CAPACITY) -> None:
        self.stream_names: List[str] = list(stream_names)
        self.streams: Dict[str, StreamCounters] = {name: StreamCounters() for name in self.stream_names}
        self.gauges: Dict[str, StreamGauges] = {name: StreamGauges() for name in self.stream_names}
        self.stages: Dict[str, TimingRing] = {stage: TimingRing(capacity) for stage in STAGES}
        self.e2e: Dict[str, TimingRing] = {name: TimingRing(capacity) for name in self.stream_names}
        self.adapt: Dict[str, TimingRing] = {name: TimingRing(capacity) for name in self.stream_names}
        self.batch_sizes = TimingRing(capacity)
        self.forward_calls = 0
        self.started_at: Optional[float] = None  # local_clock() when serving started
        self.stopped_at: Optional[float] = None
        self.timings_started_at: Optional[float] = None  # start of the timed period (after a warm-up)
        self.clock = None  # set by the daemon (pylsl.local_clock): stamps reset_timings()
        self.info: Dict[str, object] = {}  # static facts for the report: model, engine, device, hop…
        # The engine's own description, read when reported: the ``auto`` engine changes its forward.
        self.describe_engine: Optional[Callable[[], Dict[str, object]]] = None
        # Pull threads (several streams) time their stages concurrently with the main thread.
        self._lock = threading.Lock()

    # -- hot path (no allocation) -------------------------------------------------------------
    def add_stage(self, stage: str, duration_s: float) -> None:
        with self._lock:
            self.stages[stage].add(duration_s)

    def add_adapt(self, stream: str, duration_s: float) -> None:
        with self._lock:
            self.adapt[stream].add(duration_s)

    def add_forward(self, duration_s: float, batch: int) -> None:
        with self._lock:
            self.stages["forward"].add(duration_s)
            self.batch_sizes.add(float(batch))
            self.forward_calls += 1

    def add_e2e(self, stream: str, latency_s: float) -> None:
        with self._lock:
            self.e2e[stream].add(latency_s)

    # -- exporter ------------------------------------------------------------------------------
    def take_new(self, ring: TimingRing, seen_count: int, seen_clears: int) -> tuple:
        """Values added to ``ring`` since a reader saw ``(seen_count, seen_clears)``.

        Returns ``(values (k,) float64 copy, count, clears, lost)``; ``lost`` values were added
        but already overwritten (the reader came back after more than ``capacity`` additions).
        Holds the lock only for the copy.
        """
        with self._lock:
            count, clears = ring.count, ring.clears
            start = seen_count if clears == seen_clears else 0
            new = count - start
            kept = min(new, ring.capacity)
            values = ring.recent(kept).copy() if kept > 0 else np.zeros(0)
        return values, count, clears, max(0, new - kept)

    # -- summaries ------------------------------------------------------------------------------
    def reset_timings(self) -> None:
        """Forget timings and latencies (e.g. to exclude a warm-up period); counters stay."""
        with self._lock:
            for ring in self.stages.values():
                ring.clear()
            for ring in self.e2e.values():
                ring.clear()
            for ring in self.adapt.values():
                ring.clear()
            self.batch_sizes.clear()
            self.forward_calls = 0
            self.timings_started_at = self.clock() if self.clock is not None else None

    def e2e_summary(self, stream: Optional[str] = None) -> Dict[str, float]:
        """Latency summary of one stream, or of all streams pooled when ``stream`` is None."""
        if stream is not None:
            return self.e2e[stream].summary()
        pooled = [ring.kept() for ring in self.e2e.values()]
        values = np.concatenate(pooled) if pooled else np.zeros(0)
        return summarise(values, sum(ring.count for ring in self.e2e.values()))

    def totals(self) -> Dict[str, float]:
        """Counters summed over streams (timestamps left out)."""
        total: Dict[str, float] = {}
        for counters in self.streams.values():
            for key, value in counters.to_dict().items():
                if key in ("first_timestamp", "last_reset_timestamp"):
                    continue
                total[key] = total.get(key, 0) + value
        return total

    def engine_facts(self) -> Dict[str, object]:
        """The engine's description now (kind, device, and for ``auto`` the active forward and the switch)."""
        if self.describe_engine is not None:
            return self.describe_engine()
        engine = self.info.get("engine")
        return dict(engine) if isinstance(engine, dict) else {}

    def delay_budget(self):
        """The delay as the brain sees it (`serving.delay.DelayBudget`): the filters' group delay
        at the band centre + the mean hop wait + the median e2e latency; None before the model's
        delay is known."""
        delay = self.info.get("delay")
        if not delay:
            return None
        from brainformer_rt.serving.delay import delay_budget

        return delay_budget(delay, int(self.info["hop_samples"]), float(self.info["model_sfreq_hz"]),
                            self.e2e_summary()["median_ms"])

    def to_dict(self) -> Dict[str, object]:
        """Everything as plain JSON-serialisable types (NaN is written as null by :func:`json_ready`)."""
        duration_s = timed_s = None
        if self.started_at is not None and self.stopped_at is not None:
            duration_s = self.stopped_at - self.started_at
            timed_s = self.stopped_at - (self.timings_started_at or self.started_at)
        batch = self.batch_sizes.kept()
        budget = self.delay_budget()
        return json_ready({
            "info": {**self.info, "engine": self.engine_facts()},
            "duration_s": duration_s,  # serving, start to stop (the counters cover this)
            "timed_duration_s": timed_s,  # the period the timings cover (after the warm-up)
            "totals": self.totals(),
            "streams": {name: c.to_dict() for name, c in self.streams.items()},
            "gauges": {name: g.to_dict() for name, g in self.gauges.items()},
            "stages": {stage: ring.summary() for stage, ring in self.stages.items()},
            "adaptation": {name: ring.summary() for name, ring in self.adapt.items()},  # part of "preprocess"
            "e2e_latency": {"all": self.e2e_summary(), **{name: self.e2e_summary(name) for name in self.stream_names}},
            # The e2e latency is transport and compute; the brain signal is seen later still.
            "delay_budget": None if budget is None else budget.to_dict(),
            "forward_calls": self.forward_calls,
            "mean_batch": float(batch.mean()) if batch.size else None,
        })


def json_ready(value):
    """Replace NaN/inf floats by None, recursively, so ``json.dumps`` writes strict JSON."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
