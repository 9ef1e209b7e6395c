import json
import time
import uuid

import numpy as np
import pylsl
import pytest
import zmq

from brainformer_rt.serving.inlet import StreamDescription, find_stream
from brainformer_rt.serving.publishers.lsl import LSLPublisher
from brainformer_rt.serving.publishers.zmq import HEADER_KEYS, ZMQPublisher, decode_message, is_loopback_address

pytestmark = pytest.mark.timeout(60)

NAMES = ["MEG 0111", "MEG 0112", "MEG 0113", "MEG 0121"]
TYPES = ["grad", "grad", "mag", "mag"]
SFREQ_HZ = 600.614990234375


# ---------------------------------------------------------------- LSL


def test_lsl_outlet_meta_data_seen_by_a_real_inlet(stream_name):
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, SFREQ_HZ, "tiny-model")
    try:
        inlet = pylsl.StreamInlet(find_stream(stream_name, wait_s=30.0))
        info = inlet.info(30.0)
        description = StreamDescription.from_info(info)
        assert description.type == "MEG"
        assert description.channel_labels == tuple(NAMES)
        assert description.channel_types == tuple(TYPES)
        assert description.channel_units == ("T/m", "T/m", "T", "T")
        assert description.sfreq_hz == SFREQ_HZ
        assert description.channel_format == "float32"
        assert info.desc().child("acquisition").child_value("model") == "tiny-model"
    finally:
        publisher.close()


def test_lsl_publish_preserves_every_timestamp_exactly(stream_name):
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, SFREQ_HZ, "tiny-model")
    assert not publisher.have_consumers()
    # A plain inlet: no clock correction, so the stamps can be compared bit for bit.
    inlet = pylsl.StreamInlet(find_stream(stream_name, wait_s=30.0))
    inlet.open_stream(30.0)
    try:
        assert publisher.wait_for_consumers(30.0)
        rng = np.random.default_rng(1)
        # Irregular spacing on purpose: liblsl must not re-derive stamps from the nominal rate.
        sent_timestamps = pylsl.local_clock() + np.cumsum(rng.uniform(0.001, 0.003, 48))
        sent = (rng.standard_normal((48, 4)) * 1e-12).astype(np.float32)
        for start in range(0, 48, 16):
            publisher.publish(sent[start:start + 16], sent_timestamps[start:start + 16])
        publisher.publish(sent[:1], np.array([sent_timestamps[-1] + 0.01]))  # a single sample
        received, received_timestamps = [], []
        deadline = time.monotonic() + 30.0
        while sum(map(len, received_timestamps)) < 49 and time.monotonic() < deadline:
            data, stamps = inlet.pull_chunk(timeout=0.5, max_samples=64, min_samples=1, as_numpy=True)
            received.append(data)
            received_timestamps.append(stamps)
        np.testing.assert_array_equal(np.concatenate(received), np.concatenate([sent, sent[:1]]))
        np.testing.assert_array_equal(np.concatenate(received_timestamps),
                                      np.append(sent_timestamps, sent_timestamps[-1] + 0.01))
        assert publisher.samples_out == 49 and publisher.chunks_out == 4
    finally:
        inlet.close_stream()
        publisher.close()


def test_lsl_publisher_rejects_bad_channels_and_shapes(stream_name):
    with pytest.raises(ValueError, match="'mag' or 'grad'"):
        LSLPublisher(stream_name, "src", NAMES, ["grad", "eeg", "mag", "mag"], SFREQ_HZ, "m")
    with pytest.raises(ValueError, match="same length"):
        LSLPublisher(stream_name, "src", NAMES, TYPES[:3], SFREQ_HZ, "m")
    publisher = LSLPublisher(stream_name, f"src-{uuid.uuid4()}", NAMES, TYPES, SFREQ_HZ, "m")
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        publisher.publish(np.zeros((2, 3), np.float32), np.zeros(2))
    publisher.close()
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish(np.zeros((2, 4), np.float32), np.zeros(2))


# ---------------------------------------------------------------- ZeroMQ


#: A topic of the test's own, on which a new subscriber is synchronised with the publisher.
SYNC_TOPIC = b"sync"


