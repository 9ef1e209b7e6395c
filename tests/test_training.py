"""brainformer.training and `brainformer train` (brainformer.commands.train): window datasets and
augmentation, ridge-initialised skip path, the command."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import mne
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainformer.cli import app
from brainformer.data import PreparedRecording, build_dataset, prepare_recordings
from brainformer.evaluation import fit_ridge
from brainformer.model_dir import load_model
from brainformer.settings import DataSettings, ExperimentSettings, TrainingSettings, load_settings
from brainformer.training import (
    ContinuousWindows,
    _training_arguments,
    build_model,
    init_skip_from_ridge,
    initial_model,
    load_training_data,
)

TINY_MODEL_TOML = """
[model]
window_samples = 64
hop_samples = 16
patch_len = 16
d_model = 8
n_heads = 2
d_ff = 16
router_dim = 2
skip_lags = 5

[data]
settle_s = 0.5
train_hop_samples = 64

[training]
epochs = 1
batch_size = 16
loss_last_samples = 16
time_shift_samples = 8
noise_std = 0.1
ridge_lag_step_samples = 2
skip_learning_rate = 0.0
device = "cpu"
"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread; on a loaded 2-core machine two threads wait on
    each other (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_recording(n: int = 400, n_eeg: int = 3, n_meg: int = 2) -> PreparedRecording:
    """Rows whose values encode their index, so a window's position can be read back."""
    rows = np.arange(n, dtype=np.float32)[:, None]
    return PreparedRecording(
        name="toy", source="toy.fif", eeg=np.repeat(rows, n_eeg, axis=1), meg=np.repeat(-rows, n_meg, axis=1),
        times=np.arange(n) / 100.0, sfreq_hz=100.0, parts={"train": (10, 250), "validation": (260, 320), "test": (330, 400)},
    )


# --- window datasets -------------------------------------------------------------------------


def test_continuous_windows_shift_inside_the_part_and_add_noise():
    torch.manual_seed(0)
    rec = toy_recording()
    plain = ContinuousWindows([rec], "train", window_samples=32, hop_samples=16)
    assert [start for _, start, _, _ in plain.index] == list(range(10, 250 - 32 + 1, 16))
    item = plain[0]
    assert item["input_values"].shape == (32, 3) and item["labels"].shape == (32, 2)
    np.testing.assert_array_equal(item["input_values"][:, 0].numpy(), np.arange(10, 42))
    shifted = ContinuousWindows([rec], "train", 32, 16, max_shift=8)
    first_rows = {int(shifted[i]["input_values"][0, 0]) for i in range(len(shifted)) for _ in range(5)}
    assert min(first_rows) >= 10 and max(first_rows) + 32 <= 250  # never outside the train part
    assert len(first_rows - set(range(10, 250, 16))) > 0  # starts off the hop grid occur
    for i in range(len(shifted)):
        window = shifted[i]
        # Inputs and labels stay aligned sample by sample.
        np.testing.assert_array_equal(window["input_values"][:, 0].numpy(), -window["labels"][:, 0].numpy())
    noisy = ContinuousWindows([rec], "train", 32, 16, noise_std=0.5)[0]
    difference = noisy["input_values"] - item["input_values"]
    assert 0.3 < float(difference.std()) < 0.7
    np.testing.assert_array_equal(noisy["labels"].numpy(), item["labels"].numpy())  # labels stay clean


def test_windows_of_a_prepared_dataset_are_read_from_disk_with_the_same_augmentation(tmp_path):
    """A dataset directory is memory-mapped; shifted windows are cut from the continuous rows."""
    from brainformer.configuration_brainformer import BrainformerConfig
    from brainformer.data import PreparedData

    torch.manual_seed(0)
    rec = toy_recording()
    config = BrainformerConfig(
        eeg_channel_names=["E1", "E2", "E3"], meg_channel_names=["MEG 0111", "MEG 0112"], meg_channel_types=["mag", "grad"],
        sfreq_hz=100.0, window_samples=32, patch_len=16, hop_samples=16, notch_hz=[], lowpass_hz=None,
    )
    loaded = build_dataset(PreparedData(config, DataSettings(train_hop_samples=16), [rec]), tmp_path / "toy")
    stored = loaded.recordings[0]
    assert isinstance(stored.eeg, np.memmap) and stored.parts == rec.parts
    windows = ContinuousWindows(loaded.recordings, "train", 32, 16, max_shift=12)
    seen_first_rows = set()
    for i in range(len(windows)):
        for _ in range(4):
            window = windows[i]
            first = int(window["input_values"][0, 0])
            seen_first_rows.add(first)
            # A shifted window is exactly the continuous recording from its new start, inside the part.
            assert 10 <= first and first + 32 <= 250
            np.testing.assert_array_equal(window["input_values"][:, 0].numpy(), np.arange(first, first + 32))
            np.testing.assert_array_equal(window["labels"][:, 1].numpy(), -np.arange(first, first + 32))
    assert len(seen_first_rows - set(range(10, 250, 16))) > 3  # off the hop grid


# --- ridge-initialised skip path -------------------------------------------------------------


@pytest.fixture(scope="module")
def short_fif(sample_fif, tmp_path_factory) -> Path:
    """The first 8 s of the real recording."""
    path = tmp_path_factory.mktemp("training") / "short_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, 8).save(path, verbose="error")
    return path


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory) -> tuple[Path, ExperimentSettings]:
    from brainformer.settings import load_settings

    path = tmp_path_factory.mktemp("settings") / "tiny.toml"
    path.write_text(TINY_MODEL_TOML)
    return path, load_settings(path)


