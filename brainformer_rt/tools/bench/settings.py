"""What one bench run measures (:class:`BenchSettings`), the facts of the model and recording it
plays (:class:`ModelFacts`), the machine it runs on, and the two ways a run ends early."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from brainformer.paths import SAMPLE_RECORDING
from brainformer.model_dir import load_fields
from brainformer_rt.serving.delay import published_delay

__all__ = ["BenchError", "BenchFailure", "BenchSettings", "ModelFacts", "check_model", "machine_info",
           "DEFAULT_DURATION_S", "DEFAULT_WARMUP_S", "DEFAULT_THREADS", "PEERS", "MAX_STREAMS",
           "STARTUP_TIMEOUT_S", "SAMPLE_INTERVAL_S", "REAL_TIME_TOLERANCE", "RATIO_GOAL"]

#: Seconds measured after the warm-up, per system.
DEFAULT_DURATION_S = 60.0
#: Arrivals in the first seconds after the first one are not counted.
DEFAULT_WARMUP_S = 3.0
#: torch threads of both systems: the other core stays free for the players and the subscribers.
DEFAULT_THREADS = 1
PEERS = ("naive", "none")
MAX_STREAMS = 64
ENGINES = ("auto", "eager", "compile", "aot", "cuda-graph")
#: How long a system may take to start (imports, model load, engine set-up, stream discovery).
STARTUP_TIMEOUT_S = 300.0
#: Seconds between two CPU / memory samples of the system under test.
SAMPLE_INTERVAL_S = 0.5
#: Real time is kept when at most this fraction of the due windows was skipped or dropped as
#: stale, and at least 1 − this fraction of the expected samples reached the subscriber.
REAL_TIME_TOLERANCE = 0.02
#: Goal for the p99 ratio daemon / naive loop.
RATIO_GOAL = 0.5


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
        also_engines: more daemon phases, one per engine (``daemon-<engine>``), after the first
            daemon and before the naive loop: engines compared in one run.
        also_rates_hz: more daemon phases (the first daemon's engine), one per rate
            (``daemon@<rate>Hz``), each serving the recording played at that rate by a player
            of its own (``simulate --rate``): the daemon resamples it; a resampled source
            compared with the native one in one run.
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
        cold_cache: first a daemon phase ``daemon-cold`` on an empty compiled-forward cache and an
            empty inductor cache (as on a machine that never compiled this model), whose build
            runs while it is measured; then the other phases on the cache that build filled (the
            bench's own, removed at the end). First-run latency as a new user meets it.
    """

    model: str = "default"
    duration_s: float = DEFAULT_DURATION_S
    n_streams: int = 1
    hop_samples: Optional[int] = None
    engine: str = "auto"
    also_engines: Tuple[str, ...] = ()
    also_rates_hz: Tuple[float, ...] = ()
    device: str = "cpu"
    peer: str = "naive"
    floor: bool = False
    busy_poll: bool = False
    warmup_s: float = DEFAULT_WARMUP_S
    threads: int = DEFAULT_THREADS
    chunk_samples: Optional[int] = None
    recording: Optional[str] = None
    aligned: bool = False
    cold_cache: bool = False

    def validate(self) -> "BenchSettings":
        if not (isinstance(self.duration_s, (int, float)) and math.isfinite(self.duration_s) and self.duration_s > 0):
            raise BenchError(f"--duration must be a positive number of seconds, got {self.duration_s!r}")
        if not 1 <= int(self.n_streams) <= MAX_STREAMS:
            raise BenchError(f"--streams must be between 1 and {MAX_STREAMS}, got {self.n_streams!r}")
        if self.hop_samples is not None and self.hop_samples < 1:
            raise BenchError(f"--hop must be >= 1, got {self.hop_samples!r}")
        if self.peer not in PEERS:
            raise BenchError(f"--peer must be one of {', '.join(PEERS)}, got {self.peer!r}")
        for engine in (self.engine, *self.also_engines):
            if engine not in ENGINES:
                raise BenchError(f"--engine and --also-engine must be auto, eager, compile, aot or cuda-graph, "
                                 f"got {engine!r}")
        if len(set((self.engine, *self.also_engines))) != 1 + len(self.also_engines):
            raise BenchError(f"--also-engine repeats an engine: {self.engine}, {', '.join(self.also_engines)}")
        for rate in self.also_rates_hz:
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 10.0 <= rate <= 100_000.0):
                raise BenchError(f"--also-rate must be a rate in Hz between 10 and 100000, got {rate!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not (math.isfinite(self.warmup_s) and self.warmup_s >= 0):
            raise BenchError(f"warmup_s must be >= 0 seconds, got {self.warmup_s!r}")
        if self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads!r}")
        if self.cold_cache and self.engine not in ("auto", "aot", "compile"):
            raise BenchError(f"--cold-cache measures a compiling engine (auto, aot or compile), not --engine {self.engine}")
        if self.chunk_samples is not None and self.chunk_samples < 1:
            raise BenchError(f"chunk_samples must be >= 1, got {self.chunk_samples!r}")
        return self


