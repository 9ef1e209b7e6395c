"""The figures of a bench run: per system (latency per output, its own statistics, overhead,
real-time factor, whether it kept real time), and across systems (the ratio daemon / naive loop,
the transport floor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from brainformer_rt.serving.delay import delay_budget
from brainformer_rt.serving.metrics import summarise
from brainformer_rt.tools.bench.processes import Phase
from brainformer_rt.tools.bench.receivers import Arrivals, ReceiverThreads
from brainformer_rt.tools.bench.settings import (
    RATIO_GOAL,
    REAL_TIME_TOLERANCE,
    BenchFailure,
    BenchSettings,
    ModelFacts,
)

__all__ = ["summarise_phase", "ratio", "transport_floor", "engine_goals", "resampled_vs_native"]

TRANSPORTS = ("lsl", "zmq")


def summarise_phase(phase: Phase, settings: BenchSettings, facts: ModelFacts, receivers: ReceiverThreads,
                    start_s: float, end_s: float, resources: Dict[str, Any]) -> Dict[str, Any]:
    """The results of one system over the measured period ``[start_s, end_s)`` (``local_clock()``)."""
    streams = list(phase.lsl_outputs)
    measured_s = end_s - start_s
    expected_samples = measured_s * facts.sfreq_hz  # per stream: one predicted sample per input sample
    result: Dict[str, Any] = {
        "system": phase.system,
        "measured_s": measured_s,
        "warmup_s": settings.warmup_s,
        "expected_windows_per_stream": expected_samples / facts.hop_samples,
        "outputs": {transport: _outputs(receivers, transport, streams, start_s, end_s, expected_samples)
                    for transport in TRANSPORTS},
        "process": resources,
    }
    # The raw latencies (pooled over streams, ms) go to their own key: plots and re-analysis.
    result["latencies_ms"] = {transport: outputs.pop("latencies_ms")
                              for transport, outputs in result["outputs"].items() if outputs is not None}
    own = {"daemon": _daemon_figures, "relay": _relay_figures, "naive": _naive_figures}[phase.system]
    result.update(own(phase, start_s, end_s))
    result.update(_derived_figures(result, facts.hop_s, has_model=phase.system != "relay"))
    if phase.system != "relay":  # the relay passes zeros: no brain signal, no filters
        # The e2e latency is transport and compute; the brain signal is seen later still.
        lsl = result["outputs"]["lsl"]
        median_ms = None if lsl is None else lsl["pooled"]["median_ms"]
        result["delay_budget"] = delay_budget(facts.delay, facts.hop_samples, facts.sfreq_hz, median_ms).to_dict()
    return result


def _latency_summary(rows: np.ndarray) -> Dict[str, Any]:
    summary = summarise(rows[:, 0] - rows[:, 1]) if len(rows) else summarise(np.zeros(0))
    summary["samples"] = int(rows[:, 2].sum()) if len(rows) else 0
    return summary


def _outputs(receivers: ReceiverThreads, transport: str, streams: Sequence[str], start_s: float, end_s: float,
             expected_samples: float) -> Optional[Dict[str, Any]]:
    """Latency of one transport's outputs, pooled and per stream; None when it has none."""
    if not any((transport, s) in receivers.arrivals for s in streams):
        return None
    per_stream, pooled = {}, []
    for stream in streams:
        rows = receivers.arrivals.get((transport, stream), Arrivals()).between(start_s, end_s)
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


def _peer_stats(phase: Phase) -> list:
    """The statistics file of every peer process (naive loop, relay)."""
    everything = []
    for path, child in zip(phase.stats_paths, phase.children):
        stats = _read_json(path)
        if stats is None:
            raise BenchFailure(f"{child.name} wrote no statistics: {child.last_error_line()}")
        everything.append(stats)
    return everything


def _counter_sum(stats: list, key: str) -> int:
    return sum(entry[key] for entry in stats)


def _daemon_figures(phase: Phase, start_s: float, end_s: float) -> Dict[str, Any]:
    """From the daemon's statistics file (its timings start after its warm-up)."""
    stats = _read_json(phase.stats_paths[0])
    if stats is None:
        raise BenchFailure(f"the daemon wrote no statistics ({phase.stats_paths[0].name}): "
                           f"{phase.children[0].last_error_line()}")
    forward = stats["stages"]["forward"]
    totals = stats["totals"]
    busy = None
    if stats.get("duration_s") and forward.get("mean_ms") is not None:
        busy = forward["mean_ms"] * 1e-3 * stats["forward_calls"] / stats["duration_s"]
    return {
        "forward_ms": forward,
        "forward_source": "daemon statistics, after its warm-up",
        "stages_ms": stats["stages"],
        "windows": {"served": totals.get("windows_served"), "skipped": totals.get("windows_skipped"),
                    "stale": totals.get("windows_stale"), "forward_calls": stats.get("forward_calls"),
                    "mean_batch": stats.get("mean_batch")},
        "samples_in": totals.get("samples_in"),
        "gaps": totals.get("gaps"),
        "engine": stats.get("info", {}).get("engine"),
        "engine_busy_fraction": busy,
        "daemon_stats": stats,
    }


