"""Sinks for predicted MEG: ``lsl.LSLPublisher`` and ``zmq.ZMQPublisher``.

Both share one contract: ``publish(data (n, n_meg) float32 in T / T/m, timestamps (n,))`` where
each timestamp is the LSL time of the EEG sample the prediction is for, and ``close()``.
The submodules are imported explicitly (``from brainformer_rt.serving.publishers.zmq import ...``) so
that a ZeroMQ-only user does not load liblsl.
"""

from __future__ import annotations

from typing import Sequence

MEG_UNITS = {"mag": "T", "grad": "T/m"}


def validate_meg_channels(channel_names: Sequence[str], channel_types: Sequence[str]) -> None:
    """Raise ValueError unless names and types pair up and every type is ``mag`` or ``grad``."""
    if len(channel_names) == 0:
        raise ValueError("channel_names must not be empty")
    if len(channel_names) != len(channel_types):
        raise ValueError(
            f"channel_names ({len(channel_names)}) and channel_types ({len(channel_types)}) "
            f"must have the same length"
        )
    bad = sorted({t for t in channel_types if t not in MEG_UNITS})
    if bad:
        raise ValueError(f"channel_types must be 'mag' or 'grad', got {bad}")
