"""Fixtures and helpers for the daemon tests: unique LSL stream names, real player and ``serve``
subprocesses, a real (tiny) model directory with the bundled recording's channels, the JSON log
of a daemon, and LSL inlets on its outputs; EEG sources the test feeds at its own pace
(``PacedSource``), and the serve loop run in this process through the real LSL and ZeroMQ
publishers, read back by real consumers (``InProcessDaemon``, ``MEGOutputs``).

Everything here runs inside the loopback-only namespace (enforced by tests/conftest.py), and
every subprocess inherits the loopback liblsl configuration through ``LSLAPICFG``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mne
import numpy as np
import pylsl
import pytest
import torch

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer_rt.tools._proc import rt_cli

#: Window and hop of the test model: short, so that tests see many windows in little time.
WINDOW = 64
HOP = 16


@pytest.fixture
def stream_name() -> str:
    """A stream name no other test (or leftover outlet) uses."""
    return f"test-{uuid.uuid4().hex[:10]}"




def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in ``timeout_s``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    return process.returncode


@pytest.fixture
def start_player():
    """Factory: ``start_player(name, *extra_args)`` runs ``brainformer-rt simulate`` in a
    subprocess with a unique ``--source-id`` and returns the Popen; stopped at teardown."""
    processes: list[subprocess.Popen] = []

    def start(name: str, *extra_args: str) -> subprocess.Popen:
        command = rt_cli("simulate", "--name", name, "--source-id", f"test-{uuid.uuid4()}", *extra_args)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop_process(process)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def eeg_names(sample_fif) -> list[str]:
    """The EEG channel names of the bundled recording, in its order."""
    info = mne.io.read_info(sample_fif, verbose="error")
    return [info["ch_names"][i] for i in mne.pick_types(info, meg=False, eeg=True, exclude=())]


def save_model(path: Path, eeg_names: list[str], seed: int = 0) -> Path:
    """A real, untrained Brainformer for ``eeg_names`` → the 306 MEG channels, with non-trivial
    scaling statistics (so that outputs must be un-scaled), saved to ``path``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = BrainformerConfig(
        eeg_channel_names=eeg_names, window_samples=WINDOW, hop_samples=HOP, patch_len=16, d_model=16,
        n_heads=2, d_ff=32, router_dim=4,
        eeg_mean=list(rng.normal(0.0, 1e-6, len(eeg_names))), eeg_std=list(rng.uniform(5e-6, 2e-5, len(eeg_names))),
        meg_mean=list(rng.normal(0.0, 1e-13, 306)), meg_std=list(rng.uniform(1e-12, 1e-11, 306)),
    )
    BrainformerForMEGPrediction(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, eeg_names) -> Path:
    """The test model with the recording's EEG channels in reversed order: the daemon must
    re-order the stream by label."""
    return save_model(tmp_path_factory.mktemp("model"), list(reversed(eeg_names)))


# ----------------------------------------------------------------------------------------------
# Daemon processes, players, subscribers and logs shared by the daemon, fault, security and
# metrics tests
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve_config(tmp_path_factory) -> Path:
    """The default serving settings (staleness included), one torch thread: the cores are shared.
    Modules that need other settings define their own ``serve_config``."""
    path = tmp_path_factory.mktemp("config") / "serve.toml"
    path.write_text("torch_threads = 1\nwait_s = 60.0\n")
    return path


def run_cli(*args: str):
    """``brainformer-rt ARGS`` in this process (the same code path, without a process start-up)."""
    from typer.testing import CliRunner

    from brainformer_rt.cli import app

    return CliRunner().invoke(app, list(args))


class Serve:
    """A `brainformer-rt serve` subprocess with its output in files. Pinned to ``--device cpu``
    unless ``args`` name a device: on a CUDA machine ``auto`` would pick another engine, and the
    tests would silently mean something else there. Pinned to ``--engine eager`` unless ``args``
    name an engine: ``auto`` would compile in the background of every test (its own tests are in
    test_engine_switch.py)."""

    def __init__(self, tmp_path: Path, *args: str):
        if "--device" not in args:
            args = (*args, "--device", "cpu")
        if "--engine" not in args:
            args = (*args, "--engine", "eager")
        self.stdout_path = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        self.process = subprocess.Popen(rt_cli("serve", *args), stdout=self._out, stderr=self._err, env=dict(os.environ))

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_output(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.stdout:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.stdout}\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not printed: {self.stdout}\n{self.stderr}")
            time.sleep(0.05)

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self.close()

    def close(self) -> None:
        stop_process(self.process)
        self._out.close()
        self._err.close()


