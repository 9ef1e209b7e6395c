"""Faults the serve daemon must survive, each injected for real (LSL inside the loopback namespace).

- the EEG source dies and comes back with the same source_id (player killed and restarted);
- NaN/Inf and flat-lined channels in the input, and a model that predicts NaN;
- timestamps that jump backwards and forwards, chunks out of order;
- stalled and vanished ZeroMQ / LSL consumers next to a draining one;
- SIGTERM/SIGINT at every phase: model import/load, warm-up (compile), waiting, serving.

Measured times (recovery, exit after a signal, latencies) are printed, not asserted: run with
``-s`` to see them. Bounds that are asserted only catch hangs.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from pathlib import Path

import mne
import numpy as np
import pylsl
import pytest
import torch
import zmq

from brainformer.model_dir import load_model
from brainformer_rt.tools._proc import free_tcp_address
from brainformer.settings import ServeSettings
from brainformer_rt.serving.pipeline import StreamPipeline
from brainformer_rt.serving.scheduler import Scheduler
from brainformer_rt.serving.signals import StopRequest
from brainformer_rt.serving.engine import make_engine
from brainformer_rt.serving.inlet import EEGInlet
from brainformer_rt.serving.metrics import ServeMetrics
from brainformer_rt.serving.pipeline import open_stages
from brainformer_rt.serving.publishers.zmq import decode_message
from tests.rt.conftest import (
    HOP,
    WINDOW,
    ListPublisher,
    Player,
    Serve,
    json_events,
    nearest,
    open_inlet,
    wait_for_event,
)

pytestmark = pytest.mark.timeout(120)

SFREQ_HZ = 600.614990234375
PERIOD_S = 1.0 / SFREQ_HZ
TIMESTAMP_TOLERANCE_S = 0.25 * PERIOD_S


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eeg(sample_fif) -> np.ndarray:
    """``(n, 60)`` float32 volts: the EEG of the bundled recording."""
    raw = mne.io.read_raw_fif(sample_fif, verbose="error")
    return raw.get_data(picks=mne.pick_types(raw.info, meg=False, eeg=True, exclude=())).T.astype(np.float32)


class Subscriber(threading.Thread):
    """Drains a ZeroMQ SUB with NOBLOCK; keeps (received local_clock, header) of every message."""

    def __init__(self, address: str, topic: bytes = b"meg"):
        super().__init__(daemon=True)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(address)
        self.received: list[tuple[float, dict]] = []
        self._closing = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._closing.is_set():
            if poller.poll(20):
                while True:
                    try:
                        frames = self.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    header, payload = decode_message(frames)
                    assert np.all(np.isfinite(payload))
                    self.received.append((pylsl.local_clock(), header))

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self.socket.close(linger=0)


def latency_ms(received: list[tuple[float, dict]]) -> dict:
    values = np.array([(at - header["t_last"]) * 1e3 for at, header in received])
    if values.size == 0:
        return {"messages": 0}
    return {"messages": int(values.size), "median_ms": round(float(np.median(values)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3), "max_ms": round(float(values.max()), 3)}


def make_outlet(name: str, eeg_names: list[str]) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, "EEG", len(eeg_names), SFREQ_HZ, "float32", f"{name}-{uuid.uuid4().hex[:6]}")
    channels = info.desc().append_child("channels")
    for label in eeg_names:
        channels.append_child("channel").append_child_value("label", label).append_child_value("unit", "V")
    return pylsl.StreamOutlet(info)


class InProcessDaemon:
    """The real serve loop in a thread on a real inlet, publishing into a :class:`ListPublisher`."""

    def __init__(self, model_dir: Path, outlet_name: str, settings: ServeSettings, model=None):
        model = model if model is not None else load_model(model_dir)
        self.config = model.config
        self.inlet = EEGInlet(pylsl.resolve_byprop("name", outlet_name, 1, 10.0)[0], recover=True,
                              gap_threshold_s=settings.gap_threshold_s)
        self.inlet.open()
        self.sink = ListPublisher()
        self.metrics = ServeMetrics([outlet_name])
        engine = make_engine(model, "eager", "cpu", 1, WINDOW).setup()
        self.pipeline = StreamPipeline(outlet_name, self.inlet, open_stages(self.config, self.inlet.description),
                                       WINDOW, HOP, settings.gap_threshold_s, self.metrics.streams[outlet_name],
                                       [self.sink], engine.n_output_channels,
                                       gauges=self.metrics.gauges[outlet_name], silence_s=settings.silence_s)
        self.stop = StopRequest()
        self.daemon = Scheduler([self.pipeline], engine, np.asarray(self.config.meg_mean),
                             np.asarray(self.config.meg_std), settings, self.metrics, self.stop)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()

    @property
    def counters(self):
        return self.pipeline.counters

    def wait_for_output_after(self, timestamp: float, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.sink.calls or self.sink.calls[-1][1][-1] < timestamp - PERIOD_S / 2:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no prediction came"
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.event.set()
        self.thread.join(10.0)
        self.inlet.close()


def wait_for_messages(subscriber: "Subscriber", n_more: int, serve: Serve, timeout_s: float = 60.0) -> None:
    """Until ``subscriber`` received ``n_more`` messages more than it has now (a hang timeout)."""
    target = len(subscriber.received) + n_more
    deadline = time.monotonic() + timeout_s
    while len(subscriber.received) < target:
        assert serve.process.poll() is None, serve.stderr
        assert time.monotonic() < deadline, f"{target - len(subscriber.received)} messages missing: {serve.stderr}"
        time.sleep(0.01)


def push_real_time(outlet: pylsl.StreamOutlet, data: np.ndarray, timestamps: np.ndarray, chunk: int = 8) -> None:
    """Push ``data (n, C)`` with its ``timestamps (n,)`` at the real rate, ``chunk`` samples at a time."""
    started = time.monotonic()
    for i in range(0, len(data), chunk):
        due = started + (i + chunk) * PERIOD_S
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        outlet.push_chunk(data[i:i + chunk], timestamps[i:i + chunk])


def windows_of(calls, input_times: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) position in ``input_times (n,)`` (in the order sent) of the model window
    behind every published call."""
    sorter = np.argsort(input_times, kind="stable")
    spans = []
    for data, stamps in calls:
        sorted_index, distance = nearest(input_times[sorter], stamps)
        index = sorter[sorted_index]
        assert distance.max() < TIMESTAMP_TOLERANCE_S, "a published timestamp is not an input timestamp"
        assert np.all(np.diff(index) == 1)
        spans.append((int(index[-1]) - WINDOW + 1, int(index[-1])))
    return spans


