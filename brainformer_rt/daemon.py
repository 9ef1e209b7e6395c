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
  samples the next window still needs have arrived (``min_samples``; liblsl hands a pushed chunk
  over in pieces, and waking for each piece would preprocess the hop in several calls) and
  returns everything available; the window is served at once. No thread hand-off, no polling
  sleep: the lowest latency pylsl offers. The pull timeout (``pull_timeout_s``) only bounds how
  long a stop request waits.
- **Several streams**: one pull thread per stream runs inlet → preprocessing → ring buffer →
  windower; when a window is due it copies it into the stream's hand-off slot under one shared
  condition lock and notifies the main thread. The main thread takes every pending slot at
  once, runs them as one batched forward (padded to the engine's static bucket sizes so CUDA
  graphs still apply) and publishes each stream's predictions on its own outlet/topic. A slow or
  dead stream only blocks its own thread's pull, never the others. Windows of one stream that
  become due while the previous one still waits in the slot replace it (counted as skipped):
  nothing queues. Threads rather than polling with a sleep, which costs more latency than a
  thread wake-up (see the platform notes: 0.8/1.5 ms vs 0.5/0.65 ms median/p99 for LSL alone);
  polling without a sleep is the next mode.
- **Busy polling** (``busy_poll``): nothing sleeps. With one stream the main thread spins on
  ``samples_available()`` until the next window's samples are there, then pulls. With several,
  there are no pull threads: the main thread sweeps every inlet without waiting, ingests each
  stream whose next window's samples are there, and serves the windows that became due in the
  sweep as one batched forward. The core never goes idle, so no wake-up is paid before each
  window, and no thread waits for Python's GIL while another holds it for a forward. On the
  2-core virtual machine of the README this takes 0.5–1 ms off the median with one stream and
  about halves the p99 with 8, at the price of one core at 100 %: for a machine with a core to
  spare.

Faults (each injected by a test in ``tests/rt/test_faults.py``)
-------------------------------------------------------------
- **Gaps**: a step between consecutive input timestamps larger than ``gap_threshold_s``, or
  backwards (a source restart, lost samples, a clock jump on the source side, chunks out of
  order), resets the stream: the preprocessor forgets its filter state, the ring buffer and the
  windower start over, and nothing is published until a fresh full window has arrived — a
  prediction never uses a window that spans a gap (reset rather than mark: the filters would
  ring across the hole). Counted: ``gaps`` and ``gap_samples`` (estimated; a clock jump counts
  the silence, not the leap: see ``GapDetector``). Samples that arrived in the same pull just
  before a gap are dropped (only the newest window is ever served).
- **Source gone and back** (same ``source_id``): liblsl reconnects by itself (~1 s after the
  source is back); the daemon logs the silence (``input_silent`` after ``silence_s``, counted in
  ``silences``), the gap, liblsl's reconnect (``reconnects``, see ``inlet.py``) and the moment
  it publishes again (``publishing_resumed``, with the outage in seconds).
- **Timestamps in another clock**: a segment whose newest samples are more than
  ``FOREIGN_CLOCK_THRESHOLD_S`` from this machine's clock when they arrive (the source's clock
  was reset) is served with that offset taken out of ages and latencies (not dropped as stale
  forever); published timestamps stay the source's.
- **NaN/Inf input**: the chunk is dropped and the stream reset like a gap (``nan_chunks``); the
  windows that would have been due meanwhile and during the refill are counted in
  ``nan_windows``; the log names the channels (at most one line per ``LOG_REPEAT_INTERVAL_S``).
  A prediction holding NaN/Inf is not published (``nan_windows`` too).
- **Flat channels** (no change for a second: electrode off, amplifier saturated) are served as
  they are — after the average reference and the high-pass they carry minus the mean of the
  others, no error — with a warning naming them; windows served meanwhile: ``flat_windows``.
- **Consumers**: publishing never blocks. ZeroMQ PUB keeps a queue per subscriber and drops for
  a stalled one only; an LSL outlet buffers per consumer. A stalled or vanished consumer costs
  the others nothing.
- **Staleness**: a due window whose newest sample is older than ``max_input_age_s`` (input that
  arrived late, e.g. a backlog) is not served; it is counted in ``windows_stale``.
- **Signals**: SIGINT/SIGTERM stop the daemon within ~``pull_timeout_s``. Before serving starts
  (settings, model import and load, warm-up/compile, waiting for a stream) the signal
  interrupts that work at once. Either way the outputs are closed, the statistics printed, and
  the exit code is 0.
- **Bad model directories** (missing files, corrupt safetensors, another model type, pickles)
  are refused with one line and exit code 2 before any stream is opened (``model_dir.py``
  never unpickles).