@pytest.fixture
def serves():
    started: list[Serve] = []

    def start(tmp_path: Path, *args: str) -> Serve:
        started.append(Serve(tmp_path, *args))
        return started[-1]

    yield start
    for serve in started:
        serve.close()


def json_events(stderr: str) -> list[dict]:
    """The JSON log lines of a ``--log-format json`` run (every stderr line must be one).

    Only newline-terminated lines count: a running daemon's stderr file may end in a line it is
    still writing, which is not yet JSON.
    """
    complete_lines = stderr.split("\n")[:-1]
    return [json.loads(line) for line in complete_lines if line.startswith("{")]


def wait_for_event(serve: Serve, event: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        for entry in json_events(serve.stderr):
            if entry.get("event") == event:
                return entry
        if serve.process.poll() is not None:
            raise AssertionError(f"serve exited with {serve.process.returncode} before {event!r}: {serve.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event!r} event: {serve.stderr}")
        time.sleep(0.02)


class Player:
    """A `brainformer-rt simulate --loop` subprocess (``extra_args`` appended to its command
    line); ``started_at`` is the ``local_clock()`` when it announced itself (its outlet is
    created right after)."""

    def __init__(self, name: str, source_id: str, *extra_args: str):
        self.process = subprocess.Popen(rt_cli("simulate", "--name", name, "--source-id", source_id, "--loop",
                                               *extra_args),
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env=dict(os.environ))
        self.started_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if self.started_at is None and line.startswith("playing"):
                self.started_at = pylsl.local_clock()

    def wait_started(self, timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while self.started_at is None:
            assert self.process.poll() is None and time.monotonic() < deadline, "the player did not start"
            time.sleep(0.01)
        return self.started_at

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: the source vanishes without closing anything
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process)
        self._reader.join(5)


def open_inlet(name: str, timeout_s: float = 60.0) -> pylsl.StreamInlet:
    found = pylsl.resolve_byprop("name", name, 1, timeout_s)
    assert found, f"LSL stream {name!r} did not appear"
    inlet = pylsl.StreamInlet(found[0], max_buflen=120)
    inlet.open_stream(10.0)
    return inlet


def nearest(sorted_times: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest element of ``sorted_times`` for each of ``times``, and the distance."""
    right = np.clip(np.searchsorted(sorted_times, times), 1, len(sorted_times) - 1)
    left = right - 1
    pick = np.where(np.abs(sorted_times[left] - times) <= np.abs(sorted_times[right] - times), left, right)
    return pick, np.abs(sorted_times[pick] - times)


def small_model(seed: int = 0) -> BrainformerForMEGPrediction:
    """A real Brainformer, small enough to compile quickly: 8 EEG → 12 MEG, 64-sample windows."""
    from brainformer.configuration_brainformer import DEFAULT_MEG_CHANNEL_NAMES, DEFAULT_MEG_CHANNEL_TYPES

    torch.manual_seed(seed)
    config = BrainformerConfig(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 9)],
        meg_channel_names=list(DEFAULT_MEG_CHANNEL_NAMES[:12]),
        meg_channel_types=list(DEFAULT_MEG_CHANNEL_TYPES[:12]),
        window_samples=64, patch_len=16, hop_samples=8, d_model=16, n_heads=2, d_ff=32, router_dim=4,
    )
    return BrainformerForMEGPrediction(config).eval()


class LockHolder:
    """Another process holding the build lock of ``key`` in the package cache ``cache``, as a
    build does (with its pid written into it when ``write_pid``), until :meth:`release`."""

    def __init__(self, cache: Path, key: str, write_pid: bool = True):
        code = ("import os, sys; from pathlib import Path; from brainformer_rt.serving.aot_cache import PackageLock; "
                f"lock = PackageLock.try_acquire(Path({str(cache)!r}), {key!r}); "
                + ("lock.write_owner(os.getpid()); " if write_pid else "")
                + "print('held', flush=True); sys.stdin.read()")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout.readline().strip() == "held", "the lock holder did not start"

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> int:
        """End it (it lets go of the lock by exiting); its exit code."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(30)


# ----------------------------------------------------------------------------------------------
# EEG sources fed by the test itself, and the daemon's outputs read back through real consumers
# ----------------------------------------------------------------------------------------------
#: The model's rate (the bundled recording's, decimated): the rate of every source made here.
MODEL_SFREQ_HZ = 600.614990234375
#: Published timestamps are input timestamps; a quarter of a sample period tells them apart.
STAMP_TOLERANCE_S = 0.25 / MODEL_SFREQ_HZ


@pytest.fixture(scope="module")
def recording_eeg(sample_fif) -> np.ndarray:
    """``(n, 60)`` float32 volts: the EEG of the bundled recording, in its channel order."""
    raw = mne.io.read_raw_fif(sample_fif, verbose="error")
    return raw.get_data(picks=mne.pick_types(raw.info, meg=False, eeg=True, exclude=())).T.astype(np.float32)


def make_eeg_outlet(name: str, eeg_names: list[str], sfreq_hz: float = MODEL_SFREQ_HZ) -> pylsl.StreamOutlet:
    """A float32 EEG outlet in this process with a label and the unit ``V`` per channel."""
    info = pylsl.StreamInfo(name, "EEG", len(eeg_names), sfreq_hz, "float32", f"{name}-{uuid.uuid4().hex[:6]}")
    channels = info.desc().append_child("channels")
    for label in eeg_names:
        channels.append_child("channel").append_child_value("label", label).append_child_value("unit", "V")
    return pylsl.StreamOutlet(info)


class PacedSource:
    """An EEG source the test feeds: ``push(n)`` sends the next ``n`` rows of ``data (n, C)``
    (cycled), sample ``i`` stamped ``t0 + i / sfreq`` and sent no earlier than that instant,
    like an amplifier; later when the test waits for the daemon in between. The stamps run
    on without a jump, so the daemon sees one continuous stream whatever the pace."""

    def __init__(self, name: str, eeg_names: list[str], data: np.ndarray, sfreq_hz: float = MODEL_SFREQ_HZ):
        self.name = name
        self.outlet = make_eeg_outlet(name, eeg_names, sfreq_hz)
        self.data = data
        self.sfreq_hz = sfreq_hz
        self.pushed = 0  # samples sent so far
        self.t0: float | None = None

    def stamp(self, index: int) -> float:
        """The timestamp of sample ``index`` (sent or not)."""
        return self.t0 + index / self.sfreq_hz

    def push(self, n: int) -> np.ndarray:
        """Send the next ``n`` samples in one chunk; returns their timestamps."""
        if self.t0 is None:
            self.t0 = pylsl.local_clock()
        index = np.arange(self.pushed, self.pushed + n)
        stamps = self.t0 + index / self.sfreq_hz
        due_in = stamps[-1] - pylsl.local_clock()
        if due_in > 0:
            time.sleep(due_in)  # the source's own pace (the real rate), not a wait for the daemon
        self.outlet.push_chunk(self.data[index % len(self.data)], stamps)
        self.pushed += n
        return stamps

    def close(self) -> None:
        self.outlet = None  # destroys the outlet: the source vanishes


def contiguous_runs(headers: list[dict]) -> list[tuple[float, float]]:
    """``(first t0, last t_last)`` of each run of ZeroMQ messages whose samples follow each other
    without a hole (the next message's ``t0`` one sample period after the previous ``t_last``)."""
    runs: list[list[float]] = []
    for header in headers:
        if runs and abs(header["t0"] - runs[-1][1] - 1.0 / header["sfreq"]) < STAMP_TOLERANCE_S:
            runs[-1][1] = header["t_last"]
        else:
            runs.append([header["t0"], header["t_last"]])
    return [(first, last) for first, last in runs]


class MEGOutputs:
    """What consumers receive from an in-process daemon's real publishers: a ZeroMQ SUB and an
    LSL inlet, both connected before anything is published (so each receives every message).

    ``messages``: ``(header, payload (n, n_meg))`` per ZeroMQ message; ``lsl_data``/``lsl_stamps``:
    every LSL sample and its timestamp. :meth:`drain` reads what has arrived; :meth:`flush`
    sends a marker through both publishers and reads until it is back, so that afterwards
    everything published before it has been read (absence can be asserted without a wait).
    """

    MARKER_STAMP = -100.0  # never an input timestamp (and not -1.0 or 0.0, which liblsl reads as "deduce"/"now")
    _SYNC_TOPIC = b"sync"

    def __init__(self, zmq_publisher, lsl_publisher, timeout_s: float = 30.0):
        import zmq

        self._zmq = zmq
        self.zmq_publisher = zmq_publisher
        self.lsl_publisher = lsl_publisher
        self.topic = zmq_publisher.topic
        self.messages: list[tuple[dict, np.ndarray]] = []
        self._lsl_data: list[np.ndarray] = []
        self._lsl_stamps: list[np.ndarray] = []
        found = pylsl.resolve_byprop("name", lsl_publisher.name, 1, timeout_s)
        assert found, f"the daemon's LSL outlet {lsl_publisher.name!r} did not appear"
        self.inlet = pylsl.StreamInlet(found[0], max_buflen=120)
        self.inlet.open_stream(timeout_s)
        assert lsl_publisher.wait_for_consumers(timeout_s), "the LSL inlet did not connect"
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sub.setsockopt(zmq.SUBSCRIBE, self._SYNC_TOPIC)
        self.sub.connect(zmq_publisher.address)
        # A SUB receives nothing before its subscription has reached the PUB: publish on a topic
        # of its own until one arrives. Subscriptions travel in order, so the data topic's is in.
        sync = zmq_publisher.add_topic(self._SYNC_TOPIC, "sync")
        deadline = time.monotonic() + timeout_s
        while not self._received_sync():
            assert time.monotonic() < deadline, "the ZeroMQ subscription never reached the publisher"
            sync.publish(np.zeros((1, zmq_publisher.n_channels), np.float32), np.zeros(1))
        self.sub.setsockopt(zmq.UNSUBSCRIBE, self._SYNC_TOPIC)

    def _received_sync(self) -> bool:
        if not self.sub.poll(20):
            return False
        return self.sub.recv_multipart()[0] == self._SYNC_TOPIC

    def drain(self) -> None:
        from brainformer_rt.serving.publishers.zmq import decode_message

        while True:
            try:
                frames = self.sub.recv_multipart(self._zmq.NOBLOCK)
            except self._zmq.Again:
                break
            if frames[0] == self.topic:  # late sync messages are not the daemon's
                header, payload = decode_message(frames)
                self.messages.append((header, np.array(payload)))
        while True:
            data, stamps = self.inlet.pull_chunk(timeout=0.0, max_samples=4096)
            if not stamps:
                break
            self._lsl_data.append(np.asarray(data, dtype=np.float32))
            self._lsl_stamps.append(np.asarray(stamps))

    @property
    def lsl_data(self) -> np.ndarray:
        return np.concatenate(self._lsl_data) if self._lsl_data else np.zeros((0, self.zmq_publisher.n_channels))

    @property
    def lsl_stamps(self) -> np.ndarray:
        return np.concatenate(self._lsl_stamps) if self._lsl_stamps else np.zeros(0)

    @property
    def headers(self) -> list[dict]:
        return [header for header, _ in self.messages]

    def stamps_by_message(self) -> list[np.ndarray]:
        """The timestamp of every sample of each ZeroMQ message, from LSL (ZeroMQ names only the
        first and the last: a window may hold a hole too short to count as a gap). Checks that
        both outputs carry the same samples, in the same order."""
        counts = [header["n_samples"] for header in self.headers]
        stamps = self.lsl_stamps
        assert len(stamps) == sum(counts), (len(stamps), sum(counts))
        pieces = np.split(stamps, np.cumsum(counts)[:-1]) if counts else []
        for header, piece in zip(self.headers, pieces):
            assert (piece[0], piece[-1]) == (header["t0"], header["t_last"]), (piece, header)
        return pieces

    def newest_t_last(self) -> float:
        """The newest published timestamp both outputs have delivered (-inf before any)."""
        self.drain()
        if not self.messages or not self._lsl_stamps:
            return -math.inf
        return min(self.messages[-1][0]["t_last"], float(self._lsl_stamps[-1][-1]))

    def wait_for_stamp(self, stamp: float, alive, timeout_s: float = 30.0) -> None:
        """Until both outputs delivered a sample stamped ``stamp`` or later; ``alive()`` says the
        daemon still runs (a hang timeout only)."""
        deadline = time.monotonic() + timeout_s
        while self.newest_t_last() < stamp - STAMP_TOLERANCE_S:
            assert alive(), "the daemon stopped"
            assert time.monotonic() < deadline, f"nothing published up to {stamp:.4f} within {timeout_s:g} s"
            time.sleep(0.005)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Send a one-sample marker through both publishers (their last message: call it once the
        daemon's loop has stopped) and read until it is back; the marker is not kept."""
        marker = np.zeros((1, self.zmq_publisher.n_channels), np.float32)
        stamp = np.array([self.MARKER_STAMP])
        self.lsl_publisher.publish(marker, stamp)
        self.zmq_publisher.publish(marker, stamp)
        deadline = time.monotonic() + timeout_s
        while not (self.messages and self.messages[-1][0]["t0"] == self.MARKER_STAMP
                   and self._lsl_stamps and self._lsl_stamps[-1][-1] == self.MARKER_STAMP):
            assert time.monotonic() < deadline, "the marker did not come back"
            time.sleep(0.005)
            self.drain()
        self.messages.pop()
        self._lsl_data[-1], self._lsl_stamps[-1] = self._lsl_data[-1][:-1], self._lsl_stamps[-1][:-1]

    def close(self) -> None:
        self.sub.close(linger=0)
        self.inlet.close_stream()


class InProcessDaemon:
    """The real serve loop (``StreamPipeline`` + ``Scheduler``, eager engine on the CPU) in a
    thread of this process, on a real inlet of the LSL stream ``stream_name``, publishing through
    the real LSL and ZeroMQ publishers; ``outputs`` (:class:`MEGOutputs`) reads both back. The
    loop starts once both consumers are connected."""

    def __init__(self, model_dir: Path, stream_name: str, settings, model=None):
        from brainformer.model_dir import load_model
        from brainformer_rt.serving.engine import make_engine
        from brainformer_rt.serving.inlet import EEGInlet
        from brainformer_rt.serving.metrics import ServeMetrics
        from brainformer_rt.serving.pipeline import StreamPipeline, open_stages
        from brainformer_rt.serving.publishers.lsl import LSLPublisher
        from brainformer_rt.serving.publishers.zmq import ZMQPublisher
        from brainformer_rt.serving.scheduler import Scheduler
        from brainformer_rt.serving.signals import StopRequest

        model = model if model is not None else load_model(model_dir)
        self.config = config = model.config
        found = pylsl.resolve_byprop("name", stream_name, 1, 30.0)
        assert found, f"LSL stream {stream_name!r} did not appear"
        self.inlet = EEGInlet(found[0], recover=True, gap_threshold_s=settings.gap_threshold_s)
        self.inlet.open()
        meg = dict(channel_names=config.meg_channel_names, channel_types=config.meg_channel_types)
        self.lsl_publisher = LSLPublisher(f"meg-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4()}", sfreq_hz=config.sfreq_hz,
                                          model_name="test-model", **meg)
        self.zmq_publisher = ZMQPublisher("tcp://127.0.0.1:*", b"meg", sfreq_hz=config.sfreq_hz, model_name="test-model",
                                          stream_name=stream_name, **meg)
        self.outputs = MEGOutputs(self.zmq_publisher, self.lsl_publisher)
        self.metrics = ServeMetrics([stream_name])
        engine = make_engine(model, "eager", "cpu", 1, WINDOW).setup()
        self.pipeline = StreamPipeline(stream_name, self.inlet, open_stages(config, self.inlet.description),
                                       WINDOW, HOP, settings.gap_threshold_s, self.metrics.streams[stream_name],
                                       [self.lsl_publisher, self.zmq_publisher], engine.n_output_channels,
                                       gauges=self.metrics.gauges[stream_name], silence_s=settings.silence_s)
        self.stop = StopRequest()
        self.scheduler = Scheduler([self.pipeline], engine, np.asarray(config.meg_mean), np.asarray(config.meg_std),
                                   settings, self.metrics, self.stop)
        self.thread = threading.Thread(target=self.scheduler.run, daemon=True)
        self.thread.start()

    @property
    def counters(self):
        return self.pipeline.counters

    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait_for_output_after(self, timestamp: float, timeout_s: float = 30.0) -> None:
        """Until both outputs delivered a prediction for the input sample stamped ``timestamp``
        or a later one."""
        self.outputs.wait_for_stamp(timestamp, self.alive, timeout_s)

    def wait_until(self, condition, what: str, timeout_s: float = 30.0) -> None:
        """Until ``condition()`` holds (a hang timeout only)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.alive() and time.monotonic() < deadline, f"{what}: {self.counters}"
            time.sleep(0.002)

    def close(self) -> None:
        """Stop the loop, read everything it published (see :meth:`MEGOutputs.flush`), close it all."""
        self.stop.event.set()
        self.thread.join(10.0)
        assert not self.thread.is_alive(), "the serve loop did not stop"
        try:
            self.outputs.flush()
        finally:
            self.outputs.close()
            self.pipeline.close()  # the publishers and the inlet
