"""Training with the Hugging Face `Trainer`, and the `brainformer train` command.

```
recordings / BIDS roots ─ prepare_recordings (in memory) ─┐
dataset dir from `brainformer prepare` ───────────────────┴─► windows (+ time shifts, input noise)
    ─► model from the config (+ skip path initialised from a lagged ridge fit on the train part)
    ─► Trainer (eval every epoch on validation, early stopping, best model kept)
    ─► save_pretrained(out): config.json + model.safetensors, all the daemon needs
    ─► validation and test scores next to the ridge baselines (brainformer.evaluation)
```

The loss can be restricted to the newest samples of each window (`training.loss_last_samples`):
those are the only predictions the daemon publishes, and the only ones that see no future input
inside the window, so training on them is training on exactly what is served.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from brainformer.evaluation import (
    DEFAULT_RELATIVE_ALPHAS,
    DEFAULT_VALIDATION_FRACTION,
    EvaluationReport,
    RidgeFit,
    RowBlock,
    SplitRows,
    continuous_blocks,
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
        from brainformer.data import window_starts

        parts = (part,) if isinstance(part, str) else tuple(part)
        self.recordings = list(recordings)
        self.window = int(window_samples)
        self.quantizer = quantizer
        self.max_shift = int(max_shift)
        self.noise_std = float(noise_std)
        self.index: list[tuple[int, int, int, int]] = []  # (recording, start, part_start, part_stop)
        for i, rec in enumerate(self.recordings):
            starts = [rec.parts[p][0] for p in parts if rec.parts[p][1] > rec.parts[p][0]]
            stops = [rec.parts[p][1] for p in parts if rec.parts[p][1] > rec.parts[p][0]]
            if not starts:
                continue
            # Several adjacent parts (train + validation) form one continuous stretch.
            lo, hi = min(starts), max(stops)
            for start in window_starts(lo, hi, self.window, hop_samples):
                self.index.append((i, int(start), lo, hi))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        rec_index, start, lo, hi = self.index[item]
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


class PreparedWindows(torch.utils.data.Dataset):
    """Windows of one split of a dataset written by `brainformer prepare`.

    Time shifts: a window is shifted forward by up to `min(max_shift, gap)` samples by splicing in
    the first samples of the next window of the same recording (`gap` = its start offset), so any
    start position of the continuous part can be drawn, not only multiples of the hop. Noise as
    in `ContinuousWindows`.
    """

    def __init__(self, split: Any, max_shift: int = 0, noise_std: float = 0.0) -> None:
        self.split = split.with_format("numpy", columns=["input_values", "labels"])
        self.max_shift = int(max_shift)
        self.noise_std = float(noise_std)
        self.next_index = np.full(len(split), -1, dtype=np.int64)
        self.gap = np.zeros(len(split), dtype=np.int64)
        if self.max_shift and len(split):
            window = int(np.asarray(self.split[0]["input_values"]).shape[0])
            recordings = np.asarray(split["recording"])
            starts = np.asarray(split["start_sample"], dtype=np.int64)
            order = np.lexsort((starts, recordings))
            for a, b in zip(order[:-1], order[1:]):
                gap = starts[b] - starts[a]
                if recordings[a] == recordings[b] and 0 < gap <= window:
                    self.next_index[a], self.gap[a] = b, gap

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        row = self.split[int(item)]
        eeg, labels = np.asarray(row["input_values"]), np.asarray(row["labels"])
        following = int(self.next_index[item])
        if self.max_shift and following >= 0:
            shift = int(torch.randint(0, min(self.max_shift, int(self.gap[item])) + 1, ()).item())
            if shift:
                window, gap = eeg.shape[0], int(self.gap[item])
                nxt = self.split[following]
                eeg = np.concatenate([eeg[shift:], np.asarray(nxt["input_values"])[window - gap : window - gap + shift]])
                labels = np.concatenate([labels[shift:], np.asarray(nxt["labels"])[window - gap : window - gap + shift]])
        eeg_t = torch.from_numpy(np.array(eeg, dtype=np.float32))
        if self.noise_std:
            eeg_t = eeg_t + self.noise_std * torch.randn_like(eeg_t)
        return {"input_values": eeg_t, "labels": torch.from_numpy(np.array(labels))}


# --------------------------------------------------------------------------------------------
# Loading the training data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Everything `train_model` needs.

    Attributes:
        config: model config with the fitted scaling statistics and the `[model]` settings.
        train, validation, test: torch datasets of windows (validation/test may be empty).
        prepared: continuous prepared recordings (`brainformer.data.PreparedData`) when training
            from recordings; None for a prepared dataset directory.
        dataset_splits: the `datasets.DatasetDict` when training from a prepared dataset.
        sources: the recording files behind the data.
    """

    config: Any
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    prepared: Any | None
    dataset_splits: Any | None
    sources: list[str]


