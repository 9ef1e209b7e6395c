import json
import threading
import time
import uuid

import numpy as np
import pylsl
import pytest
from typer.testing import CliRunner

from brainformer_rt.cli import app
from brainformer_rt.commands.listen import listen_command
from brainformer_rt.tools.listener import ListenStats, Received, ZMQSubscriber
from brainformer_rt.serving.publishers.lsl import LSLPublisher
from brainformer_rt.serving.publishers.zmq import ZMQPublisher

pytestmark = pytest.mark.timeout(300)

NAMES = ["MEG 0111", "MEG 0112", "MEG 0113"]
TYPES = ["grad", "grad", "mag"]
SFREQ_HZ = 600.0
HOP = 4
#: Messages a listener waits for (a count, never a time).
MESSAGES = 20
#: Hang timeouts: far above what the waits take on a busy machine.
HANG_S = 120.0


class PublishingThread:
    """Publishes HOP samples at SFREQ_HZ, each chunk when its newest sample is due, with uniform
    local_clock() stamps (late wake-ups on a busy machine do not break the spacing)."""

    def __init__(self, publisher):
        self.publisher = publisher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self.sent = 0

    def _run(self):
        start = pylsl.local_clock()
        while True:
            timestamps = start + (self.sent * HOP + np.arange(HOP)) / SFREQ_HZ
            if self._stop.wait(max(timestamps[-1] - pylsl.local_clock(), 0.0)):
                return
            self.publisher.publish(np.full((HOP, 3), self.sent, np.float32), timestamps)
            self.sent += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5.0)
        self.publisher.close()


def test_listen_zmq_writes_statistics_json(tmp_path):
    publisher = ZMQPublisher("tcp://127.0.0.1:*", channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ,
                             model_name="tiny", stream_name="EEG-sim")
    json_path = tmp_path / "listen.json"
    with PublishingThread(publisher):
        listen_command(zmq=publisher.address, max_messages=MESSAGES, json_path=json_path)
    stats = json.loads(json_path.read_text())
    assert stats["source"] == "zmq" and stats["address"] == publisher.address
    assert stats["messages"] >= MESSAGES and stats["samples"] == HOP * stats["messages"]
    assert stats["n_channels"] == 3
    assert stats["seq_gaps"] == 0 and stats["messages_missed"] == 0 and stats["malformed"] == 0
    latency = stats["latency_ms"]
    assert latency["n"] == stats["messages"]
    assert 0 < latency["median"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_listen_lsl_writes_statistics_json(tmp_path, stream_name):
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, SFREQ_HZ, "tiny")
    json_path = tmp_path / "listen.json"
    with PublishingThread(publisher):
        listen_command(lsl=stream_name, max_messages=MESSAGES, json_path=json_path)
    stats = json.loads(json_path.read_text())
    assert stats["source"] == "lsl" and stats["address"] == stream_name
    assert stats["messages"] >= MESSAGES and stats["samples"] >= stats["messages"]
    assert stats["n_channels"] == 3 and stats["reconnects"] == 0
    assert stats["latency_ms"]["n"] == stats["messages"] and stats["latency_ms"]["median"] > 0


def test_listen_stats_count_and_summarise_known_latencies():
    """ListenStats on messages whose latencies are known: 1, 2, ..., 100 ms, and one of 250 ms."""
    stats = ListenStats()
    latencies_ms = [*range(1, 101), 250]
    received = []
    for k, latency in enumerate(latencies_ms):
        stamps = 1000.0 + k + np.arange(3) / SFREQ_HZ
        received.append(Received(np.zeros((3, 2), np.float32), stamps, stamps[-1] + latency / 1e3))
    stats.add(received[:50])
    stats.add([])
    stats.add(received[50:])
    assert stats.messages == 101 and stats.samples == 303 and stats.newest is received[-1]
    summary = stats.latency_ms()
    assert summary["n"] == 101
    # Computed by hand: the median of 1..100 and 250 is 51; the mean (5050 + 250) / 101;
    # numpy's linear percentiles: p90 at rank 90 (value 91), p99 at rank 99 (value 100).
    assert summary["median"] == pytest.approx(51.0)
    assert summary["mean"] == pytest.approx(5300 / 101)
    assert summary["p90"] == pytest.approx(91.0)
    assert summary["p99"] == pytest.approx(100.0)
    assert summary["max"] == pytest.approx(250.0)
    assert ListenStats().latency_ms() == {"n": 0, "median": None, "p90": None, "p99": None, "max": None,
                                          "mean": None}


def receive_until(subscriber: ZMQSubscriber, seq: int) -> Received:
    """The message ``seq``, once it came (everything before it is taken too)."""
    deadline = time.monotonic() + HANG_S
    while True:
        for item in subscriber.receive_all(0.1):
            if item.header["seq"] == seq:
                return item
        assert time.monotonic() < deadline, f"message seq {seq} did not arrive"


def test_zmq_subscriber_counts_seq_gaps_and_rebuilds_timestamps():
    publisher = ZMQPublisher("tcp://127.0.0.1:*", channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ)
    subscriber = ZMQSubscriber(publisher.address, b"meg")
    subscriber.open()
    try:
        # Publish until the subscription is in place (ZeroMQ drops what is sent before).
        deadline = time.monotonic() + HANG_S
        while not subscriber.receive_all(0.05):
            assert time.monotonic() < deadline, "the subscriber never received anything"
            publisher.publish(np.zeros((1, 3), np.float32), np.array([0.0]))
        # The messages sent while subscribing may have been lost (seq 0, which names the
        # channels, among them): continue at seq 100, which names them again. Late ones from
        # the subscribing may still come first: each wait is for its own seq.
        publisher.seq = 100
        stamps = 100.0 + np.arange(HOP) / SFREQ_HZ
        publisher.publish(np.ones((HOP, 3), np.float32), stamps)
        first = receive_until(subscriber, 100)
        assert subscriber.channel_names == NAMES  # from the message with seq 100
        subscriber.seq_gaps = subscriber.messages_missed = 0  # count from seq 100 on
        publisher.seq += 3  # as if three messages had been dropped on the way
        publisher.publish(np.ones((HOP, 3), np.float32), stamps + 1)
        second = receive_until(subscriber, 104)
        np.testing.assert_allclose(first.timestamps, stamps, rtol=0, atol=1e-9)
        assert first.timestamps[-1] == stamps[-1]
        np.testing.assert_array_equal(second.data, np.ones((HOP, 3), np.float32))
        assert subscriber.seq_gaps == 1 and subscriber.messages_missed == 3
    finally:
        subscriber.close()
        publisher.close()


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --lsl NAME or --zmq ADDRESS"),
    (["--lsl", "a", "--zmq", "tcp://127.0.0.1:5556"], "exactly one of --lsl NAME or --zmq ADDRESS"),
    (["--zmq", "not-an-address"], "cannot connect to ZeroMQ address 'not-an-address'"),
])
def test_listen_bad_arguments_exit_2(args, message):
    result = CliRunner().invoke(app, ["listen", *args])
    assert result.exit_code == 2
    assert message in result.output
