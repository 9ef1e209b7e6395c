"""Honest evaluation: per-channel metrics, ridge baselines, block bootstrap, plots, `evaluate`.

Everything is scored on the same held-out samples of one continuous, preprocessed recording:

```
samples  0 ──settle── train_start ─────────── fit ─────────── │ validation (last 20 %) │ split ──settle── test_start ── n
         ╰ filter transients dropped                                                     ╰ dropped: the filters and the
                                                                                           lag/window context settle
```

- Baselines are fitted on the train part only: an instantaneous ridge EEG(t) → MEG(t) and a causal
  lagged ridge on EEG(t − lag) for lags 0–50 ms (every 2nd sample). The ridge penalty is chosen on
  the validation part (the last 20 % of the train part, in time), then the baseline is refitted on
  the whole train part. The closed form goes through the Gram matrix and its eigendecomposition,
  so a whole grid of penalties costs about as much as one fit and memory does not grow with the
  recording length.
- The model is scored exactly as it is served: windows of `window_samples` slide over the
  continuous recording with the serving hop, and only the newest `hop` predictions of each window
  are kept. Causal context from before the test part is allowed (the daemon has it too).
- Metrics per MEG channel: Pearson r, R² = 1 − SSE/SST (SST about the test mean) and NMSE; means
  over all channels and split by sensor type (mag/grad); a block bootstrap (0.5 s blocks) gives the
  standard deviation and a 95 % interval of the mean r and mean R², and paired intervals of the
  difference model − baseline (the same resampled blocks for every method).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Samples dropped at the start of the train part and of the test part (filter transients, context).
DEFAULT_SETTLE_S = 1.0
#: Fraction of the train part (its end, in time) used to choose the ridge penalty.
DEFAULT_VALIDATION_FRACTION = 0.2
#: Lagged ridge: causal lags up to this many seconds, every `LAG_STEP_SAMPLES` samples.
DEFAULT_MAX_LAG_S = 0.050
DEFAULT_LAG_STEP_SAMPLES = 2
#: Ridge penalties tried, relative to the mean eigenvalue of the (standardised) Gram matrix,
#: which is about the number of fitting samples.
DEFAULT_RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-5, 1, 31))
#: Block bootstrap of the test part.
DEFAULT_BOOTSTRAP_BLOCK_S = 0.5
DEFAULT_BOOTSTRAP_REPLICATES = 1000
#: Rows of lagged features built at once when accumulating Gram matrices.
_GRAM_CHUNK_ROWS = 4096

MEG_TYPES = ("mag", "grad")


class EvaluationError(ValueError):
    """Input the evaluation cannot score (too short, mismatched shapes, no test samples …)."""


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise EvaluationError(
            f"truth and prediction must both be (time, channels) arrays of the same shape, "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.shape[0] < 2:
        raise EvaluationError(f"need at least 2 samples to score, got {y_true.shape[0]}")
    return y_true, y_pred


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per channel.

    Args:
        y_true, y_pred: `(time, channels)`.

    Returns:
        `(channels,)`; 0 where the prediction is constant (it carries no information), NaN where
        the truth is constant (nothing to predict).
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    true_c = y_true - y_true.mean(axis=0)
    pred_c = y_pred - y_pred.mean(axis=0)
    true_ss = (true_c**2).sum(axis=0)
    pred_ss = (pred_c**2).sum(axis=0)
    cross = (true_c * pred_c).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cross / np.sqrt(true_ss * pred_ss)
    r = np.where(pred_ss > 0, r, 0.0)
    return np.where(true_ss > 0, r, np.nan)


def r_squared(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per channel, `1 − SSE/SST` with SST about the mean of `y_true`.

    Args:
        y_true, y_pred: `(time, channels)`.

    Returns:
        `(channels,)`; 1 for a perfect prediction, 0 for predicting the mean, negative when worse;
        NaN where the truth is constant.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    sse = ((y_true - y_pred) ** 2).sum(axis=0)
    sst = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def nmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Normalised mean squared error pooled over channels: `Σ_c SSE_c / Σ_c SST_c`.

    The fraction of the total test variance (about the test means) left unexplained. Pass data in
    scaled units (each channel z-scored on the train part) so that every channel weighs about the
    same. 0 is perfect, 1 is as good as predicting the test mean.

    Args:
        y_true, y_pred: `(time, channels)`.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    sst = float(((y_true - y_true.mean(axis=0)) ** 2).sum())
    if sst <= 0:
        return math.nan
    return float(((y_true - y_pred) ** 2).sum()) / sst


@dataclass
class ChannelScores:
    """Scores of one method on the test samples.

    Attributes:
        r: `(channels,)` Pearson r per channel.
        r2: `(channels,)` R² per channel.
        nmse: pooled NMSE over all channels (see `nmse`).
        nmse_by_type: pooled NMSE over the channels of each sensor type present.
    """

    r: np.ndarray
    r2: np.ndarray
    nmse: float
    nmse_by_type: dict[str, float]

    def summary(self, channel_types: Sequence[str]) -> dict[str, Any]:
        """`{r_mean, r2_mean, nmse, mag: {...}, grad: {...}}` (means ignore NaN channels)."""
        types = np.asarray(channel_types)
        out: dict[str, Any] = {
            "r_mean": _nanmean(self.r),
            "r2_mean": _nanmean(self.r2),
            "nmse": self.nmse,
        }
        for kind in MEG_TYPES:
            picked = types == kind
            if picked.any():
                out[kind] = {
                    "r_mean": _nanmean(self.r[picked]),
                    "r2_mean": _nanmean(self.r2[picked]),
                    "nmse": self.nmse_by_type[kind],
                    "n_channels": int(picked.sum()),
                }
        return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def score_channels(y_true: np.ndarray, y_pred: np.ndarray, channel_types: Sequence[str]) -> ChannelScores:
    """All metrics of one method. `y_true`, `y_pred`: `(time, channels)`; `channel_types`: `(channels,)`."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    types = np.asarray(channel_types)
    if types.shape != (y_true.shape[1],):
        raise EvaluationError(f"{len(types)} channel types for {y_true.shape[1]} channels")
    by_type = {kind: nmse(y_true[:, types == kind], y_pred[:, types == kind]) for kind in MEG_TYPES if (types == kind).any()}
    return ChannelScores(
        r=pearson_r(y_true, y_pred), r2=r_squared(y_true, y_pred), nmse=nmse(y_true, y_pred), nmse_by_type=by_type
    )


