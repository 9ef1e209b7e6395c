"""The delay the filters put on the brain signal is published wherever the prediction goes: the
LSL outlet's meta-data (seen by a real inlet), the ZeroMQ header (seen by a real SUB), `check`,
the daemon's start-up log, its stats JSON and Prometheus.

The expected values come from `brainformer.preprocessing.design_delay` of the same config, so a
published figure that drifts from the design (or a model whose config lacks the target fields)
fails here.
"""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request
import uuid

import numpy as np
import pylsl
import pytest
import torch
import zmq
from prometheus_client.parser import text_string_to_metric_families

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.model_dir import load_fields
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer.preprocessing import design_delay
from brainformer_rt.serving.delay import CENTRE, delay_budget, hop_wait_ms, published_delay
from brainformer_rt.serving.inlet import find_stream
from brainformer_rt.serving.metrics import ServeMetrics
from brainformer_rt.serving.prometheus import ServeCollector
from brainformer_rt.serving.publishers.lsl import LSLPublisher
from brainformer_rt.serving.publishers.zmq import CHANNELS_EVERY, ZMQPublisher
from brainformer_rt.tools._proc import free_port, free_tcp_address
from tests.rt.conftest import HOP, Player, Serve, json_events, run_cli, wait_for_event

pytestmark = pytest.mark.timeout(120)

NAMES = ["MEG 0111", "MEG 0112", "MEG 0113", "MEG 0121"]
TYPES = ["grad", "grad", "mag", "mag"]


@pytest.fixture(scope="module")
def default_fields():
    """The bundled model's fields: its config.json has no target fields (a causal target)."""
    fields = load_fields("default")
    assert fields.target_phase == "causal" and fields.target_band_hz is None
    return fields


def lsl_children(element: pylsl.XMLElement, name: str) -> list[pylsl.XMLElement]:
    found, child = [], element.child(name)
    while not child.empty():
        found.append(child)
        child = child.next_sibling(name)
    return found


def expected_points(fields) -> list[dict]:
    """Output and input delay per point, straight from the design."""
    design = design_delay(fields)
    return [{"label": out.label, "frequency_hz": round(out.frequency_hz, 3), "group_delay_ms": round(out.group_delay_ms, 2),
             "phase_delay_ms": round(out.phase_delay_ms, 2), "input_group_delay_ms": round(src.group_delay_ms, 2),
             "input_phase_delay_ms": round(src.phase_delay_ms, 2)} for out, src in zip(design.output, design.input)]


# ---------------------------------------------------------------- what is published


def test_the_published_delay_is_the_design_with_every_filter_stage(default_fields):
    delay = published_delay(default_fields)
    assert delay["target_phase"] == "causal" and delay["band_hz"] == [4.0, 30.0]
    assert delay["points"] == expected_points(default_fields)
    centre = next(p for p in delay["points"] if p["label"] == CENTRE)
    assert centre["frequency_hz"] == pytest.approx(math.sqrt(4.0 * 30.0), abs=1e-3)
    assert centre["group_delay_ms"] > 20  # tens of ms: what the e2e latency never shows
    stages = [(s["signal"], s["type"], s["cutoff_hz"], s["order"], s["phase"]) for s in delay["filters"]]
    assert stages == [(signal, kind, cutoff, order, "causal") for signal in ("eeg input", "meg target")
                      for kind, cutoff, order in (("highpass", 4.0, 4), ("lowpass", 30.0, 4), ("notch", 60.0, 2))]
    assert delay["summary"] == design_delay(default_fields).summary()

    zero_phase = published_delay(default_fields.replace(target_phase="zero_phase"))
    assert zero_phase["target_phase"] == "zero_phase"
    assert all(p["group_delay_ms"] == 0 and p["phase_delay_ms"] == 0 for p in zero_phase["points"])
    assert [p["input_group_delay_ms"] for p in zero_phase["points"]] == [p["group_delay_ms"] for p in delay["points"]]
    assert {s["phase"] for s in zero_phase["filters"] if s["signal"] == "meg target"} == {"zero"}
    assert {s["phase"] for s in zero_phase["filters"] if s["signal"] == "eeg input"} == {"causal"}


def test_the_budget_adds_the_filters_the_hop_wait_and_the_e2e_median(default_fields):
    delay = published_delay(default_fields)
    budget = delay_budget(delay, 16, default_fields.sfreq_hz, 2.0)
    centre = design_delay(default_fields).centre
    assert budget.filter_ms == round(centre.group_delay_ms, 2) and budget.frequency_hz == pytest.approx(centre.frequency_hz, abs=1e-3)
    assert budget.hop_wait_ms == pytest.approx(1e3 * 7.5 / default_fields.sfreq_hz)
    assert budget.total_ms == pytest.approx(budget.filter_ms + budget.hop_wait_ms + 2.0)
    assert hop_wait_ms(1, default_fields.sfreq_hz) == 0.0  # a hop of one sample waits for nothing
    assert delay_budget(delay, 16, default_fields.sfreq_hz, math.nan).total_ms is None


