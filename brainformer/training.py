"""Training with the Hugging Face `Trainer`: window datasets, the ridge-initialised skip path, scores.

```
recordings / BIDS roots ─ prepare_recordings (in memory) ──────────┐
dataset dir from `brainformer prepare` (memory-mapped, from disk) ─┴─► windows cut on the fly
                                                                       (+ time shifts, input noise)
    ─► model from the config (+ skip path initialised from a lagged ridge fit on the train part)
    ─► Trainer (eval every epoch on validation, early stopping, best model kept)
    ─► save_pretrained(out): config.json + model.safetensors, all the daemon needs
    ─► validation and test scores next to the ridge baselines (brainformer.evaluation)
```

Distributed: the same command runs under ``torchrun --nproc_per_node N`` or ``accelerate launch``
(DDP through the Trainer, gloo on CPU, NCCL on GPU). Every process prepares the same data
deterministically (recordings in memory, or the read-only memory maps of a prepared dataset, so
nothing is written and nothing races), builds the same seeded model, and trains on its share of
the windows; the batch size is per process. Only the main process writes the model directory
(and only there does `brainformer train`, in `brainformer.commands.train`, print reports).

The loss can be restricted to the newest samples of each window (`training.loss_last_samples`):
those are the only predictions the daemon publishes, and the only ones that see no future input
inside the window, so training on them is training on exactly what is served.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from brainformer.config_fields import SIGNAL_FIELD_NAMES
from brainformer.evaluation import (
    DEFAULT_RELATIVE_ALPHAS,
    EvaluationReport,
    RidgeFit,
    SplitRows,
    evaluate_arrays,
    fit_ridge_blocks,
)
from brainformer.settings import ExperimentSettings

logger = logging.getLogger(__name__)

REPORT_TO_CHOICES = ("none", "tensorboard", "wandb")
#: Sub-directory of the output directory holding Trainer checkpoints while training runs.
CHECKPOINTS_DIRNAME = "checkpoints"
#: At most this many recordings are scored against the baselines at the end of `train`.
MAX_EVALUATED_RECORDINGS = 3


class TrainingError(ValueError):
    """Training cannot start or continue with the given data, settings or options."""


# --------------------------------------------------------------------------------------------
# Window datasets (torch), with augmentation for training
# --------------------------------------------------------------------------------------------
class ContinuousWindows(torch.utils.data.Dataset):
    """Windows cut from one part of continuous prepared recordings.

    Each item is `{"input_values": (window, n_eeg) float32, "labels": (window, n_meg)}` (labels are
    int64 token ids when a `quantizer` is given). For training, each window start is moved by a
    random shift in `[-max_shift, max_shift]` (kept inside the part) and Gaussian noise of
    `noise_std` (scaled units) is added to the EEG; both use torch's global generator, which the
    Trainer seeds.
    """

    def __init__(
        self,
        recordings: Sequence[Any],
        part: str | tuple[str, ...],
        window_samples: int,
        hop_samples: int,
        quantizer: Any | None = None,
        max_shift: int = 0,
        noise_std: float = 0.0,
    ) -> None:
        from brainformer.data import window_index

        self.recordings = list(recordings)
        self.window = int(window_samples)
        self.quantizer = quantizer
        self.max_shift = int(max_shift)
        self.noise_std = float(noise_std)
        # (n_windows, 4) int64 rows (recording, start, stretch_start, stretch_stop); several
        # adjacent parts (train + validation) form one continuous stretch. An array, not a list
        # of tuples: 32 bytes a window keeps the index of a many-hour dataset small.
        self.index = window_index(self.recordings, part, self.window, hop_samples)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        rec_index, start, lo, hi = (int(v) for v in self.index[item])
        if self.max_shift:
            shift = int(torch.randint(-self.max_shift, self.max_shift + 1, ()).item())
            start = min(max(start + shift, lo), hi - self.window)
        rec = self.recordings[rec_index]
        eeg = torch.from_numpy(np.array(rec.eeg[start : start + self.window], dtype=np.float32))
        meg = np.array(rec.meg[start : start + self.window], dtype=np.float32)
        if self.noise_std:
            eeg = eeg + self.noise_std * torch.randn_like(eeg)
        labels = torch.from_numpy(np.asarray(self.quantizer.encode(meg), dtype=np.int64) if self.quantizer else meg)
        return {"input_values": eeg, "labels": labels}


# --------------------------------------------------------------------------------------------
# Loading the training data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Everything `train_model` needs.

    Attributes:
        config: model config with the fitted scaling statistics and the `[model]` settings.
        train, validation, test: `ContinuousWindows` over the parts (validation/test may be empty).
        prepared: the continuous prepared recordings (`brainformer.data.PreparedData`): in memory
            when training from recordings, memory-mapped from disk for a prepared dataset.
        sources: the recording files behind the data.
    """

    config: Any
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    prepared: Any
    sources: list[str]


