"""LSL sink: an outlet of type ``MEG`` carrying the predicted MEG in physical units.

Meta-data follow the XDF conventions: ``desc/channels/channel/{label,type,unit}`` per sensor
(units ``T`` for magnetometers, ``T/m`` for gradiometers) and ``desc/acquisition`` naming the
model that produced the stream. Every sample is pushed with its own timestamp: the timestamp of
the EEG sample it was predicted for.
"""

from __future__ import annotations

from typing import Sequence

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
