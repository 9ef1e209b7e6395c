"""Source adaptation stage: whatever a live stream sends → the model's EEG, in volts, at its rate.

The work is done by the torch-free library :mod:`brainformer.adaptation` (units, channel
matching and channel map, interpolation of missing or bad electrodes from their positions, another
cap, streaming resampling (libsamplerate linear or soxr QQ) with the timestamps of the EEG instants). This module is the daemon's side
of it:

- :func:`stream_source`: the :class:`~brainformer.adaptation.SourceDescription` of an opened
  inlet, from its full XML meta-data (positions included);
- :class:`SourceAdapter`: planned once when the stream opens (:func:`plan_adaptation`; an
  :class:`~brainformer.adaptation.AdaptationError` is a one-line refusal, exit code 2), applied
  per chunk without allocation (:class:`~brainformer.adaptation.Adapter`), re-planned OFF the hot
  path when stream channels go bad or recover (:meth:`SourceAdapter.request_bad_channels`, one
  worker thread; the new plan is swapped in between two chunks, so the output has no gap), and
  the amplitudes of the first seconds checked against the declared unit (in that thread too).

"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["IncompatibleStreamError", "SourceAdapter", "stream_source", "adaptation_options", "AMPLITUDE_CHECK_S"]

class IncompatibleStreamError(ValueError):
    """A stream the model cannot serve (channels, rate, format, units); the message is one line."""


# ----------------------------------------------------------------------------------------------
# The stage: the adaptation library, planned at start-up, re-planned off the hot path
# ----------------------------------------------------------------------------------------------
#: Seconds of adapted EEG (model rate) whose amplitudes are checked against the declared unit.
AMPLITUDE_CHECK_S = 2.0


def adaptation_options(channel_map: Optional[str] = None, montage: Optional[str] = None,
                       input_unit: Optional[str] = None, max_missing_fraction: float = 0.25) -> Any:
    """The user's adaptation choices (``serve``/``check`` options) as ``AdaptationOptions``; a
    montage given by name or file is loaded once here, so an unknown one is refused before any
    stream is awaited. Raises ``AdaptationError`` (one line)."""
    from brainformer.adaptation import AdaptationOptions, load_montage

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
        "warnings": list(plan.warnings),
    }


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


class SourceAdapter:
    """One stream → the model's EEG (volts, model rate or an integer multiple), see the module
    docstring.

    Args:
        model: the model's fields or ``BrainformerConfig`` (EEG names, positions, rate).
        source: the stream's ``SourceDescription`` (:func:`stream_source`).
        options: ``AdaptationOptions`` (:func:`adaptation_options`), None for the defaults.
        max_chunk_samples: initial buffer size of the ``Adapter``.
        amplitude_check_s: seconds of output whose amplitudes are checked (0: no check).

    Raises:
        AdaptationError: the stream cannot be served (one line).

    State (all of it): the ``Adapter`` (its plan, buffers, resampler state), the plan planned at
    start-up (``base_plan``, re-planned from), the stream channels asked to be left out
    (``_requested``), the amplitude-check buffer, the worker thread, ``replans`` and
    ``last_apply_s`` (duration of the last :meth:`apply`, for the ``adapt`` stage timing).
    Callbacks (set by the pipeline, called from the worker thread): ``on_replanned(plan, bad,
    error)`` after a re-plan (``plan`` None and ``error`` set when it was refused) and
    ``on_amplitude_warning(line)``.
    """

    def __init__(self, model: Any, source: Any, options: Any = None, max_chunk_samples: int = 1024,
                 amplitude_check_s: float = AMPLITUDE_CHECK_S) -> None:
        from brainformer.adaptation import Adapter, plan_adaptation

        self.base_plan = plan_adaptation(model, source, options)
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

    @property
    def plan(self) -> Any:
        """The plan in use (the start-up one, or a re-plan for bad channels)."""
        return self.adapter.plan

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
        if not self._amplitude_done and eeg.shape[0]:
            self._collect_amplitudes(eeg)
        self.last_apply_s = time.perf_counter() - started
        return eeg, out_timestamps

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
        """Leave these stream channels out (their model electrodes interpolated) from a chunk
        soon on; ``()`` restores the start-up plan. Re-planned in the worker thread, swapped in
        between two chunks. False when this set is already the one asked for."""
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
        except AdaptationError as error:
            if self.on_replanned is not None:
                self.on_replanned(None, bad, str(error))
            return
        self.adapter.set_plan(plan)
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
        """After a gap: the resampler starts afresh (the plan stays)."""
        self.adapter.reset()

    def close(self) -> None:
        self._worker.close()
