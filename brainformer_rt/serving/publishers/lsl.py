"""LSL sink: an outlet of type ``MEG`` carrying the predicted MEG in physical units.

Meta-data follow the XDF conventions: ``desc/channels/channel/{label,type,unit}`` per sensor
(units ``T`` for magnetometers, ``T/m`` for gradiometers) and ``desc/acquisition`` naming the
model that produced the stream; ``desc/expected_quality`` says what the input's cap is expected
to give (``r``, ``r2``, ``full_r``, ``full_r2``, ``share``, ``n_electrodes``), when known. Every
sample is pushed with its own timestamp: the timestamp of the EEG sample it was predicted for.

What the timestamps do not show, the delay the filters put on the brain signal, is in the
meta-data too (``serving/delay.py`` makes it, docs/latency.md explains it)::

    desc/filters/filter     one per stage, in order: signal (eeg input | meg target), type
                            (highpass | lowpass | notch), design, cutoff_hz, order, [quality],
                            phase (causal | zero)
    desc/delay              target_phase, band_low_hz, band_high_hz, reference, summary, and
      point                 one per frequency: label, frequency_hz, group_delay_ms,
                            phase_delay_ms, input_group_delay_ms, input_phase_delay_ms
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pylsl

from brainformer_rt.serving.publishers import MEG_UNITS, validate_meg_channels


class LSLPublisher:
    """Publishes ``(n, n_meg)`` float32 predictions on an LSL outlet.

    Args:
        name: LSL stream name (e.g. ``brainformer-meg``).
        source_id: stable id, so that inlets reconnect to a restarted daemon.
        channel_names: MEG sensor names, in payload order.
        channel_types: ``mag`` or ``grad`` per channel.
        sfreq_hz: the model's rate (nominal rate of the stream).
        model_name: written to ``desc/acquisition/model``.
        max_buffered_s: seconds liblsl keeps for slow consumers.
        delay: `brainformer_rt.serving.delay.published_delay` of the model, written to
            ``desc/filters`` and ``desc/delay`` (None: neither is written).
        expected_quality: written to ``desc/expected_quality`` (name → number), or None.

    Life cycle: construct (the outlet is visible at once) → ``publish()`` ... → ``close()``.
    """

    def __init__(
        self,
        name: str,
        source_id: str,
        channel_names: Sequence[str],
        channel_types: Sequence[str],
        sfreq_hz: float,
        model_name: str,
        max_buffered_s: int = 30,
        delay: Optional[Mapping[str, Any]] = None,
        expected_quality: dict | None = None,
    ):
        validate_meg_channels(channel_names, channel_types)
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        self.name = name
        self.n_channels = len(channel_names)
        self.sfreq_hz = float(sfreq_hz)
        info = pylsl.StreamInfo(name, "MEG", self.n_channels, self.sfreq_hz, "float32", source_id)
        channels = info.desc().append_child("channels")
        for label, kind in zip(channel_names, channel_types):
            channel = channels.append_child("channel")
            channel.append_child_value("label", label)
            channel.append_child_value("type", kind)
            channel.append_child_value("unit", MEG_UNITS[kind])
        acquisition = info.desc().append_child("acquisition")
        acquisition.append_child_value("manufacturer", "brainformer")
        acquisition.append_child_value("model", model_name)
        acquisition.append_child_value("description", "MEG predicted from live EEG")
        if delay is not None:
            _describe_delay(info.desc(), delay)
        if expected_quality is not None:
            quality = info.desc().append_child("expected_quality")
            for key, value in expected_quality.items():
                quality.append_child_value(key, f"{value:.6g}")
        self._outlet: pylsl.StreamOutlet | None = pylsl.StreamOutlet(info, 0, max_buffered_s)
        self.samples_out = 0
        self.chunks_out = 0

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Push ``data (n, n_channels)`` float32 with one ``timestamps (n,)`` entry per sample."""
        if self._outlet is None:
            raise RuntimeError(f"LSL publisher {self.name!r} is closed")
        n = len(timestamps)
        if data.shape != (n, self.n_channels):
            raise ValueError(f"data must have shape ({n}, {self.n_channels}), got {data.shape}")
        if n == 0:
            return
        # A list/array of timestamps makes liblsl stamp every sample explicitly (no deduction
        # from the nominal rate), so they arrive bit-exact.
        self._outlet.push_chunk(data, timestamps)
        self.samples_out += n
        self.chunks_out += 1

    def have_consumers(self) -> bool:
        return self._outlet is not None and self._outlet.have_consumers()

    def wait_for_consumers(self, timeout_s: float) -> bool:
        return self._outlet is not None and self._outlet.wait_for_consumers(timeout_s)

    def close(self) -> None:
        # Dropping the last reference destroys the outlet; connected inlets see the stream end.
        self._outlet = None

    def __enter__(self) -> "LSLPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _value(value: Any) -> str:
    """An XDF text value: numbers as Python writes them, None as an empty string."""
    return "" if value is None else str(value)