@pytest.fixture(scope="module")
def short_data(short_fif, tiny_settings):
    """The training data of the tiny settings on the short recording (prepared once)."""
    return load_training_data([short_fif], tiny_settings[1])


def test_skip_path_starts_as_the_lagged_ridge_fit_on_the_train_part(short_data, tiny_settings):
    _, settings = tiny_settings
    data = short_data
    model = build_model(data.config, seed=0)
    fit = init_skip_from_ridge(model, data, settings)
    assert fit.lags == (0, 2, 4)
    rec = data.prepared.recordings[0]
    start, stop = rec.parts["train"]
    # The same fit as the baseline procedure on the model's train rows (validation part unseen).
    reference = fit_ridge(rec.eeg, rec.meg, (0, 2, 4), start, stop, relative_alphas=fit.relative_alphas)
    np.testing.assert_allclose(fit.weight, reference.weight, rtol=1e-6, atol=1e-8)
    # The model starts as exactly that map: windows' newest samples equal the ridge prediction.
    model.eval()
    end = rec.parts["test"][0] + 200
    window = torch.from_numpy(np.ascontiguousarray(rec.eeg[end - 64 : end]))[None]
    with torch.no_grad():
        predicted = model(input_values=window).predictions[0, -16:].numpy()
    np.testing.assert_allclose(predicted, fit.predict(rec.eeg, end - 16, end), atol=1e-4)


def test_fine_tuning_starts_from_the_pretrained_transformer_and_this_data_ridge(short_data, tiny_settings):
    _, settings = tiny_settings
    fresh, ridge = initial_model(short_data, settings)
    pretrained = build_model(short_data.config, seed=123)
    with torch.no_grad():
        pretrained.projection.weight.normal_()  # a transformer that learned something elsewhere
    start, _ = initial_model(short_data, settings, pretrained=pretrained)
    for name, tensor in start.state_dict().items():
        # The skip path is this data's ridge fit; every other weight is the pretrained one.
        expected = fresh.state_dict()[name] if name.startswith("linear_skip.") else pretrained.state_dict()[name]
        assert torch.equal(tensor, expected), name
    assert ridge is not None