# Model fields that change what the data are: a prepared dataset fixes them.
_DATA_FIELDS = (*SIGNAL_FIELD_NAMES, "window_samples")


def _eval_hop(settings: ExperimentSettings, window_samples: int) -> int:
    if settings.data.eval_hop_samples is not None:
        return settings.data.eval_hop_samples
    # Score every sample once when only the newest samples of a window count.
    last = settings.training.loss_last_samples
    return last if 0 < last < window_samples else window_samples


def load_training_data(paths: Sequence[str | Path], settings: ExperimentSettings) -> TrainingData:
    """Prepare recordings in memory, or open a dataset written by `brainformer prepare`.

    With a prepared dataset, its parts and window hops (its ``[data]`` settings) are those it was
    prepared with; the `[model]` settings may change the network but not the data.

    Raises:
        TrainingError / DataError / PreprocessingError: with the path and the problem.
    """
    from brainformer.data import is_prepared_dataset, load_prepared_dataset, prepare_recordings

    paths = [Path(p) for p in paths]
    if not paths:
        raise TrainingError("--data: give at least one recording, BIDS root or prepared dataset")
    prepared_dirs = [p for p in paths if p.is_dir() and is_prepared_dataset(p)]
    if prepared_dirs:
        if len(paths) > 1:
            raise TrainingError(f"{prepared_dirs[0]}: a prepared dataset must be the only --data argument")
        prepared, dataset_config = load_prepared_dataset(paths[0])
        prepared.config = _config_with_model_settings(dataset_config, settings.model, paths[0])
        settings = dataclasses.replace(settings, data=prepared.data)
    else:
        prepared = prepare_recordings(paths, settings)
    return training_data_from_prepared(prepared, settings)


def training_data_from_prepared(prepared: Any, settings: ExperimentSettings) -> TrainingData:
    """`TrainingData` over the parts of `prepared` (`brainformer.data.PreparedData`): windows of
    `settings.data` hops, augmentation of `settings.training`, token labels for a tokens head."""
    from brainformer.quantization import MEGQuantizer

    training = settings.training
    config = prepared.config
    # Token ids are computed per window from the scaled MEG: any dataset serves both heads.
    quantizer = MEGQuantizer.from_config(config) if config.head == "tokens" else None
    window = config.window_samples
    eval_hop = _eval_hop(settings, window)
    return TrainingData(
        config=config,
        train=ContinuousWindows(
            prepared.recordings, "train", window, settings.data.train_hop_samples, quantizer,
            training.time_shift_samples, training.noise_std,
        ),
        validation=ContinuousWindows(prepared.recordings, "validation", window, eval_hop, quantizer),
        test=ContinuousWindows(prepared.recordings, "test", window, eval_hop, quantizer),
        prepared=prepared,
        sources=[rec.source for rec in prepared.recordings],
    )


