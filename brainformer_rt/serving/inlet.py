"""LSL source: find an EEG stream, open it, pull everything available into preallocated buffers.

Design notes (measured facts in the project's platform notes):
- Streams are found by one resolver (:class:`StreamResolver`, blocking: :func:`find_stream`):
  by name first, then by type, with ``resolve_byprop`` and waits of at least one second: with
  machine-scope discovery only the newest outlet answers a query at once; older ones later.
- ``pull_chunk(timeout, dest_obj=buffer, min_samples=1)`` blocks only until the first sample
  arrives and then returns everything already there. Without ``min_samples=1`` liblsl waits
  for ``max_samples`` or the timeout, which adds a chunk of latency.
- Inlets hand out the OLDEST buffered data first, so the caller must pull everything each time
  and serve only the newest window.
- Timestamps are moved into this machine's clock with ``time_correction()`` for streams from
  another host. Its first call is slow, so it happens in :meth:`EEGInlet.open`; later calls
  return liblsl's background estimate at once and are made at most every few seconds.
- With ``recover=True`` liblsl silently reconnects to a restarted outlet with the same
  ``source_id`` (about a second after it is back). Two traces are left, counted separately here:
  a jump in the timestamps (``discontinuities``, which lost data and clock jumps cause too) and
  liblsl's "clock may have been reset" flag (``was_clock_reset()``), which it raises when it
  re-established the connection — but only once a time-offset estimate exists. The inlet
  therefore starts liblsl's background offset estimation at :meth:`EEGInlet.open` (a
  non-blocking ``time_correction(0)``) and again after every reconnect; a reconnect is counted
  (``reconnects``) when a discontinuity comes with that flag. liblsl needs a few seconds after a
  reconnect to re-estimate the offset, so a second restart within that time is seen as a
  discontinuity only. When the estimate is in, the inlet says so (``reconnect_detection_armed``,
  logged as the event of that name).

Importing this module imports pylsl: point liblsl at the loopback configuration first
(:func:`brainformer_rt.serving.lsl_config.use_loopback_config`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable
from dataclasses import dataclass

import numpy as np
import pylsl
from pylsl.lib import fmt2string
from pylsl.util import LostError, TimeoutError as LSLTimeoutError

from brainformer_rt.serving.timestamps import timestamp_jumps

logger = logging.getLogger(__name__)

# liblsl answers a resolve query in waves; shorter waits miss outlets shadowed by newer ones.
MIN_RESOLVE_WAIT_S = 1.0
# time_correction() is refreshed at most this often; in between the last offset is reused.
CLOCK_REFRESH_INTERVAL_S = 5.0
# Until liblsl's clock-offset estimate exists (reconnects cannot be told yet), pulls check for it this often.
RECONNECT_ARM_CHECK_INTERVAL_S = 0.1
FLOAT_FORMATS = ("float32", "double64")


class StreamNotFoundError(LookupError):
    """No LSL stream with the requested name or type appeared in time (``key``: the one missing)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UnsupportedStreamError(ValueError):
    """The stream cannot be read as EEG (e.g. a string or integer channel format)."""


class StreamLostError(RuntimeError):
    """The outlet went away and the inlet was opened with ``recover=False``."""


@dataclass(frozen=True)
class StreamDescription:
    """What a stream says about itself.

    ``channel_labels``/``channel_types``/``channel_units`` come from the XDF meta-data
    ``desc/channels/channel/{label,type,unit}``; they have one entry per channel, ``""`` where
    the stream does not give one. ``sfreq_hz`` is 0.0 for irregular streams. ``channel_format``
    is liblsl's name (``float32``, ``double64``, ``string``, ``int32``, ...).
    """

    name: str
    type: str
    source_id: str
    channel_labels: tuple[str, ...]
    channel_types: tuple[str, ...]
    channel_units: tuple[str, ...]
    sfreq_hz: float
    channel_format: str
    n_channels: int
    hostname: str

    @property
    def is_float(self) -> bool:
        """True for the formats EEG can be read from (float32, double64)."""
        return self.channel_format in FLOAT_FORMATS

    @property
    def has_labels(self) -> bool:
        """True when every channel has a label."""
        return all(self.channel_labels)

    @classmethod
    def from_info(cls, info: pylsl.StreamInfo) -> "StreamDescription":
        """Build from a StreamInfo. Resolved infos have an empty ``desc``: pass the full info
        from an opened inlet (``StreamInlet.info()``) to get the channel meta-data."""
        n_channels = info.channel_count()
        labels, types, units = _channel_metadata(info, n_channels)
        return cls(
            name=info.name(),
            type=info.type(),
            source_id=info.source_id(),
            channel_labels=labels,
            channel_types=types,
            channel_units=units,
            sfreq_hz=float(info.nominal_srate()),
            channel_format=fmt2string[info.channel_format()],
            n_channels=n_channels,
            hostname=info.hostname(),
        )