# ----------------------------------------------------------------------------------------------
# 1. The source dies and comes back with the same source_id
# ----------------------------------------------------------------------------------------------
def test_source_restart_with_the_same_source_id_resumes_publishing(model_dir, serve_config, tmp_path):
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    source_id = f"test-{uuid.uuid4()}"
    zmq_address = free_tcp_address()
    stats_path = tmp_path / "stats.json"
    player = Player(name, source_id)
    subscriber = Subscriber(zmq_address)
    subscriber.start()
    serve = Serve(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", zmq_address, "--lsl-name",
                  f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config), "--log-format", "json",
                  "--stats-json", str(stats_path))
    second = None
    try:
        wait_for_event(serve, "first_prediction")
        # liblsl flags a reconnect only once its clock-offset estimate exists (~1-2 s after open).
        time.sleep(2.5)
        player.kill()
        killed_at = pylsl.local_clock()
        before = [h for _, h in subscriber.received]
        wait_for_event(serve, "input_silent", timeout_s=10)
        second = Player(name, source_id)
        returned_at = second.wait_started()
        deadline = time.monotonic() + 30.0
        while not any(h["t0"] > killed_at for _, h in subscriber.received):
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"no prediction after the restart: {serve.stderr}"
            time.sleep(0.01)
        first_after = next((at, h) for at, h in subscriber.received if h["t0"] > killed_at)
        resumed = wait_for_event(serve, "publishing_resumed")
        wait_for_messages(subscriber, 20, serve)  # some steady serving after the return
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        subscriber.close()
        serve.close()
        player.stop()
        if second is not None:
            second.stop()
    stats = json.loads(stats_path.read_text())
    counters = stats["streams"][name]
    recovery_s = first_after[0] - returned_at
    reset_at = counters["last_reset_timestamp"]
    print(f"\nsource restart: outage {resumed['outage_s']:.2f} s (last input → output again); "
          f"recovery {recovery_s:.2f} s after the source returned = liblsl reconnect "
          f"{reset_at - returned_at:.2f} s + fresh window and forward {first_after[0] - reset_at:.2f} s; "
          f"gap {counters['gap_samples']} samples; reconnects {counters['reconnects']}")
    # Counted: one gap, one liblsl reconnect, one silence.
    assert counters["gaps"] == 1 and counters["silences"] == 1
    assert counters["reconnects"] == 1
    # The gap is the samples missing between the old source's last sample (stamped after the
    # last one published, before the kill) and the new source's first one (reset_at).
    last_published_before = max(h["t_last"] for _, h in subscriber.received if h["t0"] <= killed_at)
    assert round((reset_at - killed_at) * SFREQ_HZ) - 2 <= counters["gap_samples"] \
        <= round((reset_at - last_published_before) * SFREQ_HZ)
    # Never a window spanning the gap: before it, every window ended before the kill; after it,
    # every window starts at or after the first sample the daemon got from the new source.
    after = [h for _, h in subscriber.received if h["t0"] > killed_at]
    assert before and after
    assert all(h["t_last"] < killed_at for _, h in subscriber.received if h["t0"] <= killed_at)
    for header in after:
        window_start = header["t_last"] - (WINDOW - 1) / header["sfreq"]
        assert window_start >= reset_at - TIMESTAMP_TOLERANCE_S
    seqs = [h["seq"] for _, h in subscriber.received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the output itself has no hole
    events = {e["event"] for e in json_events(serve.stderr)}
    assert {"gap", "input_silent", "input_resumed", "publishing_resumed", "discontinuity"} <= events


def test_reconnect_is_counted_apart_from_timestamp_jumps(eeg_names):
    """EEGInlet: a restarted outlet (same source_id) is a reconnect; a jump without one is not."""
    source_id = f"test-{uuid.uuid4()}"
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"

    def outlet() -> pylsl.StreamOutlet:
        return pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 2, 100.0, "float32", source_id))

    first = outlet()
    inlet = EEGInlet(pylsl.resolve_byprop("source_id", source_id, 1, 10.0)[0], recover=True)
    inlet.open()
    try:
        first.push_chunk(np.zeros((5, 2), np.float32), pylsl.local_clock() + np.arange(5) / 100.0)
        first.push_chunk(np.zeros((5, 2), np.float32), pylsl.local_clock() + 3.0 + np.arange(5) / 100.0)  # a jump
        received = 0
        while received < 10:
            received += len(inlet.pull(1.0)[1])
        assert inlet.discontinuities == 1 and inlet.reconnects == 0
        # liblsl flags a reconnect only while its clock-offset estimate (started at open()) exists:
        # block until it does.
        inlet._inlet.time_correction(10.0)
        del first  # the source vanishes ...
        time.sleep(0.5)
        second = outlet()  # ... and comes back with the same source_id
        deadline = time.monotonic() + 10.0
        while not len(inlet.pull(0.05)[1]):
            second.push_sample([1.0, 2.0])
            assert time.monotonic() < deadline, "liblsl did not reconnect"
        assert inlet.reconnects == 1 and inlet.discontinuities == 2
    finally:
        inlet.close()


