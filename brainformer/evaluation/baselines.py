"""Ridge baselines: an instantaneous and a causal lagged ridge map EEG → MEG, in closed form.

Both are fitted on the train rows only: the ridge penalty is chosen on the validation rows (the
last 20 % of the train part, in time), then the map is refitted on all train rows. The closed form
goes through the Gram matrix and its eigendecomposition, so a whole grid of penalties costs about
as much as one fit, and memory does not grow with the recording length (rows arrive in blocks).

```
RowBlocks ─► pass 1: input standardisation ─► pass 2: Gram matrices (fitting | validation rows)
          ─► penalty with the least validation error (whole grid at once) ─► refit on all rows
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from brainformer.evaluation.metrics import EvaluationError

logger = logging.getLogger(__name__)

#: Fraction of the train part (its end, in time) used to choose the ridge penalty.
DEFAULT_VALIDATION_FRACTION = 0.2
#: Lagged ridge: causal lags up to this many seconds, every `LAG_STEP_SAMPLES` samples.
DEFAULT_MAX_LAG_S = 0.050
DEFAULT_LAG_STEP_SAMPLES = 2
#: Ridge penalties tried, relative to the mean eigenvalue of the (standardised) Gram matrix,
#: which is about the number of fitting samples.
DEFAULT_RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-5, 1, 31))
#: Rows of lagged features built at once when accumulating Gram matrices.
_GRAM_CHUNK_ROWS = 4096


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
class GramAccumulator:
    """Running `FᵀF`, `FᵀY`, `ΣF`, `ΣY`, `ΣY²` over row blocks of features F and targets Y."""

    gram: np.ndarray
    cross: np.ndarray
    sum_x: np.ndarray
    sum_y: np.ndarray
    sum_y_sq: np.ndarray
    count: int = 0

    @classmethod
    def empty(cls, n_features: int, n_targets: int) -> "GramAccumulator":
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

    def merged(self, other: "GramAccumulator") -> "GramAccumulator":
        return GramAccumulator(
            self.gram + other.gram, self.cross + other.cross, self.sum_x + other.sum_x,
            self.sum_y + other.sum_y, self.sum_y_sq + other.sum_y_sq, self.count + other.count,
        )

    def transformed(self, matrix: np.ndarray, offset: np.ndarray | None = None) -> "GramAccumulator":
        """The sums of the features `matrix @ f + offset` (`matrix` `(m, features)`, `offset`
        `(m,)`): what these rows would have given with those features, in closed form."""
        offset = np.zeros(matrix.shape[0]) if offset is None else np.asarray(offset, dtype=np.float64)
        sum_x = matrix @ self.sum_x
        gram = matrix @ self.gram @ matrix.T + np.outer(sum_x, offset) + np.outer(offset, sum_x)
        gram += self.count * np.outer(offset, offset)
        cross = matrix @ self.cross + np.outer(offset, self.sum_y)
        return GramAccumulator(gram, cross, sum_x + self.count * offset, self.sum_y.copy(), self.sum_y_sq.copy(),
                               self.count)

    def subset(self, columns: np.ndarray) -> "GramAccumulator":
        """The sums of the features `columns` alone."""
        return GramAccumulator(self.gram[np.ix_(columns, columns)], self.cross[columns], self.sum_x[columns],
                               self.sum_y, self.sum_y_sq, self.count)

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
    lags, relative_alphas = _checked_grid(lags, relative_alphas)
    mean_x, scale_x = _input_standardisation(blocks)
    fit_acc, val_acc = _fitting_and_validation_grams(blocks, validation_start, lags, mean_x, scale_x)
    grid_mse = validation_mse(fit_acc, val_acc, relative_alphas)
    best = int(np.argmin(grid_mse))
    if relative_alphas.size > 1 and best in (0, relative_alphas.size - 1):
        logger.warning("ridge (lags %d…%d): the chosen penalty lies at the edge of the grid", lags[0], lags[-1])
    weight, bias, alpha = refit_ridge(fit_acc.merged(val_acc), float(relative_alphas[best]))
    return RidgeFit(
        lags=lags, input_mean=mean_x, input_scale=scale_x, weight=weight, bias=bias, alpha=alpha,
        relative_alphas=relative_alphas, validation_mse=grid_mse,
    )


def _checked_grid(lags: Sequence[int], relative_alphas: Sequence[float]) -> tuple[tuple[int, ...], np.ndarray]:
    lags = tuple(int(lag) for lag in lags)
    if not lags or min(lags) < 0:
        raise EvaluationError(f"ridge lags must be a non-empty list of causal lags >= 0, got {lags}")
    relative_alphas = np.asarray(relative_alphas, dtype=np.float64)
    if relative_alphas.size == 0 or np.any(relative_alphas <= 0):
        raise EvaluationError(f"ridge penalties must be a non-empty list of numbers > 0, got {relative_alphas.tolist()}")
    return lags, relative_alphas


def _input_standardisation(blocks: BlockSource) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: `(mean, scale)` `(n_eeg,)` of the inputs over all train rows; scale 0 for flat channels."""
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
    return mean_x, scale_x


