"""Experiment settings: the training TOML (`configs/train-sample.toml`) as validated dataclasses.

The file has three sections, each optional; a missing key takes the default below.

```toml
[model]          # keyword arguments of BrainformerConfig (size, head, timing, filters …)
d_model = 64
window_samples = 256

[data]           # how recordings become train / validation / test windows
split = 0.75                 # first 75 % of each recording (in time) for training + validation
validation_fraction = 0.2    # the last 20 % of that part: early stopping and ridge λ
settle_s = 1.0               # dropped at the start of each part (filter settling)
train_hop_samples = 32       # hop between training windows
eval_hop_samples = 256       # hop between validation / test windows (default: window_samples)
tokenize = false             # dataset meant for the `tokens` head (recorded; labels are quantised on the fly)

[training]       # optimisation
epochs = 40
batch_size = 16
# …
```

Channel names, MEG channel types and the sampling rate come from the recording unless the
`[model]` section sets them; scaling statistics (`eeg_mean` …) are always fitted on the training
split and may not be set here. Every error names the file and the `section.key` at fault.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

# Fitted on the training split by `brainformer.preprocessing.fit_scaling`, never set by hand.
FITTED_MODEL_FIELDS = ("eeg_mean", "eeg_std", "meg_mean", "meg_std")


class SettingsError(ValueError):
    """A settings file or value that cannot be used; the message names the file and section.key."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or omitted)"
    if origin is tuple:
        return {float: "a list of numbers", int: "a list of integers", str: "a list of strings"}[typing.get_args(tp)[0]]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """`value` checked against annotation `tp`; ints are accepted where numbers are expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(name, inner, value)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(f"{name}[{i}]", inner, v) for i, v in enumerate(value))
    # bool is an int subclass in Python; `epochs = true` is a mistake, not 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _check_types(obj: Any, section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _coerce(f"{section}.{f.name}", hints[f.name], getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingsError(f"{name} = {value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class DataSettings:
    """How recordings are split in time and cut into windows (section ``[data]``).

    Per recording of n samples: train = ``[0, split·(1-validation_fraction)·n)``, validation =
    the rest of ``[0, split·n)``, test = ``[split·n, n)``; `settle_s` is dropped at the start of
    each part and no window crosses a boundary.
    """

    split: float = 0.75
    validation_fraction: float = 0.2
    settle_s: float = 1.0
    train_hop_samples: int = 32
    eval_hop_samples: Optional[int] = None  # None: window_samples (non-overlapping windows)
    tokenize: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _require(0 < self.split < 1, "data.split", self.split, "a fraction strictly between 0 and 1")
        _require(
            0 <= self.validation_fraction < 1,
            "data.validation_fraction",
            self.validation_fraction,
            "a fraction in [0, 1)",
        )
        _require(self.settle_s >= 0, "data.settle_s", self.settle_s, "seconds >= 0")
        _require(self.train_hop_samples >= 1, "data.train_hop_samples", self.train_hop_samples, "an integer >= 1")
        _require(
            self.eval_hop_samples is None or self.eval_hop_samples >= 1,
            "data.eval_hop_samples",
            self.eval_hop_samples,
            "an integer >= 1 (or omitted for window_samples)",
        )


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings (section ``[training]``).

    Attributes:
        epochs: passes over the training windows.
        batch_size: windows per optimisation step.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps spent warming the learning rate up.
        seed: seed of every random generator (initialisation, shuffling, augmentation).
        early_stopping_patience: evaluations without improvement of the validation loss before
            stopping; 0 disables early stopping.
        noise_std: std of Gaussian noise added to the (scaled) EEG input during training.
        time_shift_samples: random shift of each training window by up to ± this many samples.
        init_skip_from_ridge: initialise the lagged-linear skip path from a ridge fit.
        ridge_alphas: candidate ridge penalties, relative to the mean eigenvalue of the
            standardised Gram matrix (about a penalty per sample), chosen on the last 20 % of the
            train part; omitted: the evaluation's grid, 1e-5 … 10.
        ridge_lag_step_samples: the ridge fit behind the skip path uses lags 0, step, 2·step, …
            below `model.skip_lags`.
        skip_learning_rate: learning rate of the skip path (no weight decay); omitted: the
            model's `learning_rate` with its weight decay; 0 freezes the skip path.
        loss_last_samples: the loss covers only the newest samples of each window (the ones the
            daemon publishes); 0: the whole window.
        num_workers: data-loader worker processes (per training process).
        bf16: bfloat16 autocast for forward and backward (mixed precision; weights stay float32).
            Meant for GPUs with bfloat16 (Ampere and newer); on CPU it runs under CPU autocast.
        torch_compile: compile the model with `torch.compile` before training (the first steps
            are slower while it compiles).
    """

    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    early_stopping_patience: int = 5
    noise_std: float = 0.0
    time_shift_samples: int = 0
    init_skip_from_ridge: bool = True
    ridge_alphas: Optional[tuple[float, ...]] = None
    ridge_lag_step_samples: int = 2
    skip_learning_rate: Optional[float] = None
    loss_last_samples: int = 0
    num_workers: int = 0
    bf16: bool = False
    torch_compile: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "training")
        _require(self.epochs >= 1, "training.epochs", self.epochs, "an integer >= 1")
        _require(self.batch_size >= 1, "training.batch_size", self.batch_size, "an integer >= 1")
        _require(self.learning_rate > 0, "training.learning_rate", self.learning_rate, "a number > 0")
        _require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "a number >= 0")
        _require(0 <= self.warmup_ratio < 1, "training.warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        _require(self.seed >= 0, "training.seed", self.seed, "an integer >= 0")
        _require(
            self.early_stopping_patience >= 0,
            "training.early_stopping_patience",
            self.early_stopping_patience,
            "an integer >= 0 (0 disables early stopping)",
        )
        _require(self.noise_std >= 0, "training.noise_std", self.noise_std, "a number >= 0")
        _require(self.time_shift_samples >= 0, "training.time_shift_samples", self.time_shift_samples, "an integer >= 0")
        _require(
            self.ridge_alphas is None or (len(self.ridge_alphas) > 0 and all(a > 0 for a in self.ridge_alphas)),
            "training.ridge_alphas",
            self.ridge_alphas if self.ridge_alphas is None else list(self.ridge_alphas),
            "a non-empty list of numbers > 0 (or omitted)",
        )
        _require(
            self.ridge_lag_step_samples >= 1, "training.ridge_lag_step_samples", self.ridge_lag_step_samples, "an integer >= 1"
        )
        _require(
            self.skip_learning_rate is None or self.skip_learning_rate >= 0,
            "training.skip_learning_rate",
            self.skip_learning_rate,
            "a number >= 0 (or omitted)",
        )
        _require(self.loss_last_samples >= 0, "training.loss_last_samples", self.loss_last_samples, "an integer >= 0")
        _require(self.num_workers >= 0, "training.num_workers", self.num_workers, "an integer >= 0")


@dataclass(frozen=True)
class ExperimentSettings:
    """A whole training TOML: model kwargs, data and training settings.

    Attributes:
        model: keyword arguments for `BrainformerConfig` (channel lists and rate from the
            recording unless given here).
        data: `DataSettings`.
        training: `TrainingSettings`.
        source: the file these settings were read from, or None for the defaults.
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    source: Optional[Path] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML/JSON-friendly) of the three sections."""
        return {
            "model": dict(self.model),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if v is not None},
            "training": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self.training).items()
                if v is not None
            },
        }