def _channel_metadata(info: pylsl.StreamInfo, n_channels: int) -> tuple[tuple[str, ...], ...]:
    """(labels, types, units) from desc/channels/channel, padded with "" to ``n_channels``."""
    fields = {"label": [], "type": [], "unit": []}
    channel = info.desc().child("channels").child("channel")
    while not channel.empty() and len(fields["label"]) < n_channels:
        for key, values in fields.items():
            values.append(channel.child_value(key).strip())
        channel = channel.next_sibling("channel")
    return tuple(tuple(values + [""] * (n_channels - len(values))) for values in fields.values())


def check_query_value(value: str) -> None:
    """Raises ValueError for a stream name or type liblsl cannot look up."""
    # liblsl builds an XPath predicate name='value'; a quote would break it.
    if not value or "'" in value:
        raise ValueError(f"stream {value!r}: a stream name or type must be non-empty and must not contain a quote (')")


class StreamResolver:
    """Finds the stream for one name-or-type in the background: by name first, then by type.

    The lookups run in a daemon thread, so :meth:`poll` never blocks and a stop signal is
    answered at once. They are blocking ``resolve_byprop`` calls with 1 s waits rather than
    liblsl's continuous resolvers: with machine-scope discovery only the newest outlet answers a
    query at once and older ones later, and continuous resolvers looking for several streams
    together missed most of them. A match by a later property of ``by`` is accepted only after
    a further round of the earlier ones found nothing, so a late-answering name match wins.

    Args:
        name_or_type: the value to match exactly (see :func:`check_query_value`).
        by: properties to match, in order of preference.
    """

    def __init__(self, name_or_type: str, by: tuple[str, ...] = ("name", "type")) -> None:
        check_query_value(name_or_type)
        self.key = name_or_type
        self.by = tuple(by)
        self._found: tuple[str, list] | None = None  # (property, [pylsl.StreamInfo, ...])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"resolve-{name_or_type}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fallback: tuple[int, str, list] | None = None  # (rank, property, infos): a less preferred match
        while not self._stop.is_set():
            for rank, prop in enumerate(self.by):
                if fallback is not None and rank >= fallback[0]:
                    self._found = fallback[1:]  # a whole round of preferred lookups found nothing
                    return
                found = pylsl.resolve_byprop(prop, self.key, 1, MIN_RESOLVE_WAIT_S)
                if found and rank == 0:
                    self._found = (prop, found)
                    return
                if found:
                    fallback = (rank, prop, found)
                    break
                if self._stop.is_set():
                    return

    def poll(self) -> pylsl.StreamInfo | None:
        """The resolved (partial) ``StreamInfo``, or None while nothing suitable is visible."""
        if self._found is None:
            return None
        prop, found = self._found
        if len({info.source_id() for info in found}) > 1:
            logger.warning("%d LSL streams have %s %r; using the one with source_id %r", len(found), prop, self.key,
                           found[0].source_id(), extra={"stream": self.key})
        return found[0]

    def close(self) -> None:
        self._stop.set()  # the thread ends after its current lookup (at most MIN_RESOLVE_WAIT_S)


def wait_for_streams(
    resolvers: dict[str, StreamResolver],
    wait_s: float | None,
    on_found: Callable[[str, pylsl.StreamInfo], None] | None = None,
    on_waiting: Callable[[list[str], float], None] | None = None,
    reminder_interval_s: float = 10.0,
    started_s: float | None = None,
) -> dict[str, pylsl.StreamInfo]:
    """Poll ``resolvers`` until each found its stream; ``{key: StreamInfo}``.

    Waits in short sleeps, so a signal handler that raises ends the wait at once.
    ``on_found(key, info)`` is called as each stream is found, ``on_waiting(missing keys,
    seconds waited)`` every ``reminder_interval_s``. ``started_s`` (``time.monotonic()``): when
    the resolvers were started (default: now). Raises :class:`StreamNotFoundError` naming the
    first missing key after ``wait_s`` seconds (``None``: wait forever).
    """
    started_s = time.monotonic() if started_s is None else started_s
    next_reminder = started_s + reminder_interval_s
    infos: dict[str, pylsl.StreamInfo] = {}
    while True:
        for key, resolver in resolvers.items():
            if key not in infos:
                info = resolver.poll()
                if info is not None:
                    infos[key] = info
                    if on_found is not None:
                        on_found(key, info)
        missing = [key for key in resolvers if key not in infos]
        if not missing:
            return infos
        now = time.monotonic()
        if wait_s is not None and now - started_s > wait_s:
            what = " or ".join(resolvers[missing[0]].by)
            raise StreamNotFoundError(
                f"no LSL stream with {what} {missing[0]!r} appeared within {wait_s:g} s "
                f"(list the visible streams with `brainformer-rt streams`)", missing[0])
        if now >= next_reminder:
            next_reminder = now + reminder_interval_s
            if on_waiting is not None:
                on_waiting(missing, now - started_s)
        time.sleep(0.05)


