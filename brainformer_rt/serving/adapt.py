"""Source adaptation stage: whatever a live stream sends → the model's EEG, in volts, at its rate,
and the model's linear path re-solved for the electrodes the stream has.

The work is done by the torch-free library :mod:`brainformer.adaptation` (units, channel
matching and channel map, another cap placed on the model's head, interpolation of missing or bad
electrodes from their positions, streaming resampling (libsamplerate linear or soxr QQ) with the
timestamps of the EEG instants, the linear path re-solved from the model's statistics). This
module is the daemon's side of it, the first step of each stream's pipe (``pipeline.py``):

- :func:`stream_source`: the :class:`~brainformer.adaptation.SourceDescription` of an opened
  inlet, from its full XML meta-data (positions included);
- :class:`SourceAdapter`: planned once when the stream opens (:func:`plan_adaptation`; an
  :class:`~brainformer.adaptation.AdaptationError` is a one-line refusal, exit code 2), applied
  per chunk without allocation (:class:`~brainformer.adaptation.Adapter`), its stream channels
  watched for flat lines (:class:`FlatChannelMonitor`) and re-planned OFF the hot path when they
  go bad or recover (:meth:`SourceAdapter.request_bad_channels`, one worker thread; the new plan
  is swapped in between two chunks, so the output has no gap), and the amplitudes of the first
  seconds checked against the declared unit (in that thread too);
- the linear path of this stream (:class:`LinearPathCorrection`): for a model with statistics,
  the skip path's map re-solved in closed form for the electrodes the stream has
  (:func:`~brainformer.adaptation.resolve.resolve_linear_path`, at planning and at every
  re-plan), applied as a per-stream correction to the rows each window publishes, after the
  batched forward (the engines and their compiled graphs never change), with the expected
  quality of the cap that it brings (:attr:`SourceAdapter.quality`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["IncompatibleStreamError", "FlatChannelMonitor", "LinearPathCorrection", "SourceAdapter", "stream_source",
           "adaptation_options", "linear_path_of", "AMPLITUDE_CHECK_S"]

class IncompatibleStreamError(ValueError):
    """A stream the model cannot serve (channels, rate, format, units); the message is one line."""


# ----------------------------------------------------------------------------------------------
# The stage: the adaptation library, planned at start-up, re-planned off the hot path
# ----------------------------------------------------------------------------------------------
#: Seconds of adapted EEG (model rate) whose amplitudes are checked against the declared unit.
AMPLITUDE_CHECK_S = 2.0


#: ``--max-missing`` of a model without linear path statistics, when the user gives none.
DEFAULT_MAX_MISSING_FRACTION = 0.25


def adaptation_options(channel_map: Optional[str] = None, montage: Optional[str] = None,
                       input_unit: Optional[str] = None, max_missing_fraction: Optional[float] = None,
                       has_statistics: bool = False) -> Any:
    """The user's adaptation choices (``serve``/``check`` options) as ``AdaptationOptions``; a
    montage given by name or file is loaded once here, so an unknown one is refused before any
    stream is awaited. ``max_missing_fraction`` None: no limit for a model with linear path
    statistics (the expected quality of the cap decides), ``DEFAULT_MAX_MISSING_FRACTION`` for
    one without. Raises ``AdaptationError`` (one line)."""
    from brainformer.adaptation import AdaptationOptions, load_montage

    if max_missing_fraction is None and not has_statistics:
        max_missing_fraction = DEFAULT_MAX_MISSING_FRACTION
    options = AdaptationOptions(channel_map=channel_map, montage=montage, input_unit=input_unit,
                                max_missing_fraction=max_missing_fraction)
    if montage is not None:
        load_montage(montage)
    return options


def stream_source(inlet: Any) -> Any:
    """The ``SourceDescription`` of an opened ``EEGInlet``: from its full XML meta-data (labels,
    types, units, positions), or, for an inlet that gives no XML, from its ``description``."""
    from brainformer.adaptation import SourceDescription, source_from_lsl_xml

    xml = getattr(inlet, "full_xml", None)  # EEGInlet.open() keeps it
    if xml:
        return source_from_lsl_xml(xml)
    return SourceDescription.from_stream(inlet.description)


def plan_fields(plan: Any) -> dict:
    """The plan as fields of one log event: every ignored channel and every interpolated
    electrode named (``describe()`` shortens long lists)."""
    return {
        "source": plan.source.name,
        "n_stream_channels": plan.n_stream_channels,
        "n_used": int(len(plan.used_columns)),
        "units": sorted({f"{sent or '(none)'}×{factor:g}" for _, sent, factor in plan.units}),
        "channels_read": len(plan.channels),
        "ignored": [f"{label} ({why})" for label, why in plan.ignored],
        "bad_channels": list(plan.bad_channels),
        "interpolated": [f"{model} (nearest {near} {1e3 * d:.0f} mm)" for model, near, d in plan.interpolated],
        "interpolation_mode": plan.mode if plan.interpolated else None,
        "input_sfreq_hz": plan.input_sfreq_hz,
        "output_sfreq_hz": plan.output_sfreq_hz,
        "resample": plan.resample,
        "resampler": plan.resampler,
        "decimation": plan.decimation,
        "resampler_delay_ms": [1e3 * plan.resampler_delay_s[0], 1e3 * plan.resampler_delay_s[1]],
        "placement": None if plan.placement is None else plan.placement.to_dict(),
        "warnings": list(plan.warnings),
    }


def linear_path_of(model_dir: Any, fields: Any) -> Tuple[Any, Any]:
    """``(statistics, full-cap solution)`` of a model directory's linear path, or ``(None, None)``
    for a model without statistics (an older one: its linear path stays as trained). Raises
    ``StatisticsError`` (a ``ValueError``, one line) for a file that is there but unusable."""
    from brainformer.linear_path import load_statistics

    statistics = load_statistics(model_dir, fields)
    if statistics is None:
        return None, None
    return statistics, statistics.solve()


class _Worker:
    """One daemon thread running submitted calls in order (re-planning, the amplitude check):
    started at the first call, so a stage that never needs it costs no thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(call)

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                call()
            except Exception:  # noqa: BLE001 - a failed re-plan must not end the worker
                logger.exception("%s: background adaptation job failed", self._name)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once every call submitted so far has run (tests, shutdown)."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done.set)
        return done.wait(timeout_s)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(1.0)


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