# ----------------------------------------------------------------------------------------------
# 3. NaN/Inf and flat channels; a model that predicts NaN
# ----------------------------------------------------------------------------------------------
def test_nan_inf_and_flat_channels_are_skipped_counted_and_never_published(model_dir, eeg, eeg_names, caplog):
    name = f"test-nan-{uuid.uuid4().hex[:8]}"
    outlet = make_outlet(name, eeg_names)
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05).validate()
    served = InProcessDaemon(model_dir, name, settings)
    n = 4 * int(SFREQ_HZ)  # 4 s of the recording
    data = eeg[:n].copy()
    nan_start, nan_stop = 300, 360  # NaN on one channel, then one Inf chunk
    data[nan_start:nan_stop - 8, 7] = np.nan
    data[nan_stop - 8:nan_stop, 11] = np.inf
    flat_start = 900  # from here on, one channel is flat (a disconnected electrode)
    data[flat_start:, 20] = 1e-5
    times = pylsl.local_clock() + 0.05 + np.arange(n) * PERIOD_S
    try:
        with caplog.at_level(logging.INFO, logger="brainformer_rt"):
            assert outlet.wait_for_consumers(10.0)
            push_real_time(outlet, data, times)
            served.wait_for_output_after(times[-HOP])
            flat_gauge = served.metrics.gauges[name].flat_channels
    finally:
        served.close()
    counters = served.counters
    spans = windows_of(served.sink.calls, times)
    assert all(np.isfinite(d).all() for d, _ in served.sink.calls)
    # No window holds a dropped sample; the first one after the NaN input is a fresh full window.
    assert all(end < nan_start or start >= nan_stop for start, end in spans)
    first_after = min(end for start, end in spans if start >= nan_stop)
    assert first_after >= nan_stop + WINDOW - 1
    assert 1 <= counters.nan_chunks <= (nan_stop - nan_start) // 8 + 1  # pulled chunks, 8-sample pushes
    # A window counted as a NaN window for every hop from the pulled chunk holding the first NaN
    # sample until the refill is a full window: at least the NaN samples' hops, at most the hops
    # between the last window served before them and the first one after.
    last_before = max(end for start, end in spans if end < nan_start)
    assert (nan_stop - nan_start) // HOP <= counters.nan_windows <= (first_after - last_before) // HOP, \
        (counters.nan_windows, last_before, first_after)
    expected = (nan_stop - nan_start + WINDOW) / HOP - 1
    # The flat channel is found within a second or two, named, and the windows served with it counted.
    assert flat_gauge == 1
    windows_with_flat = sum(1 for start, end in spans if end >= flat_start + 2 * SFREQ_HZ)
    assert counters.flat_windows >= windows_with_flat > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("'EEG 008'" in m and "NaN/Inf" in m for m in messages), messages  # column 7 → EEG 008
    assert any("'EEG 021'" in m and "flat" in m for m in messages), messages
    print(f"\nNaN input: {counters.nan_chunks} chunks dropped, {counters.nan_windows} windows not served "
          f"(expected ~{expected:.0f}); flat channel: {counters.flat_windows} windows served with it")