def _config_with_model_settings(dataset_config: Any, model_settings: dict[str, Any], path: Path) -> Any:
    """The dataset's config (channels, rate, filters, scaling) with the `[model]` settings applied."""
    from brainformer.configuration_brainformer import BrainformerConfig

    conflicts = [
        key for key in _DATA_FIELDS
        if key in model_settings and _normalised(model_settings[key]) != _normalised(getattr(dataset_config, key))
    ]
    if conflicts:
        shown = ", ".join(f"model.{k} = {model_settings[k]!r} (dataset: {getattr(dataset_config, k)!r})" for k in conflicts)
        raise TrainingError(f"{path}: the dataset was prepared with other data settings: {shown}; prepare it again")
    values = dataset_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        values.pop(key, None)
    values.update(model_settings)
    try:
        return BrainformerConfig(**{k: v for k, v in values.items() if k in inspect.signature(BrainformerConfig).parameters})
    except ValueError as err:
        raise TrainingError(f"{path}: {err}") from None


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------------------------
# Skip path from a ridge fit
# --------------------------------------------------------------------------------------------
def init_skip_from_ridge(model: Any, data: TrainingData, settings: ExperimentSettings) -> RidgeFit:
    """Set the model's lagged-linear skip path to a closed-form lagged ridge fit on the train part.

    Lags `0, step, 2·step, … < config.skip_lags` (step = `training.ridge_lag_step_samples`); the
    penalty is chosen on the last 20 % of the train part and the map refitted on all of it, as for
    the lagged-ridge baseline. The validation and test parts are never seen. The transformer's
    output projection is set to zero, so the model starts as exactly this ridge map.
    """
    config = model.config
    from brainformer.linear_path import ridge_blocks, skip_ridge_lags

    lags = skip_ridge_lags(config.skip_lags, settings.training.ridge_lag_step_samples)
    blocks, boundaries = ridge_blocks(data.prepared, max(lags))
    alphas = settings.training.ridge_alphas or DEFAULT_RELATIVE_ALPHAS
    fit = fit_ridge_blocks(blocks, boundaries, lags, alphas)
    weight, bias = fit.as_conv_skip(config.skip_lags)
    dtype = model.linear_skip.weight.dtype
    model.set_linear_skip(torch.as_tensor(weight, dtype=dtype), torch.as_tensor(bias, dtype=dtype))
    # The transformer starts as a no-op on top of the ridge map (zero output projection), so
    # training begins at the ridge solution and learns only what the linear map misses.
    with torch.no_grad():
        model.projection.weight.zero_()
        model.projection.bias.zero_()
    logger.info("skip path initialised from a lagged ridge (lags %s, alpha %.3g)", lags, fit.alpha)
    return fit


def init_hop_lookahead(model: Any, data: TrainingData, settings: ExperimentSettings, skip: RidgeFit) -> None:
    """Set the model's hop lookahead (`BrainformerHopLookahead`) to the closed-form ridge maps of
    what the skip path `skip` leaves, per position in the hop (`linear_path.fit_hop_lookahead`)."""
    from brainformer.linear_path import HOP_LOOKAHEAD_RELATIVE_ALPHAS, fit_hop_lookahead

    config, lookahead = model.config, model.hop_lookahead
    try:
        fit = fit_hop_lookahead(data.prepared, skip, config.hop_samples, config.hop_lookahead_past_samples,
                                settings.training.ridge_alphas or HOP_LOOKAHEAD_RELATIVE_ALPHAS, config.hop_lookahead_rank)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    with torch.no_grad():
        for parameter, weight in zip(lookahead.weights, fit.weights):
            parameter.copy_(torch.as_tensor(weight.T, dtype=parameter.dtype))
        lookahead.bias.copy_(torch.as_tensor(fit.biases, dtype=lookahead.bias.dtype))
        if lookahead.basis is not None:
            lookahead.basis.copy_(torch.as_tensor(fit.basis, dtype=lookahead.basis.dtype))
    logger.info("hop lookahead initialised: %d positions, %d past samples, penalties %s", config.hop_samples,
                fit.past, np.array2string(fit.relative_alphas, precision=2))