def test_lsl_outlet_meta_data_seen_by_a_real_inlet(stream_name, default_fields):
    delay = published_delay(default_fields)
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, default_fields.sfreq_hz, "default",
                             delay=delay)
    try:
        inlet = pylsl.StreamInlet(find_stream(stream_name, wait_s=10.0))
        info = inlet.info(10.0)  # kept: `desc()` points into it
        desc = info.desc()
    finally:
        publisher.close()
    filters = lsl_children(desc.child("filters"), "filter")
    assert [{key: f.child_value(key) for key in stage} for f, stage in zip(filters, delay["filters"])] == [
        {key: str(value) for key, value in stage.items()} for stage in delay["filters"]]
    assert len(filters) == 6
    published = desc.child("delay")
    assert published.child_value("target_phase") == "causal"
    assert (float(published.child_value("band_low_hz")), float(published.child_value("band_high_hz"))) == (4.0, 30.0)
    assert published.child_value("summary") == delay["summary"]
    points = [{"label": p.child_value("label"), **{key: float(p.child_value(key)) for key in (
        "frequency_hz", "group_delay_ms", "phase_delay_ms", "input_group_delay_ms", "input_phase_delay_ms")}}
              for p in lsl_children(published, "point")]
    assert points == expected_points(default_fields)
    # The channels are described as before.
    assert len(lsl_children(desc.child("channels"), "channel")) == len(NAMES)


def test_lsl_outlet_without_a_delay_has_no_delay_meta_data(stream_name):
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, 600.0, "m")
    try:
        info = pylsl.StreamInlet(find_stream(stream_name, wait_s=10.0)).info(10.0)
        desc = info.desc()
    finally:
        publisher.close()
    assert desc.child("delay").empty() and desc.child("filters").empty()


def subscribed(address: str, *topics: bytes) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(address)
    return sub


def test_zmq_header_carries_the_delay_with_the_channel_names_seen_by_a_real_sub(default_fields):
    delay = published_delay(default_fields)
    publisher = ZMQPublisher("tcp://127.0.0.1:*", b"meg", channel_names=NAMES, channel_types=TYPES,
                             sfreq_hz=default_fields.sfreq_hz, model_name="default", stream_name="EEG", delay=delay)
    # Subscribed to both topics at once: once a probe arrives, the "meg" subscription is in place
    # too, and no "meg" message has been sent yet.
    sub = subscribed(publisher.address, b"meg", b"probe")
    probe = publisher.add_topic(b"probe", "probe")
    try:
        deadline = time.monotonic() + 30
        while not sub.poll(50):
            assert time.monotonic() < deadline, "the subscriber never received the probe"
            probe.publish(np.zeros((1, 4), np.float32), np.zeros(1))
        while sub.poll(0):
            sub.recv_multipart()
        headers = []
        for k in range(CHANNELS_EVERY + 1):  # read in two halves: never more queued than the high-water mark
            publisher.publish(np.full((1, 4), k, np.float32), np.array([float(k)]))
            if k in (50, CHANNELS_EVERY):
                while len(headers) < k + 1:
                    assert sub.poll(10_000), f"only {len(headers)} messages arrived"
                    headers.append(json.loads(sub.recv_multipart()[1]))
    finally:
        sub.close(linger=0)
        publisher.close()
    assert [h["seq"] for h in headers] == list(range(CHANNELS_EVERY + 1))
    assert [h["seq"] for h in headers if "delay" in h] == [0, CHANNELS_EVERY]
    assert headers[0]["delay"] == json.loads(json.dumps(delay)) and "channels" in headers[0]
    assert headers[0]["delay"]["points"] == expected_points(default_fields)


def test_prometheus_gauges_carry_the_delay_per_point(default_fields):
    metrics = ServeMetrics(["EEG"])
    collector = ServeCollector(metrics)
    assert not [f for f in collector.collect() if f.name == "brainformer_filter_group_delay_seconds"]  # not yet known
    delay = published_delay(default_fields)
    metrics.info.update({"delay": delay, "hop_samples": 16, "model_sfreq_hz": default_fields.sfreq_hz})
    families = {family.name: family for family in collector.collect()}
    group = {s.labels["point"]: (s.labels["frequency_hz"], s.value) for s in families["brainformer_filter_group_delay_seconds"].samples}
    phase = {s.labels["point"]: s.value for s in families["brainformer_filter_phase_delay_seconds"].samples}
    for point in delay["points"]:
        assert group[point["label"]] == (f"{point['frequency_hz']:g}", pytest.approx(point["group_delay_ms"] * 1e-3))
        assert phase[point["label"]] == pytest.approx(point["phase_delay_ms"] * 1e-3)
    assert families["brainformer_hop_wait_seconds"].samples[0].value == pytest.approx(7.5 / default_fields.sfreq_hz)
    info = families["brainformer"].samples[0].labels
    assert info["target_phase"] == "causal"


# ---------------------------------------------------------------- check