def test_a_model_predicting_nan_publishes_nothing(model_dir, eeg, eeg_names):
    name = f"test-nanmodel-{uuid.uuid4().hex[:8]}"
    outlet = make_outlet(name, eeg_names)
    model = load_model(model_dir)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05).validate()
    served = InProcessDaemon(model_dir, name, settings, model=model)
    n = WINDOW + 4 * HOP
    times = pylsl.local_clock() + 0.05 + np.arange(n) * PERIOD_S
    try:
        assert outlet.wait_for_consumers(10.0)
        push_real_time(outlet, eeg[:n], times)
        deadline = time.monotonic() + 20.0
        while served.metrics.streams[name].windows_served < 5:
            assert time.monotonic() < deadline and served.thread.is_alive()
            time.sleep(0.01)
    finally:
        served.close()
    counters = served.counters
    assert served.sink.calls == []
    assert counters.nan_windows == counters.windows_served >= 5 and counters.samples_published == 0


# ----------------------------------------------------------------------------------------------
# 4. Timestamps jumping backwards / forwards, chunks out of order
# ----------------------------------------------------------------------------------------------
def test_timestamp_jumps_and_out_of_order_chunks_reset_the_stream(model_dir, eeg, eeg_names):
    """Segments: A normal; B stamped 100 s in the past (the source's clock was reset); C back in
    this clock (+100 s), with two chunks swapped. Each discontinuity resets the stream; every
    segment is served (B too: its windows are not "100 s old"), never a window across two."""
    name = f"test-jump-{uuid.uuid4().hex[:8]}"
    outlet = make_outlet(name, eeg_names)
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05).validate()  # default staleness: 0.5 s
    served = InProcessDaemon(model_dir, name, settings)
    segment = 320  # samples per segment (~0.53 s): several windows each
    n = 3 * segment
    data = eeg[:n]
    order = np.arange(n)
    swap = 2 * segment + 160  # chunk [swap, swap+8) is sent after chunk [swap+8, swap+16)
    order[swap:swap + 16] = np.r_[swap + 8:swap + 16, swap:swap + 8]
    try:
        assert outlet.wait_for_consumers(10.0)
        start = pylsl.local_clock() + 0.05
        times = start + np.arange(n) * PERIOD_S
        times[segment:2 * segment] -= 100.0  # clock reset on the source side
        push_real_time(outlet, data[order], times[order])
        served.wait_for_output_after(times[-HOP])
    finally:
        served.close()
    counters = served.counters
    assert counters.gaps == 3  # A→B backwards, B→C forwards, the swapped chunk backwards
    assert served.inlet.discontinuities == 3 and counters.reconnects == 0
    assert counters.gap_samples < 0.1 * SFREQ_HZ  # clock jumps, not lost samples
    assert counters.windows_stale == 0
    sent_times = times[order]
    spans = windows_of(served.sink.calls, sent_times)
    boundaries = [segment, 2 * segment, swap + 8]  # sent positions where a new segment starts
    for window_start, end in spans:
        assert not any(window_start < b <= end for b in boundaries), (window_start, end)
    ends = [end for _, end in spans]
    assert any(end < segment for end in ends)
    assert any(segment <= end < 2 * segment for end in ends)  # segment B is served
    assert any(end >= swap + 8 + WINDOW - 1 for end in ends)
    latencies = served.metrics.e2e[name].kept()
    assert latencies.max() < 10.0  # B's offset is taken out: its latencies are not ~100 s
    print(f"\ntimestamp jumps: {counters.gaps} gaps, gap_samples {counters.gap_samples}, e2e max "
          f"{latencies.max() * 1e3:.1f} ms")