def _linear_path_modules(model: Any) -> list[Any]:
    """The skip path and the hop lookahead that refines it: trained (or frozen) together."""
    return [m for m in (getattr(model, "linear_skip", None), getattr(model, "hop_lookahead", None)) if m is not None]


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
def _newest_samples_loss(model: Any, predictions_or_logits: torch.Tensor, labels: torch.Tensor, last: int) -> torch.Tensor:
    import torch.nn.functional as F

    config = model.config
    if config.head == "tokens":
        logits = predictions_or_logits[:, -last:]  # (batch, last, n_meg, vocab)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, -last:].reshape(-1).long(), ignore_index=config.pad_token_id
        )
    predictions, targets = predictions_or_logits[:, -last:], labels[:, -last:].to(predictions_or_logits.dtype)
    if config.loss == "huber":
        return F.huber_loss(predictions, targets, delta=config.huber_delta)
    return F.mse_loss(predictions, targets)


def _make_trainer_class():
    from transformers import Trainer

    class BrainformerTrainer(Trainer):
        """`Trainer` whose loss can cover only the newest samples of each window, and whose skip
        path can have its own learning rate (0 freezes it)."""

        def __init__(self, *args: Any, loss_last_samples: int = 0, skip_learning_rate: float | None = None, **kwargs: Any):
            self.loss_last_samples = loss_last_samples
            self.skip_learning_rate = skip_learning_rate
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.loss_last_samples:
                outputs = model(**inputs)
                return (outputs.loss, outputs) if return_outputs else outputs.loss
            labels = inputs["labels"]
            # `model` may be wrapped (DDP, torch.compile); the config lives on the plain model.
            plain = self.model
            if plain.config.head == "tokens":
                # Teacher forcing: each segment's decoder input is the previous segment's labels
                # (without labels the decoder would be fed pad tokens).
                outputs = model(input_values=inputs["input_values"], labels=labels)
                scores = outputs.logits
            else:
                # Only the newest samples are scored, so only they are computed: the decoder's
                # last layer runs for their segments alone (equal to the whole window's values).
                last = min(self.loss_last_samples, plain.config.window_samples)
                outputs = model(input_values=inputs["input_values"], last_samples=last)
                scores = outputs.predictions
            loss = _newest_samples_loss(plain, scores, labels, self.loss_last_samples)
            outputs.loss = loss  # the newest samples' loss, not the whole window's
            return (loss, outputs) if return_outputs else loss

        def create_optimizer(self, *args: Any, **kwargs: Any):
            if self.skip_learning_rate is None or getattr(self.model, "linear_skip", None) is None:
                return super().create_optimizer(*args, **kwargs)
            if self.optimizer is None:
                skip = [p for module in _linear_path_modules(self.model) for p in module.parameters()]
                skip_ids = {id(p) for p in skip}
                rest = [p for p in self.model.parameters() if id(p) not in skip_ids and p.requires_grad]
                decay = [p for p in rest if p.ndim >= 2]
                no_decay = [p for p in rest if p.ndim < 2]
                groups = [
                    {"params": decay, "weight_decay": self.args.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0},
                ]
                if self.skip_learning_rate > 0:
                    # No weight decay: it would pull the ridge solution towards zero.
                    groups.append({"params": skip, "weight_decay": 0.0, "lr": self.skip_learning_rate})
                else:
                    for p in skip:
                        p.requires_grad_(False)
                self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
            return self.optimizer

    return BrainformerTrainer


def check_report_to(report_to: str) -> str:
    """Validate `--report-to`; the extra must be installed for tensorboard / wandb."""
    if report_to not in REPORT_TO_CHOICES:
        raise TrainingError(f"--report-to {report_to!r}: expected one of {', '.join(REPORT_TO_CHOICES)}")
    if report_to == "tensorboard" and not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        raise TrainingError("--report-to tensorboard needs TensorBoard: pip install 'brainformer[tensorboard]'")
    if report_to == "wandb" and not importlib.util.find_spec("wandb"):
        raise TrainingError("--report-to wandb needs Weights & Biases: pip install 'brainformer[wandb]'")
    return report_to


