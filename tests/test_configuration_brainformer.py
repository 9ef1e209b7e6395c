"""BrainformerConfig: defaults, validation, serialisation, Auto registration."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import json
import math
import subprocess
import sys

import mne
import numpy as np
import pytest
from transformers import AutoConfig

import brainformer
from brainformer import BrainformerConfig
from brainformer import configuration_brainformer
from brainformer.config_fields import FIELD_NAMES, BrainformerFields


def test_defaults_follow_the_contract():
    config = BrainformerConfig()
    assert config.model_type == "brainformer"
    assert config.eeg_channel_names == [f"EEG {i:03d}" for i in range(1, 61)]
    assert len(config.meg_channel_names) == len(config.meg_channel_types) == 306
    assert config.meg_channel_types.count("mag") == 102 and config.meg_channel_types.count("grad") == 204
    assert config.sfreq_hz == 600.614990234375
    assert (config.window_samples, config.hop_samples) == (256, 16)
    assert config.patch_len == 64 and config.n_segments == 4
    assert (config.d_model, config.n_heads, config.n_layers, config.d_ff, config.router_dim) == (64, 4, 1, 128, 10)
    assert config.dropout == 0.1 and config.position_embedding == "learned"
    assert (config.head, config.loss, config.huber_delta) == ("regression", "mse", 1.0)
    assert (config.n_quantization_levels, config.quantization_clip, config.skip_lags) == (255, 4.0, 0)
    assert (config.highpass_hz, config.lowpass_hz, config.filter_order) == (1.0, 40.0, 4)
    assert (config.notch_hz, config.notch_quality, config.eeg_reference) == ([60.0], 30.0, "average")
    assert config.eeg_mean is config.eeg_std is config.meg_mean is config.meg_std is None


def test_default_meg_layout_is_the_bundled_recordings(sample_fif):
    info = mne.io.read_info(sample_fif, verbose=False)
    meg_picks = mne.pick_types(info, meg=True)
    eeg_picks = mne.pick_types(info, meg=False, eeg=True)
    config = BrainformerConfig()
    assert config.meg_channel_names == [info["ch_names"][i] for i in meg_picks]
    assert config.meg_channel_types == [mne.channel_type(info, i) for i in meg_picks]
    assert config.eeg_channel_names == [info["ch_names"][i] for i in eeg_picks]
    assert config.sfreq_hz == info["sfreq"]


def test_derived_properties():
    config = BrainformerConfig(
        eeg_channel_names=[f"EEG {i:03d}" for i in range(1, 71)], window_samples=128, patch_len=8,
        n_quantization_levels=99,
    )
    assert (config.n_eeg_channels, config.n_meg_channels, config.n_segments) == (70, 306, 16)
    assert config.vocab_size == 102
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    with pytest.raises(AttributeError):
        config.n_segments = 3


BAD_VALUES = [
    ({"window_samples": 0}, "window_samples"),
    ({"window_samples": 256.0}, "window_samples"),
    ({"patch_len": 24}, "patch_len"),
    ({"patch_len": 0}, "patch_len"),
    ({"hop_samples": 257}, "hop_samples"),
    ({"n_heads": 3}, "n_heads"),
    ({"n_layers": True}, "n_layers"),
    ({"d_model": -1}, "d_model"),
    ({"router_dim": 0}, "router_dim"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"dropout": math.nan}, "dropout"),
    ({"sfreq_hz": math.nan}, "sfreq_hz"),
    ({"sfreq_hz": math.inf}, "sfreq_hz"),
    ({"sfreq_hz": 0}, "sfreq_hz"),
    ({"head": "classification"}, "head"),
    ({"loss": "l1"}, "loss"),
    ({"position_embedding": "rotary"}, "position_embedding"),
    ({"huber_delta": math.nan}, "huber_delta"),
    ({"quantization_clip": 0.0}, "quantization_clip"),
    ({"n_quantization_levels": 1}, "n_quantization_levels"),
    ({"skip_lags": -1}, "skip_lags"),
    ({"skip_lags": 300}, "skip_lags"),
    ({"highpass_hz": 400.0}, "highpass_hz"),
    ({"highpass_hz": 50.0}, "highpass_hz"),  # above the 40 Hz low-pass
    ({"lowpass_hz": math.nan}, "lowpass_hz"),
    ({"notch_hz": [60.0, math.nan]}, "notch_hz[1]"),
    ({"notch_hz": "60"}, "notch_hz"),
    ({"notch_quality": 0}, "notch_quality"),
    ({"filter_order": 0}, "filter_order"),
    ({"eeg_reference": "mastoids"}, "eeg_reference"),
    ({"eeg_channel_names": []}, "eeg_channel_names"),
    ({"eeg_channel_names": ["EEG 001", "EEG 001"]}, "eeg_channel_names"),
    ({"eeg_channel_names": "EEG 001"}, "eeg_channel_names"),
    ({"meg_channel_types": ["mag"] * 305}, "meg_channel_types"),
    ({"meg_channel_types": ["eeg"] * 306}, "meg_channel_types"),
    ({"meg_channel_names": ["MEG 0111", "MEG 0112"]}, "meg_channel_types"),  # names without types
    ({"eeg_mean": [0.0] * 59}, "eeg_mean"),
    ({"eeg_std": [1.0] * 59 + [math.nan]}, "eeg_std[59]"),
    ({"eeg_std": [1.0] * 59 + [-1.0]}, "eeg_std[59]"),
    ({"meg_mean": [0.0] * 305 + [math.inf]}, "meg_mean[305]"),
    ({"meg_std": [1.0] * 10}, "meg_std"),
]


@pytest.mark.parametrize("make", [BrainformerConfig, BrainformerFields], ids=["config", "fields"])
@pytest.mark.parametrize(("kwargs", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_bad_values_raise_naming_the_field(kwargs, field, make):
    with pytest.raises(ValueError, match=r"BrainformerConfig\." + field.replace("[", r"\[").replace("]", r"\]")) as info:
        make(**kwargs)
    assert "expected" in str(info.value)


@pytest.mark.parametrize("make", [lambda **kw: BrainformerConfig(**kw), lambda **kw: BrainformerFields.from_dict(kw)], ids=["config", "fields"])
def test_unknown_keyword_is_refused(make):
    with pytest.raises(ValueError, match="unknown argument.*d_modle"):
        make(d_modle=32)
    with pytest.raises(ValueError, match="model_type"):
        make(model_type="bert")


def test_zero_std_marks_a_flat_channel_and_is_allowed():
    config = BrainformerConfig(eeg_std=[0.0] + [1e-5] * 59, eeg_mean=[0] * 60)
    assert config.eeg_std[0] == 0.0 and config.eeg_mean == [0.0] * 60


def test_numpy_values_are_accepted_and_stored_as_plain_json_types(tmp_path):
    config = BrainformerConfig(
        eeg_mean=np.zeros(60, dtype=np.float32), eeg_std=np.full(60, 2.5, dtype=np.float32),
        window_samples=np.int64(128), sfreq_hz=np.float32(500.0), notch_hz=np.array([50.0, 100.0]),
    )
    assert config.eeg_std == [2.5] * 60 and type(config.eeg_std[0]) is float
    assert type(config.window_samples) is int and config.sfreq_hz == 500.0 and config.notch_hz == [50.0, 100.0]
    config.save_pretrained(tmp_path)
    assert BrainformerConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_optional_filters_can_be_disabled():
    config = BrainformerConfig(highpass_hz=None, lowpass_hz=None, notch_hz=None)
    assert (config.highpass_hz, config.lowpass_hz, config.notch_hz) == (None, None, [])


def test_json_round_trip_keeps_every_field_and_nothing_else(tmp_path):
    config = BrainformerConfig(
        eeg_channel_names=["C3", "C4", "Cz"], meg_channel_names=["MEG 0111", "MEG 0112"],
        meg_channel_types=["mag", "grad"], window_samples=64, patch_len=8, head="tokens", skip_lags=4,
        eeg_mean=[0.1, 0.2, 0.3], eeg_std=[1.0, 2.0, 0.0], meg_std=[1e-12, 1e-11], sfreq_hz=250.0,
    )
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    fields = {
        "eeg_channel_names", "meg_channel_names", "meg_channel_types", "sfreq_hz", "window_samples",
        "hop_samples", "patch_len", "d_model", "n_heads", "n_layers", "d_ff", "router_dim", "dropout",
        "position_embedding", "final_norm", "head", "loss", "huber_delta", "n_quantization_levels", "quantization_clip",
        "skip_lags", "gain_filters", "gain_filter_past_samples", "gain_filter_lookahead_samples", "envelope_filters",
        "envelope_filter_samples", "hop_lookahead_past_samples", "hop_lookahead_rank", "highpass_hz", "lowpass_hz", "filter_order", "notch_hz", "notch_quality", "target_phase",
        "target_band_hz", "target_filter_order",
        "eeg_reference", "eeg_mean", "eeg_std", "meg_mean", "meg_std", "eeg_positions_m", "eeg_fiducials_m",
    }
    assert set(stored) == fields | {"model_type", "transformers_version"}
    loaded = BrainformerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.eeg_std == [1.0, 2.0, 0.0] and loaded.head == "tokens"


def test_config_json_with_a_typo_is_refused(tmp_path):
    BrainformerConfig().save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["windw_samples"] = 128
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="windw_samples"):
        BrainformerConfig.from_pretrained(tmp_path)


def test_auto_config_after_import(tmp_path):
    assert brainformer.BrainformerConfig is BrainformerConfig
    BrainformerConfig(patch_len=8).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is BrainformerConfig and loaded.patch_len == 8
    assert type(AutoConfig.for_model("brainformer")) is BrainformerConfig


def test_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(BrainformerConfig, "BrainformerConfig", globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 3


def test_default_channel_constants_are_consistent():
    names = configuration_brainformer.DEFAULT_MEG_CHANNEL_NAMES
    types = configuration_brainformer.DEFAULT_MEG_CHANNEL_TYPES
    assert len(set(names)) == 306
    assert all(n.endswith("1") == (t == "mag") for n, t in zip(names, types))


# --- the torch-free fields --------------------------------------------------------------------


def test_fields_have_the_configs_defaults_and_derived_values():
    fields, config = BrainformerFields(), BrainformerConfig()
    assert fields.to_dict() == {name: getattr(config, name) for name in FIELD_NAMES}
    assert set(FIELD_NAMES) == set(inspect.signature(BrainformerConfig).parameters) - {"kwargs"}
    for name in ("n_eeg_channels", "n_meg_channels", "n_segments", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(fields, name) == getattr(config, name), name
    assert BrainformerFields.from_config(config) == fields and BrainformerConfig(**fields.to_dict()).to_dict() == config.to_dict()


def test_fields_are_read_only_and_replace_validates_again():
    fields = BrainformerFields(window_samples=128, patch_len=16, notch_hz=np.array([50.0]))
    assert fields.notch_hz == (50.0,) and type(fields.eeg_channel_names) is tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        fields.d_model = 32
    wider = fields.replace(d_model=128, n_heads=8)
    assert (wider.d_model, fields.d_model, wider.n_segments) == (128, 64, 8)
    with pytest.raises(ValueError, match=r"BrainformerConfig\.patch_len = 24"):
        fields.replace(patch_len=24)


def test_fields_json_loads_as_the_same_brainformer_config(tmp_path):
    fields = BrainformerFields(eeg_channel_names=["Cz", "Pz"], eeg_mean=[0.0, 1.0], eeg_std=[1.0, 0.0], lowpass_hz=None)
    fields.to_json_file(tmp_path / "config.json")
    loaded = BrainformerConfig.from_json_file(str(tmp_path / "config.json"))
    assert loaded.to_dict() == BrainformerConfig(**fields.to_dict()).to_dict()
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(loaded.to_json_string())
    loaded.save_pretrained(tmp_path / "model")
    assert BrainformerFields.from_json_file(tmp_path / "model" / "config.json") == fields


def test_fields_module_never_imports_torch_or_transformers():
    """Checked in a fresh interpreter: this test process has imported both long ago."""
    code = (
        "import sys; from brainformer.config_fields import BrainformerFields; BrainformerFields(sfreq_hz=1100.0); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
