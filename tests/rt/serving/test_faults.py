"""Faults the serve daemon must survive, each injected for real (LSL inside the loopback namespace).

- the EEG source dies and comes back with the same source_id (player killed and restarted);
- NaN/Inf and flat-lined channels in the input, and a model that predicts NaN;
- timestamps that jump backwards and forwards, chunks out of order;
- input that arrives too old (a backlog);
- stalled and vanished ZeroMQ / LSL consumers next to a draining one;
- SIGTERM/SIGINT at every phase: model import/load, warm-up (compile), waiting, serving.

The in-process faults run the real serve loop publishing through the real LSL and ZeroMQ
publishers, read back by a real LSL inlet and ZeroMQ SUB (``InProcessDaemon`` in
tests/rt/conftest.py). Nothing here depends on how fast the machine is: tests wait for events
and counts (bounds only catch hangs), and the staleness tests make input old by construction.
Measured times (recovery, exit after a signal) are printed, not asserted: run with ``-s``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
import uuid

import numpy as np
import pylsl
import pytest
import torch
import zmq

from brainformer.model_dir import load_model
from brainformer.settings import ServeSettings
from brainformer_rt.serving.inlet import EEGInlet
from brainformer_rt.serving.publishers.zmq import decode_message
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import (
    HOP,
    WINDOW,
    InProcessDaemon,
    MEGOutputs,
    PacedSource,
    Player,
    Serve,
    contiguous_runs,
    json_events,
    make_eeg_outlet,
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
def serve_config(tmp_path_factory):
    """Settings of the ``serve`` processes here: one torch thread (the cores are shared); no
    staleness (only the staleness tests are about it: a stall of the machine must not drop
    windows elsewhere); input silent for 3 s is reported, so that only a source that is really
    gone counts as silent, not one the machine held up for a second."""
    path = tmp_path_factory.mktemp("config") / "serve.toml"
    path.write_text("torch_threads = 1\nwait_s = 60.0\nmax_input_age_s = inf\nsilence_s = 3.0\n")
    return path


class Subscriber(threading.Thread):
    """Drains a ZeroMQ SUB with NOBLOCK; keeps (received local_clock, header) of every message."""

    def __init__(self, address: str, topic: bytes = b"meg"):
        super().__init__(daemon=True)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(address)
        self.received: list[tuple[float, dict]] = []
        self.non_finite = 0  # messages whose payload held NaN/Inf
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
                    self.non_finite += not np.all(np.isfinite(payload))
                    self.received.append((pylsl.local_clock(), header))

    def newest_t_last(self) -> float:
        return self.received[-1][1]["t_last"] if self.received else -math.inf

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self.socket.close(linger=0)


def wait_for_messages(subscriber: Subscriber, n_more: int, serve: Serve, timeout_s: float = 60.0) -> None:
    """Until ``subscriber`` received ``n_more`` messages more than it has now (a hang timeout)."""
    target = len(subscriber.received) + n_more
    deadline = time.monotonic() + timeout_s
    while len(subscriber.received) < target:
        assert serve.process.poll() is None, serve.stderr
        assert time.monotonic() < deadline, f"{target - len(subscriber.received)} messages missing: {serve.stderr}"
        time.sleep(0.01)


def feed_in_step(source: PacedSource, n_hops: int, subscriber: Subscriber, serve: Serve,
                 timeout_s: float = 30.0) -> None:
    """Send ``n_hops`` hops, each once the daemon has published up to the hop before it: the
    daemon never holds more than a hop and a bit of unserved input, so it has no reason to skip
    a window (however slow the machine), and every sample must be published."""
    for _ in range(n_hops):
        source.push(HOP)
        # After a hop the newest window ends less than a hop before the newest sample.
        newest_due = source.stamp(source.pushed - HOP)
        deadline = time.monotonic() + timeout_s
        while subscriber.newest_t_last() < newest_due - TIMESTAMP_TOLERANCE_S:
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"the hop ending at sample {source.pushed} was not served: {serve.stderr}"
            time.sleep(0.002)


def push_real_time(outlet: pylsl.StreamOutlet, data: np.ndarray, timestamps: np.ndarray, chunk: int = 8) -> None:
    """Push ``data (n, C)`` with its ``timestamps (n,)`` at the real rate, ``chunk`` samples at a time."""
    started = time.monotonic()
    for i in range(0, len(data), chunk):
        due = started + (i + chunk) * PERIOD_S
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        outlet.push_chunk(data[i:i + chunk], timestamps[i:i + chunk])


def windows_of(outputs: MEGOutputs, input_times: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) position in ``input_times (n,)`` (in the order sent) of the model window
    behind every published message."""
    sorter = np.argsort(input_times, kind="stable")
    spans = []
    for stamps in outputs.stamps_by_message():
        sorted_index, distance = nearest(input_times[sorter], stamps)
        index = sorter[sorted_index]
        assert distance.max() < TIMESTAMP_TOLERANCE_S, "a published timestamp is not an input timestamp"
        assert np.all(np.diff(index) == 1)
        spans.append((int(index[-1]) - WINDOW + 1, int(index[-1])))
    return spans