# --------------------------------------------------------------------------------------------
# Block bootstrap
# --------------------------------------------------------------------------------------------
@dataclass
class BlockSums:
    """Per-block sufficient statistics of one method on the test samples, float64.

    Each field is `(blocks, channels)` except `count` `(blocks,)`: sums over the block's samples of
    y, ŷ, y², ŷ², y·ŷ and (y − ŷ)².
    """

    count: np.ndarray
    sum_true: np.ndarray
    sum_pred: np.ndarray
    sum_true_sq: np.ndarray
    sum_pred_sq: np.ndarray
    sum_cross: np.ndarray
    sum_err_sq: np.ndarray

    @classmethod
    def from_arrays(cls, y_true: np.ndarray, y_pred: np.ndarray, block_samples: int) -> "BlockSums":
        y_true, y_pred = _check_pair(y_true, y_pred)
        starts = np.arange(0, y_true.shape[0], block_samples)

        def sums(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values, starts, axis=0)

        return cls(
            count=np.diff(np.append(starts, y_true.shape[0])).astype(np.float64),
            sum_true=sums(y_true),
            sum_pred=sums(y_pred),
            sum_true_sq=sums(y_true**2),
            sum_pred_sq=sums(y_pred**2),
            sum_cross=sums(y_true * y_pred),
            sum_err_sq=sums((y_true - y_pred) ** 2),
        )

    def resampled_means(self, block_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean r and mean R² over channels for each replicate.

        Args:
            block_counts: `(replicates, blocks)` how often each block is drawn.

        Returns:
            `(r_mean (replicates,), r2_mean (replicates,))`.
        """
        n = (block_counts @ self.count)[:, None]  # (replicates, 1)
        s_t, s_p = block_counts @ self.sum_true, block_counts @ self.sum_pred
        var_t = block_counts @ self.sum_true_sq - s_t**2 / n  # n × variance, (replicates, channels)
        var_p = block_counts @ self.sum_pred_sq - s_p**2 / n
        cov = block_counts @ self.sum_cross - s_t * s_p / n
        sse = block_counts @ self.sum_err_sq
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(var_p > 0, cov / np.sqrt(np.clip(var_t * var_p, 0, None)), 0.0)
            r2 = 1.0 - sse / var_t
        valid = var_t > 0
        r = np.where(valid, r, np.nan)
        r2 = np.where(valid, r2, np.nan)
        return np.nanmean(r, axis=1), np.nanmean(r2, axis=1)


def bootstrap_block_counts(n_blocks: int, replicates: int, seed: int) -> np.ndarray:
    """`(replicates, n_blocks)` counts of a block bootstrap (blocks drawn with replacement)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_blocks, size=(replicates, n_blocks))
    counts = np.zeros((replicates, n_blocks))
    np.add.at(counts, (np.arange(replicates)[:, None], drawn), 1.0)
    return counts


def _interval(values: np.ndarray) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return {"std": math.nan, "ci95": [math.nan, math.nan]}
    low, high = np.percentile(values, [2.5, 97.5])
    return {"std": float(values.std(ddof=1)), "ci95": [float(low), float(high)]}


# --------------------------------------------------------------------------------------------
# Ridge baselines (closed form through the Gram matrix)
# --------------------------------------------------------------------------------------------
def lag_samples(sfreq_hz: float, max_lag_s: float = DEFAULT_MAX_LAG_S, step_samples: int = DEFAULT_LAG_STEP_SAMPLES) -> tuple[int, ...]:
    """Causal lags `0, step, 2·step, …` up to `max_lag_s` (inclusive, rounded to samples)."""
    if step_samples < 1:
        raise EvaluationError(f"lag step must be >= 1 sample, got {step_samples}")
    max_lag = int(round(max_lag_s * sfreq_hz))
    return tuple(range(0, max_lag + 1, step_samples))


