"""Model directories: safe loading, and a clear ModelDirError for every broken directory."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from brainformer import BrainformerConfig, BrainformerForMEGPrediction, BrainformerForMEGTokens, BrainformerModel
from brainformer.model_dir import DEFAULT_MODEL_DIR, ModelDirError, load_model, resolve_model_dir


def tiny_config(**overrides) -> BrainformerConfig:
    fields = dict(
        eeg_channel_names=["C3", "C4", "Cz"], meg_channel_names=["MEG 0111", "MEG 0112", "MEG 0113"],
        meg_channel_types=["mag", "grad", "grad"], sfreq_hz=200.0, window_samples=16, patch_len=4,
        hop_samples=4, d_model=8, n_heads=2, d_ff=16, router_dim=2,
    )
    fields.update(overrides)
    return BrainformerConfig(**fields)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    directory = tmp_path / "model"
    BrainformerForMEGPrediction(tiny_config(skip_lags=2)).save_pretrained(directory)
    return directory


class _CreatesFileWhenUnpickled:
    """Unpickling this runs `open(path, "w")`: proof of whether a loader unpickled a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_resolve_model_dir():
    assert resolve_model_dir("default") == DEFAULT_MODEL_DIR
    assert DEFAULT_MODEL_DIR.name == "default_model" and DEFAULT_MODEL_DIR.parent.name == "brainformer"
    assert resolve_model_dir("some/dir") == Path("some/dir")
    assert resolve_model_dir(Path("~/m")) == Path.home() / "m"


def test_loads_the_class_named_by_the_head_in_eval_mode(model_dir, tmp_path):
    saved = BrainformerForMEGPrediction.from_pretrained(model_dir).eval()
    model = load_model(model_dir)
    assert type(model) is BrainformerForMEGPrediction and not model.training
    eeg = torch.randn(2, 16, 3)
    assert torch.equal(model(eeg).predictions, saved(eeg).predictions)

    tokens_dir = tmp_path / "tokens"
    BrainformerForMEGTokens(tiny_config(head="tokens", n_quantization_levels=7)).save_pretrained(tokens_dir)
    tokens_model = load_model(str(tokens_dir), device="cpu")
    assert type(tokens_model) is BrainformerForMEGTokens and not tokens_model.training


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match=r"nowhere: model directory does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_config(model_dir):
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelDirError, match=r"config\.json: missing"):
        load_model(model_dir)


def test_invalid_json(model_dir):
    (model_dir / "config.json").write_text('{"model_type": "brainformer",\n "d_model": }')
    with pytest.raises(ModelDirError, match=r"config\.json: invalid JSON at line 2"):
        load_model(model_dir)


def test_foreign_model_type(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "bert"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"config\.json: model_type is 'bert', expected 'brainformer'"):
        load_model(model_dir)


def test_invalid_config_value(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["patch_len"] = 5
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"config\.json: BrainformerConfig\.patch_len = 5"):
        load_model(model_dir)


def test_missing_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match=r"model\.safetensors: missing"):
        load_model(model_dir)


def test_pickled_weights_are_refused_and_never_unpickled(model_dir, tmp_path):
    # The payload really does act when unpickled …
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_CreatesFileWhenUnpickled(probe)))
    assert probe.exists()

    # … and the loader never unpickles it, whether or not safetensors are there too.
    marker = tmp_path / "marker"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    (model_dir / "extra.pt").write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    assert type(load_model(model_dir)) is BrainformerForMEGPrediction
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match=r"extra\.pt: pickled weights are refused"):
        load_model(model_dir)
    assert not marker.exists()


def test_corrupt_safetensors(model_dir):
    data = (model_dir / "model.safetensors").read_bytes()
    (model_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelDirError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(model_dir)


def test_shape_mismatch(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["d_ff"] = 32
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"model\.safetensors: tensor .*ffn\.fc_in\.weight has shape \(16, 8\), but config\.json needs \(32, 8\)"):
        load_model(model_dir)


def test_missing_tensors_are_not_silently_initialised(tmp_path):
    # A trunk checkpoint lacks the regression projection: refuse instead of random weights.
    directory = tmp_path / "trunk"
    BrainformerModel(tiny_config()).save_pretrained(directory)
    with pytest.raises(ModelDirError, match=r"model\.safetensors: does not match .*missing tensors"):
        load_model(directory)