@dataclass
class ModelFacts:
    """What the bench needs to know about the model and the recording played; ``delay``: the
    delay its filters put on the brain signal (`brainformer_rt.serving.delay.published_delay`)."""

    model: str
    sfreq_hz: float
    window_samples: int
    hop_samples: int
    chunk_samples: int
    recording: str
    recording_sfreq_hz: float
    n_eeg_channels: int
    delay: Dict[str, Any]

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sfreq_hz

    @property
    def decimation(self) -> int:
        """Recording samples per model sample."""
        return _decimation(self.recording_sfreq_hz, self.sfreq_hz)


def check_model(settings: BenchSettings) -> ModelFacts:
    """Check that the model can serve the recording played; :class:`BenchError` naming the problem."""
    import mne

    try:
        config = load_fields(settings.model)
    except ValueError as error:  # ModelDirError names the file
        raise BenchError(f"--model {settings.model}: {error}") from None
    if config.head != "regression":
        raise BenchError(f"--model {settings.model}: head {config.head!r}; the daemon serves regression models")
    recording = Path(settings.recording) if settings.recording else SAMPLE_RECORDING
    if not recording.is_file():
        raise BenchError(f"recording not found: {recording}")
    info = mne.io.read_info(recording, verbose="error")
    eeg_names = [info["ch_names"][i] for i in mne.pick_types(info, meg=False, eeg=True, exclude=())]
    model_names = list(config.eeg_channel_names)
    missing = [name for name in model_names if name not in eeg_names]
    extra = [name for name in eeg_names if name not in set(model_names)]
    if missing or extra:
        raise BenchError(
            f"--model {settings.model}: its {len(model_names)} EEG channels do not match the "
            f"{len(eeg_names)} of the recording the bench plays ({recording.name}): "
            f"missing {missing[:4]}, extra {extra[:4]}")
    window = int(config.window_samples)
    hop = int(settings.hop_samples or config.hop_samples)
    if hop > window:
        raise BenchError(f"--hop must be between 1 and the model's window_samples ({window}), got {hop}")
    sfreq_hz = float(config.sfreq_hz)
    chunk = settings.chunk_samples or hop * _decimation(float(info["sfreq"]), sfreq_hz)
    try:
        delay = published_delay(config)
    except ValueError as error:
        raise BenchError(f"--model {settings.model}: its filters: {error}") from None
    return ModelFacts(model=str(settings.model), sfreq_hz=sfreq_hz, window_samples=window, hop_samples=hop,
                      chunk_samples=int(chunk), recording=str(recording), recording_sfreq_hz=float(info["sfreq"]),
                      n_eeg_channels=len(eeg_names), delay=delay)


def _decimation(recording_sfreq_hz: float, model_sfreq_hz: float) -> int:
    # The daemon checks the rate exactly; here it only sizes the player's chunks and the relay's hop.
    return max(1, round(recording_sfreq_hz / model_sfreq_hz))


def machine_info(settings: BenchSettings) -> Dict[str, Any]:
    """The machine and software the numbers were measured on."""
    import psutil
    import pylsl

    info = {
        "cpu_count": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": np.__version__,
        "pylsl": _version("pylsl"),
        "liblsl": pylsl.library_version(),
        "pyzmq": _version("pyzmq"),
        "device": settings.device,
        "gpu": None,
    }
    if settings.device != "cpu":
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
