"""The processes of a bench run: the players, and one system under test per phase (the daemon,
the naive loops, the relays), each started as a user would start it."""

from __future__ import annotations

import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from brainformer.errors import EXIT_USAGE
from brainformer_rt.tools._proc import ChildProcess, free_tcp_address, rt_cli
from brainformer_rt.tools.bench.settings import (
    STARTUP_TIMEOUT_S,
    BenchError,
    BenchFailure,
    BenchSettings,
    ModelFacts,
)

__all__ = ["Phase", "check_alive", "clock_path", "player_summary", "start_player", "SYSTEM_STARTERS"]

NAIVE_LOOP_MODULE = "brainformer_rt.tools.naive_loop"
RELAY_MODULE = "brainformer_rt.tools.relay"


@dataclass
class Phase:
    """The processes and outputs of one system under test."""

    system: str  # "daemon" | "naive" | "relay" (the phase's name in the results may add the engine)
    children: List[ChildProcess]
    lsl_outputs: Dict[str, str]  # stream → output LSL name
    zmq_addresses: List[str] = field(default_factory=list)  # each carries one or more streams (by header)
    stats_paths: List[Path] = field(default_factory=list)


def check_alive(children: Sequence[ChildProcess]) -> None:
    """Raise when a process ended: :class:`BenchError` for its exit code 2 (it refused the model,
    the stream or a setting), :class:`BenchFailure` otherwise."""
    for child in children:
        code = child.returncode
        if code is not None:
            error = BenchError if code == EXIT_USAGE else BenchFailure
            raise error(f"{child.name} exited with code {code}: {child.last_error_line()}")


def clock_path(directory: Path, stream: str) -> Path:
    """Where the player of ``stream`` writes its playback clock (``simulate --clock-file``)."""
    return directory / f"{stream}.clock.json"


def start_player(index: int, stream: str, facts: ModelFacts, aligned: bool, directory: Path,
                 rate_hz: Optional[float] = None) -> ChildProcess:
    """A ``simulate`` of ``stream``, looping the recording at its real rate, or resampled to
    ``rate_hz`` (``simulate --rate``) in chunks of one hop's duration at that rate; its playback
    clock goes to `clock_path`."""
    chunk = facts.chunk_samples if rate_hz is None else max(1, round(facts.hop_s * rate_hz))
    rate = [] if rate_hz is None else ["--rate", f"{rate_hz:g}"]
    return ChildProcess(f"player-{index}" + ("" if rate_hz is None else f"-{rate_hz:g}Hz"), rt_cli(
        "simulate", "--file", facts.recording, "--loop", "--chunk", str(chunk), *rate,
        "--source-id", f"bench-{uuid.uuid4()}", "--name", stream, "--clock-file", str(clock_path(directory, stream)),
        *(["--aligned"] if aligned else [])), directory)


_PLAYER_SUMMARY = re.compile(
    r"stopped after (?P<samples>\d+) samples \((?P<seconds>[\d.]+) s\), (?P<overruns>\d+) overruns, "
    r"lateness mean (?P<mean>[\d.]+) ms / max (?P<max>[\d.]+) ms")


def player_summary(child: ChildProcess, name: str) -> Dict[str, Any]:
    """The player's own final line (samples, overruns, lateness), read from its output."""
    match = _PLAYER_SUMMARY.search(child.stdout())
    if match is None:
        return {"name": name, "exit_code": child.returncode, "samples": None, "seconds": None,
                "overruns": None, "lateness_mean_ms": None, "lateness_max_ms": None}
    return {"name": name, "exit_code": child.returncode, "samples": int(match["samples"]),
            "seconds": float(match["seconds"]), "overruns": int(match["overruns"]),
            "lateness_mean_ms": float(match["mean"]), "lateness_max_ms": float(match["max"])}


def _safety_s(settings: BenchSettings) -> float:
    """How long a system serves at most: it is stopped by SIGTERM well before."""
    return settings.warmup_s + settings.duration_s + STARTUP_TIMEOUT_S


def _python_module(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def start_daemon(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                 directory: Path) -> Phase:
    """One daemon serving every stream, on LSL and one ZeroMQ address."""
    zmq_address = free_tcp_address()
    lsl_name = f"bench-meg-{run_id}"
    config = directory / "serve.toml"
    # The same threads as the naive loop; patient stream discovery; the daemon forgets its timings
    # once the warm-up is over, as the subscribers here do.
    config.write_text("\n".join([f"torch_threads = {settings.threads}", f"wait_s = {STARTUP_TIMEOUT_S}",
                                 f"busy_poll = {'true' if settings.busy_poll else 'false'}",
                                 f"warmup_s = {settings.warmup_s}"]) + "\n")
    stats_path = directory / f"daemon-{run_id}-stats.json"
    command = rt_cli("serve", *[arg for s in streams for arg in ("--stream", s)], "--model", settings.model,
                     "--zmq", zmq_address, "--lsl-name", lsl_name, "--hop", str(facts.hop_samples),
                     "--engine", settings.engine, "--device", settings.device, "--duration", f"{_safety_s(settings):g}",
                     "--config", str(config), "--stats-json", str(stats_path))
    # The daemon's naming rule (see configs/serve.toml): one stream keeps the name, several get a suffix.
    outputs = {streams[0]: lsl_name} if len(streams) == 1 else {s: f"{lsl_name}-{s}" for s in streams}
    return Phase("daemon", [ChildProcess("daemon", command, directory)], outputs, [zmq_address], [stats_path])


def start_naive(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                directory: Path) -> Phase:
    """One naive loop per stream, each on its own LSL outlet."""
    phase = Phase("naive", [], {})
    for i, stream in enumerate(streams):
        out = f"bench-naive-{run_id}-{i}"
        stats_path = directory / f"naive-{i}-stats.json"
        command = _python_module(
            NAIVE_LOOP_MODULE, "--stream", stream, "--model", settings.model, "--lsl-name", out,
            "--hop", str(facts.hop_samples), "--device", settings.device, "--threads", str(settings.threads),
            "--duration", f"{_safety_s(settings):g}", "--stats-json", str(stats_path))
        phase.children.append(ChildProcess(f"naive-loop-{i}", command, directory))
        phase.lsl_outputs[stream] = out
        phase.stats_paths.append(stats_path)
    return phase


def start_relay(settings: BenchSettings, facts: ModelFacts, streams: Sequence[str], run_id: str,
                directory: Path) -> Phase:
    """One relay per stream, each publishing on LSL and on its own ZeroMQ address."""
    phase = Phase("relay", [], {})
    # One message per hop of input: the relay does not decimate a recording faster than the model.
    hop_input = facts.hop_samples * facts.decimation
    for i, stream in enumerate(streams):
        out = f"bench-relay-{run_id}-{i}"
        stats_path = directory / f"relay-{i}-stats.json"
        zmq_address = free_tcp_address()
        command = _python_module(
            RELAY_MODULE, "--stream", stream, "--model", settings.model, "--lsl-name", out, "--hop", str(hop_input),
            "--duration", f"{_safety_s(settings):g}", "--stats-json", str(stats_path), "--zmq", zmq_address)
        phase.children.append(ChildProcess(f"relay-{i}", command, directory))
        phase.lsl_outputs[stream] = out
        phase.stats_paths.append(stats_path)
        phase.zmq_addresses.append(zmq_address)
    return phase


#: How each system under test starts, by name.
SYSTEM_STARTERS = {"daemon": start_daemon, "naive": start_naive, "relay": start_relay}