def launch_rank() -> int:
    """Global rank of this process under torchrun / accelerate launch (their ``RANK``); 0 alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def build_model(config: Any, seed: int) -> Any:
    """A freshly initialised model for `config` (regression or tokens head), seeded."""
    from transformers import set_seed

    from brainformer.modeling_brainformer import BrainformerForMEGPrediction, BrainformerForMEGTokens

    set_seed(seed)
    cls = BrainformerForMEGPrediction if config.head == "regression" else BrainformerForMEGTokens
    return cls(config)


@dataclass
class TrainResult:
    """Outcome of `train_model`."""

    model: Any
    epochs_run: float
    best_validation_loss: float | None
    test_loss: float | None
    wall_s: float
    ridge_init: RidgeFit | None
    is_main_process: bool = True
    world_size: int = 1


#: `training.lr_scheduler` → the Trainer's `lr_scheduler_type` (each with the warm-up first).
_HF_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _training_arguments(settings: ExperimentSettings, output_dir: Path, report_to: str, has_validation: bool, progress: bool):
    from transformers import TrainingArguments

    training = settings.training
    if training.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device = 'cuda', but CUDA is not available on this machine; use 'auto' or 'cpu'")
    on_cpu = training.device == "cpu" or not torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=max(training.batch_size, 32),
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        lr_scheduler_type=_HF_SCHEDULERS[training.lr_scheduler],
        max_steps=training.max_steps if training.max_steps > 0 else -1,
        max_grad_norm=1.0,
        seed=training.seed,
        data_seed=training.seed,
        report_to=report_to,
        logging_strategy="epoch",
        save_strategy="epoch" if has_validation else "no",
        eval_strategy="epoch" if has_validation else "no",
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss" if has_validation else None,
        greater_is_better=False if has_validation else None,
        save_total_limit=2,
        save_only_model=True,  # model weights only (safetensors); no pickled optimizer state
        prediction_loss_only=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=training.num_workers,
        disable_tqdm=not progress,
        optim="adamw_torch",
        dataloader_pin_memory=not on_cpu,
        # Without a GPU, several processes mean DDP over gloo on the CPU (without `use_cpu` the
        # Trainer would leave each process training alone), and bf16 means CPU autocast.
        use_cpu=training.device == "cpu" or (on_cpu and (_launched_world_size() > 1 or training.bf16)),
        bf16=training.bf16,
        torch_compile=training.torch_compile,
        # Every parameter gets a gradient each step (a frozen skip path is frozen before the DDP
        # wrapper sees it), so DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
    )
    parameters = inspect.signature(TrainingArguments.__init__).parameters
    if "warmup_ratio" in parameters:  # transformers 4.x
        kwargs["warmup_ratio"] = training.warmup_ratio
    else:  # transformers 5: a float in [0, 1) is a ratio
        kwargs["warmup_steps"] = training.warmup_ratio
    return TrainingArguments(**kwargs)


def _remove_checkpoints(checkpoints: Path) -> None:
    """Delete the Trainer's `checkpoint-*` folders (the best model is already loaded and saved);
    keep anything else there, i.e. TensorBoard's `runs/`, and the folder only if it is not empty."""
    if not checkpoints.is_dir():
        return
    for path in checkpoints.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    if not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def train_model(
    data: TrainingData,
    settings: ExperimentSettings,
    out_dir: Path,
    report_to: str = "none",
    progress: bool = True,
    pretrained: Any | None = None,
) -> TrainResult:
    """Train a model on `data` and write `out_dir` (config.json + model.safetensors).

    Checkpoints live in `out_dir/checkpoints` while training and are removed at the end (the
    best one, by validation loss, is loaded back first); TensorBoard logs stay in
    `out_dir/checkpoints/runs`. `pretrained`: a model of the same architecture whose weights,
    all but the skip path, the training starts from (fine-tuning; see `initial_model`).
    """
    out_dir = Path(out_dir)
    if len(data.train) == 0:
        raise TrainingError(
            f"{', '.join(data.sources[:3])}: no training window fits (window_samples={data.config.window_samples})"
        )
    has_validation = len(data.validation) > 0
    if not has_validation:
        logger.info("no validation windows: no early stopping, the last epoch is kept")
    start_time = time.perf_counter()
    model, ridge = initial_model(data, settings, pretrained)
    checkpoints = out_dir / CHECKPOINTS_DIRNAME
    trainer, callbacks = _make_trainer(model, data, settings, checkpoints, report_to, has_validation, progress)
    trainer.train()
    best = trainer.state.best_metric if has_validation else None
    test_loss = _test_loss(trainer, data, callbacks)
    model = _save_trained_model(trainer, out_dir, checkpoints)
    if ridge is not None and trainer.is_world_process_zero():
        _save_linear_path_statistics(data, ridge, out_dir)
    return TrainResult(
        model=model,
        epochs_run=float(trainer.state.epoch or 0.0),
        best_validation_loss=None if best is None else float(best),
        test_loss=test_loss,
        wall_s=time.perf_counter() - start_time,
        ridge_init=ridge,
        is_main_process=trainer.is_world_process_zero(),
        world_size=int(trainer.args.world_size),
    )


