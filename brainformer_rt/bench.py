"""`bench`: end-to-end latency of the daemon on this machine, and of a naive loop for comparison.

One command starts everything, like a user's set-up would run it:

    players (``simulate`` subprocesses, the bundled recording at its real rate, one per stream)
        └─► system under test (subprocess): the daemon serving all streams, or, for the
            comparison, one naive hand-written loop per stream (``naive_loop.py``), or, for the
            transport floor (``--floor``), one relay per stream (``relay.py``: no model)
              └─► subscribers in this process: one LSL inlet per output (+ one ZeroMQ SUB for
                  the daemon), draining everything and keeping every arrival.

What is measured and how
------------------------
- Latency of a message = ``local_clock()`` when the subscriber read it − the timestamp of its
  newest sample. The player stamps each sample with the ``local_clock()`` time it was due and
  pushes it then, and both systems stamp each prediction with the timestamp of the EEG sample it
  was predicted for, so this is "EEG sample pushed → its prediction received", on one clock.
- The player pushes late when the machine is busy; the stamp stays the due time, so its lateness
  is part of the measured latency. It is reported (player lateness) so a reader can see it.
- Warm-up: arrivals in the first ``warmup_s`` seconds after the first one are left out (the
  first windows pay for allocations and caches). The daemon's own timings (forward, stages) come
  from its statistics file: after its warm-up when the daemon has the ``warmup_s`` setting,
  otherwise over its whole serving time; the report says which.
- The daemon, the naive loop and the relay run one after the other on the same player streams
  (the players keep running), never at the same time: on a small machine they would share the
  cores and distort each other.
- The relay's latency is the floor under every system: the player's lateness, LSL in, LSL or
  ZeroMQ out. The daemon's overhead (p99 e2e − p99 forward) is compared with it.
- Both systems use the same model, hop, device and number of torch threads.

Everything runs inside a loopback-only network namespace when one can be made (root or user
namespaces); otherwise with the loopback LSL configuration alone and a warning.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from brainformer_rt.metrics import json_ready, summarise
from brainformer_rt.naive_loop import DESCRIPTION as NAIVE_DESCRIPTION

logger = logging.getLogger(__name__)

__all__ = ["BenchSettings", "BenchError", "run_bench", "bench_command", "results_table", "write_plot",
           "DEFAULT_DURATION_S", "DEFAULT_WARMUP_S", "DEFAULT_THREADS", "PEERS"]

#: Seconds measured after the warm-up: at 600 Hz with hop 16 this gives ~2250 windows per output.
DEFAULT_DURATION_S = 60.0
#: Arrivals in the first seconds after the first one are not counted.
DEFAULT_WARMUP_S = 3.0
#: torch threads of both systems: the other core stays free for the players and the subscribers.
DEFAULT_THREADS = 1
PEERS = ("naive", "none")
MAX_STREAMS = 64
#: How long a system may take to start (imports, model load, engine set-up, stream discovery).
STARTUP_TIMEOUT_S = 300.0
#: Seconds between two CPU / memory samples of the system under test.
SAMPLE_INTERVAL_S = 0.5
#: Real time is kept when at most this fraction of the due windows was skipped or dropped as
#: stale, and at least 1 − this fraction of the expected samples reached the subscriber.
REAL_TIME_TOLERANCE = 0.02
#: Goal for the p99 ratio daemon / naive loop.
RATIO_GOAL = 0.5

EXIT_USAGE = 2
EXIT_FAILURE = 1


class BenchError(ValueError):
    """A setting the bench cannot use; the message names the option and what is allowed."""


class BenchFailure(RuntimeError):
    """The run failed (a process died, a stream never appeared); the message says which."""


@dataclass
class BenchSettings:
    """What one bench run measures.

    Attributes:
        model: model directory or ``default``.
        duration_s: seconds measured after the warm-up, per system.
        n_streams: EEG streams (players), all served by one daemon.
        hop_samples: new samples between two predictions (None: the model's).
        engine, device: the daemon's engine and device (the naive loop uses eager on the device).
        peer: ``naive`` also runs the naive loop for a ratio; ``none`` runs the daemon alone.
        busy_poll: the daemon spins while waiting for input (``serve --busy-poll``).
        floor: also run the relay (``relay.py``: the daemon's transport, no model) to measure the
            transport floor: the latency any LSL-in / LSL-or-ZeroMQ-out server pays here.
        warmup_s: seconds after the first arrival that are not counted.
        threads: torch threads of each system.
        chunk_samples: samples per player push (None: one hop).
        recording: the recording played (None: the bundled one).
        aligned: players push in step (``simulate --aligned``: one acquisition clock, so windows
            of all streams are due together); default: each player starts at its own phase.
    """

    model: str = "default"
    duration_s: float = DEFAULT_DURATION_S
    n_streams: int = 1
    hop_samples: Optional[int] = None
    engine: str = "auto"
    device: str = "cpu"
    peer: str = "naive"
    floor: bool = False
    busy_poll: bool = False
    warmup_s: float = DEFAULT_WARMUP_S
    threads: int = DEFAULT_THREADS
    chunk_samples: Optional[int] = None
    recording: Optional[str] = None
    aligned: bool = False

    def validate(self) -> "BenchSettings":
        if not (isinstance(self.duration_s, (int, float)) and math.isfinite(self.duration_s) and self.duration_s > 0):
            raise BenchError(f"--duration must be a positive number of seconds, got {self.duration_s!r}")
        if not 1 <= int(self.n_streams) <= MAX_STREAMS:
            raise BenchError(f"--streams must be between 1 and {MAX_STREAMS}, got {self.n_streams!r}")
        if self.hop_samples is not None and self.hop_samples < 1:
            raise BenchError(f"--hop must be >= 1, got {self.hop_samples!r}")
        if self.peer not in PEERS:
            raise BenchError(f"--peer must be one of {', '.join(PEERS)}, got {self.peer!r}")
        if self.engine not in ("auto", "eager", "compile", "aot", "cuda-graph"):
            raise BenchError(f"--engine must be auto, eager, compile, aot or cuda-graph, got {self.engine!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not (math.isfinite(self.warmup_s) and self.warmup_s >= 0):
            raise BenchError(f"warmup_s must be >= 0 seconds, got {self.warmup_s!r}")
        if self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads!r}")
        if self.chunk_samples is not None and self.chunk_samples < 1:
            raise BenchError(f"chunk_samples must be >= 1, got {self.chunk_samples!r}")
        return self


# ==============================================================================================
# Set-up checks: model vs recording
# ==============================================================================================
@dataclass
class ModelFacts:
    """What the bench needs to know about the model and the recording played."""

    model: str
    sfreq_hz: float
    window_samples: int
    hop_samples: int
    chunk_samples: int
    recording: str
    recording_sfreq_hz: float
    n_eeg_channels: int

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sfreq_hz


#: Config fields the bench reads; a config.json written by ``save_pretrained`` holds them all.
_CONFIG_FIELDS = ("eeg_channel_names", "sfreq_hz", "window_samples", "hop_samples")


def _model_dir(model: str) -> Path:
    """``default`` → the bundled model directory, found without importing the (slow to import)
    model package; anything else → that path."""
    if model != "default":
        return Path(model).expanduser()
    spec = importlib.util.find_spec("brainformer")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("--model default: the brainformer package (with its bundled model) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "default_model"


def _model_config(model: str) -> Dict[str, Any]:
    """The fields of the model's config the bench needs.

    Read from ``config.json`` directly: this process only measures, and importing the model
    package (torch, transformers) here would cost seconds and memory for nothing. The daemon
    validates the whole model directory itself (exit code 2, passed on). When a field is left
    out of the file, the config class supplies its default (slow path).
    """
    directory = _model_dir(model)
    if not directory.is_dir():
        raise BenchError(f"--model {model}: model directory {directory} does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise BenchError(f"--model {model}: {path} is missing (a model directory needs config.json and "
                         "model.safetensors)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BenchError(f"--model {model}: {path} cannot be read as JSON ({error})") from None
    if not isinstance(config, dict):
        raise BenchError(f"--model {model}: {path} is not a JSON object")
    if all(key in config for key in _CONFIG_FIELDS):
        return config
    from brainformer.model_dir import load_config

    try:
        full = load_config(directory)
    except ValueError as error:  # ModelDirError names the file
        raise BenchError(f"--model {model}: {error}") from None
    return {key: getattr(full, key) for key in (*_CONFIG_FIELDS, "head")}


def check_model(settings: BenchSettings) -> ModelFacts:
    """Check that the model can serve the recording played; :class:`BenchError` naming the problem."""
    import mne

    from brainformer_rt.player import default_recording

    config = _model_config(settings.model)
    if config.get("head", "regression") != "regression":
        raise BenchError(f"--model {settings.model}: head {config['head']!r}; the daemon serves regression models")
    recording = Path(settings.recording) if settings.recording else default_recording()
    if not recording.is_file():
        raise BenchError(f"recording not found: {recording}")
    info = mne.io.read_info(recording, verbose="error")
    eeg_names = [info["ch_names"][i] for i in mne.pick_types(info, meg=False, eeg=True, exclude=())]
    model_names = list(config["eeg_channel_names"])
    missing = [name for name in model_names if name not in eeg_names]
    extra = [name for name in eeg_names if name not in set(model_names)]
    if missing or extra:
        raise BenchError(
            f"--model {settings.model}: its {len(model_names)} EEG channels do not match the "
            f"{len(eeg_names)} of the recording the bench plays ({recording.name}): "
            f"missing {missing[:4]}, extra {extra[:4]}")
    sfreq_hz = float(config["sfreq_hz"])
    # The daemon checks the rate exactly; here it only sizes the player's chunks.
    decimation = max(1, round(float(info["sfreq"]) / sfreq_hz))
    window = int(config["window_samples"])
    hop = int(settings.hop_samples or config["hop_samples"])
    if hop > window:
        raise BenchError(f"--hop must be between 1 and the model's window_samples ({window}), got {hop}")
    return ModelFacts(model=str(settings.model), sfreq_hz=sfreq_hz, window_samples=window,
                      hop_samples=hop, chunk_samples=int(settings.chunk_samples or hop * decimation),
                      recording=str(recording), recording_sfreq_hz=float(info["sfreq"]),
                      n_eeg_channels=len(eeg_names))


def machine_info(settings: BenchSettings) -> Dict[str, Any]:
    """The machine and software the numbers were measured on."""
    import psutil
    import pylsl

    def version(package: str) -> Optional[str]:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_count": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "numpy": np.__version__,
        "pylsl": version("pylsl"),
        "liblsl": pylsl.library_version(),
        "pyzmq": version("pyzmq"),
        "device": settings.device,
        "gpu": None,
    }
    if settings.device != "cpu":
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


# ==============================================================================================
# Processes
# ==============================================================================================
def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "brainformer_rt.cli", *args]


class Child:
    """A subprocess with stdout/stderr in files (pipes could fill up and block it)."""

    def __init__(self, name: str, command: Sequence[str], directory: Path):
        self.name = name
        self.command = list(command)
        self.stdout_path = directory / f"{name}.out"
        self.stderr_path = directory / f"{name}.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=err, env=dict(os.environ))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def last_error_line(self) -> str:
        lines = [line.strip() for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        if not lines:
            return "(no output on stderr)"
        return lines[-1].removeprefix("error:").strip()

    def check_alive(self) -> None:
        """Raise when the process ended: :class:`BenchError` for its exit code 2 (it refused the
        model, the stream or a setting), :class:`BenchFailure` otherwise."""
        if not self.alive():
            code = self.process.returncode
            error = BenchError if code == EXIT_USAGE else BenchFailure
            raise error(f"{self.name} exited with code {code}: {self.last_error_line()}")

    def stop(self, timeout_s: float = 20.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s after SIGTERM; killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


_PLAYER_SUMMARY = re.compile(
    r"stopped after (?P<samples>\d+) samples \((?P<seconds>[\d.]+) s\), (?P<overruns>\d+) overruns, "
    r"lateness mean (?P<mean>[\d.]+) ms / max (?P<max>[\d.]+) ms")


def player_summary(child: Child, name: str) -> Dict[str, Any]:
    """The player's own final line (samples, overruns, lateness), read from its output."""
    match = _PLAYER_SUMMARY.search(child.stdout())
    if match is None:
        return {"name": name, "exit_code": child.process.returncode, "samples": None, "seconds": None,
                "overruns": None, "lateness_mean_ms": None, "lateness_max_ms": None}
    return {"name": name, "exit_code": child.process.returncode, "samples": int(match["samples"]),
            "seconds": float(match["seconds"]), "overruns": int(match["overruns"]),
            "lateness_mean_ms": float(match["mean"]), "lateness_max_ms": float(match["max"])}


def peer_main(run: Callable[[Callable[[], bool]], Dict[str, Any]], stats_json: Optional[Path]) -> int:
    """The main of the bench's peer processes (naive loop, relay), after their arguments: the
    loopback LSL configuration, ``run(stop)`` until SIGINT/SIGTERM make ``stop()`` true, one line
    and exit code 2 for a stream or model it cannot use, its statistics to ``stats_json``."""
    from brainformer_rt.lsl_config import use_loopback_config

    use_loopback_config()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stopping = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.append(True))
    try:
        stats = run(lambda: bool(stopping))
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if stats_json is not None:
        Path(stats_json).write_text(json.dumps(stats))
    return 0


def free_tcp_address() -> str:
    """A ``tcp://127.0.0.1:PORT`` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


# ==============================================================================================
# Subscribers and samplers (threads in this process)
# ==============================================================================================
class Arrivals:
    """Every message one output delivered: ``(received_s, newest sample's timestamp, n_samples)``."""

    def __init__(self) -> None:
        self.rows: List[tuple] = []  # list.append is atomic: no lock needed with one writer

    def add(self, received_s: float, newest_timestamp: float, n_samples: int) -> None:
        self.rows.append((received_s, newest_timestamp, n_samples))

    def first_received(self) -> Optional[float]:
        return self.rows[0][0] if self.rows else None

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        """``(n, 3)`` rows received in ``[start_s, end_s)``."""
        rows = np.asarray(self.rows, dtype=np.float64).reshape(-1, 3)
        keep = (rows[:, 0] >= start_s) & (rows[:, 0] < end_s)
        return rows[keep]


class ReceiverThreads:
    """One thread per subscriber, draining until stopped; arrivals keyed by (transport, stream)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.arrivals: Dict[tuple, Arrivals] = {}
        self.errors: List[str] = []
        self.lsl_subscribers: Dict[str, Any] = {}  # stream → its LSLSubscriber (counters stay after close)
        self._threads: List[threading.Thread] = []
        self._subscribers: List[Any] = []

    def add_lsl(self, key: str, subscriber: Any) -> None:
        arrivals = self.arrivals.setdefault(("lsl", key), Arrivals())
        self.lsl_subscribers[key] = subscriber

        def handle(items):
            for item in items:
                arrivals.add(item.received_s, float(item.timestamps[-1]), len(item.timestamps))

        self._start(subscriber, handle, f"lsl-{key}")

    def add_zmq(self, keys: Sequence[str], subscriber: Any) -> None:
        by_stream = {key: self.arrivals.setdefault(("zmq", key), Arrivals()) for key in keys}

        def handle(items):
            for item in items:
                target = by_stream.get(item.header.get("stream"))
                if target is not None:
                    target.add(item.received_s, float(item.timestamps[-1]), len(item.timestamps))

        self._start(subscriber, handle, "zmq")

    def _start(self, subscriber: Any, handle: Callable, name: str) -> None:
        def loop():
            try:
                while not self.stop.is_set():
                    items = subscriber.receive_all(0.1)
                    if items:
                        handle(items)
            except Exception as error:  # noqa: BLE001 - reported by the bench, not lost in a thread
                self.errors.append(f"{name}: {type(error).__name__}: {error}")

        thread = threading.Thread(target=loop, name=f"bench-{name}", daemon=True)
        self._subscribers.append(subscriber)
        self._threads.append(thread)
        thread.start()

    def first_received(self) -> Optional[float]:
        firsts = [a.first_received() for a in self.arrivals.values() if a.first_received() is not None]
        return min(firsts) if firsts else None

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(2.0)
        for subscriber in self._subscribers:
            subscriber.close()


class ResourceSampler:
    """Samples CPU % (100 = one core) and RSS of some processes, and the machine's CPU %."""

    def __init__(self, pids: Sequence[int], interval_s: float = SAMPLE_INTERVAL_S):
        import psutil

        self._psutil = psutil
        self.processes = [psutil.Process(pid) for pid in pids]
        self.interval_s = interval_s
        self.cpu_percent: List[float] = []
        self.rss_bytes: List[float] = []
        self.machine_cpu_percent: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)

    def start(self) -> None:
        for process in self.processes:
            process.cpu_percent(None)  # the first call only sets the reference point
        self._psutil.cpu_percent(None)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.cpu_percent.append(sum(p.cpu_percent(None) for p in self.processes))
                self.rss_bytes.append(sum(p.memory_info().rss for p in self.processes))
                self.machine_cpu_percent.append(self._psutil.cpu_percent(None))
            except self._psutil.Error:  # a process ended: the phase is over
                return

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

        def stats(values, scale=1.0):
            return (float(np.mean(values)) * scale, float(np.max(values)) * scale) if values else (None, None)

        cpu_mean, cpu_max = stats(self.cpu_percent)
        rss_mean, rss_max = stats(self.rss_bytes, 1e-6)
        machine_mean, machine_max = stats(self.machine_cpu_percent)
        return {"samples": len(self.cpu_percent), "interval_s": self.interval_s,
                "cpu_percent_mean": cpu_mean, "cpu_percent_max": cpu_max,
                "rss_mb_mean": rss_mean, "rss_mb_max": rss_max,
                "machine_cpu_percent_mean": machine_mean, "machine_cpu_percent_max": machine_max,
                "machine_cpu_percent_note": f"100 = all {os.cpu_count()} cores busy"}


# ==============================================================================================
# One phase: a system under test, its subscribers, the measurement
# ==============================================================================================
@dataclass
class Phase:
    """The processes and outputs of one system under test."""

    system: str  # "daemon" | "naive" | "relay"
    children: List[Child]
    lsl_outputs: Dict[str, str]  # stream → output LSL name
    zmq_addresses: List[str] = field(default_factory=list)  # each carries one or more streams (by header)
    stats_paths: List[Path] = field(default_factory=list)


def _daemon_excludes_warmup() -> bool:
    """True when the daemon has the ``warmup_s`` setting (timings reset after the warm-up)."""
    from brainformer_rt.daemon import ServeSettings

    return "warmup_s" in {f.name for f in dataclasses.fields(ServeSettings)}


def _start_daemon(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                  directory: Path) -> Phase:
    zmq_address = free_tcp_address()
    lsl_name = f"bench-meg-{run_id}"
    config = directory / "serve.toml"
    # Serving settings of the bench: the same threads as the naive loop; patient stream discovery.
    lines = [f"torch_threads = {settings.threads}", f"wait_s = {STARTUP_TIMEOUT_S}",
             f"busy_poll = {'true' if settings.busy_poll else 'false'}"]
    if _daemon_excludes_warmup():
        # The daemon forgets its timings once the warm-up is over, as the subscribers here do.
        lines.append(f"warmup_s = {settings.warmup_s}")
    config.write_text("\n".join(lines) + "\n")
    stats_path = directory / "daemon-stats.json"
    safety_s = settings.warmup_s + settings.duration_s + STARTUP_TIMEOUT_S  # stopped by SIGTERM well before
    command = _cli("serve", *[arg for s in streams for arg in ("--stream", s)], "--model", settings.model,
                   "--zmq", zmq_address, "--lsl-name", lsl_name, "--hop", str(facts.hop_samples),
                   "--engine", settings.engine, "--device", settings.device, "--duration", f"{safety_s:g}",
                   "--config", str(config), "--stats-json", str(stats_path))
    # The daemon's naming rule (see configs/serve.toml): one stream keeps the name, several get a suffix.
    outputs = {streams[0]: lsl_name} if len(streams) == 1 else {s: f"{lsl_name}-{s}" for s in streams}
    return Phase("daemon", [Child("daemon", command, directory)], outputs, [zmq_address], [stats_path])


def _start_naive(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                 directory: Path) -> Phase:
    children, outputs, stats_paths = [], {}, []
    safety_s = settings.warmup_s + settings.duration_s + STARTUP_TIMEOUT_S
    for i, stream in enumerate(streams):
        out = f"bench-naive-{run_id}-{i}"
        stats_path = directory / f"naive-{i}-stats.json"
        command = [sys.executable, "-m", "brainformer_rt.naive_loop", "--stream", stream, "--model", settings.model,
                   "--lsl-name", out, "--hop", str(facts.hop_samples), "--device", settings.device,
                   "--threads", str(settings.threads), "--duration", f"{safety_s:g}", "--stats-json", str(stats_path)]
        children.append(Child(f"naive-loop-{i}", command, directory))
        outputs[stream] = out
        stats_paths.append(stats_path)
    return Phase("naive", children, outputs, [], stats_paths)


def _start_relay(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                 directory: Path) -> Phase:
    """One relay per stream, each publishing on LSL and on its own ZeroMQ address."""
    children, outputs, stats_paths, zmq_addresses = [], {}, [], []
    safety_s = settings.warmup_s + settings.duration_s + STARTUP_TIMEOUT_S
    # One message per hop of input: the relay does not decimate a recording faster than the model.
    hop_input = facts.hop_samples * max(1, round(facts.recording_sfreq_hz / facts.sfreq_hz))
    for i, stream in enumerate(streams):
        out = f"bench-relay-{run_id}-{i}"
        stats_path = directory / f"relay-{i}-stats.json"
        zmq_address = free_tcp_address()
        command = [sys.executable, "-m", "brainformer_rt.relay", "--stream", stream, "--model", settings.model,
                   "--lsl-name", out, "--hop", str(hop_input), "--duration", f"{safety_s:g}",
                   "--stats-json", str(stats_path), "--zmq", zmq_address]
        children.append(Child(f"relay-{i}", command, directory))
        outputs[stream] = out
        stats_paths.append(stats_path)
        zmq_addresses.append(zmq_address)
    return Phase("relay", children, outputs, zmq_addresses, stats_paths)


def _check_children(children: Sequence[Child]) -> None:
    for child in children:
        child.check_alive()


def _open_subscribers(phase: Phase, receivers: ReceiverThreads, deadline: float) -> None:
    """Open one LSL subscriber per output as each appears; fail early when a process dies."""
    from brainformer_rt.inlet import StreamNotFoundError
    from brainformer_rt.listener import LSLSubscriber

    for stream, name in phase.lsl_outputs.items():
        while True:
            _check_children(phase.children)
            subscriber = LSLSubscriber(name, wait_s=1.0)
            try:
                subscriber.open()
                break
            except StreamNotFoundError:
                if time.monotonic() > deadline:
                    raise BenchFailure(f"{phase.system}: output stream {name!r} did not appear within "
                                       f"{STARTUP_TIMEOUT_S:g} s") from None
        receivers.add_lsl(stream, subscriber)


def run_phase(phase: Phase, settings: BenchSettings, facts: ModelFacts, players: Sequence[Child],
              console: Any) -> Dict[str, Any]:
    """Measure one started system: wait for its first output, skip the warm-up, record
    ``duration_s`` seconds, stop it (SIGTERM) and summarise."""
    import pylsl

    from brainformer_rt.listener import ZMQSubscriber

    receivers = ReceiverThreads()
    sampler = None
    streams = list(phase.lsl_outputs)
    try:
        for address in phase.zmq_addresses:
            zmq_subscriber = ZMQSubscriber(address, b"meg")
            zmq_subscriber.open()
            receivers.add_zmq(streams, zmq_subscriber)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        _open_subscribers(phase, receivers, deadline)
        while receivers.first_received() is None:
            _check_children([*phase.children, *players])
            if time.monotonic() > deadline:
                raise BenchFailure(f"{phase.system}: no prediction arrived within {STARTUP_TIMEOUT_S:g} s")
            time.sleep(0.05)
        first_s = receivers.first_received()
        start_s = first_s + settings.warmup_s
        end_s = start_s + settings.duration_s
        console.print(f"  {phase.system}: first prediction received; warm-up {settings.warmup_s:g} s, "
                      f"then measuring {settings.duration_s:g} s", highlight=False)
        while pylsl.local_clock() < start_s:
            _check_children([*phase.children, *players])
            time.sleep(0.05)
        sampler = ResourceSampler([c.pid for c in phase.children])
        sampler.start()
        while pylsl.local_clock() < end_s:
            _check_children([*phase.children, *players])
            time.sleep(0.05)
        resources = sampler.stop()
        sampler = None
    finally:
        if sampler is not None:
            sampler.stop()
        # Subscribers first: an inlet whose outlet vanishes makes liblsl log reconnection attempts.
        receivers.close()
        codes = [child.stop() for child in phase.children]
    if receivers.errors:
        raise BenchFailure(f"{phase.system}: subscriber failed: {receivers.errors[0]}")
    bad = [(c.name, code) for c, code in zip(phase.children, codes) if code not in (0, -signal.SIGTERM)]
    if bad:
        name, code = bad[0]
        child = next(c for c in phase.children if c.name == name)
        raise BenchFailure(f"{name} exited with code {code}: {child.last_error_line()}")
    return summarise_phase(phase, settings, facts, receivers, start_s, end_s, resources)


def _latency_summary(rows: np.ndarray) -> Dict[str, Any]:
    summary = summarise(rows[:, 0] - rows[:, 1]) if len(rows) else summarise(np.zeros(0))
    summary["samples"] = int(rows[:, 2].sum()) if len(rows) else 0
    return summary


def _outputs(receivers: ReceiverThreads, transport: str, streams: Sequence[str], start_s: float, end_s: float,
             expected_samples: float) -> Optional[Dict[str, Any]]:
    if not any((transport, s) in receivers.arrivals for s in streams):
        return None
    per_stream, pooled = {}, []
    for stream in streams:
        arrivals = receivers.arrivals.get((transport, stream), Arrivals())
        rows = arrivals.between(start_s, end_s)
        pooled.append(rows)
        summary = _latency_summary(rows)
        summary["samples_fraction"] = summary["samples"] / expected_samples
        if transport == "lsl" and stream in receivers.lsl_subscribers:
            # Jumps in the output's timestamps (samples never published, e.g. after a stall).
            summary["timestamp_discontinuities"] = receivers.lsl_subscribers[stream].discontinuities
        per_stream[stream] = summary
    rows = np.concatenate(pooled)
    pooled_summary = _latency_summary(rows)
    pooled_summary["samples_fraction"] = pooled_summary["samples"] / (expected_samples * len(streams))
    excluded = sum(len(a.rows) for (t, _), a in receivers.arrivals.items() if t == transport) - len(rows)
    # Stream by stream in arrival order; 0.1 µs resolution is far below the clock's jitter.
    latencies_ms = np.round((rows[:, 0] - rows[:, 1]) * 1e3, 4)
    return {"pooled": pooled_summary, "streams": per_stream, "messages_not_counted": int(excluded),
            "latencies_ms": latencies_ms.tolist()}


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise_phase(phase: Phase, settings: BenchSettings, facts: ModelFacts, receivers: ReceiverThreads,
                    start_s: float, end_s: float, resources: Dict[str, Any]) -> Dict[str, Any]:
    """The results of one system: latency per output (pooled and per stream) over the measured
    period ``[start_s, end_s)`` (``local_clock()``), its own statistics, overhead, real-time
    factor, whether it kept real time, and its CPU / memory use."""
    streams = list(phase.lsl_outputs)
    measured_s = end_s - start_s
    expected_samples = measured_s * facts.sfreq_hz  # per stream: one predicted sample per input sample
    result: Dict[str, Any] = {
        "system": phase.system,
        "measured_s": measured_s,
        "warmup_s": settings.warmup_s,
        "expected_windows_per_stream": expected_samples / facts.hop_samples,
        "outputs": {"lsl": _outputs(receivers, "lsl", streams, start_s, end_s, expected_samples),
                    "zmq": _outputs(receivers, "zmq", streams, start_s, end_s, expected_samples)},
        "process": resources,
    }
    # The raw latencies (pooled over streams, ms) go to their own key: plots and re-analysis.
    result["latencies_ms"] = {transport: outputs.pop("latencies_ms")
                              for transport, outputs in result["outputs"].items() if outputs is not None}
    hop_s = facts.hop_s
    if phase.system == "daemon":
        stats = _read_json(phase.stats_paths[0])
        if stats is None:
            raise BenchFailure(f"the daemon wrote no statistics ({phase.stats_paths[0].name}): "
                               f"{phase.children[0].last_error_line()}")
        forward = stats["stages"]["forward"]
        totals = stats["totals"]
        busy = None
        if stats.get("duration_s") and forward.get("mean_ms") is not None:
            busy = forward["mean_ms"] * 1e-3 * stats["forward_calls"] / stats["duration_s"]
        result.update({
            "forward_ms": forward,
            "forward_source": "daemon statistics, " + ("after its warm-up" if _daemon_excludes_warmup()
                                                        else "whole serving time (warm-up included)"),
            "stages_ms": stats["stages"],
            "windows": {"served": totals.get("windows_served"), "skipped": totals.get("windows_skipped"),
                        "stale": totals.get("windows_stale"), "forward_calls": stats.get("forward_calls"),
                        "mean_batch": stats.get("mean_batch")},
            "samples_in": totals.get("samples_in"),
            "gaps": totals.get("gaps"),
            "engine": stats.get("info", {}).get("engine"),
            "engine_busy_fraction": busy,
            "daemon_stats": stats,
        })
    elif phase.system == "relay":
        served = skipped = samples_in = 0
        for path, child in zip(phase.stats_paths, phase.children):
            stats = _read_json(path)
            if stats is None:
                raise BenchFailure(f"{child.name} wrote no statistics: {child.last_error_line()}")
            served += stats["windows_served"]
            skipped += stats["windows_skipped"]
            samples_in += stats["samples_in"]
        result.update({
            "forward_ms": summarise(np.zeros(0)),
            "forward_source": "no model",
            "windows": {"served": served, "skipped": skipped, "stale": 0, "forward_calls": 0, "mean_batch": None},
            "samples_in": samples_in,
            "engine": {"kind": "none"},
            "engine_busy_fraction": None,
        })
    else:
        forwards, served, skipped, samples_in, threads = [], 0, 0, 0, None
        for path, child in zip(phase.stats_paths, phase.children):
            stats = _read_json(path)
            if stats is None:
                raise BenchFailure(f"{child.name} wrote no statistics: {child.last_error_line()}")
            forwards += [duration for at, duration in stats["forwards"] if start_s <= at < end_s]
            served += stats["windows_served"]
            skipped += stats["windows_skipped"]
            samples_in += stats["samples_in"]
            threads = stats["torch_threads"]
        forward = summarise(np.asarray(forwards, dtype=np.float64))
        result.update({
            "forward_ms": forward,
            "forward_source": "naive loop's own timing (measured period only)",
            "windows": {"served": served, "skipped": skipped, "stale": 0, "forward_calls": served, "mean_batch": 1.0},
            "samples_in": samples_in,
            "preprocessing": "brainformer.preprocessing (same as the daemon)",
            "engine": {"kind": "eager", "torch_threads": threads},
            "engine_busy_fraction": (float(np.sum(forwards)) / measured_s / len(streams)) if forwards else None,
        })
    forward = result["forward_ms"]
    result["rtf"] = None if forward.get("mean_ms") is None else forward["mean_ms"] * 1e-3 / hop_s
    result["rtf_p99"] = None if forward.get("p99_ms") is None else forward["p99_ms"] * 1e-3 / hop_s
    # No forward (the relay): the whole latency is overhead.
    forward_p99 = 0.0 if phase.system == "relay" else forward.get("p99_ms")
    result["overhead_ms"] = {
        transport: (None if outputs is None or outputs["pooled"]["p99_ms"] is None or forward_p99 is None
                    else outputs["pooled"]["p99_ms"] - forward_p99)
        for transport, outputs in result["outputs"].items()}
    windows = result["windows"]
    due = (windows["served"] or 0) + (windows["skipped"] or 0) + (windows["stale"] or 0)
    dropped_fraction = ((windows["skipped"] or 0) + (windows["stale"] or 0)) / due if due else None
    # The subscriber side: every input sample should come back as one predicted sample.
    counted = result["outputs"]["zmq"] or result["outputs"]["lsl"]
    fractions = [s["samples_fraction"] for s in counted["streams"].values()] if counted else [0.0]
    result["real_time"] = {
        "dropped_window_fraction": dropped_fraction,
        "samples_received_fraction_min": min(fractions),
        "kept": bool(dropped_fraction is not None and dropped_fraction <= REAL_TIME_TOLERANCE
                     and min(fractions) >= 1 - REAL_TIME_TOLERANCE),
    }
    return result


# ==============================================================================================
# The whole run
# ==============================================================================================
def run_bench(settings: BenchSettings, console: Any = None) -> Dict[str, Any]:
    """Players → daemon phase → naive phase (``peer == "naive"``) → players stopped; the results.

    Raises :class:`BenchError` for unusable settings and :class:`BenchFailure` when the run fails.
    """
    from brainformer_rt.lsl_config import in_loopback_namespace, use_loopback_config

    if console is None:
        from rich.console import Console

        console = Console()
    settings.validate()
    use_loopback_config()
    facts = check_model(settings)
    started = time.time()
    run_id = uuid.uuid4().hex[:6]
    streams = [f"bench-eeg-{i}-{run_id}" for i in range(settings.n_streams)]
    machine = machine_info(settings)
    machine["loopback_namespace"] = in_loopback_namespace()
    results: Dict[str, Any] = {
        "version": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "settings": {**dataclasses.asdict(settings), **dataclasses.asdict(facts), "hop_ms": facts.hop_s * 1e3,
                     "order": (("daemon first, then the naive loop (one process per stream), one after the other "
                                "on the same player streams") if settings.peer == "naive" else "daemon only")
                     + ("; then the relay (transport floor, one process per stream)" if settings.floor else ""),
                     "naive_loop": NAIVE_DESCRIPTION if settings.peer == "naive" else None},
        "machine": machine,
        "latency_definition": "local_clock() at the subscriber - timestamp of the newest sample of the message "
                              "(= the time its EEG sample was due and pushed by the player)",
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="brainformer-bench-") as tmp:
        directory = Path(tmp)
        players = []
        try:
            console.print(f"starting {len(streams)} player(s): {Path(facts.recording).name} at "
                          f"{facts.recording_sfreq_hz:g} Hz, chunks of {facts.chunk_samples} samples", highlight=False)
            for i, stream in enumerate(streams):
                players.append(Child(f"player-{i}", _cli(
                    "simulate", "--file", facts.recording, "--loop", "--chunk", str(facts.chunk_samples),
                    "--source-id", f"bench-{uuid.uuid4()}", "--name", stream,
                    *(["--aligned"] if settings.aligned else [])), directory))
            systems = ([("daemon", _start_daemon)] + ([("naive", _start_naive)] if settings.peer == "naive" else [])
                       + ([("relay", _start_relay)] if settings.floor else []))
            for system, start in systems:
                console.print(f"{system}: starting (model {settings.model}, hop {facts.hop_samples}"
                              + (f", {settings.threads} torch thread(s)" if system != "relay" else ", no model")
                              + ") …", highlight=False)
                phase = start(settings, facts, streams, run_id, directory)
                results["systems"][system] = run_phase(phase, settings, facts, players, console)
        finally:
            for player in players:
                player.stop()
        results["players"] = [player_summary(p, s) for p, s in zip(players, streams)]
    results["ratio"] = _ratio(results)
    results["floor"] = _floor(results)
    results["elapsed_s"] = time.time() - started
    return json_ready(results)


def _ratio(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    systems = results["systems"]
    if "naive" not in systems:
        return None
    daemon = systems["daemon"]["outputs"]["lsl"]["pooled"]
    naive = systems["naive"]["outputs"]["lsl"]["pooled"]
    if not daemon["p99_ms"] or not naive["p99_ms"]:
        return None
    p99 = daemon["p99_ms"] / naive["p99_ms"]
    return {"p99_lsl": p99, "median_lsl": daemon["median_ms"] / naive["median_ms"], "goal": RATIO_GOAL,
            "met": p99 <= RATIO_GOAL, "note": "daemon / naive loop, both measured on their LSL output"}


def _floor(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The relay's p99 per output, and the daemon's overhead above it (p99 e2e − p99 forward − floor)."""
    systems = results["systems"]
    if "relay" not in systems:
        return None
    floor: Dict[str, Any] = {"note": "relay (the daemon's transport, no model): its whole latency"}
    for transport in ("lsl", "zmq"):
        relay = systems["relay"]["outputs"].get(transport)
        if relay is None or relay["pooled"]["p99_ms"] is None:
            continue
        entry = {"p99_ms": relay["pooled"]["p99_ms"], "median_ms": relay["pooled"]["median_ms"]}
        daemon_overhead = systems["daemon"]["overhead_ms"].get(transport)
        if daemon_overhead is not None:
            entry["daemon_overhead_above_floor_ms"] = daemon_overhead - entry["p99_ms"]
        floor[transport] = entry
    return floor


# ==============================================================================================
# Report: table, plot
# ==============================================================================================
def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _quad(summary: Optional[Dict[str, Any]]) -> str:
    if not summary or summary.get("p99_ms") is None:
        return "–"
    return " / ".join(_fmt(summary[k]) for k in ("median_ms", "p95_ms", "p99_ms", "max_ms"))


def results_table(results: Dict[str, Any]):
    """Rich renderables: latency percentiles (one row per system and output, and the forward),
    one column per system for everything else, the daemon's stages, per-stream latencies
    (several streams) and the notes (ratio, warm-up, order, player lateness, machine)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = results["settings"]
    systems = results["systems"]
    names = list(systems)
    labels = {"daemon": "daemon (busy-poll)" if s.get("busy_poll") else "daemon", "naive": "naive loop",
              "relay": "relay (floor)"}
    title = (f"brainformer-rt bench: {s['n_streams']} stream(s), hop {s['hop_samples']} ({s['hop_ms']:.1f} ms), "
             f"{s['threads']} torch thread(s), device {s['device']}, model {s['model']}")

    latency = Table(title=title + "\nlatency (ms)", title_justify="left")
    for column in ("", "count", "median", "p95", "p99", "max"):
        latency.add_column(column, justify="left" if not column else "right")
    for name in names:
        system = systems[name]
        for transport, what in (("lsl", "e2e LSL"), ("zmq", "e2e ZeroMQ")):
            outputs = system["outputs"].get(transport)
            if outputs:
                summary = outputs["pooled"]
                latency.add_row(f"{labels[name]} {what}", str(summary["count"]),
                                *(_fmt(summary[k]) for k in ("median_ms", "p95_ms", "p99_ms", "max_ms")), style="bold")
        forward = system["forward_ms"]
        if name == "relay":
            continue  # no model
        latency.add_row(f"{labels[name]} model forward", str(forward["count"]),
                        *(_fmt(forward[k]) for k in ("median_ms", "p95_ms", "p99_ms", "max_ms")))

    table = Table(title="per system (real-time factor = forward time / hop duration)", title_justify="left")
    table.add_column("")
    for name in names:
        kind = (systems[name].get("engine") or {}).get("kind", "?")
        table.add_column(labels[name] if name == "relay" else f"{labels[name]} ({kind})", justify="right")

    def row(label: str, get: Callable[[Dict[str, Any]], str]) -> None:
        table.add_row(label, *(get(systems[n]) for n in names))

    row("overhead ms LSL (p99 e2e − p99 fwd)", lambda x: _fmt(x["overhead_ms"]["lsl"]))
    row("overhead ms ZeroMQ", lambda x: _fmt(x["overhead_ms"]["zmq"]))
    row("real-time factor (mean / p99)", lambda x: f"{_fmt(x['rtf'], 3)} / {_fmt(x['rtf_p99'], 3)}")
    row("windows served / skipped / stale", lambda x: " / ".join(
        str(x["windows"][k]) if x["windows"][k] is not None else "–" for k in ("served", "skipped", "stale")))
    row("samples received / expected",
        lambda x: f"{x['real_time']['samples_received_fraction_min']:.3f}")
    row("kept real time", lambda x: "yes" if x["real_time"]["kept"] else "[red]no[/]")
    row("CPU % mean / max (100 = 1 core)", lambda x: " / ".join(
        _fmt(x["process"][k], 0) for k in ("cpu_percent_mean", "cpu_percent_max")))
    row("RSS MB (max)", lambda x: _fmt(x["process"]["rss_mb_max"], 0))
    row("machine CPU % mean (all cores)",
        lambda x: _fmt(x["process"]["machine_cpu_percent_mean"], 0))
    parts = [latency, table]

    daemon = systems.get("daemon")
    if daemon is not None:
        stages = Table(title=f"daemon stages (ms; {daemon['forward_source']})", title_justify="left")
        for column in ("stage", "count", "median", "p95", "p99", "max"):
            stages.add_column(column, justify="left" if column == "stage" else "right")
        for stage, summary in daemon["stages_ms"].items():
            stages.add_row(stage, str(summary["count"]),
                           *(_fmt(summary[k], 3) for k in ("median_ms", "p95_ms", "p99_ms", "max_ms")))
        parts.append(stages)
        if s["n_streams"] > 1:
            per_stream = Table(title="daemon per stream (ms)", title_justify="left")
            for column in ("stream", "LSL p99", "ZeroMQ p99", "received / expected"):
                per_stream.add_column(column, justify="left" if column == "stream" else "right")
            for stream, lsl in daemon["outputs"]["lsl"]["streams"].items():
                zmq = daemon["outputs"]["zmq"]["streams"][stream]
                per_stream.add_row(stream, _fmt(lsl["p99_ms"]), _fmt(zmq["p99_ms"]), f"{zmq['samples_fraction']:.3f}")
            parts.append(per_stream)

    notes = []
    ratio = results.get("ratio")
    if ratio:
        verdict = "[green]goal met[/]" if ratio["met"] else "[red]goal not met[/]"
        notes.append(f"[bold]p99 ratio daemon / naive loop (LSL outputs): {ratio['p99_lsl']:.2f}[/] "
                     f"(goal ≤ {ratio['goal']:g}: {verdict}); median ratio {ratio['median_lsl']:.2f}")
    floor = results.get("floor")
    if floor:
        for transport, what in (("lsl", "LSL"), ("zmq", "ZeroMQ")):
            if transport in floor:
                entry = floor[transport]
                above = entry.get("daemon_overhead_above_floor_ms")
                notes.append(f"[bold]transport floor {what} (relay, no model): p99 {entry['p99_ms']:.2f} ms[/], median "
                             f"{entry['median_ms']:.2f} ms" + ("" if above is None else
                                                             f"; daemon overhead above it {above:.2f} ms"))
    notes.append(f"warm-up: the first {s['warmup_s']:g} s after the first prediction are not counted, then "
                 f"{s['duration_s']:g} s are measured per system. Order: {s['order']}.")
    if s.get("naive_loop"):
        notes.append(f"naive loop: {s['naive_loop']}.")
    if daemon is not None and "warm-up included" in daemon["forward_source"]:
        notes.append("[yellow]the daemon's forward and stage times include its warm-up[/] (this daemon version "
                     "cannot leave it out): its p99 forward may be too high and its overhead too low.")
    notes.append("latency = local_clock() when the subscriber read a message − timestamp of its newest sample "
                 f"(the time the player pushed that EEG sample; players push chunks of {s['chunk_samples']}"
                 f"{', in step' if s.get('aligned') else ''}).")
    lateness = [p for p in results.get("players", []) if p.get("lateness_max_ms") is not None]
    if lateness:
        notes.append("player lateness over the whole run (included in the latencies): mean "
                     f"{max(p['lateness_mean_ms'] for p in lateness):.3f} ms, max "
                     f"{max(p['lateness_max_ms'] for p in lateness):.1f} ms, "
                     f"{sum(p['overruns'] for p in lateness)} overruns (worst player)")
    m = results["machine"]
    notes.append(f"machine: {m['cpu_count']} CPU ({m['cpu_model']}), load {_fmt(m['load_average_1min_at_start'], 2)} "
                 f"at start, torch {m['torch']}, liblsl {m['liblsl']}, device {m['device']}"
                 + (f" ({m['gpu']})" if m.get("gpu") else "")
                 + ("" if m.get("loopback_namespace") else "; [yellow]not in a loopback-only namespace[/]"))
    parts.extend(Text.from_markup(note) for note in notes)
    return Group(*parts)


def write_plot(results: Dict[str, Any], path: Path) -> Path:
    """Latency histogram and CDF (log time axis) of every system and output, p50/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    series = []
    for system, result in results["systems"].items():
        for transport in ("lsl", "zmq"):
            latencies = result.get("latencies_ms", {}).get(transport)
            if latencies is not None and len(latencies):
                label = f"{ {'daemon': 'daemon', 'naive': 'naive loop', 'relay': 'relay (floor)'}[system]} {transport.upper()}"
                series.append((label, np.asarray(latencies, dtype=np.float64)))
    if not series:
        raise BenchFailure("nothing to plot: no latency was measured")
    low = max(min(float(v.min()) for _, v in series), 1e-3)
    high = max(float(v.max()) for _, v in series)
    bins = np.geomspace(low, high * 1.0001, 80)
    figure, (hist_axis, cdf_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, values) in enumerate(series):
        colour = colours[index % len(colours)]
        p50, p99 = np.percentile(values, [50, 99])
        hist_axis.hist(values, bins=bins, histtype="step", color=colour, label=f"{label} (n={len(values)})")
        ordered = np.sort(values)
        cdf_axis.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), color=colour,
                      label=f"{label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        for axis in (hist_axis, cdf_axis):
            axis.axvline(p50, color=colour, linestyle="--", linewidth=0.8)
            axis.axvline(p99, color=colour, linestyle=":", linewidth=1.2)
    s = results["settings"]
    for axis in (hist_axis, cdf_axis):
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("end-to-end latency (ms): EEG sample pushed → prediction received")
        axis.grid(True, which="both", alpha=0.3)
    hist_axis.set_ylabel("messages")
    hist_axis.legend(fontsize=8)
    cdf_axis.set_ylabel("fraction of messages")
    cdf_axis.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"brainformer-rt bench: {s['n_streams']} stream(s), hop {s['hop_samples']} "
                    f"({s['hop_ms']:.1f} ms), {s['duration_s']:g} s after {s['warmup_s']:g} s warm-up "
                    "(dashed: p50, dotted: p99)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ==============================================================================================
# CLI
# ==============================================================================================
def bench_command(
    model: Optional[str] = None,
    duration: float = DEFAULT_DURATION_S,
    n_streams: int = 1,
    hop: Optional[int] = None,
    engine: str = "auto",
    device: str = "cpu",
    json_path: Optional[Path] = None,
    plot: Optional[Path] = None,
    peer: str = "naive",
    floor: bool = False,
    busy_poll: bool = False,
    warmup_s: float = DEFAULT_WARMUP_S,
    threads: int = DEFAULT_THREADS,
    chunk: Optional[int] = None,
    aligned: bool = False,
) -> Dict[str, Any]:
    """CLI ``bench``: run the benchmark, print the tables, write ``--json`` / ``--plot``.

    Re-executes itself inside a loopback-only network namespace first when it can; otherwise
    warns and goes on with the loopback LSL configuration alone. Exit code 2 for unusable
    options, 1 when the run fails.
    """
    import typer
    from rich.console import Console

    from brainformer_rt.lsl_config import reexec_in_loopback_namespace, use_loopback_config

    use_loopback_config()
    console = Console()
    err_console = Console(stderr=True)
    if not reexec_in_loopback_namespace():
        err_console.print("[yellow]warning:[/] no loopback-only network namespace (needs root or user namespaces); "
                          "running with the loopback LSL configuration alone", highlight=False, soft_wrap=True)
    # Jumps in the measured outputs' timestamps are counted in the results, not logged as warnings.
    logging.getLogger("brainformer_rt.inlet").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not root.handlers:
        # Warnings and errors only (the root logger's default level): progress goes to the console.
        from rich.logging import RichHandler

        root.addHandler(RichHandler(console=err_console, show_path=False))
    settings = BenchSettings(model=model or "default", duration_s=duration, n_streams=n_streams, hop_samples=hop,
                             engine=engine, device=device, peer=peer, floor=floor, busy_poll=busy_poll, warmup_s=warmup_s, threads=threads,
                             chunk_samples=chunk, aligned=aligned)
    try:
        results = run_bench(settings, console)
    except BenchError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except BenchFailure as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILURE) from None
    console.print(results_table(results))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=1))
        console.print(f"results written to {json_path}", highlight=False)
    if plot is not None:
        write_plot(results, Path(plot))
        console.print(f"plot written to {plot}", highlight=False)
    return results
