"""Fixtures for the daemon tests: unique LSL stream names, real player subprocesses, and a real
(tiny) model directory with the bundled recording's channels.

Everything here runs inside the loopback-only namespace (enforced by tests/conftest.py), and
every subprocess inherits the loopback liblsl configuration through ``LSLAPICFG``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.modeling_brainformer import BrainformerForMEGPrediction

#: Window and hop of the test model: short, so that tests see many windows in little time.
WINDOW = 64
HOP = 16


@pytest.fixture
def stream_name() -> str:
    """A stream name no other test (or leftover outlet) uses."""
    return f"test-{uuid.uuid4().hex[:10]}"


def rt_cli(*args: str) -> list[str]:
    """Command line of ``brainformer-rt ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "brainformer_rt.cli", *args]


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
