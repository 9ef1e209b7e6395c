"""Fixtures of the preprocessing tests: the default config, EEG-like random data."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.configuration_brainformer import BrainformerConfig


@pytest.fixture(scope="package")
def config() -> BrainformerConfig:
    return BrainformerConfig()


@pytest.fixture(scope="package")
def eeg_like() -> np.ndarray:
    """(3000, 60) random-walk + noise in volts, like raw EEG with drifts."""
    rng = np.random.default_rng(0)
    return 1e-5 * (rng.standard_normal((3000, 60)) + 0.05 * rng.standard_normal((3000, 60)).cumsum(axis=0))

