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
`[model]` section sets them; TOML has no null, so ``"none"`` stands for None there (e.g.
``lowpass_hz = "none"``: no low-pass; ``target_band_hz = [4.0, "none"]``; ``eeg_reference = "none"`` keeps its own meaning); scaling statistics (`eeg_mean` …) are always fitted on the training
split and may not be set here. Every error names the file and the `section.key` at fault.

The serve daemon's settings (`configs/serve.toml`: flat ``key = value`` pairs, CLI flags on top)
are `ServeSettings`, read and checked with the same machinery: one `SettingsError`, one type
check (`_coerce`), one TOML reader. A number is never NaN and is finite unless its field says
otherwise: only the serve fields where ``inf`` means "never" or "forever"
(`SERVE_INFINITE_OK`) accept it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

#: Values of `training.device`.
TRAINING_DEVICES = ("auto", "cpu", "cuda")

# Fitted on the training split by `brainformer.preprocessing.fit_scaling`, never set by hand.
FITTED_MODEL_FIELDS = ("eeg_mean", "eeg_std", "meg_mean", "meg_std")


class SettingsError(ValueError):
    """A settings file or value that cannot be used; the message names the file and section.key."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or omitted)"
    if origin in (tuple, list):
        return {float: "a list of numbers", int: "a list of integers", str: "a list of strings"}.get(
            typing.get_args(tp)[0], "a list")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(name: str, tp: Any, value: Any, finite: bool = True) -> Any:
    """`value` checked against annotation `tp`; ints are accepted where numbers are expected.

    A number is never NaN; ``finite=False`` lets ±inf through (the caller's range check decides).
    """
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(name, inner, value, finite)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
        inner = typing.get_args(tp)[0]
        return origin(_coerce(f"{name}[{i}]", inner, v, finite) for i, v in enumerate(value))
    if isinstance(value, Path) and tp is str:  # a CLI path option for a string key
        return str(value)
    # bool is an int subclass in Python; `epochs = true` is a mistake, not 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
              and (math.isfinite(value) or not finite))
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed TOML document at `path`; errors start with `what` (which names the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{what}: settings file not found") from None
    except OSError as err:
        raise SettingsError(f"{what}: cannot read the settings file ({err.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{what}: not valid TOML: {err}") from None


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


#: `training.lr_scheduler` values (the Hugging Face scheduler each names: `_HF_SCHEDULERS` in training).
LR_SCHEDULERS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings (section ``[training]``).

    Attributes:
        epochs: passes over the training windows.
        batch_size: windows per optimisation step.
        learning_rate: peak AdamW learning rate.
        lr_scheduler: how the learning rate moves after the warm-up: ``"cosine"`` (to zero at the
            end), ``"linear"`` (to zero) or ``"constant"`` (held: a small signal found late still
            gets a full step).
        max_steps: optimiser steps to run; 0: as many as `epochs` give. When set it replaces the
            epochs (the data are revisited as often as needed).
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
        init_filters_from_bands: start the gain head's filters and the envelope features as
            band-pass filter banks on the train rows' principal components per band
            (`brainformer.filter_bank`), not random.
        gain_filters_on_components: how many of the gain head's filters (the last ones) start
            instead on the EEG's leading principal components, one tap on the newest sample, with
            unit gains and zero channel weights: a linear map the head learns from the first step
            (for a model without a linear path). Needs `init_filters_from_bands`.
        skip_learning_rate: learning rate of the skip path (no weight decay); omitted: the
            model's `learning_rate` with its weight decay; 0 freezes the skip path.
        loss_last_samples: the loss covers only the newest samples of each window (the ones the
            daemon publishes); 0: the whole window.
        num_workers: data-loader worker processes (per training process).
        bf16: bfloat16 autocast for forward and backward (mixed precision; weights stay float32).
            Meant for GPUs with bfloat16 (Ampere and newer); on CPU it runs under CPU autocast.
        torch_compile: compile the model with `torch.compile` before training (the first steps
            are slower while it compiles).
        device: where training runs: ``auto`` (a GPU when there is one, else the CPU), ``cpu``
            (the CPU even where a GPU exists), ``cuda`` (a GPU; an error without one).
    """

    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    max_steps: int = 0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    early_stopping_patience: int = 5
    noise_std: float = 0.0
    time_shift_samples: int = 0
    init_skip_from_ridge: bool = True
    ridge_alphas: Optional[tuple[float, ...]] = None
    ridge_lag_step_samples: int = 2
    init_filters_from_bands: bool = False
    gain_filters_on_components: int = 0
    skip_learning_rate: Optional[float] = None
    loss_last_samples: int = 0
    num_workers: int = 0
    bf16: bool = False
    torch_compile: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self, "training")
        _require(self.epochs >= 1, "training.epochs", self.epochs, "an integer >= 1")
        _require(self.batch_size >= 1, "training.batch_size", self.batch_size, "an integer >= 1")
        _require(self.learning_rate > 0, "training.learning_rate", self.learning_rate, "a number > 0")
        _require(self.lr_scheduler in LR_SCHEDULERS, "training.lr_scheduler", self.lr_scheduler,
                 "one of " + ", ".join(repr(name) for name in LR_SCHEDULERS))
        _require(self.max_steps >= 0, "training.max_steps", self.max_steps, "an integer >= 0 (0: the epochs decide)")
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
        _require(self.gain_filters_on_components >= 0, "training.gain_filters_on_components",
                 self.gain_filters_on_components, "an integer >= 0")
        _require(self.init_filters_from_bands or not self.gain_filters_on_components, "training.gain_filters_on_components",
                 self.gain_filters_on_components, "0 unless training.init_filters_from_bands = true")
        _require(self.loss_last_samples >= 0, "training.loss_last_samples", self.loss_last_samples, "an integer >= 0")
        _require(self.num_workers >= 0, "training.num_workers", self.num_workers, "an integer >= 0")
        _require(self.device in TRAINING_DEVICES, "training.device", self.device, " or ".join(TRAINING_DEVICES))


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
    from brainformer.config_fields import BrainformerFields

    # "none" is a value of its own for a choice such as eeg_reference; elsewhere it stands for None
    model = {key: value if key in _NONE_IS_A_CHOICE else _none_for_null(value) for key, value in model.items()}
    try:
        BrainformerFields.from_dict(model)  # validates names, types and ranges of every model key, torch-free
    except (TypeError, ValueError) as err:
        raise SettingsError(f"[model] {err}") from None
    return model


