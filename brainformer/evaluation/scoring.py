"""Scoring: the model predicted as served, every method scored on the same test samples, the report.

Everything is scored on the same held-out samples of one continuous, preprocessed recording:

```
samples  0 ──settle── train_start ─────────── fit ─────────── │ validation (last 20 %) │ split ──settle── test_start ── n
         ╰ filter transients dropped                                                     ╰ dropped: the filters and the
                                                                                           lag/window context settle
```

- The baselines (`brainformer.evaluation.baselines`) are fitted on the train part only.
- The model is scored exactly as it is served: windows of `window_samples` slide over the
  continuous recording with the serving hop, and only the newest `hop` predictions of each window
  are kept. Causal context from before the test part is allowed (the daemon has it too).
- `score_methods` is the one place where predictions become scores (metrics and block bootstrap,
  `brainformer.evaluation.metrics`); the same resampled blocks serve every method, so the
  model − baseline intervals are paired.
- From a recording, every method is scored three times with the same blocks: on all test
  samples, on the clean ones (heartbeat and blink windows left out) and on the cardiac ones
  (inside heartbeat windows); the windows come from `brainformer.evaluation.artefacts`.
- Two truths, both named: the MEG the model learned (its target: causal or zero phase, see
  `BrainformerConfig.target_phase`) and the other one, the same band with the other phase. The
  zero-phase truth is the brain as it is now, what a closed loop feels; against it every method
  is also given its effective delay (`brainformer.evaluation.delay`). The baselines are fitted
  anew for each truth, so each is scored next to ridge maps fitted to that very target.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from brainformer.config_fields import SIGNAL_FIELD_NAMES
from brainformer.evaluation.artefacts import ArtefactMask, detect_artefacts
from brainformer.evaluation.delay import EffectiveDelay, band_effective_delays
from brainformer.evaluation.baselines import (
    DEFAULT_LAG_STEP_SAMPLES,
    DEFAULT_MAX_LAG_S,
    DEFAULT_VALIDATION_FRACTION,
    fit_ridge,
    lag_samples,
)
from brainformer.evaluation.metrics import (
    DEFAULT_BOOTSTRAP_BLOCK_S,
    DEFAULT_BOOTSTRAP_REPLICATES,
    MEG_TYPES,
    BlockSums,
    ChannelScores,
    EvaluationError,
    bootstrap_block_counts,
    bootstrap_interval,
    nanmean,
    score_channels,
)

logger = logging.getLogger(__name__)

#: Samples dropped at the start of the train part and of the test part (filter transients, context).
DEFAULT_SETTLE_S = 1.0

#: The two truths a model is scored against, by `target_phase`.
TRUTH_NAMES = {"causal": "causal", "zero_phase": "zero-phase"}

#: A method other than the baselines and the model: `f(start, stop) -> (stop − start, n_meg)`.
Predictor = Callable[[int, int], np.ndarray]


# --------------------------------------------------------------------------------------------
# The model, scored as served
# --------------------------------------------------------------------------------------------
def served_window_ends(start: int, stop: int, hop_samples: int) -> np.ndarray:
    """Exclusive end rows of the serving windows whose newest `hop` samples cover `[start, stop)`.

    Ends are `start + hop, start + 2·hop, …`; a last, shorter step ends exactly at `stop`.
    """
    if hop_samples < 1 or stop <= start:
        raise EvaluationError(f"need hop >= 1 and a non-empty range, got hop={hop_samples}, rows [{start}, {stop})")
    ends = np.arange(start + hop_samples, stop + 1, hop_samples)
    if ends.size == 0 or ends[-1] != stop:
        ends = np.append(ends, stop)
    return ends


def predict_as_served(
    model: Any,
    eeg: np.ndarray,
    start: int,
    stop: int,
    hop_samples: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> np.ndarray:
    """Continuous prediction of rows `[start, stop)` the way the daemon produces it.

    A window of `window_samples` ending at each of `served_window_ends(start, stop, hop)` is fed to
    the model and only its newest samples that are not yet covered are kept. Rows before `start`
    are causal context; before row 0 the window is padded with zeros (the scaled mean).

    Args:
        model: a `BrainformerForMEGPrediction` or `BrainformerForMEGTokens`.
        eeg: `(n, n_eeg)` continuous preprocessed (scaled) EEG.
        start, stop: rows to predict.
        hop_samples: serving hop; defaults to `model.config.hop_samples`.

    Returns:
        `(stop − start, n_meg)` float64 predictions in scaled units.
    """
    config = model.config
    window = int(config.window_samples)
    hop = int(config.hop_samples if hop_samples is None else hop_samples)
    if not 1 <= hop <= window:
        raise EvaluationError(f"hop_samples must lie in [1, window_samples={window}], got {hop}")
    eeg = np.asarray(eeg, dtype=np.float32)
    if eeg.ndim != 2 or eeg.shape[1] != config.n_eeg_channels:
        raise EvaluationError(f"EEG must be (n, {config.n_eeg_channels}), got {eeg.shape}")
    ends = served_window_ends(start, stop, hop)
    firsts = np.concatenate([[start], ends[:-1]])  # window k publishes rows [firsts[k], ends[k])
    windows = _windows_ending_at(eeg, ends, window)
    predict = _window_predictor(model, device)
    out = np.empty((stop - start, config.n_meg_channels))
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(ends), batch_size):
            batch = slice(first, first + batch_size)
            predicted = predict(windows(batch))  # (B, window, n_meg)
            for j, (new_first, end) in enumerate(zip(firsts[batch], ends[batch])):
                n_new = int(end) - int(new_first)  # hop, or less for the last step
                out[new_first - start : end - start] = predicted[j, window - n_new :]
    finally:
        model.train(was_training)
    return out


def _windows_ending_at(eeg: np.ndarray, ends: np.ndarray, window: int) -> Callable[[slice], np.ndarray]:
    """`f(batch) -> (B, window, n_eeg)` float32 windows ending at `ends[batch]`, zero-padded before row 0."""
    pad = max(window - int(ends[0]), 0)
    stop = int(ends[-1])
    padded = np.concatenate([np.zeros((pad, eeg.shape[1]), np.float32), eeg[:stop]]) if pad else eeg[:stop]
    views = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n − window + 1, n_eeg, window)
    return lambda batch: np.ascontiguousarray(views[ends[batch] + pad - window].transpose(0, 2, 1))


def _window_predictor(model: Any, device: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """`f(windows (B, window, n_eeg)) -> (B, window, n_meg)` scaled predictions of either head
    (the tokens head generates and its tokens are decoded)."""
    import torch

    if device is None:
        device = str(next(model.parameters()).device)
    quantizer = None
    if model.config.head == "tokens":
        from brainformer.quantization import MEGQuantizer

        quantizer = MEGQuantizer.from_config(model.config)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(device)
            if quantizer is None:
                return model(input_values=inputs).predictions.float().cpu().numpy()
            return np.asarray(quantizer.decode(model.generate(inputs).cpu().numpy()), dtype=np.float64)

    return predict


# --------------------------------------------------------------------------------------------
# One evaluation run on arrays
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitRows:
    """Row ranges of one continuous recording.

    Attributes:
        train_start, train_stop: rows the baselines (and the model) may learn from.
        test_start, test_stop: rows every method is scored on.
    """

    train_start: int
    train_stop: int
    test_start: int
    test_stop: int

    @classmethod
    def from_fraction(cls, n_samples: int, sfreq_hz: float, split: float, settle_s: float = DEFAULT_SETTLE_S) -> "SplitRows":
        """First `split` of the recording (in time) for training, the rest for testing; `settle_s`
        dropped at the start of each part."""
        if not 0 < split < 1:
            raise EvaluationError(f"split must lie strictly between 0 and 1, got {split}")
        settle = int(round(settle_s * sfreq_hz))
        boundary = int(round(split * n_samples))
        rows = cls(settle, boundary, boundary + settle, n_samples)
        if rows.train_stop - rows.train_start < 2 or rows.test_stop - rows.test_start < 2:
            raise EvaluationError(
                f"a recording of {n_samples / sfreq_hz:.2f} s split at {split} with {settle_s} s settling "
                f"leaves {max(rows.train_stop - rows.train_start, 0)} train and "
                f"{max(rows.test_stop - rows.test_start, 0)} test samples; it is too short"
            )
        return rows


@dataclass
class MethodResult:
    """Predictions and scores of one method on the test rows."""

    name: str
    predictions: np.ndarray  # (test samples, n_meg)
    scores: ChannelScores
    bootstrap_r: np.ndarray = field(repr=False)  # (replicates,) mean r per replicate
    bootstrap_r2: np.ndarray = field(repr=False)  # (replicates,) mean R² per replicate
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    """All methods scored on the same test samples of one recording.

    `methods` holds the scores on all test samples. When the recording's artefacts were looked
    for (`artefacts`), `clean` holds every method scored on the artefact-free test samples and
    `cardiac` on those inside heartbeat windows (None where fewer than 2 such samples exist).

    `truth_name` says which MEG `truth` is (``"causal"``, ``"zero-phase"``, or ``"target"`` when
    unknown); `other_truths` holds the same methods scored against the other truth (baselines
    fitted to it); `effective_delays` maps a truth's name to each method's effective delay against
    the zero-phase truth (`band_effective_delays`: overall and per band).
    """

    methods: dict[str, MethodResult]
    truth: np.ndarray  # (test samples, n_meg) scaled
    channel_names: list[str]
    channel_types: list[str]
    sfreq_hz: float
    rows: SplitRows
    setup: dict[str, Any]
    artefacts: ArtefactMask | None = None
    clean: dict[str, MethodResult] | None = None
    cardiac: dict[str, MethodResult] | None = None
    truth_name: str = "target"
    other_truths: dict[str, "EvaluationReport"] = field(default_factory=dict)
    effective_delays: dict[str, dict[str, dict[str, EffectiveDelay]]] = field(default_factory=dict)

    def all_truths(self) -> dict[str, "EvaluationReport"]:
        """This report and the other truths' by truth name, this one first."""
        return {self.truth_name: self} | self.other_truths

    def subsets(self) -> dict[str, dict[str, MethodResult]]:
        """`{"clean": …, "cardiac": …}`, the sample subsets that were scored."""
        return {name: methods for name, methods in (("clean", self.clean), ("cardiac", self.cardiac)) if methods}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{method: {r_mean, r2_mean, nmse, mag, grad, bootstrap, per_channel, …, clean,
        cardiac}, comparisons, artefacts, channels, setup}`; `clean`, `cardiac` and `artefacts` only
        when the artefacts were looked for."""
        out: dict[str, Any] = {}
        for name, result in self.methods.items():
            entry = result.scores.summary(self.channel_types)
            entry["bootstrap"] = _bootstrap(result)
            entry.update(result.details)
            entry["per_channel"] = {
                "r": [_finite_or_none(v) for v in result.scores.r],
                "r2": [_finite_or_none(v) for v in result.scores.r2],
            }
            for subset, methods in self.subsets().items():
                entry[subset] = _subset_entry(methods[name], self.channel_types, per_channel=subset == "clean")
            out[name] = entry
        comparisons = {}
        for name in self.methods:
            if name == "model" or "model" not in self.methods:
                continue
            comparisons[f"model_minus_{name}"] = _comparison(self.methods["model"], self.methods[name])
            for subset, methods in self.subsets().items():
                comparisons[f"model_minus_{name}"][subset] = _comparison(methods["model"], methods[name])
        out["comparisons"] = comparisons
        if self.artefacts is not None:
            out["artefacts"] = self.artefacts.to_dict()
        out["channels"] = {"names": list(self.channel_names), "types": list(self.channel_types)}
        out["setup"] = dict(self.setup)
        out["truth"] = self.truth_name
        if self.other_truths:
            out["other_truths"] = {}
            for name, other in self.other_truths.items():
                entry = other.to_dict()
                for key in ("channels", "setup", "artefacts"):
                    entry.pop(key, None)
                out["other_truths"][name] = entry
        if self.effective_delays:
            out["effective_delay"] = {
                fitted_to: {method: {band: d.to_dict() for band, d in bands.items()} for method, bands in methods.items()}
                for fitted_to, methods in self.effective_delays.items()
            }
        return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _bootstrap(result: MethodResult) -> dict[str, Any]:
    return {"r_mean": bootstrap_interval(result.bootstrap_r), "r2_mean": bootstrap_interval(result.bootstrap_r2)}


def _subset_entry(result: MethodResult, channel_types: Sequence[str], per_channel: bool) -> dict[str, Any]:
    """`{r_mean, r2_mean, nmse, r_mag, r2_mag, r_grad, r2_grad, n_samples, bootstrap[, per_channel]}`."""
    summary = result.scores.summary(channel_types)
    entry: dict[str, Any] = {"r_mean": summary["r_mean"], "r2_mean": summary["r2_mean"], "nmse": summary["nmse"]}
    for kind in MEG_TYPES:
        if kind in summary:
            entry[f"r_{kind}"] = summary[kind]["r_mean"]
            entry[f"r2_{kind}"] = summary[kind]["r2_mean"]
    entry["n_samples"] = int(result.predictions.shape[0])
    entry["bootstrap"] = _bootstrap(result)
    if per_channel:
        entry["per_channel"] = {"r": [_finite_or_none(v) for v in result.scores.r]}
    return entry


def _comparison(model: MethodResult, other: MethodResult) -> dict[str, Any]:
    return {
        "r_mean": _delta(model.scores.r, other.scores.r, model.bootstrap_r - other.bootstrap_r),
        "r2_mean": _delta(model.scores.r2, other.scores.r2, model.bootstrap_r2 - other.bootstrap_r2),
    }


def _delta(a: np.ndarray, b: np.ndarray, replicates: np.ndarray) -> dict[str, Any]:
    return {"value": nanmean(a) - nanmean(b), **bootstrap_interval(replicates)}


def paired_r2_difference(truth: np.ndarray, reference: np.ndarray, other: np.ndarray, channel_types: Sequence[str],
                         sfreq_hz: float, **bootstrap: Any) -> dict[str, Any]:
    """`{value, std, ci95, reference, other}`: mean R² over channels of `other` minus that of
    `reference` (and each one's), both predicting the same `truth` rows, with the report's paired
    block bootstrap (`score_methods`; `bootstrap`: its `bootstrap_block_s`, `bootstrap_replicates`,
    `seed`)."""
    methods = score_methods(truth, {"reference": reference, "other": other}, channel_types, sfreq_hz, **bootstrap)
    return {**_comparison(methods["other"], methods["reference"])["r2_mean"],
            "reference": nanmean(methods["reference"].scores.r2), "other": nanmean(methods["other"].scores.r2)}


def evaluate_arrays(
    eeg: np.ndarray,
    meg: np.ndarray,
    sfreq_hz: float,
    rows: SplitRows,
    channel_types: Sequence[str],
    channel_names: Sequence[str] | None = None,
    model: Any | None = None,
    hop_samples: int | None = None,
    extra_predictors: Mapping[str, Predictor] | None = None,
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    lag_step_samples: int = DEFAULT_LAG_STEP_SAMPLES,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    bootstrap_block_s: float = DEFAULT_BOOTSTRAP_BLOCK_S,
    bootstrap_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES,
    seed: int = 0,
    setup: Mapping[str, Any] | None = None,
    artefacts: ArtefactMask | None = None,
) -> EvaluationReport:
    """Fit the baselines on the train rows and score them, the model and any extra predictors on
    the test rows of one continuous preprocessed recording.

    Args:
        eeg: `(n, n_eeg)` scaled EEG; meg: `(n, n_meg)` scaled MEG (same rows).
        sfreq_hz: rate of the rows.
        rows: train and test rows.
        channel_types: `(n_meg,)` `"mag"`/`"grad"`.
        model: a Brainformer model (optional), predicted with `predict_as_served`.
        extra_predictors: name → `f(start, stop) -> (stop − start, n_meg)` (e.g. a simulation oracle).
        artefacts: the artefact mask of exactly the test rows (`ArtefactMask.for_rows`); every
            method is then also scored on the clean and on the cardiac samples.

    Returns:
        An `EvaluationReport` with methods `ridge`, `lagged_ridge`, then `model`, then the extras.
    """
    eeg = np.asarray(eeg)
    meg = np.asarray(meg)
    _check_rows(eeg, meg, rows)
    channel_types = list(channel_types)
    channel_names = list(channel_names) if channel_names is not None else [f"MEG {i}" for i in range(meg.shape[1])]
    truth = meg[rows.test_start : rows.test_stop].astype(np.float64)

    predictions, details = _baseline_predictions(eeg, meg, sfreq_hz, rows, max_lag_s, lag_step_samples, validation_fraction)
    _add_predictions(predictions, details, eeg, rows, truth.shape, model, hop_samples, extra_predictors or {})
    bootstrap = dict(bootstrap_block_s=bootstrap_block_s, bootstrap_replicates=bootstrap_replicates, seed=seed)
    methods = score_methods(truth, predictions, channel_types, sfreq_hz, details, **bootstrap)
    subsets = _score_subsets(truth, predictions, channel_types, sfreq_hz, details, rows, artefacts, bootstrap)
    full_setup = {
        "sfreq_hz": float(sfreq_hz),
        "train_rows": [rows.train_start, rows.train_stop],
        "test_rows": [rows.test_start, rows.test_stop],
        "n_test_samples": int(truth.shape[0]),
        "validation_fraction": validation_fraction,
        "bootstrap": {"block_s": bootstrap_block_s, "replicates": bootstrap_replicates, "seed": seed},
    }
    full_setup.update(setup or {})
    return EvaluationReport(
        methods=methods, truth=truth, channel_names=channel_names, channel_types=channel_types,
        sfreq_hz=float(sfreq_hz), rows=rows, setup=full_setup, artefacts=artefacts, **subsets,
    )


def _add_predictions(
    predictions: dict[str, np.ndarray],
    details: dict[str, dict[str, Any]],
    eeg: np.ndarray,
    rows: SplitRows,
    truth_shape: tuple[int, ...],
    model: Any | None,
    hop_samples: int | None,
    extra_predictors: Mapping[str, Predictor],
) -> None:
    """Add the model's test predictions (as served) and the extra predictors' to `predictions`."""
    if model is not None:
        hop = int(model.config.hop_samples if hop_samples is None else hop_samples)
        predictions["model"] = predict_as_served(model, eeg, rows.test_start, rows.test_stop, hop)
        details["model"] = {"hop_samples": hop, "window_samples": int(model.config.window_samples)}
    for name, predictor in extra_predictors.items():
        predicted = np.asarray(predictor(rows.test_start, rows.test_stop), dtype=np.float64)
        if predicted.shape != truth_shape:
            raise EvaluationError(f"predictor {name!r} returned shape {predicted.shape}, expected {truth_shape}")
        predictions[name] = predicted


def _score_subsets(
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    channel_types: Sequence[str],
    sfreq_hz: float,
    details: dict[str, dict[str, Any]],
    rows: SplitRows,
    artefacts: ArtefactMask | None,
    bootstrap: dict[str, Any],
) -> dict[str, dict[str, MethodResult] | None]:
    """Every method scored on the clean and on the cardiac test samples (None: no mask, or fewer than 2)."""
    subsets: dict[str, dict[str, MethodResult] | None] = {"clean": None, "cardiac": None}
    if artefacts is None:
        return subsets
    if (artefacts.first_row, artefacts.n_rows) != (rows.test_start, truth.shape[0]):
        raise EvaluationError(
            f"the artefact mask covers rows [{artefacts.first_row}, {artefacts.first_row + artefacts.n_rows}), "
            f"the test rows are [{rows.test_start}, {rows.test_stop})"
        )
    for subset, mask in (("clean", artefacts.clean), ("cardiac", artefacts.cardiac)):
        if mask.sum() >= 2:
            subsets[subset] = score_methods(truth, predictions, channel_types, sfreq_hz, details, sample_mask=mask, **bootstrap)
        else:
            logger.info("%s samples: %d of %d test samples, not scored", subset, int(mask.sum()), mask.size)
    return subsets


def _check_rows(eeg: np.ndarray, meg: np.ndarray, rows: SplitRows) -> None:
    if eeg.ndim != 2 or meg.ndim != 2 or eeg.shape[0] != meg.shape[0]:
        raise EvaluationError(f"EEG and MEG must be (n, channels) arrays with the same n, got {eeg.shape} and {meg.shape}")
    if not (0 <= rows.train_start < rows.train_stop <= rows.test_start < rows.test_stop <= eeg.shape[0]):
        raise EvaluationError(f"invalid rows {rows} for a recording of {eeg.shape[0]} samples")


def _baseline_predictions(
    eeg: np.ndarray,
    meg: np.ndarray,
    sfreq_hz: float,
    rows: SplitRows,
    max_lag_s: float,
    lag_step_samples: int,
    validation_fraction: float,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Instantaneous and lagged ridge fitted on the train rows: `({name: (test samples, n_meg)},
    {name: {alpha, lags_samples}})`."""
    predictions: dict[str, np.ndarray] = {}
    details: dict[str, dict[str, Any]] = {}
    lagged = lag_samples(sfreq_hz, max_lag_s, lag_step_samples)
    for name, lags in (("ridge", (0,)), ("lagged_ridge", lagged)):
        fit = fit_ridge(eeg, meg, lags, rows.train_start, rows.train_stop, validation_fraction)
        predictions[name] = fit.predict(eeg, rows.test_start, rows.test_stop)
        details[name] = {"alpha": fit.alpha, "lags_samples": list(fit.lags)}
        logger.info("%s: alpha %.3g, lags %s", name, fit.alpha, fit.lags)
    return predictions, details


def score_methods(
    truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    channel_types: Sequence[str],
    sfreq_hz: float,
    details: Mapping[str, dict[str, Any]] | None = None,
    bootstrap_block_s: float = DEFAULT_BOOTSTRAP_BLOCK_S,
    bootstrap_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES,
    seed: int = 0,
    sample_mask: np.ndarray | None = None,
) -> dict[str, MethodResult]:
    """Score every method's predictions of the same test samples: metrics and a block bootstrap.

    The bootstrap draws one set of blocks for all methods, so differences between methods are
    paired. This is the one place where samples are scored: a subset of samples (e.g. the
    artefact-free ones) is scored by passing `sample_mask`. The blocks are cut from the whole
    time axis and drawn with the same seed whatever the mask, so a subset is resampled with the
    very blocks drawn for all samples (each block contributing only its samples in the subset).

    Args:
        truth: `(test samples, n_meg)`; predictions: name → the same shape, finite.
        channel_types: `(n_meg,)` `"mag"`/`"grad"`.
        details: name → extra entries of the method in the report (penalty, hop …).
        sample_mask: `(test samples,)` bool, the samples to score (default: all); at least 2.

    Returns:
        name → `MethodResult` whose `predictions` are those of the scored samples.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if sample_mask is not None:
        sample_mask = np.asarray(sample_mask, dtype=bool)
        if sample_mask.shape != (truth.shape[0],):
            raise EvaluationError(f"sample_mask has shape {sample_mask.shape}, expected ({truth.shape[0]},)")
        if sample_mask.sum() < 2:
            raise EvaluationError(f"sample_mask keeps {int(sample_mask.sum())} of {truth.shape[0]} samples; need at least 2")
    block_samples = max(int(round(bootstrap_block_s * sfreq_hz)), 1)
    n_blocks = -(-truth.shape[0] // block_samples)
    counts = bootstrap_block_counts(n_blocks, bootstrap_replicates, seed)  # shared: paired comparisons
    kept = slice(None) if sample_mask is None else sample_mask
    methods: dict[str, MethodResult] = {}
    for name, predicted in predictions.items():
        if not np.all(np.isfinite(predicted)):
            raise EvaluationError(f"{name} produced NaN/Inf predictions")
        boot_r, boot_r2 = BlockSums.from_arrays(truth, predicted, block_samples, sample_mask).resampled_means(counts)
        methods[name] = MethodResult(
            name=name, predictions=predicted[kept], scores=score_channels(truth[kept], predicted[kept], channel_types),
            bootstrap_r=boot_r, bootstrap_r2=boot_r2, details=dict((details or {}).get(name, {})),
        )
    return methods


# --------------------------------------------------------------------------------------------
# Recording → report, and the report as JSON
# --------------------------------------------------------------------------------------------
def _oracle_predictor(path: Path, config: Any, eeg: np.ndarray, meg: np.ndarray) -> Predictor | None:
    """The simulator's Wiener oracle as a predictor, when `path` is a simulation with a truth sidecar."""
    try:
        from brainformer import simulation
    except ImportError:  # pragma: no cover - the simulator is part of the package
        return None
    if not simulation.is_simulated(path):
        return None
    predicted = np.asarray(simulation.oracle_prediction(path, config, eeg_preprocessed=eeg), dtype=np.float64)
    if predicted.shape != meg.shape:
        raise EvaluationError(f"{path}: the oracle predicts shape {predicted.shape}, the recording has {meg.shape}")
    return lambda start, stop: predicted[start:stop]


def evaluate_recording(
    model: Any,
    data: Path,
    split: float = 0.75,
    settle_s: float = DEFAULT_SETTLE_S,
    bootstrap_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES,
    seed: int = 0,
    other_models: Mapping[str, Any] | None = None,
) -> tuple[EvaluationReport, Any]:
    """Preprocess `data` with the model's own config (the serving path) and evaluate everything,
    on all test samples and on the artefact-free ones (`brainformer.evaluation.artefacts`).

    `other_models`: name → a model whose preprocessing (filters, channels, scaling) is the
    model's own, scored as served next to it (e.g. the bundled default against a new model).

    Returns:
        `(report, info)` where `info` is the recording's `mne.Info` restricted to the model's MEG
        channels (for topomaps).
    """
    from brainformer.data import read_raw
    from brainformer.config_fields import BrainformerFields
    from brainformer.preprocessing import (
        PreprocessingError,
        decimation_factor_for_raw,
        is_zero_phase_target,
        preprocess_recording,
    )

    raw = read_raw(Path(data))  # DataError naming the file when it is no MNE-readable EEG + MEG recording
    config = model.config
    if config.meg_std is None or config.eeg_std is None:
        logger.warning("the model config holds no scaling statistics: scoring in physical units")
    try:
        recording = preprocess_recording(raw, config)
    except PreprocessingError as err:
        raise EvaluationError(str(err)) from None
    rows = SplitRows.from_fraction(recording.n_samples, recording.sfreq_hz, split, settle_s)
    # On the raw recording (MNE's detectors expect it), mapped onto exactly the rows scored.
    events = detect_artefacts(raw)
    for note in events.notes:
        logger.info("artefacts: %s", note)
    decimation = decimation_factor_for_raw(raw, config)
    artefacts = ArtefactMask.for_rows(events, rows.test_start, rows.test_stop, decimation)
    predictors: dict[str, Predictor] = {}
    oracle = _oracle_predictor(Path(data), config, recording.eeg, recording.meg)
    if oracle is not None:
        predictors["oracle"] = oracle
    for name, other in (other_models or {}).items():
        _check_same_preprocessing(name, other.config, config)
        predictors[name] = lambda a, b, other=other: predict_as_served(other, recording.eeg, a, b)
    setup = {"data": str(data), "split": split, "settle_s": settle_s}

    def evaluate_against(meg: np.ndarray, truth_name: str) -> EvaluationReport:
        scored = evaluate_arrays(
            recording.eeg, meg, recording.sfreq_hz, rows, config.meg_channel_types, config.meg_channel_names,
            model=model, extra_predictors=predictors, bootstrap_replicates=bootstrap_replicates, seed=seed,
            setup=setup, artefacts=artefacts,
        )
        scored.truth_name = truth_name
        return scored

    own_phase = "zero_phase" if is_zero_phase_target(config) else "causal"
    other_phase = "causal" if own_phase == "zero_phase" else "zero_phase"
    # The other truth: the same band and scaling, the other phase; the EEG is the same.
    other_meg = preprocess_recording(raw, BrainformerFields.from_config(config).replace(target_phase=other_phase)).meg
    report = evaluate_against(recording.meg, TRUTH_NAMES[own_phase])
    report.other_truths = {TRUTH_NAMES[other_phase]: evaluate_against(other_meg, TRUTH_NAMES[other_phase])}
    report.effective_delays = effective_delays(report.all_truths()[TRUTH_NAMES["zero_phase"]], report.all_truths())
    import mne

    info = mne.pick_info(raw.info, [raw.info["ch_names"].index(n) for n in config.meg_channel_names if n in raw.info["ch_names"]])
    return report, info


def effective_delays(zero_phase: EvaluationReport, reports: Mapping[str, EvaluationReport]) -> dict[str, dict[str, dict[str, EffectiveDelay]]]:
    """Every method of every report (`{truth name: report}`: the methods fitted to that truth) given
    its effective delay against the zero-phase truth of `zero_phase`, overall and per band."""
    return {
        fitted_to: {name: band_effective_delays(zero_phase.truth, result.predictions, zero_phase.sfreq_hz)
                    for name, result in report.methods.items()}
        for fitted_to, report in reports.items()
    }


#: Config fields that decide what a model's scaled EEG and MEG are.
_PREPROCESSING_FIELDS = (*SIGNAL_FIELD_NAMES, "eeg_mean", "eeg_std", "meg_mean", "meg_std")


def _check_same_preprocessing(name: str, other: Any, config: Any) -> None:
    """`EvaluationError` naming the first field in which `other`'s preprocessing differs from `config`'s:
    its predictions would be in other units than the rows they are scored against."""
    for field_name in _PREPROCESSING_FIELDS:
        if not _same_setting(getattr(other, field_name), getattr(config, field_name)):
            raise EvaluationError(f"model {name!r}: its {field_name} differs from the scored model's; its predictions are not comparable")


def _same_setting(a: Any, b: Any) -> bool:
    """Equal config values; lists of numbers (scaling statistics) to float rounding."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False
        if all(isinstance(v, (int, float)) for v in (*a, *b)):
            return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-6, atol=0.0))
        return list(a) == list(b)
    return a == b


def write_json(report: EvaluationReport, path: Path) -> None:
    """Write `report.to_dict()` to `path` (strict JSON: a NaN is refused, not written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

