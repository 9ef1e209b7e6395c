"""Fixtures and helpers for the daemon tests: unique LSL stream names, real player and ``serve``
subprocesses, a real (tiny) model directory with the bundled recording's channels, the JSON log
of a daemon, and LSL inlets on its outputs.

Everything here runs inside the loopback-only namespace (enforced by tests/conftest.py), and
every subprocess inherits the loopback liblsl configuration through ``LSLAPICFG``.
"""

from __future__ import annotations

import json
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


class ListPublisher:
    """A sink that keeps copies of what it is given (the publisher contract: publish(data, timestamps), close())."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        self.calls.append((data.copy(), timestamps.copy()))

    def close(self) -> None:
        pass


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
    """The JSON log lines of a ``--log-format json`` run (every stderr line must be one)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


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