def _save_linear_path_statistics(data: TrainingData, ridge: RidgeFit, out_dir: Path) -> None:
    """The sufficient statistics of the skip path's ridge, next to the weights: what lets the
    daemon re-solve the linear path for a stream's own electrodes (`brainformer.linear_path`)."""
    from brainformer.linear_path import statistics_from_prepared

    path = statistics_from_prepared(data.prepared, ridge.lags, ridge.relative_alphas).save(out_dir)
    logger.info("linear path statistics written to %s", path)


def initial_model(data: TrainingData, settings: ExperimentSettings, pretrained: Any | None = None) -> tuple[Any, RidgeFit | None]:
    """The seeded model to train, its skip path fitted as a lagged ridge (`training.init_skip_from_ridge`)
    and frozen when `training.skip_learning_rate` is 0; `(model, the ridge fit or None)`.

    With `pretrained` (a model of the same architecture, e.g. trained on simulated data), every
    weight but the skip path is copied from it after the ridge fit: the skip path is the linear map
    of *these* data, the transformer starts from what it learned elsewhere.
    """
    training = settings.training
    # Same seed on every process: identical initial weights and ridge fit everywhere (DDP also
    # broadcasts the main process's weights when it wraps the model).
    model = build_model(data.config, training.seed)
    has_skip = getattr(model, "linear_skip", None) is not None
    if has_skip and not training.init_skip_from_ridge and training.skip_learning_rate == 0:
        raise TrainingError("training.skip_learning_rate = 0 freezes the linear path, and with "
                            "training.init_skip_from_ridge = false nothing sets it: it would stay at zero")
    ridge = init_skip_from_ridge(model, data, settings) if training.init_skip_from_ridge and has_skip else None
    if ridge is not None and getattr(model, "hop_lookahead", None) is not None:
        init_hop_lookahead(model, data, settings, ridge)
    if training.init_filters_from_bands:
        from brainformer.filter_bank import init_filters_from_bands

        try:
            init_filters_from_bands(model, data, training.gain_filters_on_components)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    if pretrained is not None:
        _copy_transformer_weights(pretrained, model)
    if training.skip_learning_rate == 0 and has_skip:
        # Frozen before the Trainer wraps the model: DDP must not wait for its gradients.
        for module in _linear_path_modules(model):
            module.requires_grad_(False)
    return model, ridge


