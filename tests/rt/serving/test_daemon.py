"""The serve daemon end to end, with real processes: player → serve → LSL inlet + ZeroMQ SUB.

The model is a real (tiny) Brainformer saved in a temporary model directory, with the bundled
recording's channels but its EEG channels in reversed order (so the daemon must re-order the
stream by label) and non-trivial scaling statistics (so the output must be un-scaled).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest
import torch
import zmq

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.model_dir import load_model
from brainformer.preprocessing import eeg_preprocessor, unscale_meg
from brainformer_rt.tools._proc import free_tcp_address
from brainformer.settings import ServeSettings, SettingsError, build_serve_settings
from brainformer_rt.serving.scheduler import unscale_meg_into
from brainformer_rt.serving.publishers.zmq import decode_message
from tests.rt.conftest import (
    HOP,
    WINDOW,
    InProcessDaemon,
    PacedSource,
    Player,
    contiguous_runs,
    json_events,
    make_eeg_outlet,
    nearest,
    open_inlet,
    rt_cli,
    run_cli,
    save_model,
    stop_process,
)

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[3]
# The daemon stamps outputs with input timestamps corrected by liblsl's clock-offset estimate,
# which on one host is a few tens of µs (noise, the true offset is 0). A quarter of a sample
# period still identifies every sample uniquely.
TIMESTAMP_TOLERANCE_S = 0.25 / 600.614990234375
#: For daemons run in this process: the same on a CUDA machine, and no engine compiled in the
#: background (``auto`` would start one; its own tests are in test_engine_switch.py).
CPU_EAGER = ("--device", "cpu", "--engine", "eager")


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve_config(tmp_path_factory) -> Path:
    """Settings shared by the tests: one torch thread (the 2 cores are shared with the player)."""
    path = tmp_path_factory.mktemp("config") / "serve.toml"
    path.write_text("torch_threads = 1\nmax_input_age_s = inf\nwait_s = 30.0\nwarmup_s = 0.5\n")
    return path


def start_player(name: str) -> subprocess.Popen:
    return subprocess.Popen(rt_cli("simulate", "--name", name, "--source-id", f"test-{uuid.uuid4()}", "--loop"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))


@pytest.fixture(scope="module")
def player():
    """The bundled recording played in a loop for the whole module; yields the stream name."""
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    process = start_player(name)
    yield name
    stop_process(process)


def pull_all(inlet: pylsl.StreamInlet, data: list, timestamps: list) -> None:
    chunk, stamps = inlet.pull_chunk(timeout=0.0, max_samples=100000)
    if stamps:
        data.append(np.asarray(chunk, dtype=np.float32))
        timestamps.append(np.asarray(stamps))


def channel_metadata(info: pylsl.StreamInfo) -> tuple[list[str], list[str], list[str]]:
    labels, types, units = [], [], []
    channel = info.desc().child("channels").child("channel")
    while not channel.empty():
        labels.append(channel.child_value("label"))
        types.append(channel.child_value("type"))
        units.append(channel.child_value("unit"))
        channel = channel.next_sibling("channel")
    return labels, types, units


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wait", ["blocking", "busy-poll"])
def test_serve_end_to_end_matches_offline_predictions(player, model_dir, eeg_names, tmp_path, serves, wait):
    """LSL + ZeroMQ outputs: meta-data, timestamps = input timestamps, seq without gaps,
    predictions = offline model on the same windows; SIGTERM → exit 0 with statistics. The same
    with ``--busy-poll`` (spinning instead of blocking in liblsl)."""
    zmq_address = free_tcp_address()
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    stats_path = tmp_path / "stats.json"
    # A warm-up of 2 s: the first windows (due ~0.1 s after serving starts) fall in it even on a
    # machine that stalls for a second, and the test serves until it is over.
    config = tmp_path / "serve.toml"
    config.write_text("torch_threads = 1\nmax_input_age_s = inf\nwait_s = 30.0\nwarmup_s = 2.0\n")
    grab = open_inlet(player)  # every input sample, from before the daemon's first one
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"meg")
    subscriber.connect(zmq_address)
    inputs, input_times, outputs, output_times, messages = [], [], [], [], []
    try:
        serve = serves(tmp_path, "--stream", player, "--model", str(model_dir), "--zmq", zmq_address,
                       "--lsl-name", out_name, "--config", str(config), "--stats-json", str(stats_path),
                       *(["--busy-poll"] if wait == "busy-poll" else []))
        meg_inlet = open_inlet(out_name)

        def enough() -> bool:
            """Both outputs carried enough predictions, ZeroMQ every one LSL did, the warm-up is over."""
            if len(messages) < 40 or sum(len(t) for t in output_times) < 20 * HOP:
                return False
            return messages[-1][0]["t_last"] >= output_times[-1][-1] and "warm-up of 2 s over" in serve.stderr

        # Collect until then (a hang timeout, not a duration).
        deadline = time.monotonic() + 60.0
        while not enough():
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"{len(messages)} ZeroMQ messages: {serve.stderr}"
            pull_all(grab, inputs, input_times)
            pull_all(meg_inlet, outputs, output_times)
            while subscriber.poll(10):
                messages.append(decode_message(subscriber.recv_multipart()))
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
        info = meg_inlet.info(10.0)
        pull_all(grab, inputs, input_times)
    finally:
        subscriber.close()
    # -- the process: clean stop with statistics
    assert "stopped by SIGTERM" in serve.stdout
    assert "e2e latency" in serve.stdout
    stats = json.loads(stats_path.read_text())
    counters = stats["streams"][player]
    assert counters["windows_served"] > 0 and counters["gaps"] == 0 and counters["nan_windows"] == 0
    assert stats["info"]["busy_poll"] is (wait == "busy-poll")
    assert stats["duration_s"] - stats["timed_duration_s"] >= 2.0 - 1e-3  # the 2 s warm-up is left out
    assert stats["e2e_latency"]["all"]["count"] < counters["windows_served"]  # and the windows served in it
    # -- LSL meta-data
    config = BrainformerConfig.from_pretrained(model_dir)
    assert (info.type(), info.channel_count(), info.channel_format()) == ("MEG", 306, pylsl.cf_float32)
    assert info.nominal_srate() == pytest.approx(config.sfreq_hz)
    labels, types, units = channel_metadata(info)
    assert labels == list(config.meg_channel_names)
    assert types == list(config.meg_channel_types)
    assert units == [{"mag": "T", "grad": "T/m"}[t] for t in types]
    # -- ZeroMQ: seq without gaps, channel names in message 0 and every 100th
    seqs = [header["seq"] for header, _ in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for header, payload in messages:
        assert ("channels" in header) == (header["seq"] % 100 == 0)
        assert header["n_channels"] == 306 and payload.shape == (header["n_samples"], 306)
    # -- timestamps: every output sample carries the timestamp of an input sample, once
    input_times = np.concatenate(input_times)
    inputs = np.concatenate(inputs)
    assert np.all(np.diff(input_times) > 0)
    lsl_times = np.concatenate(output_times)
    assert np.all(np.diff(lsl_times) > 0)  # each input sample is published at most once, in order
    _, distance = nearest(input_times, lsl_times)
    assert distance.max() < TIMESTAMP_TOLERANCE_S
    # -- offline: the same model on the same windows of the same input samples
    first, distance = nearest(input_times, np.array([counters["first_timestamp"]]))
    assert distance[0] < TIMESTAMP_TOLERANCE_S
    order = [eeg_names.index(name) for name in config.eeg_channel_names]
    preprocessed, pre_times = eeg_preprocessor(config, config.sfreq_hz).process(
        inputs[first[0]:, order], input_times[first[0]:])
    model = load_model(model_dir)
    windows, expected_rows, live = [], [], []
    for header, payload in messages:
        end, distance = nearest(pre_times, np.array([header["t_last"]]))
        assert distance[0] < TIMESTAMP_TOLERANCE_S
        end = int(end[0])
        n = header["n_samples"]
        assert abs(pre_times[end - n + 1] - header["t0"]) < TIMESTAMP_TOLERANCE_S
        assert end + 1 >= WINDOW
        windows.append(preprocessed[end + 1 - WINDOW:end + 1])
        expected_rows.append(n)
        live.append(payload)
    with torch.no_grad():
        scaled = model(torch.from_numpy(np.stack(windows))).predictions.numpy()
    for row, (n, payload) in enumerate(zip(expected_rows, live)):
        offline = unscale_meg(config, scaled[row, WINDOW - n:])
        np.testing.assert_allclose(payload, offline, rtol=1e-4, atol=1e-4 * np.abs(offline).max())
    # -- LSL and ZeroMQ carry the same numbers for the same samples
    zmq_times = np.concatenate([h["t0"] + np.arange(h["n_samples"]) / h["sfreq"] for h, _ in messages])
    zmq_data = np.concatenate(live)
    pick, distance = nearest(zmq_times, lsl_times)
    common = distance < TIMESTAMP_TOLERANCE_S
    assert common.sum() >= 10 * HOP
    np.testing.assert_array_equal(np.concatenate(outputs)[common], zmq_data[pick[common]])


@pytest.mark.parametrize("wait", ["blocking", "busy-poll"])
def test_two_streams_are_served_by_one_daemon_and_a_dead_one_holds_up_nobody(model_dir, serve_config, recording_eeg,
                                                                              eeg_names, tmp_path, serves, wait):
    """Pull threads (blocking) or one sweeping thread (busy-poll): each stream has its own outputs
    and ``seq``. When one source dies, the other goes on being served while the daemon waits in
    vain for the dead one: every sample the live source sends from then on is published, in
    messages without a hole, and the dead one's topic stays silent. The sources send each hop
    once the daemon has published up to the one before it, so the daemon has no reason to skip
    a window however slow the machine; a loop held up by the dead stream would hang the feed."""
    live = PacedSource(f"test-eeg-{uuid.uuid4().hex[:8]}", eeg_names, recording_eeg)
    dead = PacedSource(f"test-eeg-{uuid.uuid4().hex[:8]}", eeg_names, recording_eeg)
    zmq_address = free_tcp_address()
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    stats_path = tmp_path / "stats.json"
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"meg/")
    subscriber.connect(zmq_address)
    try:
        serve = serves(tmp_path, "--stream", live.name, "--stream", dead.name, "--model", str(model_dir), "--zmq",
                       zmq_address, "--lsl-name", out_name, "--config", str(serve_config), "--stats-json",
                       str(stats_path), "--log-format", "json", *(["--busy-poll"] if wait == "busy-poll" else []))
        inlets = {source.name: open_inlet(f"{out_name}-{source.name}") for source in (live, dead)}
        headers: dict[str, list[dict]] = {source.name: [] for source in (live, dead)}
        lsl_samples = {key: 0 for key in inlets}

        def receive() -> None:
            assert serve.process.poll() is None, serve.stderr
            while subscriber.poll(0):
                frames = subscriber.recv_multipart()
                header, payload = decode_message(frames)
                assert frames[0] == f"meg/{header['stream']}".encode() and np.isfinite(payload).all()
                headers[header["stream"]].append(header)
            for key, inlet in inlets.items():
                _, stamps = inlet.pull_chunk(timeout=0.0)
                lsl_samples[key] += len(stamps)

        def step(*sources: PacedSource) -> None:
            """A hop from each source, then until the daemon published up to less than a hop before its end."""
            for source in sources:
                source.push(HOP)
            deadline = time.monotonic() + 30.0
            while not all(headers[s.name] and headers[s.name][-1]["t_last"]
                          >= s.stamp(s.pushed - HOP) - TIMESTAMP_TOLERANCE_S for s in sources):
                assert time.monotonic() < deadline, f"a hop was not served: {serve.stderr}"
                receive()
                time.sleep(0.002)

        def reported_silent(key: str) -> bool:
            return any(e["event"] == "input_silent" and e.get("stream") == key for e in json_events(serve.stderr))

        # Both sources until both streams are served on both outputs (the daemon starts, the
        # subscription reaches it), then ten hops together.
        deadline = time.monotonic() + 60.0
        while min(map(len, headers.values())) == 0 or min(lsl_samples.values()) == 0:
            assert time.monotonic() < deadline, f"outputs: {({k: len(v) for k, v in headers.items()}, lsl_samples)}"
            live.push(HOP)
            dead.push(HOP)
            receive()
        for _ in range(10):
            step(live, dead)
        # The second source dies. Until the daemon has seen it go silent, and for 40 hops more,
        # the live one is fed.
        dead.close()
        from_message = len(headers[live.name]) - 1  # every sample after this one's must be published
        dead_messages = len(headers[dead.name])
        while not reported_silent(dead.name):
            step(live)
        for _ in range(40):
            step(live)
        receive()
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        subscriber.close()
        live.close()
        dead.close()
    for topic_headers in headers.values():  # each topic counts its own seq, without gaps
        seqs = [h["seq"] for h in topic_headers]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    runs = contiguous_runs(headers[live.name][from_message:])
    assert len(runs) == 1, runs  # nothing the live source sent after the death went unpublished
    assert runs[0][1] >= live.stamp(live.pushed - HOP) - TIMESTAMP_TOLERANCE_S
    assert len(headers[dead.name]) == dead_messages  # everything the dead one sent was out before it died
    stats = json.loads(stats_path.read_text())
    assert all(stats["streams"][source.name]["windows_served"] > 0 for source in (live, dead))
    assert stats["info"]["engine"]["batch_size"] == 2


# ----------------------------------------------------------------------------------------------
# Stale input end to end: a source whose samples all arrive too old
# ----------------------------------------------------------------------------------------------
def test_input_older_than_max_input_age_is_dropped_counted_and_never_published(model_dir, tmp_path, serves):
    """A real player stamps every sample 50 ms before it sends it (``--timestamp-offset``; it
    sends each sample no earlier than its due time), served with ``max_input_age_s = 0.02``:
    every due window is older than that by construction, however fast or slow the machine.
    Nothing reaches ZeroMQ or LSL, and the JSON log, the statistics and the window accounting
    agree. 50 ms is far below the 1 s at which a source's clock counts as foreign (its offset
    then taken out): only a stall of 0.95 s just as the first window comes in could make the
    daemon take the stream for one."""
    from brainformer_rt.serving.pipeline import FOREIGN_CLOCK_THRESHOLD_S

    offset_s, max_age_s = 0.05, 0.02
    assert max_age_s < offset_s and offset_s + 0.9 < FOREIGN_CLOCK_THRESHOLD_S
    config = tmp_path / "stale.toml"
    config.write_text(f"torch_threads = 1\nwait_s = 30.0\nmax_input_age_s = {max_age_s}\nstats_interval_s = 0.5\n")
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    zmq_address = free_tcp_address()
    stats_path = tmp_path / "stats.json"
    source = Player(name, f"test-{uuid.uuid4()}", "--chunk", str(HOP), "--timestamp-offset", str(-offset_s))
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(zmq_address)
    received = lsl_samples = 0
    try:
        serve = serves(tmp_path, "--stream", name, "--model", str(model_dir), "--zmq", zmq_address,
                       "--lsl-name", out_name, "--config", str(config), "--stats-json", str(stats_path),
                       "--log-format", "json", "--engine", "eager")
        meg_inlet = open_inlet(out_name)

        def stale_so_far() -> int:
            progress = [e for e in json_events(serve.stderr) if e["event"] == "progress" and e["stream"] == name]
            return progress[-1]["windows_stale"] if progress else 0

        deadline = time.monotonic() + 60.0
        while stale_so_far() < 30:
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"no stale windows counted: {serve.stderr}"
            while subscriber.poll(10):
                subscriber.recv_multipart()
                received += 1
            lsl_samples += len(meg_inlet.pull_chunk(timeout=0.0, max_samples=100000)[1])
        lsl_samples += len(meg_inlet.pull_chunk(timeout=0.2, max_samples=100000)[1])  # before its outlet goes
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
        while subscriber.poll(200):
            subscriber.recv_multipart()
            received += 1
    finally:
        subscriber.close()
        source.stop()
    assert received == 0 and lsl_samples == 0  # nothing published, on either output
    counters = json.loads(stats_path.read_text())["streams"][name]
    assert counters["windows_served"] == 0 and counters["samples_published"] == 0
    assert counters["windows_stale"] >= 30 and counters["gaps"] == 0
    # Every due window was dropped: the stale ones, and those a pull of several hops superseded.
    assert counters["windows_stale"] <= counters["windows_skipped"] <= (counters["samples_in"] - WINDOW) // HOP + 1
    events = json_events(serve.stderr)
    assert not any(e["event"] == "first_prediction" for e in events)
    assert not any(e["event"] == "timestamp_offset" for e in events)  # 0.6 s behind is not a foreign clock


# ----------------------------------------------------------------------------------------------
# The serve loop in-process: gaps and NaN input reset the stream
# ----------------------------------------------------------------------------------------------
def test_gap_and_nan_reset_the_stream_and_no_window_spans_them(model_dir, eeg_names, recording_eeg):
    """Push 3 segments: a 0.5 s timestamp jump after sample 200, a NaN chunk at 400..407.
    Every published window (read back from the real LSL and ZeroMQ publishers) lies inside one
    segment; gap and NaN chunk are counted."""
    name = f"test-gap-{uuid.uuid4().hex[:8]}"
    outlet = make_eeg_outlet(name, eeg_names)
    settings = ServeSettings(streams=[name], max_input_age_s=float("inf"), pull_timeout_s=0.05).validate()
    served = InProcessDaemon(model_dir, name, settings)
    eeg = recording_eeg[:800]
    period = 1.0 / served.config.sfreq_hz
    pushed = pylsl.local_clock() + np.arange(800) * period
    pushed[200:] += 0.5  # the source lost 0.5 s of samples

    def push(start: int, stop_index: int, data: np.ndarray) -> None:
        for i in range(start, stop_index, 8):
            outlet.push_chunk(data[i:i + 8], pushed[i:i + 8])
            time.sleep(0.001)

    try:
        assert outlet.wait_for_consumers(10.0)
        push(0, 200, eeg)
        served.wait_for_output_after(pushed[199 - HOP])
        push(200, 400, eeg)
        served.wait_for_output_after(pushed[399 - HOP])
        with_nan = eeg.copy()
        with_nan[403, 5] = np.nan
        push(400, 408, with_nan)
        served.wait_until(lambda: served.counters.nan_chunks == 1, "the NaN chunk was not taken in")
        push(408, 800, eeg)
        served.wait_for_output_after(pushed[799 - HOP])
    finally:
        served.close()
    counters = served.counters
    assert counters.gaps == 1
    assert counters.gap_samples == round(0.5 / period)
    assert counters.nan_chunks == 1
    outputs = served.outputs
    assert np.isfinite(outputs.lsl_data).all()
    ends = []
    for stamps, (_, payload) in zip(outputs.stamps_by_message(), outputs.messages):  # the same samples on both
        index, distance = nearest(pushed, stamps)
        assert distance.max() < TIMESTAMP_TOLERANCE_S
        assert np.all(np.diff(index) == 1) and np.all(np.isfinite(payload))
        end = int(index[-1])
        window_start = end - WINDOW + 1
        # Inside one segment: [0, 200), [200, 400), or after the NaN chunk.
        assert (end < 200) or (200 <= window_start and end < 400) or window_start >= 408, (window_start, end)
        ends.append(end)
    assert min(ends) < 200 and any(200 <= e < 400 for e in ends) and max(ends) >= 408 + WINDOW - 1
    first_after_gap = min(e for e in ends if e >= 200)
    assert first_after_gap >= 200 + WINDOW - 1  # a fresh full window after the gap
    np.testing.assert_array_equal(outputs.lsl_data, np.concatenate([payload for _, payload in outputs.messages]))


# ----------------------------------------------------------------------------------------------
# Refusals and stops
# ----------------------------------------------------------------------------------------------
def test_channel_mismatch_exits_2_naming_the_channels(player, eeg_names, serve_config, tmp_path):
    names = eeg_names[:-1] + ["EEG 999"]
    model = save_model(tmp_path / "mismatch-model", names)
    result = run_cli("serve", "--stream", player, "--model", str(model), "--no-zmq", "--lsl-name",
                     f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config), *CPU_EAGER)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert "'EEG 999'" in error_lines[0] and "'EEG 060'" in error_lines[0] and player in error_lines[0]
    assert "Traceback" not in result.output


def test_a_stream_that_never_appears_fails_after_wait(model_dir, serve_config):
    missing = f"absent-{uuid.uuid4().hex[:8]}"
    result = run_cli("serve", "--stream", missing, "--model", str(model_dir), "--no-zmq", "--config",
                     str(serve_config), "--wait", "1", *CPU_EAGER)
    assert result.exit_code == 1, result.output
    assert f"waiting for LSL stream {missing!r}" in result.stdout
    assert f"no LSL stream with name or type {missing!r}" in result.stderr


def test_cuda_on_a_machine_without_it_exits_2(model_dir, serve_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("serve", "--stream", f"absent-{uuid.uuid4().hex[:8]}", "--model", str(model_dir), "--no-zmq",
                     "--config", str(serve_config), "--device", "cuda")
    assert result.exit_code == 2, result.output
    assert "CUDA is not available" in result.stderr


def test_bad_settings_exit_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('hop_samples = "16"\n')
    result = run_cli("serve", "--stream", "EEG", "--config", str(bad))
    assert result.exit_code == 2
    assert "hop_samples" in result.stderr and "an integer" in result.stderr
    assert "Traceback" not in result.output


def test_sigterm_while_waiting_for_the_stream_exits_0(model_dir, serve_config, tmp_path, serves):
    missing = f"absent-{uuid.uuid4().hex[:8]}"
    serve = serves(tmp_path, "--stream", missing, "--model", str(model_dir), "--no-zmq", "--config",
                   str(serve_config), "--wait", "300")
    serve.wait_for_output(f"waiting for LSL stream {missing!r}")  # from here on: model loading or the wait
    serve.process.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0, serve.stderr
    assert "stopped by SIGTERM" in serve.stdout


# ----------------------------------------------------------------------------------------------
# Settings and un-scaling (in-process)
# ----------------------------------------------------------------------------------------------
def test_shipped_serve_toml_documents_the_defaults():
    settings = build_serve_settings(REPO / "configs" / "serve.toml", stream=["EEG"])
    assert settings == ServeSettings(streams=["EEG"]).validate()
    text = (REPO / "configs" / "serve.toml").read_text()
    for field_name in ServeSettings.__dataclass_fields__:
        assert f"{field_name} =" in text, f"{field_name} is not documented in configs/serve.toml"


def test_cli_flags_override_the_file(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('streams = ["A", "B"]\nhop_samples = 8\nengine = "eager"\nzmq = "tcp://127.0.0.1:6000"\n')
    settings = build_serve_settings(path, stream=[], hop=4, engine=None, no_zmq=True, duration=2)
    assert settings.streams == ["A", "B"]
    assert settings.hop_samples == 4 and settings.engine == "eager"
    assert settings.zmq == "" and settings.duration_s == 2.0


@pytest.mark.parametrize("text, needle", [
    ("hop = 4\n", "unknown key 'hop'"),
    ("[serve]\nmodel = 'x'\n", "unknown key 'serve'"),
    ("duration_s = true\n", "duration_s"),
    ("engine = 'tensorrt'\n", "engine"),
    ("streams = 'EEG'\n", "streams"),
    ("pull_timeout_s = 2.0\n", "pull_timeout_s"),
    ("zmq = ''\nlsl_name = ''\n", "go nowhere"),
    ("busy_poll = 1\n", "busy_poll"),
])
def test_invalid_settings_name_the_key(tmp_path, text, needle):
    path = tmp_path / "serve.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        build_serve_settings(path, stream=[])


def test_no_stream_is_an_error():
    with pytest.raises(SettingsError, match="--stream"):
        build_serve_settings(None)


def test_unscale_into_equals_unscale_meg(model_dir):
    config = BrainformerConfig.from_pretrained(model_dir)
    scaled = np.random.default_rng(0).standard_normal((16, 306)).astype(np.float32)
    out = np.empty_like(scaled)
    unscale_meg_into(scaled, np.asarray(config.meg_mean), np.asarray(config.meg_std), np.empty((64, 306)), out)
    np.testing.assert_array_equal(out, unscale_meg(config, scaled))
