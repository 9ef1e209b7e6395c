"""A model's linear path, re-solved in closed form for the inputs a stream really gives.

A model with a lagged-linear skip path (``skip_lags > 0``) has it fitted as a lagged ridge on its
training data (`training.init_skip_from_ridge`). The ridge needs its data only through second
moments: the Gram matrix of the lagged (preprocessed, scaled) EEG and its cross-products with the
MEG. Those are the *sufficient statistics* of the linear path; the model directory carries them
next to its weights (:data:`STATISTICS_FILENAME`, safetensors; written by ``brainformer train``
and, for an existing model, by ``brainformer statistics``), accumulated over `N_FOLDS` stretches
of the train part in time: the validation rows that chose the penalty (its last 20 %) and the
fitting rows before them in `N_FOLDS` − 1 equal stretches.

A stream whose electrodes are not the model's (some missing, another cap) gives the model
``x' = C x + c`` instead of the EEG ``x`` it was trained on: the served EEG is the model's
electrodes interpolated from the stream's, and the stream's from the model's, so everything
between them is one linear operator `C` (`brainformer.adaptation.resolve`). The best lagged ridge
for those inputs follows from the same statistics pushed through `C`
(`GramAccumulator.transformed`), with its penalty chosen again on the validation rows, and so
does what it will give: the r and R² of that map on each stretch when fitted on the others
(cross-validation over the whole train part: data each fit never saw), averaged::

    statistics = load_statistics(model_dir)        # None for a model without them
    full = statistics.solve()                      # the model's own skip path (C = I)
    cap = statistics.solve(C, c)                   # the ridge for x' = C x + c
    cap.weight, cap.bias, cap.expected.r           # (lags, n_eeg, n_meg), (n_meg,), float

Torch-free (numpy and safetensors' numpy reader only).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from brainformer.evaluation.baselines import (
    DEFAULT_RELATIVE_ALPHAS,
    DEFAULT_VALIDATION_FRACTION,
    GramAccumulator,
    RowBlock,
    continuous_blocks,
    lagged_rows,
    refit_ridge,
    validation_mse,
)

__all__ = [
    "STATISTICS_FILENAME",
    "ExpectedQuality",
    "HopLookaheadFit",
    "LinearPathSolution",
    "LinearPathStatistics",
    "StatisticsError",
    "fit_hop_lookahead",
    "load_statistics",
    "ridge_blocks",
    "write_model_statistics",
    "skip_ridge_lags",
    "statistics_from_prepared",
]

logger = logging.getLogger(__name__)

#: The statistics file of a model directory.
STATISTICS_FILENAME = "linear_path_statistics.safetensors"
#: Written into the file's metadata; a file of another format is refused.
STATISTICS_FORMAT = "brainformer-linear-path-1"
#: Stretches of the train part the statistics are kept for (the last one: the validation rows).
N_FOLDS = 4
_SUMS = ("cross", "sum_x", "sum_y", "sum_y_sq")


class StatisticsError(ValueError):
    """A statistics file that cannot be used with its model (one line, naming the file)."""


@dataclass(frozen=True)
class ExpectedQuality:
    """What a linear map gives on held-out rows: mean over the MEG channels of the per-channel
    Pearson r and R² on each stretch of the train part when fitted on the others, averaged over
    the stretches."""

    r: float
    r2: float

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "r2": self.r2}


@dataclass(frozen=True)
class LinearPathSolution:
    """A lagged ridge map on the (transformed) inputs: ``ŷ(t) = Σ_i x'(t − lags[i]) @ weight[i] + bias``.

    Attributes:
        lags: lags in samples.
        weight: `(len(lags), n_eeg, n_meg)` on the inputs as served (not standardised).
        bias: `(n_meg,)`.
        relative_alpha: the penalty chosen on the validation rows (relative to the mean eigenvalue).
        expected: its held-out quality (`ExpectedQuality`).
    """

    lags: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    relative_alpha: float
    expected: ExpectedQuality

    def as_conv_skip(self, n_taps: int) -> tuple[np.ndarray, np.ndarray]:
        """The map as the model's skip path: `weight (n_meg, n_eeg, n_taps)` (tap `k` multiplies
        the input `n_taps − 1 − k` samples back) and `bias (n_meg,)`."""
        if max(self.lags) >= n_taps:
            raise ValueError(f"lags up to {max(self.lags)} samples do not fit in {n_taps} taps")
        conv = np.zeros((self.weight.shape[2], self.weight.shape[1], n_taps))
        for i, lag in enumerate(self.lags):
            conv[:, :, n_taps - 1 - lag] += self.weight[i].T
        return conv, self.bias.copy()

    def predict(self, x: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows `[start, stop)` of a continuous input `x (n, n_eeg)` → `(stop − start, n_meg)`;
        rows before `start` give the history (zeros before the first)."""
        stop = x.shape[0] if stop is None else stop
        out = np.tile(self.bias, (stop - start, 1))
        for i, lag in enumerate(self.lags):
            first = max(start - lag, 0)
            if stop - lag > first:
                out[first + lag - start :] += np.asarray(x[first : stop - lag], dtype=np.float64) @ self.weight[i]
        return out