def find_stream(name_or_type: str, wait_s: float | None = 10.0, by: tuple[str, ...] = ("name", "type")) -> pylsl.StreamInfo:
    """Find the stream whose name (first) or type (second) is ``name_or_type``, blocking.

    Args:
        name_or_type: stream name or type to match exactly.
        wait_s: give up after this many seconds (``None``: wait forever).
        by: properties to match, in order of preference.

    Returns the resolved (partial) StreamInfo. Raises :class:`StreamNotFoundError` after
    ``wait_s`` seconds without a match.
    """
    resolver = StreamResolver(name_or_type, by)
    announced = []

    def announce(missing: list[str], waited_s: float) -> None:
        if not announced:  # once: the caller asked for one stream and knows how long it waits
            announced.append(True)
            limit = "" if wait_s is None else f", up to {wait_s:g} s"
            logger.info("waiting for an LSL stream with %s %r%s ...", " or ".join(by), name_or_type, limit)

    try:
        return wait_for_streams({name_or_type: resolver}, wait_s, on_waiting=announce,
                                reminder_interval_s=len(by) * MIN_RESOLVE_WAIT_S)[name_or_type]
    finally:
        resolver.close()


def list_streams(timeout_s: float = 1.5) -> list[StreamDescription]:
    """Descriptions (without channel meta-data) of every visible stream, sorted by name."""
    infos = pylsl.resolve_streams(max(timeout_s, MIN_RESOLVE_WAIT_S))
    return sorted((StreamDescription.from_info(info) for info in infos), key=lambda d: (d.name, d.source_id))


