"""The serving engines with the amplitude-aware architecture (gain head with lookahead, envelope
features, no final norm) and the linear path's hop lookahead: compile and aot give the eager
numbers for the served tail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction
from brainformer.configuration_brainformer import DEFAULT_MEG_CHANNEL_NAMES, DEFAULT_MEG_CHANNEL_TYPES
from brainformer_rt.serving.engine import make_engine

pytestmark = pytest.mark.timeout(300)


def gain_head_model(seed: int = 0, hop_lookahead_rank: int = 0) -> BrainformerForMEGPrediction:
    """8 EEG → 12 MEG, 64-sample windows, every new option on, gains that are not zero."""
    torch.manual_seed(seed)
    config = BrainformerConfig(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 9)],
        meg_channel_names=list(DEFAULT_MEG_CHANNEL_NAMES[:12]), meg_channel_types=list(DEFAULT_MEG_CHANNEL_TYPES[:12]),
        window_samples=64, patch_len=16, hop_samples=8, d_model=16, n_heads=2, d_ff=32, router_dim=4,
        skip_lags=5, gain_filters=4, gain_filter_past_samples=12, gain_filter_lookahead_samples=7,
        envelope_filters=3, envelope_filter_samples=16, final_norm=False, hop_lookahead_past_samples=4,
        hop_lookahead_rank=hop_lookahead_rank,
    )
    model = BrainformerForMEGPrediction(config).eval()
    with torch.no_grad():
        model.gain_head.gain_projection.weight.normal_(std=0.2)
        for parameter in model.hop_lookahead.parameters():
            parameter.normal_(std=0.1)
    return model


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 64, 8)).astype(np.float32)


def newest(model, windows: np.ndarray, samples: int) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(windows)).predictions.numpy()[:, -samples:]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_eager_and_compile_serve_the_newest_samples(windows):
    model = gain_head_model()
    eager = make_engine(model, "eager", "cpu", batch_size=2, window_samples=64, output_samples=16).setup()
    compiled = make_engine(model, "compile", "cpu", batch_size=2, window_samples=64, output_samples=16).setup()
    for rows in (slice(0, 2), slice(2, 3)):
        np.testing.assert_allclose(eager.infer(windows[rows]), newest(model, windows[rows], 16), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(compiled.infer(windows[rows]), newest(model, windows[rows], 16), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_aot_serves_the_newest_samples(windows, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFORMER_CACHE", str(tmp_path))
    monkeypatch.setenv("BRAINFORMER_AOT_AUTOTUNE", "0")  # the export is what is tested, not the tuning
    model = gain_head_model(seed=1, hop_lookahead_rank=3)  # the reduced-rank lookahead; compile has the full one
    engine = make_engine(model, "aot", "cpu", batch_size=2, window_samples=64, output_samples=16, buckets=[2]).setup()
    for rows in (slice(0, 2), slice(2, 3)):
        np.testing.assert_allclose(engine.infer(windows[rows]), newest(model, windows[rows], 16), rtol=1e-4, atol=1e-5)