@dataclass
class LinearPathStatistics:
    """Second moments of a model's training data on the lags of its skip path's ridge.

    Attributes:
        lags: lags of the ridge, in samples.
        folds: `GramAccumulator` per stretch of the train part, in time, of the lagged model
            inputs (preprocessed and scaled EEG, lag-major blocks of `n_eeg` columns, not
            standardised) and the scaled MEG: `N_FOLDS` − 1 equal stretches of the fitting rows,
            then the validation rows (the last 20 % of each recording's train part).
        relative_alphas: the penalty grid (relative to the mean eigenvalue of the standardised
            Gram matrix).
        eeg_channel_names: the model's EEG channels, in input order.
        n_meg: MEG channels.
        sources: the recordings they were computed from.
    """

    lags: tuple[int, ...]
    folds: tuple[GramAccumulator, ...]
    relative_alphas: np.ndarray
    eeg_channel_names: tuple[str, ...]
    n_meg: int
    sources: tuple[str, ...] = ()

    @property
    def n_eeg(self) -> int:
        return len(self.eeg_channel_names)

    @property
    def fitting(self) -> GramAccumulator:
        """The fitting rows: every stretch but the last."""
        return _merged(self.folds[:-1])

    @property
    def validation(self) -> GramAccumulator:
        """The validation rows that choose the penalty: the last stretch."""
        return self.folds[-1]

    # -- solving ------------------------------------------------------------------------------
    def solve(self, matrix: np.ndarray | None = None, offset: np.ndarray | None = None) -> LinearPathSolution:
        """The lagged ridge for inputs ``x' = matrix @ x + offset`` (`(n_eeg, n_eeg)`, `(n_eeg,)`;
        None: the model's own inputs), as `fit_ridge_blocks` would fit it on those inputs: each
        input standardised over all train rows, the penalty chosen on the validation rows, the map
        refitted on all of them; with its held-out quality (cross-validated over the stretches
        with that penalty)."""
        n, n_lags = self.n_eeg, len(self.lags)
        folds = self.folds
        if matrix is not None:
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.shape != (n, n):
                raise ValueError(f"solve: matrix has shape {matrix.shape}; expected ({n}, {n})")
            blocks = np.kron(np.eye(n_lags), matrix)
            shift = np.tile(np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64), n_lags)
            folds = tuple(fold.transformed(blocks, shift) for fold in folds)
        mean, scale = _standardisation(_merged(folds), n, n_lags)
        folds = tuple(_standardised(fold, mean, scale) for fold in folds)
        grid = validation_mse(_merged(folds[:-1]), folds[-1], self.relative_alphas)
        relative = float(self.relative_alphas[int(np.argmin(grid))])
        expected = _cross_validated_quality(folds, relative)
        weight, bias, _ = refit_ridge(_merged(folds), relative)  # on standardised inputs
        return LinearPathSolution(
            lags=self.lags,
            weight=(weight * scale[:, None]).reshape(n_lags, n, -1),
            bias=bias - (mean * scale) @ weight,
            relative_alpha=relative,
            expected=expected,
        )

    # -- files --------------------------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write :data:`STATISTICS_FILENAME` into `model_dir` (written under a temporary name and
        renamed: never half a file)."""
        from safetensors.numpy import save_file

        path = Path(model_dir) / STATISTICS_FILENAME
        tensors = {"relative_alphas": np.asarray(self.relative_alphas, dtype=np.float64)}
        upper = np.triu_indices(len(self.lags) * self.n_eeg)
        for k, fold in enumerate(self.folds):
            tensors[f"fold{k}.gram_upper"] = np.ascontiguousarray(fold.gram[upper], dtype=np.float64)  # symmetric
            for name in _SUMS:
                tensors[f"fold{k}.{name}"] = np.ascontiguousarray(getattr(fold, name), dtype=np.float64)
        metadata = {
            "format": STATISTICS_FORMAT,
            "lags": json.dumps(list(self.lags)),
            "fold_counts": json.dumps([fold.count for fold in self.folds]),
            "eeg_channel_names": json.dumps(list(self.eeg_channel_names)),
            "n_meg": str(self.n_meg),
            "sources": json.dumps(list(self.sources)),
        }
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(temporary), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as any file the user writes (not the writer's private mode)
        os.replace(temporary, path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> LinearPathStatistics:
        """Read a statistics file; `StatisticsError` naming it when it is not one."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for malformed files
            raise StatisticsError(f"{path}: not a readable safetensors file ({err})") from None
        if metadata.get("format") != STATISTICS_FORMAT:
            raise StatisticsError(f"{path}: format {metadata.get('format')!r}; expected {STATISTICS_FORMAT!r}")
        try:
            lags = tuple(int(v) for v in json.loads(metadata["lags"]))
            names = tuple(str(v) for v in json.loads(metadata["eeg_channel_names"]))
            n_meg = int(metadata["n_meg"])
            counts = [int(v) for v in json.loads(metadata["fold_counts"])]
            alphas = np.asarray(tensors["relative_alphas"], dtype=np.float64)
            sources = tuple(json.loads(metadata.get("sources", "[]")))
            n_features = len(lags) * len(names)
            upper = np.triu_indices(n_features)
            expected = {"gram_upper": (len(upper[0]),), "cross": (n_features, n_meg), "sum_x": (n_features,),
                        "sum_y": (n_meg,), "sum_y_sq": (n_meg,)}
            folds = []
            for k, count in enumerate(counts):
                sums = {name: np.asarray(tensors[f"fold{k}.{name}"], dtype=np.float64) for name in expected}
                for name, shape in expected.items():
                    if sums[name].shape != shape:
                        raise StatisticsError(f"{path}: fold{k}.{name} has shape {sums[name].shape}; expected {shape}")
                if count < 2:
                    raise StatisticsError(f"{path}: {count} rows in fold {k}")
                gram = np.zeros((n_features, n_features))
                gram[upper] = sums.pop("gram_upper")
                gram = gram + np.triu(gram, 1).T
                folds.append(GramAccumulator(gram, sums["cross"], sums["sum_x"], sums["sum_y"], sums["sum_y_sq"], count))
        except (KeyError, ValueError, TypeError) as err:
            if isinstance(err, StatisticsError):
                raise
            raise StatisticsError(f"{path}: incomplete statistics ({type(err).__name__}: {err})") from None
        if len(folds) < 2:
            raise StatisticsError(f"{path}: {len(folds)} folds; at least 2 needed")
        return cls(lags, tuple(folds), alphas, names, n_meg, sources)

    def check_model(self, fields: Any, path: str | Path = STATISTICS_FILENAME) -> None:
        """`StatisticsError` when these statistics are not of the model of `fields` (its EEG
        channels, its MEG channel count, lags within its skip path)."""
        if tuple(fields.eeg_channel_names) != self.eeg_channel_names:
            raise StatisticsError(f"{path}: computed for other EEG channels than the model's")
        if len(fields.meg_channel_names) != self.n_meg:
            raise StatisticsError(f"{path}: {self.n_meg} MEG channels; the model has {len(fields.meg_channel_names)}")
        if int(getattr(fields, "skip_lags", 0)) <= max(self.lags):
            raise StatisticsError(f"{path}: lags up to {max(self.lags)} samples; the model's skip path has "
                                  f"{getattr(fields, 'skip_lags', 0)} taps")


