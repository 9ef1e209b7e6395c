"""Per-channel metrics and the block bootstrap of the test samples.

Pearson r, R² = 1 − SSE/SST (SST about the test mean) and a pooled NMSE per MEG channel, means over
all channels and by sensor type (mag/grad). The block bootstrap resamples 0.5 s blocks of the test
samples from per-block sums (`BlockSums`), so a thousand replicates cost a few matrix products;
every method is resampled with the same blocks, which makes the model − baseline intervals paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: Block bootstrap of the test part.
DEFAULT_BOOTSTRAP_BLOCK_S = 0.5
DEFAULT_BOOTSTRAP_REPLICATES = 1000

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
            "r_mean": nanmean(self.r),
            "r2_mean": nanmean(self.r2),
            "nmse": self.nmse,
        }
        for kind in MEG_TYPES:
            picked = types == kind
            if picked.any():
                out[kind] = {
                    "r_mean": nanmean(self.r[picked]),
                    "r2_mean": nanmean(self.r2[picked]),
                    "nmse": self.nmse_by_type[kind],
                    "n_channels": int(picked.sum()),
                }
        return out


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite values (channels that cannot be scored are NaN); NaN when none is."""
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
    def from_arrays(
        cls, y_true: np.ndarray, y_pred: np.ndarray, block_samples: int, sample_mask: np.ndarray | None = None
    ) -> "BlockSums":
        """Sums over consecutive blocks of `block_samples` rows of `(time, channels)` arrays.

        `sample_mask` `(time,)` bool keeps only some samples in the sums while the blocks stay
        those of the whole time axis, so a subset (e.g. the artefact-free samples) is resampled
        with exactly the blocks drawn for all samples; a block may then hold fewer samples, or none.
        """
        y_true, y_pred = _check_pair(y_true, y_pred)
        starts = np.arange(0, y_true.shape[0], block_samples)
        weight = None
        if sample_mask is not None:
            sample_mask = np.asarray(sample_mask, dtype=bool)
            if sample_mask.shape != (y_true.shape[0],):
                raise EvaluationError(f"sample mask of shape {sample_mask.shape} for {y_true.shape[0]} samples")
            weight = sample_mask.astype(np.float64)[:, None]

        def sums(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values if weight is None else values * weight, starts, axis=0)

        count = np.diff(np.append(starts, y_true.shape[0])).astype(np.float64)
        if weight is not None:
            count = np.add.reduceat(weight[:, 0], starts)
        return cls(
            count=count,
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
        n = (block_counts @ self.count)[:, None]  # (replicates, 1); 0 when a subset drew no sample
        s_t, s_p = block_counts @ self.sum_true, block_counts @ self.sum_pred
        with np.errstate(invalid="ignore", divide="ignore"):
            var_t = block_counts @ self.sum_true_sq - s_t**2 / n  # n × variance, (replicates, channels)
            var_p = block_counts @ self.sum_pred_sq - s_p**2 / n
            cov = block_counts @ self.sum_cross - s_t * s_p / n
            sse = block_counts @ self.sum_err_sq
            r = np.where(var_p > 0, cov / np.sqrt(np.clip(var_t * var_p, 0, None)), 0.0)
            r2 = 1.0 - sse / var_t
        valid = (var_t > 0) & (n >= 2)
        r = np.where(valid, r, np.nan)
        r2 = np.where(valid, r2, np.nan)
        # A replicate without a scorable channel is NaN (dropped by `bootstrap_interval`).
        return _row_nanmean(r), _row_nanmean(r2)


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """`(rows,)` mean of the finite values of each row of `(rows, columns)`, NaN for a row without one."""
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def bootstrap_block_counts(n_blocks: int, replicates: int, seed: int) -> np.ndarray:
    """`(replicates, n_blocks)` counts of a block bootstrap (blocks drawn with replacement)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_blocks, size=(replicates, n_blocks))
    counts = np.zeros((replicates, n_blocks))
    np.add.at(counts, (np.arange(replicates)[:, None], drawn), 1.0)
    return counts


def bootstrap_interval(values: np.ndarray) -> dict[str, Any]:
    """`{std, ci95: [low, high]}` of bootstrap replicates `(replicates,)`, NaN for fewer than 2."""
    values = values[np.isfinite(values)]
    if values.size < 2:
        return {"std": math.nan, "ci95": [math.nan, math.nan]}
    low, high = np.percentile(values, [2.5, 97.5])
    return {"std": float(values.std(ddof=1)), "ci95": [float(low), float(high)]}