def test_fine_tuning_refuses_another_architecture(short_data, tiny_settings):
    from brainformer.training import TrainingError

    _, settings = tiny_settings
    other = build_model(short_data.config.__class__(**{**short_data.config.to_dict(), "d_ff": 2 * short_data.config.d_ff}), seed=0)
    with pytest.raises(TrainingError, match=r"pretrained weight .*fc_in.weight has shape"):
        initial_model(short_data, settings, pretrained=other)


def test_skip_init_from_a_prepared_dataset_matches_the_continuous_fit(short_fif, tiny_settings, tmp_path):
    _, settings = tiny_settings
    prepared = prepare_recordings([short_fif], settings)
    dataset_dir = tmp_path / "dataset"
    build_dataset(prepare_recordings([short_fif], settings), dataset_dir)
    from_dataset = load_training_data([dataset_dir], settings)
    assert isinstance(from_dataset.prepared.recordings[0].eeg, np.memmap) and len(from_dataset.train) > 0
    model = build_model(from_dataset.config, seed=0)
    fit = init_skip_from_ridge(model, from_dataset, settings)
    rec = prepared.recordings[0]
    start, stop = rec.parts["train"]
    # The continuous rows are on disk: the same fit as on the in-memory train part.
    reference = fit_ridge(rec.eeg, rec.meg, fit.lags, start, stop, relative_alphas=fit.relative_alphas)
    np.testing.assert_allclose(fit.weight, reference.weight, rtol=1e-6, atol=1e-8)
    # Model settings that change the data cannot be applied to an existing dataset.
    from brainformer.training import TrainingError

    other_window = ExperimentSettings(model=dict(settings.model, window_samples=128, d_model=16), training=settings.training)
    with pytest.raises(TrainingError, match=r"model.window_samples = 128 \(dataset: 64\); prepare it again"):
        load_training_data([dataset_dir], other_window)
    wider = load_training_data([dataset_dir], ExperimentSettings(model=dict(settings.model, d_model=16), training=settings.training))
    assert wider.config.d_model == 16 and wider.config.eeg_std == from_dataset.config.eeg_std
    # The dataset's own parts and hops hold, whatever the [data] section of the training config.
    other_data = ExperimentSettings(model=settings.model, data=DataSettings(split=0.5, train_hop_samples=8), training=settings.training)
    assert len(load_training_data([dataset_dir], other_data).train) == len(from_dataset.train)
    tokens = load_training_data([dataset_dir], ExperimentSettings(model=dict(settings.model, head="tokens"), training=settings.training))
    assert tokens.train[0]["labels"].dtype == torch.int64  # one dataset serves both heads


# --- `brainformer train` ---------------------------------------------------------------------


def read_model_dir_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def assert_trained_from_the_ridge_start(
    model, data, settings: ExperimentSettings, output: str, reported_abs: float = 2e-4
) -> None:
    """`model` (written by `brainformer train` with `settings` on `data`) kept the frozen ridge skip
    path of its seeded start, trained the transformer on top, and scores the reported test loss
    (printed to 4 decimals: within `reported_abs`)."""
    start, ridge = initial_model(data, settings)
    assert ridge is not None and settings.training.skip_learning_rate == 0
    assert torch.equal(model.linear_skip.weight, start.linear_skip.weight)  # frozen: the ridge map
    assert torch.equal(model.linear_skip.bias, start.linear_skip.bias)
    initial = dict(start.named_parameters())
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, initial[name])}
    # The output projection starts at zero (the model starts as the ridge map) and must have moved.
    assert "projection.weight" in changed
    assert not any(name.startswith("linear_skip") for name in changed)
    last = settings.training.loss_last_samples
    inputs = torch.stack([data.test[i]["input_values"] for i in range(len(data.test))])
    labels = torch.stack([data.test[i]["labels"] for i in range(len(data.test))])[:, -last:]
    with torch.no_grad():
        predictions = model.eval()(input_values=inputs).predictions[:, -last:]
    mse = float(torch.nn.functional.mse_loss(predictions, labels))
    # Better than the trivial zero predictor (the scaled MEG's mean is ~0: its MSE is mean(y²)).
    assert mse < float(labels.pow(2).mean()), mse
    reported = float(re.search(r"test loss ([0-9.]+)", output).group(1))
    assert reported == pytest.approx(mse, abs=reported_abs)  # the reported loss: the newest samples' MSE


