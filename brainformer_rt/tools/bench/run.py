"""The whole bench run: players → daemon phase → naive phase → relay phase → players stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from brainformer_rt.serving.metrics import json_ready
from brainformer_rt.tools._proc import stop_all
from brainformer_rt.tools.bench.delay import DelayProbe, ZeroPhaseTruth
from brainformer_rt.tools.bench.phases import STOP_TIMEOUT_S, run_phase
from brainformer_rt.tools.bench.processes import SYSTEM_STARTERS, clock_path, player_summary, start_player
from brainformer_rt.tools.bench.settings import BenchError, BenchSettings, ModelFacts, check_model, machine_info
from brainformer_rt.tools.bench.summary import engine_goals, ratio, resampled_vs_native, transport_floor
from brainformer_rt.tools.naive_loop import DESCRIPTION as NAIVE_DESCRIPTION

__all__ = ["run_bench", "RESULTS_VERSION"]

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
LATENCY_DEFINITION = ("local_clock() at the subscriber - timestamp of the newest sample of the message "
                      "(= the time its EEG sample was due and pushed by the player)")


def run_bench(settings: BenchSettings, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Run every system of ``settings`` one after the other on the same player streams; the results.

    ``progress`` receives one line per step (default: the log, at INFO). Raises
    :class:`BenchError` for unusable settings and :class:`BenchFailure` when the run fails.
    """
    from brainformer_rt.serving.lsl_config import in_loopback_namespace, use_loopback_config

    progress = progress or logger.info
    settings.validate()
    use_loopback_config()
    facts = check_model(settings)
    started = time.time()
    run_id = uuid.uuid4().hex[:6]
    streams = [f"bench-eeg-{i}-{run_id}" for i in range(settings.n_streams)]
    machine = machine_info(settings)
    machine["loopback_namespace"] = in_loopback_namespace()
    results: Dict[str, Any] = {
        "version": RESULTS_VERSION,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "settings": _settings_entry(settings, facts),
        "machine": machine,
        "latency_definition": LATENCY_DEFINITION,
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="brainformer-bench-") as tmp, _own_caches(settings, Path(tmp)):
        directory = Path(tmp)
        players = []
        try:
            progress(f"starting {len(streams)} player(s): {Path(facts.recording).name} at "
                     f"{facts.recording_sfreq_hz:g} Hz, chunks of {facts.chunk_samples} samples")
            for i, stream in enumerate(streams):
                players.append(start_player(i, stream, facts, settings.aligned, directory))
            truth = _zero_phase_truth(settings, facts, progress)
            not_ours = _builds_running()
            for index, system in enumerate(_systems(settings)):
                waited_s = _wait_for_builds(progress, not_ours)
                progress(f"{system.name}: starting (model {settings.model}, hop {facts.hop_samples}"
                         + (f", {settings.threads} torch thread(s)" if system.kind != "relay" else ", no model")
                         + (f", source at {system.rate_hz:g} Hz" if system.rate_hz else "") + ") …")
                # The effective delay of every model's prediction on the recording at its own rate
                # (a resampled source's samples do not fall on the recording's grid).
                probe = (DelayProbe(truth, streams[0], clock_path(directory, streams[0]))
                         if truth is not None and system.kind != "relay" and system.rate_hz is None else None)
                results["systems"][system.name] = _run_system(system, settings, facts, streams, players,
                                                              f"{run_id}-{index}", directory, progress, probe)
                results["systems"][system.name]["waited_for_build_s"] = waited_s
        finally:
            stop_all(players, STOP_TIMEOUT_S)
        results["players"] = [player_summary(p, s) for p, s in zip(players, streams)]
    results["ratio"] = ratio(results)
    results["floor"] = transport_floor(results)
    results["goals"] = engine_goals(results)
    results["resampled"] = resampled_vs_native(results)
    results["elapsed_s"] = time.time() - started
    return json_ready(results)


@dataclasses.dataclass(frozen=True)
class _System:
    """One phase of the run: its name in the results, which system, and what differs from the
    settings (another engine, or a source at another rate with players of its own)."""

    name: str
    kind: str  # a key of SYSTEM_STARTERS
    engine: Optional[str] = None
    rate_hz: Optional[float] = None


