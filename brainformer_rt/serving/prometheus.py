"""Prometheus exporter of the serve daemon (``--metrics-port N``).

An HTTP server on ``127.0.0.1:N`` (``metrics_host`` in the serve config chooses another address,
with a warning when other machines can reach it) answers ``GET /metrics`` in the Prometheus text
format. Nothing is updated on the daemon's hot path: every scrape reads :class:`ServeMetrics`
(the same numbers as the final table and the stats JSON) and folds the timings added since the
previous scrape into cumulative histograms (:meth:`ServeMetrics.take_new`), so the cost of the
exporter is paid in its own thread, once per scrape.

Metrics (``stream`` label = the stream as given with ``--stream``):

============================================  =========  ==============================================
name                                          type       meaning
============================================  =========  ==============================================
brainformer_samples_in_total                  counter    raw EEG samples pulled
brainformer_samples_published_total           counter    predicted samples published
brainformer_windows_served_total              counter    windows run through the model
brainformer_windows_skipped_total             counter    windows never run: a newer one was served
brainformer_windows_stale_total               counter    due windows dropped: input too old
brainformer_gaps_total                        counter    discontinuities in the input (each resets)
brainformer_gap_samples_total                 counter    samples missing in those gaps (estimated)
brainformer_reconnects_total                  counter    connections liblsl re-established
brainformer_silences_total                    counter    times the input stopped for ``silence_s``
brainformer_nan_chunks_total                  counter    input chunks dropped for NaN/Inf
brainformer_nan_windows_total                 counter    windows not served because of NaN/Inf
brainformer_flat_windows_total                counter    windows served while a channel was flat
brainformer_zmq_drops_total                   counter    ZeroMQ messages refused by the socket
brainformer_replans_total                     counter    adaptation re-plans swapped in (bad/recovered channels)
brainformer_replans_refused_total             counter    re-plans that could not be made
brainformer_channels_interpolated_total       counter    stream channels gone bad, replaced by interpolation
brainformer_e2e_latency_seconds               histogram  input sample pushed → its prediction published
brainformer_forward_seconds                   histogram  one batched model forward (no stream label)
brainformer_stage_seconds{stage}              histogram  pull (transport), preprocess, publish
brainformer_adapt_seconds{stream}             histogram  source adaptation of one pull (a part of preprocess)
brainformer_buffer_fill_ratio                 gauge      share of a model window held since the last reset
brainformer_clock_offset_seconds              gauge      liblsl clock offset added to the timestamps
brainformer_timestamp_offset_seconds          gauge      timestamps behind this clock (source clock reset)
brainformer_input_lag_seconds                 gauge      age of the newest sample when it was pulled
brainformer_seconds_since_input               gauge      time since the last input arrived
brainformer_flat_channels                     gauge      input channels flat in the last second
brainformer_last_outage_seconds               gauge      last input before the newest reset → output again
brainformer_bad_channels                      gauge      stream channels left out as bad now
brainformer_interpolated_channels             gauge      model electrodes interpolated now
brainformer_resampler_delay_seconds           gauge      mean hold-back of the input resampler
brainformer_expected_r                        gauge      expected r of the stream's cap as it is now
brainformer_serving                           gauge      1 while serving, 0 while starting
brainformer_filter_group_delay_seconds        gauge      the filters' group delay on the prediction, per
  {point, frequency_hz}                                  point (band edges, centre, theta/alpha/beta)
brainformer_filter_phase_delay_seconds        gauge      their phase delay, the same points
  {point, frequency_hz}
brainformer_hop_wait_seconds                  gauge      mean wait of a hop's samples for its newest
brainformer_info                              info       model, engine, device, target phase
process_*                                     (std)      the daemon process: RSS, CPU, open files
============================================  =========  ==============================================

The e2e latency is transport and compute only: the brain signal reaches a consumer later by the
filters' group delay (``point="band centre"``) and the hop wait as well (docs/latency.md).

Histograms include the values of the warm-up period (``warmup_s`` only resets the final table).
A scrape that comes more than ~30 min of windows after the previous one misses the oldest ones.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Dict, Iterable, List, Sequence, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from brainformer_rt.serving.metrics import ServeMetrics, TimingRing

__all__ = ["ExporterError", "MetricsExporter", "ServeCollector", "start_exporter", "E2E_BUCKETS_S", "STAGE_BUCKETS_S"]

logger = logging.getLogger(__name__)

#: Upper bounds of the latency histogram buckets (seconds).
E2E_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
                 1.0)
#: Upper bounds of the forward / stage histogram buckets (seconds).
STAGE_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
                   0.25)

_COUNTERS = (
    ("samples_in", "Raw EEG samples pulled from the inlet."),
    ("samples_published", "Predicted MEG samples published."),
    ("windows_served", "Windows run through the model."),
    ("windows_skipped", "Windows never run because a newer one was served."),
    ("windows_stale", "Due windows dropped because their newest input sample was too old."),
    ("gaps", "Discontinuities in the input timestamps; each resets the stream."),
    ("gap_samples", "Input samples missing in those gaps (estimated)."),
    ("reconnects", "Connections liblsl re-established to a restarted source."),
    ("silences", "Times the input stopped for longer than silence_s."),
    ("nan_chunks", "Input chunks dropped because they held NaN/Inf."),
    ("nan_windows", "Windows not served because of NaN/Inf input or predictions."),
    ("flat_windows", "Windows served while at least one input channel was flat."),
    ("zmq_drops", "ZeroMQ messages the socket refused."),
    ("replans", "Adaptation re-plans swapped in (channels gone bad or recovered)."),
    ("replans_refused", "Adaptation re-plans that could not be made (no positions, too many bad)."),
    ("channels_interpolated", "Stream channels that went bad and were replaced by interpolation."),
)


class ExporterError(ValueError):
    """The metrics server cannot start (e.g. the port is taken); the message names host and port."""


class _CumulativeHistogram:
    """Bucket counts of every value folded in so far (non-cumulative internally)."""

    def __init__(self, bounds_s: Sequence[float]) -> None:
        self.bounds_s = np.asarray(bounds_s, dtype=np.float64)
        self.counts = np.zeros(len(bounds_s) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self.sum_s = 0.0
        self.seen_count = 0
        self.seen_clears = 0
        self.lost = 0

    def fold(self, values_s: np.ndarray) -> None:
        if values_s.size == 0:
            return
        finite = values_s[np.isfinite(values_s)]
        # side="left": a value equal to a bound goes into that bound's bucket (Prometheus "le").
        index = np.searchsorted(self.bounds_s, finite, side="left")
        self.counts += np.bincount(index, minlength=self.counts.size)
        self.sum_s += float(finite.sum())

    def buckets(self) -> List[Tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        bounds = [repr(float(b)) for b in self.bounds_s] + ["+Inf"]
        return [(bound, float(count)) for bound, count in zip(bounds, cumulative)]


class ServeCollector(Collector):
    """Reads one :class:`ServeMetrics` at every scrape (see the module docstring for the names)."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()  # scrapes may come concurrently
        self._e2e: Dict[str, _CumulativeHistogram] = {}
        self._stages: Dict[str, _CumulativeHistogram] = {}
        self._adapt: Dict[str, _CumulativeHistogram] = {}

    def _fold(self, histogram: _CumulativeHistogram, ring: TimingRing) -> None:
        values, count, clears, lost = self.metrics.take_new(ring, histogram.seen_count, histogram.seen_clears)
        histogram.fold(values)
        histogram.seen_count, histogram.seen_clears = count, clears
        histogram.lost += lost

    def collect(self) -> Iterable:
        yield from self._counters()
        with self._lock:
            yield from self._histograms()
        yield from self._gauges()
        yield from self._info()

    def _counters(self) -> Iterable:
        metrics = self.metrics
        for key, doc in _COUNTERS:
            family = CounterMetricFamily(f"brainformer_{key}", doc, labels=["stream"])
            for name in metrics.stream_names:
                family.add_metric([name], float(getattr(metrics.streams[name], key)))
            yield family

    def _histograms(self) -> Iterable:
        """End-to-end latency per stream, the forward, the other stages (called under the lock:
        folding the new values in is not reentrant)."""
        metrics = self.metrics
        e2e = HistogramMetricFamily("brainformer_e2e_latency_seconds",
                                    "Input sample pushed (its LSL timestamp) to its prediction published.",
                                    labels=["stream"])
        for name in metrics.stream_names:
            histogram = self._e2e.setdefault(name, _CumulativeHistogram(E2E_BUCKETS_S))
            self._fold(histogram, metrics.e2e[name])
            e2e.add_metric([name], histogram.buckets(), histogram.sum_s)
        yield e2e
        stage_family = HistogramMetricFamily("brainformer_stage_seconds",
                                             "Per-stage time: pull (transport), preprocess, publish.",
                                             labels=["stage"])
        forward_family = HistogramMetricFamily("brainformer_forward_seconds", "One batched model forward.")
        for stage, ring in metrics.stages.items():
            histogram = self._stages.setdefault(stage, _CumulativeHistogram(STAGE_BUCKETS_S))
            self._fold(histogram, ring)
            if stage == "forward":
                forward_family.add_metric([], histogram.buckets(), histogram.sum_s)
            else:
                stage_family.add_metric([stage], histogram.buckets(), histogram.sum_s)
        adapt_family = HistogramMetricFamily("brainformer_adapt_seconds",
                                             "Source adaptation (units, channels, interpolation, resampling) of "
                                             "one pull: a part of the preprocess stage.", labels=["stream"])
        for name in metrics.stream_names:
            histogram = self._adapt.setdefault(name, _CumulativeHistogram(STAGE_BUCKETS_S))
            self._fold(histogram, metrics.adapt[name])
            adapt_family.add_metric([name], histogram.buckets(), histogram.sum_s)
        yield forward_family
        yield stage_family
        yield adapt_family

    def _gauges(self) -> Iterable:
        metrics = self.metrics
        clock = metrics.clock
        now = clock() if clock is not None else math.nan
        gauges = {
            "buffer_fill_ratio": ("Share of a model window held since the last reset (1 when serving).",
                                  lambda g: g.buffer_fill),
            "clock_offset_seconds": ("liblsl clock offset added to the stream's timestamps (0 on this host).",
                                     lambda g: g.clock_offset_s),
            "timestamp_offset_seconds": ("How far the stream's timestamps are behind this machine's clock when "
                                         "they are not in it (source clock reset); 0 normally.",
                                         lambda g: g.timestamp_offset_s),
            "input_lag_seconds": ("Age of the newest input sample when it was pulled.", lambda g: g.input_lag_s),
            "seconds_since_input": ("Seconds since input last arrived.", lambda g: now - g.last_arrival),
            "flat_channels": ("Input channels without any change in the last second.", lambda g: g.flat_channels),
            "last_outage_seconds": ("Last input before the newest reset to the next published prediction.",
                                    lambda g: g.last_outage_s),
            "bad_channels": ("Stream channels left out as bad now (interpolated).", lambda g: g.bad_channels),
            "interpolated_channels": ("Model electrodes interpolated now (missing, bad or another cap).",
                                      lambda g: g.interpolated_channels),
            "resampler_delay_seconds": ("Mean hold-back of the input resampler (0: no resampling).",
                                        lambda g: g.resampler_delay_s),
            "expected_r": ("Expected r of the stream's cap as it is now (the linear path re-solved for its "
                           "electrodes; NaN without the model's statistics).", lambda g: g.expected_r),
        }
        for key, (doc, read) in gauges.items():
            family = GaugeMetricFamily(f"brainformer_{key}", doc, labels=["stream"])
            for name in metrics.stream_names:
                family.add_metric([name], float(read(metrics.gauges[name])))
            yield family
        serving = metrics.started_at is not None and metrics.stopped_at is None
        yield GaugeMetricFamily("brainformer_serving", "1 while the daemon serves, 0 while it starts.",
                                value=1.0 if serving else 0.0)
        yield from self._delay_gauges()

    def _delay_gauges(self) -> Iterable:
        """The designed delay of the prediction against the brain (known once the model is loaded)."""
        metrics = self.metrics
        delay = metrics.info.get("delay")
        if not delay:
            return
        group = GaugeMetricFamily("brainformer_filter_group_delay_seconds",
                                  "Group delay the filters put on the predicted brain signal (envelopes), per "
                                  "frequency; 0 for a zero-phase target. Comes on top of the e2e latency.",
                                  labels=["point", "frequency_hz"])
        phase = GaugeMetricFamily("brainformer_filter_phase_delay_seconds",
                                  "Phase delay the filters put on the predicted brain signal (cycles), per frequency.",
                                  labels=["point", "frequency_hz"])
        for point in delay["points"]:
            labels = [point["label"], f"{point['frequency_hz']:g}"]
            group.add_metric(labels, point["group_delay_ms"] * 1e-3)
            phase.add_metric(labels, point["phase_delay_ms"] * 1e-3)
        yield group
        yield phase
        budget = metrics.delay_budget()
        yield GaugeMetricFamily("brainformer_hop_wait_seconds",
                                "Mean wait of a hop's samples for its newest one: (hop - 1) / 2 samples.",
                                value=budget.hop_wait_ms * 1e-3)

    def _info(self) -> Iterable:
        metrics = self.metrics
        engine = metrics.engine_facts()
        switch = engine.get("switch") or {}
        yield GaugeMetricFamily("brainformer_engine_switched",
                                "1 once the auto engine serves with the compiled forward, else 0.",
                                value=1.0 if switch.get("state") == "switched" else 0.0)
        info = InfoMetricFamily("brainformer", "What is served.")
        info.add_metric([], {"model": str(metrics.info.get("model", "")), "engine": str(engine.get("kind", "")),
                             "active_engine": str(engine.get("active", engine.get("kind", ""))),
                             "device": str(engine.get("device", "")),
                             "target_phase": str((metrics.info.get("delay") or {}).get("target_phase", ""))})
        yield info


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must never keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # one line per scrape would drown the daemon's own log