class LinearPathCorrection:
    """One stream's re-solved linear path, as what it adds to the model's predictions.

    ``predictions (k, n_meg) += [window[t − lag] for lag in lags] @ delta_weight + delta_bias``
    for the newest ``k`` rows of a window ``(T, n_eeg)`` (scaled units, the model's input): the
    difference between the map re-solved for this stream's electrodes and the model's own
    (:class:`~brainformer.adaptation.resolve.ResolvedLinearPath`). Numpy, after the batched
    forward, so every stream of a batch keeps its own map and the engines stay as compiled.

    State: the path and two buffers (grown once to the largest ``k``; made off the hot path
    with the path itself at each re-plan, and swapped in as one object).
    """

    def __init__(self, path: Any, n_eeg: int, max_rows: int = 64) -> None:
        self.path = path
        self.lags = tuple(int(lag) for lag in path.lags)
        self.n_eeg = int(n_eeg)
        self.delta_weight = path.delta_weight
        self.delta_bias = path.delta_bias
        self._allocate(max_rows)

    def _allocate(self, rows: int) -> None:
        self._lagged = np.empty((rows, len(self.lags) * self.n_eeg), dtype=np.float32)  # (k, lags·n_eeg)
        self._added = np.empty((rows, self.delta_weight.shape[1]), dtype=np.float32)  # (k, n_meg)

    def apply(self, window: np.ndarray, predictions: np.ndarray) -> None:
        """Add the correction to ``predictions (k, n_meg)`` (in place), the newest ``k`` rows
        predicted from ``window (T, n_eeg)``."""
        k, T, n = predictions.shape[0], window.shape[0], self.n_eeg
        if k == 0:
            return
        if k > self._lagged.shape[0]:
            self._allocate(k)
        lagged = self._lagged[:k]
        for i, lag in enumerate(self.lags):
            first = T - k - lag
            if first < 0:  # not within the window: the model's skip path sees zeros there too
                lagged[:, i * n:(i + 1) * n] = 0.0
                lagged[-first:, i * n:(i + 1) * n] = window[:T - lag]
            else:
                np.copyto(lagged[:, i * n:(i + 1) * n], window[first:T - lag])
        added = self._added[:k]
        np.matmul(lagged, self.delta_weight, out=added)
        added += self.delta_bias
        predictions += added


