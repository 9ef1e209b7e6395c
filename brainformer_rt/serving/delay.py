"""The delay as the brain sees it, as the daemon publishes it.

A published sample carries the timestamp of the EEG sample it was predicted for, so what a
timestamp shows is transport and compute: a few milliseconds. A closed loop feels more:

- the filters: a model trained on the causally filtered MEG (``target_phase = "causal"``, the
  bundled default) predicts the MEG as its band-pass delays it, by the filters' group delay (30 ms
  at the default model's band centre, 74 ms at 6 Hz); `brainformer.preprocessing.design_delay`
  gives it per frequency, and a zero-phase target removes it by design;
- the hop: the model runs once per hop, so a hop's older samples wait for its newest,
  ``(hop − 1) / 2`` samples on average;
- transport and compute: the end-to-end latency the daemon measures.

`published_delay` turns the design into what the outputs carry (the LSL stream's ``desc``, the
ZeroMQ header, the stats JSON, Prometheus); `DelayBudget` adds the three up wherever latency is
reported. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["CENTRE", "DelayBudget", "delay_budget", "describe_delay", "filter_stages", "hop_wait_ms",
           "published_delay"]

#: The point whose group delay stands for the filters in the budget.
CENTRE = "band centre"
#: What the published delay is measured against.
REFERENCE = ("the MEG band-passed with zero phase: the brain signal in band as it is now; transport, "
             "compute and the hop wait come on top")


def filter_stages(config: Any) -> List[Dict[str, Any]]:
    """Every filter stage, in order: the EEG input's (causal: the daemon runs them live), then the
    MEG target's (what the model learned to predict: causal, or forward and backward offline).

    Each stage: ``signal`` (``"eeg input"`` | ``"meg target"``), ``type`` (``highpass`` |
    ``lowpass`` | ``notch``), ``design``, ``cutoff_hz``, ``order``, ``quality`` (notches), ``phase``
    (``causal`` | ``zero``). Stages as `brainformer.preprocessing.design_band` designs them at the
    model rate (a notch not below the Nyquist frequency is left out there too).
    """
    from brainformer.preprocessing import input_band, is_zero_phase_target, target_band

    nyquist_hz = float(config.sfreq_hz) / 2
    target_phase = "zero" if is_zero_phase_target(config) else "causal"
    stages: List[Dict[str, Any]] = []
    for signal, band, phase in (("eeg input", input_band(config), "causal"),
                                ("meg target", target_band(config), target_phase)):
        butterworth = {"design": "butterworth", "order": int(band.order)}
        if band.highpass_hz is not None:
            stages.append(_stage(signal, "highpass", band.highpass_hz, phase, **butterworth))
        if band.lowpass_hz is not None:
            stages.append(_stage(signal, "lowpass", band.lowpass_hz, phase, **butterworth))
        for notch_hz in band.notch_hz:
            if 0 < notch_hz < nyquist_hz:
                stages.append(_stage(signal, "notch", notch_hz, phase, design="iir notch", order=2,
                                     quality=float(band.notch_quality)))
    return stages


def _stage(signal: str, kind: str, cutoff_hz: float, phase: str, **design: Any) -> Dict[str, Any]:
    """One filter stage, its keys in the order the meta-data lists them."""
    return {"signal": signal, "type": kind, "design": design.pop("design"), "cutoff_hz": float(cutoff_hz), **design,
            "phase": phase}


def published_delay(config: Any) -> Dict[str, Any]:
    """What every output says about the delay of the model's prediction against the brain.

    ``target_phase``, ``band_hz`` (the target's [high-pass, low-pass]), ``reference`` (what the
    delay is measured against), ``summary`` (one line), ``filters`` (`filter_stages`) and
    ``points``: per frequency (the band's edges and centre, the theta/alpha/beta centres inside
    it) ``label``, ``frequency_hz``, ``group_delay_ms`` and ``phase_delay_ms`` of the prediction,
    and ``input_group_delay_ms`` / ``input_phase_delay_ms`` of the EEG filters (what a zero-phase
    model forecasts through). Raises ValueError (``PreprocessingError`` is one) for a config
    whose filters cannot be designed.
    """
    from brainformer.preprocessing import design_delay

    design = design_delay(config)
    points = [{**output.to_dict(), "input_group_delay_ms": round(source.group_delay_ms, 2),
               "input_phase_delay_ms": round(source.phase_delay_ms, 2)}
              for output, source in zip(design.output, design.input)]
    return {"target_phase": design.target_phase, "band_hz": list(design.band_hz), "reference": REFERENCE,
            "summary": design.summary(), "filters": filter_stages(config), "points": points}


def describe_delay(delay: Mapping[str, Any], hop_samples: int, sfreq_hz: float) -> str:
    """For people (``check``, ``serve`` at start-up): the summary, the delay per frequency and
    what comes on top, on three lines."""
    points = sorted(delay["points"], key=lambda point: point["frequency_hz"])
    per_frequency = ", ".join(f"{p['frequency_hz']:.4g} Hz ({p['label']}) {p['group_delay_ms']:.1f} / "
                              f"{p['phase_delay_ms']:.1f}" for p in points)
    return "\n".join([
        f"delay as the brain sees it: {delay['summary']}",
        f"  group / phase delay of the prediction (ms): {per_frequency}",
        f"  on top: a mean hop wait of {hop_wait_ms(hop_samples, sfreq_hz):.1f} ms (hop {hop_samples} samples), "
        "and transport and compute (the e2e latency)"])


def hop_wait_ms(hop_samples: int, sfreq_hz: float) -> float:
    """Mean wait of a hop's samples for its newest one: ``(hop − 1) / 2`` samples, in ms."""
    return 1e3 * (int(hop_samples) - 1) / 2 / float(sfreq_hz)