def load_statistics(model_dir: str | Path, fields: Any = None) -> LinearPathStatistics | None:
    """The statistics of a model directory, or None when it has none (an older model); checked
    against `fields` when given. Raises `StatisticsError` for a file that is there but unusable."""
    path = Path(model_dir) / STATISTICS_FILENAME
    if not path.is_file():
        return None
    statistics = LinearPathStatistics.read(path)
    if fields is not None:
        statistics.check_model(fields, path)
    return statistics


# --------------------------------------------------------------------------------------------
# Computing them
# --------------------------------------------------------------------------------------------
def skip_ridge_lags(skip_lags: int, step_samples: int) -> tuple[int, ...]:
    """The lags of the ridge that initialises a skip path of `skip_lags` taps: ``0, step, …``."""
    return tuple(range(0, int(skip_lags), int(step_samples)))


def ridge_blocks(prepared: Any, max_lag: int) -> tuple[Any, dict[str, int]]:
    """The train rows of prepared recordings as a block source, and each recording's validation
    boundary (the last 20 % of its train part): what the skip path's ridge is fitted on."""
    recordings = [r for r in prepared.recordings if r.parts["train"][1] > r.parts["train"][0]]
    boundaries = {
        r.name: r.parts["train"][1] - int(round(DEFAULT_VALIDATION_FRACTION * (r.parts["train"][1] - r.parts["train"][0])))
        for r in recordings
    }

    def blocks() -> Iterator[RowBlock]:
        for r in recordings:
            start, stop = r.parts["train"]
            yield from continuous_blocks(r.eeg, r.meg, start, stop, max_lag, group=r.name)

    return blocks, boundaries


