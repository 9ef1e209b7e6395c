"""Observability: the Prometheus exporter (``--metrics-port``) and structured JSON logs.

The exporter is scraped over HTTP on loopback while a real daemon serves a real player; the
collector's histogram arithmetic is checked in-process on hand-filled metrics.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
import uuid

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from brainformer_rt.tools._proc import free_port, free_tcp_address
from brainformer_rt.serving.metrics import ServeMetrics
from brainformer_rt.serving.prometheus import E2E_BUCKETS_S, MetricsExporter
from tests.rt.conftest import Player, Serve, json_events, run_cli, wait_for_event

pytestmark = pytest.mark.timeout(120)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted label items): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_until(url: str, condition, serve: Serve, timeout_s: float = 60.0) -> dict[tuple[str, tuple], float]:
    """Scrape until ``condition(samples)`` holds (a hang timeout only); that scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        assert serve.process.poll() is None, serve.stderr
        assert time.monotonic() < deadline, f"the metrics never got there: {serve.stderr}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# The collector on hand-filled metrics
# ----------------------------------------------------------------------------------------------
def test_histograms_fold_each_value_once_across_scrapes_clears_and_wraps():
    metrics = ServeMetrics(["a"], capacity=8)
    exporter = MetricsExporter(metrics, "127.0.0.1", 0)
    url = exporter.address
    try:
        values = [0.0004, 0.001, 0.004, 2.0]  # 0.001 sits exactly on a bound: "le" includes it
        for v in values:
            metrics.add_e2e("a", v)
        first = scrape(url)
        assert value(first, "brainformer_e2e_latency_seconds_count", stream="a") == 4
        assert value(first, "brainformer_e2e_latency_seconds_bucket", stream="a", le="0.001") == 2
        assert value(first, "brainformer_e2e_latency_seconds_bucket", stream="a", le="0.005") == 3
        assert value(first, "brainformer_e2e_latency_seconds_bucket", stream="a", le="1.0") == 3
        assert value(first, "brainformer_e2e_latency_seconds_bucket", stream="a", le="+Inf") == 4
        assert value(first, "brainformer_e2e_latency_seconds_sum", stream="a") == pytest.approx(sum(values))
        again = scrape(url)  # nothing new: nothing folded twice
        histogram = {k: v for k, v in first.items() if k[0].startswith("brainformer_e2e_latency_seconds")}
        assert histogram and all(again[k] == v for k, v in histogram.items())
        metrics.reset_timings()  # the warm-up ends: the ring restarts, the histogram keeps its values
        metrics.add_e2e("a", 0.002)
        after_clear = scrape(url)
        assert value(after_clear, "brainformer_e2e_latency_seconds_count", stream="a") == 5
        for _ in range(20):  # more than the ring holds between two scrapes: 12 are lost
            metrics.add_e2e("a", 0.003)
        after_wrap = scrape(url)
        assert value(after_wrap, "brainformer_e2e_latency_seconds_count", stream="a") == 5 + 8
        metrics.add_forward(0.0012, batch=1)
        metrics.streams["a"].gaps = 3
        metrics.gauges["a"].buffer_fill = 0.5
        latest = scrape(url)
        assert value(latest, "brainformer_forward_seconds_count") == 1
        assert value(latest, "brainformer_gaps_total", stream="a") == 3
        assert value(latest, "brainformer_buffer_fill_ratio", stream="a") == 0.5
        assert value(latest, "brainformer_serving") == 0.0  # not started
    finally:
        exporter.close()
    assert len(E2E_BUCKETS_S) == len([k for k in latest if k[0] == "brainformer_e2e_latency_seconds_bucket"]) - 1


@pytest.mark.parametrize("host_flags, host", [([], "127.0.0.1"), (["--metrics-host", "127.0.0.2"], "127.0.0.2")])
def test_a_busy_metrics_port_exits_2_naming_it(host_flags, host):
    """The default host, or the one ``--metrics-host`` gives (overriding the TOML default)."""
    with socket.socket() as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:6]}", "--metrics-port", str(port),
                         *host_flags, "--wait", "60")
    assert result.exit_code == 2, result.output
    assert f"metrics_port {port}: cannot listen on {host}:{port}" in result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------------------------
