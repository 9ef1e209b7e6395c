"""The relay (`python -m brainformer_rt.tools.relay`, the transport floor of `bench --floor`): real
player, real relay process, real LSL and ZeroMQ subscribers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from brainformer_rt.tools._proc import free_tcp_address
from brainformer_rt.serving.inlet import EEGInlet, find_stream
from brainformer_rt.tools.listener import LSLSubscriber, ZMQSubscriber
from tests.rt.conftest import HOP, stop_process


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainformer_rt.tools.relay", *args]


#: Messages (ZeroMQ) and hops of samples (LSL) the relay's subscribers wait for.
MESSAGES = 40
#: Hang timeout of every wait (a player starting on a busy machine takes a minute).
HANG_S = 120.0


@pytest.mark.timeout(300)
def test_relay_sends_one_hop_of_zeros_per_hop_stamped_with_the_input_timestamps(
        stream_name, start_player, model_dir, tmp_path):
    """Every message is one hop of zeros stamped with consecutive input timestamps; what the
    relay leaves out when it falls behind (a pull of several hops publishes only the newest) is
    counted in its ``windows_skipped``: the holes between consecutive messages are that, and
    nothing else. Waits for a number of messages, never for a time."""
    start_player(stream_name, "--chunk", str(HOP), "--loop")
    eeg = EEGInlet(find_stream(stream_name, HANG_S, by=("name",)))
    eeg.open()
    out, zmq_address, stats_path = f"{stream_name}-relay", free_tcp_address(), tmp_path / "relay.json"
    relay = subprocess.Popen(relay_command("--stream", stream_name, "--model", str(model_dir), "--lsl-name", out,
                                           "--zmq", zmq_address, "--stats-json", str(stats_path)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lsl, zmq = LSLSubscriber(out, wait_s=HANG_S), ZMQSubscriber(zmq_address, b"meg")
    try:
        zmq.open()
        lsl.open()
        assert lsl.channel_names[:3] == ["MEG 0113", "MEG 0112", "MEG 0111"] and len(lsl.channel_names) == 306
        inputs, lsl_items, zmq_items = [], [], []
        deadline = time.monotonic() + HANG_S  # a hang
        # ... and for the channel names, which come with seq 0 and every 100th message (seq 0 may go
        # out before the subscription has arrived).
        while (len(zmq_items) < MESSAGES or sum(len(item.timestamps) for item in lsl_items) < MESSAGES * HOP
               or not zmq.channel_names):
            assert relay.poll() is None and time.monotonic() < deadline, (len(zmq_items), len(lsl_items))
            _, timestamps = eeg.pull(0.05)
            inputs.append(timestamps.copy())
            lsl_items += lsl.receive_all(0.0)
            zmq_items += zmq.receive_all(0.0)
        _, timestamps = eeg.pull(0.0)  # what the inlet holds of the published samples' input
        inputs.append(timestamps.copy())
    finally:
        code = stop_process(relay)
        lsl.close()
        zmq.close()
        eeg.close()
    _, stderr = relay.communicate()
    assert code == 0, stderr
    input_timestamps = np.concatenate(inputs)
    assert (np.diff(input_timestamps) > 0).all()

    assert zmq.channel_names == lsl.channel_names
    for item in zmq_items:
        assert item.data.shape == (HOP, 306) and item.data.dtype == np.float32 and not item.data.any()
        assert item.header["model"] == "relay (no model)" and item.header["stream"] == stream_name
    # Every published timestamp is an input timestamp (bit-exact over LSL), one hop at a time.
    lsl_timestamps = np.concatenate([item.timestamps for item in lsl_items])
    assert not np.concatenate([item.data for item in lsl_items]).any()
    assert np.isin(lsl_timestamps[lsl_timestamps <= input_timestamps[-1]], input_timestamps).all()
    seen = [item for item in zmq_items if item.header["t_last"] <= input_timestamps[-1]]
    assert seen
    first = np.searchsorted(input_timestamps, [item.header["t0"] for item in seen])
    last = np.searchsorted(input_timestamps, [item.header["t_last"] for item in seen])
    assert (input_timestamps[first] == [item.header["t0"] for item in seen]).all()
    assert (input_timestamps[last] == [item.header["t_last"] for item in seen]).all()
    assert (last - first == HOP - 1).all()  # HOP consecutive input samples

    # Holes between consecutive messages (no ZeroMQ drop between them): each is the older part of
    # a pull of several hops, whose whole hops the relay counted as skipped windows.
    seq = np.array([item.header["seq"] for item in seen])
    consecutive = np.diff(seq) == 1
    assert consecutive.any()
    hole = (first[1:] - last[:-1] - 1)[consecutive]  # input samples between two published hops
    assert (hole >= 0).all()
    stats = json.loads(stats_path.read_text())
    assert stats["windows_served"] >= len(zmq_items) and stats["samples_in"] >= HOP * len(zmq_items)
    print(f"\nrelay: {len(zmq_items)} messages, {int(hole.sum())} input samples between consecutive ones; "
          f"relay: {stats['windows_skipped']} windows skipped")
    assert int((hole // HOP).sum()) <= stats["windows_skipped"]


def test_relay_without_outputs_stream_or_model_exits_2(stream_name, model_dir):
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir)),
                          capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2 and "--lsl-name, --zmq or both" in done.stderr
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir), "--lsl-name", "x",
                                        "--wait", "0.5"), capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2, done.stderr
    assert stream_name in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir / "nowhere"), "--zmq",
                                        "tcp://127.0.0.1:1"), capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2 and "nowhere" in done.stderr and "Traceback" not in done.stderr