def assert_both_outputs_agree(outputs: MEGOutputs) -> None:
    """The LSL inlet and the ZeroMQ SUB received the same samples (values and timestamps)."""
    outputs.stamps_by_message()  # the same samples, first and last timestamp of each message
    zmq_data = np.concatenate([payload for _, payload in outputs.messages]) if outputs.messages else np.zeros((0, 306))
    np.testing.assert_array_equal(outputs.lsl_data, zmq_data)


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
        # liblsl flags a reconnect only once the inlet's clock-offset estimate exists: the daemon
        # logs when it does.
        wait_for_event(serve, "reconnect_detection_armed")
        wait_for_messages(subscriber, 1, serve)
        player.kill()
        killed_at = pylsl.local_clock()
        before = [h for _, h in subscriber.received]
        wait_for_event(serve, "input_silent")
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
    assert subscriber.non_finite == 0
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
    inlet = EEGInlet(pylsl.resolve_byprop("source_id", source_id, 1, 30.0)[0], recover=True)
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
        inlet._inlet.time_correction(30.0)
        del first  # the source vanishes ...
        time.sleep(0.5)  # ... is down for a while (the fault, not a wait for anything) ...
        second = outlet()  # ... and comes back with the same source_id
        deadline = time.monotonic() + 30.0
        while not len(inlet.pull(0.05)[1]):
            second.push_sample([1.0, 2.0])
            assert time.monotonic() < deadline, "liblsl did not reconnect"
        assert inlet.reconnects == 1 and inlet.discontinuities == 2
    finally:
        inlet.close()


# ----------------------------------------------------------------------------------------------
# 3. NaN/Inf and flat channels; a model that predicts NaN
# ----------------------------------------------------------------------------------------------
def test_nan_inf_and_flat_channels_are_skipped_counted_and_never_published(model_dir, recording_eeg, eeg_names,
                                                                          caplog):
    name = f"test-nan-{uuid.uuid4().hex[:8]}"
    outlet = make_eeg_outlet(name, eeg_names)
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05, max_input_age_s=math.inf).validate()
    served = InProcessDaemon(model_dir, name, settings)
    n = 4 * int(SFREQ_HZ)  # 4 s of the recording
    data = recording_eeg[:n].copy()
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
    outputs = served.outputs
    assert_both_outputs_agree(outputs)  # through the real LSL outlet and ZeroMQ socket
    assert np.isfinite(outputs.lsl_data).all()
    spans = windows_of(outputs, times)
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
    # The flat channel is found within a second or two, named, and the windows served with it counted.
    assert flat_gauge == 1
    windows_with_flat = sum(1 for start, end in spans if end >= flat_start + 2 * SFREQ_HZ)
    assert counters.flat_windows >= windows_with_flat > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("'EEG 008'" in m and "NaN/Inf" in m for m in messages), messages  # column 7 → EEG 008
    assert any("'EEG 021'" in m and "flat" in m for m in messages), messages