class EEGInlet:
    """Reads one LSL stream into a preallocated buffer.

    Args:
        info: a resolved StreamInfo (see :func:`find_stream`).
        max_chunk_samples: most samples one :meth:`pull` returns (the buffer size). When a pull
            returns exactly this many, more may be waiting: pull again with ``timeout_s=0``.
        recover: let liblsl reconnect silently to a restarted outlet with the same source_id.
            When False, a lost outlet raises :class:`StreamLostError`.
        gap_threshold_s: a jump between consecutive timestamps larger than this (or any step
            backwards by more than half a sample period) is counted as a discontinuity (lost
            data, a clock jump or a reconnect). Default: 5 sample periods.
        max_buffer_s: seconds of data liblsl keeps for this inlet before dropping the oldest.
        correct_clock: add liblsl's ``time_correction()`` offset to the timestamps. ``None``
            (default): only for streams from another host; on this host both ends read the same
            clock, the true offset is 0 and the estimate would only add noise (and
            break bit-exact timestamp round trips).

    Life cycle: ``open()`` → ``pull()`` ... → ``close()``.
    """

    def __init__(
        self,
        info: pylsl.StreamInfo,
        max_chunk_samples: int = 4096,
        recover: bool = True,
        gap_threshold_s: float | None = None,
        max_buffer_s: int = 30,
        correct_clock: bool | None = None,
    ):
        if max_chunk_samples < 1:
            raise ValueError(f"max_chunk_samples must be >= 1, got {max_chunk_samples}")
        self.info = info
        self.max_chunk_samples = int(max_chunk_samples)
        self.recover = recover
        self.max_buffer_s = int(max_buffer_s)
        self.correct_clock = correct_clock  # resolved to a bool by open()
        self.description: StreamDescription | None = None  # full meta-data, after open()
        self.full_xml: str | None = None  # the stream's whole meta-data as XML, after open()
        self._inlet: pylsl.StreamInlet | None = None
        self._data: np.ndarray | None = None  # (max_chunk_samples, n_channels), stream dtype
        self._timestamps: np.ndarray | None = None  # (max_chunk_samples,) float64, local clock
        sfreq_hz = info.nominal_srate()
        self._period_s = 1.0 / sfreq_hz if sfreq_hz > 0 else 0.0
        if gap_threshold_s is None:
            gap_threshold_s = 5 * self._period_s if self._period_s else float("inf")
        self.gap_threshold_s = gap_threshold_s
        self._last_timestamp: float | None = None  # newest timestamp seen (source clock)
        self._steps = np.empty(0, dtype=np.float64)  # timestamp steps of one pull (reused)
        self._next_clock_refresh_s = 0.0
        # Counters.
        self.samples_in = 0
        self.chunks = 0
        self.discontinuities = 0  # jumps in the timestamps (lost data, clock jump or reconnect)
        self.reconnects = 0  # connections liblsl re-established to a restarted outlet
        self.last_gap_s = 0.0
        self.clock_offset_s = 0.0  # added to source timestamps to get local_clock() time
        # liblsl's clock-offset estimate exists, so a restart of the source will count as a reconnect.
        self.reconnect_detection_armed = False
        self._next_arm_check_s = 0.0

    @classmethod
    def from_stream(cls, name_or_type: str, wait_s: float | None = 10.0, **kwargs) -> "EEGInlet":
        """Find the stream by name (then type), open it and return the open inlet."""
        inlet = cls(find_stream(name_or_type, wait_s), **kwargs)
        inlet.open()
        return inlet

    @property
    def is_open(self) -> bool:
        return self._inlet is not None

    def open(self, timeout_s: float = 10.0) -> StreamDescription:
        """Connect, read the full meta-data and measure the clock offset.

        Raises :class:`UnsupportedStreamError` for non-float streams and
        :class:`StreamNotFoundError` when the outlet does not answer within ``timeout_s``.
        """
        if self._inlet is not None:
            return self.description
        inlet = pylsl.StreamInlet(self.info, max_buflen=self.max_buffer_s, recover=self.recover)
        try:
            full_info = inlet.info(timeout_s)
            description = StreamDescription.from_info(full_info)
            if not description.is_float:
                raise UnsupportedStreamError(
                    f"LSL stream {description.name!r} has channel format {description.channel_format!r}; "
                    f"EEG must be float32 or double64"
                )
            inlet.open_stream(timeout_s)
        except LSLTimeoutError as error:
            raise StreamNotFoundError(f"LSL stream {self.info.name()!r} did not answer within {timeout_s:g} s") from error
        self.description = description
        # The whole meta-data (units, positions, …) for the adaptation plan, read once here.
        self.full_xml = full_info.as_xml()
        self._inlet = inlet
        if self.correct_clock is None:
            self.correct_clock = description.hostname != socket.gethostname()
        if self.correct_clock:
            self._refresh_clock_offset(timeout_s)  # the slow first call, off the hot path
        self._arm_reconnect_detection()
        dtype = np.float32 if self.description.channel_format == "float32" else np.float64
        self._data = np.zeros((self.max_chunk_samples, self.description.n_channels), dtype=dtype)
        self._timestamps = np.zeros(self.max_chunk_samples, dtype=np.float64)
        self._steps = np.zeros(self.max_chunk_samples, dtype=np.float64)
        logger.info(
            "opened LSL stream %r (type %r, %d channels, %g Hz, %s, source_id %r, clock offset %.3f ms)",
            self.description.name, self.description.type, self.description.n_channels,
            self.description.sfreq_hz, self.description.channel_format, self.description.source_id,
            self.clock_offset_s * 1e3,
        )
        return self.description

    def _arm_reconnect_detection(self) -> None:
        """Start liblsl's background time-offset estimation without waiting for it: liblsl flags
        a reconnect (``was_clock_reset``) only while an estimate exists."""
        self.reconnect_detection_armed = False
        self._check_reconnect_detection()

    def _check_reconnect_detection(self) -> None:
        """Has liblsl's offset estimate arrived? (A non-blocking ``time_correction``, which also
        starts the estimation.) Logged once it has: from then on a restart of the source is
        counted as a reconnect."""
        try:
            self._inlet.time_correction(0.0)
        except LSLTimeoutError:  # expected at first: the estimate arrives in the background
            self._next_arm_check_s = time.monotonic() + RECONNECT_ARM_CHECK_INTERVAL_S
            return
        self.reconnect_detection_armed = True
        logger.info("LSL stream %r: liblsl's clock-offset estimate is in; a restart of the source will be "
                    "recognised as a reconnect", self.description.name,
                    extra={"event": "reconnect_detection_armed", "stream": self.description.name})

    def _refresh_clock_offset(self, timeout_s: float) -> None:
        try:
            self.clock_offset_s = self._inlet.time_correction(timeout_s)
        except LSLTimeoutError:
            # Keep the previous offset: a late estimate is better than none.
            logger.debug("time_correction() timed out; keeping offset %.6f s", self.clock_offset_s)
        self._next_clock_refresh_s = time.monotonic() + CLOCK_REFRESH_INTERVAL_S

    def pull(self, timeout_s: float = 0.0, min_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Wait up to ``timeout_s`` for ``min_samples`` samples, then take everything available.

        The daemon passes the samples its next window still needs: it then wakes once per hop
        instead of once per network packet (liblsl delivers a pushed chunk in pieces), and
        preprocesses the hop in one call. On timeout whatever arrived is returned.

        Returns ``(data (n, channels), timestamps (n,))``, oldest first, with timestamps in this
        machine's ``local_clock()``; ``n`` is 0 when nothing came, at most
        ``max_chunk_samples``. Both are views of the inlet's buffers, valid until the next pull.
        """
        if self._inlet is None:
            raise RuntimeError("EEGInlet.pull() before open()")
        if self.correct_clock and time.monotonic() >= self._next_clock_refresh_s:
            # liblsl's background estimate: cheap, and only every few seconds.
            self._refresh_clock_offset(0.0)
        if not self.reconnect_detection_armed and time.monotonic() >= self._next_arm_check_s:
            self._check_reconnect_detection()
        try:
            _, source_timestamps = self._inlet.pull_chunk(
                timeout=timeout_s, max_samples=self.max_chunk_samples, dest_obj=self._data,
                min_samples=max(1, min(int(min_samples), self.max_chunk_samples)), as_numpy=True,
            )
        except LostError as error:
            raise StreamLostError(f"LSL stream {self.description.name!r} was lost") from error
        n = len(source_timestamps)
        if n == 0:
            return self._data[:0], self._timestamps[:0]
        self._count_discontinuities(source_timestamps)
        self.samples_in += n
        self.chunks += 1
        timestamps = self._timestamps[:n]
        np.add(source_timestamps, self.clock_offset_s, out=timestamps)
        return self._data[:n], timestamps

    def samples_available(self) -> int:
        """Samples liblsl holds for this inlet now (one cheap call, no wait)."""
        return self._inlet.samples_available()

    def spin_until_available(self, min_samples: int, timeout_s: float) -> bool:
        """Busy-wait (no sleep) until liblsl holds ``min_samples`` samples for this inlet, or
        ``timeout_s`` passed; True when they are there. Each check is one liblsl call that
        releases Python's GIL, so other threads still run."""
        if self._inlet is None:
            raise RuntimeError("EEGInlet.spin_until_available() before open()")
        available = self._inlet.samples_available
        wanted = max(1, min(int(min_samples), self.max_chunk_samples))
        deadline = time.perf_counter() + timeout_s
        while available() < wanted:
            if time.perf_counter() >= deadline:
                return False
        return True

    def _count_discontinuities(self, source_timestamps: np.ndarray) -> None:
        """Count jumps (forward beyond the threshold, or backwards) including the step from the
        previous chunk, and the reconnects among them (liblsl's clock-reset flag)."""
        previous = self._last_timestamp
        self._last_timestamp = float(source_timestamps[-1])
        if not self._period_s:
            return
        jumps = timestamp_jumps(source_timestamps, previous, self._steps, self.gap_threshold_s, self._period_s)
        steps = self._steps[:source_timestamps.shape[0]]
        if not jumps.any():
            return
        n_jumps = int(np.count_nonzero(jumps))
        self.discontinuities += n_jumps
        self.last_gap_s = float(steps[jumps][-1])
        reconnected = bool(self._inlet.was_clock_reset())
        if reconnected:
            self.reconnects += 1
            self._arm_reconnect_detection()
        logger.warning(
            "LSL stream %r: %d discontinuit%s in the timestamps (last %+.3f s)%s",
            self.description.name, n_jumps, "y" if n_jumps == 1 else "ies", self.last_gap_s,
            "; liblsl reconnected to the restarted source" if reconnected else "",
            extra={"event": "discontinuity", "stream": self.description.name, "discontinuities": self.discontinuities,
                   "reconnects": self.reconnects},
        )
        # The offset may have changed with the connection: refresh at the next pull.
        self._next_clock_refresh_s = 0.0

    def close(self) -> None:
        if self._inlet is not None:
            self._inlet.close_stream()
            self._inlet = None  # liblsl destroys the inlet with the object

    def __enter__(self) -> "EEGInlet":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
