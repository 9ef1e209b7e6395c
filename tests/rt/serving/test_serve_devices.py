"""`serve --device D --engine E` end to end gives the numbers of the model run offline on the CPU.

A real player plays the bundled recording into LSL, a real daemon serves the tiny test model on
the device and engine asked for, and a ZeroMQ subscriber receives the predictions. Each
message is matched by its timestamps to the input samples it was predicted from (read off the
player's stream by an inlet here), and the same windows, preprocessed by the training code, go
through the model eagerly on the CPU. The CPU case runs everywhere; the CUDA cases (the default
``auto`` = ``cuda-graph``, ``eager`` and ``compile`` on the GPU) skip without CUDA.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import numpy as np
import pytest
import torch
import zmq

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.model_dir import load_model
from brainformer.preprocessing import eeg_preprocessor, unscale_meg
from brainformer_rt.serving.publishers.zmq import decode_message
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import WINDOW, Player, nearest, open_inlet

#: A CUDA daemon compiles (``compile``) or captures (``cuda-graph``) before its first window.
pytestmark = pytest.mark.timeout(360)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")
#: ``(device, engine, the engine the daemon reports)``.
CASES = [
    pytest.param("cpu", "eager", "eager", id="cpu-eager"),
    pytest.param("cuda", "auto", "cuda-graph", id="cuda-auto", marks=needs_cuda),
    pytest.param("cuda", "eager", "eager", id="cuda-eager", marks=needs_cuda),
    pytest.param("cuda", "compile", "compile", id="cuda-compile", marks=needs_cuda),
]
#: Messages compared per case.
MESSAGES = 30
#: Waiting for them: a hang timeout only (start-up, compilation, a loaded machine), never a duration.
HANG_TIMEOUT_S = 300.0
#: The same input sample seen through two inlets: liblsl's clock-offset noise on one host is tens
#: of µs; a quarter of a sample period still tells samples apart.
TIMESTAMP_TOLERANCE_S = 0.25 / 600.614990234375


@pytest.fixture(scope="module")
def player():
    """The bundled recording played in a loop for the whole module; yields the stream name."""
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    source = Player(name, f"test-{uuid.uuid4()}")
    yield name
    source.stop()


@pytest.fixture(scope="module")
def serve_config(tmp_path_factory):
    """No stale-window dropping (a loaded machine must not turn into no windows served)."""
    path = tmp_path_factory.mktemp("config") / "serve.toml"
    path.write_text("torch_threads = 1\nmax_input_age_s = inf\nwait_s = 60.0\n")
    return path


def pull_all(inlet, data: list, timestamps: list) -> None:
    chunk, stamps = inlet.pull_chunk(timeout=0.0, max_samples=100000)
    if stamps:
        data.append(np.asarray(chunk, dtype=np.float32))
        timestamps.append(np.asarray(stamps))


@pytest.mark.parametrize(("device", "engine", "reported"), CASES)
def test_served_predictions_equal_the_offline_cpu_model(player, model_dir, eeg_names, serve_config, tmp_path, serves,
                                                        device, engine, reported):
    zmq_address = free_tcp_address()
    stats_path = tmp_path / "stats.json"
    grab = open_inlet(player)  # every input sample, from before the daemon's first one
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"meg")
    subscriber.connect(zmq_address)
    inputs, input_times, messages = [], [], []
    try:
        serve = serves(tmp_path, "--stream", player, "--model", str(model_dir), "--zmq", zmq_address,
                       "--lsl-name", f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config),
                       "--stats-json", str(stats_path), "--device", device, "--engine", engine)
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while len(messages) < MESSAGES:
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"{len(messages)} ZeroMQ messages: {serve.stderr}"
            pull_all(grab, inputs, input_times)
            while subscriber.poll(10):
                messages.append(decode_message(subscriber.recv_multipart()))
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.stderr
        pull_all(grab, inputs, input_times)
    finally:
        subscriber.close()
        grab.close_stream()

    stats = json.loads(stats_path.read_text())
    served_by = stats["info"]["engine"]
    assert served_by["kind"] == reported and served_by["device"].split(":")[0] == device, served_by
    counters = stats["streams"][player]
    assert counters["gaps"] == 0 and counters["nan_windows"] == 0

    # The input the daemon read, from its first sample on, preprocessed by the training code.
    config = BrainformerConfig.from_pretrained(model_dir)
    input_times, inputs = np.concatenate(input_times), np.concatenate(inputs)
    first, distance = nearest(input_times, np.array([counters["first_timestamp"]]))
    assert distance[0] < TIMESTAMP_TOLERANCE_S
    order = [eeg_names.index(name) for name in config.eeg_channel_names]
    preprocessed, times = eeg_preprocessor(config, config.sfreq_hz).process(inputs[first[0]:, order],
                                                                           input_times[first[0]:])
    windows, live = [], []
    for header, payload in messages:
        end, distance = nearest(times, np.array([header["t_last"]]))
        assert distance[0] < TIMESTAMP_TOLERANCE_S and end[0] + 1 >= WINDOW
        windows.append(preprocessed[end[0] + 1 - WINDOW:end[0] + 1])
        live.append(payload)
    model = load_model(model_dir)  # on the CPU, eager
    with torch.no_grad():
        scaled = model(torch.from_numpy(np.stack(windows))).predictions.numpy()
    for row, payload in enumerate(live):
        offline = unscale_meg(config, scaled[row, WINDOW - len(payload):])
        # Float tolerance: GPU kernels sum in another order (and may use TF32).
        np.testing.assert_allclose(payload, offline, rtol=1e-3, atol=1e-3 * np.abs(offline).max(),
                                   err_msg=f"message {row}")
    # The comparison can fail: the first payload is far from the prediction for the last window.
    other = unscale_meg(config, scaled[-1, WINDOW - len(live[0]):])
    assert not np.allclose(live[0], other, rtol=1e-3, atol=1e-3 * np.abs(other).max())