def _copy_transformer_weights(source: Any, target: Any) -> None:
    """Copy every weight of `source` but the skip path into `target`; `TrainingError` naming the
    first weight whose shape differs (another architecture or channel set)."""
    wanted = {k: v for k, v in source.state_dict().items() if not k.startswith(("linear_skip.", "hop_lookahead."))}
    own = target.state_dict()
    for name, tensor in wanted.items():
        if name not in own or tuple(own[name].shape) != tuple(tensor.shape):
            got = tuple(own[name].shape) if name in own else "missing"
            raise TrainingError(f"pretrained weight {name} has shape {tuple(tensor.shape)}, the model's is {got}")
    target.load_state_dict(wanted, strict=False)


def _make_trainer(
    model: Any,
    data: TrainingData,
    settings: ExperimentSettings,
    checkpoints: Path,
    report_to: str,
    has_validation: bool,
    progress: bool,
) -> tuple[Any, list[Any]]:
    """A `BrainformerTrainer` over the train (and validation) windows, and its callbacks."""
    from transformers import EarlyStoppingCallback

    training = settings.training
    args = _training_arguments(settings, checkpoints, report_to, has_validation, progress)
    callbacks = []
    if has_validation and training.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation if has_validation else None,
        callbacks=callbacks,
        loss_last_samples=training.loss_last_samples,
        skip_learning_rate=training.skip_learning_rate,
    )
    return trainer, callbacks


def _test_loss(trainer: Any, data: TrainingData, callbacks: list[Any]) -> float | None:
    """Loss on the test windows after training, or None without any."""
    for callback in callbacks:  # the test evaluation must not count as a validation step
        trainer.remove_callback(callback)
    if len(data.test) == 0:
        return None
    # Every process takes part: the evaluation loop gathers across them.
    return float(trainer.evaluate(data.test, metric_key_prefix="test")["test_loss"])


def _save_trained_model(trainer: Any, out_dir: Path, checkpoints: Path) -> Any:
    """The trained (best) model, unwrapped, on the CPU in eval mode; the main process writes it to
    `out_dir` and removes the checkpoints."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model = getattr(model, "_orig_mod", model).to("cpu").eval()  # the module under torch.compile
    # All processes are past the last checkpoint load before the main one removes checkpoints.
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        _remove_checkpoints(checkpoints)
    trainer.accelerator.wait_for_everyone()
    return model


# --------------------------------------------------------------------------------------------
# Scores next to the baselines
# --------------------------------------------------------------------------------------------
def evaluate_trained(model: Any, data: TrainingData, settings: ExperimentSettings) -> list[tuple[str, str, EvaluationReport]]:
    """Score the model and the baselines on the validation and test parts of the recordings.

    Validation: baselines fitted on the train part. Test: baselines fitted on train + validation
    (the whole first `split` of the recording), as in `brainformer evaluate`. At most
    `MAX_EVALUATED_RECORDINGS` recordings, read from the prepared arrays.

    Returns:
        `[(recording name, "validation" | "test", report), …]`.
    """
    prepared = data.prepared
    reports = []
    for rec in prepared.recordings[:MAX_EVALUATED_RECORDINGS]:
        train, validation, test = rec.parts["train"], rec.parts["validation"], rec.parts["test"]
        candidates = []
        if validation[1] - validation[0] >= 2:
            candidates.append(("validation", SplitRows(train[0], train[1], validation[0], validation[1])))
        if test[1] - test[0] >= 2:
            train_stop = validation[1] if validation[1] > validation[0] else train[1]
            candidates.append(("test", SplitRows(train[0], train_stop, test[0], test[1])))
        for label, rows in candidates:
            try:
                report = evaluate_arrays(
                    rec.eeg, rec.meg, rec.sfreq_hz, rows, model.config.meg_channel_types, model.config.meg_channel_names,
                    model=model, seed=settings.training.seed, setup={"recording": rec.source, "part": label},
                )
            except ValueError as err:
                logger.warning("%s (%s part): not scored: %s", rec.name, label, err)
                continue
            reports.append((rec.name, label, report))
    return reports
