"""Daemon preprocessing stage: check a stream against the model, re-order its channels, preprocess.

The signal processing itself is :mod:`brainformer.preprocessing` (the one causal path shared with
training); this stage adds what only a live stream needs:

- :func:`check_stream` / :class:`ChannelMap`: the stream's channel labels are matched to the
  model's EEG channels by name (missing or extra channels are an error naming them), its rate
  must equal the model rate or be an integer multiple of it, its format must be float, its units
  must be volts or a known multiple — all checked before serving, as
  :class:`IncompatibleStreamError` (a ``ValueError``) with one line naming the problem;
- :class:`EEGPreprocessStage`: per chunk, re-order the columns into a preallocated buffer (and
  convert µV/mV to V), then run the stateful :class:`~brainformer.preprocessing.StreamingPreprocessor`;
- :class:`GapDetector`: finds discontinuities in the input timestamps, after which the stream is
  reset (see ``daemon.py``), and estimates how many samples were lost in each;
- :class:`FlatChannelMonitor`: finds channels whose raw value did not change for a whole second
  (a disconnected electrode, a saturated amplifier).

Flat channels are served, not dropped: the model needs all its channels, and a constant channel
is harmless to the filters — after the average reference it carries minus the mean of the other
channels, and the high-pass removes its constant part. The predictions are then built from a
channel that carries no brain signal, so the daemon warns (naming the channel) and counts the
windows served while a channel was flat (``flat_windows``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from brainformer.preprocessing import NonFiniteInputError, PreprocessingError, decimation_factor, eeg_preprocessor

logger = logging.getLogger(__name__)

__all__ = ["IncompatibleStreamError", "ChannelMap", "EEGPreprocessStage", "GapDetector", "FlatChannelMonitor",
           "check_stream", "FLOAT_FORMATS", "VOLT_FACTORS"]

#: A forward timestamp step longer than the silence seen here by more than this is a clock jump.
CLOCK_JUMP_SLACK_S = 1.0

#: liblsl channel formats EEG can be read from.
FLOAT_FORMATS = ("float32", "double64")

#: Channel unit (as written in ``desc/channels/channel/unit``, lower-cased) → factor to volts.
#: An empty unit is taken as volts, the unit of MNE and of the bundled player.
VOLT_FACTORS = {
    "": 1.0, "v": 1.0, "volt": 1.0, "volts": 1.0,
    "mv": 1e-3, "millivolt": 1e-3, "millivolts": 1e-3,
    "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "microvolt": 1e-6, "microvolts": 1e-6,
    "nv": 1e-9, "nanovolt": 1e-9, "nanovolts": 1e-9,
}


class IncompatibleStreamError(ValueError):
    """A stream the model cannot serve (channels, rate, format, units); the message is one line."""


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True)
class ChannelMap:
    """Stream columns → model EEG channel order.

    Attributes:
        index: ``(n_eeg,)`` int64; model channel ``j`` is stream column ``index[j]``.
        n_stream_channels: channels in the stream.
    """

    index: np.ndarray
    n_stream_channels: int

    @classmethod
    def from_labels(cls, stream_labels: Sequence[str], model_eeg_names: Sequence[str],
                    stream_name: str = "stream") -> "ChannelMap":
        """Match by exact label. Raises :class:`IncompatibleStreamError` naming missing, extra,
        duplicated or unlabelled channels."""
        labels = list(stream_labels)
        if not all(labels):
            unlabelled = [i for i, label in enumerate(labels) if not label]
            raise IncompatibleStreamError(
                f"LSL stream {stream_name!r}: {len(unlabelled)} of {len(labels)} channels have no label in "
                f"desc/channels (e.g. column {unlabelled[0]}); channels are matched to the model by label")
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise IncompatibleStreamError(f"LSL stream {stream_name!r}: duplicated channel labels {_listing(duplicated)}")
        position = {label: i for i, label in enumerate(labels)}
        missing = [name for name in model_eeg_names if name not in position]
        wanted = set(model_eeg_names)
        extra = [label for label in labels if label not in wanted]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} model EEG channel(s) {_listing(missing)}")
            if extra:
                parts.append(f"{len(extra)} channel(s) the model does not know {_listing(extra)}")
            raise IncompatibleStreamError(f"LSL stream {stream_name!r} does not match the model's "
                                          f"{len(model_eeg_names)} EEG channels: " + "; ".join(parts))
        index = np.array([position[name] for name in model_eeg_names], dtype=np.int64)
        return cls(index=index, n_stream_channels=len(labels))

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.index, np.arange(self.n_stream_channels)))


def check_stream(description: Any, config: Any) -> Tuple[ChannelMap, int, Optional[np.ndarray]]:
    """Everything that must hold before a stream is served.

    Args:
        description: the inlet's ``StreamDescription`` (name, channel_labels, channel_units,
            sfreq_hz, channel_format, n_channels).
        config: the model's ``BrainformerConfig``.

    Returns:
        ``(channel_map, decimation, volt_factors)``; ``volt_factors`` is ``(n_eeg,)`` float64 in
        model order, or None when every channel is already in volts.

    Raises:
        IncompatibleStreamError: format, channels, rate or units the model cannot use.
    """
    name = description.name
    if description.channel_format not in FLOAT_FORMATS:
        raise IncompatibleStreamError(
            f"LSL stream {name!r} has channel format {description.channel_format!r}; EEG must be float32 or double64")
    channel_map = ChannelMap.from_labels(description.channel_labels, config.eeg_channel_names, name)
    if not description.sfreq_hz > 0:
        raise IncompatibleStreamError(f"LSL stream {name!r} has an irregular rate; the model needs "
                                      f"{float(config.sfreq_hz):g} Hz or an integer multiple")
    try:
        decimation = decimation_factor(float(description.sfreq_hz), float(config.sfreq_hz))
    except PreprocessingError as error:
        raise IncompatibleStreamError(f"LSL stream {name!r}: {error}") from None
    units = list(description.channel_units) or [""] * description.n_channels
    unknown = sorted({u for u in units if u.strip().lower() not in VOLT_FACTORS})
    if unknown:
        raise IncompatibleStreamError(
            f"LSL stream {name!r}: unknown EEG channel unit(s) {_listing(unknown)}; use V, mV, uV (µV) or nV")
    factors = np.array([VOLT_FACTORS[units[i].strip().lower()] for i in channel_map.index], dtype=np.float64)
    return channel_map, decimation, (None if np.all(factors == 1.0) else factors)


class EEGPreprocessStage:
    """Channel re-ordering + the shared streaming preprocessing, for one stream.

    Args:
        config: the model's ``BrainformerConfig``.
        description: the inlet's ``StreamDescription``; validated with :func:`check_stream`.
        max_chunk_samples: initial size of the re-order buffer (grown if a bigger chunk comes).

    State (all of it): the re-order buffer, the preprocessor's filter state and the flat-channel
    monitor.
    """

    def __init__(self, config: Any, description: Any, max_chunk_samples: int = 4096) -> None:
        self.channel_map, self.decimation, self._volt_factors = check_stream(description, config)
        self.name = description.name
        self.input_sfreq_hz = float(description.sfreq_hz)
        self.output_sfreq_hz = self.input_sfreq_hz / self.decimation
        self.channel_names = tuple(config.eeg_channel_names)
        self.n_channels = len(self.channel_names)
        self.flat = FlatChannelMonitor(self.n_channels, block_samples=max(1, int(round(self.input_sfreq_hz))))
        self._last_n = 0  # rows of the re-order buffer holding the newest chunk
        try:
            self.preprocessor = eeg_preprocessor(config, self.input_sfreq_hz)
        except PreprocessingError as error:
            raise IncompatibleStreamError(f"LSL stream {self.name!r}: {error}") from None
        dtype = np.float32 if description.channel_format == "float32" else np.float64
        # (max_chunk_samples, n_eeg) in the stream's dtype: np.take fills it without a cast.
        self._reordered = np.empty((max(1, int(max_chunk_samples)), self.n_channels), dtype=dtype)

    def process(self, data: np.ndarray, timestamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Raw ``data (n, n_stream_channels)`` with ``timestamps (n,)`` → preprocessed
        ``(m, n_eeg)`` float32 in model order and their ``(m,)`` timestamps (``m ≈ n / decimation``).

        Raises ``brainformer.preprocessing.NonFiniteInputError`` for NaN/Inf (state untouched;
        :meth:`non_finite_channels` names the culprits).
        """
        n = data.shape[0]
        if data.ndim != 2 or data.shape[1] != self.channel_map.n_stream_channels:
            raise ValueError(f"{self.name}: expected a chunk (n, {self.channel_map.n_stream_channels}), got {data.shape}")
        if n > self._reordered.shape[0]:
            self._reordered = np.empty((max(n, 2 * self._reordered.shape[0]), self.n_channels), self._reordered.dtype)
        reordered = self._reordered[:n]
        self._last_n = n
        np.take(data, self.channel_map.index, axis=1, out=reordered)
        if not np.isfinite(reordered).all():
            # Checked here, before any arithmetic: Inf - Inf in the referencing would warn.
            raise NonFiniteInputError(f"{self.name}: chunk holds NaN or Inf values")
        if self._volt_factors is not None:
            reordered *= self._volt_factors.astype(reordered.dtype, copy=False)
        out = self.preprocessor.process(reordered, timestamps)
        self.flat.update(reordered)  # after the NaN check: a NaN chunk never reaches the monitor
        return out

    def non_finite_channels(self) -> list[str]:
        """Names of the channels holding NaN/Inf in the chunk last given to :meth:`process`."""
        chunk = self._reordered[:self._last_n]
        bad = ~np.isfinite(chunk).all(axis=0)
        return [self.channel_names[i] for i in np.flatnonzero(bad)]

    def flat_channel_names(self) -> list[str]:
        """Names of the channels currently flat (see :class:`FlatChannelMonitor`)."""
        return [self.channel_names[i] for i in np.flatnonzero(self.flat.flat)]

    def reset(self) -> None:
        """Forget the filter state (after a gap): the next sample starts a fresh segment."""
        self.preprocessor.reset()
        self.flat.reset()


