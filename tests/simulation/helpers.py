"""What the simulator tests share: a config for a simulation's channels, per-channel R²."""

from __future__ import annotations

import numpy as np

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.simulation import SimulationTruth

DS000117_EEG = [f"EEG{i:03d}" for i in list(range(1, 61)) + list(range(65, 75))]


def config_for(truth: SimulationTruth, **overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=list(truth.eeg_channel_names),
        meg_channel_names=list(truth.meg_channel_names),
        meg_channel_types=list(truth.meg_channel_types),
        sfreq_hz=truth.sfreq_hz,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


def r2(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-channel R² of `(n, channels)` arrays."""
    residual = ((target - prediction) ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return 1.0 - residual / total
