"""Inference engines on the CPU: eager, compile and aot agree with the model; clear errors otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainformer_rt.serving.engine import (
    EngineError, aot_inductor_configs, batch_buckets, make_engine, resolve_device, resolve_kind,
)
from tests.rt.conftest import small_model

pytestmark = pytest.mark.timeout(120)
#: Hang timeouts of the tests that compile (inductor runs gcc): a minute or two on a quiet 2-core
#: machine, five times that on a loaded one.
COMPILE_TIMEOUT_S = 600


def reference(model, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(windows)).predictions.numpy()


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 64, 8)).astype(np.float32)


def test_eager_matches_the_model_for_every_batch_size(windows):
    model = small_model()
    engine = make_engine(model, "eager", "cpu", batch_size=3, window_samples=64).setup()
    assert engine.kind == "eager" and engine.n_output_channels == 12
    for k in (1, 2, 3):
        out = engine.infer(windows[:k])
        assert out.shape == (k, 64, 12) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference(model, windows[:k]), rtol=1e-5, atol=1e-6)


def test_result_is_a_copy_unless_out_is_given(windows):
    model = small_model()
    engine = make_engine(model, "eager", "cpu", batch_size=2, window_samples=64).setup()
    first = engine.infer(windows[:1])
    kept = first.copy()
    engine.infer(windows[1:2])
    np.testing.assert_array_equal(first, kept)  # the next call did not overwrite it
    out = np.empty((1, 64, 12), np.float32)
    assert engine.infer(windows[1:2], out=out) is out
    np.testing.assert_allclose(out, reference(model, windows[1:2]), rtol=1e-5, atol=1e-6)


def test_windows_written_into_the_input_buffer_are_used_in_place(windows):
    model = small_model()
    engine = make_engine(model, "eager", "cpu", batch_size=3, window_samples=64).setup()
    assert engine.input_buffer.shape == (3, 64, 8)
    engine.input_buffer[:2] = windows[:2]
    out = engine.infer(engine.input_buffer[:2])
    np.testing.assert_allclose(out, reference(model, windows[:2]), rtol=1e-5, atol=1e-6)


def test_output_samples_gives_the_newest_predictions_of_each_window(windows):
    model = small_model()
    engine = make_engine(model, "eager", "cpu", batch_size=3, window_samples=64, output_samples=16).setup()
    assert engine.output_samples == 16 and engine.describe()["output_samples"] == 16
    out = engine.infer(windows)
    assert out.shape == (3, 16, 12)
    np.testing.assert_allclose(out, reference(model, windows)[:, -16:], rtol=1e-5, atol=1e-6)
    with pytest.raises(EngineError, match="output_samples must be in 1..window_samples=64"):
        make_engine(model, "eager", "cpu", batch_size=1, window_samples=64, output_samples=65)


def test_output_samples_needs_a_model_that_takes_last_samples():
    linear = torch.nn.Linear(4, 3)
    with pytest.raises(EngineError, match="needs a model whose forward takes last_samples; Linear does not"):
        make_engine(linear, "eager", "cpu", batch_size=1, window_samples=10, n_input_channels=4,
                    output_samples=5).setup()


def test_any_module_returning_a_tensor_is_served():
    linear = torch.nn.Linear(4, 3)
    engine = make_engine(linear, "eager", "cpu", batch_size=1, window_samples=10, n_input_channels=4).setup()
    x = np.ones((1, 10, 4), np.float32)
    with torch.no_grad():
        expected = linear(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.infer(x), expected, rtol=1e-6)


def test_bad_windows_are_refused_with_the_expected_shape():
    engine = make_engine(small_model(), "eager", "cpu", batch_size=2, window_samples=64).setup()
    with pytest.raises(EngineError, match=r"\(1\.\.2, 64, 8\)"):
        engine.infer(np.zeros((3, 64, 8), np.float32))
    with pytest.raises(EngineError, match="float32"):
        engine.infer(np.zeros((1, 64, 8), np.float64))


def test_kinds_resolve_the_same_on_every_machine():
    """What `auto` means and which pairs are refused depend on the device asked for, not on the
    machine: checked everywhere (a CUDA device object needs no GPU)."""
    assert resolve_kind("auto", torch.device("cpu")) == "eager"
    assert resolve_kind("auto", torch.device("cuda")) == "cuda-graph"
    assert [resolve_kind(kind, torch.device("cpu")) for kind in ("eager", "compile", "aot")] == ["eager", "compile", "aot"]
    assert [resolve_kind(kind, torch.device("cuda")) for kind in ("eager", "compile", "cuda-graph")] == [
        "eager", "compile", "cuda-graph"]
    with pytest.raises(EngineError, match="'aot' runs on the CPU; on CUDA use --engine cuda-graph"):
        resolve_kind("aot", torch.device("cuda"))
    with pytest.raises(EngineError, match="engine must be one of auto, eager, compile, aot, cuda-graph, got 'tensorrt'"):
        make_engine(small_model(), "tensorrt", "cpu", 1, 64)
    with pytest.raises(EngineError, match="device must be one of auto, cpu, cuda .*got 'tpu'"):
        make_engine(small_model(), "eager", "tpu", 1, 64)
    # cuda-graph on the CPU: refused on both kinds of machine, each time with what to do there.
    needs = "needs --device cuda" if torch.cuda.is_available() else "needs CUDA, but CUDA is not available"
    with pytest.raises(EngineError, match=needs):
        resolve_kind("cuda-graph", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA; this one has it")
def test_cuda_kinds_without_cuda_fail_clearly():
    with pytest.raises(EngineError, match="CUDA is not available"):
        make_engine(small_model(), "cuda-graph", "cpu", 1, 64)
    with pytest.raises(EngineError, match="device 'cuda' asked for, but CUDA is not available .*use --device cpu"):
        make_engine(small_model(), "eager", "cuda", 1, 64)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_auto_device_is_cuda_where_there_is_one():
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:0") == torch.device("cuda:0")


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_compile_agrees_with_eager(windows):
    """torch.compile (inductor, CPU) gives the eager numbers within float tolerance."""
    model = small_model(seed=1)
    eager = make_engine(model, "eager", "cpu", batch_size=1, window_samples=64).setup()
    compiled = make_engine(model, "compile", "cpu", batch_size=1, window_samples=64).setup()
    assert compiled.describe()["compile_mode"] == "default"
    for row in range(windows.shape[0]):
        np.testing.assert_allclose(compiled.infer(windows[row:row + 1]), eager.infer(windows[row:row + 1]),
                                   rtol=1e-4, atol=1e-5)
    # The serving shape: a batch bucket of 2 and only the newest 16 samples per window.
    tail = make_engine(model, "compile", "cpu", batch_size=2, window_samples=64, output_samples=16).setup()
    np.testing.assert_allclose(tail.infer(windows[:2]), reference(model, windows[:2])[:, -16:], rtol=1e-4, atol=1e-5)
    # Calls alternate between the buckets' graphs: only the guards that tell them apart run.
    for rows in (slice(2, 3), slice(0, 2), slice(1, 2)):
        np.testing.assert_allclose(tail.infer(windows[rows]), reference(model, windows[rows])[:, -16:],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(2 * COMPILE_TIMEOUT_S)  # two autotuned builds
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_aot_agrees_with_eager_and_reuses_its_cached_package(windows, tmp_path, monkeypatch, caplog):
    """AOTInductor gives the eager numbers; a second engine for the same model loads the cached
    package instead of compiling; other weights get another package."""
    monkeypatch.setenv("BRAINFORMER_CACHE", str(tmp_path))
    monkeypatch.delenv("BRAINFORMER_AOT_AUTOTUNE", raising=False)  # the package as it ships
    model = small_model(seed=2)
    # One static bucket of 2: a single window is padded up to it (one compilation in this test).
    engine = make_engine(model, "aot", "cpu", batch_size=2, window_samples=64, output_samples=16, buckets=[2])
    with caplog.at_level("INFO", logger="brainformer_rt.serving.engine"):
        engine.setup()
    assert sum("aot: compiled bucket 2" in r.getMessage() for r in caplog.records) == 1
    packages = sorted((tmp_path / "aot").glob("*.pt2"))
    assert len(packages) == 1 and (tmp_path / "aot").stat().st_mode & 0o777 == 0o700
    for rows in (slice(0, 2), slice(2, 3), slice(0, 1)):
        np.testing.assert_allclose(engine.infer(windows[rows]), reference(model, windows[rows])[:, -16:],
                                   rtol=1e-4, atol=1e-5)

    caplog.clear()
    again = make_engine(model, "aot", "cpu", batch_size=2, window_samples=64, output_samples=16, buckets=[2])
    with caplog.at_level("INFO", logger="brainformer_rt.serving.engine"):
        again.setup()
    assert not any("compiled bucket" in r.getMessage() for r in caplog.records)
    assert sorted((tmp_path / "aot").glob("*.pt2")) == packages
    np.testing.assert_array_equal(again.infer(windows[:2]), engine.infer(windows[:2]))

    # A damaged package is named, with what to do, instead of an error from deep inside torch.
    packages[0].write_bytes(b"not a package")
    broken = make_engine(model, "aot", "cpu", batch_size=2, window_samples=64, output_samples=16, buckets=[2])
    with pytest.raises(EngineError, match=f"cached package '{packages[0]}' cannot be loaded .*delete it"):
        broken.setup()

    # The key covers the weights and the output span: a changed model never loads a stale library.
    other = make_engine(small_model(seed=3), "aot", "cpu", batch_size=2, window_samples=64, output_samples=16,
                        buckets=[2])
    shorter = make_engine(model, "aot", "cpu", batch_size=2, window_samples=64, output_samples=8, buckets=[2])
    keys = {again._cache_key(2), other._cache_key(2), shorter._cache_key(2)}
    assert len(keys) == 3 and packages[0].stem == again._cache_key(2)
    # So does the build's autotuning.
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")
    assert again._cache_key(2) not in keys


def test_aot_autotune_setting_is_checked(monkeypatch):
    monkeypatch.delenv("BRAINFORMER_AOT_AUTOTUNE", raising=False)
    assert aot_inductor_configs()["max_autotune"] is True
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")
    assert aot_inductor_configs() == {"freezing": True}
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "no")
    with pytest.raises(EngineError, match="BRAINFORMER_AOT_AUTOTUNE must be 0 or 1, got 'no'"):
        aot_inductor_configs()


REPO = Path(__file__).resolve().parents[3]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA; this one has it")
def test_gpu_check_without_cuda_exits_clearly(tmp_path):
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.json").exists()


def test_gpu_check_cpu_smoke_run_writes_the_table_and_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--device", "cpu", "--kinds", "eager", "--models", "tiny",
                             "--batches", "2", "--iterations", "10", "--warmup", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max |Δ| vs eager" in result.stdout
    results = json.loads(out.read_text())
    # Only the plumbing is checked here: eager is the reference, so its own difference says
    # nothing. compile and aot are compared with the model above, cuda-graph in test_engine_cuda.py.
    assert [(row["batch"], row["engine"]) for row in results["rows"]] == [(2, "eager")]
    assert all(row["median_ms"] > 0 for row in results["rows"])
    assert results["machine"]["device"] == "cpu"


def test_aot_cache_key_covers_the_models_code(tmp_path, monkeypatch):
    """A package compiled from an older forward is never loaded for a newer one."""
    import importlib
    import sys

    source = tmp_path / "changing_model.py"
    source.write_text("import torch\n\nclass Doubling(torch.nn.Module):\n"
                      "    def forward(self, x):\n        return 2.0 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("changing_model")
    try:
        engine = make_engine(module.Doubling(), "aot", "cpu", window_samples=10, n_input_channels=3)
        before = engine._cache_key(1)
        assert engine._cache_key(1) == before
        source.write_text(source.read_text() + "# changed\n")
        assert engine._cache_key(1) != before
    finally:
        sys.modules.pop("changing_model", None)
