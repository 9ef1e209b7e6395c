"""`simulate`: play EEG into an LSL outlet at the real rate, like an amplifier would.

Sample ``k`` of the stream is due at ``t_start + k / sfreq`` on liblsl's ``local_clock()``. A
chunk is pushed when its newest sample is due, and every sample is stamped with its own due
time, so the newest sample's stamp is the moment it became available: the reference for
end-to-end latency. The loop sleeps to these absolute deadlines (no drift accumulates); when it
wakes up late it still pushes the due samples with their due stamps and counts an overrun.

The data come from a recording (its EEG channels, in volts, float32) or from the physics
simulator (`brainformer.simulation.SyntheticSource`). The command (`brainformer-rt simulate`) is
in `brainformer_rt.commands.simulate`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import pylsl

logger = logging.getLogger(__name__)

SYNTHETIC_LAYOUTS = ("sample", "ds000117")


class EEGSource(Protocol):
    """What the player plays: ``read(n)`` returns the next ``(m <= n, channels)`` float32
    samples in volts; ``m == 0`` means the source is exhausted."""

    channel_names: list[str]
    sfreq_hz: float

    def read(self, n_samples: int) -> np.ndarray: ...

    # Optional: ``close()`` releases what the source holds (called by Player.close).


class RecordingSource:
    """EEG held in memory, read in order; with ``loop`` it wraps around forever.

    Args:
        data: ``(n_samples, n_channels)`` float32 volts.
        sfreq_hz: sampling rate.
        channel_names: one label per column.
        loop: start again at the first sample after the last.
    """

    def __init__(self, data: np.ndarray, sfreq_hz: float, channel_names: Sequence[str], loop: bool = False):
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != len(channel_names):
            raise ValueError(
                f"data must have shape (n_samples > 0, {len(channel_names)} channels), got {data.shape}"
            )
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        self.data = data
        self.sfreq_hz = float(sfreq_hz)
        self.channel_names = list(channel_names)
        self.loop = loop
        self.position = 0  # next sample to read

    @classmethod
    def from_file(cls, path: str | Path, loop: bool = False) -> "RecordingSource":
        """The EEG channels of a FIF recording, in volts. Raises ValueError naming the file."""
        import mne

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"recording not found: {path}")
        try:
            raw = mne.io.read_raw_fif(path, allow_maxshield=True, preload=False, verbose="error")
        except Exception as error:  # mne raises several types for unreadable files
            raise ValueError(f"cannot read {path} as a FIF recording: {error}") from error
        picks = mne.pick_types(raw.info, meg=False, eeg=True, exclude=())
        if len(picks) == 0:
            raise ValueError(f"{path} has no EEG channels")
        data = raw.get_data(picks=picks).T  # (n_samples, n_eeg) volts
        return cls(data, raw.info["sfreq"], [raw.ch_names[i] for i in picks], loop=loop)

    def read(self, n_samples: int) -> np.ndarray:
        end = self.position + n_samples
        total = len(self.data)
        if end <= total:
            chunk = self.data[self.position:end]
        elif not self.loop:
            chunk = self.data[self.position:]
        else:
            # Wrap around (rare: once per pass); np.take with mode="wrap" builds the chunk.
            chunk = np.take(self.data, np.arange(self.position, end), axis=0, mode="wrap")
        self.position = end % total if self.loop else min(end, total)
        return chunk


class SyntheticSource:
    """The physics simulator's EEG for a sensor layout (``sample`` or ``ds000117``); endless.

    The simulator computes in blocks and one call can take far longer than a sample period, so
    a background thread generates ``read_ahead_s`` blocks ahead of the player and :meth:`read`
    only slices them.
    """

    def __init__(self, layout: str, seed: int = 0, read_ahead_s: float = 0.25):
        if layout not in SYNTHETIC_LAYOUTS:
            raise ValueError(f"synthetic layout must be one of {SYNTHETIC_LAYOUTS}, got {layout!r}")
        try:
            from brainformer.simulation import SyntheticSource as Simulator
        except ImportError as error:
            raise ImportError(f"the physics simulator (brainformer.simulation) is not available: {error}") from error
        self._simulator = Simulator(layout, seed)
        self.channel_names = list(self._simulator.eeg_channel_names)
        self.sfreq_hz = float(self._simulator.sfreq_hz)
        self._block_samples = max(1, round(read_ahead_s * self.sfreq_hz))
        self._blocks: queue.Queue = queue.Queue(maxsize=2)  # (block_samples, channels) arrays or an exception
        self._current = np.zeros((0, len(self.channel_names)), np.float32)
        self._offset = 0  # next unread row of _current
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="synthetic-eeg", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        while not self._closed.is_set():
            try:
                block = np.ascontiguousarray(self._simulator.read_eeg(self._block_samples), dtype=np.float32)
            except Exception as error:  # handed to the reader, which raises it
                block = error
            while not self._closed.is_set():
                try:
                    self._blocks.put(block, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(block, Exception):
                return

    def read(self, n_samples: int) -> np.ndarray:
        pieces = []
        while n_samples > 0:
            if self._offset == len(self._current):
                block = self._blocks.get()
                if isinstance(block, Exception):
                    raise RuntimeError(f"the physics simulator failed: {block}") from block
                self._current, self._offset = block, 0
            take = min(n_samples, len(self._current) - self._offset)
            pieces.append(self._current[self._offset:self._offset + take])
            self._offset += take
            n_samples -= take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1.0)


class Player:
    """Pushes an :class:`EEGSource` into an LSL outlet at its real rate.

    Args:
        source: where the samples come from.
        name, stream_type: LSL stream name and type.
        chunk_samples: samples per push.
        source_id: LSL source_id (inlets reconnect to a restarted player with the same id).
        duration_s: stop after this much stream time (None: until the source ends or stop()).
        aligned: chunks due at whole multiples of the chunk period (players push together).
        timestamp_offset_s: added to every sample's stamp, not to its due time (a source whose
            clock is behind, < 0, or ahead, > 0; for testing clock faults and stale input).
        clock_error_ppm: the source's clock runs this many parts per million fast: samples come
            at ``sfreq × (1 + ppm·1e-6)`` while the stream declares ``sfreq`` (an amplifier's crystal).

    Life cycle: ``open()`` → ``step()`` until it returns False → ``close()``; or ``run()``.
    ``stop()`` may be called from any thread or a signal handler.
    """

    def __init__(
        self,
        source: EEGSource,
        name: str = "EEG-sim",
        stream_type: str = "EEG",
        chunk_samples: int = 1,
        source_id: str | None = None,
        duration_s: float | None = None,
        aligned: bool = False,
        timestamp_offset_s: float = 0.0,
        clock_error_ppm: float = 0.0,
    ):
        if int(chunk_samples) != chunk_samples or chunk_samples < 1:
            raise ValueError(f"chunk_samples must be a positive integer, got {chunk_samples!r}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be positive, got {duration_s!r}")
        self.source = source
        self.name = name
        self.stream_type = stream_type
        self.chunk_samples = int(chunk_samples)
        self.source_id = source_id or f"brainformer-simulate-{name}"
        self.sfreq_hz = float(source.sfreq_hz)
        self.max_samples = None if duration_s is None else int(round(duration_s * self.sfreq_hz))
        self.aligned = bool(aligned)
        if not math.isfinite(timestamp_offset_s):
            raise ValueError(f"timestamp_offset_s must be finite, got {timestamp_offset_s!r}")
        self.timestamp_offset_s = float(timestamp_offset_s)
        if not math.isfinite(clock_error_ppm):
            raise ValueError(f"clock_error_ppm must be finite, got {clock_error_ppm!r}")
        # The rate the samples really come at; the outlet declares the nominal one.
        self.true_rate_hz = self.sfreq_hz * (1.0 + float(clock_error_ppm) * 1e-6)
        self._outlet: pylsl.StreamOutlet | None = None
        self._stop = threading.Event()
        self._last_overrun_log_s = -1e9
        self._started = False
        self.t_start = 0.0  # local_clock() due time of sample 0, set by the first step()
        self.start_position: Optional[int] = None  # the source's position at sample 0 (recordings)
        # Counters.
        self.samples_pushed = 0
        self.chunks_pushed = 0
        self.overruns = 0  # pushes that woke up more than one chunk period late
        self.lateness_max_s = 0.0  # worst wake-up delay after a due time
        self.lateness_total_s = 0.0

    def open(self) -> None:
        """Create the outlet: the stream becomes visible. The clock starts at the first step()."""
        n_channels = len(self.source.channel_names)
        info = pylsl.StreamInfo(self.name, self.stream_type, n_channels, self.sfreq_hz, "float32", self.source_id)
        _describe_channels(info, self.source)  # label, type, unit (+ location) per channel
        acquisition = info.desc().append_child("acquisition")
        acquisition.append_child_value("manufacturer", "brainformer")
        acquisition.append_child_value("model", "simulate")
        self._outlet = pylsl.StreamOutlet(info, 0, 30)
        self._started = False

    def wait_for_consumers(self, timeout_s: float) -> bool:
        """Block until an inlet is connected (before the first step, so nothing is missed)."""
        if self._outlet is None:
            raise RuntimeError("Player.wait_for_consumers() before open()")
        return self._outlet.wait_for_consumers(timeout_s)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def step(self) -> bool:
        """Wait for the next chunk's due time and push it. False once finished or stopped."""
        if self._outlet is None:
            raise RuntimeError("Player.step() before open()")
        n = self.chunk_samples
        if self.max_samples is not None:
            n = min(n, self.max_samples - self.samples_pushed)
        if n <= 0 or self._stop.is_set():
            return False
        position = getattr(self.source, "position", None)  # a recording's next sample
        chunk = self.source.read(n)  # (n, channels), prepared before the wait
        n = len(chunk)
        if n == 0:
            return False
        if not self._started:
            self.start_position = position
            # The clock starts with the first chunk, not at open(): whatever the caller did in
            # between (waiting for consumers) must not turn into a catch-up burst.
            self.t_start = pylsl.local_clock()
            if self.aligned:
                # Chunks due at whole multiples of the chunk period on local_clock(): players
                # with the same rate and chunk size push together, like amplifiers that share one
                # acquisition clock (hyperscanning rigs).
                period = self.chunk_samples / self.sfreq_hz
                self.t_start = math.ceil(self.t_start / period) * period
            self._started = True
        first = self.samples_pushed
        timestamps = self.t_start + np.arange(first, first + n) / self.true_rate_hz
        due = timestamps[-1]
        delay = due - pylsl.local_clock()
        if delay > 0 and self._stop.wait(delay):
            return False
        lateness = pylsl.local_clock() - due
        self._outlet.push_chunk(chunk, timestamps + self.timestamp_offset_s if self.timestamp_offset_s else timestamps)
        self.samples_pushed += n
        self.chunks_pushed += 1
        self._account_lateness(lateness)
        return True

    def _account_lateness(self, lateness_s: float) -> None:
        if lateness_s <= 0:
            return
        self.lateness_total_s += lateness_s
        self.lateness_max_s = max(self.lateness_max_s, lateness_s)
        if lateness_s > self.chunk_samples / self.sfreq_hz:
            self.overruns += 1
            now = pylsl.local_clock()
            if now - self._last_overrun_log_s > 1.0:  # at most one message per second
                logger.warning("player %r is %.1f ms behind its schedule (%d overruns so far)",
                               self.name, lateness_s * 1e3, self.overruns)
                self._last_overrun_log_s = now

    def close(self) -> None:
        self._outlet = None  # destroys the outlet: the stream disappears
        close_source = getattr(self.source, "close", None)
        if close_source is not None:
            close_source()

    def run(self, on_started: Optional[Callable[["Player"], None]] = None) -> None:
        """open(), step() until finished or stopped, close(); ``on_started(player)`` once the
        first chunk is out (its clock known: `playback_clock`)."""
        self.open()
        try:
            if self.step() and on_started is not None:
                on_started(self)
            while self.step():
                pass
        finally:
            self.close()

    def playback_clock(self) -> dict:
        """After the first step: how stream sample ``k`` maps to time and to the source, in the
        fields of `brainformer_rt.tools.demo.scoring.PlaybackClock`: ``t_start`` (the due time
        of sample 0), ``sfreq_hz`` (the rate samples come at) and, for a recording, its
        ``start_sample`` and ``n_samples`` (None for an endless source)."""
        data = getattr(self.source, "data", None)
        n_samples = None if data is None else len(data)
        start = None if n_samples is None else self.start_position
        return {"t_start": self.t_start, "start_sample": start, "n_samples": n_samples, "sfreq_hz": self.true_rate_hz}

    def summary(self) -> dict:
        return {
            "name": self.name,
            "samples": self.samples_pushed,
            "chunks": self.chunks_pushed,
            "seconds": self.samples_pushed / self.sfreq_hz,
            "overruns": self.overruns,
            "lateness_mean_ms": 1e3 * self.lateness_total_s / max(self.chunks_pushed, 1),
            "lateness_max_ms": 1e3 * self.lateness_max_s,
        }


# ----------------------------------------------------------------------------------------------
# Test sources: a recording made to look like another amplifier (`simulate --unit/--rate/--drop/
# --cap/--with-aux`), for the adaptation stage's end-to-end tests and for trying `check`.
# ----------------------------------------------------------------------------------------------
#: A 32-electrode 10-20 cap (the actiCAP/EasyCap 32-channel layout), positions from MNE's
#: ``standard_1020`` montage.
CAP_32 = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
          "TP9", "CP5", "CP1", "CP2", "CP6", "TP10", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10")
#: The 19 electrodes of the classic 10-20 system.
CAP_19 = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz", "P4", "P8",
          "O1", "O2")
