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


@pytest.mark.timeout(120)
def test_relay_sends_one_hop_of_zeros_per_hop_stamped_with_the_input_timestamps(
        stream_name, start_player, model_dir, tmp_path):
    start_player(stream_name, "--chunk", str(HOP), "--loop")
    eeg = EEGInlet(find_stream(stream_name, 30.0, by=("name",)))
    eeg.open()
    out, zmq_address, stats_path = f"{stream_name}-relay", free_tcp_address(), tmp_path / "relay.json"
    relay = subprocess.Popen(relay_command("--stream", stream_name, "--model", str(model_dir), "--lsl-name", out,
                                           "--zmq", zmq_address, "--stats-json", str(stats_path)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lsl, zmq = LSLSubscriber(out, wait_s=60.0), ZMQSubscriber(zmq_address, b"meg")
    try:
        zmq.open()
        lsl.open()
        assert lsl.channel_names[:3] == ["MEG 0113", "MEG 0112", "MEG 0111"] and len(lsl.channel_names) == 306
        inputs, lsl_items, zmq_items = [], [], []
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            _, timestamps = eeg.pull(0.05)
            inputs.append(timestamps.copy())
            lsl_items += lsl.receive_all(0.0)
            zmq_items += zmq.receive_all(0.0)
        time.sleep(0.3)  # the last messages in flight
        lsl_items += lsl.receive_all(0.1)
        zmq_items += zmq.receive_all(0.1)
    finally:
        code = stop_process(relay)
        lsl.close()
        zmq.close()
        eeg.close()
    _, stderr = relay.communicate()
    assert code == 0, stderr
    input_timestamps = np.concatenate(inputs)

    assert len(zmq_items) > 20 and len(lsl_items) > 5
    assert zmq.seq_gaps == 0 and zmq.channel_names == lsl.channel_names
    for item in zmq_items:
        assert item.data.shape == (HOP, 306) and item.data.dtype == np.float32 and not item.data.any()
        assert item.header["model"] == "relay (no model)" and item.header["stream"] == stream_name
    # Every published timestamp is an input timestamp (bit-exact over LSL), one hop at a time.
    lsl_timestamps = np.concatenate([item.timestamps for item in lsl_items])
    assert not np.concatenate([item.data for item in lsl_items]).any()
    assert np.isin(lsl_timestamps[lsl_timestamps <= input_timestamps[-1]], input_timestamps).all()
    zmq_last = np.array([item.header["t_last"] for item in zmq_items])
    assert np.isin(zmq_last[zmq_last <= input_timestamps[-1]], input_timestamps).all()
    steps = np.diff(zmq_last)
    assert np.allclose(steps, steps[0], rtol=0.05)  # one hop apart: nothing skipped

    stats = json.loads(stats_path.read_text())
    assert stats["windows_served"] >= len(zmq_items) and stats["samples_in"] >= HOP * len(zmq_items)
    assert stats["windows_skipped"] == 0


def test_relay_without_outputs_stream_or_model_exits_2(stream_name, model_dir):
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--lsl-name, --zmq or both" in done.stderr
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir), "--lsl-name", "x",
                                        "--wait", "0.5"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert stream_name in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(relay_command("--stream", stream_name, "--model", str(model_dir / "nowhere"), "--zmq",
                                        "tcp://127.0.0.1:1"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nowhere" in done.stderr and "Traceback" not in done.stderr