def test_check_prints_the_delay_of_the_model(start_player, stream_name, default_fields):
    start_player(stream_name, "--loop")
    result = run_cli("check", "--stream", stream_name, "--model", "default", "--wait", "30")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    centre = design_delay(default_fields).centre
    lines = result.stdout.splitlines()
    summary = next(line for line in lines if line.startswith("delay as the brain sees it:"))
    assert "causal target" in summary and f"{centre.group_delay_ms:.0f} ms at {centre.frequency_hz:.1f} Hz" in summary
    per_frequency = next(line for line in lines if "group / phase delay of the prediction (ms)" in line)
    for point in published_delay(default_fields)["points"]:
        assert f"({point['label']}) {point['group_delay_ms']:.1f} / {point['phase_delay_ms']:.1f}" in per_frequency
    assert "hop wait of 12.5 ms (hop 16 samples)" in result.stdout
    assert lines[-1].startswith("ok:")


def test_check_of_a_zero_phase_model_says_it_adds_no_filter_delay(start_player, stream_name, tmp_path, eeg_names):
    torch.manual_seed(0)
    config = BrainformerConfig(eeg_channel_names=eeg_names, window_samples=64, hop_samples=8, patch_len=16, d_model=16,
                               n_heads=2, d_ff=32, router_dim=4, highpass_hz=4.0, lowpass_hz=30.0,
                               target_phase="zero_phase")
    BrainformerForMEGPrediction(config).eval().save_pretrained(tmp_path / "zero")
    start_player(stream_name, "--loop")
    result = run_cli("check", "--stream", stream_name, "--model", str(tmp_path / "zero"), "--wait", "30")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "zero-phase target" in result.stdout and "filter delay 0 ms" in result.stdout
    assert f"({CENTRE}) 0.0 / 0.0" in result.stdout


# ---------------------------------------------------------------- the daemon


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_a_serving_daemon_publishes_its_delay_on_every_output(model_dir, tmp_path):
    """One daemon: the start-up event, the LSL outlet's meta-data, a ZeroMQ header, Prometheus
    and the stats JSON all carry the design of the model's filters (its config has a causal target)."""
    fields = load_fields(model_dir)
    delay = published_delay(fields)
    eeg, meg = f"test-eeg-{uuid.uuid4().hex[:8]}", f"test-meg-{uuid.uuid4().hex[:8]}"
    address, port = free_tcp_address(), free_port()
    config = tmp_path / "serve.toml"
    config.write_text("torch_threads = 1\nwait_s = 60.0\n")
    stats_path = tmp_path / "stats.json"
    player = Player(eeg, f"test-{uuid.uuid4()}")
    serve = Serve(tmp_path, "--stream", eeg, "--model", str(model_dir), "--zmq", address, "--lsl-name", meg,
                  "--config", str(config), "--metrics-port", str(port), "--log-format", "json",
                  "--stats-json", str(stats_path))
    sub = subscribed(address, b"meg")
    try:
        event = wait_for_event(serve, "signal_delay")
        wait_for_event(serve, "first_prediction")
        info = pylsl.StreamInlet(find_stream(meg, wait_s=30.0)).info(30.0)
        desc = info.desc()
        # The header with the delay comes with message 0 and every 100th: wait for one.
        deadline, header = time.monotonic() + 60, None
        while header is None or "delay" not in header:
            assert time.monotonic() < deadline and serve.process.poll() is None, "no header with the delay"
            if sub.poll(100):
                header = json.loads(sub.recv_multipart()[1])
        scraped = scrape(f"http://127.0.0.1:{port}/metrics")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        sub.close(linger=0)
        serve.close()
        player.stop()
    centre = next(p for p in delay["points"] if p["label"] == CENTRE)
    assert event["target_phase"] == "causal" and event["filter_group_delay_ms"] == centre["group_delay_ms"]
    assert event["hop_wait_ms"] == pytest.approx(hop_wait_ms(HOP, fields.sfreq_hz))
    assert event["group_delay_ms"] == {p["label"]: p["group_delay_ms"] for p in delay["points"]}
    assert "delay as the brain sees it" in serve.stdout  # for people, at start-up

    points = lsl_children(desc.child("delay"), "point")
    assert [float(p.child_value("group_delay_ms")) for p in points] == [p["group_delay_ms"] for p in delay["points"]]
    assert header["seq"] % CHANNELS_EVERY == 0 and header["delay"] == json.loads(json.dumps(delay))
    key = ("brainformer_filter_group_delay_seconds",
           (("frequency_hz", f"{centre['frequency_hz']:g}"), ("point", CENTRE)))
    assert scraped[key] == pytest.approx(centre["group_delay_ms"] * 1e-3)

    stats = json.loads(stats_path.read_text())
    assert stats["info"]["delay"] == json.loads(json.dumps(delay))
    budget = stats["delay_budget"]
    assert budget["e2e_median_ms"] == stats["e2e_latency"]["all"]["median_ms"] > 0
    assert budget["total_ms"] == pytest.approx(budget["filter_group_delay_ms"] + budget["hop_wait_ms"]
                                               + budget["e2e_median_ms"])
    assert "delay as the brain sees it (mean, in band)" in serve.stdout  # the final table
    assert np.isfinite(budget["total_ms"]) and json_events(serve.stderr)
