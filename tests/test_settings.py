"""brainformer.settings: the training TOML schema, defaults and error messages."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.settings import DataSettings, ExperimentSettings, SettingsError, TrainingSettings, load_settings

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    settings = load_settings(None)
    assert settings == ExperimentSettings()
    assert settings.model == {}
    assert settings.data == DataSettings(
        split=0.75, validation_fraction=0.2, settle_s=1.0, train_hop_samples=32, eval_hop_samples=None, tokenize=False
    )
    assert settings.training == TrainingSettings()
    assert settings.source is None


def test_full_file_is_read_and_typed(tmp_path):
    path = write(
        tmp_path,
        """
[model]
d_model = 32
window_samples = 128
patch_len = 16
highpass_hz = 1
notch_hz = [50.0, 100.0]

[data]
split = 0.8
settle_s = 0          # an integer where seconds are expected is fine
eval_hop_samples = 64
tokenize = true

[training]
epochs = 3
learning_rate = 3e-4
ridge_alphas = [1, 10, 100.0]
init_skip_from_ridge = false
""",
    )
    settings = load_settings(path)
    assert settings.source == path
    assert settings.model == {"d_model": 32, "window_samples": 128, "patch_len": 16, "highpass_hz": 1, "notch_hz": [50.0, 100.0]}
    assert settings.data.split == 0.8 and settings.data.settle_s == 0.0 and isinstance(settings.data.settle_s, float)
    assert settings.data.eval_hop_samples == 64 and settings.data.tokenize is True
    assert settings.data.validation_fraction == 0.2  # default kept
    assert settings.training.epochs == 3 and settings.training.learning_rate == 3e-4
    assert settings.training.ridge_alphas == (1.0, 10.0, 100.0)
    assert settings.training.init_skip_from_ridge is False
    # The model section is valid BrainformerConfig input.
    assert BrainformerConfig(**settings.model).d_model == 32
    # Round trip through to_dict.
    assert dataclasses.asdict(DataSettings(**settings.to_dict()["data"])) == dataclasses.asdict(settings.data)
    assert TrainingSettings(**settings.to_dict()["training"]) == settings.training


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[data]\nspilt = 0.5\n", r"unknown key data\.spilt; allowed keys: split, "),
        ("[training]\nepoch = 3\n", r"unknown key training\.epoch"),
        ("[optimizer]\nlr = 1\n", r"unknown section \[optimizer\]"),
        ('[data]\nsplit = "0.5"\n', r"data\.split = '0\.5' is invalid: expected a number"),
        ("[data]\nsplit = 1.5\n", r"data\.split = 1\.5 is invalid: expected a fraction strictly between 0 and 1"),
        ("[data]\ntokenize = 1\n", r"data\.tokenize = 1 is invalid: expected true or false"),
        ("[training]\nepochs = true\n", r"training\.epochs = True is invalid: expected an integer"),
        ("[training]\nepochs = 2.5\n", r"training\.epochs = 2\.5 is invalid: expected an integer"),
        ("[training]\nbatch_size = 0\n", r"training\.batch_size = 0 is invalid"),
        ("[training]\nridge_alphas = [1, -1]\n", r"training\.ridge_alphas = \[1\.0, -1\.0\] is invalid"),
        ('[training]\nridge_alphas = "1"\n', r"training\.ridge_alphas = '1' is invalid: expected a list of numbers"),
        ("[model]\nd_modle = 32\n", r"\[model\] .*unknown argument.*d_modle"),
        ("[model]\npatch_len = 7\n", r"\[model\] .*patch_len"),
        ("[model]\nmeg_std = [1.0]\n", r"model\.meg_std: scaling statistics are fitted"),
        ("data = 3\n", r"\[data\] must be a table"),
        ("[data\nsplit = 0.5\n", r"not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_section_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match=r"nope\.toml: settings file not found"):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_validated_when_built_in_code_and_frozen():
    with pytest.raises(SettingsError, match=r"data\.validation_fraction = 1\.0"):
        DataSettings(validation_fraction=1.0)
    with pytest.raises(SettingsError, match=r"training\.warmup_ratio"):
        TrainingSettings(warmup_ratio=-0.1)
    settings = DataSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.split = 0.5  # type: ignore[misc]
    assert dataclasses.replace(settings, split=0.5).split == 0.5


@pytest.mark.parametrize("name", ["train-sample.toml", "train-sample-lowdelay.toml", "train-sim.toml", "train-sim-gain.toml"])
def test_repository_train_configs_reach_the_settings_and_the_model_config(name):
    """Every key the committed config sets arrives, with its value, in the settings and in the
    model config (none dropped, renamed or defaulted), and the rest keep their defaults. TOML has
    no null: "none" in [model] arrives as None."""
    import tomllib

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return None if value == "none" else value

    path = REPO / "configs" / name
    raw = tomllib.loads(path.read_text())
    settings = load_settings(path)
    config = BrainformerConfig(**settings.model)
    assert settings.model == {key: plain(value) for key, value in raw["model"].items()}
    for key, value in raw["model"].items():
        assert plain(getattr(config, key)) == plain(value), key
    for section, values, defaults in (
        ("data", settings.data, DataSettings()), ("training", settings.training, TrainingSettings()),
    ):
        for field in dataclasses.fields(values):
            expected = raw[section].get(field.name, getattr(defaults, field.name))
            assert plain(getattr(values, field.name)) == plain(expected), f"{section}.{field.name}"


# ----------------------------------------------------------------------------------------------
# One float rule for both settings systems (training TOML and the serve daemon's)
# ----------------------------------------------------------------------------------------------
def test_serve_settings_accept_inf_only_where_it_means_never(tmp_path):
    from brainformer.settings import SERVE_INFINITE_OK, ServeSettings, build_serve_settings

    settings = ServeSettings(streams=["EEG"], **{key: math.inf for key in SERVE_INFINITE_OK}).validate()
    assert all(getattr(settings, key) == math.inf for key in SERVE_INFINITE_OK)
    for key in ("warmup_s", "pull_timeout_s"):
        path = tmp_path / f"{key}.toml"
        path.write_text(f"{key} = inf\n")
        with pytest.raises(SettingsError, match=rf"serve config .*{key}\.toml: {key} = inf is invalid"):
            build_serve_settings(path, stream=["EEG"])
    path = tmp_path / "nan.toml"
    path.write_text("duration_s = nan\n")
    with pytest.raises(SettingsError, match=r"nan\.toml: duration_s = nan is invalid"):
        build_serve_settings(path, stream=["EEG"])


def test_none_in_the_model_section_is_a_null_and_still_validated(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[model]\nlowpass_hz = "none"\ntarget_band_hz = [4.0, "None"]\n')
    settings = load_settings(path)
    assert settings.model == {"lowpass_hz": None, "target_band_hz": [4.0, None]}
    path.write_text('[model]\nd_model = "none"\n')
    with pytest.raises(SettingsError, match="d_model"):
        load_settings(path)


def test_training_numbers_must_be_finite():
    with pytest.raises(SettingsError, match=r"training\.learning_rate = inf is invalid"):
        TrainingSettings(learning_rate=math.inf)


def test_one_toml_reader_names_the_file(tmp_path):
    from brainformer.settings import build_serve_settings

    with pytest.raises(SettingsError, match=r"serve config .*nope\.toml: settings file not found"):
        build_serve_settings(tmp_path / "nope.toml", stream=["EEG"])
    bad = tmp_path / "bad.toml"
    bad.write_text("streams = [\n")
    with pytest.raises(SettingsError, match=r"serve config .*bad\.toml: not valid TOML"):
        build_serve_settings(bad)