def _fitting_and_validation_grams(
    blocks: BlockSource,
    validation_start: Mapping[str, int],
    lags: tuple[int, ...],
    mean_x: np.ndarray,
    scale_x: np.ndarray,
) -> tuple[GramAccumulator, GramAccumulator]:
    """Pass 2: Gram matrices of the standardised lagged features, of the fitting rows and of the
    validation rows (rows of group `g` at or after `validation_start[g]`)."""
    fit_acc = val_acc = None
    for block in blocks():
        standardised = (np.asarray(block.eeg, dtype=np.float64) - mean_x) * scale_x
        features = lagged_rows(standardised, lags, block.history, standardised.shape[0])
        targets = np.asarray(block.meg, dtype=np.float64)
        if fit_acc is None:
            fit_acc = GramAccumulator.empty(features.shape[1], targets.shape[1])
            val_acc = GramAccumulator.empty(features.shape[1], targets.shape[1])
        split = int(np.clip(validation_start.get(block.group, np.iinfo(np.int64).max) - block.first_row, 0, targets.shape[0]))
        fit_acc.add(features[:split], targets[:split])
        val_acc.add(features[split:], targets[split:])
    if fit_acc.count < 2 or val_acc.count < 2:
        raise EvaluationError(
            f"ridge: {fit_acc.count} fitting and {val_acc.count} validation samples are too few "
            f"({fit_acc.gram.shape[0]} features)"
        )
    return fit_acc, val_acc


def validation_mse(fit_acc: GramAccumulator, val_acc: GramAccumulator, relative_alphas: np.ndarray) -> np.ndarray:
    """`(penalties,)` validation MSE of the map fitted on the fitting rows, for each penalty.

    With G = V diag(e) Vᵀ and W(α) = V D Vᵀ FᵀY, D = 1/(e + α), the validation
    SSE(α) = Σ‖Yv‖² − 2 tr(Wᵀ FvᵀYv) + tr(Wᵀ Gv W) reduces to sums over precomputed (features,) and
    (features, features) arrays: the whole grid costs about one fit.
    """
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
    return sse / (val_acc.count * val_cross.shape[1])


def refit_ridge(acc: GramAccumulator, relative_alpha: float) -> tuple[np.ndarray, np.ndarray, float]:
    """`(weight (features, n_meg), bias (n_meg,), alpha)` fitted on all rows of `acc`; the penalty
    is relative to the mean eigenvalue (the trace over the features), so it carries over from the
    smaller Gram matrix it was chosen on."""
    mu_f, mu_y = acc.sum_x / acc.count, acc.sum_y / acc.count
    gram, cross, _ = acc.centred(mu_f, mu_y)
    n_features = gram.shape[0]
    alpha = relative_alpha * float(np.trace(gram)) / n_features
    weight = np.linalg.solve(gram + alpha * np.eye(n_features), cross)
    return weight, mu_y - mu_f @ weight, alpha


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

