"""The model config's electrode positions: the field, the bundled model, newly prepared models."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.config_fields import BrainformerFields
from brainformer.data.readers import fields_for_recording, read_raw
from brainformer.paths import DEFAULT_MODEL_DIR


def test_default_model_carries_the_recordings_positions(default_fields, model_positions):
    assert np.array_equal(np.array(default_fields.eeg_positions_m), model_positions)


def test_default_model_config_loads_with_positions(model_positions):
    pytest.importorskip("transformers")
    from brainformer.configuration_brainformer import BrainformerConfig

    config = BrainformerConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert np.array_equal(np.array(config.eeg_positions_m), model_positions)
    assert BrainformerFields.from_config(config).eeg_positions_m == tuple(map(tuple, model_positions.tolist()))


def test_prepared_fields_take_positions_from_the_montage(sample_fif, model_positions):
    raw = read_raw(sample_fif)
    assert np.array_equal(np.array(fields_for_recording(raw).eeg_positions_m), model_positions)
    subset = fields_for_recording(raw, {"eeg_channel_names": ["EEG 003", "EEG 001"]})
    assert np.array_equal(np.array(subset.eeg_positions_m), model_positions[[2, 0]])


@pytest.mark.parametrize(
    "value, match",
    [
        ([[0.0, 0.0, 0.05]] * 59, "eeg_positions_m = '<59 positions>'"),
        ([[0.0, 0.05]] * 60, r"eeg_positions_m\[0\] = \[0.0, 0.05\]"),
        ([[10.0, 20.0, 30.0]] * 60, "metres, not millimetres"),
        ([[0.0, float("nan"), 0.05]] * 60, "finite"),
    ],
)
def test_positions_are_validated_naming_the_field(value, match):
    with pytest.raises(ValueError, match=match):
        BrainformerFields(eeg_positions_m=value)