#: ``--unit`` → (factor from volts, the XDF unit declared).
TEST_UNITS = {"V": (1.0, "volts"), "mV": (1e3, "millivolts"), "uV": (1e6, "microvolts")}
#: ``--cap`` values → (montage, its electrodes).
TEST_CAPS = {"standard_1020": ("standard_1020", CAP_32), "standard_1020:32": ("standard_1020", CAP_32),
             "standard_1020:19": ("standard_1020", CAP_19)}


def prepared_recording(path: str | Path, unit: str | None = None, rate_hz: float | None = None, drop: Sequence[str] = (),
                cap: str | None = None, with_aux: bool = False, flat: Sequence[tuple[str, float]] = (),
                loop: bool = False) -> RecordingSource:
    """A FIF recording's EEG as another source would send it, prepared offline.

    Args:
        path: the FIF recording.
        unit: ``V`` | ``mV`` | ``uV``: data scaled and the unit declared (XDF spelling).
        rate_hz: resampled offline (MNE, FFT) to this rate, declared as the stream's.
        drop: EEG channels left out.
        cap: ``standard_1020`` (or ``standard_1020:32``) or ``standard_1020:19``: the EEG on
            the 32 electrodes of `CAP_32` (the 19 of `CAP_19`) of a cap of that montage placed on
            the recording's head as ``serve`` places it (its fiducials onto the recording's, then
            a rigid + scale fit: `coregistration.place_montage`), computed by spherical splines
            from the recording's electrodes; positions in ``location`` X/Y/Z (mm, the
            recording's head frame).
        with_aux: also the EOG and stimulus channels (types ``EOG``, ``STIM``).
        flat: ``(channel, seconds)``: from that moment of the stream on, the channel holds its
            value (a disconnected electrode).
        loop: start again at the end.

    Raises:
        ValueError: naming the option at fault.
    """
    import mne

    path = Path(path)
    _check_source_options(path, unit, rate_hz, cap)
    raw = mne.io.read_raw_fif(path, allow_maxshield=True, preload=True, verbose="error")
    eeg = raw.copy().pick("eeg", exclude=())
    positions = None
    if cap is not None:
        names, data, placed = _onto_cap(raw, eeg, cap)
        positions = [tuple(float(v) for v in 1e3 * p) for p in placed]
    else:
        names, data = list(eeg.ch_names), eeg.get_data()  # (n_eeg, n_samples)
    if drop:
        unknown = [name for name in drop if name not in names]
        if unknown:
            raise ValueError(f"--drop: {', '.join(repr(n) for n in unknown)} are not EEG channels of the stream")
        keep = [i for i, name in enumerate(names) if name not in drop]
        names, data = [names[i] for i in keep], data[keep]
        positions = None if positions is None else [positions[i] for i in keep]
    types = ["EEG"] * len(names)
    factor, unit_label = TEST_UNITS.get(unit or "V")
    data = data * factor
    if with_aux:
        aux = raw.copy().pick(["eog", "stim"], exclude=())
        aux_types = ["EOG" if t == "eog" else "STIM" for t in aux.get_channel_types()]
        aux_factors = np.array([factor if t == "EOG" else 1.0 for t in aux_types])  # triggers keep their codes
        data = np.concatenate([data, aux.get_data() * aux_factors[:, None]])
        names += list(aux.ch_names)
        types += aux_types
        if positions is not None:
            positions += [None] * len(aux_types)
    sfreq = float(raw.info["sfreq"])
    if rate_hz is not None and rate_hz != sfreq:
        data = mne.filter.resample(data, up=float(rate_hz), down=sfreq, npad="auto", verbose="error")
        sfreq = float(rate_hz)
    data = np.ascontiguousarray(data.T, dtype=np.float32)  # (n_samples, n_channels)
    _flatten(data, names, flat, sfreq)
    source = RecordingSource(data, sfreq, names, loop=loop)
    source.channel_types = types
    source.channel_units = [unit_label if t != "STIM" else "" for t in types]
    source.positions_mm = positions
    return source


