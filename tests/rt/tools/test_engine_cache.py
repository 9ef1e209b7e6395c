"""`brainformer-rt engine build | status | clear` end to end: real builds (quick, no autotuning),
a real daemon that finds what `engine build` built, real locks held by another process."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import pytest

from brainformer_rt.serving.aot_cache import stop_builders
from brainformer_rt.tools._proc import rt_cli
from tests.rt.conftest import HOP, LockHolder, Player, json_events, run_cli, wait_for_event

#: A quick build on a loaded test machine.
BUILD_TIMEOUT_S = 600


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty package cache for this test (inherited by the processes it starts)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BRAINFORMER_CACHE", str(root))
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")
    yield root / "aot"
    stop_builders(root / "aot")


def status_json() -> dict:
    result = run_cli("engine", "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 180)
def test_a_build_ahead_is_what_serve_then_loads(cache, tmp_path, model_dir, serve_config, serves):
    assert "no compiled packages" in run_cli("engine", "status").output

    build = subprocess.run(rt_cli("engine", "build", "--model", str(model_dir), "--config", str(serve_config)),
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "bucket 1: built in" in build.stdout and "ready:" in build.stdout

    [entry] = status_json()["entries"]
    assert entry["state"] == "ready" and entry["facts"]["model_dir"] == str(model_dir.resolve())
    assert entry["facts"]["threads"] == 1 and entry["facts"]["autotune"] is False  # the config's torch_threads
    assert entry["facts"]["output_samples"] == 2 * HOP  # what serve asks for: the newest two hops
    assert sorted(path.name for path in cache.iterdir()) == [f"{entry['key']}.json", f"{entry['key']}.pt2"]
    table = run_cli("engine", "status")
    assert table.exit_code == 0 and "ready" in table.output and entry["key"][:8] in table.output

    again = subprocess.run(rt_cli("engine", "build", "--model", str(model_dir), "--config", str(serve_config)),
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert again.returncode == 0 and "in the cache already" in again.stdout, again.stdout + again.stderr

    # A daemon with the same settings computes the same key: compiled from its first window.
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    source = Player(name, f"test-{uuid.uuid4()}", "--chunk", str(HOP))
    try:
        serve = serves(tmp_path, "--stream", name, "--model", str(model_dir), "--no-zmq", "--lsl-name",
                       f"meg-{uuid.uuid4().hex[:8]}", "--config", str(serve_config), "--log-format", "json",
                       "--engine", "auto")
        switched = wait_for_event(serve, "engine_switched", timeout_s=120)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.stderr
    finally:
        source.stop()
    assert switched["source"] == "cache" and switched["eager_calls"] == 0
    assert "engine_compiling" not in [e["event"] for e in json_events(serve.stderr)]


def test_clear_refuses_while_a_build_runs_and_stops_it_when_forced(cache):
    cache.mkdir(parents=True)
    ready, building = "d" * 32, "e" * 32
    (cache / f"{ready}.pt2").write_bytes(b"\0" * 1000)
    (cache / f"{ready}.json").write_text(json.dumps({"model_dir": "default", "bucket": 1, "window_samples": 256,
                                                     "output_samples": 32, "threads": 1, "autotune": True}))
    holder = LockHolder(cache, building)  # a build in another process, its pid in the lock
    try:
        status = status_json()
        assert {e["key"]: e["state"] for e in status["entries"]} == {ready: "ready", building: "building"}
        assert [b["pid"] for b in status["builders"]] == [holder.pid]
        assert f"build running: pid {holder.pid} for {building}" in run_cli("engine", "status").output

        refused = run_cli("engine", "clear")
        assert refused.exit_code == 1
        assert f"pid {holder.pid}" in refused.output and "--force" in refused.output
        assert (cache / f"{ready}.pt2").exists()

        total = sum(p.stat().st_size for p in cache.iterdir() if p.is_file())
        forced = run_cli("engine", "clear", "--force")
        assert forced.exit_code == 0, forced.output
        assert holder.process.wait(30) == -signal.SIGTERM
        assert f"stopped the build of {building} (pid {holder.pid})" in forced.output
        # About a kilobyte: said in kB, not as "0.0 MB".
        assert f"removed 3 files (1 package, {total / 1e3:.1f} kB)" in forced.output, (total, forced.output)
    finally:
        holder.release()
    assert list(cache.iterdir()) == []
    assert "no compiled packages" in run_cli("engine", "status").output


@pytest.mark.parametrize("args, named", [
    (["--model", "/nonexistent/model"], "--model"),
    (["--hop", "0"], "--hop"),
    (["--streams", "0"], "--streams"),
    (["--threads", "0"], "--threads"),
    (["--model", "{model}", "--hop", "100000"], "--hop"),
])
def test_build_names_the_option_it_cannot_use(args, named, cache, model_dir):
    result = run_cli("engine", "build", *[arg.format(model=model_dir) for arg in args])
    assert result.exit_code == 2 and named in result.output, result.output
    assert not cache.exists() or list(cache.iterdir()) == []


def test_build_names_the_config_key_it_cannot_use(cache, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text("torch_thread = 1\n")
    result = run_cli("engine", "build", "--config", str(config))
    assert result.exit_code == 2 and "unknown key 'torch_thread'" in result.output, result.output
