"""`listen`: the reference downstream client for the daemon's LSL or ZeroMQ output.

A subscriber must never read stale data. LSL inlets return the oldest buffered samples first and
ZeroMQ hides a queue in kernel buffers, so each call here takes EVERYTHING that is waiting
(LSL: pull until empty; ZeroMQ: ``recv`` with ``NOBLOCK`` until ``zmq.Again``) and a consumer
acts on the newest. ``ZMQ_CONFLATE`` is not an option: it does not support multipart messages.

Latency of a message = ``local_clock()`` when it was read − timestamp of its newest sample, which
is the timestamp of the EEG sample that sample was predicted from.

Feedback streams (LSL type ``Feedback``, ZeroMQ messages whose header has ``kind`` =
``"feedback"``) are read the same way; their signals' names, units, measures, bands and delays
(from the stream's meta-data or the header) are in ``feedback_channels``.

The command (`brainformer-rt listen`) is in `brainformer_rt.commands.listen`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl
import zmq

from brainformer_rt.serving.inlet import EEGInlet, StreamDescription, find_stream
from brainformer_rt.serving.publishers.lsl import FEEDBACK_STREAM_TYPE
from brainformer_rt.serving.publishers.zmq import decode_message

logger = logging.getLogger(__name__)


@dataclass
class Received:
    """One LSL chunk or one ZeroMQ message.

    ``data (n, channels)`` float32, ``timestamps (n,)`` in this machine's ``local_clock()``,
    ``received_s`` the ``local_clock()`` when it was read, ``header`` the ZeroMQ header (None
    for LSL).
    """

    data: np.ndarray
    timestamps: np.ndarray
    received_s: float
    header: dict | None = None

    @property
    def latency_s(self) -> float:
        return self.received_s - float(self.timestamps[-1])


@dataclass(frozen=True)
class FeedbackChannel:
    """One signal of a feedback stream: its name, unit, measure, band and measured delay."""

    name: str
    unit: str
    measure: str
    band_hz: str
    delay_ms: float | None

    def describe(self) -> str:
        delay = "" if self.delay_ms is None else f", delay {self.delay_ms:g} ms"
        return f"{self.measure} {self.band_hz} Hz, {self.unit}{delay}"


def feedback_channels_from_xml(xml: str) -> list[FeedbackChannel]:
    """The signals of a feedback stream from its full LSL meta-data (``StreamInfo.as_xml()``)."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(xml)
    channels = []
    for channel in root.findall("./desc/channels/channel"):
        delay = (channel.findtext("delay_ms") or "").strip()
        channels.append(FeedbackChannel(
            name=(channel.findtext("label") or "").strip(), unit=(channel.findtext("unit") or "").strip(),
            measure=(channel.findtext("measure") or "").strip(),
            band_hz="–".join((channel.findtext("band_hz") or "").split()),
            delay_ms=float(delay) if delay else None))
    return channels


def feedback_channels_from_header(header: dict) -> list[FeedbackChannel]:
    """The signals of a feedback message's header (those sent in message 0 and every 100th)."""
    names = header.get("channels", [])
    units = header.get("units", [""] * len(names))
    measures = header.get("measures", [""] * len(names))
    bands = header.get("bands_hz", [[]] * len(names))
    delays = header.get("delays_ms", [None] * len(names))
    return [FeedbackChannel(name, unit, measure, "–".join(f"{b:g}" for b in band), delay)
            for name, unit, measure, band, delay in zip(names, units, measures, bands, delays)]