def test_a_model_predicting_nan_publishes_nothing(model_dir, recording_eeg, eeg_names):
    name = f"test-nanmodel-{uuid.uuid4().hex[:8]}"
    outlet = make_eeg_outlet(name, eeg_names)
    model = load_model(model_dir)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05, max_input_age_s=math.inf).validate()
    served = InProcessDaemon(model_dir, name, settings, model=model)
    n = WINDOW + 4 * HOP
    due_windows = (n - WINDOW) // HOP + 1  # served or, when the loop took several hops at once, skipped
    counters = served.counters
    times = pylsl.local_clock() + 0.05 + np.arange(n) * PERIOD_S
    try:
        assert outlet.wait_for_consumers(10.0)
        push_real_time(outlet, recording_eeg[:n], times)
        served.wait_until(lambda: counters.samples_in == n and counters.windows_served + counters.windows_skipped
                          == due_windows, "not every due window was served or skipped")
    finally:
        served.close()  # the loop finishes its forward; the consumers read up to a marker sent after it
    assert served.outputs.messages == [] and len(served.outputs.lsl_stamps) == 0
    assert counters.nan_windows == counters.windows_served >= 1 and counters.samples_published == 0


# ----------------------------------------------------------------------------------------------
# 4. Timestamps jumping backwards / forwards, chunks out of order
# ----------------------------------------------------------------------------------------------
def test_timestamp_jumps_and_out_of_order_chunks_reset_the_stream(model_dir, recording_eeg, eeg_names):
    """Segments: A normal; B stamped 100 s in the past (the source's clock was reset); C back in
    this clock (+100 s), with two chunks swapped. Each discontinuity resets the stream; every
    segment is served (B too: its windows are not "100 s old"), never a window across two.
    Each segment is sent once the one before it has been served, so that no stall merges two
    segments into one pull (the newest-window rule would then rightly serve only the newer)."""
    name = f"test-jump-{uuid.uuid4().hex[:8]}"
    outlet = make_eeg_outlet(name, eeg_names)
    # Windows older than 50 s are stale: B's would be, were its 100 s offset not taken out; a
    # stalled machine's would not.
    max_age_s = 50.0
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05, max_input_age_s=max_age_s).validate()
    served = InProcessDaemon(model_dir, name, settings)
    segment = 320  # samples per segment (~0.53 s): several windows each
    n = 3 * segment
    data = recording_eeg[:n]
    order = np.arange(n)
    swap = 2 * segment + 160  # chunk [swap, swap+8) is sent after chunk [swap+8, swap+16)
    order[swap:swap + 16] = np.r_[swap + 8:swap + 16, swap:swap + 8]
    times = np.empty(n)
    outputs = served.outputs

    def served_up_to(stamp: float) -> bool:  # a window ends at the stamp or less than a hop before it
        outputs.drain()
        return any(stamp - HOP * PERIOD_S < h["t_last"] <= stamp + TIMESTAMP_TOLERANCE_S for h in outputs.headers)

    try:
        assert outlet.wait_for_consumers(10.0)
        for k, clock_offset_s in enumerate([0.0, -100.0, 0.0]):  # B: the source's clock was reset
            sent = order[k * segment:(k + 1) * segment]
            times[k * segment:(k + 1) * segment] = (pylsl.local_clock() + 0.05 + clock_offset_s
                                                   + np.arange(segment) * PERIOD_S)
            push_real_time(outlet, data[sent], times[sent])
            last = times[(k + 1) * segment - 1]
            served.wait_until(lambda: served_up_to(last), f"segment {'ABC'[k]} was not served")
    finally:
        served.close()
    counters = served.counters
    assert counters.gaps == 3  # A→B backwards, B→C forwards, the swapped chunk backwards
    assert served.inlet.discontinuities == 3 and counters.reconnects == 0
    # Clock jumps, not lost samples: a leap of ±100 s counts the silence seen between the chunks.
    assert counters.gap_samples < 10 * SFREQ_HZ
    assert counters.windows_stale == 0
    assert_both_outputs_agree(outputs)
    sent_times = times[order]
    spans = windows_of(outputs, sent_times)
    boundaries = [segment, 2 * segment, swap + 8]  # sent positions where a new segment starts
    for window_start, end in spans:
        assert not any(window_start < b <= end for b in boundaries), (window_start, end)
    ends = [end for _, end in spans]
    assert any(end < segment for end in ends)
    assert any(segment <= end < 2 * segment for end in ends)  # segment B is served
    assert any(end >= swap + 8 + WINDOW - 1 for end in ends)
    latencies = served.metrics.e2e[name].kept()
    assert latencies.max() < max_age_s  # B's offset is taken out: its latencies are not ~100 s


