"""Simulations shared by the simulator tests (session-scoped: the forward model is slow)."""

from __future__ import annotations

import pytest

from brainformer import simulation as sim
from brainformer.preprocessing import fit_scaling, preprocess_recording
from tests.simulation.helpers import config_for


@pytest.fixture(scope="session")
def long_sample():
    """60 s of the sample layout: enough for variance, spectrum and oracle statistics."""
    return sim.simulate("sample", 60.0, seed=11)


@pytest.fixture(scope="session")
def scaled_sample(long_sample):
    """The 60 s simulation preprocessed by the serving path, with scaling fitted on its first half."""
    raw, truth = long_sample
    config = config_for(truth)
    plain = preprocess_recording(raw, config)
    settle, half = int(5 * plain.sfreq_hz), plain.n_samples // 2
    config = fit_scaling(config, plain.eeg[settle:half], plain.meg[settle:half])
    return config, preprocess_recording(raw, config)
