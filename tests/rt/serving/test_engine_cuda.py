"""The engines on a CUDA device against eager on the CPU (skipped without CUDA).

``serve --device auto`` picks ``cuda-graph`` on a machine with CUDA, and ``--engine eager`` or
``compile`` run there too: each must give the CPU's eager numbers for every batch size (every
captured bucket and the padding up to it), and each call's result must be its own array, not a
view of a static output that the next replay overwrites.

Every engine gets its own copy of the model: ``setup()`` moves the model it is given to its
device, so a model shared by a CPU and a CUDA engine would end up on the GPU under both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer_rt.serving.engine import make_engine
from tests.rt.conftest import small_model

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]

BATCH_SIZE = 6  # buckets 1, 2, 4, 6: k = 3 and 5 are padded up to the next bucket
#: GPU kernels sum in another order (and may use TF32): float tolerance, not bitwise equality.
RTOL, ATOL = 1e-3, 1e-4
CUDA_KINDS = ["eager", "compile", "cuda-graph"]


@pytest.fixture(autouse=True)
def fresh_compiler_caches():
    """Every `compile` engine adds its graphs to those of one function (the engine's step), and
    past dynamo's recompile limit the step would run eagerly: `compile` would test nothing."""
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """``(BATCH_SIZE, 64, 8)`` float32."""
    return np.random.default_rng(0).standard_normal((BATCH_SIZE, 64, 8)).astype(np.float32)


def cpu_eager(seed: int, output_samples: int | None = None):
    return make_engine(small_model(seed), "eager", "cpu", batch_size=BATCH_SIZE, window_samples=64,
                       output_samples=output_samples).setup()


@pytest.mark.parametrize("output_samples", [None, 16])
@pytest.mark.parametrize("kind", CUDA_KINDS)
def test_cuda_engines_give_the_cpu_eager_numbers_for_every_batch_size(windows, kind, output_samples):
    reference = cpu_eager(0, output_samples)
    engine = make_engine(small_model(0), kind, "cuda", batch_size=BATCH_SIZE, window_samples=64,
                         output_samples=output_samples).setup()
    assert engine.kind == kind and engine.describe()["device"].startswith("cuda")
    assert next(engine.model.parameters()).is_cuda and not next(reference.model.parameters()).is_cuda
    for k in range(1, BATCH_SIZE + 1):
        expected = reference.infer(windows[:k])
        out = engine.infer(windows[:k])
        assert out.shape == expected.shape == (k, output_samples or 64, 12) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL, err_msg=f"{kind}, batch of {k}")
    # The comparison can fail: another model's numbers are far outside the tolerance.
    assert not np.allclose(cpu_eager(1, output_samples).infer(windows), engine.infer(windows), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["compile", "cuda-graph"])
def test_replayed_graph_results_are_not_aliased(windows, kind):
    """Both replay graphs over static device buffers (``compile`` in its reduce-overhead mode)."""
    reference = cpu_eager(1)
    engine = make_engine(small_model(1), kind, "cuda", batch_size=BATCH_SIZE, window_samples=64).setup()
    first = engine.infer(windows[:2])
    kept = first.copy()
    second = engine.infer(windows[2:4])  # the same bucket: the same graph replays
    third = engine.infer(windows[4:5] * 3.0)  # another bucket
    np.testing.assert_array_equal(first, kept)  # the later replays did not overwrite it
    assert not np.shares_memory(first, second) and not np.shares_memory(second, third)
    np.testing.assert_allclose(second, reference.infer(windows[2:4]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(third, reference.infer(windows[4:5] * 3.0), rtol=RTOL, atol=ATOL)
    # With out=, the result lands in the caller's array, replay after replay.
    out = np.empty((1, 64, 12), np.float32)
    assert engine.infer(windows[5:6], out=out) is out
    np.testing.assert_allclose(out, reference.infer(windows[5:6]), rtol=RTOL, atol=ATOL)
    # The engine reads its inputs afresh: a changed window changes the prediction.
    assert not np.allclose(engine.infer(windows[:2] + 1.0), kept)


def test_the_input_buffer_is_used_in_place_on_cuda(windows):
    reference = cpu_eager(2)
    engine = make_engine(small_model(2), "cuda-graph", "cuda", batch_size=BATCH_SIZE, window_samples=64).setup()
    engine.input_buffer[:3] = windows[:3]
    np.testing.assert_allclose(engine.infer(engine.input_buffer[:3]), reference.infer(windows[:3]), rtol=RTOL,
                               atol=ATOL)
