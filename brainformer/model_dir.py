"""Safe loading of model directories (`config.json` + `model.safetensors`).

A model directory is self-sufficient: its config holds the channel layout, timing and
preprocessing parameters; its weights are safetensors only. Pickled weights (`pytorch_model.bin`,
`*.pt`, …) are refused and never opened, because unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainformer.config_fields import FIELD_NAMES, MODEL_TYPE, BrainformerFields
from brainformer.paths import BUNDLED_MODELS, DEFAULT_MODEL_DIR

if TYPE_CHECKING:  # torch and transformers are imported by the functions that build a model
    import torch

    from brainformer.configuration_brainformer import BrainformerConfig
    from brainformer.modeling_brainformer import BrainformerPreTrainedModel

__all__ = ["DEFAULT_MODEL_DIR", "ModelDirError", "load_config", "load_fields", "load_model", "resolve_model_dir"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# File names and suffixes of pickle-based checkpoints (torch.save, pickle, joblib).
_PICKLE_NAMES = ("pytorch_model.bin", "training_args.bin")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, unsafe or inconsistent; the message names the file."""


def resolve_model_dir(path_or_default: str | Path) -> Path:
    """`"default"` and `"default-lowdelay"` → the bundled models (`BUNDLED_MODELS`); anything
    else → that path (`~` expanded)."""
    if isinstance(path_or_default, str) and path_or_default in BUNDLED_MODELS:
        return BUNDLED_MODELS[path_or_default]
    return Path(path_or_default).expanduser()


def _read_config_dict(model_dir: Path) -> dict[str, Any]:
    """`config.json` of a model directory as a dict of model_type brainformer; `ModelDirError` otherwise."""
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory does not exist")
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise ModelDirError(f"{config_path}: missing (a model directory needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{config_path}: cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{config_path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})") from None
    if not isinstance(config_dict, dict):
        raise ModelDirError(f"{config_path}: expected a JSON object, got {type(config_dict).__name__}")
    model_type = config_dict.get("model_type")
    if model_type != MODEL_TYPE:
        raise ModelDirError(f"{config_path}: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
    return config_dict


def load_fields(model_dir: str | Path) -> BrainformerFields:
    """The model's fields (channels, rate, window, filters, scaling), validated, without torch or
    transformers: for the tools that size streams and name channels but never run the model.

    Keys that are not model fields (transformers' own bookkeeping, such as ``dtype``) are left
    to `load_config`, which every process that runs the model calls and which refuses typos."""
    model_dir = resolve_model_dir(model_dir)
    config_dict = _read_config_dict(model_dir)
    try:
        return BrainformerFields.from_dict({k: v for k, v in config_dict.items() if k in FIELD_NAMES})
    except ValueError as err:
        raise ModelDirError(f"{model_dir / CONFIG_NAME}: {err}") from None


def load_config(model_dir: str | Path) -> BrainformerConfig:
    """Read and validate `config.json` of a model directory; `ModelDirError` on any problem."""
    from brainformer.configuration_brainformer import BrainformerConfig

    model_dir = resolve_model_dir(model_dir)
    config_dict = _read_config_dict(model_dir)
    try:
        return BrainformerConfig(**config_dict)
    except ValueError as err:
        raise ModelDirError(f"{model_dir / CONFIG_NAME}: {err}") from None


def load_model(path_or_default: str | Path = "default", device: str | torch.device = "cpu") -> BrainformerPreTrainedModel:
    """Load a model directory into the task model named by `config.head`, in `eval()` mode.

    Only `model.safetensors` is read. Every tensor of the model must be present in it with the
    right shape (no silently random-initialised weights); extra tensors are refused too.

    Raises:
        ModelDirError: missing directory/config/weights, invalid JSON, foreign `model_type`,
            invalid config values, pickled weights instead of safetensors, unreadable safetensors,
            missing/unexpected tensors or shape mismatches. The message names the file.
    """
    from brainformer.modeling_brainformer import BrainformerForMEGPrediction, BrainformerForMEGTokens

    model_dir = resolve_model_dir(path_or_default)
    config = load_config(model_dir)
    weights_path = _weights_path(model_dir)
    state_dict = _read_weights(weights_path)
    head_classes = {"regression": BrainformerForMEGPrediction, "tokens": BrainformerForMEGTokens}
    model = head_classes[config.head](config)
    _check_state_dict(state_dict, model, weights_path)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    logger.info("loaded %s from %s", type(model).__name__, model_dir)
    return model.to(device)


def _weights_path(model_dir: Path) -> Path:
    """`model_dir`'s safetensors file; refuses pickled weights by name rather than calling them missing."""
    weights_path = model_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        pickles = sorted(
            p.name for p in model_dir.iterdir() if p.name in _PICKLE_NAMES or p.suffix.lower() in _PICKLE_SUFFIXES
        )
        if pickles:
            raise ModelDirError(
                f"{model_dir / pickles[0]}: pickled weights are refused (unpickling can run code); "
                f"save the model with save_pretrained() to get {WEIGHTS_NAME}"
            )
        raise ModelDirError(f"{weights_path}: missing")
    return weights_path


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        # Reading the header first gives a clear error for truncated or non-safetensors files.
        with safe_open(str(weights_path), framework="pt") as handle:
            handle.keys()
        return load_file(str(weights_path))
    except Exception as err:  # safetensors raises several types for malformed files
        raise ModelDirError(f"{weights_path}: not a readable safetensors file ({err})") from None


def _check_state_dict(state_dict: dict[str, torch.Tensor], model: BrainformerPreTrainedModel, weights_path: Path) -> None:
    """Every tensor of `model` present with its shape and a float dtype, and nothing else."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors {_short_list(unexpected)}")
        raise ModelDirError(
            f"{weights_path}: does not match the {type(model).__name__} described by {CONFIG_NAME}: "
            + "; ".join(problems)
        )
    for name, tensor in expected.items():
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise ModelDirError(
                f"{weights_path}: tensor {name} has shape {tuple(state_dict[name].shape)}, "
                f"but {CONFIG_NAME} needs {tuple(tensor.shape)}"
            )
        if not state_dict[name].is_floating_point():
            raise ModelDirError(f"{weights_path}: tensor {name} has dtype {state_dict[name].dtype}, expected float")

def _short_list(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