def connected_subscriber(publisher: ZMQPublisher, topic: bytes) -> zmq.Socket:
    """A SUB socket on ``topic`` whose subscription has reached ``publisher`` (no slow-joiner
    loss): it also subscribes to ``SYNC_TOPIC``, on which the publisher sends (through a topic
    of its own, so the tested topic's ``seq`` is untouched) until one arrives; subscriptions
    travel in order, so ``topic``'s has arrived too. :func:`receive` skips late sync messages."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.SUBSCRIBE, SYNC_TOPIC)
    sub.connect(publisher.address)
    sync = publisher.add_topic(SYNC_TOPIC, "sync")
    deadline = time.monotonic() + 30.0
    while not (sub.poll(20) and sub.recv_multipart()[0] == SYNC_TOPIC):
        assert time.monotonic() < deadline, "the subscription never reached the publisher"
        sync.publish(np.zeros((1, len(NAMES)), np.float32), np.zeros(1))
    sub.setsockopt(zmq.UNSUBSCRIBE, SYNC_TOPIC)
    return sub


def make_zmq_publisher(topic=b"meg") -> ZMQPublisher:
    return ZMQPublisher("tcp://127.0.0.1:*", topic, channel_names=NAMES, channel_types=TYPES,
                        sfreq_hz=SFREQ_HZ, model_name="tiny-model", stream_name="EEG-sim")


def receive(sub: zmq.Socket, n_messages: int) -> list[list[bytes]]:
    """The next ``n_messages`` messages (sync messages skipped), with a hang timeout."""
    messages = []
    while len(messages) < n_messages:
        assert sub.poll(30_000), f"only {len(messages)} of {n_messages} messages arrived"
        frames = sub.recv_multipart()
        if frames[0] != SYNC_TOPIC:
            messages.append(frames)
    return messages


def test_zmq_wire_format_seen_by_a_real_subscriber():
    publisher = make_zmq_publisher(topic=b"meg/EEG-sim")
    sub = connected_subscriber(publisher, b"meg/EEG-sim")
    try:
        assert publisher.address.startswith("tcp://127.0.0.1:")
        rng = np.random.default_rng(2)
        chunks = [rng.standard_normal((n, 4)).astype(np.float32) for n in (16, 3, 1)]
        stamps = [pylsl.local_clock() + k + np.arange(len(c)) / SFREQ_HZ for k, c in enumerate(chunks)]
        for chunk, chunk_stamps in zip(chunks, stamps):
            assert publisher.publish(chunk, chunk_stamps)
        messages = receive(sub, 3)
        for seq, (frames, chunk, chunk_stamps) in enumerate(zip(messages, chunks, stamps)):
            assert len(frames) == 3 and frames[0] == b"meg/EEG-sim"
            header = json.loads(frames[1])
            assert set(HEADER_KEYS) <= set(header)
            assert header["seq"] == seq
            assert header["t0"] == chunk_stamps[0] and header["t_last"] == chunk_stamps[-1]
            assert (header["n_samples"], header["n_channels"], header["dtype"]) == (len(chunk), 4, "float32")
            assert header["sfreq"] == SFREQ_HZ and header["model"] == "tiny-model" and header["stream"] == "EEG-sim"
            assert len(frames[2]) == chunk.nbytes
            np.testing.assert_array_equal(np.frombuffer(frames[2], np.float32).reshape(len(chunk), 4), chunk)
            decoded_header, data = decode_message(frames)
            assert decoded_header == header and data.dtype == np.float32
            np.testing.assert_array_equal(data, chunk)
        first = json.loads(messages[0][1])
        assert first["channels"] == NAMES and first["channel_types"] == TYPES
        assert all("channels" not in json.loads(m[1]) for m in messages[1:])
        sync = publisher.add_topic(SYNC_TOPIC, "sync")
        assert publisher.messages_sent - sync.messages_sent == 3 and publisher.messages_dropped == 0
    finally:
        sub.close(linger=0)
        publisher.close()


def test_zmq_channels_repeat_every_100th_message():
    publisher = make_zmq_publisher()
    sub = connected_subscriber(publisher, b"meg")
    try:
        headers = []
        for batch in range(0, 201, 50):  # batches below the send high-water mark (100)
            for k in range(batch, min(batch + 50, 201)):
                publisher.publish(np.full((1, 4), k, np.float32), np.array([float(k)]))
            headers += [json.loads(frames[1]) for frames in receive(sub, min(50, 201 - batch))]
        assert [h["seq"] for h in headers] == list(range(201))
        assert [h["seq"] for h in headers if "channels" in h] == [0, 100, 200]
    finally:
        sub.close(linger=0)
        publisher.close()


def test_zmq_publisher_errors():
    publisher = make_zmq_publisher()
    try:
        with pytest.raises(ValueError, match="cannot bind"):
            ZMQPublisher(publisher.address, channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ)
        with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
            publisher.publish(np.zeros((2, 5), np.float32), np.zeros(2))
    finally:
        publisher.close()
    with pytest.raises(ValueError, match="zmq_curve_keys: .*keys is not a directory"):
        ZMQPublisher("tcp://127.0.0.1:*", channel_names=NAMES, channel_types=TYPES, sfreq_hz=SFREQ_HZ,
                     curve_keys_dir="keys")


def test_decode_message_rejects_malformed_messages():
    header = json.dumps({"n_samples": 2, "n_channels": 3, "dtype": "float32"}).encode()
    with pytest.raises(ValueError, match="3 frames"):
        decode_message([b"meg", header])
    with pytest.raises(ValueError, match="payload has 8 bytes"):
        decode_message([b"meg", header, b"\0" * 8])
    with pytest.raises(ValueError, match="malformed header"):
        decode_message([b"meg", b"{}", b""])


@pytest.mark.parametrize("address, loopback", [
    ("tcp://127.0.0.1:5556", True), ("tcp://localhost:5556", True), ("tcp://[::1]:5556", True),
    ("ipc:///tmp/meg", True), ("tcp://0.0.0.0:5556", False), ("tcp://*:5556", False),
    ("tcp://192.168.1.4:5556", False), ("tcp://eth0:5556", False),
])
def test_is_loopback_address(address, loopback):
    assert is_loopback_address(address) is loopback