_SECTIONS = {"data": DataSettings, "training": TrainingSettings}


def _build_section(cls: type, section: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise SettingsError(f"[{section}] must be a table of key = value pairs, got {values!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise SettingsError(
            f"unknown key {', '.join(f'{section}.{k}' for k in unknown)}; allowed keys: {', '.join(allowed)}"
        )
    return cls(**values)


def _check_model_section(model: Any) -> dict[str, Any]:
    if not isinstance(model, dict):
        raise SettingsError(f"[model] must be a table of key = value pairs, got {model!r}")
    fitted = [k for k in FITTED_MODEL_FIELDS if k in model]
    if fitted:
        raise SettingsError(
            f"{', '.join('model.' + k for k in fitted)}: scaling statistics are fitted on the training split; remove them"
        )
    from brainformer.configuration_brainformer import BrainformerConfig

    try:
        BrainformerConfig(**model)  # validates names, types and ranges of every model key
    except (TypeError, ValueError) as err:
        raise SettingsError(f"[model] {err}") from None
    return dict(model)


def settings_from_dict(values: dict[str, Any], source: Path | None = None) -> ExperimentSettings:
    """`ExperimentSettings` from a parsed TOML document; raises `SettingsError` naming section.key."""
    unknown = sorted(set(values) - {"model", *_SECTIONS})
    if unknown:
        raise SettingsError(f"unknown section [{', '.join(unknown)}]; allowed sections: [model], [data], [training]")
    return ExperimentSettings(
        model=_check_model_section(values.get("model", {})),
        data=_build_section(DataSettings, "data", values.get("data", {})),
        training=_build_section(TrainingSettings, "training", values.get("training", {})),
        source=source,
    )


def load_settings(path: str | Path | None) -> ExperimentSettings:
    """Read and validate a training TOML; `None` gives the defaults.

    Raises:
        SettingsError: the file is missing or not TOML, or a section / key / value is invalid; the
            message starts with the file name.
    """
    if path is None:
        return ExperimentSettings()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except OSError as err:
        raise SettingsError(f"{path}: cannot read the settings file ({err.strerror})") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: not valid TOML: {err}") from None
    try:
        return settings_from_dict(values, source=path)
    except SettingsError as err:
        raise SettingsError(f"{path}: {err}") from None
