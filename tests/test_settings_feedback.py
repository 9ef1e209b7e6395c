"""Feedback signals in the settings: `[feedback.NAME]` tables of the serve config and the
`--feedback FILE` tables; every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainformer.settings import (
    FeedbackSignalSettings,
    ServeSettings,
    SettingsError,
    build_serve_settings,
    read_feedback_file,
)

REPO = Path(__file__).resolve().parents[1]
ALPHA = 'band_hz = [8.0, 12.0]\nmeasure = "envelope"\ntypes = ["mag"]\n'


def test_the_shipped_feedback_file_is_valid():
    signals = read_feedback_file(REPO / "configs" / "feedback.toml")
    assert [s.name for s in signals] == ["alpha", "beta", "alpha_phase"]
    assert signals[2].measure == "phase" and signals[2].sensors == ("MEG 2111",)


def test_serve_config_tables_and_the_feedback_file_which_replaces_them(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(f'torch_threads = 1\n[feedback.alpha]\n{ALPHA}\n[feedback.beta]\nband_hz = [15, 25]\n'
                      'measure = "power"\nsensors = ["MEG 04*"]\ntypes = ["grad"]\nhistory_s = 0.3\n')
    settings = build_serve_settings(config, stream=["EEG"])
    assert [(s.name, s.band_hz, s.measure, s.history_s) for s in settings.feedback] == [
        ("alpha", (8.0, 12.0), "envelope", 0.4), ("beta", (15.0, 25.0), "power", 0.3)]
    assert settings.feedback[1].where == "feedback.beta"
    feedback = tmp_path / "feedback.toml"
    feedback.write_text(f"[theta]\n{ALPHA.replace('8.0, 12.0', '4, 8')}")
    replaced = build_serve_settings(config, stream=["EEG"], feedback=feedback)
    assert [s.name for s in replaced.feedback] == ["theta"] and replaced.feedback[0].where == "theta"
    assert build_serve_settings(None, stream=["EEG"]).feedback == []


def test_weights_inline_and_from_a_file_relative_to_the_toml(tmp_path):
    (tmp_path / "w").mkdir()
    np.save(tmp_path / "w" / "occipital.npy", np.array([1.0, -1.0, 0.5]))
    (tmp_path / "w" / "two.txt").write_text("0.25\n0.75\n")
    feedback = tmp_path / "feedback.toml"
    feedback.write_text('[a]\nband_hz = [8, 12]\nmeasure = "phase"\nsensors = ["MEG 2111", "MEG 2121", "MEG 2131"]\n'
                        'weights_file = "w/occipital.npy"\n'
                        '[b]\nband_hz = [8, 12]\nmeasure = "phase"\nsensors = ["MEG 2111", "MEG 2121"]\n'
                        'weights_file = "w/two.txt"\n'
                        '[c]\nband_hz = [8, 12]\nmeasure = "phase"\nsensors = ["MEG 2111", "MEG 2121"]\n'
                        'weights = [1, 2]\n')
    signals = read_feedback_file(feedback)
    assert [s.weights for s in signals] == [(1.0, -1.0, 0.5), (0.25, 0.75), (1.0, 2.0)]
    assert all(s.weights_file is None for s in signals)  # read once, when the settings are read


@pytest.mark.parametrize("text, needle", [
    ("[a]\nband_hz = [12, 8]\nmeasure = 'envelope'\ntypes = ['mag']\n", "a.band_hz = [12.0, 8.0] is invalid"),
    ("[a]\nband_hz = [8, 12, 16]\nmeasure = 'envelope'\ntypes = ['mag']\n", "a.band_hz"),
    ("[a]\nband_hz = [8, '12']\nmeasure = 'envelope'\ntypes = ['mag']\n", "a.band_hz[1] = '12' is invalid"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'amplitude'\ntypes = ['mag']\n", "a.measure = 'amplitude' is invalid"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'envelope'\ntypes = ['axial']\n", "a.types"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'envelope'\nsensors = []\n", "a.sensors"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'envelope'\n", "a: say which sensors"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'envelope'\ntypes = ['mag']\nhistory_s = 5\n", "a.history_s = 5.0 is invalid"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'envelope'\ntypes = ['mag']\nband = 1\n", "unknown key a.band;"),
    ("[a]\nmeasure = 'envelope'\ntypes = ['mag']\n", "missing key a.band_hz"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'phase'\nweights = [0, 0]\nsensors = ['MEG 2111', 'MEG 2121']\n", "a.weights"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'phase'\nweights = [1]\nweights_file = 'w.npy'\ntypes = ['mag']\n",
     "a: give weights or weights_file, not both"),
    ("[a]\nband_hz = [8, 12]\nmeasure = 'phase'\nweights_file = 'missing.npy'\n", "a.weights_file = 'missing.npy': no such file"),
    ("a = 1\n", "a = 1 is invalid: expected a table [a]"),
    ("", "no signal"),
])
def test_a_bad_feedback_file_names_the_file_and_the_key(tmp_path, text, needle):
    path = tmp_path / "feedback.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as raised:
        read_feedback_file(path)
    assert str(raised.value).startswith(f"feedback file {path}: ")
    assert needle in str(raised.value)


def test_a_bad_table_in_the_serve_config_names_its_section_path(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text("[feedback.alpha]\nband_hz = [8, 12]\nmeasure = 'phase'\ntypes = ['mag']\nhistory_s = 0\n")
    with pytest.raises(SettingsError, match=r"serve config .*: feedback\.alpha\.history_s = 0\.0 is invalid"):
        build_serve_settings(config, stream=["EEG"])
    config.write_text("[other]\nx = 1\n")
    with pytest.raises(SettingsError, match="unknown key 'other'"):
        build_serve_settings(config, stream=["EEG"])


def test_signal_names_are_unique():
    signal = FeedbackSignalSettings("a", (8, 12), "envelope", types=("mag",))
    with pytest.raises(SettingsError, match="feedback"):
        ServeSettings(streams=["EEG"], feedback=[signal, signal]).validate()
