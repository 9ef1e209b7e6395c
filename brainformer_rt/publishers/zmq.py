"""ZeroMQ sink: a PUB socket sending predicted MEG as multipart messages.

Wire format (one message per served window)::

    frame 0  topic     b"meg" (or b"meg/<stream name>" when one daemon serves several streams)
    frame 1  header    UTF-8 JSON object:
                       seq         int, +1 per message of this topic, from 0 (a jump = lost messages)
                       t0, t_last  LSL timestamps (local_clock() seconds) of the first / last sample
                       sfreq       float, samples per second
                       n_samples, n_channels, dtype ("float32"), model, stream
                       channels, channel_types   only in message 0 and every 100th
    frame 2  payload   float32, C order, shape (n_samples, n_channels), physical units (T, T/m)

Sample ``i`` of a message has the timestamp ``t0 + i / sfreq`` (exactly ``t_last`` for the last).

The socket never blocks the serve loop: PUB drops at the high-water mark, ``NOBLOCK`` is set
anyway, and drops are counted. Kernel buffers still queue data for a slow subscriber, so
subscribers must drain with ``NOBLOCK`` and keep the newest message (see ``listener.py``);
``ZMQ_CONFLATE`` must not be used: it does not support multipart messages.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import zmq

from brainformer_rt.publishers import validate_meg_channels

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
CHANNELS_EVERY = 100  # channel names go out in message 0 and every CHANNELS_EVERY-th message
HEADER_KEYS = ("seq", "t0", "t_last", "sfreq", "n_samples", "n_channels", "dtype", "model", "stream")


def is_loopback_address(address: str) -> bool:
    """True for tcp:// addresses on a loopback host, and for ipc:// and inproc:// (machine-local)."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name
        return False


class ZMQPublisher:
    """Publishes ``(n, n_meg)`` float32 predictions on a ZeroMQ PUB socket.

    Args:
        address: where to bind; ``tcp://127.0.0.1:*`` picks a free port (see ``address``
            after construction for the bound endpoint).
        topic: first frame of every message.
        channel_names / channel_types: MEG sensors in payload order; ``mag`` or ``grad``.
        sfreq_hz: the model's rate.
        model_name, stream_name: copied into every header.
        curve_keys_dir: directory of CURVE keys for an encrypted socket (not available yet).
        send_hwm: messages queued per subscriber before PUB drops.
        context: ZeroMQ context (default: the process-wide one).

    Life cycle: construct (binds) → ``publish()`` ... → ``close()``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        topic: bytes = b"meg",
        *,
        channel_names: Sequence[str],
        channel_types: Sequence[str],
        sfreq_hz: float,
        model_name: str = "",
        stream_name: str = "",
        curve_keys_dir: str | Path | None = None,
        send_hwm: int = 100,
        context: zmq.Context | None = None,
    ):
        validate_meg_channels(channel_names, channel_types)
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        if isinstance(topic, str):
            topic = topic.encode()
        self.topic = topic
        self.channel_names = list(channel_names)
        self.channel_types = list(channel_types)
        self.n_channels = len(self.channel_names)
        self.sfreq_hz = float(sfreq_hz)
        self.model_name = model_name
        self.stream_name = stream_name
        self.seq = 0  # seq of the next message
        self.messages_sent = 0
        self.messages_dropped = 0
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)  # close() must not wait for subscribers
            self._socket.setsockopt(zmq.SNDHWM, send_hwm)
            self._configure_security(curve_keys_dir)
            if not is_loopback_address(address):
                logger.warning(
                    "ZeroMQ publisher binds %s, which is reachable from other machines; "
                    "predictions are sent unencrypted", address,
                )
            try:
                self._socket.bind(address)
            except zmq.ZMQError as error:
                raise ValueError(f"cannot bind the ZeroMQ publisher to {address!r}: {error}") from error
        except BaseException:
            self._socket.close(linger=0)
            raise
        # The endpoint actually bound (resolves a wildcard port).
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _configure_security(self, curve_keys_dir: str | Path | None) -> None:
        """Hook for CURVE encryption (server keys from ``curve_keys_dir``), applied before bind."""
        if curve_keys_dir is not None:
            raise NotImplementedError(
                f"CURVE encryption for ZeroMQ (keys in {str(curve_keys_dir)!r}) is not available yet; "
                f"bind to 127.0.0.1 instead"
            )

    def _header(self, n_samples: int, t0: float, t_last: float) -> bytes:
        header = {
            "seq": self.seq, "t0": t0, "t_last": t_last, "sfreq": self.sfreq_hz,
            "n_samples": n_samples, "n_channels": self.n_channels, "dtype": "float32",
            "model": self.model_name, "stream": self.stream_name,
        }
        if self.seq % CHANNELS_EVERY == 0:
            header["channels"] = self.channel_names
            header["channel_types"] = self.channel_types
        return json.dumps(header, separators=(",", ":")).encode()

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> bool:
        """Send ``data (n, n_channels)`` whose samples carry ``timestamps (n,)``.

        Never blocks. Returns False (and counts a drop) when ZeroMQ refused the message.
        ``seq`` advances either way, so subscribers see the loss as a gap.
        """
        n = len(timestamps)
        if data.shape != (n, self.n_channels):
            raise ValueError(f"data must have shape ({n}, {self.n_channels}), got {data.shape}")
        if n == 0:
            return True
        payload = np.ascontiguousarray(data, dtype=np.float32)
        header = self._header(n, float(timestamps[0]), float(timestamps[-1]))
        self.seq += 1
        try:
            # copy=True: small messages are cheaper to copy than to track, and the caller may
            # reuse `data` as soon as this returns.
            self._socket.send_multipart([self.topic, header, payload], flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.messages_dropped += 1
            return False
        self.messages_sent += 1
        return True

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close(linger=0)

    def __enter__(self) -> "ZMQPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_message(frames: Sequence[bytes]) -> tuple[dict, np.ndarray]:
    """``[topic, header, payload]`` → ``(header dict, data (n_samples, n_channels))``.

    ``data`` is a read-only view of the payload frame. Raises ValueError for a malformed message.
    """
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames [topic, header, payload], got {len(frames)}")
    try:
        header = json.loads(bytes(frames[1]))
        shape = (int(header["n_samples"]), int(header["n_channels"]))
        dtype = np.dtype(header["dtype"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"malformed header: {error}") from error
    payload = frames[2]
    expected = shape[0] * shape[1] * dtype.itemsize
    if len(payload) != expected:
        raise ValueError(f"payload has {len(payload)} bytes, header announces {shape} {dtype} = {expected}")
    return header, np.frombuffer(payload, dtype=dtype).reshape(shape)