def statistics_from_prepared(
    prepared: Any, lags: Sequence[int], relative_alphas: Sequence[float] = DEFAULT_RELATIVE_ALPHAS
) -> LinearPathStatistics:
    """The statistics of the skip path's ridge on `prepared` (`brainformer.data.PreparedData`):
    the same rows, lags and penalty grid as `training.init_skip_from_ridge`, in `N_FOLDS`
    stretches (see the class)."""
    lags = tuple(int(lag) for lag in lags)
    blocks, boundaries = ridge_blocks(prepared, max(lags))
    starts = {r.name: r.parts["train"][0] for r in prepared.recordings}
    edges = {  # per recording: where each stretch starts, and the end of the train part
        name: [*np.linspace(starts[name], boundary, N_FOLDS).astype(np.int64)[:-1], boundary]
        for name, boundary in boundaries.items()
    }
    folds: list[GramAccumulator] | None = None
    for block in blocks():
        features = lagged_rows(np.asarray(block.eeg, dtype=np.float64), lags, block.history, block.eeg.shape[0])
        targets = np.asarray(block.meg, dtype=np.float64)
        if folds is None:
            folds = [GramAccumulator.empty(features.shape[1], targets.shape[1]) for _ in range(N_FOLDS)]
        rows = block.first_row + np.arange(targets.shape[0])
        which = np.searchsorted(edges[block.group], rows, side="right") - 1  # stretch of each row
        for k in range(N_FOLDS):
            mask = which == k
            if mask.any():
                folds[k].add(features[mask], targets[mask])
    if folds is None or any(fold.count < 2 for fold in folds):
        raise StatisticsError(f"too few train rows for {N_FOLDS} stretches of statistics")
    fields = prepared.fields
    return LinearPathStatistics(
        lags=lags, folds=tuple(folds),
        relative_alphas=np.asarray(relative_alphas, dtype=np.float64),
        eeg_channel_names=tuple(fields.eeg_channel_names), n_meg=len(fields.meg_channel_names),
        sources=tuple(r.source for r in prepared.recordings),
    )