def test_train_command_writes_a_loadable_model_dir(short_fif, short_data, tiny_settings, tmp_path):
    config_path, settings = tiny_settings
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--data", str(short_fif), "--out", str(out), "--config", str(config_path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    # checkpoints removed; the skip path's statistics next to the weights
    assert read_model_dir_files(out) == ["config.json", "linear_path_statistics.safetensors", "model.safetensors"]
    assert "validation part" in result.output and "test part" in result.output and "lagged ridge" in result.output
    model = load_model(out)
    config = json.loads((out / "config.json").read_text())
    assert len(config["eeg_std"]) == 60 and len(config["meg_std"]) == 306 and config["skip_lags"] == 5
    seeded = dataclasses.replace(settings, training=dataclasses.replace(settings.training, seed=3))
    assert_trained_from_the_ridge_start(model, short_data, seeded, result.output)


def test_train_from_a_prepared_dataset(short_fif, tiny_settings, tmp_path):
    config_path, settings = tiny_settings
    dataset_dir = tmp_path / "dataset"
    build_dataset(prepare_recordings([short_fif], settings), dataset_dir)
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--data", str(dataset_dir), "--out", str(out), "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert read_model_dir_files(out) == ["config.json", "linear_path_statistics.safetensors", "model.safetensors"]
    # The source recording still exists, so the scores next to the baselines are printed.
    assert "test part" in result.output
    assert_trained_from_the_ridge_start(load_model(out), load_training_data([dataset_dir], settings), settings, result.output)


# --- several recordings ------------------------------------------------------------------------

#: The known map of `two_recordings`: MEG(t) = EEG(t) @ MAP_LAG0 + EEG(t - 2) @ MAP_LAG2, in volts → T, T/m.
MAP_LAG0 = np.array([[0.9, -0.4, 0.3], [0.2, 0.8, -0.5], [-0.6, 0.1, 0.7], [0.5, -0.7, -0.2]])
MAP_LAG2 = np.array([[0.3, 0.5, -0.2], [-0.4, 0.1, 0.6], [0.2, -0.3, 0.1], [-0.1, 0.4, 0.5]])
MEG_GAINS = np.array([1e-7, 1e-6, 1e-6])  # volts of EEG → tesla (mag) and T/m (grads)
MULTI_TOML = """
[model]
window_samples = 32
hop_samples = 8
patch_len = 8
d_model = 8
n_heads = 2
d_ff = 16
router_dim = 2
dropout = 0.0
skip_lags = 5
eeg_reference = "none"

[data]
settle_s = 0.5
train_hop_samples = 32

[training]
epochs = 1
batch_size = 16
loss_last_samples = 8
ridge_lag_step_samples = 2
skip_learning_rate = 0.0
device = "cpu"
"""


