"""ZeroMQ sink: a PUB socket sending predicted MEG as multipart messages.

Wire format (one message per served window)::

    frame 0  topic     b"meg" (or b"meg/<stream name>" when one daemon serves several streams)
    frame 1  header    UTF-8 JSON object:
                       seq         int, +1 per message of this topic, from 0 (a jump = lost messages)
                       t0, t_last  LSL timestamps (local_clock() seconds) of the first / last sample
                       sfreq       float, samples per second
                       n_samples, n_channels, dtype ("float32"), model, stream
                       channels, channel_types   only in message 0 and every 100th
                       delay       the same messages: the delay the filters put on the brain
                                   signal (target_phase, band_hz, reference, summary, filters,
                                   points; see serving/delay.py and docs/latency.md)
    frame 2  payload   float32, C order, shape (n_samples, n_channels), physical units (T, T/m)

Sample ``i`` of a message has the timestamp ``t0 + i / sfreq`` (exactly ``t_last`` for the last).

The socket never blocks the serve loop: PUB drops at the high-water mark, ``NOBLOCK`` is set
anyway, and drops are counted. Kernel buffers still queue data for a slow subscriber, so
subscribers must drain with ``NOBLOCK`` and keep the newest message (see ``listener.py``);
``ZMQ_CONFLATE`` must not be used: it does not support multipart messages. PUB keeps one queue
per subscriber and drops for a stalled subscriber only (silently: that subscriber sees a jump
in ``seq``), so a stalled or vanished subscriber costs the others nothing.

Several topics share one socket (one daemon serving several streams): :meth:`ZMQPublisher.add_topic`
returns a :class:`ZMQTopic` sink with its own ``seq``, counters and stream name.

Security
--------
The socket binds where it is told; the default is ``tcp://127.0.0.1:5556``. Binding an address
other machines can reach logs a warning. With ``curve_keys_dir`` the socket is a CURVE server:
traffic is encrypted and only subscribers whose public key is listed may connect. Layout::

    KEYS/server.key_secret    this publisher's key pair: zmq.auth.create_certificates(KEYS, "server")
    KEYS/server.key           its public key: every subscriber needs it (curve_serverkey)
    KEYS/authorized/*.key     public keys of the subscribers allowed in (one per subscriber,
                              made on the subscriber's side with create_certificates(DIR, NAME))

A subscriber sets ``curve_secretkey``/``curve_publickey`` from its own ``NAME.key_secret`` and
``curve_serverkey`` from ``server.key`` before connecting. The authorized keys are read when the
publisher starts. Subscribers without a listed key, or without CURVE, receive nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import zmq

from brainformer_rt.serving.publishers import validate_meg_channels

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


class _TopicState:
    """Per-topic state: the topic, its stream name, its next ``seq`` and its counters."""

    __slots__ = ("topic", "stream_name", "seq", "messages_sent", "messages_dropped")

    def __init__(self, topic: bytes, stream_name: str) -> None:
        self.topic = topic
        self.stream_name = stream_name
        self.seq = 0  # seq of the next message
        self.messages_sent = 0
        self.messages_dropped = 0


class ZMQPublisher:
    """Publishes ``(n, n_meg)`` float32 predictions on a ZeroMQ PUB socket.

    Args:
        address: where to bind; ``tcp://127.0.0.1:*`` picks a free port (see ``address``
            after construction for the bound endpoint).
        topic: first frame of every message published with :meth:`publish`.
        channel_names / channel_types: MEG sensors in payload order; ``mag`` or ``grad``.
        sfreq_hz: the model's rate.
        model_name, stream_name: copied into every header (``stream_name`` for ``topic``).
        delay: `brainformer_rt.serving.delay.published_delay` of the model, sent with the
            channel names (None: not sent).
        curve_keys_dir: directory of CURVE keys (layout in the module docstring): the socket
            encrypts and accepts only the authorized subscribers. Raises ValueError naming the
            file when a key is missing or unreadable.
        send_hwm: messages queued per subscriber before PUB drops.
        context: ZeroMQ context (default: the process-wide one; with CURVE always a context of
            its own, because ZeroMQ allows one authenticator per context).

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
        delay: Optional[Mapping[str, Any]] = None,
    ):
        validate_meg_channels(channel_names, channel_types)
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        if isinstance(topic, str):
            topic = topic.encode()
        self.channel_names = list(channel_names)
        self.channel_types = list(channel_types)
        self.n_channels = len(self.channel_names)
        self.sfreq_hz = float(sfreq_hz)
        self.model_name = model_name
        self.delay = None if delay is None else dict(delay)
        self._default = _TopicState(topic, stream_name)
        self._topics: dict[bytes, _TopicState] = {topic: self._default}
        self._authenticator = None
        self._own_context: zmq.Context | None = None
        self.curve = curve_keys_dir is not None
        keys = None
        if self.curve:
            # Keys are checked before anything is opened, so a bad key directory leaks nothing.
            keys = load_curve_keys(curve_keys_dir)
            self._own_context = context = zmq.Context()
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)  # close() must not wait for subscribers
            self._socket.setsockopt(zmq.SNDHWM, send_hwm)
            if keys is not None:
                self._start_curve(context, keys)
            _warn_if_reachable(address, None if keys is None else keys[3])
            try:
                self._socket.bind(address)
            except zmq.ZMQError as error:
                raise ValueError(f"cannot bind the ZeroMQ publisher to {address!r}: {error}") from error
        except BaseException:
            self.close()
            raise
        # The endpoint actually bound (resolves a wildcard port).
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _start_curve(self, context: zmq.Context, keys: tuple[bytes, bytes, Path, int]) -> None:
        """Encrypt, and accept only the subscribers whose public keys are authorized."""
        from zmq.auth.thread import ThreadAuthenticator

        server_public, server_secret, authorized_dir, _ = keys
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".auth"))
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=str(authorized_dir))
        self._socket.curve_secretkey = server_secret
        self._socket.curve_publickey = server_public
        self._socket.curve_server = True

    # -- the default topic (one stream) -----------------------------------------------------------
    @property
    def topic(self) -> bytes:
        return self._default.topic

    @property
    def stream_name(self) -> str:
        return self._default.stream_name

    @property
    def seq(self) -> int:
        """``seq`` of the next message on the default topic (settable, e.g. to simulate losses)."""
        return self._default.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._default.seq = int(value)

    @property
    def messages_sent(self) -> int:
        """Messages sent, all topics together."""
        return sum(state.messages_sent for state in self._topics.values())

    @property
    def messages_dropped(self) -> int:
        """Messages refused by the socket, all topics together."""
        return sum(state.messages_dropped for state in self._topics.values())

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> bool:
        """Send ``data (n, n_channels)`` whose samples carry ``timestamps (n,)`` on the default topic.

        Never blocks. Returns False (and counts a drop) when ZeroMQ refused the message.
        ``seq`` advances either way, so subscribers see the loss as a gap.
        """
        return self._send(self._default, data, timestamps)

    # -- several topics on one socket -------------------------------------------------------------
    def add_topic(self, topic: bytes | str, stream_name: str) -> "ZMQTopic":
        """A sink publishing on ``topic`` through this socket, with its own ``seq`` from 0 (the
        same topic twice gives the same state)."""
        if isinstance(topic, str):
            topic = topic.encode()
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _TopicState(topic, stream_name)
        return ZMQTopic(self, state)

    def _header(self, state: _TopicState, n_samples: int, t0: float, t_last: float) -> bytes:
        header = {
            "seq": state.seq, "t0": t0, "t_last": t_last, "sfreq": self.sfreq_hz,
            "n_samples": n_samples, "n_channels": self.n_channels, "dtype": "float32",
            "model": self.model_name, "stream": state.stream_name,
        }
        if state.seq % CHANNELS_EVERY == 0:
            header["channels"] = self.channel_names
            header["channel_types"] = self.channel_types
            if self.delay is not None:
                header["delay"] = self.delay
        return json.dumps(header, separators=(",", ":")).encode()

    def _send(self, state: _TopicState, data: np.ndarray, timestamps: np.ndarray) -> bool:
        n = len(timestamps)
        if data.shape != (n, self.n_channels):
            raise ValueError(f"data must have shape ({n}, {self.n_channels}), got {data.shape}")
        if n == 0:
            return True
        payload = np.ascontiguousarray(data, dtype=np.float32)
        header = self._header(state, n, float(timestamps[0]), float(timestamps[-1]))
        state.seq += 1
        try:
            # copy=True: small messages are cheaper to copy than to track, and the caller may
            # reuse `data` as soon as this returns.
            self._socket.send_multipart([state.topic, header, payload], flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            state.messages_dropped += 1
            return False
        state.messages_sent += 1
        return True

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def close(self) -> None:
        """Close the socket (and the authenticator and context it owns); idempotent."""
        if not self._socket.closed:
            self._socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context is not None:
            self._own_context.term()
            self._own_context = None

    def __enter__(self) -> "ZMQPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warn_if_reachable(address: str, n_authorized: int | None) -> None:
    """A warning when ``address`` is reachable from other machines (``n_authorized``: CURVE keys, or None)."""
    if is_loopback_address(address):
        return
    if n_authorized is not None:
        logger.warning("ZeroMQ publisher binds %s, which other machines can reach; CURVE: encrypted, "
                       "%d authorized subscriber key(s)", address, n_authorized,
                       extra={"event": "non_loopback_bind", "address": address, "curve": True})
    else:
        logger.warning("ZeroMQ publisher binds %s, which other machines can reach; predictions are sent "
                       "unencrypted to anyone who connects (use CURVE keys, or bind 127.0.0.1)", address,
                       extra={"event": "non_loopback_bind", "address": address, "curve": False})


class ZMQTopic:
    """One topic of a shared :class:`ZMQPublisher` (the publisher contract: ``publish``, ``close``).

    ``close()`` does nothing: the socket belongs to the publisher, whose owner closes it.
    Only one thread may publish on the shared socket (ZeroMQ sockets are not thread-safe).
    """

    def __init__(self, publisher: ZMQPublisher, state: _TopicState) -> None:
        self.publisher = publisher
        self._state = state

    @property
    def topic(self) -> bytes:
        return self._state.topic

    @property
    def stream_name(self) -> str:
        return self._state.stream_name

    @property
    def seq(self) -> int:
        return self._state.seq

    @property
    def messages_sent(self) -> int:
        return self._state.messages_sent

    @property
    def messages_dropped(self) -> int:
        return self._state.messages_dropped

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> bool:
        """Like :meth:`ZMQPublisher.publish`, on this topic."""
        return self.publisher._send(self._state, data, timestamps)

    def close(self) -> None:
        pass


#: Topic of the feedback signals (one stream; with several streams ``feedback/<stream>``).
FEEDBACK_TOPIC = b"feedback"


class ZMQFeedbackTopic(ZMQTopic):
    """Feedback signals (``brainformer.feedback``) on a topic of a :class:`ZMQPublisher`'s socket.

    Messages are those of the MEG topics (``[topic, header, payload]``; payload float32
    ``(n_samples, n_signals)``, one sample per served window), with ``kind`` = ``"feedback"`` in
    the header and, in message 0 and every ``CHANNELS_EVERY``-th: ``channels`` (the signals'
    names), ``units``, ``measures``, ``bands_hz`` and ``delays_ms`` (each signal's measured
    effective delay). ``close()`` does nothing: the socket belongs to the publisher. Publish from
    the thread that publishes the MEG (ZeroMQ sockets are not thread-safe).
    """

    def __init__(self, publisher: ZMQPublisher, topic: bytes | str, plan, sfreq_hz: float, stream_name: str = ""):
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        super().__init__(publisher, _TopicState(topic.encode() if isinstance(topic, str) else topic, stream_name))
        self.n_channels = len(plan.signals)
        self.sfreq_hz = float(sfreq_hz)
        self._channels = {
            "channels": [signal.name for signal in plan.signals],
            "units": [signal.unit for signal in plan.signals],
            "measures": [signal.measure for signal in plan.signals],
            "bands_hz": [list(signal.band_hz) for signal in plan.signals],
            "delays_ms": [round(delay.delay_ms, 1) for delay in plan.delays],
        }

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> bool:
        """Send ``data (n, n_signals)`` float32 whose samples carry ``timestamps (n,)``; never
        blocks; False (and a counted drop) when ZeroMQ refused it."""
        state = self._state
        n = len(timestamps)
        if data.shape != (n, self.n_channels):
            raise ValueError(f"data must have shape ({n}, {self.n_channels}), got {data.shape}")
        header = {
            "seq": state.seq, "t0": float(timestamps[0]), "t_last": float(timestamps[-1]), "sfreq": self.sfreq_hz,
            "n_samples": n, "n_channels": self.n_channels, "dtype": "float32", "model": self.publisher.model_name,
            "stream": state.stream_name, "kind": "feedback",
        }
        if state.seq % CHANNELS_EVERY == 0:
            header.update(self._channels)
        state.seq += 1
        try:
            self.publisher._socket.send_multipart(
                [state.topic, json.dumps(header, separators=(",", ":")).encode(), np.ascontiguousarray(data, np.float32)],
                flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            state.messages_dropped += 1
            return False
        state.messages_sent += 1
        return True


CURVE_SERVER_KEY = "server.key_secret"
CURVE_AUTHORIZED_DIR = "authorized"


def load_curve_keys(keys_dir: str | Path) -> tuple[bytes, bytes, Path, int]:
    """Check a CURVE key directory (layout in the module docstring).

    Returns ``(server public key, server secret key, authorized directory, number of authorized
    keys)``. Raises ValueError naming the file or directory and what is expected.
    """
    import zmq.auth

    keys = Path(keys_dir).expanduser()
    how = f'create it with zmq.auth.create_certificates("{keys}", "server")'
    if not keys.is_dir():
        raise ValueError(f"zmq_curve_keys: {keys} is not a directory")
    if not zmq.has("curve"):
        raise ValueError("zmq_curve_keys: this libzmq was built without CURVE support")
    secret_file = keys / CURVE_SERVER_KEY
    if not secret_file.is_file():
        raise ValueError(f"zmq_curve_keys: {secret_file} is missing ({how})")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (ValueError, OSError) as error:
        raise ValueError(f"zmq_curve_keys: {secret_file} is not a readable key file: {error}") from None
    if not secret:
        raise ValueError(f"zmq_curve_keys: {secret_file} holds no secret key ({how})")
    if secret_file.stat().st_mode & 0o077:
        logger.warning("%s can be read by other users; restrict it with chmod 600", secret_file,
                       extra={"event": "key_permissions", "file": str(secret_file)})
    authorized = keys / CURVE_AUTHORIZED_DIR
    public_keys = sorted(authorized.glob("*.key")) if authorized.is_dir() else []
    if not public_keys:
        raise ValueError(f"zmq_curve_keys: no subscriber public keys in {authorized}/ (*.key): nobody could "
                         "subscribe; copy each subscriber's NAME.key there")
    for key_file in public_keys:
        try:
            zmq.auth.load_certificate(key_file)
        except (ValueError, OSError) as error:
            raise ValueError(f"zmq_curve_keys: {key_file} is not a readable public key file: {error}") from None
    return public, secret, authorized, len(public_keys)


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