class MetricsExporter:
    """The HTTP server answering ``/metrics`` from one :class:`ServeMetrics`.

    Life cycle: construct (binds and serves in a daemon thread) → ``close()``.
    """

    #: How often the server thread looks for a shutdown request: bounds ``close()``.
    POLL_INTERVAL_S = 0.05

    def __init__(self, metrics: ServeMetrics, host: str = "127.0.0.1", port: int = 9100) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = ServeCollector(metrics)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # RSS, CPU time, open files of the daemon process
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_ThreadingWSGIServer,), {"address_family": family})
        try:
            self._server = make_server(host, port, make_wsgi_app(self.registry), server_class, _QuietHandler)
        except OSError as error:
            raise ExporterError(f"metrics_port {port}: cannot listen on {host}:{port}: {error.strerror or error}") from None
        self.host, self.port = host, self._server.server_address[1]
        if not _is_loopback_host(host):
            logger.warning("the metrics server listens on %s:%d, which other machines can reach (no authentication)",
                           host, self.port, extra={"event": "non_loopback_bind", "address": self.address})
        self._thread = threading.Thread(target=self._server.serve_forever, args=(self.POLL_INTERVAL_S,),
                                        name="metrics-http", daemon=True)
        self._thread.start()
        logger.info("Prometheus metrics on %s", self.address, extra={"event": "metrics_listening",
                                                                      "address": self.address})

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (within ``POLL_INTERVAL_S``) and release the port; idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread.join(1.0)


def start_exporter(metrics: ServeMetrics, host: str, port: int) -> MetricsExporter:
    """Start the metrics server; raises :class:`ExporterError` naming the port when it cannot."""
    return MetricsExporter(metrics, host, port)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