Observability: every event is one log line with the stream name and counts
(``--log-format json``: one JSON object per line, see ``logs.py``); ``--metrics-port`` serves
the same numbers to Prometheus (``prometheus.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import signal
import socket
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

from brainformer_rt.logs import EventThrottle, configure_logging, log_event, remove_log_handler
from brainformer_rt.metrics import ServeMetrics, StreamCounters, StreamGauges, json_ready, summary_table

logger = logging.getLogger("brainformer_rt.daemon")

__all__ = ["ServeSettings", "SettingsError", "load_settings", "build_settings", "Daemon", "serve_command",
           "run_serve", "unscale_meg_into", "StreamPipeline", "configure_logging",
           "ServeInterrupted", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1  # a stream that never appeared, or an error while serving
EXIT_USAGE = 2  # bad settings, model, or a stream the model cannot serve

DEFAULT_ZMQ_ADDRESS = "tcp://127.0.0.1:5556"
DEFAULT_LSL_NAME = "brainformer-meg"
DEFAULT_METRICS_HOST = "127.0.0.1"
#: A repeating fault (NaN chunks, NaN predictions) is logged at most once per this many seconds.
LOG_REPEAT_INTERVAL_S = 5.0
#: A segment whose timestamps are further than this from this machine's clock at arrival is
#: stamped by another clock (e.g. the source's clock was reset): see StreamPipeline._decide_offset.
FOREIGN_CLOCK_THRESHOLD_S = 1.0
#: While waiting for a stream, a reminder is logged this often.
WAIT_REMINDER_INTERVAL_S = 10.0
#: Busy polling over several streams: how often the sweep checks for silent streams.
SILENCE_CHECK_INTERVAL_S = 0.2


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
        engine: ``auto`` (cuda-graph on CUDA, eager on CPU) | ``eager`` | ``compile`` | ``aot`` (CPU) |
            ``cuda-graph``.
        batch_size: windows per forward; default: the number of streams.
        duration_s: stop after this many seconds of serving (``inf``: until SIGINT/SIGTERM).
        warmup_s: timings and latencies of the first seconds of serving are forgotten (counters
            are kept); the engine's own warm-up before serving never counts.
        wait_s: give up when a stream has not appeared after this many seconds (``inf``: wait).
        pull_timeout_s: longest blocking pull; bounds how long a stop request waits.
        busy_poll: spin instead of sleeping while waiting for input (costs one core; see "Busy
            polling" above).
        max_input_age_s: a due window whose newest sample is older than this is dropped as stale.
        gap_threshold_s: a step between input timestamps above this is a gap (stream reset).
        max_chunk_samples: most samples one pull returns (the inlet's buffer).
        silence_s: input silent for longer than this is logged (once) and counted.
        stats_interval_s: seconds between two progress log lines (``inf``: none).
        metrics_port: serve Prometheus metrics on ``metrics_host:PORT``.
        metrics_host: address of the metrics server (default 127.0.0.1; another one is warned about).
        log_format: ``text`` | ``json`` (one JSON object per line).
        log_level: ``debug`` | ``info`` | ``warning`` | ``error``.
        zmq_curve_keys: directory of ZeroMQ CURVE keys (layout in ``publishers/zmq.py``).
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
    busy_poll: bool = False
    max_input_age_s: float = 0.5
    gap_threshold_s: float = 0.1
    max_chunk_samples: int = 4096
    silence_s: float = 1.0
    stats_interval_s: float = 10.0
    metrics_port: Optional[int] = None
    metrics_host: str = DEFAULT_METRICS_HOST
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
        if self.zmq_curve_keys is not None and not self.zmq:
            raise SettingsError(f"{source}: zmq_curve_keys is set but ZeroMQ is disabled (zmq = '')")
        require(self.hop_samples is None or self.hop_samples >= 1, "hop_samples", "an integer >= 1")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
                "auto, cpu, cuda or cuda:N")
        require(self.engine in ("auto", "eager", "compile", "aot", "cuda-graph"), "engine",
                "auto, eager, compile, aot or cuda-graph")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", "an integer >= 1")
        require(self.duration_s > 0, "duration_s", "seconds > 0 (inf: until stopped)")
        require(0 <= self.warmup_s < math.inf, "warmup_s", "seconds >= 0")
        require(self.wait_s > 0, "wait_s", "seconds > 0 (inf: wait forever)")
        require(0 < self.pull_timeout_s <= 0.5, "pull_timeout_s", "seconds in (0, 0.5]")
        require(self.max_input_age_s > 0, "max_input_age_s", "seconds > 0 (inf: never stale)")
        require(self.gap_threshold_s > 0, "gap_threshold_s", "seconds > 0")
        require(self.max_chunk_samples >= 1, "max_chunk_samples", "an integer >= 1")
        require(self.silence_s > 0, "silence_s", "seconds > 0 (inf: never report silence)")
        require(self.stats_interval_s > 0, "stats_interval_s", "seconds > 0 (inf: no progress lines)")
        require(self.metrics_port is None or 1 <= self.metrics_port <= 65535, "metrics_port", "a port 1-65535")
        require(bool(self.metrics_host.strip()) and "://" not in self.metrics_host, "metrics_host",
                "a host address like 127.0.0.1")
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
    metrics_host, log_format, zmq_curve_keys, stats_json, torch_threads, busy_poll``."""
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
        """Take over SIGINT/SIGTERM (idempotent; main thread only)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return  # installed already, or not the main thread (signal handlers live there only)
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
        n_output_channels: MEG channels of the predictions.
        gauges: this stream's ``StreamGauges`` (a private one when None).
        max_publish: most samples one window publishes: the engine's ``output_samples``
            (default: the whole window).
        silence_s: input silent for longer than this is logged once and counted (``silences``).

    State (all of it): the inlet, preprocessing, ring buffer and windower state, the gap
    detector, the hand-off slot (``pending_*``, used with several streams, guarded by the
    daemon's condition lock), and the fault bookkeeping below (outages, NaN input, silence,
    the timestamp offset of the current segment).
    """

    def __init__(self, key: str, inlet: Any, stage: Any, window_samples: int, hop_samples: int,
                 gap_threshold_s: float, counters: StreamCounters, publishers: Sequence[Any],
                 n_output_channels: int, gauges: Optional[StreamGauges] = None, silence_s: float = 1.0,
                 max_publish: Optional[int] = None) -> None:
        from brainformer_rt.preprocess import GapDetector
        from brainformer_rt.ring_buffer import RingBuffer
        from brainformer_rt.windower import Windower

        self.key = key
        self.inlet = inlet
        self.stage = stage
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.counters = counters
        self.gauges = gauges if gauges is not None else StreamGauges()
        self.silence_s = silence_s
        self.publishers = list(publishers)
        self.ring = RingBuffer(max(4 * window_samples, 1024), stage.n_channels)
        self.windower = Windower(window_samples, hop_samples, max_publish)
        self.gaps = GapDetector(stage.input_sfreq_hz, gap_threshold_s, inlet.max_chunk_samples)
        self.physical = np.empty((window_samples, n_output_channels), dtype=np.float32)  # un-scaled output rows
        self.pending_window = np.empty((window_samples, stage.n_channels), dtype=np.float32)
        self.pending_timestamps = np.empty(window_samples, dtype=np.float64)
        self.pending_publish = 0  # > 0: a window waits in the slot, publishing this many samples
        self.pending_generation = 0  # the segment the waiting window belongs to
        self.generation = 0  # +1 at every reset: tells windows from before a reset apart
        self.failed: Optional[BaseException] = None
        self._started = False
        self._throttle = EventThrottle(LOG_REPEAT_INTERVAL_S)
        # Outage: the last input arrival before a reset (gap or NaN), until a prediction is out again.
        self.outage_since: Optional[float] = None
        self.published_any = False
        # NaN/Inf input: raw samples since the outage began (dropped ones and the refill) and the
        # windows that would have been due in them, already counted in nan_windows.
        self._nan_outage = False
        self._nan_raw_samples = 0
        self._nan_windows_counted = 0
        # Silence: no input for longer than silence_s.
        self._silent = False
        # Timestamps of the current segment relative to this machine's clock (see _decide_offset).
        self._lag_min_s = math.inf
        self._offset_decided = False

    # -- input ------------------------------------------------------------------------------------
    def ingest(self, data: np.ndarray, timestamps: np.ndarray, arrival_s: Optional[float] = None) -> None:
        """Check, preprocess and buffer one pulled chunk ``(n, n_stream_channels)``, ``(n,)``.

        ``arrival_s``: ``local_clock()`` when the chunk was pulled (silence, gap-size and
        clock-offset bookkeeping); None in tests that do not care.
        """
        from brainformer.preprocessing import NonFiniteInputError

        counters, gauges = self.counters, self.gauges
        n = timestamps.shape[0]
        counters.samples_in += n
        previous_arrival = gauges.last_arrival
        if arrival_s is not None:
            gauges.last_arrival = arrival_s
            gauges.input_lag_s = arrival_s - float(timestamps[-1])
            if self._silent:
                self._silent = False
                log_event(logger, logging.INFO, "input_resumed", "stream %r: input resumed after %.2f s of silence",
                          self.key, arrival_s - previous_arrival, stream=self.key,
                          silence_s=arrival_s - previous_arrival, silences=counters.silences)
        if not self._started:
            self._started = True
            counters.first_timestamp = float(timestamps[0])
            self.gaps.check(timestamps, arrival_s)
        else:
            start = self.gaps.check(timestamps, arrival_s)
            if start >= 0:
                counters.gaps += 1
                counters.gap_samples += self.gaps.missing_samples
                counters.reconnects = getattr(self.inlet, "reconnects", counters.reconnects)
                log_event(logger, logging.WARNING, "gap",
                          "stream %r: gap of %+.3f s in the input timestamps (~%d samples missing); resetting, "
                          "next prediction after a full window", self.key, self.gaps.last_step_s,
                          self.gaps.missing_samples, stream=self.key, step_s=self.gaps.last_step_s,
                          missing_samples=self.gaps.missing_samples, gaps=counters.gaps,
                          gap_samples=counters.gap_samples, reconnects=counters.reconnects)
                self._end_nan_outage()
                self._begin_outage(previous_arrival)
                self.reset()
                data, timestamps = data[start:], timestamps[start:]
                counters.last_reset_timestamp = float(timestamps[0])
        try:
            out, out_timestamps = self.stage.process(data, timestamps)
        except NonFiniteInputError:
            self._nan_input(timestamps.shape[0], previous_arrival)
            return
        self.ring.write(out, out_timestamps)
        counters.samples_preprocessed += out.shape[0]
        if arrival_s is not None and not self._offset_decided:
            self._lag_min_s = min(self._lag_min_s, arrival_s - float(timestamps[-1]))
        if self._nan_outage:
            self._count_nan_refill(timestamps.shape[0])
        if self.stage.flat.changed:
            self._flat_changed()
        gauges.buffer_fill = min(1.0, (self.ring.total_written - self.windower.origin) / self.window_samples)

    def _begin_outage(self, last_arrival: float) -> None:
        if self.outage_since is None and self.published_any and math.isfinite(last_arrival):
            self.outage_since = last_arrival

    def _nan_input(self, n_samples: int, previous_arrival: float) -> None:
        """A chunk with NaN/Inf: dropped, the stream reset (its filters must not see a hole)."""
        counters = self.counters
        counters.nan_chunks += 1
        if not self._nan_outage:
            self._nan_outage = True
            self._nan_raw_samples = 0
            self._nan_windows_counted = 0
        self._nan_raw_samples += n_samples
        self._count_nan_windows()
        self._begin_outage(previous_arrival)
        ready, suppressed = self._throttle.ready("nan")
        if ready:
            channels = self.stage.non_finite_channels()
            log_event(logger, logging.WARNING, "nan_input",
                      "stream %r: %d samples with NaN/Inf in %s dropped; resetting, no prediction until a full "
                      "finite window%s", self.key, n_samples, _channel_list(channels),
                      f" ({suppressed} more such chunks since the last message)" if suppressed else "",
                      stream=self.key, channels=channels, nan_chunks=counters.nan_chunks,
                      nan_windows=counters.nan_windows)
        self.reset()

    def _count_nan_windows(self) -> None:
        """Windows that would have been due (one per hop of model-rate samples) since the NaN
        input began and that the refill keeps from being served: counted as ``nan_windows``."""
        due = (self._nan_raw_samples // self.stage.decimation) // self.hop_samples
        if due > self._nan_windows_counted:
            self.counters.nan_windows += due - self._nan_windows_counted
            self._nan_windows_counted = due

    def _count_nan_refill(self, n_raw_samples: int) -> None:
        if self.ring.total_written - self.windower.origin >= self.window_samples:
            self._end_nan_outage()  # a finite window is complete: the windower serves it now
            return
        self._nan_raw_samples += n_raw_samples
        self._count_nan_windows()

    def _end_nan_outage(self) -> None:
        if self._nan_outage:
            self._nan_outage = False
            self._throttle.forget("nan")

    def _flat_changed(self) -> None:
        names = self.stage.flat_channel_names()
        self.gauges.flat_channels = len(names)
        if names:
            log_event(logger, logging.WARNING, "flat_channels",
                      "stream %r: %s flat for the last second (no change at all); predictions go on, built from "
                      "a channel without signal", self.key, _channel_list(names), stream=self.key, channels=names,
                      flat_channels=len(names), flat_windows=self.counters.flat_windows)
        else:
            log_event(logger, logging.INFO, "flat_channels", "stream %r: no flat channel any more", self.key,
                      stream=self.key, channels=[], flat_channels=0, flat_windows=self.counters.flat_windows)

    def check_silence(self, now: float) -> None:
        """Called when a pull returned nothing: log (once) and count input silent for ``silence_s``."""
        last = self.gauges.last_arrival
        if self._silent or not math.isfinite(last) or now - last < self.silence_s:
            return
        self._silent = True
        self.counters.silences += 1
        log_event(logger, logging.WARNING, "input_silent",
                  "stream %r: no input for %.1f s (source stopped or disconnected?); serving resumes when it is back",
                  self.key, now - last, stream=self.key, silence_s=now - last, silences=self.counters.silences)

    # -- windows ----------------------------------------------------------------------------------
    def poll(self) -> int:
        """Samples to publish if a window is due now (see :class:`~brainformer_rt.windower.Windower`), else 0."""
        n_publish = self.windower.poll(self.ring.total_written)
        if n_publish:
            if not self._offset_decided:
                self._decide_offset()
            if self.gauges.flat_channels:
                self.counters.flat_windows += 1
            self._sync_window_counters()
        return n_publish

    def _decide_offset(self) -> None:
        """Are this segment's timestamps in this machine's clock? Decided at its first window
        from the smallest age seen at arrival (transport time, ~1 ms normally). A source whose
        clock was reset (or that stamps with another clock) is seconds off: the difference is
        removed before ages (staleness) and latencies are measured, so the segment is served
        instead of being dropped as stale forever. Published timestamps stay the source's."""
        self._offset_decided = True
        lag = self._lag_min_s
        offset = lag if math.isfinite(lag) and abs(lag) > FOREIGN_CLOCK_THRESHOLD_S else 0.0
        if offset:
            log_event(logger, logging.WARNING, "timestamp_offset",
                      "stream %r: its timestamps are %.3f s %s this machine's clock (source clock reset?); ages and "
                      "latencies are measured with that offset removed", self.key, abs(offset),
                      "behind" if offset > 0 else "ahead of", stream=self.key, timestamp_offset_s=offset)
        elif self.gauges.timestamp_offset_s:
            log_event(logger, logging.INFO, "timestamp_offset", "stream %r: its timestamps are in this machine's "
                      "clock again", self.key, stream=self.key, timestamp_offset_s=0.0)
        self.gauges.timestamp_offset_s = offset

    def input_samples_until_due(self) -> int:
        """Input samples the next window still needs at least (>= 1): the windower's model-rate
        count at the stream's rate. A lower bound, so a pull that waits for them never waits
        past the sample that makes the window due."""
        needed = self.windower.samples_until_due(self.ring.total_written)
        return (needed - 1) * self.stage.decimation + 1

    def age_s(self, now: float, timestamp: float) -> float:
        """How old a sample stamped ``timestamp`` is at ``now`` (``local_clock()``)."""
        return now - timestamp - self.gauges.timestamp_offset_s

    def published(self, now: float, generation: int) -> None:
        """A prediction of this stream went out at ``now`` (``local_clock()``); it was computed
        from a window of segment ``generation`` (see :meth:`reset`)."""
        if not self.published_any:
            self.published_any = True
            log_event(logger, logging.INFO, "first_prediction", "stream %r: first prediction published", self.key,
                      stream=self.key, windows_served=self.counters.windows_served)
        if self.outage_since is not None and generation == self.generation:  # not a window from before
            outage_s = now - self.outage_since
            self.outage_since = None
            self.gauges.last_outage_s = outage_s
            log_event(logger, logging.INFO, "publishing_resumed",
                      "stream %r: publishing again, %.2f s after the last input before the interruption", self.key,
                      outage_s, stream=self.key, outage_s=outage_s, gaps=self.counters.gaps,
                      nan_chunks=self.counters.nan_chunks, reconnects=self.counters.reconnects)

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
        """Start over after a gap: fresh filter state, empty buffer, wait for a full window, and
        decide the new segment's timestamp offset afresh."""
        self.stage.reset()
        self.ring.clear()
        self.windower.reset(self.ring.total_written)
        self.gauges.buffer_fill = 0.0
        self.generation += 1
        self._lag_min_s = math.inf
        self._offset_decided = False

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


def _channel_list(names: Sequence[str], limit: int = 6) -> str:
    if not names:
        return "no channel"
    shown = ", ".join(repr(n) for n in names[:limit])
    word = "channel" if len(names) == 1 else "channels"
    return f"{word} {shown}" + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


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
        # (batch, S, n_meg) predictions of one forward (the newest S samples of each window),
        # (batch, T) timestamps of its windows.
        self.output_samples = engine.output_samples
        self._predictions = np.empty((engine.batch_size, self.output_samples, n_out), dtype=np.float32)
        self._batch_timestamps = np.empty((engine.batch_size, self.window_samples), dtype=np.float64)
        self._unscale_work = np.empty((self.window_samples, n_out), dtype=np.float64)
        self._cond = threading.Condition()
        self._next_progress = 0.0
        self._end = math.inf
        self._warmup_end: Optional[float] = None

    # -- shared: forward + publish ------------------------------------------------------------------
    def _serve_batch(self, items: List[Tuple[StreamPipeline, int, np.ndarray, int]]) -> None:
        """Windows are in ``engine.input_buffer[:k]``; ``items[i] = (pipeline, n_publish,
        timestamps (T,), generation)`` for row ``i``. Forward once, then un-scale and publish each
        row's newest ``n_publish`` samples with their input timestamps."""
        k = len(items)
        started = time.perf_counter()
        predictions = self.engine.infer(self.engine.input_buffer[:k], out=self._predictions[:k])
        forwarded = time.perf_counter()
        self.metrics.add_forward(forwarded - started, k)
        T, S = self.window_samples, self.output_samples
        for row, (pipeline, n_publish, timestamps, generation) in enumerate(items):
            scaled = predictions[row, S - n_publish:]  # (n_publish, n_meg); n_publish <= S (windower)
            if not math.isfinite(float(scaled.sum())):
                # Counted as served (the forward ran) and as a NaN window; nothing is published.
                pipeline.counters.nan_windows += 1
                ready, suppressed = pipeline._throttle.ready("nan_prediction")
                if ready:
                    log_event(logger, logging.WARNING, "nan_prediction",
                              "stream %r: the model predicted NaN/Inf; window not published%s", pipeline.key,
                              f" ({suppressed} more since the last message)" if suppressed else "",
                              stream=pipeline.key, nan_windows=pipeline.counters.nan_windows)
                continue
            physical = self._unscale(scaled, pipeline.physical[:n_publish])
            out_timestamps = timestamps[T - n_publish:]
            for publisher in pipeline.publishers:
                if publisher.publish(physical, out_timestamps) is False:
                    pipeline.counters.zmq_drops += 1
            now = self.clock()
            self.metrics.add_e2e(pipeline.key, pipeline.age_s(now, float(timestamps[-1])))
            pipeline.counters.samples_published += n_publish
            pipeline.published(now, generation)
        self.metrics.add_stage("publish", time.perf_counter() - forwarded)

    def _unscale(self, scaled: np.ndarray, out: np.ndarray) -> np.ndarray:
        return unscale_meg_into(scaled, self._meg_mean, self._meg_std, self._unscale_work, out)

    def _is_stale(self, pipeline: StreamPipeline, newest_timestamp: float) -> bool:
        return pipeline.age_s(self.clock(), newest_timestamp) > self.settings.max_input_age_s

    def _pull_and_ingest(self, pipeline: StreamPipeline, wait: bool = True) -> bool:
        """One pull (and a drain when the inlet buffer was full); True when data came. ``wait``:
        wait up to ``pull_timeout_s`` for the next window's samples (blocking in liblsl, or
        spinning with ``busy_poll``); otherwise take what is there."""
        inlet = pipeline.inlet
        needed = pipeline.input_samples_until_due()
        timeout_s = self.settings.pull_timeout_s if wait else 0.0
        if self.settings.busy_poll and wait:
            inlet.spin_until_available(needed, timeout_s)
            timeout_s = 0.0  # the waiting is done
        data, timestamps = inlet.pull(timeout_s, needed)
        if timestamps.shape[0] == 0:
            pipeline.check_silence(self.clock())
            return False
        pulled = time.perf_counter()
        arrival = self.clock()
        # Transport: newest sample pushed (its timestamp) → we hold it.
        self.metrics.add_stage("pull", pipeline.age_s(arrival, float(timestamps[-1])))
        try:
            pipeline.ingest(data, timestamps, arrival)
            while timestamps.shape[0] == inlet.max_chunk_samples:  # more may be waiting
                data, timestamps = inlet.pull(0.0)
                if timestamps.shape[0]:
                    pipeline.ingest(data, timestamps, self.clock())
        except Exception:  # noqa: BLE001 - a broken chunk resets the stream, never kills the daemon
            logger.exception("stream %r: preprocessing failed; resetting the stream", pipeline.key,
                             extra={"event": "stream_error", "stream": pipeline.key})
            pipeline.reset()
            return True
        pipeline.gauges.clock_offset_s = getattr(inlet, "clock_offset_s", 0.0)
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
            log_event(logger, logging.INFO, "progress",
                      "stream %r: %d windows served, %d skipped, %d stale, %d gaps, %d NaN windows; e2e p99 %.3f ms "
                      "(last %d)", key, counters.windows_served, counters.windows_skipped, counters.windows_stale,
                      counters.gaps, counters.nan_windows, p99, recent.size,
                      stream=key, samples_in=counters.samples_in, windows_served=counters.windows_served,
                      windows_skipped=counters.windows_skipped, windows_stale=counters.windows_stale,
                      gaps=counters.gaps, gap_samples=counters.gap_samples, reconnects=counters.reconnects,
                      nan_windows=counters.nan_windows, flat_windows=counters.flat_windows,
                      zmq_drops=counters.zmq_drops, e2e_p99_ms=p99)

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
            elif self.settings.busy_poll:
                self._run_many_polling()
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
            fresh = self._fresh_window(pipeline)
            if fresh is not None:
                n_publish, window, timestamps = fresh
                np.copyto(input_buffer[0], window)
                # The ring is not written again before publishing: its timestamp view stays valid.
                self._serve_batch([(pipeline, n_publish, timestamps, pipeline.generation)])
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
                        items.append((pipeline, pipeline.pending_publish, self._batch_timestamps[row],
                                      pipeline.pending_generation))
                        pipeline.pending_publish = 0
                if items:
                    self._serve_batch(items)
                    self._progress()
                self._raise_if_every_stream_failed()
        finally:
            self.stop.event.set()
            for thread in threads:
                thread.join(timeout=2.0)

    def _run_many_polling(self) -> None:
        """Several streams, busy polling: this one thread sweeps every inlet without sleeping,
        ingests each stream whose next window's samples are there, and serves the windows that
        became due in one sweep as one batched forward. A silent or dead stream is one cheap
        ``samples_available()`` call per sweep: it holds up nobody."""
        input_buffer = self.engine.input_buffer
        next_silence_check = 0.0
        while self._running():
            items = []
            for pipeline in self.pipelines:
                if pipeline.failed is not None:
                    continue
                try:
                    item = self._take_due_window(pipeline)
                except Exception as error:  # noqa: BLE001 - one stream's failure must not stop the others
                    pipeline.failed = error
                    logger.exception("stream %r: stopped serving it", pipeline.key, extra={"stream": pipeline.key})
                    continue
                if item is None:
                    continue
                row = len(items)
                n_publish, window, timestamps = item
                np.copyto(input_buffer[row], window)
                np.copyto(self._batch_timestamps[row], timestamps)
                items.append((pipeline, n_publish, self._batch_timestamps[row], pipeline.generation))
                if len(items) == self.engine.batch_size:
                    self._serve_batch(items)
                    items = []
            if items:
                self._serve_batch(items)
                self._progress()
            now = time.monotonic()
            if now >= next_silence_check:  # a few times per second is enough to report silence
                next_silence_check = now + SILENCE_CHECK_INTERVAL_S
                clock = self.clock()
                for pipeline in self.pipelines:
                    pipeline.check_silence(clock)
            self._raise_if_every_stream_failed()

    def _take_due_window(self, pipeline: StreamPipeline) -> Optional[Tuple[int, np.ndarray, np.ndarray]]:
        """Without waiting: ingest ``pipeline``'s input if its next window's samples are there;
        what :meth:`_fresh_window` gives then, else None."""
        if pipeline.inlet.samples_available() < pipeline.input_samples_until_due():
            return None
        if not self._pull_and_ingest(pipeline, wait=False):
            return None
        return self._fresh_window(pipeline)

    def _fresh_window(self, pipeline: StreamPipeline) -> Optional[Tuple[int, np.ndarray, np.ndarray]]:
        """After an ingest: ``(n_publish, window, timestamps)`` when a window is due and not stale
        (views of the ring, valid until it is written again); a stale one is dropped and counted."""
        n_publish = pipeline.poll()
        if not n_publish:
            return None
        window, timestamps = pipeline.ring.latest(self.window_samples)
        if self._is_stale(pipeline, float(timestamps[-1])):
            pipeline.drop_window(n_publish, stale=True)
            return None
        return n_publish, window, timestamps

    def _raise_if_every_stream_failed(self) -> None:
        if all(p.failed is not None for p in self.pipelines):
            raise RuntimeError("every stream failed: " + "; ".join(f"{p.key}: {p.failed}" for p in self.pipelines))

    def _pull_loop(self, pipeline: StreamPipeline) -> None:
        """Pull thread of one stream (several-stream mode)."""
        try:
            while self._running():
                if not self._pull_and_ingest(pipeline):
                    continue
                fresh = self._fresh_window(pipeline)
                if fresh is None:
                    continue
                n_publish, window, timestamps = fresh
                with self._cond:
                    if pipeline.pending_publish:
                        # The previous window was not taken yet: this newer one replaces it.
                        n_publish = pipeline.windower.supersede(pipeline.pending_publish, n_publish)
                        pipeline._sync_window_counters()
                    np.copyto(pipeline.pending_window, window)
                    np.copyto(pipeline.pending_timestamps, timestamps)
                    pipeline.pending_publish = n_publish
                    pipeline.pending_generation = pipeline.generation
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


def serving_output_samples(model: Any, window_samples: int, hop_samples: int) -> int:
    """Newest samples the engine predicts per window: two hops (so a window merged with a late one
    still publishes every sample), or the whole window for a model whose forward has no
    ``last_samples``. A window publishes only its newest hop; the decoder work for older segments
    and the skip path's rows for older samples would be thrown away."""
    import inspect

    if "last_samples" not in inspect.signature(model.forward).parameters:
        return window_samples
    return min(window_samples, 2 * hop_samples)


def serve_command(**options: Any) -> None:
    """CLI ``serve``: see ``brainformer-rt serve --help``; exits 0 after a stop, 1 on failure,
    2 on unusable settings, model or stream."""
    import typer
    from rich.console import Console

    # Signals are taken over first, so that a stop at any later moment ends in an orderly exit.
    stop = StopRequest()
    stop.install()
    console = Console(highlight=False, markup=False)
    err_console = Console(stderr=True, highlight=False, markup=False)
    config_file = options.pop("config_file", None)
    try:
        settings = build_settings(config_file, **options)
        configure_logging(settings.log_format, settings.log_level)
    except SettingsError as error:
        stop.restore()
        err_console.print(f"error: {error}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except ServeInterrupted:
        stop.restore()
        raise typer.Exit(EXIT_OK) from None
    try:
        code = run_serve(settings, console, err_console, stop)  # restores the signal handlers
    finally:
        remove_log_handler()
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
        self.exporter: Any = None  # the Prometheus metrics server

    def close(self) -> None:
        """Close everything (each step on its own: one failure must not keep the rest open)."""
        closed: List[str] = []
        steps = [("resolvers", lambda: [r.close() for r in self.resolvers])]
        steps += [(f"stream {p.key!r}", p.close) for p in self.pipelines]
        owned = {id(p.inlet) for p in self.pipelines}
        steps += [(f"inlet {k!r}", inlet.close) for k, inlet in self.inlets.items() if id(inlet) not in owned]
        steps += [(type(p).__name__, p.close) for p in self.publishers]
        if self.zmq_publisher is not None:
            steps.append((f"ZeroMQ {self.zmq_publisher.address}", self.zmq_publisher.close))
        if self.engine is not None:
            steps.append(("engine", self.engine.close))
        if self.exporter is not None:
            steps.append((f"metrics server {self.exporter.address}", self.exporter.close))
        for what, close in steps:
            try:
                close()
                closed.append(what)
            except Exception:  # noqa: BLE001 - the others must still be closed
                logger.exception("closing %s failed", what, extra={"event": "close_failed"})
        if len(closed) > 1:
            log_event(logger, logging.INFO, "closed", "closed: %s", ", ".join(closed[1:]), closed=closed[1:])


def run_serve(settings: ServeSettings, console: Any, err_console: Any, stop: Optional["StopRequest"] = None) -> int:
    """Run the daemon with validated ``settings``; returns the exit code."""
    if stop is None:
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
            # Everything made so far (torch, transformers, the model, the engine) lives until the
            # exit: frozen, the collector never walks those millions of objects again, so no full
            # collection (tens of ms) lands inside a window's latency.
            gc.collect()
            gc.freeze()
            names = ", ".join(repr(p.key) for p in pipelines)
            console.print(f"serving {names} with engine {engine.kind} on {engine.device} "
                          f"(hop {pipelines[0].windower.hop_samples} samples); stop with Ctrl-C", soft_wrap=True)
            log_event(logger, logging.INFO, "serving", "serving %s", names, streams=list(settings.streams),
                      engine=engine.kind, device=str(engine.device), hop_samples=pipelines[0].windower.hop_samples)
            daemon.run()
        except ServeInterrupted:
            pass
        finally:
            stop.interrupt = False
            if stop.signal_name:
                log_event(logger, logging.INFO, "stopping", "stopping on %s", stop.signal_name, signal=stop.signal_name)
    except _UsageError as error:
        code, error_line = EXIT_USAGE, f"error: {error}"
    except _Failure as error:
        code, error_line = EXIT_FAILURE, f"error: {error}"
    except Exception as error:  # noqa: BLE001 - one line for the user, the traceback in the log
        logger.debug("serve failed", exc_info=True)
        code, error_line = EXIT_FAILURE, f"error: {type(error).__name__}: {error}"
    finally:
        resources.close()
        stop.restore()
    if code != EXIT_OK:
        if settings.log_format == "json":  # lab pipelines read the log; people read the line below
            log_event(logger, logging.ERROR, "error", "%s", error_line.removeprefix("error: "), exit_code=code)
        # After the closing log lines: the error is the last line the user (or a script) sees.
        err_console.print(error_line, markup=False, soft_wrap=True)
    else:
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

    if settings.zmq and settings.zmq_curve_keys is not None:
        from brainformer_rt.publishers.zmq import load_curve_keys

        try:  # checked now, not after the wait for the streams
            load_curve_keys(settings.zmq_curve_keys)
        except ValueError as error:
            raise _UsageError(str(error)) from None
    if settings.metrics_port is not None:
        from brainformer_rt.prometheus import ExporterError, start_exporter

        try:
            resources.exporter = start_exporter(metrics, settings.metrics_host, settings.metrics_port)
        except ExporterError as error:
            raise _UsageError(str(error)) from None
    # Resolving runs in liblsl's background threads while the model loads and warms up. The
    # inlets are opened only afterwards, so that no backlog piles up in them meanwhile.
    wait_s = None if math.isinf(settings.wait_s) else settings.wait_s
    for key in settings.streams:
        limit = "" if wait_s is None else f" (up to {wait_s:g} s)"
        console.print(f"waiting for LSL stream {key!r} (by name, then type){limit} …", soft_wrap=True)
        log_event(logger, logging.INFO, "waiting", "waiting for LSL stream %r (by name, then type)%s", key, limit,
                  stream=key, wait_s=settings.wait_s)
    resolvers = {key: _StreamResolver(key) for key in settings.streams}
    resources.resolvers.extend(resolvers.values())
    resolve_started = time.monotonic()
    import torch  # the slow imports come after the resolvers were started

    from brainformer_rt.engine import EngineError, make_engine
    from brainformer_rt.preprocess import EEGPreprocessStage, IncompatibleStreamError

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    log_event(logger, logging.INFO, "model_loading", "loading model %s", settings.model, model=str(settings.model))
    model, config = _load(settings)
    hop = settings.hop_samples if settings.hop_samples is not None else int(config.hop_samples)
    window = int(config.window_samples)
    if not 1 <= hop <= window:
        raise _UsageError(f"hop_samples = {hop} is invalid: expected 1..{window} (the model's window_samples)")
    batch_size = settings.batch_size or len(settings.streams)
    try:
        resources.engine = engine = make_engine(model, settings.engine, settings.device, batch_size, window,
                                                output_samples=serving_output_samples(model, window, hop))
    except EngineError as error:
        raise _UsageError(str(error)) from None
    log_event(logger, logging.INFO, "engine_warmup", "preparing the %s engine on %s (warm-up)", engine.kind,
              engine.device, engine=engine.kind, device=str(engine.device), batch_size=batch_size)
    warmup_started = time.monotonic()
    engine.setup()
    log_event(logger, logging.INFO, "engine_ready", "engine ready after %.2f s", time.monotonic() - warmup_started,
              engine=engine.kind, setup_s=time.monotonic() - warmup_started)
    infos: Dict[str, Any] = {}
    next_reminder = resolve_started + WAIT_REMINDER_INTERVAL_S
    while len(infos) < len(resolvers):
        for key, resolver in resolvers.items():
            if key not in infos:
                info = resolver.poll()
                if info is not None:
                    infos[key] = info
                    log_event(logger, logging.INFO, "stream_found", "found LSL stream %r (source_id %r)", key,
                              info.source_id(), stream=key, source_id=info.source_id(), lsl_name=info.name())
        if len(infos) < len(resolvers):
            now = time.monotonic()
            missing = [key for key in settings.streams if key not in infos]
            if wait_s is not None and now - resolve_started > wait_s:
                log_event(logger, logging.ERROR, "wait_timeout", "no LSL stream %r after %g s", missing[0], wait_s,
                          stream=missing[0], wait_s=wait_s)
                raise _Failure(f"no LSL stream with name or type {missing[0]!r} appeared within {wait_s:g} s "
                               "(list the visible streams with `brainformer-rt streams`)")
            if now >= next_reminder:
                next_reminder = now + WAIT_REMINDER_INTERVAL_S
                for key in missing:
                    log_event(logger, logging.INFO, "waiting", "still waiting for LSL stream %r (%.0f s)", key,
                              now - resolve_started, stream=key, waited_s=now - resolve_started)
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
        "busy_poll": settings.busy_poll,
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
                                                  metrics.streams[key], publishers, engine.n_output_channels,
                                                  gauges=metrics.gauges[key], silence_s=settings.silence_s,
                                                  max_publish=engine.output_samples))
        resources.publishers = []  # owned by the pipeline now


class _StreamResolver:
    """Finds the stream for one ``--stream`` value: by name first, then by type.

    The lookups run in a daemon thread, so :meth:`poll` never blocks and a stop signal is
    answered at once. They are blocking ``resolve_byprop`` calls with 1 s waits rather than
    liblsl's continuous resolvers: with machine-scope discovery only the newest outlet answers a
    query at once and older ones ~0.5 s later, and continuous resolvers looking for several
    streams together missed most of them (2 of 8 found in a minute). A type match is accepted
    only after a further name lookup found nothing, so a late-answering name match wins.
    """

    LOOKUP_WAIT_S = 1.0

    def __init__(self, name_or_type: str) -> None:
        if "'" in name_or_type:  # liblsl builds an XPath predicate name='value'
            raise _UsageError(f"stream {name_or_type!r}: a stream name or type must not contain a quote (')")
        self.key = name_or_type
        self._found: Optional[tuple] = None  # (how, [pylsl.StreamInfo, ...])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"resolve-{name_or_type}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pylsl

        type_match = None
        while not self._stop.is_set():
            found = pylsl.resolve_byprop("name", self.key, 1, self.LOOKUP_WAIT_S)
            if found:
                self._found = ("name", found)
                return
            if type_match:  # a whole name lookup came back empty after the type match
                self._found = ("type", type_match)
                return
            type_match = pylsl.resolve_byprop("type", self.key, 1, self.LOOKUP_WAIT_S) or None

    def poll(self) -> Any:
        """The resolved ``pylsl.StreamInfo``, or None while nothing suitable is visible."""
        if self._found is None:
            return None
        how, found = self._found
        if len({info.source_id() for info in found}) > 1:
            logger.warning("%d LSL streams have %s %r; using the one with source_id %r", len(found), how, self.key,
                           found[0].source_id(), extra={"stream": self.key})
        return found[0]

    def close(self) -> None:
        self._stop.set()  # the thread ends after its current lookup (at most LOOKUP_WAIT_S)


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

            if resources.zmq_publisher is None:  # one socket; with several streams one topic each
                resources.zmq_publisher = ZMQPublisher(
                    settings.zmq, topic, channel_names=names, channel_types=types, sfreq_hz=float(config.sfreq_hz),
                    model_name=model_name, stream_name=key, curve_keys_dir=settings.zmq_curve_keys)
                log_event(logger, logging.INFO, "zmq_bound", "ZeroMQ publisher on %s%s",
                          resources.zmq_publisher.address, " (CURVE)" if resources.zmq_publisher.curve else "",
                          address=resources.zmq_publisher.address, curve=resources.zmq_publisher.curve)
            made.append(resources.zmq_publisher if len(settings.streams) == 1
                        else resources.zmq_publisher.add_topic(topic, key))
    except ValueError as error:
        raise _UsageError(str(error)) from None
    return made