def _check_source_options(path: Path, unit: str | None, rate_hz: float | None, cap: str | None) -> None:
    if not path.is_file():
        raise ValueError(f"recording not found: {path}")
    if unit is not None and unit not in TEST_UNITS:
        raise ValueError(f"--unit must be one of {', '.join(TEST_UNITS)}, got {unit!r}")
    if cap is not None and cap not in TEST_CAPS:
        raise ValueError(f"--cap must be one of {', '.join(TEST_CAPS)}, got {cap!r}")
    if rate_hz is not None and not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"--rate must be a positive number of Hz, got {rate_hz!r}")


def _onto_cap(raw: Any, eeg: Any, cap: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(labels, EEG (n_cap, n_samples), positions (n_cap, 3) m)`` of the `TEST_CAPS` cap
    ``cap`` placed on the recording's head: its electrodes where that cap sits on this head
    (`coregistration.place_montage`), their EEG by spherical splines from the recording's."""
    from brainformer.adaptation.coregistration import place_montage
    from brainformer.adaptation.interpolation import fit_origin, spline_matrix
    from brainformer.data.readers import eeg_fiducials, eeg_positions

    montage, labels = TEST_CAPS[cap]
    head = eeg_positions(eeg, eeg.ch_names)
    if head is None:
        raise ValueError("--cap: the recording's EEG electrodes have no head-frame positions to place a cap on")
    head = np.asarray(head)
    fiducials = eeg_fiducials(raw)
    placed, _ = place_montage(montage, labels, head, None if fiducials is None else np.asarray(fiducials))
    weights = spline_matrix(head, placed, fit_origin(head))  # (n_cap, n_eeg)
    return list(labels), weights @ eeg.get_data(), placed


def _flatten(data: np.ndarray, names: Sequence[str], flat: Sequence[tuple[str, float]], sfreq: float) -> None:
    """From ``seconds`` on, each ``(channel, seconds)`` of ``flat`` holds its value, in place."""
    for channel, seconds in flat:
        if channel not in names:
            raise ValueError(f"--flat: {channel!r} is not a channel of the stream")
        start = min(len(data) - 1, max(0, int(round(seconds * sfreq))))
        column = list(names).index(channel)
        data[start:, column] = data[start, column]


def _describe_channels(info: "pylsl.StreamInfo", source: EEGSource) -> None:
    """``desc/channels``: label, type, unit (and ``location`` X/Y/Z in mm when the source has
    positions) per channel; a plain source is EEG in volts."""
    names = source.channel_names
    types = getattr(source, "channel_types", None) or ["EEG"] * len(names)
    units = getattr(source, "channel_units", None) or ["V"] * len(names)
    positions = getattr(source, "positions_mm", None) or [None] * len(names)
    channels = info.desc().append_child("channels")
    for label, kind, unit, position in zip(names, types, units, positions):
        channel = channels.append_child("channel")
        channel.append_child_value("label", label)
        channel.append_child_value("type", kind)
        channel.append_child_value("unit", unit)
        if position is not None:
            location = channel.append_child("location")
            for axis, value in zip("XYZ", position):
                location.append_child_value(axis, f"{value:.3f}")