def write_model_statistics(model_dir: str | Path, data: Sequence[str | Path], settings: Any) -> tuple[Path, float]:
    """Compute and write the statistics of an existing model directory from the recordings and
    the training settings it was trained with (its ``[data]`` split, ``ridge_lag_step_samples``):
    the model's config (channels, filters, scaling) prepares them again, so the rows are the ones
    it was trained on. No retraining, the weights are untouched.

    Returns:
        The file written, and the largest difference between the model's skip path and the one
        the statistics give (≈ 0 for a skip path kept as fitted, ``skip_learning_rate = 0``).

    Raises:
        StatisticsError: a model without a skip path; DataError / PreprocessingError for data
            that do not fit the model.
    """
    from safetensors.numpy import load_file

    from brainformer.data import prepare_recordings
    from brainformer.model_dir import load_fields, resolve_model_dir

    model_dir = resolve_model_dir(model_dir)
    fields = load_fields(model_dir)
    if fields.skip_lags < 1:
        raise StatisticsError(f"{model_dir}: the model has no linear skip path (skip_lags = 0)")
    prepared = prepare_recordings(data, settings, config=fields)
    alphas = settings.training.ridge_alphas or DEFAULT_RELATIVE_ALPHAS
    statistics = statistics_from_prepared(
        prepared, skip_ridge_lags(fields.skip_lags, settings.training.ridge_lag_step_samples), alphas
    )
    weight, bias = statistics.solve().as_conv_skip(fields.skip_lags)
    weights = load_file(str(model_dir / "model.safetensors"))
    difference = max(float(np.abs(weights["linear_skip.weight"] - weight).max()),
                     float(np.abs(weights["linear_skip.bias"] - bias).max()))
    return statistics.save(model_dir), difference


# --------------------------------------------------------------------------------------------
# The served hop's own future (`BrainformerHopLookahead`)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HopLookaheadFit:
    """Per position `j` in the hop (samples before its newest one), the ridge map of what the skip
    path leaves on the inputs `t − past + 1 … t + j`: `weights[j] (n_eeg · (past + j), n_meg)`,
    channel-major (each EEG channel's taps oldest first), `biases (hop, n_meg)`, and the penalty
    chosen for each position (relative to the mean eigenvalue). With a rank, `basis (n_meg, rank)`
    and `weights[j] (n_eeg · (past + j), rank)`: the map is `weights[j] @ basis.T`."""

    past: int
    weights: tuple[np.ndarray, ...]
    biases: np.ndarray
    relative_alphas: np.ndarray
    basis: np.ndarray | None = None


#: The hop lookahead's penalty grid: the skip path's (relative 1e-5 … 10, 0.2 decades apart),
#: extended to 1e3. Its weights are 16 maps of up to 23 taps each: on 18 s of real data every
#: position chose the skip path's largest penalty. Not below 1e-5: on 16 simulated minutes a
#: grid down to 1e-9 gained +0.0004 R² with weights so large that the training's input noise
#: dominated the loss (74 against 0.45).
HOP_LOOKAHEAD_RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-5, 3, 41))