@dataclass(frozen=True)
class DelayBudget:
    """How late the brain signal reaches a consumer, on average, in band (milliseconds).

    Attributes:
        filter_ms: the filters' group delay at the band centre (0 for a zero-phase target).
        frequency_hz: the band centre.
        hop_wait_ms: `hop_wait_ms` of the hop served.
        e2e_median_ms: transport and compute, the median end-to-end latency (None: not measured).
    """

    filter_ms: float
    frequency_hz: float
    hop_wait_ms: float
    e2e_median_ms: Optional[float]

    @property
    def total_ms(self) -> Optional[float]:
        if self.e2e_median_ms is None:
            return None
        return self.filter_ms + self.hop_wait_ms + self.e2e_median_ms

    def to_dict(self) -> Dict[str, Any]:
        return {"filter_group_delay_ms": self.filter_ms, "frequency_hz": self.frequency_hz,
                "hop_wait_ms": self.hop_wait_ms, "e2e_median_ms": self.e2e_median_ms, "total_ms": self.total_ms}

    def text(self) -> str:
        """One line: the total, then its parts."""
        parts = (f"filters {self.filter_ms:.1f} ms (group delay at {self.frequency_hz:.1f} Hz) + hop wait "
                 f"{self.hop_wait_ms:.1f} ms")
        if self.total_ms is None:
            return f"{parts} + transport and compute (not measured)"
        return f"{self.total_ms:.1f} ms = {parts} + transport and compute {self.e2e_median_ms:.2f} ms (e2e median)"


def delay_budget(delay: Mapping[str, Any], hop_samples: int, sfreq_hz: float,
                 e2e_median_ms: Optional[float]) -> DelayBudget:
    """The budget from a `published_delay` (as the stats JSON holds it), the hop served and the
    measured median end-to-end latency (None or NaN: not measured)."""
    centre = next(point for point in delay["points"] if point["label"] == CENTRE)
    if e2e_median_ms is not None and not math.isfinite(e2e_median_ms):
        e2e_median_ms = None
    return DelayBudget(filter_ms=float(centre["group_delay_ms"]), frequency_hz=float(centre["frequency_hz"]),
                       hop_wait_ms=hop_wait_ms(hop_samples, sfreq_hz), e2e_median_ms=e2e_median_ms)