# Model fields that change what the data are: a prepared dataset fixes them.
_DATA_FIELDS = (
    "eeg_channel_names", "meg_channel_names", "meg_channel_types", "sfreq_hz", "window_samples", "highpass_hz",
    "lowpass_hz", "filter_order", "notch_hz", "notch_quality", "eeg_reference",
)


def _eval_hop(settings: ExperimentSettings, window_samples: int) -> int:
    if settings.data.eval_hop_samples is not None:
        return settings.data.eval_hop_samples
    # Score every sample once when only the newest samples of a window count.
    last = settings.training.loss_last_samples
    return last if 0 < last < window_samples else window_samples


def load_training_data(paths: Sequence[str | Path], settings: ExperimentSettings) -> TrainingData:
    """Prepare recordings in memory, or open a dataset written by `brainformer prepare`.

    Raises:
        TrainingError / DataError / PreprocessingError: with the path and the problem.
    """
    from brainformer.data import is_prepared_dataset, load_prepare_info, load_prepared_dataset, prepare_recordings
    from brainformer.quantization import MEGQuantizer

    paths = [Path(p) for p in paths]
    if not paths:
        raise TrainingError("--data: give at least one recording, BIDS root or prepared dataset")
    training = settings.training
    prepared_dirs = [p for p in paths if p.is_dir() and is_prepared_dataset(p)]
    if prepared_dirs:
        if len(paths) > 1:
            raise TrainingError(f"{prepared_dirs[0]}: a prepared dataset must be the only --data argument")
        splits, dataset_config = load_prepared_dataset(paths[0])
        config = _config_with_model_settings(dataset_config, settings.model, paths[0])
        tokens = np.issubdtype(np.dtype(splits["train"].features["labels"].dtype), np.integer)
        if tokens != (config.head == "tokens"):
            raise TrainingError(
                f"{paths[0]}: labels are {'tokens' if tokens else 'continuous'} but model.head = {config.head!r}; "
                f"run `brainformer prepare` {'with' if config.head == 'tokens' else 'without'} --tokenize"
            )
        sources = [r["source"] for r in load_prepare_info(paths[0]).get("recordings", [])]
        return TrainingData(
            config=config,
            train=PreparedWindows(splits["train"], training.time_shift_samples, training.noise_std),
            validation=PreparedWindows(splits["validation"]),
            test=PreparedWindows(splits["test"]),
            prepared=None,
            dataset_splits=splits,
            sources=sources,
        )
    prepared = prepare_recordings(paths, settings)
    config = prepared.config
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
        dataset_splits=None,
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
def _prepared_ridge_blocks(data: TrainingData, max_lag: int) -> tuple[Any, dict[str, int]]:
    """Block source over the train rows and the validation boundary (last 20 %) per recording."""
    if data.prepared is not None:
        recs = [r for r in data.prepared.recordings if r.parts["train"][1] > r.parts["train"][0]]
        boundaries = {
            r.name: r.parts["train"][1] - int(round(DEFAULT_VALIDATION_FRACTION * (r.parts["train"][1] - r.parts["train"][0])))
            for r in recs
        }

        def blocks() -> Iterator[RowBlock]:
            for r in recs:
                start, stop = r.parts["train"]
                yield from continuous_blocks(r.eeg, r.meg, start, stop, max_lag, group=r.name)

        return blocks, boundaries

    split = data.dataset_splits["train"]
    recordings = np.asarray(split["recording"])
    starts = np.asarray(split["start_sample"], dtype=np.int64)
    window = data.config.window_samples
    order = np.lexsort((starts, recordings))
    boundaries = {}
    for name in np.unique(recordings):
        mine = starts[recordings == name]
        lo, hi = int(mine.min()) + max_lag, int(mine.max()) + window
        boundaries[str(name)] = hi - int(round(DEFAULT_VALIDATION_FRACTION * (hi - lo)))
    numeric = split.with_format("numpy", columns=["input_values", "labels"])

    def blocks() -> Iterator[RowBlock]:
        covered: dict[str, int] = {}
        for i in order:
            name, start = str(recordings[i]), int(starts[i])
            first_new = max(covered.get(name, start), start + max_lag)  # rows with a full lag history
            covered[name] = max(covered.get(name, start), start + window)
            if first_new >= start + window:
                continue
            row = numeric[int(i)]
            history = first_new - start
            yield RowBlock(
                eeg=np.asarray(row["input_values"]), history=history,
                meg=np.asarray(row["labels"])[history:], first_row=first_new, group=name,
            )

    return blocks, boundaries


