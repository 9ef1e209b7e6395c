"""Shared by the tests of `brainformer.evaluation`: a tiny model shape, smooth test signals, and an
untrained tiny model directory with the real recording's channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainformer.data import prepare_recordings
from brainformer.modeling_brainformer import BrainformerForMEGPrediction
from brainformer.settings import DataSettings, ExperimentSettings

TINY_MODEL = {
    "window_samples": 64, "hop_samples": 16, "patch_len": 16, "d_model": 8, "n_heads": 2, "d_ff": 16,
    "router_dim": 2, "skip_lags": 8,
}


def random_walkish(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """Smooth-ish signals `(n, channels)` (white noise through a short moving average)."""
    white = rng.standard_normal((n + 8, channels))
    return np.stack([np.convolve(white[:, c], np.ones(8) / 8, mode="valid")[:n] for c in range(channels)], axis=1)


@pytest.fixture(scope="session")
def tiny_model_dir(sample_fif, tmp_path_factory) -> Path:
    """An untrained tiny model with the real recording's channels and scaling statistics."""
    settings = ExperimentSettings(model=dict(TINY_MODEL), data=DataSettings())
    config = prepare_recordings([sample_fif], settings).config
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("evaluation") / "tiny_model"
    BrainformerForMEGPrediction(config).save_pretrained(str(path))
    return path
