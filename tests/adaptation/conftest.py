"""Fixtures of the adaptation tests: the bundled real recording (60 EEG of the MNE sample
subject, head-frame electrode positions) and the model fields of the bundled default model."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

from brainformer.config_fields import BrainformerFields
from brainformer.paths import DEFAULT_MODEL_DIR


@pytest.fixture(scope="package")
def raw(sample_fif):
    """The whole recording, preloaded; EEG only is `eeg_raw`."""
    return mne.io.read_raw_fif(sample_fif, preload=True, verbose="error")


@pytest.fixture(scope="package")
def eeg_raw(raw):
    return raw.copy().pick("eeg")


@pytest.fixture(scope="package")
def default_fields() -> BrainformerFields:
    values = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    values.pop("dtype", None)  # written by transformers' save_pretrained; not a field
    return BrainformerFields.from_dict(values)


@pytest.fixture(scope="package")
def model_positions(eeg_raw) -> np.ndarray:
    return np.array([ch["loc"][:3] for ch in eeg_raw.info["chs"]])