def lagged_rows(x: np.ndarray, lags: Sequence[int], start: int, stop: int) -> np.ndarray:
    """Causal lagged features of rows `[start, stop)` of a continuous signal.

    Args:
        x: `(n, channels)` the whole continuous signal; rows before `start` give the history.
        lags: lags in samples (≥ 0).
        start, stop: rows to build.

    Returns:
        `(stop − start, len(lags) · channels)` with column block `i` = `x[t − lags[i]]`, zeros where
        `t − lag < 0` (before the recording).
    """
    n_rows, n_channels = stop - start, x.shape[1]
    out = np.zeros((n_rows, len(lags) * n_channels))
    for i, lag in enumerate(lags):
        first = max(start - lag, 0)  # source rows [first, stop - lag)
        offset = first - (start - lag)  # destination rows before `offset` lie before the recording
        if stop - lag > first:
            out[offset:, i * n_channels : (i + 1) * n_channels] = x[first : stop - lag]
    return out


@dataclass
class RowBlock:
    """A block of consecutive rows of one recording, with causal history for lagged features.

    Attributes:
        eeg: `(history + m, n_eeg)` inputs; the first `history` rows only serve as lag history.
        history: rows of `eeg` before the block's first target row.
        meg: `(m, n_meg)` targets of the block.
        first_row: row index (in its recording) of `meg[0]`.
        group: name of the recording, so each can have its own validation boundary.
    """

    eeg: np.ndarray
    history: int
    meg: np.ndarray
    first_row: int
    group: str = ""


BlockSource = Callable[[], Iterable[RowBlock]]


def continuous_blocks(
    eeg: np.ndarray, meg: np.ndarray, start: int, stop: int, max_lag: int, group: str = "", block_rows: int = _GRAM_CHUNK_ROWS
) -> Iterator[RowBlock]:
    """Rows `[start, stop)` of continuous arrays `eeg (n, n_eeg)`, `meg (n, n_meg)` as `RowBlock`s,
    each with up to `max_lag` rows of history (less at the start of the recording)."""
    for row in range(start, stop, block_rows):
        end = min(row + block_rows, stop)
        first = max(row - max_lag, 0)
        yield RowBlock(eeg=np.asarray(eeg[first:end]), history=row - first, meg=np.asarray(meg[row:end]), first_row=row, group=group)


