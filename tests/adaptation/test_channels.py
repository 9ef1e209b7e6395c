"""Label matching (case and spaces), ignored channels, the channel map."""

from __future__ import annotations

import pytest

from brainformer.adaptation import AdaptationError, load_channel_map, match_channels, normalize_label

MODEL = ["EEG 001", "EEG 002", "Fz"]


def test_labels_match_case_and_space_insensitively():
    assert normalize_label(" EEG  001 ") == normalize_label("eeg001")
    match = match_channels(["TRIG", "eeg002", "EEG001", "fz ", "EOG 1", "Cz"], ["stim", "", "EEG", "eeg", "EOG", "eeg"], MODEL)
    assert match.stream_index == (2, 1, 3)
    assert match.missing == ()
    assert dict(match.ignored) == {0: "type stim", 4: "type eog", 5: "not a model channel"}
    assert match.candidates == (5,)


def test_missing_model_channels():
    match = match_channels(["EEG 001"], ["eeg"], MODEL)
    assert match.stream_index == (0, -1, -1) and match.missing == (1, 2)


def test_two_stream_channels_for_one_model_channel_are_refused():
    with pytest.raises(AdaptationError, match="'EEG 001' and 'eeg001' both match"):
        match_channels(["EEG 001", "eeg001"], [], MODEL)


def test_channel_map_from_toml(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text('[channel_map]\n"Fp1-REF" = "EEG 001"\n"Fp2-REF" = "eeg 002"\n"Gone" = "Fz"\n')
    channel_map = load_channel_map(path)
    match = match_channels(["fp2-ref", "Fp1-REF", "Fz"], [], MODEL, channel_map)
    assert match.stream_index == (1, 0, 2)
    assert match.unused_map_keys == ("Gone",)


def test_channel_map_errors_name_the_problem(tmp_path):
    with pytest.raises(AdaptationError, match="'EEG 099'.*not model EEG channels"):
        match_channels(["A"], [], MODEL, {"A": "EEG 099"})
    bad = tmp_path / "bad.toml"
    bad.write_text('[channel_map]\nA = 3\n')
    with pytest.raises(AdaptationError, match=f"{bad}.*'A' = 3"):
        load_channel_map(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("A = \n")
    with pytest.raises(AdaptationError, match="not valid TOML"):
        load_channel_map(broken)
