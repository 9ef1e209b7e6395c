import time
import uuid

import numpy as np
import pylsl
import pytest

from brainformer_rt.serving.inlet import (
    EEGInlet,
    StreamDescription,
    StreamNotFoundError,
    UnsupportedStreamError,
    find_stream,
    list_streams,
)

pytestmark = pytest.mark.timeout(60)

SFREQ_HZ = 500.0
LABELS = ["Fp1", "Fp2", "Cz", "O1"]


def make_outlet(name: str, stream_type: str = "EEG", channel_format: str = "float32", labels=LABELS):
    info = pylsl.StreamInfo(name, stream_type, len(labels), SFREQ_HZ, channel_format, f"src-{uuid.uuid4()}")
    channels = info.desc().append_child("channels")
    for label in labels:
        channel = channels.append_child("channel")
        channel.append_child_value("label", label)
        channel.append_child_value("type", "EEG")
        channel.append_child_value("unit", "V")
    return pylsl.StreamOutlet(info)


#: Hang timeout of every wait here (a stream to appear, samples to arrive): never reached unless broken.
HANG_S = 30.0


def pull_until(inlet: EEGInlet, n_samples: int):
    """Pull (copies) until n_samples arrived, or ``HANG_S`` passed."""
    data, timestamps = [], []
    deadline = time.monotonic() + HANG_S
    while sum(len(t) for t in timestamps) < n_samples and time.monotonic() < deadline:
        chunk, stamps = inlet.pull(0.5)
        data.append(chunk.copy())
        timestamps.append(stamps.copy())
    return np.concatenate(data), np.concatenate(timestamps)


def open_inlet(outlet_name: str, **kwargs) -> EEGInlet:
    inlet = EEGInlet(find_stream(outlet_name, wait_s=HANG_S), **kwargs)
    inlet.open()
    return inlet


def test_round_trip_delivers_everything_with_labels_rate_and_timestamps(stream_name):
    outlet = make_outlet(stream_name)
    inlet = open_inlet(stream_name, max_chunk_samples=64)
    try:
        description = inlet.description
        assert description.name == stream_name
        assert description.channel_labels == tuple(LABELS)
        assert description.channel_types == ("EEG",) * 4
        assert description.channel_units == ("V",) * 4
        assert description.sfreq_hz == SFREQ_HZ
        assert description.channel_format == "float32" and description.is_float
        assert description.n_channels == 4

        rng = np.random.default_rng(0)
        sent = rng.standard_normal((100, 4)).astype(np.float32)
        sent_timestamps = pylsl.local_clock() + np.arange(100) / SFREQ_HZ
        for start in range(0, 100, 10):
            outlet.push_chunk(sent[start:start + 10], sent_timestamps[start:start + 10])
        data, timestamps = pull_until(inlet, 100)

        np.testing.assert_array_equal(data, sent)
        # Same host, same clock: no correction, the stamps arrive bit for bit.
        assert not inlet.correct_clock and inlet.clock_offset_s == 0.0
        np.testing.assert_array_equal(timestamps, sent_timestamps)
        assert inlet.samples_in == 100 and 1 <= inlet.chunks <= 100
        assert inlet.reconnects == 0 and inlet.discontinuities == 0
        empty, empty_stamps = inlet.pull(0.0)  # everything was drained
        assert empty.shape == (0, 4) and empty_stamps.shape == (0,)
    finally:
        inlet.close()


def test_clock_correction_on_request_adds_the_measured_offset(stream_name):
    outlet = make_outlet(stream_name)
    inlet = open_inlet(stream_name, correct_clock=True)
    try:
        # Estimated: the true offset on one host is 0, the estimate is off by at most half a
        # probe's round trip, which a stalled machine stretches; far from either clock's value.
        assert abs(inlet.clock_offset_s) < 5.0
        sent_timestamps = pylsl.local_clock() + np.arange(5) / SFREQ_HZ
        outlet.push_chunk(np.zeros((5, 4), np.float32), sent_timestamps)
        _, timestamps = pull_until(inlet, 5)
        np.testing.assert_allclose(timestamps, sent_timestamps + inlet.clock_offset_s, rtol=0, atol=1e-9)
    finally:
        inlet.close()


def test_pull_returns_at_most_max_chunk_samples_and_the_rest_next_time(stream_name):
    outlet = make_outlet(stream_name)
    inlet = open_inlet(stream_name, max_chunk_samples=16)
    try:
        sent = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)
        outlet.push_chunk(sent, pylsl.local_clock() + np.arange(40) / SFREQ_HZ)
        data, _ = pull_until(inlet, 40)
        np.testing.assert_array_equal(data, sent)
        assert inlet.chunks >= 3
    finally:
        inlet.close()


def test_spin_until_available_sees_pushed_samples_and_gives_up_at_the_timeout(stream_name):
    outlet = make_outlet(stream_name)
    inlet = open_inlet(stream_name, max_chunk_samples=64)
    try:
        started = time.perf_counter()
        assert inlet.spin_until_available(1, 0.05) is False
        assert time.perf_counter() - started >= 0.05  # it gave up at the timeout, not before
        outlet.push_chunk(np.ones((8, len(LABELS)), dtype=np.float32))
        assert inlet.spin_until_available(8, HANG_S) is True
        data, timestamps = inlet.pull(0.0, 8)
        assert len(timestamps) == 8 and np.all(data == 1.0)
        assert inlet.spin_until_available(1000, 0.01) is False  # more than the buffer: capped, then timed out
    finally:
        inlet.close()


