"""LSL sink: an outlet of type ``MEG`` carrying the predicted MEG in physical units.

Meta-data follow the XDF conventions: ``desc/channels/channel/{label,type,unit}`` per sensor
(units ``T`` for magnetometers, ``T/m`` for gradiometers) and ``desc/acquisition`` naming the
model that produced the stream; ``desc/expected_quality`` says what the input's cap is expected
to give (``r``, ``r2``, ``full_r``, ``full_r2``, ``share``, ``n_electrodes``), when known. Every sample is pushed with its own timestamp: the timestamp of
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
