"""Fixtures for the daemon tests: unique LSL stream names and real player subprocesses.

Everything here runs inside the loopback-only namespace (enforced by tests/conftest.py), and
every subprocess inherits the loopback liblsl configuration through ``LSLAPICFG``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest


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