# A real daemon, scraped while it serves; its JSON log
# ----------------------------------------------------------------------------------------------
def test_metrics_are_scraped_from_a_serving_daemon_and_logs_are_json(model_dir, tmp_path):
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "serve.toml"
    # No staleness: a stalled machine must not drop windows (the staleness tests are elsewhere).
    config.write_text("torch_threads = 1\nwait_s = 60.0\nstats_interval_s = 1.0\nmax_input_age_s = inf\n")
    serve = Serve(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", free_tcp_address(), "--lsl-name",
                  f"meg-{uuid.uuid4().hex[:8]}", "--config", str(config), "--metrics-port", str(port),
                  "--log-format", "json", "--device", "cpu", "--engine", "eager")  # asserted below
    url = f"http://127.0.0.1:{port}/metrics"
    player = None
    counters = ("samples_in", "samples_published", "windows_served")

    def served_more_than(earlier: dict):
        """Every counter and the latency histogram have grown since ``earlier``."""
        def grown(samples: dict) -> bool:
            return all(value(samples, f"brainformer_{c}_total", stream=name)
                       > value(earlier, f"brainformer_{c}_total", stream=name) for c in counters) \
                and value(samples, "brainformer_e2e_latency_seconds_count", stream=name) \
                > value(earlier, "brainformer_e2e_latency_seconds_count", stream=name)
        return grown

    try:
        listening = wait_for_event(serve, "metrics_listening")
        starting = scrape(url)  # reachable before serving starts: there is no stream to serve yet
        player = Player(name, f"test-{uuid.uuid4()}")
        wait_for_event(serve, "first_prediction")
        first = scrape_until(url, served_more_than(starting), serve)
        second = scrape_until(url, served_more_than(first), serve)
        deadline = time.monotonic() + 60.0
        while not (progress := [e for e in json_events(serve.stderr) if e["event"] == "progress"
                                and e.get("windows_served", 0) > 0]):  # one second apart: one after the first window
            assert serve.process.poll() is None and time.monotonic() < deadline, serve.stderr
            time.sleep(0.05)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        serve.close()
        if player is not None:
            player.stop()
    assert listening["address"] == url
    assert value(starting, "brainformer_serving") == 0.0 and value(first, "brainformer_serving") == 1.0
    for counter in counters:
        assert value(starting, f"brainformer_{counter}_total", stream=name) == 0, counter
    for counter in ("gaps", "reconnects", "nan_windows", "nan_chunks", "windows_stale", "zmq_drops"):
        assert value(second, f"brainformer_{counter}_total", stream=name) == 0, counter
    e2e_second = value(second, "brainformer_e2e_latency_seconds_count", stream=name)
    assert value(second, "brainformer_e2e_latency_seconds_bucket", stream=name, le="+Inf") == e2e_second
    assert value(second, "brainformer_forward_seconds_count") >= value(second, "brainformer_windows_served_total",
                                                                       stream=name) - 1
    assert value(second, "brainformer_stage_seconds_count", stage="pull") > 0
    assert value(second, "brainformer_buffer_fill_ratio", stream=name) == 1.0
    assert value(second, "brainformer_clock_offset_seconds", stream=name) == 0.0
    assert np.isfinite(value(second, "brainformer_seconds_since_input", stream=name))
    assert value(second, "process_resident_memory_bytes") > 0
    info = [dict(labels) for sample, labels in second if sample == "brainformer_info"]
    assert len(info) == 1 and info[0]["engine"] == "eager" and info[0]["device"] == "cpu"
    assert info[0]["model"] == str(model_dir)
    # Structured logs: every stderr line is one JSON object, the events name their stream and counts.
    events = json_events(serve.stderr)
    assert len(events) == len([line for line in serve.stderr.splitlines() if line.strip()])
    kinds = [e["event"] for e in events]
    for kind in ("metrics_listening", "waiting", "model_loading", "engine_ready", "stream_found", "serving",
                 "first_prediction", "progress", "stopping", "closed"):
        assert kind in kinds, kind
    assert progress[0]["stream"] == name and progress[0]["level"] == "info"
    assert {"gaps", "nan_windows", "zmq_drops", "e2e_p99_ms"} <= set(progress[0])