class LSLSubscriber:
    """Reads an LSL stream (found by exact name) and hands out everything that arrived.

    Args:
        name: exact stream name.
        wait_s: how long :meth:`open` waits for the stream.
        max_chunk_samples: pull buffer size.
        settle_s: quiet time that ends one received group (see :meth:`receive_all`).

    Life cycle: ``open()`` → ``receive_all()`` ... → ``close()``.
    """

    def __init__(self, name: str, wait_s: float | None = 10.0, max_chunk_samples: int = 4096,
                 settle_s: float = 0.0005):
        self.name = name
        self.settle_s = settle_s
        self.wait_s = wait_s
        self.max_chunk_samples = max_chunk_samples
        self._inlet: EEGInlet | None = None
        self.description: StreamDescription | None = None
        self.feedback_channels: list[FeedbackChannel] = []

    def open(self) -> StreamDescription:
        self._inlet = EEGInlet(find_stream(self.name, self.wait_s, by=("name",)), self.max_chunk_samples)
        self.description = self._inlet.open()
        if self.description.type == FEEDBACK_STREAM_TYPE:
            self.feedback_channels = feedback_channels_from_xml(self._inlet.full_xml)
        return self.description

    @property
    def channel_names(self) -> list[str]:
        return list(self.description.channel_labels) if self.description else []

    @property
    def reconnects(self) -> int:
        return self._inlet.reconnects if self._inlet else 0

    @property
    def discontinuities(self) -> int:
        """Jumps in the received timestamps (gaps, clock resets)."""
        return self._inlet.discontinuities if self._inlet else 0

    def receive_all(self, timeout_s: float = 0.1) -> list[Received]:
        """Wait up to ``timeout_s`` for data, then take everything that arrived.

        LSL has no message boundaries and liblsl queues a pushed chunk sample by sample, so the
        first pull can catch the front of a chunk whose rest lands microseconds later. Pulling
        on until nothing comes for ``settle_s`` groups one push into one :class:`Received`,
        whose ``received_s`` is when its newest sample was read: otherwise the latency of a
        split chunk would be that of an older sample. Returns at most one item.
        """
        data, timestamps = self._inlet.pull(timeout_s)
        if not len(timestamps):
            return []
        pieces, stamps = [data.copy()], [timestamps.copy()]
        received_s = pylsl.local_clock()
        while True:
            data, timestamps = self._inlet.pull(self.settle_s)
            if not len(timestamps):
                break
            pieces.append(data.copy()), stamps.append(timestamps.copy())
            received_s = pylsl.local_clock()
        return [Received(np.concatenate(pieces), np.concatenate(stamps), received_s)]

    def close(self) -> None:
        if self._inlet is not None:
            self._inlet.close()  # the object stays: its counters are still read after close