def init_skip_from_ridge(model: Any, data: TrainingData, settings: ExperimentSettings) -> RidgeFit:
    """Set the model's lagged-linear skip path to a closed-form lagged ridge fit on the train part.

    Lags `0, step, 2·step, … < config.skip_lags` (step = `training.ridge_lag_step_samples`); the
    penalty is chosen on the last 20 % of the train part and the map refitted on all of it, as for
    the lagged-ridge baseline. The validation and test parts are never seen. The transformer's
    output projection is set to zero, so the model starts as exactly this ridge map.
    """
    config = model.config
    lags = tuple(range(0, config.skip_lags, settings.training.ridge_lag_step_samples))
    blocks, boundaries = _prepared_ridge_blocks(data, max(lags))
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
            outputs = model(input_values=inputs["input_values"])
            scores = outputs.predictions if model.config.head == "regression" else outputs.logits
            loss = _newest_samples_loss(model, scores, labels, self.loss_last_samples)
            return (loss, outputs) if return_outputs else loss

        def create_optimizer(self, *args: Any, **kwargs: Any):
            if self.skip_learning_rate is None or getattr(self.model, "linear_skip", None) is None:
                return super().create_optimizer(*args, **kwargs)
            if self.optimizer is None:
                skip = [p for p in self.model.linear_skip.parameters()]
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


