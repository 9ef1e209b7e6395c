"""What the filters delay the brain signal by: group and phase delay per frequency, from a config.

A causal band-pass delays what passes through it. A closed loop feels that delay on top of
transport and compute: a model trained on causally filtered MEG (``target_phase = "causal"``)
predicts the MEG as its filters delay it, tens of ms late in band. A model trained on the
zero-phase target (``"zero_phase"``) aims at the band-limited MEG as it is now: by design its
output lags the brain by nothing, and it forecasts through its input filters' delay instead.

- group delay ``-dφ/dω``: how late a narrow-band envelope (a burst of alpha) arrives;
- phase delay ``-φ/ω``: how late the oscillation's own phase is (negative below the pass band of
  a high-pass: its phase leads).

Both come from the filters' frequency response (`scipy.signal.sosfreqz`), designed exactly as the
preprocessing designs them (`design_band`), at the model rate. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.signal

from brainformer.preprocessing.filters import (
    FilterBand,
    design_band,
    input_band,
    is_zero_phase_target,
    target_band,
)

__all__ = ["BANDS_HZ", "DelayAt", "SignalDelay", "band_points", "design_delay", "filter_delay"]

#: The rhythms closed loops feed back most, by name: (low, high) Hz. Their centres are among the
#: frequencies a delay is published at, and the effective delay is measured per band.
BANDS_HZ: dict[str, tuple[float, float]] = {"theta": (4.0, 8.0), "alpha": (8.0, 12.0), "beta": (15.0, 25.0)}

#: Frequency grid step for the unwrapped phase (Hz): fine enough that no step turns by π.
_PHASE_GRID_STEP_HZ = 0.01


def _zeros_at_dc(sos: np.ndarray) -> int:
    """How many zeros of the cascade lie at z = 1 (each high-pass order adds one)."""
    count = 0
    for section in sos:
        roots = np.roots(section[:3]) if np.any(section[:3]) else np.array([])
        count += int(np.sum(np.abs(roots - 1.0) < 1e-4))
    return count


def filter_delay(sos: np.ndarray, sfreq_hz: float, frequencies_hz: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Group and phase delay, in seconds, of the SOS cascade `sos (sections, 6)` at `frequencies_hz`.

    The phase is unwrapped from the lowest frequency up and anchored where it starts: a cascade
    with `k` zeros at DC (a k-th order high-pass) has phase `k·π/2` as the frequency goes to 0,
    so the phase delay is the delay of the oscillation, not of its phase modulo one cycle.
    An empty cascade delays nothing.
    """
    frequencies = np.asarray(frequencies_hz, dtype=np.float64)
    if np.any(frequencies <= 0) or np.any(frequencies >= sfreq_hz / 2):
        raise ValueError(f"frequencies must lie in (0, {sfreq_hz / 2:g}) Hz, got {frequencies.tolist()}")
    if sos.shape[0] == 0:
        return np.zeros_like(frequencies), np.zeros_like(frequencies)
    group = np.zeros_like(frequencies)
    for section in sos:
        _, delay_samples = scipy.signal.group_delay((section[:3], section[3:]), w=frequencies, fs=sfreq_hz)
        group += delay_samples
    grid = np.arange(_PHASE_GRID_STEP_HZ, float(frequencies.max()) + 2 * _PHASE_GRID_STEP_HZ, _PHASE_GRID_STEP_HZ)
    _, response = scipy.signal.sosfreqz(sos, worN=grid, fs=sfreq_hz)
    phase = np.unwrap(np.angle(response))
    expected_start = _zeros_at_dc(sos) * math.pi / 2
    phase += 2 * math.pi * round((expected_start - phase[0]) / (2 * math.pi))
    phase_at = np.interp(frequencies, grid, phase)
    return group / sfreq_hz, -phase_at / (2 * math.pi * frequencies)


@dataclass(frozen=True)
class DelayAt:
    """The delay at one frequency (milliseconds)."""

    label: str
    frequency_hz: float
    group_delay_ms: float
    phase_delay_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "frequency_hz": round(self.frequency_hz, 3),
                "group_delay_ms": round(self.group_delay_ms, 2), "phase_delay_ms": round(self.phase_delay_ms, 2)}