_NONE_IS_A_CHOICE = frozenset({"eeg_reference"})


def _none_for_null(value: Any) -> Any:
    """TOML's stand-in for a null: the string "none" (any case), also inside a list."""
    if isinstance(value, str) and value.lower() == "none":
        return None
    if isinstance(value, list):
        return [_none_for_null(v) for v in value]
    return value


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
    values = _read_toml(path, str(path))
    try:
        return settings_from_dict(values, source=path)
    except SettingsError as err:
        raise SettingsError(f"{path}: {err}") from None


# ==============================================================================================
# The serve daemon: configs/serve.toml (flat keys) + the `brainformer-rt serve` flags
# ==============================================================================================
DEFAULT_ZMQ_ADDRESS = "tcp://127.0.0.1:5556"
DEFAULT_LSL_NAME = "brainformer-meg"
DEFAULT_METRICS_HOST = "127.0.0.1"
#: The serve keys where ``inf`` means "never" / "forever"; every other number must be finite.
SERVE_INFINITE_OK = frozenset({"duration_s", "wait_s", "max_input_age_s", "gap_threshold_s", "silence_s",
                               "stats_interval_s"})


#: What a feedback signal measures of its rhythm (see `brainformer.feedback`).
FEEDBACK_MEASURES = ("envelope", "power", "phase")
#: MEG sensor types a feedback signal may select.
FEEDBACK_SENSOR_TYPES = ("mag", "grad")
#: Allowed estimator history (seconds): long enough for a few cycles of a 4 Hz rhythm, short
#: enough that a burst's start is not averaged away.
FEEDBACK_HISTORY_RANGE_S = (0.1, 2.0)
#: The keys of one feedback signal's table.
FEEDBACK_KEYS = ("band_hz", "measure", "sensors", "types", "weights", "weights_file", "history_s")


