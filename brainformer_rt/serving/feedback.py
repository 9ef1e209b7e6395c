"""Feedback stage: the envelope, power or phase of predicted MEG sensor groups, for the newest
instant of every served window, on a stream of its own (LSL ``<lsl-name>-feedback``, ZeroMQ topic
``feedback``).

What a signal is, how its estimator (an analytic Wiener FIR per band) is designed and how its
delay is measured: `brainformer.feedback`. This stage only applies the planned estimators, once
per served window, after the window's MEG went out (off the forward's critical path: the MEG
publishers never wait for it).

One step, for a hop of ``(n, n_meg)`` un-scaled predictions, allocates nothing:

```
predictions (n, n_meg) ─ take the used sensors ─► ring (newest samples, used sensors)
  ─► A = taps (2·bands, taps) @ ring[every stride-th of the newest span]   real and imaginary parts
  ─► power = re² + im² ─► mean over each group (one matmul)          envelope = √, power
  ─► weighted sums (one matmul) ─► their power and phase (arctan2) ─► each signal's value
  ─► publishers: one sample (n_signals,), stamped with the newest EEG instant
```

Holes in the predictions the stage sees: samples left out by skipped or stale windows (their
number is known) are bridged with zeros, so the newer samples keep their place in time and the
estimate, built from fewer samples for up to ``history_s``, stays in phase (a hole as long as the
span empties the ring instead); a reset of the stream (a gap, NaN input) or a NaN prediction
(samples of unknown number missing) empties the ring: estimates restart once a full span of
fresh predictions is in, and nothing is published meanwhile.

With several streams the counters that tell of a hole may already count one that comes after
the window being served (the pull threads run ahead): the zeros then go in one window early.

State (all of it): the ring, the step's buffers (made once in ``__init__``), the continuity
marker of the last hop, and the counters ``steps``, ``published``, ``resets``, ``holes_bridged``
and ``samples_bridged``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from brainformer.feedback import FeedbackPlan
from brainformer_rt.serving.logs import DAEMON_LOGGER_NAME
from brainformer_rt.serving.ring_buffer import RingBuffer

logger = logging.getLogger(DAEMON_LOGGER_NAME)

__all__ = ["FeedbackStage"]


class _StrideGroup:
    """The estimators that share a tap stride: one matrix product over one strided view."""

    def __init__(self, stride: int, rows: slice, taps: np.ndarray) -> None:
        self.stride = stride
        self.rows = rows  # this group's rows of the stage's analytic array (2 per estimator)
        self.taps = taps  # (2·estimators, n_taps) float32, oldest tap first
        self.span = (taps.shape[1] - 1) * stride + 1


class FeedbackStage:
    """Applies a `FeedbackPlan` to one served stream's predictions.

    Args:
        plan: the signals, estimators and delays (``brainformer.feedback.plan_feedback``).
        publishers: sinks with ``publish(values (1, n_signals) float32, timestamps (1,))`` and
            ``close()``.
        max_samples: most predictions one hop hands over (the engine's output span).
        continuity: returns ``(segment, samples_left_out, windows_left_out)``, three counters:
            the stream's resets, the predictions left out by skipped or stale windows, and the
            windows left out whose samples were not counted (NaN predictions); see
            ``StreamPipeline.continuity``. None: every hop follows the last.
    """

    def __init__(self, plan: FeedbackPlan, publishers: Sequence[Any], max_samples: int,
                 continuity: Optional[Callable[[], Tuple[int, int, int]]] = None) -> None:
        self.plan = plan
        self.publishers: List[Any] = list(publishers)
        self.continuity = continuity
        signals = plan.signals
        # The sensors any signal uses, in model order: the ring holds only those.
        self.used = np.unique(np.concatenate([s.channels for s in signals])).astype(np.intp)
        column = {int(channel): j for j, channel in enumerate(self.used)}
        n_used = self.used.size
        estimators = list(dict.fromkeys(s.estimator_key for s in signals))
        n_estimators = len(estimators)
        index_of = {key: g for g, key in enumerate(estimators)}
        # Estimators grouped by stride; each group's rows of the analytic array are contiguous.
        self.groups: List[_StrideGroup] = []
        order = sorted(range(n_estimators), key=lambda g: plan.estimators[estimators[g]].stride)
        row_of = {}
        for stride in sorted({plan.estimators[key].stride for key in estimators}):
            members = [g for g in order if plan.estimators[estimators[g]].stride == stride]
            n_taps = max(plan.estimators[estimators[g]].n_taps for g in members)
            taps = np.zeros((2 * len(members), n_taps), dtype=np.float32)
            first = 2 * len(row_of)
            for i, g in enumerate(members):
                h = plan.estimators[estimators[g]].taps[::-1]  # oldest tap first, matching the ring's rows
                taps[2 * i, n_taps - h.size:] = h.real
                taps[2 * i + 1, n_taps - h.size:] = h.imag
                row_of[g] = first // 2 + i
            self.groups.append(_StrideGroup(stride, slice(first, first + 2 * len(members)), taps))
        self.span = max(group.span for group in self.groups)
        # Which signal reads what: group means of sensor power, and components (weighted sums,
        # or the one sensor of a phase), each read through one (·, n_signals) matrix.
        n_signals = len(signals)
        components: List[tuple[int, np.ndarray]] = []  # (estimator row, weights over the used sensors)
        mean_power = np.zeros((n_estimators, n_used, n_signals), dtype=np.float32)
        component_power_of = []
        component_phase_of = []
        for s, signal in enumerate(signals):
            g = row_of[index_of[signal.estimator_key]]
            columns = [column[int(c)] for c in signal.channels]
            if signal.weights is None and signal.measure != "phase":
                mean_power[g, columns, s] = 1.0 / len(columns)
                continue
            weights = np.zeros(n_used, dtype=np.float64)
            weights[columns] = signal.weights if signal.weights is not None else 1.0
            components.append((g, weights))
            (component_phase_of if signal.measure == "phase" else component_power_of).append((len(components) - 1, s))
        n_components = len(components)
        self.mean_power = mean_power.reshape(n_estimators * n_used, n_signals) if mean_power.any() else None
        self.weights = np.zeros((n_used, max(n_components, 1)), dtype=np.float32)
        self.component_power = np.zeros((n_estimators, max(n_components, 1), n_signals), dtype=np.float32)
        self.component_phase = np.zeros_like(self.component_power)
        for v, (g, weights) in enumerate(components):
            self.weights[:, v] = weights
        for v, s in component_power_of:
            self.component_power[components[v][0], v, s] = 1.0
        for v, s in component_phase_of:
            self.component_phase[components[v][0], v, s] = 1.0
        self.has_components = n_components > 0
        self.has_power_components = bool(component_power_of)
        self.has_phase_components = bool(component_phase_of)
        self.component_power = self.component_power.reshape(-1, n_signals)
        self.component_phase = self.component_phase.reshape(-1, n_signals)
        self.envelope = np.array([s.measure == "envelope" for s in signals])
        # Buffers of one step.
        self.ring = RingBuffer(self.span + max_samples, n_used)
        self._staged = np.empty((max_samples, n_used), dtype=np.float32)
        self._analytic = np.empty((2 * n_estimators, n_used), dtype=np.float32)
        self._squared = np.empty_like(self._analytic)
        self._power = np.empty((n_estimators, n_used), dtype=np.float32)
        self._power_flat = self._power.reshape(-1)
        n_comp = self.weights.shape[1]
        self._component = np.empty((2 * n_estimators, n_comp), dtype=np.float32)
        self._component_squared = np.empty_like(self._component)
        self._component_power = np.empty((n_estimators, n_comp), dtype=np.float32)
        self._component_angle = np.empty((n_estimators, n_comp), dtype=np.float32)
        self._partial = np.empty(n_signals, dtype=np.float32)
        self.values = np.zeros((1, n_signals), dtype=np.float32)  # what the publishers get
        self._values = self.values[0]
        self.timestamp = np.zeros(1, dtype=np.float64)
        self._zero_rows = np.zeros((self.span, n_used), dtype=np.float32)  # what a bridged hole holds
        self._zero_times = np.zeros(self.span, dtype=np.float64)
        self._last_continuity: Optional[Tuple[int, int, int]] = None
        self.steps = 0
        self.published = 0
        self.resets = 0
        self.holes_bridged = 0
        self.samples_bridged = 0
        self.last_step_s = 0.0

    @property
    def n_signals(self) -> int:
        return len(self.plan.signals)

    def reset(self) -> None:
        """Forget the predictions seen: the next estimate waits for a full span of new ones."""
        self.ring.clear()
        self.resets += 1

    def step(self, predictions: np.ndarray, timestamps: np.ndarray) -> bool:
        """Take one hop of ``predictions (n, n_meg)`` float32 (un-scaled) with their ``timestamps
        (n,)``; compute and publish the signals for the newest one. Returns True when published
        (False while the ring refills after a start or a hole)."""
        started = time.perf_counter()
        self.steps += 1
        if self.continuity is not None:
            self._follow(self.continuity())
        n = predictions.shape[0]
        staged = self._staged[:n]
        np.take(predictions, self.used, axis=1, out=staged, mode="clip")
        self.ring.write(staged, timestamps)
        if self.ring.available_samples < self.span:
            self.last_step_s = time.perf_counter() - started
            return False
        self.compute()
        self.timestamp[0] = timestamps[-1]
        for publisher in self.publishers:
            publisher.publish(self.values, self.timestamp)
        self.published += 1
        self.last_step_s = time.perf_counter() - started
        return True

    def _follow(self, marker: Tuple[int, int, int]) -> None:
        """Bridge or reset for what was left out since the last hop (module docstring)."""
        last, self._last_continuity = self._last_continuity, marker
        if last is None or marker == last:
            return
        segment, samples_left_out, windows_left_out = marker
        missing = samples_left_out - last[1]
        if segment != last[0] or windows_left_out != last[2] or missing >= self.span:
            self.reset()
        elif missing > 0 and self.ring.available_samples:
            self.ring.write(self._zero_rows[:missing], self._zero_times[:missing])
            self.holes_bridged += 1
            self.samples_bridged += missing

    def compute(self) -> np.ndarray:
        """The signals' values ``(n_signals,)`` float32 for the ring's newest sample (a view of
        ``values``). Needs a full span in the ring."""
        history = self.ring.latest(self.span)[0]  # (span, used) oldest first
        analytic = self._analytic
        for group in self.groups:
            np.matmul(group.taps, history[self.span - group.span :: group.stride], out=analytic[group.rows])
        values = self._values
        if self.mean_power is not None:
            np.multiply(analytic, analytic, out=self._squared)
            np.add(self._squared[0::2], self._squared[1::2], out=self._power)
            np.matmul(self._power_flat, self.mean_power, out=values)
        else:
            values.fill(0.0)
        if self.has_components:
            component = self._component
            np.matmul(analytic, self.weights, out=component)
            if self.has_power_components:
                np.multiply(component, component, out=self._component_squared)
                np.add(self._component_squared[0::2], self._component_squared[1::2], out=self._component_power)
                np.matmul(self._component_power.reshape(-1), self.component_power, out=self._partial)
                np.add(values, self._partial, out=values)
            if self.has_phase_components:
                np.arctan2(component[1::2], component[0::2], out=self._component_angle)
                np.matmul(self._component_angle.reshape(-1), self.component_phase, out=self._partial)
                np.add(values, self._partial, out=values)
        np.sqrt(values, out=values, where=self.envelope)
        return values

    def close(self) -> None:
        for publisher in self.publishers:
            try:
                publisher.close()
            except Exception:  # noqa: BLE001 - the others must still be closed
                logger.exception("closing the feedback publisher %s failed", type(publisher).__name__)