# ----------------------------------------------------------------------------------------------
# 4b. A backlog: input that arrives older than max_input_age_s
# ----------------------------------------------------------------------------------------------
def test_stale_windows_are_dropped_counted_and_never_published(model_dir, eeg, eeg_names):
    """Segments: A in real time; B continues A's timestamps but reaches the daemon only
    ``STALL_S`` later (a source that buffered, then delivered its backlog), one hop at a time;
    C jumps forward to the present (a gap: the stream starts afresh). Every window due in B is
    stale: dropped, counted once in ``windows_stale`` (and as skipped), none of B's samples is
    published; A and C are served."""
    name = f"test-stale-{uuid.uuid4().hex[:8]}"
    outlet = make_outlet(name, eeg_names)
    max_age_s, stall_s = 0.5, 1.5
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05, max_input_age_s=max_age_s).validate()
    served = InProcessDaemon(model_dir, name, settings)
    n_a, hops_b, n_c = WINDOW + 8 * HOP, 12, WINDOW + 4 * HOP
    n_b = hops_b * HOP
    data = eeg[:n_a + n_b + n_c]
    counters = served.counters
    try:
        assert outlet.wait_for_consumers(10.0)
        times_ab = pylsl.local_clock() + 0.05 + np.arange(n_a + n_b) * PERIOD_S
        push_real_time(outlet, data[:n_a], times_ab[:n_a], chunk=HOP)
        served.wait_for_output_after(times_ab[n_a - 1])  # A's last window is served
        before = dict(served=counters.windows_served, skipped=counters.windows_skipped,
                      stale=counters.windows_stale, unpublished=counters.samples_unpublished)
        # B: its first sample is stall_s old when it is sent (the fault), and B takes less than
        # n_b sample periods to send, so every B window is at least stall_s - n_b periods old.
        assert stall_s - n_b * PERIOD_S > 2 * max_age_s
        while pylsl.local_clock() < times_ab[n_a] + stall_s:
            time.sleep(0.01)
        for hop in range(hops_b):  # one hop at a time, each ingested before the next is sent:
            first = n_a + hop * HOP  # every B window is due alone, none superseded by a later one
            outlet.push_chunk(data[first:first + HOP], times_ab[first:first + HOP])
            deadline = time.monotonic() + 30.0
            while counters.samples_in < first + HOP:
                assert time.monotonic() < deadline and served.thread.is_alive(), "the daemon took no input"
                time.sleep(0.001)
        deadline = time.monotonic() + 30.0
        while counters.windows_stale - before["stale"] < hops_b:  # the last hop's window is polled
            assert time.monotonic() < deadline and served.thread.is_alive(), counters
            time.sleep(0.001)
        during_b = dict(served=counters.windows_served, skipped=counters.windows_skipped,
                        stale=counters.windows_stale, unpublished=counters.samples_unpublished)
        # C: the present again (a forward jump: reset, a fresh window, served).
        times_c = pylsl.local_clock() + 0.05 + np.arange(n_c) * PERIOD_S
        push_real_time(outlet, data[n_a + n_b:], times_c, chunk=HOP)
        served.wait_for_output_after(times_c[-1])
    finally:
        served.close()
    # B: every due window stale, dropped (a skipped window whose hop is unpublished), none served.
    assert during_b["stale"] - before["stale"] == hops_b
    assert during_b["skipped"] - before["skipped"] == hops_b
    assert during_b["served"] == before["served"]
    assert during_b["unpublished"] - before["unpublished"] == n_b
    assert counters.windows_stale == during_b["stale"] == hops_b and before["stale"] == 0  # A and C fresh
    assert served.metrics.to_dict()["streams"][name]["windows_stale"] == hops_b  # the --stats-json figure
    assert counters.gaps == 1  # B → C
    # What was published: A's and C's samples, never one of B's.
    published = np.concatenate([stamps for _, stamps in served.sink.calls])
    sent = np.concatenate([times_ab, times_c])
    index, distance = nearest(sent, published)
    assert distance.max() < TIMESTAMP_TOLERANCE_S
    assert not np.any((index >= n_a) & (index < n_a + n_b)), "a stale window was published"
    assert np.any(index < n_a) and np.any(index >= n_a + n_b)
    assert np.all(np.diff(published) > 0)