def write_recording(path: Path, silent_eeg: int, seed: int, seconds: float = 40.0, sfreq: float = 200.0) -> Path:
    """A FIF file: 4 EEG channels of white noise (~10 µV) but channel `silent_eeg`, which is zero,
    and 3 MEG channels (a magnetometer, two gradiometers) following the known map plus 2 % noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sfreq)
    eeg = 1e-5 * rng.standard_normal((n, 4))
    eeg[:, silent_eeg] = 0.0
    meg = eeg @ MAP_LAG0
    meg[2:] += eeg[:-2] @ MAP_LAG2
    meg = meg * MEG_GAINS
    meg += 0.02 * meg.std(axis=0) * rng.standard_normal(meg.shape)
    info = mne.create_info([f"EEG 00{i}" for i in range(1, 5)] + ["MEG 0111", "MEG 0112", "MEG 0113"], sfreq,
                           ["eeg"] * 4 + ["mag", "grad", "grad"])
    mne.io.RawArray(np.hstack([eeg, meg]).T, info, verbose="error").save(path, verbose="error")
    return path


def test_training_on_several_recordings_fits_one_ridge_skip_path_on_all_of_them(tmp_path):
    """`brainformer train --data A --data B`: each recording has one silent EEG channel that the other
    drives, so the known map's row of that channel can only be learned from the other recording.
    The skip path (a ridge fit on both train parts, frozen) is the whole known map, windows come
    from both, and the model predicts both held-out parts."""
    config_path = tmp_path / "multi.toml"
    config_path.write_text(MULTI_TOML)
    files = [write_recording(tmp_path / "rec_a_raw.fif", silent_eeg=3, seed=1),
             write_recording(tmp_path / "rec_b_raw.fif", silent_eeg=0, seed=2)]
    out = tmp_path / "model"
    data_args = [arg for path in files for arg in ("--data", str(path))]
    result = CliRunner().invoke(app, ["train", *data_args, "--out", str(out), "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "2 recording(s), 4 EEG → 3 MEG at 200 Hz" in result.output
    for name in ("rec_a_raw", "rec_b_raw"):
        assert f"{name}: validation part" in result.output and f"{name}: test part" in result.output

    settings = load_settings(config_path)
    data = load_training_data(files, settings)
    windows_per_recording = np.bincount(data.train.index[:, 0])
    assert windows_per_recording.tolist() == [windows_per_recording[0]] * 2 and windows_per_recording[0] > 100
    model = load_model(out)
    start, ridge = initial_model(data, settings)
    assert ridge.lags == (0, 2, 4) and torch.equal(model.linear_skip.weight, start.linear_skip.weight)  # frozen
    # The known map in the model's scaled units: x_s = x / σ_eeg, y_s = y / σ_meg (zero means).
    eeg_std, meg_std = np.asarray(data.config.eeg_std), np.asarray(data.config.meg_std)
    taps = model.linear_skip.weight.detach().numpy()  # (n_meg, n_eeg, 5), last tap = lag 0
    for lag, known in ((0, MAP_LAG0), (2, MAP_LAG2), (4, np.zeros_like(MAP_LAG0))):
        expected = eeg_std[:, None] * known * MEG_GAINS / meg_std[None, :]
        np.testing.assert_allclose(taps[:, :, 4 - lag], expected.T, atol=0.03, err_msg=f"lag {lag}")
    # The check can fail: a ridge on one recording alone knows nothing of its silent channel.
    one = data.prepared.recordings[0]
    alone = fit_ridge(one.eeg, one.meg, ridge.lags, *one.parts["train"])
    assert np.abs(alone.as_conv_skip(5)[0][:, 3, :]).max() < 1e-6
    assert np.abs(taps[:, 3, 4]).max() > 0.1

    # Both held-out parts are predicted: the newest samples of each validation window.
    for index, rec in enumerate(data.prepared.recordings):
        rows = [i for i, row in enumerate(data.validation.index) if row[0] == index]
        inputs = torch.stack([data.validation[i]["input_values"] for i in rows])
        labels = torch.stack([data.validation[i]["labels"] for i in rows])[:, -8:]
        with torch.no_grad():
            predicted = model.eval()(input_values=inputs).predictions[:, -8:]
        r2 = 1 - float(((predicted - labels) ** 2).mean() / labels.var(dim=(0, 1), unbiased=False).mean())
        assert r2 > 0.95, (rec.name, r2)


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--report-to", "wandb"], "--report-to wandb needs"),
        (["--report-to", "mlflow"], "--report-to 'mlflow': expected one of none, tensorboard, wandb"),
        (["--epochs", "0"], "epochs"),
        (["--data-missing"], "no such file"),
    ],
)
def test_train_bad_input_exits_2_with_one_line(short_fif, tiny_settings, tmp_path, extra_args, message):
    import importlib.util

    if extra_args == ["--report-to", "wandb"] and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    config_path, _ = tiny_settings
    data = str(tmp_path / "missing_raw.fif") if extra_args == ["--data-missing"] else str(short_fif)
    args = [] if extra_args == ["--data-missing"] else extra_args
    result = CliRunner().invoke(app, ["train", "--data", data, "--out", str(tmp_path / "m"), "--config", str(config_path), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_training_settings_overrides_are_validated():
    from brainformer.settings import SettingsError
    from brainformer.commands.train import _settings_with_overrides

    settings = _settings_with_overrides(None, epochs=3, seed=7)
    assert settings.training.epochs == 3 and settings.training.seed == 7
    with pytest.raises(SettingsError, match="--epochs"):
        _settings_with_overrides(None, epochs=0, seed=None)
    assert TrainingSettings().loss_last_samples == 0


def test_bf16_and_compile_settings_reach_the_training_arguments(tmp_path):
    from brainformer.settings import SettingsError, settings_from_dict

    settings = settings_from_dict({"training": {"bf16": True, "torch_compile": True}})
    args = _training_arguments(settings, tmp_path, "none", has_validation=True, progress=False)
    assert args.bf16 is True and args.torch_compile is True
    plain = _training_arguments(ExperimentSettings(), tmp_path, "none", has_validation=True, progress=False)
    assert plain.bf16 is False and plain.torch_compile is False and plain.ddp_find_unused_parameters is False
    with pytest.raises(SettingsError, match=r"training.bf16 = 'yes' is invalid: expected true or false"):
        settings_from_dict({"training": {"bf16": "yes"}})


def test_the_device_setting_says_where_training_runs(tmp_path):
    """`training.device = "cpu"` keeps training on the CPU where a GPU exists (what the tests
    that compare with CPU runs need); `auto` takes a GPU when there is one; `cuda` without one is
    refused before anything runs."""
    from brainformer.settings import SettingsError, settings_from_dict
    from brainformer.training import TrainingError

    def arguments(device: str):
        settings = settings_from_dict({"training": {"device": device}})
        return _training_arguments(settings, tmp_path, "none", has_validation=True, progress=False)

    pinned = arguments("cpu")
    assert pinned.use_cpu and pinned.device.type == "cpu" and not pinned.dataloader_pin_memory
    assert arguments("auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert arguments("cuda").device.type == "cuda"
    else:
        with pytest.raises(TrainingError, match="training.device = 'cuda', but CUDA is not available on this machine"):
            arguments("cuda")
    with pytest.raises(SettingsError, match="training.device = 'gpu' is invalid: expected auto or cpu or cuda"):
        settings_from_dict({"training": {"device": "gpu"}})


def test_config_keys_written_by_transformers_load_and_typos_do_not(tmp_path):
    """The Trainer writes `use_cache` into the config: a model dir holding it must load."""
    from brainformer.configuration_brainformer import BrainformerConfig

    config = BrainformerConfig(window_samples=64, patch_len=16, d_model=8, n_heads=2, d_ff=16, router_dim=2)
    build_model(config, seed=0).save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["use_cache"] = False
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert load_model(tmp_path).config.window_samples == 64
    stored["use_cahce"] = False
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="use_cahce"):
        load_model(tmp_path)


def test_bundled_default_model_matches_the_committed_training_config():
    """The shipped model dir was written by `train --config configs/train-sample.toml`."""
    from brainformer.model_dir import DEFAULT_MODEL_DIR
    from brainformer.settings import load_settings

    repo = Path(__file__).resolve().parents[1]
    settings = load_settings(repo / "configs" / "train-sample.toml")
    assert sorted(p.name for p in DEFAULT_MODEL_DIR.iterdir()) == [
        "MODEL_CARD.md", "config.json", "linear_path_statistics.safetensors", "model.safetensors"]
    model = load_model("default")
    for key, value in settings.model.items():
        assert getattr(model.config, key) == (list(value) if isinstance(value, tuple) else value), key
    assert model.config.eeg_std is not None and model.config.meg_std is not None
    assert "brainformer train --data brainformer/recordings/test_raw.fif" in (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()


TOKENS_TOML = (
    TINY_MODEL_TOML.replace("skip_lags = 5", 'head = "tokens"\nn_quantization_levels = 15')
    .replace("train_hop_samples = 64", "train_hop_samples = 16")
    .replace("epochs = 1", "epochs = 3\nlearning_rate = 1e-2")
    .replace("skip_learning_rate = 0.0\n", "")
)


@pytest.mark.slow
def test_tokens_head_trains_through_the_command_and_is_scored_by_evaluate(short_fif, tmp_path):
    """`brainformer train` with `head = "tokens"` (teacher forcing, loss on the newest 16 samples)
    from a TOML file, then `brainformer evaluate` on the written model directory."""
    import math

    import torch.nn.functional as F

    from brainformer.settings import load_settings

    config_path = tmp_path / "tokens.toml"
    config_path.write_text(TOKENS_TOML)
    out = tmp_path / "tokens-model"
    result = CliRunner().invoke(app, ["train", "--data", str(short_fif), "--out", str(out), "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.config.head == "tokens" and model.config.n_quantization_levels == 15
    settings = load_settings(config_path)
    data = load_training_data([short_fif], settings)
    inputs = torch.stack([data.test[i]["input_values"] for i in range(len(data.test))])
    labels = torch.stack([data.test[i]["labels"] for i in range(len(data.test))])

    def newest_cross_entropy(m) -> float:
        with torch.no_grad():
            logits = m.eval()(input_values=inputs, labels=labels).logits[:, -16:]
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, -16:].reshape(-1)))

    # Bounds: the seeded initial model has near-zero logits, i.e. ≈ uniform over all 18 token ids
    # (ln 18 = 2.89), above ln 15 = 2.71 (uniform over the levels). Scaled MEG is about N(0, 1);
    # its 15 levels of step 8/14 = 0.57 have entropy ≈ 1.42 + ln(1/0.57) = 1.98 nats, so learning
    # even only the marginal of the levels brings the test cross-entropy below ln 15 - 0.5 = 2.21.
    assert newest_cross_entropy(build_model(model.config, seed=0)) > math.log(15)
    trained = newest_cross_entropy(model)
    assert trained < math.log(15) - 0.5, trained
    # The command's reported test loss is this same cross-entropy on the newest 16 samples.
    assert float(re.search(r"test loss ([0-9.]+)", result.output).group(1)) == pytest.approx(trained, abs=2e-4)

    json_path = tmp_path / "eval.json"
    scored = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--data", str(short_fif), "--json", str(json_path)])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(json_path.read_text())
    # Scored as served (greedy tokens decoded to MEG, newest hop of each window) on all channels.
    assert metrics["model"]["hop_samples"] == 16 and len(metrics["model"]["per_channel"]["r"]) == 306
    # A model that learned (at least) the level marginal generates levels near its mode, the middle
    # level 0.0 of the scaled MEG (mean ≈ 0): about the predictor of the mean, NMSE ≈ 1 (NMSE is
    # the unexplained fraction of the test variance). Levels drawn anywhere in ±4 (variance up to
    # 16/3 ≈ 5.3 against the MEG's ≈ 1) would give an NMSE of several.
    assert metrics["model"]["nmse"] < 1.2, metrics["model"]["nmse"]