def _training_arguments(settings: ExperimentSettings, output_dir: Path, report_to: str, has_validation: bool, progress: bool):
    from transformers import TrainingArguments

    training = settings.training
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=max(training.batch_size, 32),
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        lr_scheduler_type="cosine",
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
        dataloader_pin_memory=torch.cuda.is_available(),
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
) -> TrainResult:
    """Train a model on `data` and write `out_dir` (config.json + model.safetensors).

    Checkpoints live in `out_dir/checkpoints` while training and are removed at the end (the
    best one, by validation loss, is loaded back first); TensorBoard logs stay in
    `out_dir/checkpoints/runs`.
    """
    from transformers import EarlyStoppingCallback

    training = settings.training
    out_dir = Path(out_dir)
    if len(data.train) == 0:
        raise TrainingError(
            f"{', '.join(data.sources[:3])}: no training window fits (window_samples={data.config.window_samples})"
        )
    has_validation = len(data.validation) > 0
    if not has_validation:
        logger.info("no validation windows: no early stopping, the last epoch is kept")
    start_time = time.perf_counter()
    model = build_model(data.config, training.seed)
    ridge = None
    if training.init_skip_from_ridge and getattr(model, "linear_skip", None) is not None:
        ridge = init_skip_from_ridge(model, data, settings)

    checkpoints = out_dir / CHECKPOINTS_DIRNAME
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
    trainer.train()
    best = trainer.state.best_metric if has_validation else None
    test_loss = None
    for callback in callbacks:  # the test evaluation must not count as a validation step
        trainer.remove_callback(callback)
    if len(data.test) > 0:
        test_loss = float(trainer.evaluate(data.test, metric_key_prefix="test")["test_loss"])
    model = trainer.model.to("cpu").eval()
    # The Trainer writes `use_cache` into every model's config; it is no Brainformer field, and a
    # config.json holding it would be refused when the model directory is loaded.
    model.config.__dict__.pop("use_cache", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    _remove_checkpoints(checkpoints)
    return TrainResult(
        model=model,
        epochs_run=float(trainer.state.epoch or 0.0),
        best_validation_loss=None if best is None else float(best),
        test_loss=test_loss,
        wall_s=time.perf_counter() - start_time,
        ridge_init=ridge,
    )


# --------------------------------------------------------------------------------------------
# Scores next to the baselines
# --------------------------------------------------------------------------------------------
def evaluate_trained(model: Any, data: TrainingData, settings: ExperimentSettings) -> list[tuple[str, str, EvaluationReport]]:
    """Score the model and the baselines on the validation and test parts of the recordings.

    Validation: baselines fitted on the train part. Test: baselines fitted on train + validation
    (the whole first `split` of the recording), as in `brainformer evaluate`. At most
    `MAX_EVALUATED_RECORDINGS` recordings; with a prepared dataset, its source recordings are
    preprocessed again with the model's config when they still exist.

    Returns:
        `[(recording name, "validation" | "test", report), …]`.
    """
    prepared = data.prepared
    if prepared is None:
        from brainformer.data import prepare_recordings

        existing = [s for s in data.sources if Path(s).exists()][:MAX_EVALUATED_RECORDINGS]
        if not existing:
            logger.info("the prepared dataset's recordings are not available: no baseline comparison")
            return []
        prepared = prepare_recordings(existing, settings, config=model.config)
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


# --------------------------------------------------------------------------------------------
# `brainformer train`
# --------------------------------------------------------------------------------------------
def _settings_with_overrides(config_file: Path | None, epochs: int | None, seed: int | None) -> ExperimentSettings:
    from brainformer.settings import SettingsError, TrainingSettings, load_settings

    settings = load_settings(config_file)
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        try:
            training: TrainingSettings = dataclasses.replace(settings.training, **overrides)
        except SettingsError as err:
            option = "--epochs" if "epochs" in str(err) else "--seed"
            raise SettingsError(f"{option}: {err}") from None
        settings = dataclasses.replace(settings, training=training)
    return settings


def train_command(
    data: Sequence[Path],
    out: Path,
    config_file: Path | None,
    epochs: int | None,
    report_to: str,
    seed: int | None,
) -> None:
    """`brainformer train`: train, write the model directory, print scores next to the baselines."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    from brainformer.evaluation import format_comparisons, format_table, wide_console

    console = wide_console()
    error_console = Console(stderr=True)
    try:
        check_report_to(report_to)
        settings = _settings_with_overrides(config_file, epochs, seed)
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--out {out}: exists and is not a directory")
        with console.status("preparing data …"):
            training_data = load_training_data(data, settings)
        config = training_data.config
        console.print(
            f"{len(training_data.sources)} recording(s), {config.n_eeg_channels} EEG → {config.n_meg_channels} MEG "
            f"at {config.sfreq_hz:g} Hz; windows: {len(training_data.train)} train, "
            f"{len(training_data.validation)} validation, {len(training_data.test)} test",
            highlight=False,
        )
        result = train_model(training_data, settings, out, report_to=report_to)
        with console.status("scoring against the baselines …"):
            reports = evaluate_trained(result.model, training_data, settings)
    except (ValueError, OSError) as err:  # TrainingError, SettingsError, DataError, PreprocessingError …
        error_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=2) from None

    n_parameters = sum(p.numel() for p in result.model.parameters())
    console.print(
        f"model written to {out} ({n_parameters / 1e6:.2f} M parameters) after {result.epochs_run:g} epoch(s) "
        f"in {result.wall_s:.0f} s; best validation loss "
        f"{'–' if result.best_validation_loss is None else f'{result.best_validation_loss:.4f}'}, test loss "
        f"{'–' if result.test_loss is None else f'{result.test_loss:.4f}'}",
        highlight=False,
    )
    for name, part, report in reports:
        seconds = report.setup["n_test_samples"] / report.sfreq_hz
        console.print(format_table(report, f"{name}: {part} part ({seconds:.1f} s)"))
        for line in format_comparisons(report):
            console.print(line, highlight=False)
    if not reports:
        console.print("no continuous recording to score against the baselines; use `brainformer evaluate --data FILE`")
    if report_to == "tensorboard":
        console.print(f"TensorBoard logs: {Path(out) / CHECKPOINTS_DIRNAME / 'runs'}")