def fit_hop_lookahead(prepared: Any, skip: Any, hop: int, past: int,
                      relative_alphas: Sequence[float] = HOP_LOOKAHEAD_RELATIVE_ALPHAS, rank: int = 0) -> HopLookaheadFit:
    """Fit `BrainformerHopLookahead` on the train rows of `prepared` (`brainformer.data.PreparedData`)
    to the residual of `skip` (the skip path's `RidgeFit`): one ridge per position, its penalty
    chosen on the last 20 % of each recording's train part (as the skip path's) and refitted on
    all of it. A row is used only when its whole future in the hop lies in the train part.

    `rank` > 0 then cuts every map to that rank on one output basis (`_reduced_rank`).

    Raises:
        ValueError: no train rows long enough.
    """
    taps = past + hop - 1
    fitting = validation = None
    for recording in prepared.recordings:
        start, stop = recording.parts["train"]
        stop -= hop - 1  # the last rows' future lies outside the train part
        if stop <= start:
            continue
        boundary = stop - int(round(DEFAULT_VALIDATION_FRACTION * (stop - start)))
        eeg = np.asarray(recording.eeg, dtype=np.float64)
        for first in range(start, stop, 4096):
            last = min(first + 4096, stop)
            features = _hop_rows(eeg, first, last, past, taps)
            residual = np.asarray(recording.meg[first:last], dtype=np.float64) - skip.predict(eeg, first, last)
            if fitting is None:
                fitting = GramAccumulator.empty(features.shape[1], residual.shape[1])
                validation = GramAccumulator.empty(features.shape[1], residual.shape[1])
            split = min(max(boundary - first, 0), last - first)
            fitting.add(features[:split], residual[:split])
            validation.add(features[split:], residual[split:])
    if fitting is None or fitting.count < 2 or validation.count < 2:
        raise ValueError(f"fit_hop_lookahead: no train rows with {hop - 1} samples of future in the train part")
    n_eeg = fitting.gram.shape[0] // taps
    alphas = np.asarray(relative_alphas, dtype=np.float64)
    weights, biases, chosen, sums = [], [], [], []
    for j in range(hop):
        columns = (np.arange(n_eeg)[:, None] * taps + np.arange(past + j)[None, :]).ravel()  # channel-major
        fit_j, val_j = fitting.subset(columns), validation.subset(columns)
        relative = float(alphas[int(np.argmin(validation_mse(fit_j, val_j, alphas)))])
        sums.append(fit_j.merged(val_j))
        weight, bias, _ = refit_ridge(sums[-1], relative)
        weights.append(weight)
        biases.append(bias)
        chosen.append(relative)
    chosen = np.asarray(chosen)
    for edge, name in ((alphas.min(), "smallest"), (alphas.max(), "largest")):
        if alphas.size > 1 and (at_edge := np.flatnonzero(chosen == edge)).size:
            logger.warning("hop lookahead: the %s penalty of the grid (%g) chosen at positions %s", name, edge, at_edge.tolist())
    if rank:
        return _reduced_rank(past, weights, sums, chosen, rank)
    return HopLookaheadFit(past, tuple(weights), np.stack(biases), chosen)


def _reduced_rank(past: int, weights: list[np.ndarray], sums: list[GramAccumulator], chosen: np.ndarray,
                  rank: int) -> HopLookaheadFit:
    """The positions' ridge maps `weights[j] (features, n_meg)` projected on one output basis U
    `(n_meg, rank)`: the `rank` leading eigenvectors of `Σ_j W_jᵀ G_j W_j` (`G_j` the centred Gram
    of position j's rows), which keeps the most of the maps' summed fitted variance, the
    reduced-rank ridge. Biases keep each position's mean: `b_j = ȳ − x̄_j W_j U Uᵀ`."""
    n_meg = weights[0].shape[1]
    if not 1 <= rank <= n_meg:
        raise ValueError(f"fit_hop_lookahead: rank {rank} is not 1 … {n_meg} (the MEG channels)")
    fitted = np.zeros((n_meg, n_meg))
    means = []
    for weight, sums_j in zip(weights, sums):
        mean_x, mean_y = sums_j.sum_x / sums_j.count, sums_j.sum_y / sums_j.count
        fitted += weight.T @ sums_j.centred(mean_x, mean_y)[0] @ weight
        means.append((mean_x, mean_y))
    _, vectors = np.linalg.eigh(fitted)  # ascending
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank])
    low = [weight @ basis for weight in weights]
    biases = np.stack([mean_y - mean_x @ w @ basis.T for w, (mean_x, mean_y) in zip(low, means)])
    return HopLookaheadFit(past, tuple(low), biases, chosen, basis)


