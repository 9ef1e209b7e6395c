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
from brainformer_rt.bench import free_tcp_address
from brainformer_rt.daemon import Daemon, ServeSettings, StopRequest, StreamPipeline
from brainformer_rt.engine import make_engine
from brainformer_rt.inlet import EEGInlet
from brainformer_rt.metrics import ServeMetrics
from brainformer_rt.preprocess import EEGPreprocessStage
from brainformer_rt.publishers.zmq import decode_message
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
        self.pipeline = StreamPipeline(outlet_name, self.inlet, EEGPreprocessStage(self.config, self.inlet.description),
                                       WINDOW, HOP, settings.gap_threshold_s, self.metrics.streams[outlet_name],
                                       [self.sink], engine.n_output_channels,
                                       gauges=self.metrics.gauges[outlet_name], silence_s=settings.silence_s)
        self.stop = StopRequest()
        self.daemon = Daemon([self.pipeline], engine, np.asarray(self.config.meg_mean),
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
        time.sleep(1.0)  # some steady serving after the return
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
    # Counted: one gap of about the downtime, one liblsl reconnect, one silence.
    assert counters["gaps"] == 1 and counters["silences"] == 1
    assert counters["reconnects"] == 1
    downtime_samples = (reset_at - killed_at) * SFREQ_HZ
    assert 0.5 * downtime_samples < counters["gap_samples"] < 1.5 * downtime_samples + SFREQ_HZ
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
        time.sleep(2.0)  # liblsl's clock-offset estimate, started at open(), arrives meanwhile
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
    # Windows due every hop from the first NaN sample until the fresh window: ~(60 + 64) / 16 - 1.
    expected = (nan_stop - nan_start + WINDOW) / HOP - 1
    assert expected - 2 <= counters.nan_windows <= expected + 1, counters.nan_windows
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
        time.sleep(2.0)
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
        vanishing_inlet = open_inlet(out_name)
        time.sleep(0.5)
        vanishing_sub.close(linger=0)
        vanishing_inlet.close_stream()
        del vanishing_inlet
        with_stalled_from = len(drainer.received)
        time.sleep(4.0)
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
    assert len(with_stalled) > 0.5 * len(alone) * 4.0 / 2.0  # and kept receiving at the serving rate
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
            wait_for_event(serve, "engine_warmup")
            time.sleep(1.0)
            assert not any(e.get("event") == "engine_ready" for e in json_events(serve.stderr)), "compiled too fast"
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
    assert any(e["event"] == "stopping" for e in events)
    if phase == "serving":
        closed = next(e for e in events if e["event"] == "closed")["closed"]
        assert any(c.startswith("stream") for c in closed) and any(c.startswith("ZeroMQ") for c in closed)