class FlatChannelMonitor:
    """Finds channels whose raw value did not change at all during a block of input samples.

    Per chunk it folds the per-channel minimum and maximum into two ``(n_channels,)`` arrays (no
    allocation); at the end of every ``block_samples`` block the channels with maximum ==
    minimum are flat until a later block shows them changing.

    Args:
        n_channels: channels of the chunks given to :meth:`update`.
        block_samples: samples per decision (the daemon uses one second of input).

    Attributes:
        flat: ``(n_channels,)`` bool, the decision of the last complete block.
        changed: True when the last :meth:`update` completed a block whose decision differs from
            the previous one (the caller logs the change).
    """

    def __init__(self, n_channels: int, block_samples: int) -> None:
        if block_samples < 1:
            raise ValueError(f"block_samples must be >= 1, got {block_samples}")
        self.block_samples = int(block_samples)
        self.flat = np.zeros(n_channels, dtype=bool)
        self.changed = False
        self._low = np.empty(n_channels, dtype=np.float64)
        self._high = np.empty(n_channels, dtype=np.float64)
        self._chunk_low = np.empty(n_channels, dtype=np.float64)
        self._chunk_high = np.empty(n_channels, dtype=np.float64)
        self._decision = np.zeros(n_channels, dtype=bool)
        self._filled = 0

    @property
    def n_flat(self) -> int:
        return int(np.count_nonzero(self.flat))

    def update(self, chunk: np.ndarray) -> None:
        """Fold ``chunk (n, n_channels)`` (finite values) into the current block."""
        self.changed = False
        if chunk.shape[0] == 0:
            return
        if self._filled == 0:
            np.minimum.reduce(chunk, axis=0, out=self._low)
            np.maximum.reduce(chunk, axis=0, out=self._high)
        elif chunk.shape[0] == 1:  # the common 1-sample chunk: two ufunc calls instead of four
            np.minimum(self._low, chunk[0], out=self._low)
            np.maximum(self._high, chunk[0], out=self._high)
        else:
            np.minimum.reduce(chunk, axis=0, out=self._chunk_low)
            np.maximum.reduce(chunk, axis=0, out=self._chunk_high)
            np.minimum(self._low, self._chunk_low, out=self._low)
            np.maximum(self._high, self._chunk_high, out=self._high)
        self._filled += chunk.shape[0]
        if self._filled >= self.block_samples:
            np.equal(self._low, self._high, out=self._decision)
            self.changed = not np.array_equal(self._decision, self.flat)
            np.copyto(self.flat, self._decision)
            self._filled = 0

    def reset(self) -> None:
        """Start a new block (after a gap); the last decision stays until the next block ends."""
        self._filled = 0
        self.changed = False