def _relay_figures(phase: Phase, start_s: float, end_s: float) -> Dict[str, Any]:
    stats = _peer_stats(phase)
    return {
        "forward_ms": summarise(np.zeros(0)),
        "forward_source": "no model",
        "windows": {"served": _counter_sum(stats, "windows_served"), "skipped": _counter_sum(stats, "windows_skipped"),
                    "stale": 0, "forward_calls": 0, "mean_batch": None},
        "samples_in": _counter_sum(stats, "samples_in"),
        "engine": {"kind": "none"},
        "engine_busy_fraction": None,
    }


def _naive_figures(phase: Phase, start_s: float, end_s: float) -> Dict[str, Any]:
    """From the naive loops' own timing, over the measured period only."""
    stats = _peer_stats(phase)
    forwards = [duration for entry in stats for at, duration in entry["forwards"] if start_s <= at < end_s]
    served = _counter_sum(stats, "windows_served")
    return {
        "forward_ms": summarise(np.asarray(forwards, dtype=np.float64)),
        "forward_source": "naive loop's own timing (measured period only)",
        "windows": {"served": served, "skipped": _counter_sum(stats, "windows_skipped"), "stale": 0,
                    "forward_calls": served, "mean_batch": 1.0},
        "samples_in": _counter_sum(stats, "samples_in"),
        "preprocessing": "brainformer.preprocessing (same as the daemon)",
        "engine": {"kind": "eager", "torch_threads": stats[-1]["torch_threads"] if stats else None},
        "engine_busy_fraction": ((float(np.sum(forwards)) / (end_s - start_s) / len(phase.lsl_outputs))
                                 if forwards else None),
    }


def _derived_figures(result: Dict[str, Any], hop_s: float, has_model: bool) -> Dict[str, Any]:
    """Real-time factor, overhead above the forward, and whether the system kept real time."""
    forward = result["forward_ms"]
    # No forward (the relay): the whole latency is overhead.
    forward_p99 = forward.get("p99_ms") if has_model else 0.0
    windows = result["windows"]
    due = (windows["served"] or 0) + (windows["skipped"] or 0) + (windows["stale"] or 0)
    dropped_fraction = ((windows["skipped"] or 0) + (windows["stale"] or 0)) / due if due else None
    # The subscriber side: every input sample should come back as one predicted sample.
    counted = result["outputs"]["zmq"] or result["outputs"]["lsl"]
    fractions = [s["samples_fraction"] for s in counted["streams"].values()] if counted else [0.0]
    return {
        "rtf": None if forward.get("mean_ms") is None else forward["mean_ms"] * 1e-3 / hop_s,
        "rtf_p99": None if forward.get("p99_ms") is None else forward["p99_ms"] * 1e-3 / hop_s,
        "overhead_ms": {
            transport: (None if outputs is None or outputs["pooled"]["p99_ms"] is None or forward_p99 is None
                        else outputs["pooled"]["p99_ms"] - forward_p99)
            for transport, outputs in result["outputs"].items()},
        "real_time": {
            "dropped_window_fraction": dropped_fraction,
            "samples_received_fraction_min": min(fractions),
            "kept": bool(dropped_fraction is not None and dropped_fraction <= REAL_TIME_TOLERANCE
                         and min(fractions) >= 1 - REAL_TIME_TOLERANCE),
        },
    }


