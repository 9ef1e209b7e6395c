"""The ``auto`` engine on a CPU: eager at once, the compiled forward once built, loaded and checked.

Real compiles (a process of its own, AOTInductor), real caches on disk, a real daemon serving a
real LSL stream across the switch.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid

import numpy as np
import pytest
import torch

from brainformer_rt.serving.engine import AotEngine
from brainformer_rt.serving.engine_switch import CHECK_WINDOWS, SwitchingEngine, serving_engine
from tests.rt.conftest import HOP, Player, json_events, open_inlet, small_model

WINDOW = 64  # small_model's
OUTPUT_SAMPLES = 16
#: A compile under a loaded test machine; the engine itself gives up after BUILD_TIMEOUT_S.
SWITCH_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory, request):
    """One cache for the module: what the first test compiles, the next ones find.

    The packages are built without autotuning (a minute less per build): these tests are about
    the switch; test_engine.py checks the autotuned package against eager. The build runs at the
    server's priority, not the lowest: on a machine whose cores other work keeps busy, a build
    at niceness 19 gets next to no time and the switch would wait on the machine's load."""
    path = tmp_path_factory.mktemp("aot-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("BRAINFORMER_CACHE", str(path))
    patch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")
    patch.setenv("BRAINFORMER_AOT_BUILD_NICE", "0")
    request.addfinalizer(patch.undo)
    return path


def reference(model: torch.nn.Module, windows: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(windows), last_samples=OUTPUT_SAMPLES).predictions.numpy()


def serve_until_settled(engine: SwitchingEngine, model: torch.nn.Module, rng: np.random.Generator) -> list[str]:
    """Calls the engine every 25 ms (a hop of the default model is 27 ms) until the switch succeeded or failed;
    every call's output is checked against the model's own; the kinds that served, per call."""
    served = []
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    # "switched" is set by the call that the compiled forward served first.
    while engine.switch.state not in ("switched", "failed"):
        assert time.monotonic() < deadline, f"no switch after {SWITCH_TIMEOUT_S} s: {engine.switch}"
        windows = rng.standard_normal((1, WINDOW, 8)).astype(np.float32)
        predicted = engine.infer(windows)
        served.append(engine.active.kind)
        np.testing.assert_allclose(predicted, reference(model, windows), rtol=1e-4, atol=1e-5)
        time.sleep(0.025)
    for _ in range(5):  # and after the switch
        windows = rng.standard_normal((1, WINDOW, 8)).astype(np.float32)
        np.testing.assert_allclose(engine.infer(windows), reference(model, windows), rtol=1e-4, atol=1e-5)
        served.append(engine.active.kind)
    return served


@pytest.mark.timeout(SWITCH_TIMEOUT_S + 60)
def test_auto_serves_with_eager_at_once_then_switches_to_the_compiled_forward(cache):
    model = small_model()
    engine = serving_engine(model, "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES)
    assert isinstance(engine, SwitchingEngine)
    engine.setup()
    try:
        assert engine.active.kind == "eager" and engine.switch.state == "preparing"
        served = serve_until_settled(engine, model, np.random.default_rng(0))
        switch = engine.describe()["switch"]
        assert switch["state"] == "switched", switch
        assert switch["source"] == "compiled" and switch["checked_windows"] == CHECK_WINDOWS
        assert switch["max_abs_diff"] <= 1e-4
        # Eager served until the switch, the compiled forward from then on, every call answered.
        first_compiled = served.index("aot")
        assert first_compiled > CHECK_WINDOWS and set(served[first_compiled:]) == {"aot"}
        assert engine.describe()["active"] == "aot"
        assert list((cache / "aot").glob("*.pt2")) == [engine.compiled.package_path(1)]
    finally:
        engine.close()

    again = serving_engine(small_model(), "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES).setup()
    try:
        serve_until_settled(again, model, np.random.default_rng(1))
        assert again.switch.state == "switched" and again.switch.source == "cache"  # nothing compiled again
    finally:
        again.close()


@pytest.mark.timeout(SWITCH_TIMEOUT_S + 60)
def test_a_compiled_forward_that_disagrees_with_eager_never_serves(cache):
    """A package under this model's key that holds another model's weights (a stale or damaged
    cache) loads, fails the check on live windows, and eager serves on."""
    compiled_for = AotEngine(small_model(seed=0), torch.device("cpu"), 1, WINDOW, output_samples=OUTPUT_SAMPLES)
    package = compiled_for.package_path(1)
    if not package.exists():  # this test alone
        compiled_for.compile_package(1, package)
    model = small_model(seed=3)
    engine = serving_engine(model, "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES)
    shutil.copy(package, engine.compiled.package_path(1))
    engine.setup()
    try:
        served = serve_until_settled(engine, model, np.random.default_rng(2))
        assert engine.switch.state == "failed" and "differs from eager" in engine.switch.reason
        assert engine.switch.source == "cache"
        assert set(served) == {"eager"}
    finally:
        engine.close()


class _Doubling(torch.nn.Module):
    """A model without a config: nothing a compiling process could load."""

    def forward(self, windows: torch.Tensor, last_samples: int | None = None) -> torch.Tensor:
        return 2.0 * windows[:, windows.shape[1] - (last_samples or windows.shape[1]):]


def test_a_model_the_compiling_process_cannot_load_keeps_eager_and_says_why(cache):
    engine = SwitchingEngine(_Doubling(), torch.device("cpu"), 1, 10, n_input_channels=3, output_samples=4).setup()
    try:
        deadline = time.monotonic() + 60.0
        while engine.switch.state != "failed":
            assert time.monotonic() < deadline, engine.switch
            time.sleep(0.01)
        assert "no model config" in engine.switch.reason
        windows = np.arange(30, dtype=np.float32).reshape(1, 10, 3)
        np.testing.assert_array_equal(engine.infer(windows), 2.0 * windows[:, 6:])
        assert engine.active.kind == "eager"
    finally:
        engine.close()


def test_a_bad_autotune_setting_keeps_eager_and_names_the_variable(cache, monkeypatch):
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "yes")
    model = small_model(seed=4)
    engine = serving_engine(model, "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES).setup()
    try:
        served = serve_until_settled(engine, model, np.random.default_rng(4))
        assert engine.switch.state == "failed" and "BRAINFORMER_AOT_AUTOTUNE must be 0 or 1" in engine.switch.reason
        assert set(served) == {"eager"}
    finally:
        engine.close()


def test_a_bad_build_niceness_keeps_eager_and_names_the_variable(cache, monkeypatch):
    monkeypatch.setenv("BRAINFORMER_AOT_BUILD_NICE", "-5")
    model = small_model(seed=5)
    engine = serving_engine(model, "auto", "cpu", 1, WINDOW, output_samples=OUTPUT_SAMPLES).setup()
    try:
        served = serve_until_settled(engine, model, np.random.default_rng(5))
        assert engine.switch.state == "failed"
        assert "BRAINFORMER_AOT_BUILD_NICE must be an integer from 0 to 19, got '-5'" in engine.switch.reason
        assert set(served) == {"eager"}
    finally:
        engine.close()


@pytest.mark.timeout(SWITCH_TIMEOUT_S + 60)
def test_the_daemon_switches_without_a_gap_and_reports_it(cache, tmp_path, model_dir, serves):
    """`serve --engine auto` on a real stream: predictions from the first window on, the switch
    logged (`engine_switched`) and in the statistics, and the output's timestamps continuous
    across it (every sample published once, none missing)."""
    name = f"test-eeg-{uuid.uuid4().hex[:8]}"
    out_name = f"meg-{uuid.uuid4().hex[:8]}"
    stats_path = tmp_path / "stats.json"
    source = Player(name, f"test-{uuid.uuid4()}", "--chunk", str(HOP))
    stamps = []
    try:
        serve = serves(tmp_path, "--stream", name, "--model", str(model_dir), "--no-zmq", "--lsl-name", out_name,
                       "--stats-json", str(stats_path), "--log-format", "json", "--engine", "auto")
        inlet = open_inlet(out_name)
        deadline = time.monotonic() + SWITCH_TIMEOUT_S
        # Until the switch is logged and 20 hops of output arrived after it (a count, not a duration).
        received_at_switch = None
        while received_at_switch is None or len(stamps) < received_at_switch + 20 * HOP:
            assert serve.process.poll() is None, serve.stderr
            assert time.monotonic() < deadline, f"no engine_switched event, or no output after it: {serve.stderr}"
            stamps.extend(inlet.pull_chunk(timeout=0.2, max_samples=100000)[1])
            if received_at_switch is None and any(e["event"] == "engine_switched" for e in json_events(serve.stderr)):
                received_at_switch = len(stamps)
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.stderr
    finally:
        source.stop()
    events = {e["event"]: e for e in json_events(serve.stderr)}
    assert events["engine_switched"]["engine"] == "aot"
    assert "engine_switch_failed" not in events
    stats = json.loads(stats_path.read_text())
    engine = stats["info"]["engine"]
    assert engine["kind"] == "auto" and engine["active"] == "aot" and engine["switch"]["state"] == "switched"
    # Consecutive published samples are one output period apart, except where the daemon skipped
    # windows to stay in real time (counted; a loaded machine may need it): nothing else is lost,
    # nothing is published twice.
    counters = stats["streams"][name]
    steps = np.diff(np.asarray(stamps)) * float(stats["info"]["model_sfreq_hz"])
    assert len(stamps) >= received_at_switch + 20 * HOP and np.all(steps > 0.5)
    jumps = int(np.sum(np.abs(steps - 1.0) > 1e-3))
    assert jumps <= counters["windows_skipped"] + counters["windows_stale"], (jumps, counters)
