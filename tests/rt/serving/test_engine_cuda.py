"""The cuda-graph engine against eager, on a CUDA device (skipped without one).

``serve --device auto`` picks ``cuda-graph`` on a machine with CUDA, so this is the engine a GPU
machine serves with: it must give eager's numbers for every batch size (every captured bucket
and the padding up to it), and each call's result must be its own array, not a view of the
graph's static output that the next replay overwrites.
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




@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """``(BATCH_SIZE, 64, 8)`` float32."""
    return np.random.default_rng(0).standard_normal((BATCH_SIZE, 64, 8)).astype(np.float32)


@pytest.mark.parametrize("output_samples", [None, 16])
def test_cuda_graph_agrees_with_eager_for_every_batch_size(windows, output_samples):
    model = small_model()
    eager = make_engine(model, "eager", "cpu", batch_size=BATCH_SIZE, window_samples=64,
                        output_samples=output_samples).setup()
    graph = make_engine(model, "cuda-graph", "cuda", batch_size=BATCH_SIZE, window_samples=64,
                        output_samples=output_samples).setup()
    assert graph.kind == "cuda-graph" and graph.describe()["device"].startswith("cuda")
    for k in range(1, BATCH_SIZE + 1):
        expected = eager.infer(windows[:k])
        out = graph.infer(windows[:k])
        assert out.shape == expected.shape == (k, output_samples or 64, 12) and out.dtype == np.float32
        # TF32 and other kernels on the GPU: float tolerance, not bitwise equality.
        np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4, err_msg=f"batch of {k}")


def test_cuda_graph_results_are_not_aliased_between_replays(windows):
    model = small_model(seed=1)
    eager = make_engine(model, "eager", "cpu", batch_size=BATCH_SIZE, window_samples=64).setup()
    graph = make_engine(model, "cuda-graph", "cuda", batch_size=BATCH_SIZE, window_samples=64).setup()
    first = graph.infer(windows[:2])
    kept = first.copy()
    second = graph.infer(windows[2:4])  # the same bucket: the same captured graph replays
    third = graph.infer(windows[4:5] * 3.0)  # another bucket
    np.testing.assert_array_equal(first, kept)  # the later replays did not overwrite it
    assert not np.shares_memory(first, second) and not np.shares_memory(second, third)
    np.testing.assert_allclose(second, eager.infer(windows[2:4]), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(third, eager.infer(windows[4:5] * 3.0), rtol=1e-3, atol=1e-4)
    # With out=, the result lands in the caller's array, replay after replay.
    out = np.empty((1, 64, 12), np.float32)
    assert graph.infer(windows[5:6], out=out) is out
    np.testing.assert_allclose(out, eager.infer(windows[5:6]), rtol=1e-3, atol=1e-4)
    # The engine keeps reading its inputs afresh: a changed window changes the prediction.
    assert not np.allclose(graph.infer(windows[:2] + 1.0), kept)