@contextlib.contextmanager
def _own_caches(settings: BenchSettings, directory: Path) -> Iterator[None]:
    """With ``cold_cache``: the bench's own, empty compiled-forward and inductor caches for every
    process it starts (they copy this environment), so that the first daemon phase meets them
    empty and the next ones what its build put there; the user's caches are left alone."""
    if not settings.cold_cache:
        yield
        return
    own = {"BRAINFORMER_CACHE": str(directory / "cache"), "TORCHINDUCTOR_CACHE_DIR": str(directory / "inductor")}
    before = {name: os.environ.get(name) for name in own}
    os.environ.update(own)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _systems(settings: BenchSettings) -> List[_System]:
    """The daemon on a cold cache (with ``cold_cache``), the daemon (then one daemon per other
    engine, then per other source rate), then the naive loop, then the relay: never two at the
    same time, since on a small machine they would share the cores and distort each other."""
    return ([_System("daemon-cold", "daemon")] if settings.cold_cache else []) + ([_System("daemon", "daemon")]
            + [_System(f"daemon-{engine}", "daemon", engine=engine) for engine in settings.also_engines]
            + [_System(f"daemon@{rate:g}Hz", "daemon", rate_hz=float(rate)) for rate in settings.also_rates_hz]
            + ([_System("naive", "naive")] if settings.peer == "naive" else [])
            + ([_System("relay", "relay")] if settings.floor else []))


def _zero_phase_truth(settings: BenchSettings, facts: ModelFacts,
                      progress: Callable[[str], None]) -> Optional[ZeroPhaseTruth]:
    """The recording's MEG as it is now in the model's band, which each model's published
    prediction is compared with (computed while the players start; None without a model phase)."""
    from brainformer.model_dir import load_fields

    if not any(system.kind != "relay" for system in _systems(settings)):
        return None
    progress("computing the zero-phase truth of the recording (for the effective delay) …")
    try:
        return ZeroPhaseTruth.from_recording(facts.recording, load_fields(settings.model))
    except ValueError as error:
        raise BenchError(f"--model {settings.model}: {error}") from None


def _run_system(system: _System, settings: BenchSettings, facts: ModelFacts, streams: List[str],
                players: List[Any], run_id: str, directory: Path, progress: Callable[[str], None],
                probe: Optional[DelayProbe] = None) -> Dict[str, Any]:
    """Start one system (with its own players when its source rate differs) and measure it
    (with the ``probe``: its effective delay too)."""
    starter_settings = dataclasses.replace(settings, engine=system.engine) if system.engine else settings
    own_players = []
    try:
        if system.rate_hz is not None:
            streams = [f"{stream}-{system.rate_hz:g}Hz" for stream in streams]
            own_players = [start_player(i, stream, facts, settings.aligned, directory, rate_hz=system.rate_hz)
                           for i, stream in enumerate(streams)]
        phase = SYSTEM_STARTERS[system.kind](starter_settings, facts, streams, run_id, directory)
        return run_phase(phase, settings, facts, own_players or players, progress, probe)
    finally:
        stop_all(own_players, STOP_TIMEOUT_S)


def _builds_running() -> set:
    """``(key, pid)`` of the compiled-forward builds running in the package cache now."""
    from brainformer_rt.serving.aot_cache import aot_cache_dir, running_builders

    return {(builder.key, builder.pid) for builder in running_builders(aot_cache_dir())}


def _wait_for_builds(progress: Callable[[str], None], not_ours: set) -> float:
    """Seconds waited for the compiled-forward builds that this run's daemon phases left running
    to end (a daemon with ``--engine auto`` on a cold cache leaves its build running when it
    stops): each system is measured without a build it did not start itself. Builds that were
    running before the run began (``not_ours``: another program's) are not waited for."""
    from brainformer_rt.serving.aot_cache import BUILD_TIMEOUT_S

    def ours() -> set:
        return _builds_running() - not_ours

    builders = ours()
    if not builders:
        return 0.0
    progress(f"waiting for the compiled-forward build (pid {', '.join(str(pid) for _, pid in sorted(builders))}) "
             "to end, so that the next system runs without it …")
    started = time.monotonic()
    while ours() and time.monotonic() - started < BUILD_TIMEOUT_S:
        time.sleep(0.5)
    return time.monotonic() - started


def _settings_entry(settings: BenchSettings, facts: ModelFacts) -> Dict[str, Any]:
    daemons = ("the daemon on a cold cache (its build running), then " if settings.cold_cache else "") + "daemon" + "".join(f", then the daemon with --engine {e}" for e in settings.also_engines) + "".join(
        f", then the daemon serving the recording played at {r:g} Hz" for r in settings.also_rates_hz)
    order = ((f"{daemons} first, then the naive loop (one process per stream), one after the other "
              "on the same player streams") if settings.peer == "naive" else daemons)
    if settings.floor:
        order += "; then the relay (transport floor, one process per stream)"
    return {**dataclasses.asdict(settings), **dataclasses.asdict(facts), "hop_ms": facts.hop_s * 1e3,
            "order": order, "naive_loop": NAIVE_DESCRIPTION if settings.peer == "naive" else None}