class SourceAdapter:
    """One stream → the model's EEG (volts, model rate or an integer multiple), see the module
    docstring.

    Args:
        model: the model's fields or ``BrainformerConfig`` (EEG names, positions, fiducials, rate,
            scaling).
        source: the stream's ``SourceDescription`` (:func:`stream_source`).
        options: ``AdaptationOptions`` (:func:`adaptation_options`), None for the defaults.
        max_chunk_samples: initial buffer size of the ``Adapter``.
        amplitude_check_s: seconds of output whose amplitudes are checked (0: no check).
        statistics, full: the model's linear path statistics and their full-cap solution
            (:func:`linear_path_of`); None: the linear path stays the model's (no expected quality).
        min_expected_share: refuse a stream whose expected r is below this share of the full
            cap's (None: no floor).

    Raises:
        AdaptationError: the stream cannot be served (one line).

    State (all of it): the ``Adapter`` (its plan, buffers, resampler state), the plan planned at
    start-up (``base_plan``, re-planned from), the linear path correction and expected quality
    of the plan in use (``correction``, ``quality``), the stream channels asked to be left out
    (``_requested``), the flat-channel monitor and its gather buffer, the amplitude-check
    buffer, the worker thread, ``replans`` and ``last_apply_s`` (duration of the last
    :meth:`apply`, for the ``adapt`` stage timing). Callbacks (set by the pipeline, called from
    the worker thread): ``on_replanned(plan, bad, error)`` after a re-plan (``plan`` None and
    ``error`` set when it was refused) and ``on_amplitude_warning(line)``.
    """

    def __init__(self, model: Any, source: Any, options: Any = None, max_chunk_samples: int = 1024,
                 amplitude_check_s: float = AMPLITUDE_CHECK_S, statistics: Any = None, full: Any = None,
                 min_expected_share: Optional[float] = None) -> None:
        from brainformer.adaptation import Adapter, plan_adaptation
        from brainformer.adaptation.resolve import check_expected_quality

        self.model = model
        self.statistics = statistics
        self._full = full if full is not None or statistics is None else statistics.solve()
        self.base_plan = plan_adaptation(model, source, options)
        #: The linear path of the plan in use: ``(ResolvedLinearPath or None, LinearPathCorrection or None)``,
        #: swapped as one tuple at a re-plan.
        self._path = self._base_path = self._linear_path(self.base_plan)
        if min_expected_share is not None and self.quality is not None:
            check_expected_quality(self.quality, min_expected_share, source.name)
        self.adapter = Adapter(self.base_plan, max_chunk_samples=max_chunk_samples)
        self.source = source
        self.name = source.name
        plan = self.base_plan
        self.channel_names = tuple(plan.model.channel_names)
        self.n_channels = plan.n_model_channels
        self.input_sfreq_hz = float(plan.input_sfreq_hz)
        self.output_sfreq_hz = float(plan.output_sfreq_hz)
        self.decimation = int(plan.decimation)
        #: Stream columns that carry the model's EEG in the start-up plan (watched for flat lines).
        self.monitored_columns = np.ascontiguousarray(plan.used_columns, dtype=np.int64)
        self.monitored_labels = tuple(source.labels[i] for i in self.monitored_columns)
        self._monitored = np.empty((max(1, int(max_chunk_samples)), len(self.monitored_columns)),
                                   dtype=plan.stream_dtype)
        self.flat = FlatChannelMonitor(len(self.monitored_columns),
                                       block_samples=max(1, int(round(self.input_sfreq_hz))))
        self.on_replanned: Optional[Callable[[Any, Tuple[str, ...], Optional[str]], None]] = None
        self.on_amplitude_warning: Optional[Callable[[str], None]] = None
        self.replans = 0
        self.last_apply_s = 0.0
        self._requested: Tuple[str, ...] = ()
        self._worker = _Worker(f"adapt-{source.name}")
        n_check = int(round(amplitude_check_s * self.output_sfreq_hz))
        self._amplitude = np.empty((max(n_check, 1), self.n_channels), dtype=np.float32)
        self._amplitude_filled = 0
        self._amplitude_done = n_check <= 0

    def _linear_path(self, plan: Any) -> Tuple[Any, Optional[LinearPathCorrection]]:
        """The re-solved linear path of ``plan`` and its correction (None where there is nothing
        to correct: no statistics, or the model's own electrodes all there)."""
        if self.statistics is None:
            return None, None
        from brainformer.adaptation.resolve import resolve_linear_path

        path = resolve_linear_path(plan, self.model, self.statistics, self._full)
        return path, None if path.identity else LinearPathCorrection(path, plan.n_model_channels)

    @property
    def plan(self) -> Any:
        """The plan in use (the start-up one, or a re-plan for bad channels)."""
        return self.adapter.plan

    @property
    def linear_path(self) -> Any:
        """The re-solved linear path in use (``ResolvedLinearPath``), None without statistics."""
        return self._path[0]

    @property
    def correction(self) -> Optional[LinearPathCorrection]:
        """What the scheduler adds to this stream's predictions, None when nothing."""
        return self._path[1]

    @property
    def quality(self) -> Any:
        """Expected quality of the cap as it is now (``CapQuality``), None without statistics."""
        path = self._path[0]
        return None if path is None else path.quality

    @property
    def delay_s(self) -> float:
        """The resampler's current hold-back in seconds (0 without resampling)."""
        return self.adapter.delay_s

    @property
    def n_interpolated(self) -> int:
        """Model electrodes the plan in use interpolates (missing, bad or another cap)."""
        return len(self.adapter.plan.interpolated)

    def apply(self, chunk: np.ndarray, timestamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``chunk (n, n_stream_channels)`` + ``timestamps (n,)`` → ``(m, n_model)`` float32 volts
        and the ``(m,)`` timestamps of the EEG instants they represent (views, valid until the
        next call). Raises ``NonFiniteInputError`` (nothing changed) for NaN/Inf."""
        started = time.perf_counter()
        eeg, out_timestamps = self.adapter.apply(chunk, timestamps)
        self._watch(chunk)  # after the NaN check: a NaN chunk never reaches the monitor
        if not self._amplitude_done and eeg.shape[0]:
            self._collect_amplitudes(eeg)
        self.last_apply_s = time.perf_counter() - started
        return eeg, out_timestamps

    def correct(self, window: np.ndarray, predictions: np.ndarray) -> None:
        """Add this stream's linear path correction to ``predictions (k, n_meg)`` (scaled, in
        place), the newest rows predicted from ``window (T, n_eeg)``; nothing when there is none."""
        correction = self._path[1]
        if correction is not None:
            correction.apply(window, predictions)

    def _watch(self, data: np.ndarray) -> None:
        """The stream's EEG columns (raw) into the flat-channel monitor."""
        n = data.shape[0]
        if n > self._monitored.shape[0]:
            self._monitored = np.empty((max(n, 2 * self._monitored.shape[0]), self._monitored.shape[1]),
                                       self._monitored.dtype)
        monitored = self._monitored[:n]
        np.take(data, self.monitored_columns, axis=1, out=monitored)
        self.flat.update(monitored)

    def flat_channel_names(self) -> list:
        """Stream labels of the EEG channels currently flat (see :class:`FlatChannelMonitor`)."""
        return [self.monitored_labels[i] for i in np.flatnonzero(self.flat.flat)]

    def _collect_amplitudes(self, eeg: np.ndarray) -> None:
        k = min(eeg.shape[0], self._amplitude.shape[0] - self._amplitude_filled)
        np.copyto(self._amplitude[self._amplitude_filled:self._amplitude_filled + k], eeg[:k])
        self._amplitude_filled += k
        if self._amplitude_filled == self._amplitude.shape[0]:
            self._amplitude_done = True
            self._worker.submit(self._check_amplitudes)

    def _check_amplitudes(self) -> None:
        warning = self.base_plan.amplitude_warning(self._amplitude)
        if warning and self.on_amplitude_warning is not None:
            self.on_amplitude_warning(warning)

    def request_bad_channels(self, labels: Sequence[str]) -> bool:
        """Leave these stream channels out (their model electrodes interpolated, the linear path
        re-solved without them) from a chunk soon on; ``()`` restores the start-up plan.
        Re-planned in the worker thread, swapped in between two chunks. False when this set is
        already the one asked for."""
        wanted = tuple(labels)
        if wanted == self._requested:
            return False
        self._requested = wanted
        self._worker.submit(lambda: self._replan(wanted))
        return True

    def _replan(self, bad: Tuple[str, ...]) -> None:
        from brainformer.adaptation import AdaptationError

        if bad != self._requested:  # a newer request supersedes this one
            return
        try:
            plan = self.base_plan.with_bad_channels(bad) if bad else self.base_plan
            path = self._linear_path(plan) if bad else self._base_path
        except AdaptationError as error:
            if self.on_replanned is not None:
                self.on_replanned(None, bad, str(error))
            return
        self.adapter.set_plan(plan)
        self._path = path  # one assignment: the serving thread sees the old pair or the new one
        self.replans += 1
        if self.on_replanned is not None:
            self.on_replanned(plan, bad, None)

    def non_finite_channels(self) -> list:
        """Stream labels of the used channels holding NaN/Inf in the last chunk."""
        return self.adapter.non_finite_channels()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait for pending re-plans and checks (tests)."""
        return self._worker.wait_idle(timeout_s)

    def reset(self) -> None:
        """After a gap: the resampler starts afresh and the flat monitor starts a new block (the
        plan stays)."""
        self.adapter.reset()
        self.flat.reset()

    def close(self) -> None:
        self._worker.close()