def band_points(band_hz: tuple[float | None, float | None], sfreq_hz: float) -> list[tuple[str, float]]:
    """Where a band's delay is published: its edges, its centre (geometric mean: band-passes are
    symmetric on a log axis) and the centre of each of `BANDS_HZ` that lies inside it."""
    low = band_hz[0] if band_hz[0] is not None else 1.0
    high = band_hz[1] if band_hz[1] is not None else min(100.0, 0.4 * sfreq_hz)
    points = [("band low edge", low), ("band centre", math.sqrt(low * high)), ("band high edge", high)]
    for name, (a, b) in BANDS_HZ.items():
        centre = (a + b) / 2
        if low <= centre <= high:
            points.append((name, centre))
    return points


@dataclass(frozen=True)
class SignalDelay:
    """By design, how late the model's output and its input filters are against the brain.

    Attributes:
        target_phase: the config's ``"causal"`` or ``"zero_phase"``.
        band_hz: the target's band (high-pass, low-pass; None where absent).
        target_filters, input_filters: the filter stages, as the preprocessing names them.
        output: the prediction's designed delay at each point of `band_points` (the causal
            target filters' delay; zero for a zero-phase target).
        input: the EEG filters' delay at the same points: what a zero-phase model forecasts
            through.
    """

    target_phase: str
    band_hz: tuple[float | None, float | None]
    target_filters: tuple[str, ...]
    input_filters: tuple[str, ...]
    output: tuple[DelayAt, ...]
    input: tuple[DelayAt, ...]

    def at(self, label: str) -> DelayAt:
        """The output's delay at the point called `label` (e.g. ``"band centre"``, ``"alpha"``)."""
        for point in self.output:
            if point.label == label:
                return point
        raise KeyError(label)

    @property
    def centre(self) -> DelayAt:
        return self.at("band centre")

    def summary(self) -> str:
        """One line for logs and `check`: what the prediction lags the brain by, in band."""
        centre = self.centre
        if self.target_phase == "zero_phase":
            spread = _spread(self.input)
            return (f"zero-phase target: the prediction aims at the MEG as it is now (filter delay 0 ms); "
                    f"it forecasts through its input filters' group delay of {spread}")
        return (f"causal target: the prediction lags the brain by the filters' group delay, "
                f"{centre.group_delay_ms:.0f} ms at {centre.frequency_hz:.1f} Hz (band centre), {_spread(self.output)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_phase": self.target_phase,
            "band_hz": list(self.band_hz),
            "target_filters": list(self.target_filters),
            "input_filters": list(self.input_filters),
            "output": [point.to_dict() for point in self.output],
            "input": [point.to_dict() for point in self.input],
        }


def _spread(points: Sequence[DelayAt]) -> str:
    delays = [p.group_delay_ms for p in points]
    by_frequency = sorted(points, key=lambda p: p.frequency_hz)
    return (f"{min(delays):.0f}–{max(delays):.0f} ms over {by_frequency[0].frequency_hz:g}–"
            f"{by_frequency[-1].frequency_hz:g} Hz")


def _delays_at(band: FilterBand, sfreq_hz: float, points: list[tuple[str, float]], twice: bool = False) -> tuple[DelayAt, ...]:
    sos, _ = design_band(band, sfreq_hz)
    group_s, phase_s = filter_delay(sos, sfreq_hz, [f for _, f in points])
    return tuple(DelayAt(label, float(f), float(1e3 * g), float(1e3 * p)) for (label, f), g, p in zip(points, group_s, phase_s))


def design_delay(config: Any) -> SignalDelay:
    """The designed delay of a model's output and of its input filters, at the model rate."""
    sfreq_hz = float(config.sfreq_hz)
    target = target_band(config)
    source = input_band(config)
    band_hz = (target.highpass_hz, target.lowpass_hz)
    points = band_points(band_hz, sfreq_hz)
    zero_phase = is_zero_phase_target(config)
    if zero_phase:
        output = tuple(DelayAt(label, float(f), 0.0, 0.0) for label, f in points)
    else:
        output = _delays_at(target, sfreq_hz, points)
    _, target_stages = design_band(target, sfreq_hz)
    _, input_stages = design_band(source, sfreq_hz)
    if zero_phase:
        target_stages = tuple(f"{stage}, forward and backward" for stage in target_stages)
    return SignalDelay(
        target_phase="zero_phase" if zero_phase else "causal", band_hz=band_hz, target_filters=target_stages,
        input_filters=input_stages, output=output, input=_delays_at(source, sfreq_hz, points),
    )
