"""Discontinuities in a stream's timestamps: the one rule the inlet and the gap detector share."""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["timestamp_jumps"]


def timestamp_jumps(timestamps: np.ndarray, previous: Optional[float], steps: np.ndarray, threshold_s: float,
                    period_s: float) -> np.ndarray:
    """``(n,)`` bool: where the step to each timestamp (the first one's from ``previous``, the
    last timestamp of the chunk before, None for none) is forward by more than ``threshold_s`` or
    backwards by more than half a sample period. ``steps``: a float64 buffer of at least ``n``
    rows, left holding the steps."""
    n = timestamps.shape[0]
    steps = steps[:n]
    steps[0] = 0.0 if previous is None else timestamps[0] - previous
    if n > 1:
        np.subtract(timestamps[1:], timestamps[:-1], out=steps[1:])
    return (steps > threshold_s) | (steps < -0.5 * period_s)
