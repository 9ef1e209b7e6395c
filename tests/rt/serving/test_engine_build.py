"""The compiled forward's build outlives the daemon that started it, one build per package at a
time, and leaves nothing half-done in the cache (`aot_build`, `aot_cache`, `engine_switch`).

Real daemons on a real LSL stream, real detached builders (quick builds: no autotuning), real
locks and files. Where a test needs the build to still run at some moment (the daemon stops
first; a second engine arrives), it holds the builder with SIGSTOP instead of hoping it is slow.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from brainformer_rt.serving.aot_build import DEFAULT_BUILD_NICE, NICE_VARIABLE, build_niceness, placement
from brainformer_rt.serving.aot_cache import (PackageLock, clean_stale, lock_holder, log_path, read_last_line,
                                              running_builders, stop_builders)
from brainformer_rt.serving.engine_switch import SwitchingEngine, serving_engine
from tests.rt.conftest import HOP, LockHolder, Player, json_events, small_model, wait_for_event

WINDOW = 64  # small_model's
OUTPUT_SAMPLES = 16
#: A quick build under a loaded test machine, at the lowest priority.
BUILD_TIMEOUT_S = 600.0


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty package cache for this test (``$BRAINFORMER_CACHE/aot``, inherited by the daemons
    it starts); every build still running into it is stopped at the end.

    Builds run at the server's priority, not the lowest: on a machine whose cores other work
    keeps busy, a build at niceness 19 gets next to no time and the tests would wait on the
    machine's load (`test_the_build_gets_the_lowest_priority_by_default` checks the default)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BRAINFORMER_CACHE", str(root))
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")
    monkeypatch.setenv(NICE_VARIABLE, "0")
    yield root / "aot"
    stop_builders(root / "aot")


def wait_until(condition, what: str, timeout_s: float = BUILD_TIMEOUT_S, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"
        time.sleep(poll_s)
    return result


def cache_files(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


def hold(pid: int, signum: int) -> None:
    """``signum`` to the builder and its compiler processes (it leads its own process group)."""
    os.killpg(pid, signum)


# ----------------------------------------------------------------------------------------------
# Real daemons: one build for two of them, finished after the first stopped; the next start
# serves compiled from its first window
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 240)
def test_one_build_outlives_its_daemon_serves_the_one_that_waited_and_the_next_start_at_once(
        cache, tmp_path, model_dir, serve_config, serves):
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    source = Player(name, f"test-{uuid.uuid4()}", "--chunk", str(HOP))
    args = ("--stream", name, "--model", str(model_dir), "--no-zmq", "--config", str(serve_config),
            "--log-format", "json", "--engine", "auto")

    def start():
        return serves(tmp_path, *args, "--lsl-name", f"meg-{uuid.uuid4().hex[:8]}")

    def stop(serve) -> list[dict]:
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.stderr
        return json_events(serve.stderr)

    try:
        first = start()
        builder = wait_for_event(first, "engine_compiling", timeout_s=120)["builder_pid"]
        hold(builder, signal.SIGSTOP)  # still building while the second daemon starts and the first stops
        try:
            second = start()
            joined = wait_for_event(second, "engine_build_joined", timeout_s=120)
            wait_for_event(first, "serving", timeout_s=120)
            first_events = stop(first)
            # The build goes on, still the one process that builds this model's package.
            [running] = running_builders(cache)
            assert running.pid == builder and (cache / f"{running.key}.lock").exists()
        finally:
            hold(builder, signal.SIGCONT)
        # It finishes on its own: the package and its record, nothing else; the daemon that
        # waited for it switches to it (after checking it on its own live windows).
        switched_later = wait_for_event(second, "engine_switched", timeout_s=BUILD_TIMEOUT_S)
        second_events = stop(second)
        wait_until(lambda: lock_holder(cache, running.key) is None, "the build ended")
        assert cache_files(cache) == [f"{running.key}.json", f"{running.key}.pt2"]

        third = start()
        switched = wait_for_event(third, "engine_switched", timeout_s=120)
        wait_for_event(third, "serving", timeout_s=120)
        third_events = stop(third)
    finally:
        source.stop()
    assert {e["event"]: e for e in first_events}["engine_build_continues"]["builder_pid"] == builder
    assert joined["builder_pid"] == builder
    assert switched_later["source"] == "compiled" and switched_later["checked_on"] == "live"
    assert "engine_compiling" not in [e["event"] for e in second_events]  # it never built
    # The third found the package, checked it at set-up and served the very first window with it.
    assert switched["source"] == "cache" and switched["eager_calls"] == 0 and switched["checked_on"] == "probe"
    assert not {"engine_compiling", "engine_switch_failed"} & {e["event"] for e in third_events}
    assert cache_files(cache) == [f"{running.key}.json", f"{running.key}.pt2"]


# ----------------------------------------------------------------------------------------------
# Temporary files: removed by a stopped build, and at the next start after a killed one
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_build_stopped_while_it_writes_leaves_no_temporary_file(cache, signum, monkeypatch):
    # One step below this process's, so that the check tells the build's niceness from the test
    # process's (not 19: the build must get on under load; the default is checked without a build).
    niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + 1, 19)
    monkeypatch.setenv(NICE_VARIABLE, str(niceness))
    window = np.zeros((1, WINDOW, 8), dtype=np.float32)
    cpus = os.sched_getaffinity(0)
    serving_cpus = set(placement().serving_cpus or cpus)  # on two cores: the first one
    engine = serving_engine(small_model(seed=6), "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES).setup()
    try:
        builder = wait_until(lambda: engine.switch.builder_pid, "a build started", 120)
        # While it builds, the serving thread (the one calling infer) keeps the core the build leaves.
        engine.infer(window)
        assert os.sched_getaffinity(0) == serving_cpus
        key = engine.compiled.package_path(1).stem
        # The compiler writes the package beside its final name.
        partial = wait_until(lambda: list(cache.glob(f"{key}.tmp-*.pt2")), "the package being written")
        # Its share of the machine: the build's niceness, also for its session's autogroup (the
        # kernel shares the CPU between sessions first), and on two cores the last one only.
        share = placement(sorted(cpus))
        assert os.getpriority(os.PRIO_PROCESS, builder) == share.nice == niceness
        autogroup = Path(f"/proc/{builder}/autogroup")
        assert not autogroup.exists() or autogroup.read_text().split()[-1] == str(niceness)
        assert os.sched_getaffinity(builder) == set(share.cpus or cpus)
        hold(builder, signum)
        wait_until(lambda: engine.switch.state == "failed", "the engine gave up on the build")
        engine.infer(window)
        assert os.sched_getaffinity(0) == cpus  # no build any more: back on every core
    finally:
        engine.close()
    assert engine.active.kind == "eager" and os.sched_getaffinity(0) == cpus
    if signum == signal.SIGTERM:  # its own clean-up: only the log of the failure stays, saying why
        assert "stopped by SIGTERM" in engine.switch.reason
        assert cache_files(cache) == [f"{key}.log"]
        assert "stopped by SIGTERM" in read_last_line(log_path(cache, key))
    else:  # killed outright: what it was writing stays, until the next start removes it
        assert "exited with -9" in engine.switch.reason
        assert partial[0].exists()
        assert clean_stale(cache) == partial  # what a start does (see the next test)
        assert cache_files(cache) == [f"{key}.log"]


def test_stale_files_are_removed_and_those_of_a_running_build_kept(cache):
    """What killed builds left (their key's lock is free), and what builds of earlier versions
    left (``tmp*.pt2``), goes; the files of a build that holds its lock stay."""
    cache.mkdir(parents=True)
    dead, alive = "a" * 32, "b" * 32
    stale = [cache / f"{dead}.tmp-x1.pt2", cache / f"{dead}.lock", cache / "tmpq1w2e3.pt2",
             cache / f"{dead}.tmp-model-y2"]
    for path in stale[:3]:
        path.write_bytes(b"")
    stale[3].mkdir()
    (stale[3] / "model.safetensors").write_bytes(b"x")
    kept = [cache / f"{alive}.tmp-z3.pt2", cache / f"{dead}.pt2", cache / f"{dead}.json"]
    for path in kept:
        path.write_bytes(b"x")
    holder = LockHolder(cache, alive, write_pid=False)  # a build in another process
    try:
        # What a daemon does at start: the engine's set-up (this model cannot be compiled; no build starts).
        engine = SwitchingEngine(_NoConfig(), torch.device("cpu"), 1, 10, n_input_channels=3, output_samples=4)
        engine.setup()
        engine.close()
        assert [path for path in stale if path.exists()] == []
        assert all(path.exists() for path in kept) and (cache / f"{alive}.lock").exists()
        assert lock_holder(cache, alive) == 0  # held; this holder wrote no pid
    finally:
        holder.release()
    assert clean_stale(cache) == [cache / f"{alive}.lock", cache / f"{alive}.tmp-z3.pt2"]


class _NoConfig(torch.nn.Module):
    def forward(self, windows: torch.Tensor, last_samples: int | None = None) -> torch.Tensor:
        return windows[:, windows.shape[1] - (last_samples or windows.shape[1]):]


def test_a_lock_is_taken_once_and_free_again_after_its_release(cache):
    key = "c" * 32
    lock = PackageLock.try_acquire(cache, key)
    assert lock is not None and PackageLock.try_acquire(cache, key) is None
    lock.write_owner(4242)
    assert lock_holder(cache, key) == 4242 and [b.pid for b in running_builders(cache)] == [4242]
    lock.release()
    assert lock_holder(cache, key) is None and not (cache / f"{key}.lock").exists()
    again = PackageLock.try_acquire(cache, key)
    assert again is not None
    again.release()


# ----------------------------------------------------------------------------------------------
# The build's share of the machine, as decided (no build)
# ----------------------------------------------------------------------------------------------
def test_the_build_gets_the_lowest_priority_by_default_and_the_other_core_of_two(monkeypatch):
    monkeypatch.delenv(NICE_VARIABLE, raising=False)
    assert build_niceness() == DEFAULT_BUILD_NICE == 19
    two = placement([0, 1])
    assert (two.nice, two.cpus, two.serving_cpus, two.compile_threads) == (19, [1], [0], 1)
    for cpus in ([3], [0, 1, 2, 3]):  # nothing to share out on one core; more leave enough
        other = placement(cpus)
        assert (other.nice, other.cpus, other.serving_cpus, other.compile_threads) == (19, None, None, 1)
    monkeypatch.setenv(NICE_VARIABLE, "7")
    assert placement([0, 1]).nice == build_niceness() == 7


@pytest.mark.parametrize("value", ["-5", "20", "low", ""])
def test_a_bad_build_niceness_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(NICE_VARIABLE, value)
    with pytest.raises(ValueError, match=re.escape(f"{NICE_VARIABLE} must be an integer from 0 to 19, got {value!r}")):
        placement([0, 1])