def _hop_rows(eeg: np.ndarray, first: int, last: int, past: int, taps: int) -> np.ndarray:
    """`(last − first, n_eeg · taps)`: per row t and EEG channel, `eeg[t − past + 1 … t − past + taps]`
    (zeros before the recording's first sample), channel-major."""
    begin = first - past + 1
    window = eeg[max(begin, 0) : last - past + taps]
    if begin < 0:
        window = np.concatenate([np.zeros((-begin, eeg.shape[1])), window])
    rows = np.lib.stride_tricks.sliding_window_view(window, taps, axis=0)  # (rows, n_eeg, taps)
    return rows.reshape(rows.shape[0], -1)


# --------------------------------------------------------------------------------------------
# Helpers of `solve`
# --------------------------------------------------------------------------------------------
def _standardisation(every: GramAccumulator, n: int, n_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, scale)` per feature: each input's mean and 1/std over all rows (its first lag's
    block: the rows themselves), 0 for a flat input, repeated for every lag (as `fit_ridge_blocks`)."""
    mean = every.sum_x[:n] / every.count
    std = np.sqrt(np.clip(np.diag(every.gram)[:n] / every.count - mean**2, 0, None))
    scale = np.zeros_like(std)
    np.divide(1.0, std, out=scale, where=std > 1e-6 * float(np.median(std)))
    return np.tile(mean, n_lags), np.tile(scale, n_lags)


def _standardised(accumulator: GramAccumulator, mean: np.ndarray, scale: np.ndarray) -> GramAccumulator:
    """The sums of the features ``(f − mean) · scale`` (a diagonal transform, done element-wise)."""
    sum_x = scale * (accumulator.sum_x - accumulator.count * mean)
    gram = accumulator.gram - np.outer(accumulator.sum_x, mean) - np.outer(mean, accumulator.sum_x)
    gram += accumulator.count * np.outer(mean, mean)
    cross = accumulator.cross - np.outer(mean, accumulator.sum_y)
    return GramAccumulator(scale[:, None] * gram * scale[None, :], scale[:, None] * cross, sum_x,
                           accumulator.sum_y.copy(), accumulator.sum_y_sq.copy(), accumulator.count)


def _merged(accumulators: Sequence[GramAccumulator]) -> GramAccumulator:
    merged = accumulators[0]
    for accumulator in accumulators[1:]:
        merged = merged.merged(accumulator)
    return merged


def _cross_validated_quality(folds: Sequence[GramAccumulator], relative_alpha: float) -> ExpectedQuality:
    """`_held_out_quality` of each stretch, fitted on the others; the mean over the stretches."""
    scores = [_held_out_quality(_merged([f for j, f in enumerate(folds) if j != k]), fold, relative_alpha)
              for k, fold in enumerate(folds)]
    return ExpectedQuality(r=float(np.mean([q.r for q in scores])), r2=float(np.mean([q.r2 for q in scores])))


def _held_out_quality(fitting: GramAccumulator, validation: GramAccumulator, relative_alpha: float) -> ExpectedQuality:
    """r and R² per MEG channel on the validation rows of the map fitted on the fitting rows,
    from the sums alone; their means over the channels."""
    weight, _, _ = refit_ridge(fitting, relative_alpha)
    fit_mean_x, fit_mean_y = fitting.sum_x / fitting.count, fitting.sum_y / fitting.count
    # Errors of the prediction (its intercept from the fitting rows).
    gram, cross, y_ss = validation.centred(fit_mean_x, fit_mean_y)
    sse = y_ss - 2 * (weight * cross).sum(axis=0) + ((gram @ weight) * weight).sum(axis=0)
    # Correlations and the variance of the truth, about the validation means.
    gram, cross, y_ss = validation.centred(validation.sum_x / validation.count, validation.sum_y / validation.count)
    covariance = (weight * cross).sum(axis=0)
    variance = ((gram @ weight) * weight).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = covariance / np.sqrt(variance * y_ss)
        r2 = 1.0 - sse / y_ss
    return ExpectedQuality(r=float(np.nanmean(r)), r2=float(np.nanmean(r2)))