@dataclass(frozen=True)
class FeedbackSignalSettings:
    """One feedback signal: a table ``[feedback.NAME]`` of the serve config, or ``[NAME]`` of a
    ``--feedback`` file (docs/feedback.md).

    Attributes:
        name: the table's name: the signal's channel label on LSL and ZeroMQ.
        band_hz: ``[low, high]`` Hz of the rhythm; it must lie inside the model's band.
        measure: ``envelope`` (amplitude, in the sensors' unit), ``power`` (its square) or
            ``phase`` (radians, in (-π, π]).
        sensors: MEG sensor names or shell-style patterns (``"MEG 2*"``, ``"MEG 20[1-4]1"``);
            omitted: every sensor of `types`.
        types: sensor types kept (``mag``, ``grad``); omitted: both.
        weights: a spatial filter: one weight per selected sensor (in the model's channel order)
            or one per MEG channel of the model; the signal is then measured on the weighted sum.
            Without weights, envelope and power are those of the group (the square root of the mean
            power over its sensors, and that mean power); a phase needs one sensor or weights.
        weights_file: the weights in a file instead: ``.npy`` or text with one number per line
            (a path relative to the TOML file that names it).
        history_s: how much of the past the estimator weighs (seconds).
        where: the table's path in its file, for error messages (``feedback.alpha``, ``alpha``).
    """

    name: str
    band_hz: Tuple[float, ...]
    measure: str
    sensors: Optional[Tuple[str, ...]] = None
    types: Optional[Tuple[str, ...]] = None
    weights: Optional[Tuple[float, ...]] = None
    weights_file: Optional[str] = None
    history_s: float = 0.4
    where: str = ""

    def __post_init__(self) -> None:
        where = self.where or f"feedback.{self.name}"
        hints = typing.get_type_hints(FeedbackSignalSettings)
        for f in dataclasses.fields(self):
            if f.name != "where":
                object.__setattr__(self, f.name, _coerce(f"{where}.{f.name}", hints[f.name], getattr(self, f.name)))

        def require(ok: bool, key: str, allowed: str) -> None:
            value = getattr(self, key)
            _require(ok, f"{where}.{key}", list(value) if isinstance(value, tuple) else value, allowed)

        _require(bool(self.name.strip()), f"{where}", self.name, "a non-empty signal name")
        low_high = self.band_hz
        require(len(low_high) == 2 and 0 < low_high[0] < low_high[1], "band_hz", "[low, high] in Hz with 0 < low < high")
        require(self.measure in FEEDBACK_MEASURES, "measure", " or ".join(FEEDBACK_MEASURES))
        require(self.sensors is None or (len(self.sensors) > 0 and all(s.strip() for s in self.sensors)), "sensors",
                "a non-empty list of MEG sensor names or patterns")
        require(self.types is None or (len(self.types) > 0 and set(self.types) <= set(FEEDBACK_SENSOR_TYPES)), "types",
                "a non-empty list of " + " and ".join(repr(t) for t in FEEDBACK_SENSOR_TYPES))
        if self.weights is not None and self.weights_file is not None:
            raise SettingsError(f"{where}: give weights or weights_file, not both")
        require(self.weights is None or (len(self.weights) > 0 and any(w != 0 for w in self.weights)), "weights",
                "a non-empty list of numbers, not all zero")
        low, high = FEEDBACK_HISTORY_RANGE_S
        require(low <= self.history_s <= high, "history_s", f"seconds in [{low:g}, {high:g}]")
        if self.sensors is None and self.types is None and self.weights is None and self.weights_file is None:
            raise SettingsError(f"{where}: say which sensors it measures: sensors = [...], types = [...], weights "
                                "or weights_file")

    def load_weights(self, relative_to: Path | None = None) -> Optional[np.ndarray]:
        """The weights as float64 ``(n,)``, from `weights` or read from `weights_file` (relative to
        `relative_to`); None without weights. Raises SettingsError naming the key and the file."""
        if self.weights is not None:
            return np.asarray(self.weights, dtype=np.float64)
        if self.weights_file is None:
            return None
        path = Path(self.weights_file)
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        key = f"{self.where or 'feedback.' + self.name}.weights_file"
        try:
            values = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
        except FileNotFoundError:
            raise SettingsError(f"{key} = {self.weights_file!r}: no such file ({path})") from None
        except (OSError, ValueError) as err:
            raise SettingsError(f"{key} = {self.weights_file!r}: not a list of numbers (.npy, or text with one "
                                f"number per line): {err}") from None
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0 or not np.all(np.isfinite(values)) or not np.any(values):
            raise SettingsError(f"{key} = {self.weights_file!r}: expected finite numbers, not all zero")
        return values


