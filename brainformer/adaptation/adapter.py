"""Apply an `AdaptationPlan` per chunk, with buffers allocated once.

``(n, n_stream_channels)`` float chunk + ``(n,)`` timestamps → ``(m, n_model)`` float32 EEG in
volts at the plan's output rate + ``(m,)`` timestamps, as views of the adapter's buffers::

    adapter = Adapter(plan_adaptation(fields, source, options))
    eeg, timestamps = adapter.apply(chunk, chunk_timestamps)

Per chunk: gather the used stream columns (one ``np.take`` into a buffer), check them for NaN/Inf
(before any state changes), then either scale them per channel (a pure selection) or one matmul
with the plan's matrix (units, selection and interpolation folded in), then the resampler
(`plan.resampler`: linear or soxr QQ) when the rate differs. The only allocation left per chunk
is the array the converter returns when resampling (neither Python API has an output
argument), copied into the adapter's buffer.
"""

from __future__ import annotations

import threading

import numpy as np

from brainformer.adaptation.errors import AdaptationError
from brainformer.adaptation.plan import AdaptationPlan
from brainformer.adaptation.resampling import StreamResampler
from brainformer.preprocessing import NonFiniteInputError

__all__ = ["Adapter"]


class Adapter:
    """Per-chunk application of an `AdaptationPlan` (see the module docstring).

    Args:
        plan: from `plan_adaptation`.
        max_chunk_samples: initial buffer size in input samples (grown once for a bigger chunk).

    State (all of it, reset by `reset`): the resampler's filter state, sample counts and recent
    timestamps; the buffers hold only the newest chunk. `set_plan` swaps in a re-planned matrix
    (another set of bad channels) between two chunks and keeps that state.
    """

    def __init__(self, plan: AdaptationPlan, max_chunk_samples: int = 1024) -> None:
        self._lock = threading.Lock()  # set_plan may come from a planning thread
        self._plan = plan
        self._dtype = plan.stream_dtype
        self._resampler = (
            StreamResampler(
                plan.input_sfreq_hz, plan.output_sfreq_hz, plan.n_model_channels, np.float32, max_chunk_samples,
                method=plan.resampler,
            )
            if plan.resample
            else None
        )
        self._allocate(max(1, int(max_chunk_samples)))
        self._install(plan)
        self._last_n = 0

    # ---------------------------------------------------------------------------------------
    @property
    def plan(self) -> AdaptationPlan:
        return self._plan

    @property
    def n_channels(self) -> int:
        return self._plan.n_model_channels

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self._plan.model.channel_names

    @property
    def output_sfreq_hz(self) -> float:
        return self._plan.output_sfreq_hz

    @property
    def delay_s(self) -> float:
        """Current hold-back of the resampler in seconds (0 without resampling)."""
        return 0.0 if self._resampler is None else self._resampler.delay_s

    def _allocate(self, n: int) -> None:
        plan = self._plan
        self._max_chunk = n
        self._picked = np.empty((n, len(plan.used_columns)), self._dtype)  # (n, n_used)
        self._mapped = np.empty((n, plan.n_model_channels), np.float32)  # (n, n_model) volts
        self._mapped64 = np.empty((n, plan.n_model_channels), np.float64) if self._dtype == np.float64 else None
        self._ts = np.empty(n)

    def _install(self, plan: AdaptationPlan) -> None:
        """The per-chunk constants of a plan, in the stream's dtype (one tuple: swapped atomically)."""
        if plan.is_selection:
            # Each model channel is one used column: order the columns as the model's channels.
            column = np.argmax(plan.matrix != 0, axis=1)
            order = plan.used_columns[column]
            factors = plan.matrix[np.arange(plan.n_model_channels), column].astype(self._dtype)
            constants = (True, np.ascontiguousarray(order), factors)
        else:
            constants = (False, plan.used_columns, np.ascontiguousarray(plan.matrix.T, dtype=self._dtype))
        if len(constants[1]) != self._picked.shape[1]:
            self._picked = np.empty((self._max_chunk, len(constants[1])), self._dtype)
        self._constants = constants

    def set_plan(self, plan: AdaptationPlan) -> None:
        """Use `plan` from the next chunk on: a re-plan of the same source (e.g.
        `AdaptationPlan.with_bad_channels`); the resampler state is kept."""
        old = self._plan
        if (
            plan.source.n_channels != old.source.n_channels
            or plan.source.channel_format != old.source.channel_format
            or plan.n_model_channels != old.n_model_channels
            or plan.input_sfreq_hz != old.input_sfreq_hz
            or plan.output_sfreq_hz != old.output_sfreq_hz
        ):
            raise AdaptationError("set_plan: the new plan is for another stream or model; make a new Adapter")
        with self._lock:
            self._plan = plan
            self._install(plan)

    def reset(self) -> None:
        """Forget the signal (a gap, a reconnect): the resampler starts afresh."""
        if self._resampler is not None:
            self._resampler.reset()

    # ---------------------------------------------------------------------------------------
    def apply(self, chunk: np.ndarray, timestamps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`chunk` `(n, n_stream_channels)` float (+ `(n,)` timestamps) → `(m, n_model)` float32
        volts at `output_sfreq_hz` (+ `(m,)` float64 timestamps of the EEG instants they
        represent): views valid until the next call.

        Raises:
            NonFiniteInputError: a used channel holds NaN/Inf (nothing changed;
                `non_finite_channels` names them).
            ValueError: a chunk of the wrong shape.
        """
        if chunk.dtype != self._dtype:
            chunk = chunk.astype(self._dtype)
        n = chunk.shape[0]
        if chunk.ndim != 2 or chunk.shape[1] != self._plan.n_stream_channels:
            raise ValueError(f"{self._plan.source.name}: expected a chunk (n, {self._plan.n_stream_channels}), got {chunk.shape}")
        with self._lock:
            if n > self._max_chunk:
                self._allocate(max(n, 2 * self._max_chunk))
                self._install(self._plan)
            is_selection, columns, constant = self._constants
            picked = self._picked[:n]
            np.take(chunk, columns, axis=1, out=picked)
            self._last_n = n
            if not np.isfinite(np.add.reduce(picked, axis=None)):
                # Checked before any arithmetic and before the resampler sees the chunk.
                raise NonFiniteInputError(f"{self._plan.source.name}: chunk holds NaN or Inf values")
            mapped = self._mapped[:n]
            if is_selection:
                np.multiply(picked, constant, out=mapped, casting="same_kind" if self._dtype == np.float32 else "unsafe")
            elif self._mapped64 is None:
                np.matmul(picked, constant, out=mapped)
            else:
                mapped64 = self._mapped64[:n]
                np.matmul(picked, constant, out=mapped64)
                np.copyto(mapped, mapped64, casting="unsafe")
            if self._resampler is not None:
                return self._resampler.process(mapped, timestamps)
            if timestamps is None:
                return mapped, None
            ts = self._ts[:n]
            np.copyto(ts, timestamps)
            return mapped, ts

    def non_finite_channels(self) -> list[str]:
        """Stream labels of the used channels holding NaN/Inf in the chunk last given to `apply`."""
        _, columns, _ = self._constants
        bad = ~np.isfinite(self._picked[: self._last_n]).all(axis=0)
        return [self._plan.source.labels[columns[k]] for k in np.flatnonzero(bad)]