@dataclass
class _GramAccumulator:
    """Running `FᵀF`, `FᵀY`, `ΣF`, `ΣY`, `ΣY²` over row blocks of features F and targets Y."""

    gram: np.ndarray
    cross: np.ndarray
    sum_x: np.ndarray
    sum_y: np.ndarray
    sum_y_sq: np.ndarray
    count: int = 0

    @classmethod
    def empty(cls, n_features: int, n_targets: int) -> "_GramAccumulator":
        return cls(
            np.zeros((n_features, n_features)), np.zeros((n_features, n_targets)),
            np.zeros(n_features), np.zeros(n_targets), np.zeros(n_targets),
        )

    def add(self, features: np.ndarray, targets: np.ndarray) -> None:
        if features.shape[0] == 0:
            return
        self.gram += features.T @ features
        self.cross += features.T @ targets
        self.sum_x += features.sum(axis=0)
        self.sum_y += targets.sum(axis=0)
        self.sum_y_sq += (targets**2).sum(axis=0)
        self.count += features.shape[0]

    def merged(self, other: "_GramAccumulator") -> "_GramAccumulator":
        return _GramAccumulator(
            self.gram + other.gram, self.cross + other.cross, self.sum_x + other.sum_x,
            self.sum_y + other.sum_y, self.sum_y_sq + other.sum_y_sq, self.count + other.count,
        )

    def centred(self, mean_x: np.ndarray, mean_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(Σ(F−μx)ᵀ(F−μx), Σ(F−μx)ᵀ(Y−μy), Σ(Y−μy)²)` about the given means."""
        n = self.count
        gram = self.gram - np.outer(self.sum_x, mean_x) - np.outer(mean_x, self.sum_x) + n * np.outer(mean_x, mean_x)
        cross = self.cross - np.outer(self.sum_x, mean_y) - np.outer(mean_x, self.sum_y) + n * np.outer(mean_x, mean_y)
        y_ss = self.sum_y_sq - 2 * mean_y * self.sum_y + n * mean_y**2
        return gram, cross, y_ss


@dataclass
class RidgeFit:
    """A fitted (lagged) ridge map EEG → MEG: `ŷ(t) = Σ_i x̃(t − lags[i]) W_i + bias`.

    Attributes:
        lags: lags in samples; `(0,)` is the instantaneous ridge.
        input_mean, input_scale: `(n_eeg,)` standardisation of the inputs, `x̃ = (x − mean)·scale`
            (scale 0 for flat channels), fitted on the train rows.
        weight: `(len(lags) · n_eeg, n_meg)` on the standardised lagged inputs (lag-major blocks).
        bias: `(n_meg,)`.
        alpha: the chosen ridge penalty (absolute, on the standardised Gram matrix).
        relative_alphas, validation_mse: the penalty grid (relative to the mean eigenvalue of the
            Gram matrix) and the validation MSE of each.
    """

    lags: tuple[int, ...]
    input_mean: np.ndarray
    input_scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    alpha: float
    relative_alphas: np.ndarray = field(repr=False)
    validation_mse: np.ndarray = field(repr=False)

    def predict(self, x: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Predict rows `[start, stop)` of a continuous recording `x (n, n_eeg)` → `(stop − start, n_meg)`.

        Rows before `start` are used as causal history.
        """
        stop = x.shape[0] if stop is None else stop
        out = np.empty((stop - start, self.weight.shape[1]))
        max_lag = max(self.lags)
        for row in range(start, stop, _GRAM_CHUNK_ROWS):
            end = min(row + _GRAM_CHUNK_ROWS, stop)
            first = max(row - max_lag, 0)
            standardised = (np.asarray(x[first:end], dtype=np.float64) - self.input_mean) * self.input_scale
            out[row - start : end - start] = lagged_rows(standardised, self.lags, row - first, end - first) @ self.weight + self.bias
        return out

    def as_conv_skip(self, n_taps: int) -> tuple[np.ndarray, np.ndarray]:
        """The same map as a causal convolution on (unstandardised) inputs, for a model skip path.

        Returns:
            `weight (n_meg, n_eeg, n_taps)` where tap `k` multiplies the input `n_taps − 1 − k`
            samples in the past, and `bias (n_meg,)`; the convolution with `n_taps − 1` zeros of
            left padding reproduces `predict` once a full history is available.
        """
        if max(self.lags) >= n_taps:
            raise EvaluationError(f"ridge lags up to {max(self.lags)} samples do not fit in {n_taps} taps")
        n_eeg = self.input_mean.shape[0]
        n_meg = self.weight.shape[1]
        conv = np.zeros((n_meg, n_eeg, n_taps))
        bias = self.bias.copy()
        for i, lag in enumerate(self.lags):
            block = self.weight[i * n_eeg : (i + 1) * n_eeg] * self.input_scale[:, None]  # (n_eeg, n_meg)
            conv[:, :, n_taps - 1 - lag] += block.T
            bias -= self.input_mean @ block
        return conv, bias


def fit_ridge_blocks(
    blocks: BlockSource,
    validation_start: Mapping[str, int],
    lags: Sequence[int],
    relative_alphas: Sequence[float] = DEFAULT_RELATIVE_ALPHAS,
) -> RidgeFit:
    """Fit a causal (lagged) ridge map on train rows given as blocks, choosing the penalty on validation rows.

    Rows of group `g` at or after `validation_start[g]` are validation rows: the penalty is chosen
    by fitting on the other rows and scoring there; the map is then refitted on all rows with the
    chosen penalty (relative to the mean eigenvalue, so it carries over to the larger Gram matrix).
    Inputs are standardised with statistics of all rows, targets centred. Two passes over `blocks`.

    Args:
        blocks: called once per pass; yields `RowBlock`s covering the train rows.
        validation_start: first validation row per group (recording).
        lags: causal lags in samples, e.g. `(0,)` or `lag_samples(sfreq_hz)`.
        relative_alphas: penalties to try, relative to the mean eigenvalue of the Gram matrix.
    """
    lags = tuple(int(lag) for lag in lags)
    if not lags or min(lags) < 0:
        raise EvaluationError(f"ridge lags must be a non-empty list of causal lags >= 0, got {lags}")
    relative_alphas = np.asarray(relative_alphas, dtype=np.float64)
    if relative_alphas.size == 0 or np.any(relative_alphas <= 0):
        raise EvaluationError(f"ridge penalties must be a non-empty list of numbers > 0, got {relative_alphas.tolist()}")

    # Pass 1: input standardisation over all train rows.
    count, total, total_sq = 0, None, None
    for block in blocks():
        rows = np.asarray(block.eeg[block.history :], dtype=np.float64)
        if total is None:
            total, total_sq = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
        count += rows.shape[0]
        total += rows.sum(axis=0)
        total_sq += (rows**2).sum(axis=0)
    if total is None or count < 2:
        raise EvaluationError("ridge: no train samples")
    mean_x = total / count
    std_x = np.sqrt(np.clip(total_sq / count - mean_x**2, 0, None))
    scale_x = np.zeros_like(std_x)
    np.divide(1.0, std_x, out=scale_x, where=std_x > 1e-6 * float(np.median(std_x)))

    # Pass 2: Gram matrices of the fitting rows and of the validation rows.
    fit_acc = val_acc = None
    for block in blocks():
        standardised = (np.asarray(block.eeg, dtype=np.float64) - mean_x) * scale_x
        features = lagged_rows(standardised, lags, block.history, standardised.shape[0])
        targets = np.asarray(block.meg, dtype=np.float64)
        if fit_acc is None:
            fit_acc = _GramAccumulator.empty(features.shape[1], targets.shape[1])
            val_acc = _GramAccumulator.empty(features.shape[1], targets.shape[1])
        split = int(np.clip(validation_start.get(block.group, np.iinfo(np.int64).max) - block.first_row, 0, targets.shape[0]))
        fit_acc.add(features[:split], targets[:split])
        val_acc.add(features[split:], targets[split:])
    n_features = fit_acc.gram.shape[0]
    if fit_acc.count < 2 or val_acc.count < 2:
        raise EvaluationError(
            f"ridge: {fit_acc.count} fitting and {val_acc.count} validation samples are too few "
            f"({n_features} features)"
        )

    # Choose the penalty on the validation rows. With G = V diag(e) Vᵀ and W(α) = V D Vᵀ FᵀY,
    # D = 1/(e + α), the validation SSE(α) = Σ‖Yv‖² − 2 tr(Wᵀ FvᵀYv) + tr(Wᵀ Gv W) reduces to sums
    # over precomputed (features,) and (features, features) arrays: the whole grid costs ~one fit.
    mu_f, mu_y = fit_acc.sum_x / fit_acc.count, fit_acc.sum_y / fit_acc.count
    gram, cross, _ = fit_acc.centred(mu_f, mu_y)
    eigvals, eigvecs = np.linalg.eigh(gram)
    eigvals = np.clip(eigvals, 0, None)
    mean_eigval = float(np.mean(eigvals))
    val_gram, val_cross, val_y_ss = val_acc.centred(mu_f, mu_y)  # about the fitting means
    projected = eigvecs.T @ cross
    linear_term = (projected * (eigvecs.T @ val_cross)).sum(axis=1)
    quadratic_term = (eigvecs.T @ val_gram @ eigvecs) * (projected @ projected.T)
    sse = np.empty(relative_alphas.size)
    for i, relative in enumerate(relative_alphas):
        d = 1.0 / (eigvals + relative * mean_eigval)
        sse[i] = val_y_ss.sum() - 2 * d @ linear_term + d @ quadratic_term @ d
    validation_mse = sse / (val_acc.count * val_cross.shape[1])
    best = int(np.argmin(validation_mse))
    if relative_alphas.size > 1 and best in (0, relative_alphas.size - 1):
        logger.warning("ridge (lags %d…%d): the chosen penalty lies at the edge of the grid", lags[0], lags[-1])

    # Refit on all rows with the chosen relative penalty.
    acc = fit_acc.merged(val_acc)
    mu_f, mu_y = acc.sum_x / acc.count, acc.sum_y / acc.count
    gram, cross, _ = acc.centred(mu_f, mu_y)
    alpha = float(relative_alphas[best]) * float(np.trace(gram)) / n_features
    weight = np.linalg.solve(gram + alpha * np.eye(n_features), cross)
    return RidgeFit(
        lags=lags, input_mean=mean_x, input_scale=scale_x, weight=weight, bias=mu_y - mu_f @ weight, alpha=alpha,
        relative_alphas=relative_alphas, validation_mse=validation_mse,
    )


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    lags: Sequence[int],
    train_start: int,
    train_stop: int,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    relative_alphas: Sequence[float] = DEFAULT_RELATIVE_ALPHAS,
) -> RidgeFit:
    """Fit a causal (lagged) ridge map on rows `[train_start, train_stop)` of continuous signals.

    The penalty is chosen on the last `validation_fraction` of those rows (in time) after fitting on
    the rest, then the map is refitted on all of them (see `fit_ridge_blocks`). Rows before
    `train_start` serve only as lag history.

    Args:
        x: `(n, n_eeg)` continuous inputs.
        y: `(n, n_meg)` continuous targets.
        lags: causal lags in samples, e.g. `(0,)` or `lag_samples(sfreq_hz)`.
        train_start, train_stop: the train rows.
        validation_fraction: share of the train rows (their end) used to choose the penalty.
        relative_alphas: penalties to try, relative to the mean eigenvalue of the Gram matrix.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise EvaluationError(f"ridge needs x (n, n_eeg) and y (n, n_meg) with the same n, got {x.shape} and {y.shape}")
    if not 0 < validation_fraction < 1:
        raise EvaluationError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    if not 0 <= train_start < train_stop <= x.shape[0]:
        raise EvaluationError(f"invalid train rows [{train_start}, {train_stop}) for {x.shape[0]} samples")
    max_lag = max(int(lag) for lag in lags) if len(lags) else 0
    validation_start = train_stop - int(round(validation_fraction * (train_stop - train_start)))
    return fit_ridge_blocks(
        lambda: continuous_blocks(x, y, train_start, train_stop, max_lag), {"": validation_start}, lags, relative_alphas
    )


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
    import torch

    config = model.config
    window = int(config.window_samples)
    hop = int(config.hop_samples if hop_samples is None else hop_samples)
    if not 1 <= hop <= window:
        raise EvaluationError(f"hop_samples must lie in [1, window_samples={window}], got {hop}")
    eeg = np.asarray(eeg, dtype=np.float32)
    if eeg.ndim != 2 or eeg.shape[1] != config.n_eeg_channels:
        raise EvaluationError(f"EEG must be (n, {config.n_eeg_channels}), got {eeg.shape}")
    ends = served_window_ends(start, stop, hop)
    pad = max(window - int(ends[0]), 0)
    padded = np.concatenate([np.zeros((pad, eeg.shape[1]), np.float32), eeg[:stop]]) if pad else eeg[:stop]
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n − window + 1, n_eeg, window)
    if device is None:
        device = str(next(model.parameters()).device)
    quantizer = None
    if config.head == "tokens":
        from brainformer.quantization import MEGQuantizer

        quantizer = MEGQuantizer.from_config(config)
    out = np.empty((stop - start, config.n_meg_channels))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for first in range(0, len(ends), batch_size):
                batch_ends = ends[first : first + batch_size]
                batch = np.ascontiguousarray(windows[batch_ends + pad - window].transpose(0, 2, 1))  # (B, window, n_eeg)
                inputs = torch.from_numpy(batch).to(device)
                if quantizer is None:
                    predicted = model(input_values=inputs).predictions.float().cpu().numpy()
                else:
                    predicted = np.asarray(quantizer.decode(model.generate(inputs).cpu().numpy()), dtype=np.float64)
                for j, end in enumerate(batch_ends):
                    previous_end = int(ends[first + j - 1]) if first + j > 0 else start
                    n_new = int(end) - previous_end  # hop, or less for the last step
                    out[previous_end - start : int(end) - start] = predicted[j, window - n_new :]
    finally:
        model.train(was_training)
    return out


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
    """All methods scored on the same test samples of one recording."""

    methods: dict[str, MethodResult]
    truth: np.ndarray  # (test samples, n_meg) scaled
    channel_names: list[str]
    channel_types: list[str]
    sfreq_hz: float
    rows: SplitRows
    setup: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{method: {r_mean, r2_mean, nmse, mag, grad, bootstrap, per_channel, …}, comparisons, setup}`."""
        out: dict[str, Any] = {}
        for name, result in self.methods.items():
            entry = result.scores.summary(self.channel_types)
            entry["bootstrap"] = {"r_mean": _interval(result.bootstrap_r), "r2_mean": _interval(result.bootstrap_r2)}
            entry.update(result.details)
            entry["per_channel"] = {
                "r": [_finite_or_none(v) for v in result.scores.r],
                "r2": [_finite_or_none(v) for v in result.scores.r2],
            }
            out[name] = entry
        comparisons = {}
        for name in self.methods:
            if name == "model" or "model" not in self.methods:
                continue
            model = self.methods["model"]
            other = self.methods[name]
            comparisons[f"model_minus_{name}"] = {
                "r_mean": _delta(model.scores.r, other.scores.r, model.bootstrap_r - other.bootstrap_r),
                "r2_mean": _delta(model.scores.r2, other.scores.r2, model.bootstrap_r2 - other.bootstrap_r2),
            }
        out["comparisons"] = comparisons
        out["channels"] = {"names": list(self.channel_names), "types": list(self.channel_types)}
        out["setup"] = dict(self.setup)
        return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _delta(a: np.ndarray, b: np.ndarray, replicates: np.ndarray) -> dict[str, Any]:
    return {"value": _nanmean(a) - _nanmean(b), **_interval(replicates)}


Predictor = Callable[[int, int], np.ndarray]


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

    Returns:
        An `EvaluationReport` with methods `ridge`, `lagged_ridge`, then `model`, then the extras.
    """
    eeg = np.asarray(eeg)
    meg = np.asarray(meg)
    if eeg.ndim != 2 or meg.ndim != 2 or eeg.shape[0] != meg.shape[0]:
        raise EvaluationError(f"EEG and MEG must be (n, channels) arrays with the same n, got {eeg.shape} and {meg.shape}")
    if not (0 <= rows.train_start < rows.train_stop <= rows.test_start < rows.test_stop <= eeg.shape[0]):
        raise EvaluationError(f"invalid rows {rows} for a recording of {eeg.shape[0]} samples")
    channel_types = list(channel_types)
    channel_names = list(channel_names) if channel_names is not None else [f"MEG {i}" for i in range(meg.shape[1])]
    test = slice(rows.test_start, rows.test_stop)
    truth = meg[test].astype(np.float64)

    predictions: dict[str, np.ndarray] = {}
    details: dict[str, dict[str, Any]] = {}
    lagged = lag_samples(sfreq_hz, max_lag_s, lag_step_samples)
    for name, lags in (("ridge", (0,)), ("lagged_ridge", lagged)):
        fit = fit_ridge(eeg, meg, lags, rows.train_start, rows.train_stop, validation_fraction)
        predictions[name] = fit.predict(eeg, rows.test_start, rows.test_stop)
        details[name] = {"alpha": fit.alpha, "lags_samples": list(fit.lags)}
        logger.info("%s: alpha %.3g, lags %s", name, fit.alpha, fit.lags)
    if model is not None:
        hop = int(model.config.hop_samples if hop_samples is None else hop_samples)
        predictions["model"] = predict_as_served(model, eeg, rows.test_start, rows.test_stop, hop)
        details["model"] = {"hop_samples": hop, "window_samples": int(model.config.window_samples)}
    for name, predictor in (extra_predictors or {}).items():
        predicted = np.asarray(predictor(rows.test_start, rows.test_stop), dtype=np.float64)
        if predicted.shape != truth.shape:
            raise EvaluationError(f"predictor {name!r} returned shape {predicted.shape}, expected {truth.shape}")
        predictions[name] = predicted

    block_samples = max(int(round(bootstrap_block_s * sfreq_hz)), 1)
    n_blocks = -(-truth.shape[0] // block_samples)
    counts = bootstrap_block_counts(n_blocks, bootstrap_replicates, seed)  # shared: paired comparisons
    methods: dict[str, MethodResult] = {}
    for name, predicted in predictions.items():
        if not np.all(np.isfinite(predicted)):
            raise EvaluationError(f"{name} produced NaN/Inf predictions")
        boot_r, boot_r2 = BlockSums.from_arrays(truth, predicted, block_samples).resampled_means(counts)
        methods[name] = MethodResult(
            name=name, predictions=predicted, scores=score_channels(truth, predicted, channel_types),
            bootstrap_r=boot_r, bootstrap_r2=boot_r2, details=details.get(name, {}),
        )
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
        sfreq_hz=float(sfreq_hz), rows=rows, setup=full_setup,
    )


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def write_plots(report: EvaluationReport, plots_dir: Path, info: Any | None = None) -> list[Path]:
    """Write PNG plots of a report; returns the files written.

    - `traces.png`: truth vs predictions over the test part for the best and the median sensor of
      each type (ranked by the model's r, or by the lagged ridge's without a model);
    - `r_by_type.png`: per-sensor r of every method, split by sensor type (box + points);
    - `topomap_r.png`: per-sensor r of the ranking method on the magnetometers and on the
      gradiometer pairs (mean of the pair), when `info` (an `mne.Info` holding the MEG channels
      with positions) is given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_traces(report, plots_dir / "traces.png", plt),
        _plot_r_by_type(report, plots_dir / "r_by_type.png", plt),
    ]
    if info is not None:
        path = _plot_topomap(report, plots_dir / "topomap_r.png", plt, info)
        if path is not None:
            written.append(path)
    return written


def _ranking_method(report: EvaluationReport) -> str:
    return "model" if "model" in report.methods else "lagged_ridge"


def _plot_traces(report: EvaluationReport, path: Path, plt: Any) -> Path:
    ranking = report.methods[_ranking_method(report)].scores.r
    types = np.asarray(report.channel_types)
    picks: list[tuple[str, int]] = []
    for kind in MEG_TYPES:
        idx = np.flatnonzero((types == kind) & np.isfinite(ranking))
        if idx.size == 0:
            continue
        order = idx[np.argsort(ranking[idx])[::-1]]
        picks += [(f"best {kind}", int(order[0])), (f"median {kind}", int(order[len(order) // 2]))]
    times = np.arange(report.truth.shape[0]) / report.sfreq_hz + report.rows.test_start / report.sfreq_hz
    fig, axes = plt.subplots(len(picks), 1, figsize=(11, 2.2 * len(picks)), sharex=True, squeeze=False)
    shown = [m for m in ("model", "lagged_ridge", "ridge") if m in report.methods]
    shown += [m for m in report.methods if m not in shown]
    for ax, (label, channel) in zip(axes[:, 0], picks):
        ax.plot(times, report.truth[:, channel], color="black", lw=1.0, label="measured")
        for method in shown:
            r = report.methods[method].scores.r[channel]
            ax.plot(times, report.methods[method].predictions[:, channel], lw=0.8, label=f"{method} (r={r:.2f})")
        ax.set_title(f"{report.channel_names[channel]} — {label}", fontsize=9, loc="left")
        ax.set_ylabel("scaled")
        ax.legend(fontsize=7, loc="upper right", ncol=len(shown) + 1)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_r_by_type(report: EvaluationReport, path: Path, plt: Any) -> Path:
    types = np.asarray(report.channel_types)
    kinds = [k for k in MEG_TYPES if (types == k).any()]
    names = list(report.methods)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 + 1.5 * len(names), 4), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[0], kinds):
        data = [report.methods[m].scores.r[types == kind] for m in names]
        data = [d[np.isfinite(d)] for d in data]
        ax.boxplot(data, showfliers=False)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=5, alpha=0.5)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.set_title(f"{kind} ({int((types == kind).sum())} sensors)")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].set_ylabel("Pearson r per sensor (test part)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_topomap(report: EvaluationReport, path: Path, plt: Any, info: Any) -> Path | None:
    import mne

    method = _ranking_method(report)
    r = report.methods[method].scores.r
    index = {name: i for i, name in enumerate(report.channel_names)}
    mags = [n for n, t in zip(report.channel_names, report.channel_types) if t == "mag" and n in info.ch_names]
    if not mags:
        logger.info("topomap skipped: no magnetometers with positions")
        return None
    mag_info = mne.pick_info(info, [info.ch_names.index(n) for n in mags])
    if not np.all(np.isfinite([ch["loc"][:3] for ch in mag_info["chs"]])) or np.allclose([ch["loc"][:3] for ch in mag_info["chs"]], 0):
        logger.info("topomap skipped: the magnetometers have no positions")
        return None
    # Neuromag triplets share the name stem "MEG 011" + digit: draw each gradiometer pair's mean r
    # at its magnetometer's position.
    grads_by_stem: dict[str, list[int]] = {}
    for name, kind in zip(report.channel_names, report.channel_types):
        if kind == "grad":
            grads_by_stem.setdefault(name[:-1], []).append(index[name])
    mag_r = np.array([r[index[n]] for n in mags])
    grad_r = np.array([np.nanmean(r[grads_by_stem[n[:-1]]]) if n[:-1] in grads_by_stem else np.nan for n in mags])
    panels = [("magnetometers", mag_r)]
    if np.isfinite(grad_r).any():
        panels.append(("gradiometer pairs (mean)", grad_r))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    vmax = max(float(np.nanmax(np.abs(np.concatenate([p[1] for p in panels])))), 1e-3)
    image = None
    for ax, (title, values) in zip(axes[0], panels):
        finite = np.isfinite(values)
        picked_info = mne.pick_info(mag_info, np.flatnonzero(finite))
        image, _ = mne.viz.plot_topomap(values[finite], picked_info, axes=ax, show=False, cmap="RdBu_r", vlim=(-vmax, vmax))
        ax.set_title(f"{method}: r, {title}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.7, label="Pearson r")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Recording → report, and the `evaluate` command
# --------------------------------------------------------------------------------------------
def bundled_recording() -> Path:
    """The real sample recording shipped with the package."""
    return Path(__file__).resolve().parent / "recordings" / "test_raw.fif"


def _read_raw(path: Path) -> Any:
    """Open a raw recording (MNE-readable, with EEG and MEG); `DataError` naming the file otherwise."""
    from brainformer.data import read_raw

    return read_raw(path)


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
) -> tuple[EvaluationReport, Any]:
    """Preprocess `data` with the model's own config (the serving path) and evaluate everything.

    Returns:
        `(report, info)` where `info` is the recording's `mne.Info` restricted to the model's MEG
        channels (for topomaps).
    """
    from brainformer.preprocessing import PreprocessingError, preprocess_recording

    raw = _read_raw(Path(data))
    config = model.config
    if config.meg_std is None or config.eeg_std is None:
        logger.warning("the model config holds no scaling statistics: scoring in physical units")
    try:
        recording = preprocess_recording(raw, config)
    except PreprocessingError as err:
        raise EvaluationError(str(err)) from None
    rows = SplitRows.from_fraction(recording.n_samples, recording.sfreq_hz, split, settle_s)
    predictors: dict[str, Predictor] = {}
    oracle = _oracle_predictor(Path(data), config, recording.eeg, recording.meg)
    if oracle is not None:
        predictors["oracle"] = oracle
    report = evaluate_arrays(
        recording.eeg, recording.meg, recording.sfreq_hz, rows, config.meg_channel_types, config.meg_channel_names,
        model=model, extra_predictors=predictors, bootstrap_replicates=bootstrap_replicates, seed=seed,
        setup={"data": str(data), "split": split, "settle_s": settle_s},
    )
    import mne

    info = mne.pick_info(raw.info, [raw.info["ch_names"].index(n) for n in config.meg_channel_names if n in raw.info["ch_names"]])
    return report, info


def format_table(report: EvaluationReport, title: str) -> Any:
    """A rich table: one row per method with mean r and mean R² (± bootstrap sd, [95 % interval]),
    NMSE, and mean r on magnetometers and gradiometers."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("method", "mean r ± sd [95% CI]", "mean R² ± sd [95% CI]", "NMSE", "r mag", "r grad"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    summary = report.to_dict()
    for name in report.methods:
        entry = summary[name]
        cells = []
        for key in ("r_mean", "r2_mean"):
            boot = entry["bootstrap"][key]
            cells.append(f"{entry[key]:.3f} ± {boot['std']:.3f} [{boot['ci95'][0]:.3f}, {boot['ci95'][1]:.3f}]")
        table.add_row(
            name.replace("_", " "),
            *cells,
            f"{entry['nmse']:.3f}",
            f"{entry['mag']['r_mean']:.3f}" if "mag" in entry else "–",
            f"{entry['grad']['r_mean']:.3f}" if "grad" in entry else "–",
        )
    return table


def wide_console(stderr: bool = False) -> Any:
    """A rich console at least 120 columns wide when not writing to a terminal (tables stay on one line)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and console.width < 120:
        console = Console(stderr=stderr, width=120)
    return console


def format_comparisons(report: EvaluationReport) -> list[str]:
    """One line per baseline: paired bootstrap interval of model − baseline for mean r and R²."""
    lines = []
    for key, entry in report.to_dict()["comparisons"].items():
        dr, dr2 = entry["r_mean"], entry["r2_mean"]
        lines.append(
            f"{key.replace('_', ' ')}: Δr {dr['value']:+.3f} [{dr['ci95'][0]:+.3f}, {dr['ci95'][1]:+.3f}], "
            f"ΔR² {dr2['value']:+.3f} [{dr2['ci95'][0]:+.3f}, {dr2['ci95'][1]:+.3f}]"
        )
    return lines


def write_json(report: EvaluationReport, path: Path) -> None:
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


def _exit_with_error(message: str) -> None:
    import typer
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def evaluate_command(
    model: str,
    data: Path | None,
    split: float,
    json_path: Path | None,
    plots_dir: Path | None,
) -> None:
    """`brainformer evaluate`: score a model and the ridge baselines on the held-out part of a recording."""
    from brainformer.model_dir import load_model

    console = wide_console()
    data_path = Path(data) if data is not None else bundled_recording()
    try:
        if not 0 < split < 1:
            raise EvaluationError(f"--split must lie strictly between 0 and 1, got {split}")
        loaded = load_model(model)
        with console.status("preprocessing, fitting baselines, predicting …"):
            report, info = evaluate_recording(loaded, data_path, split=split)
        report.setup["model"] = str(model)
        written = write_plots(report, plots_dir, info) if plots_dir is not None else []
        if json_path is not None:
            write_json(report, json_path)
    except (ValueError, OSError) as err:  # EvaluationError, ModelDirError, PreprocessingError are ValueErrors
        _exit_with_error(str(err))
        return
    console.print(
        format_table(
            report,
            f"{data_path.name}: held-out {report.setup['n_test_samples'] / report.sfreq_hz:.1f} s "
            f"(split {split:g}, first {DEFAULT_SETTLE_S:g} s of each part dropped)",
        )
    )
    for line in format_comparisons(report):
        console.print(line, highlight=False)
    if json_path is not None:
        console.print(f"metrics → {json_path}")
    for path in written:
        console.print(f"plot → {path}")