def ratio(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The p99 and median ratios daemon / naive loop on their LSL outputs."""
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


def transport_floor(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The relay's p99 per output, and the daemon's overhead above it (p99 e2e − p99 forward − floor)."""
    systems = results["systems"]
    if "relay" not in systems:
        return None
    floor: Dict[str, Any] = {"note": "relay (the daemon's transport, no model): its whole latency"}
    for transport in TRANSPORTS:
        relay = systems["relay"]["outputs"].get(transport)
        if relay is None or relay["pooled"]["p99_ms"] is None:
            continue
        entry = {"p99_ms": relay["pooled"]["p99_ms"], "median_ms": relay["pooled"]["median_ms"]}
        daemon_overhead = systems["daemon"]["overhead_ms"].get(transport)
        if daemon_overhead is not None:
            entry["daemon_overhead_above_floor_ms"] = daemon_overhead - entry["p99_ms"]
        floor[transport] = entry
    return floor


#: The goals each daemon's engine is held to (per daemon phase; those that need the naive loop or
#: the relay are left out of a run without them).
FORWARD_MEDIAN_GOAL_MS = 1.0
ABOVE_FLOOR_GOAL_MS = 0.5
NAIVE_RATIO_GOAL = 0.8
#: The goals of the daemon on a cold cache (``--cold-cache``), its build running: no worse than
#: the naive loop at the median, p99 at most 1.5× its.
COLD_MEDIAN_RATIO_GOAL = 1.0
COLD_P99_RATIO_GOAL = 1.5


def engine_goals(results: Dict[str, Any]) -> Dict[str, Any]:
    """Per daemon phase: forward median ≤ 1 ms; LSL e2e p99 ≤ relay p99 + forward p99 + 0.5 ms;
    LSL e2e median and p99 ≤ 0.8 × the naive loop's (``daemon-cold``, serving while its build
    runs: median ≤ 1.0 ×, p99 ≤ 1.5 ×); and, for ``auto``, whether every timed forward ran after
    the switch to the compiled path."""
    systems = results["systems"]
    relay = systems.get("relay", {}).get("outputs", {}).get("lsl", {}).get("pooled")
    naive = systems.get("naive", {}).get("outputs", {}).get("lsl", {}).get("pooled")
    goals: Dict[str, Any] = {}
    for name, system in systems.items():
        if not name.startswith("daemon"):
            continue
        e2e, forward = system["outputs"]["lsl"]["pooled"], system["forward_ms"]
        entry: Dict[str, Any] = {"forward_median_ms": forward["median_ms"],
                                 "forward_median_met": _at_most(forward["median_ms"], FORWARD_MEDIAN_GOAL_MS)}
        if relay is not None and relay["p99_ms"] is not None and forward["p99_ms"] is not None:
            bound = relay["p99_ms"] + forward["p99_ms"] + ABOVE_FLOOR_GOAL_MS
            entry.update(p99_bound_ms=bound, p99_bound_met=_at_most(e2e["p99_ms"], bound))
        if naive is not None and naive["median_ms"] and naive["p99_ms"]:
            median_ratio = e2e["median_ms"] / naive["median_ms"] if e2e["median_ms"] is not None else None
            p99_ratio = e2e["p99_ms"] / naive["p99_ms"] if e2e["p99_ms"] is not None else None
            median_goal, p99_goal = ((COLD_MEDIAN_RATIO_GOAL, COLD_P99_RATIO_GOAL) if name == "daemon-cold"
                                     else (NAIVE_RATIO_GOAL, NAIVE_RATIO_GOAL))
            entry.update(naive_median_ratio=median_ratio, naive_p99_ratio=p99_ratio,
                         naive_median_goal=median_goal, naive_p99_goal=p99_goal,
                         naive_ratio_met=_at_most(median_ratio, median_goal) and _at_most(p99_ratio, p99_goal))
        entry["switch"] = _switch_entry(system, results["settings"]["warmup_s"])
        goals[name] = entry
    return goals


def _at_most(value: Optional[float], bound: float) -> bool:
    return value is not None and value <= bound


def _switch_entry(system: Dict[str, Any], warmup_s: float) -> Optional[Dict[str, Any]]:
    """For an ``auto`` daemon: its switch, and whether it came before the timed period began."""
    engine = system.get("engine") or {}
    switch = engine.get("switch")
    if engine.get("kind") != "auto" or switch is None:
        return None
    after = switch.get("switched_after_s")
    # `switched_after_s` counts from the engine's set-up, which comes before the first prediction,
    # and the timed period starts `warmup_s` after the first prediction arrived.
    return {**switch, "active": engine.get("active"), "before_timed_period": after is not None and after <= warmup_s}


def resampled_vs_native(results: Dict[str, Any]) -> Dict[str, Any]:
    """Per resampled-source daemon (``daemon@<rate>Hz``): its LSL e2e latency next to the native
    daemon's of the same run, the difference, its adaptation stage and the resampler's hold-back."""
    systems = results["systems"]
    native = systems.get("daemon", {}).get("outputs", {}).get("lsl", {}).get("pooled")
    comparison: Dict[str, Any] = {}
    for name, system in systems.items():
        if not name.startswith("daemon@") or native is None:
            continue
        resampled = system["outputs"]["lsl"]["pooled"]
        stats = system.get("daemon_stats") or {}
        adaptation = next(iter((stats.get("adaptation") or {}).values()), None)
        gauges = next(iter((stats.get("gauges") or {}).values()), {})
        delay_s = gauges.get("resampler_delay_s")
        comparison[name] = {
            "median_ms": resampled["median_ms"], "p99_ms": resampled["p99_ms"],
            "native_median_ms": native["median_ms"], "native_p99_ms": native["p99_ms"],
            "added_median_ms": _difference(resampled["median_ms"], native["median_ms"]),
            "added_p99_ms": _difference(resampled["p99_ms"], native["p99_ms"]),
            "adaptation_ms": adaptation, "resampler_delay_ms": None if delay_s is None else delay_s * 1e3,
        }
    return comparison


def _difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b