def feedback_signals_from_dict(table: Any, source: str, prefix: str, base_dir: Path | None = None
                               ) -> List[FeedbackSignalSettings]:
    """The feedback signals of a parsed TOML table ``{name: {key: value}}``; `prefix` is the
    tables' path in the file (``"feedback."`` in a serve config, ``""`` in a feedback file).
    A `weights_file` is read now (relative to `base_dir`), so a bad one fails before any stream
    is opened. Raises SettingsError naming `source` and the key."""
    try:
        if not isinstance(table, dict):
            raise SettingsError(f"{prefix.rstrip('.') or 'the file'} must hold one table per signal "
                                f"([{prefix}NAME]), got {table!r}")
        signals = []
        for name, keys in table.items():
            where = f"{prefix}{name}"
            if not isinstance(keys, dict):
                raise SettingsError(f"{where} = {keys!r} is invalid: expected a table [{where}] of "
                                    f"{', '.join(FEEDBACK_KEYS)}")
            unknown = sorted(set(keys) - set(FEEDBACK_KEYS))
            if unknown:
                raise SettingsError(f"unknown key {', '.join(f'{where}.{k}' for k in unknown)}; allowed keys: "
                                    f"{', '.join(FEEDBACK_KEYS)}")
            missing = [k for k in ("band_hz", "measure") if k not in keys]
            if missing:
                raise SettingsError(f"{where}: missing key {', '.join(f'{where}.{k}' for k in missing)}")
            signal = FeedbackSignalSettings(name=str(name), where=where, **keys)
            if signal.weights_file is not None:
                weights = signal.load_weights(base_dir)
                signal = dataclasses.replace(signal, weights=tuple(float(w) for w in weights), weights_file=None)
            signals.append(signal)
        return signals
    except SettingsError as err:
        raise SettingsError(f"{source}: {err}") from None


def read_feedback_file(path: str | Path) -> List[FeedbackSignalSettings]:
    """The signals of a ``--feedback`` TOML file: one top-level table per signal."""
    path = Path(path)
    what = f"feedback file {path}"
    table = _read_toml(path, what)
    if not table:
        raise SettingsError(f"{what}: no signal; add one table per signal, e.g. [alpha] with band_hz, measure, sensors")
    return feedback_signals_from_dict(table, what, "", base_dir=path.parent)


