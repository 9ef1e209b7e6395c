"""brainformer.data.readers: files, BIDS roots, channel layouts, the config of a recording."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

from brainformer.config_fields import (
    DEFAULT_EEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_NAMES,
    DEFAULT_MEG_CHANNEL_TYPES,
    BrainformerFields,
)
from brainformer.data import DataError, channel_layout, config_for_recording, fields_for_recording, find_recordings, read_raw
from brainformer.configuration_brainformer import BrainformerConfig
from tests.data.common import BIDS_RUNS, WINDOW, save_variant


def test_channel_layout_of_the_real_recording(sample_fif):
    eeg, meg, meg_types = channel_layout(read_raw(sample_fif))
    assert eeg == list(DEFAULT_EEG_CHANNEL_NAMES)
    assert meg == list(DEFAULT_MEG_CHANNEL_NAMES)
    assert meg_types == list(DEFAULT_MEG_CHANNEL_TYPES)
    assert meg_types.count("mag") == 102 and meg_types.count("grad") == 204


def test_config_for_recording_takes_channels_and_rate_from_the_file(short_fif):
    raw = read_raw(short_fif)
    config = config_for_recording(raw, {"d_model": 32, "window_samples": WINDOW, "patch_len": 16})
    assert config.n_eeg_channels == 60 and config.n_meg_channels == 306
    assert config.sfreq_hz == raw.info["sfreq"] and config.d_model == 32
    subset = config_for_recording(raw, {"meg_channel_names": ["MEG 0111", "MEG 0112"], "sfreq_hz": raw.info["sfreq"] / 2})
    assert subset.meg_channel_types == ["mag", "grad"] and subset.sfreq_hz == raw.info["sfreq"] / 2
    with pytest.raises(DataError, match=r"short_raw\.fif: .*patch_len"):
        config_for_recording(raw, {"patch_len": 7})
    with pytest.raises(DataError, match=r"short_raw\.fif: model\.meg_channel_names not in the file: MEG 9999"):
        config_for_recording(raw, {"meg_channel_names": ["MEG 9999"]})


def test_find_recordings_files_and_bids_roots(short_fif, bids_root):
    runs = find_recordings([bids_root])
    assert [p.name for p in runs] == [f"{name}.fif" for name in BIDS_RUNS]
    assert [p.parent for p in runs] == [bids_root.resolve() / sub / "ses-meg" / "meg" for sub in ("sub-01", "sub-02")]
    both = find_recordings([short_fif, bids_root, short_fif])  # duplicates dropped, order kept
    assert both == [short_fif.resolve(), *runs]


def test_bids_runs_read_back_the_original_samples(bids_root, sample_fif):
    first, second = find_recordings([bids_root])
    original = mne.io.read_raw_fif(sample_fif, verbose="error")
    raw = read_raw(second)
    assert channel_layout(raw) == channel_layout(original)
    start = original.time_as_index(4.0)[0]
    np.testing.assert_array_equal(raw.get_data(stop=100), original.get_data(start=start, stop=start + 100))


def test_bad_paths_and_bids_roots_are_clear_errors(work):
    with pytest.raises(DataError, match=r"nothing_here\.fif: no such file or directory"):
        find_recordings([work / "nothing_here.fif"])
    plain_dir = work / "plain_dir"
    plain_dir.mkdir()
    with pytest.raises(DataError, match=r"plain_dir: a directory that is not a BIDS root"):
        find_recordings([plain_dir])
    empty_root = work / "empty_bids"
    empty_root.mkdir()
    (empty_root / "dataset_description.json").write_text(json.dumps({"Name": "empty", "BIDSVersion": "1.8.0"}))
    with pytest.raises(DataError, match=r"empty_bids: BIDS root with no MEG runs"):
        find_recordings([empty_root])


def test_files_without_eeg_or_meg_or_not_raw_are_clear_errors(short_fif, work):
    no_meg = save_variant(short_fif, work / "eeg_only_raw.fif", lambda raw: raw.pick(["eeg", "stim"]))
    with pytest.raises(DataError, match=r"eeg_only_raw\.fif: no MEG channels \(channel types in the file: eeg, stim\)"):
        read_raw(no_meg)
    no_eeg = save_variant(short_fif, work / "meg_only_raw.fif", lambda raw: raw.pick("meg"))
    with pytest.raises(DataError, match=r"meg_only_raw\.fif: no EEG channels"):
        read_raw(no_eeg)
    text = work / "notes_raw.fif"
    text.write_text("not a recording\n")
    with pytest.raises(DataError, match=r"notes_raw\.fif: cannot read as a raw recording"):
        read_raw(text)


def test_fields_for_recording_are_the_config_for_recording_without_transformers(short_fif):
    raw = read_raw(short_fif)
    kwargs = {"d_model": 32, "window_samples": WINDOW, "patch_len": 16}
    fields = fields_for_recording(raw, kwargs)
    assert isinstance(fields, BrainformerFields) and fields.n_segments == WINDOW // 16
    assert fields.eeg_channel_names == DEFAULT_EEG_CHANNEL_NAMES and fields.meg_channel_types == DEFAULT_MEG_CHANNEL_TYPES
    assert BrainformerConfig(**fields.to_dict()).to_dict() == config_for_recording(raw, kwargs).to_dict()
    with pytest.raises(DataError, match=r"short_raw\.fif: BrainformerConfig got unknown argument\(s\) d_modle"):
        fields_for_recording(raw, {"d_modle": 32})