def test_double_stream_is_read_as_float64(stream_name):
    outlet = make_outlet(stream_name, channel_format="double64")
    inlet = open_inlet(stream_name)
    try:
        sent = np.linspace(-1e-5, 1e-5, 20).reshape(5, 4)
        outlet.push_chunk(sent, pylsl.local_clock() + np.arange(5) / SFREQ_HZ)
        data, _ = pull_until(inlet, 5)
        assert data.dtype == np.float64
        np.testing.assert_array_equal(data, sent)
    finally:
        inlet.close()


def test_timestamp_jumps_are_counted_as_discontinuities_not_reconnects(stream_name):
    outlet = make_outlet(stream_name)
    inlet = open_inlet(stream_name)
    try:
        start = pylsl.local_clock()
        stamps = np.concatenate([start + np.arange(10) / SFREQ_HZ, start + 2.0 + np.arange(10) / SFREQ_HZ])
        outlet.push_chunk(np.zeros((10, 4), np.float32), stamps[:10])
        outlet.push_chunk(np.zeros((10, 4), np.float32), stamps[10:])
        outlet.push_chunk(np.zeros((3, 4), np.float32), start + 1.0 + np.arange(3) / SFREQ_HZ)  # backwards
        pull_until(inlet, 23)
        assert inlet.discontinuities == 2
        assert inlet.reconnects == 0  # the outlet never went away
        assert inlet.last_gap_s == pytest.approx(-1.0 - 9 / SFREQ_HZ)
    finally:
        inlet.close()


def test_find_stream_falls_back_to_the_type(stream_name):
    stream_type = f"type-{uuid.uuid4().hex[:8]}"
    _outlet = make_outlet(stream_name, stream_type=stream_type)
    info = find_stream(stream_type, wait_s=HANG_S)
    assert info.name() == stream_name and info.type() == stream_type


def test_find_stream_prefers_the_name_over_the_type(stream_name):
    # A stream whose *type* equals the other's *name* must lose against the name match.
    _by_type = make_outlet(f"other-{uuid.uuid4().hex[:8]}", stream_type=stream_name)
    _by_name = make_outlet(stream_name, stream_type="EEG")
    assert find_stream(stream_name, wait_s=HANG_S).name() == stream_name


def test_find_stream_gives_up_with_a_clear_error():
    with pytest.raises(StreamNotFoundError, match="no LSL stream with name or type 'no-such-stream'"):
        find_stream("no-such-stream", wait_s=0.5)


def test_find_stream_rejects_quotes():
    with pytest.raises(ValueError, match="quote"):
        find_stream("it's", wait_s=0.1)


def test_string_stream_is_described_and_refused(stream_name):
    _outlet = make_outlet(stream_name, channel_format="string")
    info = find_stream(stream_name, wait_s=HANG_S)
    assert StreamDescription.from_info(info).channel_format == "string"
    assert not StreamDescription.from_info(info).is_float
    with pytest.raises(UnsupportedStreamError, match="channel format 'string'"):
        EEGInlet(info).open()


def test_missing_labels_are_empty_strings(stream_name):
    info = pylsl.StreamInfo(stream_name, "EEG", 3, SFREQ_HZ, "float32", f"src-{uuid.uuid4()}")
    _outlet = pylsl.StreamOutlet(info)
    inlet = open_inlet(stream_name)
    try:
        assert inlet.description.channel_labels == ("", "", "")
        assert not inlet.description.has_labels
    finally:
        inlet.close()


def test_streams_lists_a_visible_stream(stream_name, capsys, monkeypatch):
    _outlet = make_outlet(stream_name, stream_type="EEG")
    found = []
    deadline = time.monotonic() + HANG_S
    while not found:  # one listing waits 1 s for answers: a stalled machine may answer later
        assert time.monotonic() < deadline, f"{stream_name!r} never listed"
        found = [d for d in list_streams(1.0) if d.name == stream_name]
    assert len(found) == 1
    assert (found[0].type, found[0].n_channels, found[0].sfreq_hz, found[0].channel_format) == ("EEG", 4, SFREQ_HZ, "float32")
    from rich.console import Console

    from brainformer_rt.commands.streams import streams_table

    monkeypatch.setenv("COLUMNS", "250")
    Console().print(streams_table(found))
    out = capsys.readouterr().out
    assert stream_name in out and "float32" in out


def test_resolver_polls_without_blocking_and_prefers_a_late_name_match(stream_name):
    from brainformer_rt.serving.inlet import StreamResolver, wait_for_streams

    resolver = StreamResolver(stream_name)
    try:
        # Nothing there yet: poll() says so at once. (A poll that waited for a match would never
        # return: the streams are made only after it.)
        assert resolver.poll() is None
        _by_type = make_outlet(f"other-{uuid.uuid4().hex[:8]}", stream_type=stream_name)
        _by_name = make_outlet(stream_name, stream_type="EEG")
        found = []
        infos = wait_for_streams({stream_name: resolver}, HANG_S, on_found=lambda key, info: found.append(key))
        assert infos[stream_name].name() == stream_name and found == [stream_name]
    finally:
        resolver.close()


def test_waiting_for_streams_names_the_missing_one():
    from brainformer_rt.serving.inlet import StreamResolver, wait_for_streams

    key = f"missing-{uuid.uuid4().hex[:8]}"
    resolver = StreamResolver(key)
    try:
        with pytest.raises(StreamNotFoundError, match=f"name or type {key!r}") as info:
            wait_for_streams({key: resolver}, 0.3)
        assert info.value.key == key
    finally:
        resolver.close()
