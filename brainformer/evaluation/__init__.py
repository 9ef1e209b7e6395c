"""Honest evaluation: the model and two ridge baselines scored on the same held-out samples.

Read in this order, each module using only those above it:

```
metrics.py    per-channel r, R², NMSE; block bootstrap of the test samples     (numpy)
baselines.py  instantaneous and lagged ridge EEG → MEG, closed form on blocks   (numpy)
artefacts.py  heartbeats and blinks of the raw recording; the scored rows they   (MNE only inside
              leave clean                                                        `detect_artefacts`)
scoring.py    the model predicted as served; every method scored on the same    (torch only inside
              test samples (`score_methods`); the report, from arrays or from     `predict_as_served`)
              a recording; JSON
delay.py      the effective delay: the lag at which a prediction best matches    (numpy, scipy)
              the zero-phase truth, overall and per band
ablation.py   the model's skip path alone and its transformer alone, as served    (torch inside)
plots.py      PNG plots of a report                                              (matplotlib inside)
```

Importing the package costs numpy only: torch, MNE and matplotlib are imported by the functions
that need them. The `brainformer evaluate` command and its tables live in `brainformer.commands`.
"""

from __future__ import annotations

from brainformer.evaluation.artefacts import (
    BLINK_WINDOW_S,
    HEARTBEAT_WINDOW_S,
    ArtefactEvents,
    ArtefactMask,
    detect_artefacts,
)
from brainformer.evaluation.baselines import (
    DEFAULT_LAG_STEP_SAMPLES,
    DEFAULT_MAX_LAG_S,
    DEFAULT_RELATIVE_ALPHAS,
    DEFAULT_VALIDATION_FRACTION,
    BlockSource,
    RidgeFit,
    RowBlock,
    continuous_blocks,
    fit_ridge,
    fit_ridge_blocks,
    lag_samples,
    lagged_rows,
)
from brainformer.evaluation.metrics import (
    DEFAULT_BOOTSTRAP_BLOCK_S,
    DEFAULT_BOOTSTRAP_REPLICATES,
    MEG_TYPES,
    BlockSums,
    ChannelScores,
    EvaluationError,
    bootstrap_block_counts,
    nmse,
    pearson_r,
    r_squared,
    score_channels,
)
from brainformer.evaluation.delay import (
    EffectiveDelay,
    band_effective_delays,
    effective_delay,
    lag_correlation,
    lag_phase_locking,
    zero_phase_band,
)
from brainformer.evaluation.ablation import SKIP_ALONE, TRANSFORMER_ALONE, ablation_predictors, model_path_alone
from brainformer.evaluation.plots import write_plots
from brainformer.evaluation.scoring import (
    DEFAULT_SETTLE_S,
    TRUTH_NAMES,
    EvaluationReport,
    MethodResult,
    Predictor,
    SplitRows,
    evaluate_arrays,
    effective_delays,
    evaluate_recording,
    predict_as_served,
    paired_r2_difference,
    score_methods,
    served_window_ends,
    write_json,
)

__all__ = [
    "EffectiveDelay",
    "TRUTH_NAMES",
    "effective_delays",
    "band_effective_delays",
    "effective_delay",
    "lag_correlation",
    "lag_phase_locking",
    "zero_phase_band",
    "BLINK_WINDOW_S",
    "HEARTBEAT_WINDOW_S",
    "ArtefactEvents",
    "ArtefactMask",
    "DEFAULT_BOOTSTRAP_BLOCK_S",
    "DEFAULT_BOOTSTRAP_REPLICATES",
    "DEFAULT_LAG_STEP_SAMPLES",
    "DEFAULT_MAX_LAG_S",
    "DEFAULT_RELATIVE_ALPHAS",
    "DEFAULT_SETTLE_S",
    "DEFAULT_VALIDATION_FRACTION",
    "MEG_TYPES",
    "BlockSource",
    "BlockSums",
    "ChannelScores",
    "EvaluationError",
    "EvaluationReport",
    "MethodResult",
    "Predictor",
    "RidgeFit",
    "RowBlock",
    "SKIP_ALONE",
    "SplitRows",
    "TRANSFORMER_ALONE",
    "ablation_predictors",
    "bootstrap_block_counts",
    "continuous_blocks",
    "detect_artefacts",
    "evaluate_arrays",
    "evaluate_recording",
    "fit_ridge",
    "fit_ridge_blocks",
    "lag_samples",
    "lagged_rows",
    "model_path_alone",
    "nmse",
    "pearson_r",
    "predict_as_served",
    "r_squared",
    "score_channels",
    "paired_r2_difference",
    "score_methods",
    "served_window_ends",
    "write_json",
    "write_plots",
]
