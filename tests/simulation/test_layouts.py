"""`brainformer.simulation.layouts`: the layouts' geometry, names, rates and input checks."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from brainformer import simulation as sim
from brainformer.configuration_brainformer import DEFAULT_EEG_CHANNEL_NAMES, DEFAULT_MEG_CHANNEL_NAMES
from tests.simulation.helpers import DS000117_EEG


def test_sample_layout_uses_the_recording_geometry_and_names(sample_fif):
    raw, truth = sim.simulate("sample", 1.0, seed=0)
    recording = mne.io.read_raw_fif(sample_fif, preload=False, verbose="error")
    assert raw.info["sfreq"] == recording.info["sfreq"] == 600.614990234375
    assert raw.n_times == round(600.614990234375)
    assert raw.ch_names == recording.copy().pick(["meg", "eeg"]).ch_names
    assert list(truth.eeg_channel_names) == list(DEFAULT_EEG_CHANNEL_NAMES)
    assert list(truth.meg_channel_names) == list(DEFAULT_MEG_CHANNEL_NAMES)
    assert raw.info["projs"] == []
    # Real sensor positions, not zeros.
    eeg_pos = np.array([raw.info["chs"][i]["loc"][:3] for i in mne.pick_types(raw.info, meg=False, eeg=True)])
    expected = np.array([recording.info["chs"][recording.ch_names.index(n)]["loc"][:3] for n in truth.eeg_channel_names])
    np.testing.assert_array_equal(eeg_pos, expected)


def test_ds000117_layout_has_neuromag_and_70_eeg_at_1100_hz():
    raw, truth = sim.simulate("ds000117", 0.5, seed=0)
    assert raw.info["sfreq"] == 1100.0
    assert raw.n_times == 550
    assert list(truth.eeg_channel_names) == DS000117_EEG
    assert len(truth.meg_channel_names) == 306
    assert truth.meg_channel_names[:3] == ("MEG0113", "MEG0112", "MEG0111")
    assert truth.meg_channel_types.count("mag") == 102 and truth.meg_channel_types.count("grad") == 204
    assert raw.get_channel_types(picks=list(truth.meg_channel_names)).count("mag") == 102
    # EEG electrodes sit on the head, inside the helmet: every one is at least 1 cm from every MEG sensor.
    head_from_device = raw.info["dev_head_t"]["trans"]
    meg_pos = np.array([raw.info["chs"][raw.ch_names.index(n)]["loc"][:3] for n in truth.meg_channel_names])
    meg_head = meg_pos @ head_from_device[:3, :3].T + head_from_device[:3, 3]
    eeg_head = np.array([raw.info["chs"][raw.ch_names.index(n)]["loc"][:3] for n in truth.eeg_channel_names])
    distances = np.linalg.norm(eeg_head[:, None] - meg_head[None], axis=2)
    assert distances.min() > 0.01


def test_custom_rate():
    raw, truth = sim.simulate("sample", 0.5, sfreq_hz=500.0, seed=0)
    assert raw.info["sfreq"] == 500.0 and truth.sfreq_hz == 500.0
    assert raw.n_times == 250
    assert truth.freqs_hz[-1] == pytest.approx(250.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layout="bogus", duration_s=1.0), "layout 'bogus'"),
        (dict(layout="sample", duration_s=0.0), "duration_s"),
        (dict(layout="sample", duration_s=float("nan")), "duration_s"),
        (dict(layout="sample", duration_s=1.0, seed=-1), "seed"),
        (dict(layout="sample", duration_s=1.0, sfreq_hz=50.0), "sfreq_hz"),
        (dict(layout="sample", duration_s=1.0, spacing_mm=1.0), "spacing_mm"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sim.simulate(**kwargs)