# ----------------------------------------------------------------------------------------------
# 4b. A backlog: input that arrives older than max_input_age_s
# ----------------------------------------------------------------------------------------------
def test_stale_windows_are_dropped_counted_and_never_published(model_dir, recording_eeg, eeg_names):
    """Segments: A in real time; B continues A's timestamps but reaches the daemon only
    ``stall_s`` later (a source that buffered, then delivered its backlog), one hop at a time;
    C jumps forward to the present (a gap: the stream starts afresh). Every window due in B is
    stale: dropped, counted once in ``windows_stale`` (and as skipped), none of B's samples is
    published; A and C are served. A and C stay fresh through a stall of the machine of up to
    ``max_age_s``; B is older than that by construction, even if a stall at A's start made the
    daemon take A's clock for a foreign one (its offset, a second or two, is taken out of B's
    age too)."""
    name = f"test-stale-{uuid.uuid4().hex[:8]}"
    outlet = make_eeg_outlet(name, eeg_names)
    max_age_s, stall_s = 2.0, 5.0
    settings = ServeSettings(streams=[name], pull_timeout_s=0.05, max_input_age_s=max_age_s).validate()
    served = InProcessDaemon(model_dir, name, settings)
    n_a, hops_b, n_c = WINDOW + 8 * HOP, 12, WINDOW + 4 * HOP
    n_b = hops_b * HOP
    # Every B window is at least stall_s - n_b periods old (B takes less than n_b periods to
    # send); what that leaves above max_age_s is the foreign-clock offset B's age may lose.
    assert stall_s - n_b * PERIOD_S - max_age_s > 2.5
    data = recording_eeg[:n_a + n_b + n_c]
    counters = served.counters
    try:
        assert outlet.wait_for_consumers(10.0)
        times_ab = pylsl.local_clock() + 0.05 + np.arange(n_a + n_b) * PERIOD_S
        push_real_time(outlet, data[:n_a], times_ab[:n_a], chunk=HOP)
        # A is in, and its newest window (ending less than a hop before A's end) is out: nothing
        # more is due until B comes.
        served.wait_until(lambda: counters.samples_in == n_a, "A was not taken in")
        served.wait_for_output_after(times_ab[n_a - HOP])
        before = dict(served=counters.windows_served, skipped=counters.windows_skipped,
                      stale=counters.windows_stale, unpublished=counters.samples_unpublished)
        while pylsl.local_clock() < times_ab[n_a] + stall_s:  # B grows old before it is sent: the fault
            time.sleep(0.01)
        for hop in range(hops_b):  # one hop at a time, each ingested before the next is sent:
            first = n_a + hop * HOP  # every B window is due alone, none superseded by a later one
            outlet.push_chunk(data[first:first + HOP], times_ab[first:first + HOP])
            served.wait_until(lambda: counters.samples_in >= first + HOP, "the daemon took no input")
        # The last hop's window is polled once the hop is in.
        served.wait_until(lambda: counters.windows_stale - before["stale"] >= hops_b, "B's windows were not stale")
        during_b = dict(served=counters.windows_served, skipped=counters.windows_skipped,
                        stale=counters.windows_stale, unpublished=counters.samples_unpublished)
        # C: the present again (a forward jump: reset, a fresh window, served).
        times_c = pylsl.local_clock() + 0.05 + np.arange(n_c) * PERIOD_S
        push_real_time(outlet, data[n_a + n_b:], times_c, chunk=HOP)
        served.wait_for_output_after(times_c[-HOP])
    finally:
        served.close()
    published = served.outputs.lsl_stamps  # everything published, read up to a marker sent after the loop stopped
    sent = np.concatenate([times_ab, times_c])
    index, distance = nearest(sent, published)
    assert distance.max() < TIMESTAMP_TOLERANCE_S
    assert not np.any((index >= n_a) & (index < n_a + n_b)), "a stale window was published"
    assert np.any(index < n_a) and np.any(index >= n_a + n_b)
    assert np.all(np.diff(published) > 0)
    # B: every due window stale, dropped (a skipped window whose samples are unpublished), none
    # served. A's newest window ended r < HOP samples before A's end (0 unless liblsl handed a
    # hop over in pieces); those r samples are published with B's first window, or not at all.
    a_tail = n_a - 1 - int(index[index < n_a].max())
    assert 0 <= a_tail < HOP
    assert during_b["stale"] - before["stale"] == hops_b
    assert during_b["skipped"] - before["skipped"] == hops_b
    assert during_b["served"] == before["served"]
    assert n_b <= during_b["unpublished"] - before["unpublished"] <= n_b + a_tail
    assert counters.windows_stale == during_b["stale"] == hops_b and before["stale"] == 0  # A and C fresh
    assert served.metrics.to_dict()["streams"][name]["windows_stale"] == hops_b  # the --stats-json figure
    assert counters.gaps == 1  # B → C


