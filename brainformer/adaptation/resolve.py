"""The linear path re-solved for the electrodes a stream has, and what that cap will give.

A stream whose electrodes are not all the model's reaches the model as ``x' = C x + c``: the
training EEG `x` (preprocessed, scaled) seen through the stream's cap (`P`: a model electrode the
stream has is read as it is; an electrode of another cap, placed on the model's head, is what
splines from the model's electrodes give there) and the plan's interpolation back onto the
model's electrodes (`A`), under the same average reference and scaling::

    C = S · R · A · P · S⁻¹,   c = S · (R · A · P − I) · μ

(`S` the inverse standard deviations, `R` the average reference, `μ` the scaling means; the
splines reproduce a constant, so the reference passes through). From the model's statistics
(`brainformer.linear_path`) the ridge for `x'` follows in closed form, and with it the expected
held-out r and R² of this cap next to the model's own. The transformer keeps its input `x'`;
only the linear path changes, as a correction added to the model's output::

    path = resolve_linear_path(plan, fields, statistics)
    path.quality.describe()              # "expected r 0.36 (R² 0.13), 93 % of the full cap's 0.39 …"
    predictions += lagged(x') @ path.delta_weight + path.delta_bias     # (serving, per window)

Planned once per stream and again when an electrode goes bad (off the hot path); numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainformer.adaptation.errors import AdaptationError
from brainformer.adaptation.interpolation import fit_origin, spline_matrix
from brainformer.adaptation.plan import AdaptationPlan

__all__ = ["CapQuality", "ResolvedLinearPath", "cap_operator", "check_expected_quality", "resolve_linear_path"]

#: Below this share of the full cap's expected r, a cap is "far from complete": served with a plain
#: statement of what it gives.
INCOMPLETE_SHARE = 0.9


@dataclass(frozen=True)
class CapQuality:
    """What the linear path gives on this cap, next to the model's full cap: held-out r and R²
    (validation rows of the training data; `linear_path.ExpectedQuality`)."""

    r: float
    r2: float
    full_r: float
    full_r2: float
    n_electrodes: int

    @property
    def share(self) -> float:
        """Expected r as a share of the full cap's."""
        return self.r / self.full_r if self.full_r > 0 else float("nan")

    def describe(self) -> str:
        """One line: the figures, and, for a cap far from complete, what that means."""
        line = (f"expected quality (linear path re-solved for these {self.n_electrodes} electrodes, on held-out rows of the "
                f"training data): r {self.r:.3f}, R² {self.r2:.3f}; the model's full cap: r {self.full_r:.3f}, "
                f"R² {self.full_r2:.3f} ({100 * self.share:.0f} %)")
        if self.share < INCOMPLETE_SHARE:
            line += (f"; this cap is far from complete: expect predictions about {100 * self.share:.0f} % as well "
                     "correlated with the MEG as the model's own cap gives")
        return line

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "r2": self.r2, "full_r": self.full_r, "full_r2": self.full_r2,
                "share": self.share, "n_electrodes": self.n_electrodes}


@dataclass(frozen=True, eq=False)
class ResolvedLinearPath:
    """The correction that turns the model's linear path into the one re-solved for a stream.

    Attributes:
        lags: lags in samples.
        delta_weight: `(len(lags) · n_eeg, n_meg)` float32, lag-major blocks of the model's EEG
            channels: added output = ``[x'(t − lags[0]), x'(t − lags[1]), …] @ delta_weight``.
        delta_bias: `(n_meg,)` float32.
        quality: the expected quality (`CapQuality`).
        identity: the stream gives the model's own electrodes, untouched: nothing to add.
    """

    lags: tuple[int, ...]
    delta_weight: np.ndarray
    delta_bias: np.ndarray
    quality: CapQuality
    identity: bool

    @property
    def max_lag(self) -> int:
        return max(self.lags)


def cap_operator(plan: AdaptationPlan, fields: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(C (n_eeg, n_eeg), c (n_eeg,))` of the module docstring for this plan and model."""
    from brainformer.preprocessing import eeg_scaling

    n = plan.n_model_channels
    model_positions = None if plan.model.positions_m is None else np.asarray(plan.model.positions_m)
    sensing = np.zeros((len(plan.used_columns), n))  # P: what each used column is, in model electrodes
    foreign = [k for k, j in enumerate(plan.used_model_index) if j < 0]
    for k, j in enumerate(plan.used_model_index):
        if j >= 0:
            sensing[k, j] = 1.0
    if foreign:
        positions = np.array([plan.used_positions_m[k] for k in foreign], dtype=np.float64)
        origin = np.asarray(plan.origin_m) if plan.origin_m is not None else fit_origin(model_positions)
        sensing[foreign] = spline_matrix(model_positions, positions, origin, plan.options.spline_reg)
    through = plan.spatial @ sensing  # A · P: model electrodes in → model electrodes out (volts)
    if getattr(fields, "eeg_reference", "average") == "average":
        through = through - through.mean(axis=0, keepdims=True)
    scaling = eeg_scaling(fields)
    if scaling is None:
        return through, np.zeros(n)
    inverse = np.where(scaling.scale > 0, scaling.std, 0.0)  # x of a flat channel is always 0
    matrix = scaling.scale[:, None] * through * inverse[None, :]
    offset = scaling.scale * ((through - np.eye(n)) @ scaling.mean)
    return matrix, offset


def resolve_linear_path(plan: AdaptationPlan, fields: Any, statistics: Any, full: Any = None) -> ResolvedLinearPath:
    """The linear path re-solved for `plan`'s stream from the model's `statistics`
    (`linear_path.LinearPathStatistics`), as a correction of the model's own (`full`: its solution
    on the full cap, `statistics.solve()`, computed here when not given)."""
    full = statistics.solve() if full is None else full
    n, n_meg = statistics.n_eeg, statistics.n_meg
    n_used = len(plan.used_columns)
    if plan.is_selection:  # every model electrode read as it is: the model's own linear path
        quality = CapQuality(full.expected.r, full.expected.r2, full.expected.r, full.expected.r2, n_used)
        return ResolvedLinearPath(full.lags, np.zeros((len(full.lags) * n, n_meg), np.float32),
                                  np.zeros(n_meg, np.float32), quality, identity=True)
    matrix, offset = cap_operator(plan, fields)
    cap = statistics.solve(matrix, offset)
    quality = CapQuality(cap.expected.r, cap.expected.r2, full.expected.r, full.expected.r2, n_used)
    delta = (cap.weight - full.weight).reshape(len(cap.lags) * n, n_meg)
    return ResolvedLinearPath(cap.lags, np.ascontiguousarray(delta, dtype=np.float32),
                              np.asarray(cap.bias - full.bias, dtype=np.float32), quality, identity=False)


def check_expected_quality(quality: CapQuality, min_share: float, source: str) -> None:
    """`AdaptationError` naming the numbers when the cap's expected r is below `min_share` of the
    model's full cap."""
    if quality.share < min_share:
        raise AdaptationError(
            f"{source}: expected r {quality.r:.3f} (R² {quality.r2:.3f}) on these {quality.n_electrodes} electrodes is "
            f"{100 * quality.share:.0f} % of the model's full-cap r {quality.full_r:.3f}, below the floor of "
            f"{100 * min_share:g} % (min_expected_share); add electrodes, or lower the floor to serve it anyway"
        )