@dataclass
class ServeSettings:
    """Everything ``serve`` needs; loaded from TOML (``configs/serve.toml``), CLI flags override.

    Optional keys (``Optional[...]``) are left out of the TOML file for their default.

    Attributes:
        streams: LSL stream names (or types) of the EEG; one daemon serves them all.
        model: model directory, or ``default`` for the bundled model.
        zmq: ZeroMQ PUB address; ``""`` (CLI ``--no-zmq``) disables ZeroMQ.
        lsl_name: name of the output LSL stream; with several streams each output is named
            ``<lsl_name>-<stream>``. ``""`` disables the LSL output.
        hop_samples: new (model-rate) samples between two predictions; default: the model's.
        device: ``auto`` (cuda when available) | ``cpu`` | ``cuda``.
        engine: ``auto`` (cuda-graph on CUDA; on a CPU eager at once, then the compiled ``aot``
            forward once built in the background and checked) | ``eager`` | ``compile`` | ``aot`` (CPU) |
            ``cuda-graph``.
        batch_size: windows per forward; default: the number of streams.
        duration_s: stop after this many seconds of serving (``inf``: until SIGINT/SIGTERM).
        warmup_s: timings and latencies of the first seconds of serving are forgotten (counters
            are kept); the engine's own warm-up before serving never counts.
        wait_s: give up when a stream has not appeared after this many seconds (``inf``: wait).
        pull_timeout_s: longest blocking pull; bounds how long a stop request waits.
        busy_poll: spin instead of sleeping while waiting for input (costs one core; see
            docs/internals.md, "The serve daemon: loops and faults").
        max_input_age_s: a due window whose newest sample is older than this is dropped as stale.
        gap_threshold_s: a step between input timestamps above this is a gap (stream reset).
        max_chunk_samples: most samples one pull returns (the inlet's buffer).
        silence_s: input silent for longer than this is logged (once) and counted.
        stats_interval_s: seconds between two progress log lines (``inf``: none).
        metrics_port: serve Prometheus metrics on ``metrics_host:PORT``.
        metrics_host: address of the metrics server (default 127.0.0.1; another one is warned about).
        log_format: ``text`` | ``json`` (one JSON object per line).
        log_level: ``debug`` | ``info`` | ``warning`` | ``error``.
        zmq_curve_keys: directory of ZeroMQ CURVE keys (layout in ``publishers/zmq.py``).
        stats_json: write the final statistics to this JSON file.
        torch_threads: threads for CPU inference (default: torch's choice).
        input_unit: unit of every EEG channel of the stream, overriding its meta-data (``uV``,
            ``mV``, ``V``, an mne-lsl exponent such as ``-6``); default: the meta-data's.
        channel_map: TOML file of ``"stream label" = "model label"`` pairs applied before the
            channels are matched to the model's.
        montage: electrode positions of the stream's channels: an MNE standard montage name
            (``standard_1020``) or a montage file; default: positions from the meta-data.
        max_missing_fraction: largest fraction of the model's electrodes that may be missing or
            bad and interpolated from the others, in [0, 1] (CLI ``--max-missing``); default: no
            limit for a model with linear path statistics (``min_expected_share`` decides), 0.25
            for one without.
        min_expected_share: refuse a stream whose cap's expected r (the linear path re-solved
            for its electrodes, from the model's statistics) is below this share of the model's
            full-cap r, in [0, 1] (CLI ``--min-expected-share``; 0: never refuse).
        feedback: the feedback signals (:class:`FeedbackSignalSettings`), from the ``[feedback]``
            tables of the serve config or a ``--feedback`` file (which replaces them); empty: none.
    """

    streams: List[str] = field(default_factory=list)
    model: str = "default"
    zmq: str = DEFAULT_ZMQ_ADDRESS
    lsl_name: str = DEFAULT_LSL_NAME
    hop_samples: Optional[int] = None
    device: str = "auto"
    engine: str = "auto"
    batch_size: Optional[int] = None
    duration_s: float = math.inf
    warmup_s: float = 0.0
    wait_s: float = math.inf
    pull_timeout_s: float = 0.1
    busy_poll: bool = False
    max_input_age_s: float = 0.5
    gap_threshold_s: float = 0.1
    max_chunk_samples: int = 4096
    silence_s: float = 1.0
    stats_interval_s: float = 10.0
    metrics_port: Optional[int] = None
    metrics_host: str = DEFAULT_METRICS_HOST
    log_format: str = "text"
    log_level: str = "info"
    zmq_curve_keys: Optional[str] = None
    stats_json: Optional[str] = None
    torch_threads: Optional[int] = None
    input_unit: Optional[str] = None
    channel_map: Optional[str] = None
    montage: Optional[str] = None
    max_missing_fraction: Optional[float] = None
    min_expected_share: float = 0.5
    feedback: List[FeedbackSignalSettings] = field(default_factory=list)

    def validate(self, source: str = "settings") -> "ServeSettings":
        """Check every value; raises :class:`SettingsError` naming the key (after ``source``). Returns self."""
        hints = typing.get_type_hints(ServeSettings)
        for f in dataclasses.fields(self):
            value = _coerce(f"{source}: {f.name}", hints[f.name], getattr(self, f.name),
                            finite=f.name not in SERVE_INFINITE_OK)
            setattr(self, f.name, value)

        def require(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                _require(False, f"{source}: {key}", getattr(self, key), allowed)

        require(all(s.strip() for s in self.streams), "streams", "non-empty stream names")
        require(len(set(self.streams)) == len(self.streams), "streams", "each stream only once")
        require(bool(self.model), "model", "a model directory or 'default'")
        require(self.zmq == "" or "://" in self.zmq, "zmq", "a ZeroMQ address like tcp://127.0.0.1:5556, or ''")
        if not self.zmq and not self.lsl_name:
            raise SettingsError(f"{source}: zmq and lsl_name are both empty: the predictions would go nowhere")
        if self.zmq_curve_keys is not None and not self.zmq:
            raise SettingsError(f"{source}: zmq_curve_keys is set but ZeroMQ is disabled (zmq = '')")
        require(self.hop_samples is None or self.hop_samples >= 1, "hop_samples", "an integer >= 1")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
                "auto, cpu, cuda or cuda:N")
        require(self.engine in ("auto", "eager", "compile", "aot", "cuda-graph"), "engine",
                "auto, eager, compile, aot or cuda-graph")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", "an integer >= 1")
        require(self.duration_s > 0, "duration_s", "seconds > 0 (inf: until stopped)")
        require(self.warmup_s >= 0, "warmup_s", "seconds >= 0")
        require(self.wait_s > 0, "wait_s", "seconds > 0 (inf: wait forever)")
        require(0 < self.pull_timeout_s <= 0.5, "pull_timeout_s", "seconds in (0, 0.5]")
        require(self.max_input_age_s > 0, "max_input_age_s", "seconds > 0 (inf: never stale)")
        require(self.gap_threshold_s > 0, "gap_threshold_s", "seconds > 0")
        require(self.max_chunk_samples >= 1, "max_chunk_samples", "an integer >= 1")
        require(self.silence_s > 0, "silence_s", "seconds > 0 (inf: never report silence)")
        require(self.stats_interval_s > 0, "stats_interval_s", "seconds > 0 (inf: no progress lines)")
        require(self.metrics_port is None or 1 <= self.metrics_port <= 65535, "metrics_port", "a port 1-65535")
        require(bool(self.metrics_host.strip()) and "://" not in self.metrics_host, "metrics_host",
                "a host address like 127.0.0.1")
        require(self.log_format in ("text", "json"), "log_format", "text or json")
        require(self.log_level in ("debug", "info", "warning", "error"), "log_level", "debug, info, warning or error")
        require(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", "an integer >= 1")
        if self.input_unit is not None:
            from brainformer.adaptation.errors import AdaptationError
            from brainformer.adaptation.units import volt_factor

            try:
                ok = volt_factor(self.input_unit) is not None
            except AdaptationError:
                ok = False
            require(ok, "input_unit", "a voltage unit: V, mV, uV (µV, microvolts), nV or an exponent such as -6")
        require(self.channel_map is None or Path(self.channel_map).is_file(), "channel_map",
                "an existing TOML file of \"stream label\" = \"model label\" pairs")
        require(self.montage is None or bool(self.montage.strip()), "montage",
                "an MNE standard montage name (standard_1020) or a montage file")
        require(self.max_missing_fraction is None or 0.0 <= self.max_missing_fraction <= 1.0, "max_missing_fraction",
                "a fraction in [0, 1]")
        require(0.0 <= self.min_expected_share <= 1.0, "min_expected_share", "a fraction in [0, 1]")
        require(len({signal.name for signal in self.feedback}) == len(self.feedback), "feedback",
                "each signal name only once")
        return self


def read_serve_config(path: Optional[Path]) -> dict[str, Any]:
    """The key → value table of a serve TOML file (checked for unknown keys, not yet for types)."""
    if path is None:
        return {}
    path = Path(path)
    table = _read_toml(path, f"serve config {path}")
    known = {f.name for f in dataclasses.fields(ServeSettings)}
    for key, value in table.items():
        if key not in known:
            hint = (" (sections are not used: all keys are top-level, but for the [feedback] tables)"
                    if isinstance(value, dict) else "")
            raise SettingsError(f"serve config {path}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(known))}")
    if "feedback" in table:
        table["feedback"] = feedback_signals_from_dict(table["feedback"], f"serve config {path}", "feedback.",
                                                       base_dir=path.parent)
    return table


#: ``serve`` option names that differ from their TOML key.
_SERVE_OPTION_KEYS = {"stream": "streams", "hop": "hop_samples", "duration": "duration_s", "wait": "wait_s",
                      "max_missing": "max_missing_fraction", "min_expected_share": "min_expected_share"}


def build_serve_settings(config_file: Optional[Path] = None, **options: Any) -> ServeSettings:
    """Defaults ← TOML file ← CLI flags (those not None). Option names are the ``serve`` options:
    ``stream, model, zmq, no_zmq, lsl_name, hop, device, engine, duration, wait, metrics_port,
    metrics_host, log_format, zmq_curve_keys, stats_json, torch_threads, busy_poll, input_unit, channel_map,
    montage, max_missing, min_expected_share, feedback`` (``feedback``: a feedback TOML file, whose
    signals replace the config's ``[feedback]`` tables)."""
    values = read_serve_config(config_file)
    known = {f.name for f in dataclasses.fields(ServeSettings)}
    for name, value in options.items():
        if name == "no_zmq":
            continue
        if name == "feedback":
            if value is not None:
                values["feedback"] = read_feedback_file(value)
            continue
        key = _SERVE_OPTION_KEYS.get(name, name)
        if key not in known:
            raise SettingsError(f"unknown serve option {name!r}")
        if value is None or (key == "streams" and not value):
            continue
        values[key] = list(value) if key == "streams" else value
    if options.get("no_zmq"):
        values["zmq"] = ""
    source = f"serve config {config_file}" if config_file is not None else "serve options"
    settings = ServeSettings(**values).validate(source)
    if not settings.streams:
        raise SettingsError("no EEG stream given: use --stream NAME (repeat for several) or streams = [...] in the config")
    return settings