# ----------------------------------------------------------------------------------------------
# 5. Stalled and vanished consumers
# ----------------------------------------------------------------------------------------------
def test_stalled_and_vanished_consumers_do_not_hold_up_the_others(model_dir, serve_config, tmp_path):
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    zmq_address = free_tcp_address()
    stats_path = tmp_path / "stats.json"
    player = Player(name, f"test-{uuid.uuid4()}")
    drainer = Subscriber(zmq_address)
    drainer.start()
    serve = Serve(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", zmq_address, "--lsl-name",
                  out_name, "--config", str(serve_config), "--log-format", "json", "--stats-json", str(stats_path))
    context = zmq.Context.instance()
    stalled = []
    try:
        wait_for_event(serve, "first_prediction")
        wait_for_messages(drainer, 30, serve)
        alone = list(drainer.received)
        # A SUB that never reads (tiny buffers: it backs up at once), one that vanishes, an LSL
        # inlet that never pulls and one that vanishes.
        stalled_sub = context.socket(zmq.SUB)
        stalled_sub.setsockopt(zmq.RCVHWM, 1)
        stalled_sub.setsockopt(zmq.RCVBUF, 4096)
        stalled_sub.setsockopt(zmq.SUBSCRIBE, b"")
        stalled_sub.connect(zmq_address)
        stalled.append(stalled_sub)
        vanishing_sub = context.socket(zmq.SUB)
        vanishing_sub.setsockopt(zmq.SUBSCRIBE, b"")
        vanishing_sub.connect(zmq_address)
        stalled_inlet = open_inlet(out_name)  # opened, never pulled
        vanishing_inlet = open_inlet(out_name)  # returns once connected
        wait_for_messages(drainer, 10, serve)  # served with all of them connected
        vanishing_sub.close(linger=0)
        vanishing_inlet.close_stream()
        del vanishing_inlet
        with_stalled_from = len(drainer.received)
        wait_for_messages(drainer, 60, serve)  # ~ 1.6 s of serving next to the stalled ones
        with_stalled = drainer.received[with_stalled_from:]
        assert serve.process.poll() is None
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
        del stalled_inlet
    finally:
        drainer.close()
        for socket in stalled:
            socket.close(linger=0)
        serve.close()
        player.stop()
    seqs = [h["seq"] for _, h in drainer.received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the draining subscriber missed nothing
    assert len(with_stalled) >= 60  # and kept receiving next to the stalled ones (waited for above)
    stats = json.loads(stats_path.read_text())
    print(f"\ndraining subscriber alone: {latency_ms(alone)}; next to stalled/vanished consumers: "
          f"{latency_ms(with_stalled)}; daemon e2e p99 {stats['e2e_latency']['all']['p99_ms']:.3f} ms, "
          f"zmq drops {stats['totals']['zmq_drops']}")


# ----------------------------------------------------------------------------------------------
# 6. SIGTERM / SIGINT at every phase
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("phase, signum", [
    ("model import and load", signal.SIGTERM),
    ("warm-up (compile)", signal.SIGTERM),
    ("waiting for the stream", signal.SIGINT),
    ("serving", signal.SIGTERM),
])
def test_a_signal_at_any_phase_stops_cleanly(phase, signum, model_dir, serve_config, tmp_path):
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    args = ["--stream", name, "--model", str(model_dir), "--zmq", free_tcp_address(), "--lsl-name",
            f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config), "--log-format", "json"]
    player = None
    if phase == "serving":
        player = Player(name, f"test-{uuid.uuid4()}")
    if phase == "warm-up (compile)":
        args += ["--engine", "compile"]
    serve = Serve(tmp_path, *args)
    try:
        if phase == "model import and load":
            wait_for_event(serve, "waiting")  # torch is imported and the model loaded right after
        elif phase == "warm-up (compile)":
            wait_for_event(serve, "engine_warmup")  # signalled at once: compiling takes a while
        elif phase == "waiting for the stream":
            wait_for_event(serve, "engine_ready")
            time.sleep(0.3)
        else:
            wait_for_event(serve, "first_prediction")
        signalled = time.monotonic()
        serve.process.send_signal(signum)
        code = serve.process.wait(30)
        exit_s = time.monotonic() - signalled
        stdout, stderr = serve.stdout, serve.stderr
    finally:
        serve.close()
        if player is not None:
            player.stop()
    print(f"\n{signal.Signals(signum).name} during {phase}: exited after {exit_s:.3f} s")
    assert code == 0, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stdout
    assert "e2e latency" in stdout and "counters" in stdout  # the statistics were printed
    assert "Traceback" not in stderr
    events = json_events(stderr)
    kinds = [e["event"] for e in events]
    assert "stopping" in kinds
    if phase == "warm-up (compile)":  # the signal landed in the warm-up: it never finished
        assert "engine_warmup" in kinds and "engine_ready" not in kinds[:kinds.index("stopping")], kinds
    if phase == "serving":
        closed = next(e for e in events if e["event"] == "closed")["closed"]
        assert any(c.startswith("stream") for c in closed) and any(c.startswith("ZeroMQ") for c in closed)