class GapDetector:
    """Finds discontinuities in one stream's input timestamps.

    A step between consecutive timestamps (including from the previous chunk's last one) larger
    than ``threshold_s``, or backwards by more than half a sample period, is a discontinuity.

    Missing samples are estimated from the timestamp step (``step / period - 1``). When the
    caller gives arrival times, a step that is backwards, or forwards by more than
    ``CLOCK_JUMP_SLACK_S`` beyond the silence seen on this side, is a clock jump on the source
    side; its missing samples are estimated from that silence instead (samples due between the
    previous chunk's arrival and this one's, minus those that came): a leap of the source's
    clock while samples keep arriving counts ~0, a restart with a reset clock counts its downtime.

    Args:
        sfreq_hz: the stream's nominal rate.
        threshold_s: largest step that still counts as continuous.
    """

    def __init__(self, sfreq_hz: float, threshold_s: float, max_chunk_samples: int = 4096) -> None:
        if not sfreq_hz > 0:
            raise ValueError(f"sfreq_hz must be positive, got {sfreq_hz!r}")
        if not threshold_s > 0:
            raise ValueError(f"threshold_s must be positive, got {threshold_s!r}")
        self.period_s = 1.0 / float(sfreq_hz)
        self.threshold_s = float(threshold_s)
        self.last_timestamp: Optional[float] = None
        self.last_arrival_s: Optional[float] = None  # arrival (local clock) of the previous chunk
        self._steps = np.empty(max(1, int(max_chunk_samples)), dtype=np.float64)  # reused, no allocation
        self.last_step_s = 0.0  # size of the last discontinuity found
        self.missing_samples = 0  # estimated samples lost in the last discontinuity

    def check(self, timestamps: np.ndarray, arrival_s: Optional[float] = None) -> int:
        """Index of the first sample after the last discontinuity in ``timestamps (n,)``, or -1.

        ``arrival_s``: when the chunk arrived (``local_clock()``), for the missing-sample
        estimate. 0 means the chunk itself starts after a discontinuity. The first chunk ever
        has none.
        """
        n = timestamps.shape[0]
        if n == 0:
            return -1
        previous = self.last_timestamp
        previous_arrival = self.last_arrival_s
        self.last_timestamp = float(timestamps[-1])
        self.last_arrival_s = arrival_s
        if n > self._steps.shape[0]:
            self._steps = np.empty(max(n, 2 * self._steps.shape[0]), dtype=np.float64)
        steps = self._steps[:n]
        steps[0] = 0.0 if previous is None else timestamps[0] - previous
        if n > 1:
            np.subtract(timestamps[1:], timestamps[:-1], out=steps[1:])
        bad = (steps > self.threshold_s) | (steps < -0.5 * self.period_s)
        if not bad.any():
            return -1
        index = int(np.flatnonzero(bad)[-1])
        self.last_step_s = float(steps[index])
        by_silence = None  # samples due during the silence on this side, minus those that came
        silence_s = 0.0
        if arrival_s is not None and previous_arrival is not None:
            silence_s = arrival_s - previous_arrival
            by_silence = max(0, int(round(silence_s / self.period_s)) - n)
        if self.last_step_s > 0 and (by_silence is None or self.last_step_s <= silence_s + CLOCK_JUMP_SLACK_S):
            self.missing_samples = max(0, int(round(self.last_step_s / self.period_s)) - 1)
        else:  # a backward step, or the timestamps leapt further than time passed here: a clock jump
            self.missing_samples = by_silence or 0
        return index

    def reset(self) -> None:
        self.last_timestamp = None
        self.last_arrival_s = None