# ----------------------------------------------------------------------------------------------
# 5. Stalled and vanished consumers
# ----------------------------------------------------------------------------------------------
def test_stalled_and_vanished_consumers_do_not_hold_up_the_others(model_dir, serve_config, recording_eeg,
                                                                  eeg_names, tmp_path):
    """Next to a ZeroMQ SUB that never reads, an LSL inlet that never pulls, and a SUB and an
    inlet that vanish, a draining subscriber receives every sample the source sends, in
    messages without a hole in ``seq`` or in the timestamps. The source sends each hop once
    the drainer has what came before it (``feed_in_step``), so the daemon has no reason to
    skip a window however slow the machine; a publisher held up by a stalled consumer would
    hang the feed."""
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    zmq_address = free_tcp_address()
    stats_path = tmp_path / "stats.json"
    source = PacedSource(name, eeg_names, recording_eeg)
    drainer = Subscriber(zmq_address)
    drainer.start()
    serve = Serve(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", zmq_address, "--lsl-name",
                  out_name, "--config", str(serve_config), "--log-format", "json", "--stats-json", str(stats_path))
    context = zmq.Context.instance()
    stalled = []
    try:
        # Until the drainer gets predictions (the daemon starts, the subscription reaches it).
        deadline = time.monotonic() + 60.0
        while not drainer.received:
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"no prediction reached the drainer: {serve.stderr}"
            source.push(HOP)
        feed_in_step(source, 1, drainer, serve)
        settled = len(drainer.received)  # from here on, every sample sent must reach the drainer
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
        feed_in_step(source, 10, drainer, serve)  # served with all of them connected
        vanishing_sub.close(linger=0)
        vanishing_inlet.close_stream()
        del vanishing_inlet
        feed_in_step(source, 60, drainer, serve)  # next to the stalled ones only
        # The stalled consumers were connected and fed: data waits for them, unread.
        assert stalled_sub.poll(30_000), "the stalled subscriber never got a message"
        deadline = time.monotonic() + 30.0
        while stalled_inlet.samples_available() == 0:
            assert time.monotonic() < deadline, "the stalled LSL inlet never got a sample"
            time.sleep(0.01)
        assert serve.process.poll() is None
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
        del stalled_inlet
    finally:
        drainer.close()
        for socket in stalled:
            socket.close(linger=0)
        serve.close()
        source.close()
    headers = [h for _, h in drainer.received]
    seqs = [h["seq"] for h in headers]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the draining subscriber missed no message
    assert drainer.non_finite == 0
    # Every sample sent after the drainer got going was published to it, once, in order: the
    # messages since then form one run without a hole, up to the last hop sent.
    runs = contiguous_runs(headers[settled - 1:])
    assert len(runs) == 1, runs
    assert runs[0][1] >= source.stamp(source.pushed - HOP) - TIMESTAMP_TOLERANCE_S
    stats = json.loads(stats_path.read_text())
    assert stats["totals"]["zmq_drops"] == 0  # the socket never refused a message for a stalled subscriber


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
            wait_for_event(serve, "engine_ready")  # what follows is the wait: the stream never comes
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