def _describe_delay(desc: pylsl.XMLElement, delay: Mapping[str, Any]) -> None:
    """``desc/filters`` (one ``filter`` per stage) and ``desc/delay`` (one ``point`` per frequency)."""
    filters = desc.append_child("filters")
    for stage in delay["filters"]:
        element = filters.append_child("filter")
        for key, value in stage.items():
            element.append_child_value(key, _value(value))
    element = desc.append_child("delay")
    low_hz, high_hz = delay["band_hz"]
    for key, value in (("target_phase", delay["target_phase"]), ("band_low_hz", low_hz), ("band_high_hz", high_hz),
                       ("reference", delay["reference"]), ("summary", delay["summary"])):
        element.append_child_value(key, _value(value))
    for point in delay["points"]:
        child = element.append_child("point")
        for key, value in point.items():
            child.append_child_value(key, _value(value))


#: Stream type of the feedback outlets (``<lsl-name>-feedback``).
FEEDBACK_STREAM_TYPE = "Feedback"


class LSLFeedbackPublisher:
    """Publishes feedback signals (``brainformer.feedback``) on an LSL outlet of type ``Feedback``:
    one channel per signal, one sample per served window, stamped with the EEG instant it is for.

    Meta-data: per channel ``label`` (the signal's name), ``type`` (``misc``: what MNE and
    mne-lsl know a derived signal as), ``unit``, ``measure`` (envelope, power, phase),
    ``band_hz`` (``"low high"``), ``delay_ms`` (its measured effective delay), ``sensors``
    (comma-separated) and ``weighted``; ``desc/feedback`` names the MEG stream it comes from, the
    estimator and the rate; ``desc/acquisition`` the model.

    Args:
        name: LSL stream name (``<lsl-name>-feedback``).
        source_id: stable id, so that inlets reconnect to a restarted daemon.
        plan: the ``FeedbackPlan`` (signals, estimators, delays).
        sfreq_hz: nominal rate: the model rate divided by the hop.
        model_name: written to ``desc/acquisition/model``.
        meg_stream: the name of the MEG outlet the signals come from.
    """

    def __init__(self, name: str, source_id: str, plan, sfreq_hz: float, model_name: str, meg_stream: str = "",
                 max_buffered_s: int = 30):
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        self.name = name
        self.n_channels = len(plan.signals)
        info = pylsl.StreamInfo(name, FEEDBACK_STREAM_TYPE, self.n_channels, float(sfreq_hz), "float32", source_id)
        channels = info.desc().append_child("channels")
        for signal, delay in zip(plan.signals, plan.delays):
            channel = channels.append_child("channel")
            channel.append_child_value("label", signal.name)
            channel.append_child_value("type", "misc")
            channel.append_child_value("unit", signal.unit)
            channel.append_child_value("measure", signal.measure)
            channel.append_child_value("band_hz", f"{signal.band_hz[0]:g} {signal.band_hz[1]:g}")
            channel.append_child_value("delay_ms", f"{delay.delay_ms:.1f}")
            channel.append_child_value("sensors", ",".join(signal.sensor_names))
            channel.append_child_value("weighted", "true" if signal.weights is not None else "false")
        feedback = info.desc().append_child("feedback")
        feedback.append_child_value("meg_stream", meg_stream)
        feedback.append_child_value("estimators", "; ".join(e.describe() for e in plan.estimators.values()))
        feedback.append_child_value("rate", "one sample per served window, for its newest EEG instant")
        acquisition = info.desc().append_child("acquisition")
        acquisition.append_child_value("manufacturer", "brainformer")
        acquisition.append_child_value("model", model_name)
        acquisition.append_child_value("description", "feedback signals of MEG predicted from live EEG")
        self._outlet: pylsl.StreamOutlet | None = pylsl.StreamOutlet(info, 0, max_buffered_s)
        self.samples_out = 0

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Push ``data (n, n_signals)`` float32 with one ``timestamps (n,)`` entry per sample."""
        if self._outlet is None:
            raise RuntimeError(f"LSL publisher {self.name!r} is closed")
        self._outlet.push_chunk(data, timestamps)
        self.samples_out += len(timestamps)

    def have_consumers(self) -> bool:
        return self._outlet is not None and self._outlet.have_consumers()

    def close(self) -> None:
        self._outlet = None
