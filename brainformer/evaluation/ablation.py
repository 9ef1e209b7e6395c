"""The model's two paths scored apart: the lagged-linear skip path alone, the transformer alone.

A `BrainformerForMEGPrediction` with `skip_lags > 0` sums two paths, the linear path (a causal
lagged-linear map EEG → MEG, plus its hop lookahead when it has one) and the transformer's output
(its projection, plus its gain head when it has one).
Zeroing one of them in a copy of the trained model gives the other one's prediction, served exactly as the whole model is served
(`predict_as_served`), so "skip + transformer − skip alone" is the transformer's own contribution
in R², measured on the same test rows as the baselines.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from brainformer.evaluation.metrics import EvaluationError
from brainformer.evaluation.scoring import predict_as_served

#: Extra-predictor names, as they appear next to `model` in reports.
SKIP_ALONE = "skip_path_alone"
TRANSFORMER_ALONE = "transformer_alone"


def model_path_alone(model: Any, path: str) -> Any:
    """A copy of `model` (eval mode) that keeps only one path: ``"skip"`` or ``"transformer"``."""
    import torch

    if getattr(model, "linear_skip", None) is None:
        raise EvaluationError("the model has no skip path (skip_lags = 0): nothing to ablate")
    if path not in ("skip", "transformer"):
        raise EvaluationError(f"path {path!r}: expected 'skip' or 'transformer'")
    alone = copy.deepcopy(model).eval()
    # Zeroing the other path's last linear maps removes its whole contribution to the output.
    if path == "skip":
        removed = [alone.projection]
        if getattr(alone, "gain_head", None) is not None:
            removed.append(alone.gain_head.gain_projection)
    else:
        removed = [alone.linear_skip]
        if getattr(alone, "hop_lookahead", None) is not None:
            removed.append(alone.hop_lookahead)
    with torch.no_grad():
        for layer in removed:
            for parameter in layer.parameters():
                parameter.zero_()
    return alone


def ablation_predictors(model: Any, eeg: np.ndarray, hop_samples: int | None = None) -> dict[str, Callable[[int, int], np.ndarray]]:
    """`{name: f(start, stop) -> (stop − start, n_meg)}` for each path alone, as extra predictors
    of `brainformer.evaluation.evaluate_arrays`; empty for a model without a skip path."""
    if getattr(model, "linear_skip", None) is None:
        return {}
    predictors = {}
    for name, path in ((SKIP_ALONE, "skip"), (TRANSFORMER_ALONE, "transformer")):
        alone = model_path_alone(model, path)
        predictors[name] = lambda start, stop, alone=alone: predict_as_served(alone, eeg, start, stop, hop_samples)
    return predictors
