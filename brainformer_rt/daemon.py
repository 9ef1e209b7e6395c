"""The serve daemon: live EEG streams in, predicted MEG out on LSL and ZeroMQ.

Pipeline per stream (one module per stage)::

    EEGInlet ─► GapDetector ─► EEGPreprocessStage ─► RingBuffer ─► Windower ─┐
    (pull)       (reset on gap)  (re-order + filters)  (preprocessed) (hop/skip) │
                                                                               ▼
                          LSLPublisher / ZMQPublisher ◄─ un-scale ◄─ Engine.infer (batched)

Preprocessing runs before the ring buffer so that every input sample is filtered exactly once,
in order (the filters are stateful); the ring buffer therefore holds model-ready samples and
the newest window is a view of it.

Loop design
-----------
- **One stream**: everything runs in the main thread. ``pull`` blocks in liblsl until the
  first new sample arrives (``min_samples=1``) and returns everything available; the window is
  served at once. No thread hand-off, no polling sleep: the lowest latency pylsl offers. The
  pull timeout (``pull_timeout_s``) only bounds how long a stop request waits.
- **Several streams**: one pull thread per stream runs inlet → preprocessing → ring buffer →
  windower; when a window is due it copies it into the stream's hand-off slot under one shared
  condition lock and notifies the main thread. The main thread takes every pending slot at
  once, runs them as one batched forward (padded to the engine's static bucket sizes so CUDA
  graphs still apply) and publishes each stream's predictions on its own outlet/topic. A slow or
  dead stream only blocks its own thread's pull, never the others. Windows of one stream that
  become due while the previous one still waits in the slot replace it (counted as skipped):
  nothing queues. Threads rather than non-blocking polling because polling needs a sleep,
  which costs more latency than a thread wake-up (see the platform notes: 0.8/1.5 ms vs
  0.5/0.65 ms median/p99 for LSL alone).

Gaps: a jump between consecutive input timestamps larger than ``gap_threshold_s`` (or backwards)
means samples were lost or the source restarted. The stream is reset: the preprocessor forgets
its filter state, the ring buffer and windower start over, and nothing is published until a
fresh full window has arrived after the gap — a prediction never uses a window that spans a gap.
Gaps and the estimated missing samples are counted. Samples that arrived in the same pull just
before a gap are not processed (their windows would be stale anyway: only the newest window is
ever served). A chunk holding NaN/Inf is dropped and handled the same way (counted in
``nan_chunks``); a prediction holding NaN/Inf is not published (counted in ``nan_windows``).

Staleness: a due window whose newest sample is older than ``max_input_age_s`` (input that
arrived late, e.g. a backlog after a reconnect) is not served; it is counted in
``windows_stale``.

Signals: SIGINT/SIGTERM stop the daemon within ~``pull_timeout_s``. Before serving starts
(waiting for a stream, loading the model, warm-up/compile) the signal interrupts that work at
once. Either way the outputs are closed, the statistics printed, and the exit code is 0.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from brainformer_rt.metrics import ServeMetrics, StreamCounters, json_ready, summary_table

logger = logging.getLogger("brainformer_rt.daemon")

__all__ = ["ServeSettings", "SettingsError", "load_settings", "build_settings", "Daemon", "serve_command",
           "run_serve", "unscale_meg_into", "StreamPipeline",
           "ServeInterrupted", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1  # a stream that never appeared, or an error while serving
EXIT_USAGE = 2  # bad settings, model, or a stream the model cannot serve

DEFAULT_ZMQ_ADDRESS = "tcp://127.0.0.1:5556"
DEFAULT_LSL_NAME = "brainformer-meg"


# ==============================================================================================
# Settings
# ==============================================================================================
class SettingsError(ValueError):
    """A serve setting that cannot be used; the message names the key (and the file)."""


@dataclass
class ServeSettings:
    """Everything ``serve`` needs; loaded from TOML (``configs/serve.toml``), CLI flags override.

    Optional keys (``Optional[...]``) are left out of the TOML file for their default.

    Attributes:
        streams: LSL stream names (or types) of the EEG; one daemon serves them all.
        model: model directory, or ``default`` for the bundled model.
        zmq: ZeroMQ PUB address; ``""`` (CLI ``--no-zmq``) disables ZeroMQ.
        lsl_name: name of the output LSL stream; with several streams each output is named
            ``<lsl_name>-<stream>``. ``""`` disables the LSL output.
        hop_samples: new (model-rate) samples between two predictions; default: the model's.
        device: ``auto`` (cuda when available) | ``cpu`` | ``cuda``.
        engine: ``auto`` (cuda-graph on CUDA, eager on CPU) | ``eager`` | ``compile`` | ``cuda-graph``.
        batch_size: windows per forward; default: the number of streams.
        duration_s: stop after this many seconds of serving (``inf``: until SIGINT/SIGTERM).
        warmup_s: timings and latencies of the first seconds of serving are forgotten (counters
            are kept); the engine's own warm-up before serving never counts.
        wait_s: give up when a stream has not appeared after this many seconds (``inf``: wait).
        pull_timeout_s: longest blocking pull; bounds how long a stop request waits.
        max_input_age_s: a due window whose newest sample is older than this is dropped as stale.
        gap_threshold_s: a step between input timestamps above this is a gap (stream reset).
        max_chunk_samples: most samples one pull returns (the inlet's buffer).
        stats_interval_s: seconds between two progress log lines (``inf``: none).
        metrics_port: Prometheus metrics on 127.0.0.1:PORT (not available yet).
        log_format: ``text`` | ``json`` (one JSON object per line).
        log_level: ``debug`` | ``info`` | ``warning`` | ``error``.
        zmq_curve_keys: directory of ZeroMQ CURVE keys.
        stats_json: write the final statistics to this JSON file.
        torch_threads: threads for CPU inference (default: torch's choice).
    """

    streams: List[str] = field(default_factory=list)
    model: str = "default"
    zmq: str = DEFAULT_ZMQ_ADDRESS
    lsl_name: str = DEFAULT_LSL_NAME
    hop_samples: Optional[int] = None
    device: str = "auto"
    engine: str = "auto"
    batch_size: Optional[int] = None
    duration_s: float = math.inf
    warmup_s: float = 0.0
    wait_s: float = math.inf
    pull_timeout_s: float = 0.1
    max_input_age_s: float = 0.5
    gap_threshold_s: float = 0.1
    max_chunk_samples: int = 4096
    stats_interval_s: float = 10.0
    metrics_port: Optional[int] = None
    log_format: str = "text"
    log_level: str = "info"
    zmq_curve_keys: Optional[str] = None
    stats_json: Optional[str] = None
    torch_threads: Optional[int] = None

    def validate(self, source: str = "settings") -> "ServeSettings":
        """Check every value; raises :class:`SettingsError` naming the key. Returns self."""
        hints = typing.get_type_hints(ServeSettings)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f"{source}: {f.name}", hints[f.name], getattr(self, f.name)))

        def require(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise SettingsError(f"{source}: {key} = {getattr(self, key)!r} is invalid: expected {allowed}")

        require(all(s.strip() for s in self.streams), "streams", "non-empty stream names")
        require(len(set(self.streams)) == len(self.streams), "streams", "each stream only once")
        require(bool(self.model), "model", "a model directory or 'default'")
        require(self.zmq == "" or "://" in self.zmq, "zmq", "a ZeroMQ address like tcp://127.0.0.1:5556, or ''")
        if not self.zmq and not self.lsl_name:
            raise SettingsError(f"{source}: zmq and lsl_name are both empty: the predictions would go nowhere")
        require(self.hop_samples is None or self.hop_samples >= 1, "hop_samples", "an integer >= 1")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
                "auto, cpu, cuda or cuda:N")
        require(self.engine in ("auto", "eager", "compile", "cuda-graph"), "engine", "auto, eager, compile or cuda-graph")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", "an integer >= 1")
        require(self.duration_s > 0, "duration_s", "seconds > 0 (inf: until stopped)")
        require(0 <= self.warmup_s < math.inf, "warmup_s", "seconds >= 0")
        require(self.wait_s > 0, "wait_s", "seconds > 0 (inf: wait forever)")
        require(0 < self.pull_timeout_s <= 0.5, "pull_timeout_s", "seconds in (0, 0.5]")
        require(self.max_input_age_s > 0, "max_input_age_s", "seconds > 0 (inf: never stale)")
        require(self.gap_threshold_s > 0, "gap_threshold_s", "seconds > 0")
        require(self.max_chunk_samples >= 1, "max_chunk_samples", "an integer >= 1")
        require(self.stats_interval_s > 0, "stats_interval_s", "seconds > 0 (inf: no progress lines)")
        require(self.metrics_port is None or 1 <= self.metrics_port <= 65535, "metrics_port", "a port 1-65535")
        require(self.log_format in ("text", "json"), "log_format", "text or json")
        require(self.log_level in ("debug", "info", "warning", "error"), "log_level", "debug, info, warning or error")
        require(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", "an integer >= 1")
        return self


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " (or left out)"
    if origin in (list, List):
        return "a list of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` checked against the annotation ``tp``; ints are accepted where numbers are."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(name, inner, value)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
        return [str(v) for v in value]
    if isinstance(value, Path) and tp is str:
        return str(value)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)  # `true` is a mistake, not 1
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise SettingsError(f"{name} = {value!r} is invalid: expected {_type_name(tp)}")
    return float(value) if tp is float else value


def load_settings(path: Optional[Path]) -> Dict[str, Any]:
    """The key → value table of a serve TOML file (checked for unknown keys, not yet for types)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"serve config {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"serve config {path} is not valid TOML: {error}") from None
    known = {f.name for f in dataclasses.fields(ServeSettings)}
    for key, value in table.items():
        if key not in known:
            hint = " (sections are not used: all keys are top-level)" if isinstance(value, dict) else ""
            raise SettingsError(f"serve config {path}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(known))}")
    return table


def build_settings(config_file: Optional[Path] = None, **cli: Any) -> ServeSettings:
    """Defaults ← TOML file ← CLI flags (those not None). CLI names are the ``serve`` options:
    ``stream, model, zmq, no_zmq, lsl_name, hop, device, engine, duration, wait, metrics_port,
    log_format, zmq_curve_keys, stats_json, torch_threads``."""
    values = load_settings(config_file)
    cli_to_key = {"stream": "streams", "hop": "hop_samples", "duration": "duration_s", "wait": "wait_s"}
    for name, value in cli.items():
        if name == "no_zmq":
            continue
        key = cli_to_key.get(name, name)
        if key not in {f.name for f in dataclasses.fields(ServeSettings)}:
            raise SettingsError(f"unknown serve option {name!r}")
        if value is None or (key == "streams" and not value):
            continue
        values[key] = list(value) if key == "streams" else value
    if cli.get("no_zmq"):
        values["zmq"] = ""
    source = f"serve config {config_file}" if config_file is not None else "serve options"
    try:
        settings = ServeSettings(**values)
    except TypeError as error:  # pragma: no cover - unknown keys are caught above
        raise SettingsError(f"{source}: {error}") from None
    settings.validate(source)
    if not settings.streams:
        raise SettingsError("no EEG stream given: use --stream NAME (repeat for several) or streams = [...] in the config")
    return settings


# ==============================================================================================
# Logging
# ==============================================================================================
class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``{time, level, logger, message, ...extra}``."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(json_ready(entry), default=str)


_log_handler: Optional[logging.Handler] = None


def configure_logging(log_format: str, log_level: str) -> None:
    """Log lines on stderr (``text`` or one JSON object per line); replaces only the handler a
    previous call installed, so an embedding application keeps its own."""
    global _log_handler
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    root.addHandler(handler)
    _log_handler = handler
    root.setLevel(getattr(logging, log_level.upper()))


def _remove_log_handler() -> None:
    global _log_handler
    if _log_handler is not None:
        logging.getLogger().removeHandler(_log_handler)
        _log_handler = None


# ==============================================================================================
# Stop requests
# ==============================================================================================
class ServeInterrupted(BaseException):
    """SIGINT/SIGTERM arrived before serving started (a BaseException: nothing may swallow it)."""


class StopRequest:
    """SIGINT/SIGTERM handling: sets :attr:`event`; while :attr:`interrupt` is True (set-up),
    the handler also raises :class:`ServeInterrupted` so blocking set-up work ends at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupt = True
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. in tests)
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        already = self.event.is_set()
        self.event.set()
        if self.interrupt and not already:
            raise ServeInterrupted(self.signal_name)

    def is_set(self) -> bool:
        return self.event.is_set()


# ==============================================================================================
# One stream
# ==============================================================================================
class StreamPipeline:
    """One served stream: inlet → gap check → preprocessing → ring buffer → windower → sinks.

    Args:
        key: the stream as given in the settings (``--stream``); names metrics and outputs.
        inlet: an open ``EEGInlet``.
        stage: its ``EEGPreprocessStage`` (validated against the model).
        window_samples, hop_samples: model window and serving hop (model-rate samples).
        gap_threshold_s: see :class:`~brainformer_rt.preprocess.GapDetector`.
        counters: this stream's ``StreamCounters`` in the daemon's metrics.
        publishers: sinks; each has ``publish(data (n, n_meg), timestamps (n,))`` and ``close()``.

    State (all of it): the inlet, preprocessing, ring buffer and windower state, the gap
    detector, and the hand-off slot (``pending_*``, used with several streams, guarded by the
    daemon's condition lock).
    """

    def __init__(self, key: str, inlet: Any, stage: Any, window_samples: int, hop_samples: int,
                 gap_threshold_s: float, counters: StreamCounters, publishers: Sequence[Any],
                 n_output_channels: int) -> None:
        from brainformer_rt.preprocess import GapDetector
        from brainformer_rt.ring_buffer import RingBuffer
        from brainformer_rt.windower import Windower

        self.key = key
        self.inlet = inlet
        self.stage = stage
        self.window_samples = window_samples
        self.counters = counters
        self.publishers = list(publishers)
        self.ring = RingBuffer(max(4 * window_samples, 1024), stage.n_channels)
        self.windower = Windower(window_samples, hop_samples)
        self.gaps = GapDetector(stage.input_sfreq_hz, gap_threshold_s, inlet.max_chunk_samples)
        self.physical = np.empty((window_samples, n_output_channels), dtype=np.float32)  # un-scaled output rows
        self.pending_window = np.empty((window_samples, stage.n_channels), dtype=np.float32)
        self.pending_timestamps = np.empty(window_samples, dtype=np.float64)
        self.pending_publish = 0  # > 0: a window waits in the slot, publishing this many samples
        self.failed: Optional[BaseException] = None
        self._started = False

    # -- input ------------------------------------------------------------------------------------
    def ingest(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Check, preprocess and buffer one pulled chunk ``(n, n_stream_channels)``, ``(n,)``."""
        from brainformer.preprocessing import NonFiniteInputError

        counters = self.counters
        n = timestamps.shape[0]
        counters.samples_in += n
        if not self._started:
            self._started = True
            counters.first_timestamp = float(timestamps[0])
            self.gaps.check(timestamps)
        else:
            start = self.gaps.check(timestamps)
            if start >= 0:
                counters.gaps += 1
                counters.gap_samples += self.gaps.missing_samples
                logger.warning("stream %r: gap of %+.3f s in the input timestamps (~%d samples missing); "
                               "resetting, next prediction after a full window", self.key, self.gaps.last_step_s,
                               self.gaps.missing_samples, extra={"stream": self.key, "gaps": counters.gaps})
                self.reset()
                data, timestamps = data[start:], timestamps[start:]
                counters.last_reset_timestamp = float(timestamps[0])
        try:
            out, out_timestamps = self.stage.process(data, timestamps)
        except NonFiniteInputError:
            counters.nan_chunks += 1
            logger.warning("stream %r: %d samples with NaN/Inf dropped; resetting", self.key, n,
                           extra={"stream": self.key, "nan_chunks": counters.nan_chunks})
            self.reset()
            return
        self.ring.write(out, out_timestamps)
        counters.samples_preprocessed += out.shape[0]
        counters.reconnects = getattr(self.inlet, "reconnects", counters.reconnects)

    def poll(self) -> int:
        """Samples to publish if a window is due now (see :class:`~brainformer_rt.windower.Windower`), else 0."""
        n_publish = self.windower.poll(self.ring.total_written)
        if n_publish:
            self._sync_window_counters()
        return n_publish

    def drop_window(self, n_publish: int, stale: bool) -> None:
        """The window just returned by :meth:`poll` is not served."""
        self.windower.drop(n_publish)
        if stale:
            self.counters.windows_stale += 1
        self._sync_window_counters()

    def _sync_window_counters(self) -> None:
        self.counters.windows_served = self.windower.windows_served
        self.counters.windows_skipped = self.windower.windows_skipped
        self.counters.samples_unpublished = self.windower.samples_unpublished

    def reset(self) -> None:
        """Start over after a gap: fresh filter state, empty buffer, wait for a full window."""
        self.stage.reset()
        self.ring.clear()
        self.windower.reset(self.ring.total_written)

    def close(self) -> None:
        for publisher in self.publishers:
            try:
                publisher.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                logger.exception("stream %r: closing %s failed", self.key, type(publisher).__name__)
        try:
            self.inlet.close()
        except Exception:  # noqa: BLE001
            logger.exception("stream %r: closing the inlet failed", self.key)


# ==============================================================================================
# The daemon
# ==============================================================================================
def unscale_meg_into(scaled: np.ndarray, meg_mean: Optional[np.ndarray], meg_std: Optional[np.ndarray],
                     work: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Scaled ``(n, n_meg)`` float32 → physical units (T, T/m) into ``out`` ``(n, n_meg)`` float32.

    The same arithmetic as ``brainformer.preprocessing.unscale_meg`` (float64 ``x * std + mean``,
    then float32), without allocating: ``work`` is a float64 buffer with at least ``n`` rows.
    ``meg_std`` None means the model has no scaling statistics (identity).
    """
    if meg_std is None:
        np.copyto(out, scaled)
        return out
    rows = work[: scaled.shape[0]]
    np.multiply(scaled, meg_std, out=rows)
    np.add(rows, meg_mean, out=rows)
    np.copyto(out, rows, casting="same_kind")
    return out


class Daemon:
    """Serves ``pipelines`` with one model ``engine`` until stopped.

    Args:
        pipelines: the streams (see :class:`StreamPipeline`).
        engine: a set-up engine (``engine.batch_size >= 1``; with more streams than the batch
            size, pending windows are served in several forwards).
        meg_mean, meg_std: ``(n_meg,)`` float64 un-scaling statistics, or None (identity).
        settings: the serve settings (timeouts, staleness, duration).
        metrics: where everything is counted and timed.
        stop: the stop request (signals).
    """

    def __init__(self, pipelines: Sequence[StreamPipeline], engine: Any, meg_mean: Optional[np.ndarray],
                 meg_std: Optional[np.ndarray], settings: ServeSettings, metrics: ServeMetrics, stop: StopRequest,
                 clock=None) -> None:
        if clock is None:
            import pylsl

            clock = pylsl.local_clock
        self.clock = clock
        self.pipelines = list(pipelines)
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.window_samples = engine.window_samples
        self._meg_mean = meg_mean
        self._meg_std = meg_std
        n_out = engine.n_output_channels
        # (batch, T, n_meg) predictions of one forward, (batch, T) timestamps of its windows.
        self._predictions = np.empty((engine.batch_size, self.window_samples, n_out), dtype=np.float32)
        self._batch_timestamps = np.empty((engine.batch_size, self.window_samples), dtype=np.float64)
        self._unscale_work = np.empty((self.window_samples, n_out), dtype=np.float64)
        self._cond = threading.Condition()
        self._next_progress = 0.0
        self._end = math.inf
        self._warmup_end: Optional[float] = None

    # -- shared: forward + publish ------------------------------------------------------------------
    def _serve_batch(self, items: List[Tuple[StreamPipeline, int, np.ndarray]]) -> None:
        """Windows are in ``engine.input_buffer[:k]``; ``items[i] = (pipeline, n_publish,
        timestamps (T,))`` for row ``i``. Forward once, then un-scale and publish each row's newest
        ``n_publish`` samples with their input timestamps."""
        k = len(items)
        started = time.perf_counter()
        predictions = self.engine.infer(self.engine.input_buffer[:k], out=self._predictions[:k])
        forwarded = time.perf_counter()
        self.metrics.add_forward(forwarded - started, k)
        T = self.window_samples
        for row, (pipeline, n_publish, timestamps) in enumerate(items):
            scaled = predictions[row, T - n_publish:]  # (n_publish, n_meg)
            if not math.isfinite(float(scaled.sum())):
                # Counted as served (the forward ran) and as a NaN window; nothing is published.
                pipeline.counters.nan_windows += 1
                logger.warning("stream %r: the model predicted NaN/Inf; window not published", pipeline.key,
                               extra={"stream": pipeline.key, "nan_windows": pipeline.counters.nan_windows})
                continue
            physical = self._unscale(scaled, pipeline.physical[:n_publish])
            out_timestamps = timestamps[T - n_publish:]
            for publisher in pipeline.publishers:
                if publisher.publish(physical, out_timestamps) is False:
                    pipeline.counters.zmq_drops += 1
            self.metrics.add_e2e(pipeline.key, self.clock() - float(timestamps[-1]))
            pipeline.counters.samples_published += n_publish
        self.metrics.add_stage("publish", time.perf_counter() - forwarded)

    def _unscale(self, scaled: np.ndarray, out: np.ndarray) -> np.ndarray:
        return unscale_meg_into(scaled, self._meg_mean, self._meg_std, self._unscale_work, out)

    def _is_stale(self, pipeline: StreamPipeline, newest_timestamp: float) -> bool:
        return self.clock() - newest_timestamp > self.settings.max_input_age_s

    def _pull_and_ingest(self, pipeline: StreamPipeline) -> bool:
        """One blocking pull (and a drain when the inlet buffer was full); True when data came."""
        inlet = pipeline.inlet
        data, timestamps = inlet.pull(self.settings.pull_timeout_s)
        if timestamps.shape[0] == 0:
            return False
        pulled = time.perf_counter()
        # Transport: newest sample pushed (its timestamp) → we hold it.
        self.metrics.add_stage("pull", self.clock() - float(timestamps[-1]))
        try:
            pipeline.ingest(data, timestamps)
            while timestamps.shape[0] == inlet.max_chunk_samples:  # more may be waiting
                data, timestamps = inlet.pull(0.0)
                if timestamps.shape[0]:
                    pipeline.ingest(data, timestamps)
        except Exception:  # noqa: BLE001 - a broken chunk resets the stream, never kills the daemon
            logger.exception("stream %r: preprocessing failed; resetting the stream", pipeline.key)
            pipeline.reset()
            return True
        self.metrics.add_stage("preprocess", time.perf_counter() - pulled)
        return True

    def _progress(self) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self.settings.stats_interval_s
        for key, counters in self.metrics.streams.items():
            recent = self.metrics.e2e[key].recent(1024)
            p99 = float(np.percentile(recent, 99.0)) * 1e3 if recent.size else math.nan
            logger.info("stream %r: %d windows served, %d skipped, %d gaps; e2e p99 %.3f ms (last %d)",
                        key, counters.windows_served, counters.windows_skipped, counters.gaps, p99, recent.size,
                        extra={"stream": key, "windows_served": counters.windows_served,
                               "windows_skipped": counters.windows_skipped, "gaps": counters.gaps,
                               "e2e_p99_ms": p99})

    # -- loops --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until a stop request or ``duration_s``."""
        self.metrics.clock = self.clock
        self.metrics.started_at = self.metrics.timings_started_at = self.clock()
        self._end = time.monotonic() + self.settings.duration_s
        self._warmup_end = time.monotonic() + self.settings.warmup_s if self.settings.warmup_s > 0 else None
        self._next_progress = time.monotonic() + self.settings.stats_interval_s
        try:
            if len(self.pipelines) == 1:
                self._run_single(self.pipelines[0])
            else:
                self._run_many()
        finally:
            self.metrics.stopped_at = self.clock()

    def _running(self) -> bool:
        if self._warmup_end is not None and time.monotonic() >= self._warmup_end:
            self._warmup_end = None
            self.metrics.reset_timings()
            logger.info("warm-up of %g s over: timings from now on", self.settings.warmup_s)
        return not self.stop.is_set() and time.monotonic() < self._end

    def _run_single(self, pipeline: StreamPipeline) -> None:
        """Everything in this thread: blocking pull → preprocess → window → forward → publish."""
        input_buffer = self.engine.input_buffer
        while self._running():
            if not self._pull_and_ingest(pipeline):
                continue
            n_publish = pipeline.poll()
            if n_publish:
                window, timestamps = pipeline.ring.latest(self.window_samples)
                if self._is_stale(pipeline, float(timestamps[-1])):
                    pipeline.drop_window(n_publish, stale=True)
                    continue
                np.copyto(input_buffer[0], window)
                # The ring is not written again before publishing: its timestamp view stays valid.
                self._serve_batch([(pipeline, n_publish, timestamps)])
                self._progress()

    def _run_many(self) -> None:
        """Pull threads fill hand-off slots; this thread batches pending windows into one forward."""
        threads = [threading.Thread(target=self._pull_loop, args=(p,), name=f"pull-{p.key}", daemon=True)
                   for p in self.pipelines]
        for thread in threads:
            thread.start()
        try:
            batch = self.engine.batch_size
            input_buffer = self.engine.input_buffer
            while self._running():
                with self._cond:
                    if not any(p.pending_publish for p in self.pipelines):
                        self._cond.wait(self.settings.pull_timeout_s)
                    pending = [p for p in self.pipelines if p.pending_publish]
                    items = []
                    for row, pipeline in enumerate(pending[:batch]):
                        np.copyto(input_buffer[row], pipeline.pending_window)
                        np.copyto(self._batch_timestamps[row], pipeline.pending_timestamps)
                        items.append((pipeline, pipeline.pending_publish, self._batch_timestamps[row]))
                        pipeline.pending_publish = 0
                if items:
                    self._serve_batch(items)
                    self._progress()
                if all(p.failed is not None for p in self.pipelines):
                    raise RuntimeError("every stream failed: " + "; ".join(f"{p.key}: {p.failed}" for p in self.pipelines))
        finally:
            self.stop.event.set()
            for thread in threads:
                thread.join(timeout=2.0)

    def _pull_loop(self, pipeline: StreamPipeline) -> None:
        """Pull thread of one stream (several-stream mode)."""
        T = self.window_samples
        try:
            while self._running():
                if not self._pull_and_ingest(pipeline):
                    continue
                n_publish = pipeline.poll()
                if not n_publish:
                    continue
                window, timestamps = pipeline.ring.latest(T)
                if self._is_stale(pipeline, float(timestamps[-1])):
                    pipeline.drop_window(n_publish, stale=True)
                    continue
                with self._cond:
                    if pipeline.pending_publish:
                        # The previous window was not taken yet: this newer one replaces it.
                        n_publish = pipeline.windower.supersede(pipeline.pending_publish, n_publish)
                        pipeline._sync_window_counters()
                    np.copyto(pipeline.pending_window, window)
                    np.copyto(pipeline.pending_timestamps, timestamps)
                    pipeline.pending_publish = n_publish
                    self._cond.notify()
        except Exception as error:  # noqa: BLE001 - one stream's failure must not stop the others
            pipeline.failed = error
            logger.exception("stream %r: pull thread stopped", pipeline.key, extra={"stream": pipeline.key})


# ==============================================================================================
# serve_command: settings → model → streams → outputs → loop → stats
# ==============================================================================================
class _UsageError(Exception):
    """Reported as one line with exit code 2."""


class _Failure(Exception):
    """Reported as one line with exit code 1."""


def _output_names(settings: ServeSettings) -> Dict[str, Tuple[str, bytes]]:
    """stream → (LSL output name, ZeroMQ topic)."""
    if len(settings.streams) == 1:
        return {settings.streams[0]: (settings.lsl_name, b"meg")}
    return {s: (f"{settings.lsl_name}-{s}", f"meg/{s}".encode()) for s in settings.streams}


def _load(settings: ServeSettings):
    """Model + its config; errors become one-line usage errors."""
    from brainformer.model_dir import load_model

    try:
        model = load_model(settings.model, device="cpu")
    except ValueError as error:  # ModelDirError and config validation
        raise _UsageError(str(error)) from None
    except FileNotFoundError as error:
        raise _UsageError(f"model {settings.model!r}: {error}") from None
    config = model.config
    if getattr(config, "head", "regression") != "regression":
        raise _UsageError(f"model {settings.model!r} has head {config.head!r}; serve needs a regression-head model")
    return model, config


def serve_command(**options: Any) -> None:
    """CLI ``serve``: see ``brainformer-rt serve --help``; exits 0 after a stop, 1 on failure,
    2 on unusable settings, model or stream."""
    import typer
    from rich.console import Console

    console = Console(highlight=False, markup=False)
    err_console = Console(stderr=True, highlight=False, markup=False)
    config_file = options.pop("config_file", None)
    try:
        settings = build_settings(config_file, **options)
    except SettingsError as error:
        err_console.print(f"error: {error}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    configure_logging(settings.log_format, settings.log_level)
    try:
        code = run_serve(settings, console, err_console)
    finally:
        _remove_log_handler()
        # Everything is closed and printed; the process exits next. Python's final garbage
        # collections walk every object torch and transformers created (~2 s on 2 busy cores);
        # frozen objects are skipped, so a stop request ends the process well within a second.
        gc.freeze()
    if code:
        raise typer.Exit(code)


class _Resources:
    """What has been opened so far, so that a failure or a signal at any point closes it."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.inlets: Dict[str, Any] = {}
        self.publishers: List[Any] = []  # not yet owned by a pipeline
        self.zmq_publisher: Any = None  # one PUB socket for every stream (one topic each)
        self.resolvers: List[Any] = []
        self.pipelines: List[StreamPipeline] = []

    def close(self) -> None:
        for resolver in self.resolvers:
            resolver.close()
        for pipeline in self.pipelines:
            pipeline.close()
        owned = {id(p.inlet) for p in self.pipelines}
        for inlet in self.inlets.values():
            if id(inlet) not in owned:
                inlet.close()
        for publisher in self.publishers:
            publisher.close()
        if self.zmq_publisher is not None:
            self.zmq_publisher.close()
        if self.engine is not None:
            self.engine.close()


def run_serve(settings: ServeSettings, console: Any, err_console: Any) -> int:
    """Run the daemon with validated ``settings``; returns the exit code."""
    stop = StopRequest()
    stop.install()
    metrics = ServeMetrics(settings.streams)
    resources = _Resources()
    code = EXIT_OK
    try:
        try:
            _prepare(settings, metrics, stop, console, resources)
            stop.interrupt = False
            if stop.is_set():
                raise ServeInterrupted(stop.signal_name or "stop")
            engine, pipelines = resources.engine, resources.pipelines
            meg_mean = meg_std = None
            config = engine.model.config
            if getattr(config, "meg_std", None) is not None:
                meg_mean = np.asarray(config.meg_mean, dtype=np.float64)
                meg_std = np.asarray(config.meg_std, dtype=np.float64)
            daemon = Daemon(pipelines, engine, meg_mean, meg_std, settings, metrics, stop)
            names = ", ".join(repr(p.key) for p in pipelines)
            console.print(f"serving {names} with engine {engine.kind} on {engine.device} "
                          f"(hop {pipelines[0].windower.hop_samples} samples); stop with Ctrl-C", soft_wrap=True)
            daemon.run()
        except ServeInterrupted:
            pass
        finally:
            stop.interrupt = False
    except _UsageError as error:
        err_console.print(f"error: {error}", markup=False, soft_wrap=True)
        code = EXIT_USAGE
    except _Failure as error:
        err_console.print(f"error: {error}", markup=False, soft_wrap=True)
        code = EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - one line for the user, the traceback in the log
        logger.debug("serve failed", exc_info=True)
        err_console.print(f"error: {type(error).__name__}: {error}", markup=False, soft_wrap=True)
        code = EXIT_FAILURE
    finally:
        resources.close()
        stop.restore()
    if code == EXIT_OK:
        if stop.signal_name:
            console.print(f"stopped by {stop.signal_name}")
        console.print(summary_table(metrics))
        if settings.stats_json:
            stats = metrics.to_dict()
            stats["settings"] = json_ready(dataclasses.asdict(settings))
            Path(settings.stats_json).write_text(json.dumps(stats, indent=2))
    return code


def _prepare(settings: ServeSettings, metrics: ServeMetrics, stop: StopRequest, console: Any,
             resources: _Resources) -> None:
    """Streams resolved (in the background) ∥ model and engine; then the streams are opened,
    validated, and the outputs made — all into ``resources``.
    Raises _UsageError / _Failure / ServeInterrupted."""
    from brainformer_rt.inlet import EEGInlet

    if settings.metrics_port is not None:
        raise _UsageError("metrics_port: the Prometheus exporter is not available in this version")
    # Resolving runs in liblsl's background threads while the model loads and warms up. The
    # inlets are opened only afterwards, so that no backlog piles up in them meanwhile.
    wait_s = None if math.isinf(settings.wait_s) else settings.wait_s
    for key in settings.streams:
        limit = "" if wait_s is None else f" (up to {wait_s:g} s)"
        console.print(f"waiting for LSL stream {key!r} (by name, then type){limit} …", soft_wrap=True)
    resolvers = {key: _StreamResolver(key) for key in settings.streams}
    resources.resolvers.extend(resolvers.values())
    resolve_started = time.monotonic()
    import torch  # the slow imports come after the resolvers were started

    from brainformer_rt.engine import EngineError, make_engine
    from brainformer_rt.preprocess import EEGPreprocessStage, IncompatibleStreamError

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    model, config = _load(settings)
    hop = settings.hop_samples if settings.hop_samples is not None else int(config.hop_samples)
    window = int(config.window_samples)
    if not 1 <= hop <= window:
        raise _UsageError(f"hop_samples = {hop} is invalid: expected 1..{window} (the model's window_samples)")
    batch_size = settings.batch_size or len(settings.streams)
    try:
        resources.engine = engine = make_engine(model, settings.engine, settings.device, batch_size, window)
    except EngineError as error:
        raise _UsageError(str(error)) from None
    engine.setup()
    infos: Dict[str, Any] = {}
    while len(infos) < len(resolvers):
        for key, resolver in resolvers.items():
            if key not in infos:
                info = resolver.poll()
                if info is not None:
                    infos[key] = info
        if len(infos) < len(resolvers):
            if wait_s is not None and time.monotonic() - resolve_started > wait_s:
                missing = next(key for key in settings.streams if key not in infos)
                raise _Failure(f"no LSL stream with name or type {missing!r} appeared within {wait_s:g} s "
                               "(list the visible streams with `brainformer-rt streams`)")
            time.sleep(0.05)  # a signal raises ServeInterrupted here
    for resolver in resolvers.values():
        resolver.close()

    def open_inlet(key: str) -> Any:
        inlet = EEGInlet(infos[key], max_chunk_samples=settings.max_chunk_samples, recover=True,
                         gap_threshold_s=settings.gap_threshold_s)
        inlet.open()
        return inlet

    opened = _Background({key: (lambda key=key: open_inlet(key)) for key in settings.streams}).results()
    resources.inlets.update({k: v for k, v in opened.items() if not isinstance(v, BaseException)})
    for key in settings.streams:
        _raise_connect_error(key, opened[key])
    stages = {}
    for key in settings.streams:
        try:
            stages[key] = EEGPreprocessStage(config, resources.inlets[key].description, settings.max_chunk_samples)
        except IncompatibleStreamError as error:
            raise _UsageError(str(error)) from None
    inlets = resources.inlets
    metrics.info.update({
        "model": str(settings.model), "engine": engine.describe(), "hop_samples": hop, "warmup_s": settings.warmup_s,
        "window_samples": window, "model_sfreq_hz": float(config.sfreq_hz),
        "streams": {k: {"name": inlets[k].description.name, "source_id": inlets[k].description.source_id,
                        "sfreq_hz": inlets[k].description.sfreq_hz, "decimation": stages[k].decimation}
                    for k in settings.streams},
        "hostname": socket.gethostname(),
    })
    outputs = _output_names(settings)
    for key in settings.streams:
        publishers = _make_publishers(settings, config, key, outputs[key], resources)
        resources.pipelines.append(StreamPipeline(key, inlets[key], stages[key], window, hop, settings.gap_threshold_s,
                                                  metrics.streams[key], publishers, engine.n_output_channels))
        resources.publishers = []  # owned by the pipeline now


class _StreamResolver:
    """Finds the stream for one ``--stream`` value: by name first, then by type.

    liblsl's continuous resolvers query in their own threads; :meth:`poll` only reads their
    current results, so it never blocks and a stop signal is answered at once (a blocking
    ``resolve_byprop`` would hold the process for up to its wait, even at exit). A type match is
    accepted once no name match has shown up for ``TYPE_GRACE_S`` after it: with machine-scope
    discovery an older outlet answers ~0.5 s after a newer one, so the name match may be late.
    """

    TYPE_GRACE_S = 1.0

    def __init__(self, name_or_type: str) -> None:
        import pylsl

        if "'" in name_or_type:  # liblsl builds an XPath predicate name='value'
            raise _UsageError(f"stream {name_or_type!r}: a stream name or type must not contain a quote (')")
        self.key = name_or_type
        self._by_name = pylsl.ContinuousResolver(prop="name", value=name_or_type, forget_after=5.0)
        self._by_type = pylsl.ContinuousResolver(prop="type", value=name_or_type, forget_after=5.0)
        self._type_seen_at: Optional[float] = None

    def poll(self) -> Any:
        """The resolved ``pylsl.StreamInfo``, or None while nothing suitable is visible."""
        found = self._by_name.results()
        how = "name"
        if not found:
            found = self._by_type.results()
            how = "type"
            if not found:
                return None
            now = time.monotonic()
            if self._type_seen_at is None:
                self._type_seen_at = now
            if now - self._type_seen_at < self.TYPE_GRACE_S:
                return None
        if len({info.source_id() for info in found}) > 1:
            logger.warning("%d LSL streams have %s %r; using the one with source_id %r", len(found), how, self.key,
                           found[0].source_id(), extra={"stream": self.key})
        return found[0]

    def close(self) -> None:
        self._by_name = self._by_type = None  # liblsl stops the resolvers with the objects


class _Background:
    """Runs one blocking call per key in daemon threads (liblsl calls block in C, where a signal
    cannot interrupt them); :meth:`results` waits in short slices so that SIGINT/SIGTERM is
    answered at once (the signal handler raises ServeInterrupted in the main thread)."""

    def __init__(self, calls: Dict[str, Any]) -> None:
        self._results: Dict[str, Any] = {}
        self._threads = []
        for key, call in calls.items():
            thread = threading.Thread(target=self._run, args=(key, call), name=f"connect-{key}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, key: str, call: Any) -> None:
        try:
            self._results[key] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self._results[key] = error

    def results(self) -> Dict[str, Any]:
        """``{key: result or the exception raised}``."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.05)
        return dict(self._results)


def _raise_connect_error(key: str, outcome: Any) -> None:
    from brainformer_rt.inlet import StreamNotFoundError

    if isinstance(outcome, StreamNotFoundError):
        raise _Failure(str(outcome))
    if isinstance(outcome, ValueError):  # e.g. UnsupportedStreamError: a non-float format
        raise _UsageError(str(outcome))
    if isinstance(outcome, BaseException):
        raise _Failure(f"stream {key!r}: {type(outcome).__name__}: {outcome}")
    if outcome is None:
        raise _Failure(f"stream {key!r}: could not be opened")


class _SharedZMQTopic:
    """One stream's topic on a ZeroMQ publisher shared by several streams (one PUB socket on one
    address, one topic per stream, as the wire format prescribes).

    The stream keeps its own ``seq``, topic and stream name and lends them to the shared
    publisher for each message, so every topic counts its own ``seq`` from 0 and carries the
    channel names in its own first message. Only the main thread publishes, so no lock is needed.
    """

    def __init__(self, publisher: Any, topic: bytes, stream_name: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.stream_name = stream_name
        self.seq = 0

    @property
    def messages_dropped(self) -> int:
        return self.publisher.messages_dropped

    def publish(self, data: np.ndarray, timestamps: np.ndarray) -> bool:
        shared = self.publisher
        shared.topic, shared.stream_name, shared.seq = self.topic, self.stream_name, self.seq
        sent = shared.publish(data, timestamps)
        self.seq = shared.seq
        return sent

    def close(self) -> None:
        self.publisher.close()  # idempotent: the first topic closed closes the socket


def _make_publishers(settings: ServeSettings, config: Any, key: str, output: Tuple[str, bytes],
                     resources: _Resources) -> List[Any]:
    """The LSL outlet and ZeroMQ topic of one stream (registered in ``resources`` as made)."""
    lsl_name, topic = output
    names = list(config.meg_channel_names)
    types = list(config.meg_channel_types)
    model_name = str(settings.model)
    made: List[Any] = []
    try:
        if settings.lsl_name:
            from brainformer_rt.publishers.lsl import LSLPublisher

            made.append(LSLPublisher(lsl_name, f"brainformer:{lsl_name}@{socket.gethostname()}", names, types,
                                     float(config.sfreq_hz), model_name))
            resources.publishers.append(made[-1])
        if settings.zmq:
            from brainformer_rt.publishers.zmq import ZMQPublisher

            if resources.zmq_publisher is None:
                resources.zmq_publisher = ZMQPublisher(
                    settings.zmq, topic, channel_names=names, channel_types=types, sfreq_hz=float(config.sfreq_hz),
                    model_name=model_name, stream_name=key, curve_keys_dir=settings.zmq_curve_keys)
            if len(settings.streams) == 1:
                made.append(resources.zmq_publisher)
            else:
                made.append(_SharedZMQTopic(resources.zmq_publisher, topic, key))
    except (NotImplementedError, ValueError) as error:
        raise _UsageError(str(error)) from None
    return made
