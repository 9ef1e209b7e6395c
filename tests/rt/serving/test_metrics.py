"""Serving metrics: timing rings, percentile summaries, JSON and the rich table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console

from brainformer_rt.commands._serve_report import summary_table
from brainformer_rt.serving.metrics import ServeMetrics, TimingRing


def test_ring_keeps_the_newest_values_and_summarises_them_in_ms():
    ring = TimingRing(capacity=100)
    for i in range(250):
        ring.add(i * 1e-3)
    assert ring.count == 250
    kept = np.sort(ring.kept())
    np.testing.assert_allclose(kept, np.arange(150, 250) * 1e-3)
    summary = ring.summary()
    assert summary["count"] == 250
    assert summary["max_ms"] == pytest.approx(249.0)
    assert summary["median_ms"] == pytest.approx(np.median(np.arange(150, 250)))
    assert summary["p99_ms"] == pytest.approx(np.percentile(np.arange(150, 250), 99))
    np.testing.assert_allclose(np.sort(ring.recent(10)), np.arange(240, 250) * 1e-3)


def test_recent_across_the_wrap_point_returns_the_newest_in_order():
    ring = TimingRing(capacity=8)
    for i in range(11):
        ring.add(float(i))
    np.testing.assert_array_equal(ring.recent(5), [6.0, 7.0, 8.0, 9.0, 10.0])
    np.testing.assert_array_equal(ring.recent(100), np.arange(3.0, 11.0))


def test_adding_does_not_allocate_a_new_buffer():
    ring = TimingRing(capacity=16)
    buffer = ring.values_s
    for i in range(100):
        ring.add(float(i))
    assert ring.values_s is buffer


def test_empty_summary_is_nan_and_json_writes_null():
    metrics = ServeMetrics(["EEG"])
    assert math.isnan(metrics.e2e_summary()["p99_ms"])
    text = json.dumps(metrics.to_dict(), allow_nan=False)  # strict JSON: NaN became null
    assert json.loads(text)["e2e_latency"]["all"]["p99_ms"] is None


def test_to_dict_pools_streams_and_sums_counters():
    metrics = ServeMetrics(["a", "b"])
    for value in (1e-3, 2e-3, 3e-3):
        metrics.add_e2e("a", value)
    metrics.add_e2e("b", 10e-3)
    metrics.add_forward(5e-4, batch=2)
    metrics.add_stage("pull", 1e-4)
    metrics.streams["a"].windows_served = 3
    metrics.streams["b"].windows_served = 1
    metrics.streams["b"].gaps = 2
    data = metrics.to_dict()
    assert data["totals"]["windows_served"] == 4
    assert data["totals"]["gaps"] == 2
    assert data["e2e_latency"]["all"]["count"] == 4
    assert data["e2e_latency"]["all"]["max_ms"] == pytest.approx(10.0)
    assert data["e2e_latency"]["a"]["median_ms"] == pytest.approx(2.0)
    assert data["stages"]["forward"]["count"] == 1
    assert data["mean_batch"] == 2.0
    json.dumps(data, allow_nan=False)


def test_reset_timings_keeps_counters():
    metrics = ServeMetrics(["a"])
    metrics.add_e2e("a", 1e-3)
    metrics.streams["a"].samples_in = 5
    metrics.reset_timings()
    assert metrics.e2e_summary("a")["count"] == 0
    assert metrics.streams["a"].samples_in == 5


def test_summary_table_renders_every_stage_and_stream():
    metrics = ServeMetrics(["left", "right"])
    metrics.add_e2e("left", 2e-3)
    metrics.add_stage("forward", 1e-3)
    metrics.add_adapt("right", 0.25e-3)
    metrics.describe_engine = lambda: {"kind": "auto", "active": "aot",
                                       "switch": {"state": "switched", "switched_after_s": 41.5, "source": "compiled"}}
    console = Console(width=200, record=True)
    console.print(summary_table(metrics))
    text = console.export_text()
    for needle in ("stage: pull", "stage: forward", "e2e latency (all)", "e2e latency: right", "left", "2.000",
                   "of which adaptation: right", "0.250", "serving with aot since 41.5 s after start-up (compiled)"):
        assert needle in text


def test_timed_duration_starts_at_the_last_reset():
    clock = iter([10.0, 14.0]).__next__
    metrics = ServeMetrics(["a"])
    metrics.started_at = 8.0
    metrics.clock = clock
    metrics.add_forward(1e-3, 1)
    metrics.reset_timings()  # at 10.0
    metrics.stopped_at = 20.0
    data = metrics.to_dict()
    assert data["duration_s"] == 12.0 and data["timed_duration_s"] == 10.0
    assert data["forward_calls"] == 0