class ZMQSubscriber:
    """SUB socket on the daemon's ZeroMQ output; hands out every message waiting.

    Tracks ``seq`` per topic: ``seq_gaps`` counts jumps, ``messages_missed`` the messages
    they skipped (dropped by a full queue, or sent before this subscriber joined mid-stream
    are not counted: counting starts at the first message seen).

    With ``curve_server_key`` (the publisher's ``server.key``) and ``curve_client_key`` (this
    subscriber's ``NAME.key_secret``, whose public half is in the publisher's ``authorized/``)
    the connection is a CURVE client: encrypted, and let in only if the publisher knows the key.

    Life cycle: ``open()`` → ``receive_all()`` ... → ``close()``.
    """

    def __init__(self, address: str, topic: bytes | str = b"", context: zmq.Context | None = None,
                 curve_server_key: str | Path | None = None, curve_client_key: str | Path | None = None):
        self.address = address
        self.topic = topic.encode() if isinstance(topic, str) else topic
        if (curve_server_key is None) != (curve_client_key is None):
            raise ValueError("CURVE needs both the publisher's public key (--curve-server-key server.key) and "
                             "this subscriber's key pair (--curve-client-key NAME.key_secret)")
        self.curve_server_key = curve_server_key
        self.curve_client_key = curve_client_key
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._last_seq: dict[bytes, int] = {}
        self.channel_names: list[str] = []
        self.feedback_channels: list[FeedbackChannel] = []
        self.seq_gaps = 0
        self.messages_missed = 0
        self.malformed = 0

    def _curve_keys(self) -> tuple[bytes, bytes, bytes]:
        """(client public, client secret, server public) from the key files; ValueError names the file."""
        import zmq.auth

        loaded = {}
        for role, path in (("client", self.curve_client_key), ("server", self.curve_server_key)):
            try:
                loaded[role] = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as error:
                raise ValueError(f"CURVE {role} key {str(path)!r} cannot be read as a ZeroMQ certificate: {error}") from None
        client_public, client_secret = loaded["client"]
        if client_secret is None:
            raise ValueError(f"CURVE client key {str(self.curve_client_key)!r} has no secret key: give the "
                             "NAME.key_secret file of this subscriber's key pair")
        return client_public, client_secret, loaded["server"][0]

    def open(self) -> None:
        curve = self._curve_keys() if self.curve_client_key is not None else None
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, self.topic)
        if curve is not None:
            socket.curve_publickey, socket.curve_secretkey, socket.curve_serverkey = curve
        try:
            socket.connect(self.address)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            raise ValueError(f"cannot connect to ZeroMQ address {self.address!r}: {error}") from error
        self._socket = socket

    def receive_all(self, timeout_s: float = 0.1) -> list[Received]:
        """Wait up to ``timeout_s`` for a message, then drain with NOBLOCK, oldest first."""
        received = []
        if not self._socket.poll(int(timeout_s * 1000)):
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            received_s = pylsl.local_clock()
            try:
                header, data = decode_message(frames)
            except ValueError as error:
                self.malformed += 1
                logger.warning("skipping a malformed message on topic %r: %s", bytes(frames[0]), error)
                continue
            self._track_seq(bytes(frames[0]), header)
            n = len(data)
            # Sample i is at t0 + i / sfreq; the last one is exactly t_last.
            timestamps = header["t0"] + np.arange(n) / header["sfreq"]
            timestamps[-1] = header["t_last"]
            received.append(Received(data, timestamps, received_s, header))

    def _track_seq(self, topic: bytes, header: dict) -> None:
        seq = header["seq"]
        last = self._last_seq.get(topic)
        if last is not None and seq != last + 1:
            self.seq_gaps += 1
            self.messages_missed += max(seq - last - 1, 0)
        self._last_seq[topic] = seq
        if "channels" in header:
            self.channel_names = list(header["channels"])
            if header.get("kind") == "feedback":
                self.feedback_channels = feedback_channels_from_header(header)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


class ListenStats:
    """Counts and latencies of everything received; the newest message for display."""

    def __init__(self):
        self.started_s = pylsl.local_clock()
        self.messages = 0
        self.samples = 0
        self.latencies_s: list[float] = []
        self.newest: Received | None = None

    def add(self, received: list[Received]) -> None:
        for item in received:
            self.messages += 1
            self.samples += len(item.timestamps)
            self.latencies_s.append(item.latency_s)
        if received:
            self.newest = received[-1]

    def latency_ms(self) -> dict:
        if not self.latencies_s:
            return {"n": 0, "median": None, "p90": None, "p99": None, "max": None, "mean": None}
        latencies = np.asarray(self.latencies_s) * 1e3
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        return {"n": len(latencies), "median": float(p50), "p90": float(p90), "p99": float(p99),
                "max": float(latencies.max()), "mean": float(latencies.mean())}

    def summary(self, source: str, address: str, subscriber) -> dict:
        elapsed_s = max(pylsl.local_clock() - self.started_s, 1e-9)
        summary = {
            "source": source,
            "address": address,
            "duration_s": elapsed_s,
            "messages": self.messages,
            "samples": self.samples,
            "message_rate_hz": self.messages / elapsed_s,
            "sample_rate_hz": self.samples / elapsed_s,
            "n_channels": int(self.newest.data.shape[1]) if self.newest is not None else None,
            "latency_ms": self.latency_ms(),
        }
        if isinstance(subscriber, ZMQSubscriber):
            summary.update(seq_gaps=subscriber.seq_gaps, messages_missed=subscriber.messages_missed,
                           malformed=subscriber.malformed)
        else:
            summary.update(reconnects=subscriber.reconnects)
        return summary
