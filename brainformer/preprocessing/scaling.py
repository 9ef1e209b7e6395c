"""Per-channel scaling: ``scaled = (x - mean) / std``, its inverse, and fitting the statistics.

The statistics are fitted on the training split (`fit_scaling`, fed blocks or running
`ChannelStats`) and stored in the model config; `ChannelScaling` is the frozen form a preprocessor
applies. A channel whose standard deviation is 0, or below ``FLAT_CHANNEL_RELATIVE_STD`` times the
median over channels, is treated as flat: its scale is 0, so it enters the model as zeros instead of
as amplified noise, and un-scaling it yields its mean.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from brainformer.preprocessing.errors import PreprocessingError

__all__ = [
    "FLAT_CHANNEL_RELATIVE_STD",
    "ChannelScaling",
    "ChannelStats",
    "fit_scaling",
    "meg_scaling",
    "scale_meg",
    "unscale_meg",
    "without_scaling",
]

logger = logging.getLogger(__name__)

#: A channel whose std is below this fraction of the median std over channels is treated as flat.
FLAT_CHANNEL_RELATIVE_STD = 1e-6


@dataclass(frozen=True, eq=False)
class ChannelScaling:
    """Per-channel affine scaling ``scaled = (x - mean) * scale`` with ``scale = 1 / std``.

    Attributes:
        mean: `(channels,)` float64, physical units.
        std: `(channels,)` float64, physical units, as stored in the config.
        scale: `(channels,)` float64; 0 for flat channels (see the module docstring).
    """

    mean: np.ndarray
    std: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float], field: str = "std") -> "ChannelScaling":
        mean_arr = np.asarray(mean, dtype=np.float64)
        std_arr = np.asarray(std, dtype=np.float64)
        if mean_arr.ndim != 1 or mean_arr.shape != std_arr.shape:
            raise PreprocessingError(
                f"{field}: mean and std must be 1-D lists of the same length, got shapes "
                f"{mean_arr.shape} and {std_arr.shape}"
            )
        if not (np.all(np.isfinite(mean_arr)) and np.all(np.isfinite(std_arr)) and np.all(std_arr >= 0)):
            raise PreprocessingError(f"{field}: scaling statistics must be finite and std >= 0")
        threshold = FLAT_CHANNEL_RELATIVE_STD * float(np.median(std_arr)) if std_arr.size else 0.0
        flat = std_arr <= threshold
        scale = np.zeros_like(std_arr)
        np.divide(1.0, std_arr, out=scale, where=~flat)
        if flat.any():
            logger.info("%s: %d flat channel(s) get scale 0: indices %s", field, int(flat.sum()), np.flatnonzero(flat).tolist())
        for array in (mean_arr, std_arr, scale):
            array.setflags(write=False)
        return cls(mean=mean_arr, std=std_arr, scale=scale)

    @property
    def flat_channels(self) -> np.ndarray:
        """Indices of the channels treated as flat (scale 0)."""
        return np.flatnonzero(self.scale == 0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Physical `(..., channels)` → scaled `(..., channels)`.

        Computed in float64; float32 in → float32 out, anything else → float64.
        """
        x = np.asarray(x)
        out = x - self.mean
        out *= self.scale
        return out.astype(np.float32) if x.dtype == np.float32 else out

    def invert(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled `(..., channels)` → physical `(..., channels)`; flat channels give their mean.

        Computed in float64 (``scaled * std + mean``); float32 in → float32 out, else float64.
        """
        scaled = np.asarray(scaled)
        out = scaled * self.std
        out += self.mean
        return out.astype(np.float32) if scaled.dtype == np.float32 else out


def _scaling_from_config(config: Any, modality: str, n_channels: int) -> ChannelScaling | None:
    mean = getattr(config, f"{modality}_mean", None)
    std = getattr(config, f"{modality}_std", None)
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise PreprocessingError(f"config: {modality}_mean and {modality}_std must be both set or both None")
    scaling = ChannelScaling.from_stats(mean, std, field=f"{modality}_mean/{modality}_std")
    if scaling.mean.shape[0] != n_channels:
        raise PreprocessingError(
            f"config: {modality}_mean/{modality}_std have {scaling.mean.shape[0]} values but "
            f"{modality}_channel_names has {n_channels}"
        )
    return scaling


def eeg_scaling(config: Any) -> ChannelScaling | None:
    """The config's EEG scaling, or None without statistics."""
    return _scaling_from_config(config, "eeg", len(config.eeg_channel_names))


def meg_scaling(config: Any) -> ChannelScaling | None:
    """The config's MEG scaling, or None without statistics; build it once for a hot loop."""
    return _scaling_from_config(config, "meg", len(config.meg_channel_names))


def scale_meg(config: Any, physical: np.ndarray) -> np.ndarray:
    """MEG in physical units (T, T/m) `(..., n_meg)` → scaled units; identity without statistics."""
    scaling = _scaling_from_config(config, "meg", len(config.meg_channel_names))
    return np.asarray(physical) if scaling is None else scaling.apply(physical)


def unscale_meg(config: Any, scaled: np.ndarray) -> np.ndarray:
    """Scaled MEG `(..., n_meg)` (model output) → physical units (T for mag, T/m for grad)."""
    scaling = _scaling_from_config(config, "meg", len(config.meg_channel_names))
    return np.asarray(scaled) if scaling is None else scaling.invert(scaled)


# --------------------------------------------------------------------------------------------
# Fitting the scaling statistics
# --------------------------------------------------------------------------------------------
class ChannelStats:
    """Running per-channel mean and variance (Chan et al. pairwise update), float64.

    Feed `(n, channels)` blocks with `update`; combine partial results with `merge`. Numerically
    stable for MEG values around 1e-12 and for many blocks.
    """

    def __init__(self, n_channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)  # sum of squared deviations from the mean

    def update(self, block: np.ndarray) -> "ChannelStats":
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != self.mean.shape[0]:
            raise PreprocessingError(f"expected a block of shape (n, {self.mean.shape[0]}), got {block.shape}")
        if block.shape[0] == 0:
            return self
        other = ChannelStats(block.shape[1])
        other.count = block.shape[0]
        other.mean = block.mean(axis=0)
        other.m2 = ((block - other.mean) ** 2).sum(axis=0)
        return self.merge(other)

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        if other.count == 0:
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total
        return self

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (0 for an empty accumulator)."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)


def _as_stats(values: np.ndarray | Sequence[np.ndarray] | ChannelStats, n_channels: int, modality: str) -> ChannelStats:
    if isinstance(values, ChannelStats):
        stats = values
    else:
        blocks = [values] if isinstance(values, np.ndarray) else list(values)
        stats = ChannelStats(n_channels)
        for block in blocks:
            if np.asarray(block).ndim != 2 or np.asarray(block).shape[1] != n_channels:
                raise PreprocessingError(
                    f"fit_scaling: {modality} blocks must have shape (n, {n_channels}), got {np.asarray(block).shape}"
                )
            stats.update(block)
    if stats.mean.shape[0] != n_channels:
        raise PreprocessingError(f"fit_scaling: {modality} statistics cover {stats.mean.shape[0]} channels, expected {n_channels}")
    if stats.count < 2:
        raise PreprocessingError(f"fit_scaling: need at least 2 {modality} samples to fit scaling, got {stats.count}")
    if not (np.all(np.isfinite(stats.mean)) and np.all(np.isfinite(stats.m2))):
        raise PreprocessingError(f"fit_scaling: {modality} data hold NaN/Inf")
    return stats


def fit_scaling(
    config: Any,
    eeg: np.ndarray | Sequence[np.ndarray] | ChannelStats,
    meg: np.ndarray | Sequence[np.ndarray] | ChannelStats,
) -> Any:
    """A NEW config with ``eeg_mean/eeg_std/meg_mean/meg_std`` fitted on the data given.

    Args:
        config: model config; not modified.
        eeg: unscaled preprocessed EEG `(n, n_eeg)`, a list of such blocks, or a `ChannelStats`.
        meg: unscaled preprocessed MEG `(n, n_meg)`, a list of such blocks, or a `ChannelStats`.

    Pass only the training part (after dropping the settling period): the statistics become part
    of the model and must not see held-out data.
    """
    eeg_stats = _as_stats(eeg, len(config.eeg_channel_names), "eeg")
    meg_stats = _as_stats(meg, len(config.meg_channel_names), "meg")
    fitted = copy.deepcopy(config)
    fitted.eeg_mean = [float(v) for v in eeg_stats.mean]
    fitted.eeg_std = [float(v) for v in eeg_stats.std]
    fitted.meg_mean = [float(v) for v in meg_stats.mean]
    fitted.meg_std = [float(v) for v in meg_stats.std]
    return fitted


def without_scaling(config: Any) -> Any:
    """A NEW config equal to `config` but with no scaling statistics (preprocessing → physical units)."""
    plain = copy.deepcopy(config)
    plain.eeg_mean = plain.eeg_std = plain.meg_mean = plain.meg_std = None
    return plain
