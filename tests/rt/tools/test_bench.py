"""`brainformer-rt bench` end to end: real players, the real daemon, naive loop and relay, real subscribers.

The model is a real (tiny) Brainformer in a temporary model directory with the bundled
recording's EEG channels in reversed order, so both the daemon and the naive loop must re-order
the stream by label. Only the shape and sanity of the results are asserted, never timings.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.rt.conftest import HOP, WINDOW, rt_cli, run_cli, save_model


#: A hang timeout for one bench run: the run with a compiled daemon took 110-300 s on a 2-core
#: machine under heavy load (most of it compiling), and must never fail for being slower.
BENCH_TIMEOUT_S = 600.0


def run_bench(*args: str, timeout_s: float = BENCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(rt_cli("bench", *args), capture_output=True, text=True, timeout=timeout_s)


def assert_latency_summary(summary: dict) -> None:
    assert summary["count"] > 0
    for key in ("median_ms", "p95_ms", "p99_ms", "max_ms"):
        assert 0 < summary[key] < 10_000, (key, summary)
    assert summary["median_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 60)
def test_bench_with_naive_peer_and_floor_writes_complete_results_and_plot(model_dir, tmp_path):
    """Two daemons (eager, then compile), the naive loop and the relay in one run."""
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    done = run_bench("--model", str(model_dir), "--duration", "3", "--hop", str(HOP), "--peer", "naive", "--floor",
                     "--engine", "eager", "--also-engine", "compile", "--json", str(json_path), "--plot", str(plot_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "p99 ratio daemon / naive loop" in done.stdout
    assert "transport floor LSL (relay, no model)" in done.stdout
    assert "warm-up" in done.stdout
    assert "daemon --engine compile" in done.stdout and "forward median" in done.stdout

    results = json.loads(json_path.read_text())
    settings = results["settings"]
    assert (settings["n_streams"], settings["hop_samples"], settings["peer"]) == (1, HOP, "naive")
    assert settings["warmup_s"] > 0 and settings["duration_s"] == 3
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["device"] == "cpu"
    assert machine["loopback_namespace"] is True
    assert set(results["systems"]) == {"daemon", "daemon-compile", "naive", "relay"}
    assert results["systems"]["daemon-compile"]["engine"]["kind"] == "compile"
    relay = results["systems"].pop("relay")

    for name, system in results["systems"].items():
        lsl = system["outputs"]["lsl"]
        assert_latency_summary(lsl["pooled"])
        assert len(system["latencies_ms"]["lsl"]) == lsl["pooled"]["count"]
        assert_latency_summary(system["forward_ms"])
        assert system["windows"]["served"] > 0
        assert system["rtf"] > 0 and system["overhead_ms"]["lsl"] is not None
        assert 0 < system["real_time"]["samples_received_fraction_min"] <= 1.1
        assert system["process"]["samples"] > 0 and system["process"]["rss_mb_max"] > 0
        assert system["engine"]["torch_threads"] == settings["threads"]

    daemon = results["systems"]["daemon"]
    assert_latency_summary(daemon["outputs"]["zmq"]["pooled"])
    assert set(daemon["stages_ms"]) == {"pull", "preprocess", "forward", "publish"}
    assert daemon["engine"]["kind"] == "eager"
    assert results["systems"]["naive"]["outputs"]["zmq"] is None  # the naive loop publishes on LSL only

    ratio = results["ratio"]
    daemon_p99 = daemon["outputs"]["lsl"]["pooled"]["p99_ms"]
    naive_p99 = results["systems"]["naive"]["outputs"]["lsl"]["pooled"]["p99_ms"]
    assert ratio["p99_lsl"] == pytest.approx(daemon_p99 / naive_p99)
    # Each daemon is held to the engine goals, against the naive loop and the relay of this run.
    goals = results["goals"]
    assert set(goals) == {"daemon", "daemon-compile"}
    for name, goal in goals.items():
        system = results["systems"][name]
        assert goal["forward_median_met"] == (system["forward_ms"]["median_ms"] <= 1.0)
        assert goal["naive_p99_ratio"] == pytest.approx(system["outputs"]["lsl"]["pooled"]["p99_ms"] / naive_p99)
        assert goal["p99_bound_ms"] == pytest.approx(relay["outputs"]["lsl"]["pooled"]["p99_ms"]
                                                     + system["forward_ms"]["p99_ms"] + 0.5)
        assert goal["switch"] is None  # neither is `auto`
    # The relay: no model, outputs on LSL and ZeroMQ; its whole latency is the floor.
    assert relay["forward_ms"]["count"] == 0 and relay["rtf"] is None and relay["windows"]["served"] > 0
    floor = results["floor"]
    for transport in ("lsl", "zmq"):
        pooled = relay["outputs"][transport]["pooled"]
        assert_latency_summary(pooled)
        assert relay["overhead_ms"][transport] == floor[transport]["p99_ms"] == pooled["p99_ms"]
        assert floor[transport]["daemon_overhead_above_floor_ms"] == pytest.approx(
            daemon["overhead_ms"][transport] - pooled["p99_ms"])
    assert results["players"][0]["samples"] > 0 and results["players"][0]["lateness_max_ms"] is not None

    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 60)
def test_bench_with_two_streams_and_floor_reports_every_stream_on_both_transports(model_dir, tmp_path):
    """Two streams; also the same two streams played at 500 Hz (the daemon resamples them)."""
    json_path = tmp_path / "bench.json"
    # Eager: the streams and transports are tested here, not the compiled forward's build.
    done = run_bench("--model", str(model_dir), "--duration", "2", "--streams", "2", "--peer", "none", "--floor",
                     "--also-rate", "500", "--engine", "eager", "--json", str(json_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "daemon, source at 500 Hz" in done.stdout
    results = json.loads(json_path.read_text())
    assert set(results["systems"]) == {"daemon", "daemon@500Hz", "relay"} and results["ratio"] is None
    resampled = results["systems"]["daemon@500Hz"]
    daemon_stats = resampled["daemon_stats"]
    assert {s["sfreq_hz"] for s in daemon_stats["info"]["streams"].values()} == {500.0}
    # Served at the model's rate, both streams: one prepared sample per 500/model-rate input sample
    # (the resampler holds back a sample or two). How many came back in time is load, not asserted.
    up = daemon_stats["info"]["model_sfreq_hz"] / 500.0
    for counters in daemon_stats["streams"].values():
        assert counters["samples_in"] > 0
        assert counters["samples_preprocessed"] == pytest.approx(counters["samples_in"] * up, rel=0.01)
    assert 0 < resampled["real_time"]["samples_received_fraction_min"] <= 1.1
    comparison = results["resampled"]["daemon@500Hz"]
    native = results["systems"]["daemon"]["outputs"]["lsl"]["pooled"]
    assert comparison["added_p99_ms"] == pytest.approx(resampled["outputs"]["lsl"]["pooled"]["p99_ms"] - native["p99_ms"])
    assert comparison["resampler_delay_ms"] > 0 and comparison["adaptation_ms"]["count"] > 0
    for name, system in results["systems"].items():
        for transport in ("lsl", "zmq"):
            outputs = system["outputs"][transport]
            assert len(outputs["streams"]) == 2, (name, transport)
            for stream in outputs["streams"].values():  # each stream arrived on its own output
                assert_latency_summary(stream)
    assert results["systems"]["daemon"]["windows"]["mean_batch"] >= 1.0
    assert {"lsl", "zmq"} <= set(results["floor"])


@pytest.mark.parametrize("args, needle", [
    (("--streams", "0"), "--streams"),
    (("--peer", "fast"), "--peer"),
    (("--duration", "-1"), "--duration"),
    (("--hop", str(WINDOW + 1)), "--hop"),
    (("--cold-cache", "--engine", "eager"), "--cold-cache"),
])
def test_bad_options_exit_2_with_one_line(model_dir, args, needle):
    result = run_cli("bench", "--model", str(model_dir), *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_model_that_does_not_fit_the_recording_exits_2_naming_channels(tmp_path, eeg_names):
    model = save_model(tmp_path / "model", [*eeg_names[:-1], "EEG 999"])
    result = run_cli("bench", "--model", str(model), "--duration", "1")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "EEG 999" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_exits_2_naming_the_directory(tmp_path):
    result = run_cli("bench", "--model", str(tmp_path / "nowhere"))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


def test_a_cold_cache_run_measures_the_daemon_first_on_caches_of_its_own_and_holds_it_to_the_cold_goals(
        tmp_path, monkeypatch):
    """`--cold-cache`: the cold daemon phase comes first; every process the bench starts inherits
    its own empty package and inductor caches (the user's are untouched and restored); the cold
    phase is held to median ≤ 1.0× and p99 ≤ 1.5× the naive loop, the warm one to 0.8×."""
    import os

    from brainformer_rt.tools.bench.run import _own_caches, _systems
    from brainformer_rt.tools.bench.settings import BenchSettings
    from brainformer_rt.tools.bench.summary import engine_goals

    settings = BenchSettings(cold_cache=True, floor=True).validate()
    assert [system.name for system in _systems(settings)] == ["daemon-cold", "daemon", "naive", "relay"]
    assert [system.name for system in _systems(BenchSettings())] == ["daemon", "naive"]
    monkeypatch.setenv("BRAINFORMER_CACHE", str(tmp_path / "users"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with _own_caches(settings, tmp_path / "bench"):
        assert os.environ["BRAINFORMER_CACHE"] == str(tmp_path / "bench" / "cache")
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "bench" / "inductor")
    assert os.environ["BRAINFORMER_CACHE"] == str(tmp_path / "users")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ

    def system(median_ms: float, p99_ms: float) -> dict:
        return {"outputs": {"lsl": {"pooled": {"median_ms": median_ms, "p99_ms": p99_ms}}},
                "forward_ms": {"median_ms": 0.9, "p99_ms": 2.0}, "engine": {}}

    # The cold daemon at 1.0× / 1.4× meets its goals; the warm one at 0.9× / 0.7× does not (0.8×).
    results = {"settings": {"warmup_s": 2.0},
               "systems": {"daemon-cold": system(4.0, 14.0), "daemon": system(3.6, 7.0), "naive": system(4.0, 10.0)}}
    goals = engine_goals(results)
    assert goals["daemon-cold"]["naive_ratio_met"] and (goals["daemon-cold"]["naive_median_goal"],
                                                        goals["daemon-cold"]["naive_p99_goal"]) == (1.0, 1.5)
    assert not goals["daemon"]["naive_ratio_met"] and goals["daemon"]["naive_p99_goal"] == 0.8


def test_the_bench_waits_only_for_the_builds_its_own_phases_left_running(tmp_path, monkeypatch):
    """A build running before the run began (another program's) is not waited for; one that
    appears during the run (left by one of its daemon phases) is, until it ends."""
    import threading

    from brainformer_rt.serving.aot_cache import ensure_cache_dir
    from brainformer_rt.tools.bench.run import _builds_running, _wait_for_builds
    from tests.rt.conftest import LockHolder

    monkeypatch.setenv("BRAINFORMER_CACHE", str(tmp_path))
    cache = ensure_cache_dir(tmp_path / "aot")
    another = LockHolder(cache, "a" * 32)
    try:
        not_ours = _builds_running()
        assert {pid for _, pid in not_ours} == {another.pid}
        assert _wait_for_builds(lambda line: None, not_ours) == 0.0
        ours = LockHolder(cache, "b" * 32)
        lines: list[str] = []
        # The wait ends once this build ends, and not before: it is released only after the
        # wait has said which build it waits for.
        waiter = threading.Thread(target=lambda: lines.append(_wait_for_builds(lines.append, not_ours)))
        waiter.start()
        for _ in range(6000):  # a hang bound of a minute, never reached when the wait works
            if lines:
                break
            threading.Event().wait(0.01)
        assert lines and str(ours.pid) in lines[0] and str(another.pid) not in lines[0]
        assert waiter.is_alive()
        ours.release()
        waiter.join(60)
        assert not waiter.is_alive() and isinstance(lines[-1], float)
    finally:
        another.release()
