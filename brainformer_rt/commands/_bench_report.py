"""What `brainformer-rt bench` shows of its results: the rich tables and notes, and the latency
plot. The results themselves are made by :mod:`brainformer_rt.tools.bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from brainformer_rt.tools.bench import BenchFailure
from brainformer_rt.tools.bench.delay import BANDS

__all__ = ["results_table", "write_plot"]

#: How each system is named in tables and plots.
SYSTEM_LABELS = {"daemon": "daemon", "naive": "naive loop", "relay": "relay (floor)"}
PERCENTILES = ("median_ms", "p95_ms", "p99_ms", "max_ms")


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _percentiles(summary: Dict[str, Any], digits: int = 2) -> List[str]:
    return [_fmt(summary[key], digits) for key in PERCENTILES]


def _labels(settings: Dict[str, Any]) -> Dict[str, str]:
    """Every phase's label: the daemon with its engine, then the other engines' daemons."""
    daemon = "daemon (busy-poll)" if settings.get("busy_poll") else "daemon"
    labels = {**SYSTEM_LABELS, "daemon": daemon, "daemon-cold": f"{daemon}, cold cache (building)"}
    for engine in settings.get("also_engines") or ():
        labels[f"daemon-{engine}"] = f"{daemon} --engine {engine}"
    for rate in settings.get("also_rates_hz") or ():
        labels[f"daemon@{rate:g}Hz"] = f"{daemon}, source at {rate:g} Hz"
    return labels


def results_table(results: Dict[str, Any]):
    """Rich renderables: latency percentiles (one row per system and output, and the forward),
    one column per system for everything else, the daemon's stages, per-stream latencies
    (several streams) and the notes (ratio, warm-up, order, player lateness, machine)."""
    from rich.console import Group
    from rich.text import Text

    parts = [_latency_table(results), _systems_table(results), *_delay_tables(results)]
    daemon = results["systems"].get("daemon")
    if daemon is not None:
        parts.append(_stages_table(daemon))
        if results["settings"]["n_streams"] > 1:
            parts.append(_per_stream_table(daemon))
    parts.extend(Text.from_markup(note) for note in _notes(results))
    return Group(*parts)


def _latency_table(results: Dict[str, Any]):
    """Latency percentiles: one row per system and output, and each model's forward."""
    from rich.table import Table

    s = results["settings"]
    labels = _labels(s)
    title = (f"brainformer-rt bench: {s['n_streams']} stream(s), hop {s['hop_samples']} ({s['hop_ms']:.1f} ms), "
             f"{s['threads']} torch thread(s), device {s['device']}, model {s['model']}")
    table = Table(title=title + "\nlatency (ms)", title_justify="left")
    for column in ("", "count", "median", "p95", "p99", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for name, system in results["systems"].items():
        for transport, what in (("lsl", "e2e LSL"), ("zmq", "e2e ZeroMQ")):
            outputs = system["outputs"].get(transport)
            if outputs:
                summary = outputs["pooled"]
                table.add_row(f"{labels[name]} {what}", str(summary["count"]), *_percentiles(summary), style="bold")
        if name == "relay":
            continue  # no model
        forward = system["forward_ms"]
        table.add_row(f"{labels[name]} model forward", str(forward["count"]), *_percentiles(forward))
    return table


def _windows(system: Dict[str, Any]) -> str:
    return " / ".join(str(system["windows"][k]) if system["windows"][k] is not None else "–"
                      for k in ("served", "skipped", "stale"))


#: The rows of the per-system table: label, and how a system's column reads.
_SYSTEM_ROWS: List[Tuple[str, Callable[[Dict[str, Any]], str]]] = [
    ("overhead ms LSL (p99 e2e − p99 fwd)", lambda x: _fmt(x["overhead_ms"]["lsl"])),
    ("overhead ms ZeroMQ", lambda x: _fmt(x["overhead_ms"]["zmq"])),
    ("real-time factor (mean / p99)", lambda x: f"{_fmt(x['rtf'], 3)} / {_fmt(x['rtf_p99'], 3)}"),
    ("windows served / skipped / stale", _windows),
    ("samples received / expected", lambda x: f"{x['real_time']['samples_received_fraction_min']:.3f}"),
    ("kept real time", lambda x: "yes" if x["real_time"]["kept"] else "[red]no[/]"),
    ("CPU % mean / max (100 = 1 core)",
     lambda x: " / ".join(_fmt(x["process"][k], 0) for k in ("cpu_percent_mean", "cpu_percent_max"))),
    ("RSS MB (max)", lambda x: _fmt(x["process"]["rss_mb_max"], 0)),
    ("machine CPU % mean (all cores)", lambda x: _fmt(x["process"]["machine_cpu_percent_mean"], 0)),
]


def _systems_table(results: Dict[str, Any]):
    """One column per system: overhead, real-time factor, windows, real time, CPU and memory."""
    from rich.table import Table

    systems = results["systems"]
    labels = _labels(results["settings"])
    table = Table(title="per system (real-time factor = forward time / hop duration)", title_justify="left")
    table.add_column("")
    for name, system in systems.items():
        kind = (system.get("engine") or {}).get("kind", "?")
        table.add_column(labels[name] if name == "relay" else f"{labels[name]} ({kind})", justify="right")
    for label, cell in _SYSTEM_ROWS:
        table.add_row(label, *(cell(system) for system in systems.values()))
    return table


def _delay_tables(results: Dict[str, Any]) -> List[Any]:
    """The delay as the brain sees it beside the transport latency (one column per model), and the
    measured effective delay of each model's prediction with the designed delay beside it."""
    from rich.table import Table

    labels = _labels(results["settings"])
    budgets = {name: s["delay_budget"] for name, s in results["systems"].items() if s.get("delay_budget")}
    if not budgets:
        return []
    centre_hz = next(iter(budgets.values()))["frequency_hz"]
    budget = Table(title="delay as the brain sees it (ms, mean in band): the e2e latency is transport and compute "
                         "only", title_justify="left")
    budget.add_column("")
    for name in budgets:
        budget.add_column(labels.get(name, name), justify="right")
    for label, key in ((f"filters: group delay at the band centre ({centre_hz:.1f} Hz)", "filter_group_delay_ms"),
                       ("hop wait: (hop − 1) / 2 samples", "hop_wait_ms"),
                       ("transport and compute: e2e median (LSL)", "e2e_median_ms")):
        budget.add_row(label, *(_fmt(b[key]) for b in budgets.values()))
    budget.add_row("total", *(_fmt(b["total_ms"]) for b in budgets.values()), style="bold")
    measured = {name: s["effective_delay"] for name, s in results["systems"].items() if s.get("effective_delay")}
    if not measured:
        return [budget]
    designed = {point["label"]: point for point in results["settings"]["delay"]["points"]}
    table = Table(title="effective delay of the prediction against the zero-phase truth: lag of the best match, ms "
                        "(r there / r at zero lag)", title_justify="left")
    table.add_column("band")
    table.add_column("designed", justify="right")
    for name in measured:
        table.add_column(labels.get(name, name), justify="right")
    for band in BANDS:
        point = designed.get(band.removesuffix(" envelope"))
        # A band's cycles lag by the phase delay (modulo a cycle), its envelope by the group delay.
        key = "group_delay_ms" if band.endswith("envelope") else "phase_delay_ms"
        table.add_row(band, "–" if point is None else _fmt(point[key], 1),
                      *(_effective_cell(entry, band) for entry in measured.values()))
    return [budget, table]


def _effective_cell(entry: Dict[str, Any], band: str) -> str:
    if "error" in entry:
        return "–"
    found = entry["bands"][band]
    return f"{found['lag_ms']:.1f} ({found['r_at_lag']:.2f} / {found['r_at_zero']:.2f})"


def _stages_table(daemon: Dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"daemon stages (ms; {daemon['forward_source']})", title_justify="left")
    for column in ("stage", "count", "median", "p95", "p99", "max"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, summary in daemon["stages_ms"].items():
        table.add_row(stage, str(summary["count"]), *_percentiles(summary, 3))
    return table


def _per_stream_table(daemon: Dict[str, Any]):
    from rich.table import Table

    table = Table(title="daemon per stream (ms)", title_justify="left")
    for column in ("stream", "LSL p99", "ZeroMQ p99", "received / expected"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for stream, lsl in daemon["outputs"]["lsl"]["streams"].items():
        zmq = daemon["outputs"]["zmq"]["streams"][stream]
        table.add_row(stream, _fmt(lsl["p99_ms"]), _fmt(zmq["p99_ms"]), f"{zmq['samples_fraction']:.3f}")
    return table


def _notes(results: Dict[str, Any]) -> List[str]:
    """Rich-markup lines under the tables: ratio, floor, warm-up and order, the latency's
    definition, player lateness, the machine."""
    s = results["settings"]
    notes = [*_ratio_notes(results.get("ratio")), *_floor_notes(results.get("floor")),
             *_goal_notes(results.get("goals"), _labels(s)), *_resampled_notes(results.get("resampled"), _labels(s))]
    notes.append(f"warm-up: the first {s['warmup_s']:g} s after the first prediction are not counted, then "
                 f"{s['duration_s']:g} s are measured per system. Order: {s['order']}.")
    if s.get("naive_loop"):
        notes.append(f"naive loop: {s['naive_loop']}.")
    notes.append("latency = local_clock() when the subscriber read a message − timestamp of its newest sample "
                 f"(the time the player pushed that EEG sample; players push chunks of {s['chunk_samples']}"
                 f"{', in step' if s.get('aligned') else ''}).")
    notes.extend(_effective_delay_notes(results))
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
    return notes


def _effective_delay_notes(results: Dict[str, Any]) -> List[str]:
    """What the effective delay is measured against, and any that could not be measured."""
    labels = _labels(results["settings"])
    measured = {name: s["effective_delay"] for name, s in results["systems"].items() if s.get("effective_delay")}
    if not measured:
        return []
    notes = ["effective delay: each published sample (first stream, LSL) against the recording's MEG band-passed "
             "with zero phase at the instant of its EEG sample; signal lag ≈ phase delay (modulo a cycle), envelope "
             "lag ≈ group delay; transport and compute are not in it (see the budget above)"]
    for name, entry in measured.items():
        if "error" in entry:
            notes.append(f"[yellow]{labels.get(name, name)}: effective delay not measured: {entry['error']}[/]")
        elif entry["missing_fraction"] > 0:
            notes.append(f"{labels.get(name, name)}: {100 * entry['missing_fraction']:.1f} % of the "
                         f"{entry['samples']:,} samples measured never arrived (filled with the mean)")
    return notes


def _ratio_notes(ratio: Optional[Dict[str, Any]]) -> List[str]:
    if not ratio:
        return []
    verdict = "[green]goal met[/]" if ratio["met"] else "[red]goal not met[/]"
    return [f"[bold]p99 ratio daemon / naive loop (LSL outputs): {ratio['p99_lsl']:.2f}[/] "
            f"(goal ≤ {ratio['goal']:g}: {verdict}); median ratio {ratio['median_lsl']:.2f}"]


def _verdict(met: bool) -> str:
    return "[green]met[/]" if met else "[red]not met[/]"


def _goal_notes(goals: Optional[Dict[str, Any]], labels: Dict[str, str]) -> List[str]:
    """One line per daemon: its engine goals, and for ``auto`` when it switched."""
    notes = []
    for name, goal in (goals or {}).items():
        parts = [f"forward median {_fmt(goal['forward_median_ms'], 3)} ms ≤ 1 ms {_verdict(goal['forward_median_met'])}"]
        if "p99_bound_ms" in goal:
            parts.append(f"e2e p99 ≤ floor p99 + forward p99 + 0.5 = {goal['p99_bound_ms']:.2f} ms "
                         f"{_verdict(goal['p99_bound_met'])}")
        if "naive_ratio_met" in goal:
            parts.append(f"e2e vs naive loop: median {_fmt(goal['naive_median_ratio'])}× (≤ {goal['naive_median_goal']:g}×), "
                         f"p99 {_fmt(goal['naive_p99_ratio'])}× (≤ {goal['naive_p99_goal']:g}×) "
                         f"{_verdict(goal['naive_ratio_met'])}")
        switch = goal.get("switch")
        if switch is not None:
            parts.append(_switch_note(switch))
        notes.append(f"[bold]{labels.get(name, name)}[/]: " + "; ".join(parts))
    return notes


def _switch_note(switch: Dict[str, Any]) -> str:
    """When the ``auto`` engine switched, and whether the timed period saw only the compiled forward."""
    if switch["state"] == "switched":
        note = f"switched to {switch['target']} ({switch['source']}) {switch['switched_after_s']:.1f} s after set-up"
    else:
        reason = f": {switch['reason']}" if switch.get("reason") else ""
        note = f"[red]did not switch[/] ({switch['state']}{reason})"
    return note if switch["before_timed_period"] else note + "; [yellow]the timed period includes eager forwards[/]"


def _resampled_notes(resampled: Optional[Dict[str, Any]], labels: Dict[str, str]) -> List[str]:
    """One line per resampled source: its e2e latency against the native source's."""
    notes = []
    for name, entry in (resampled or {}).items():
        adaptation = entry.get("adaptation_ms") or {}
        notes.append(f"[bold]{labels.get(name, name)}[/]: e2e {_fmt(entry['median_ms'])} / {_fmt(entry['p99_ms'])} ms "
                     f"(median / p99) against {_fmt(entry['native_median_ms'])} / {_fmt(entry['native_p99_ms'])} ms "
                     f"native: {_fmt(entry['added_median_ms'])} / {_fmt(entry['added_p99_ms'])} ms added; adaptation "
                     f"{_fmt(adaptation.get('median_ms'), 3)} / {_fmt(adaptation.get('p99_ms'), 3)} ms per pull, "
                     f"resampler hold-back {_fmt(entry['resampler_delay_ms'])} ms")
    return notes


def _floor_notes(floor: Optional[Dict[str, Any]]) -> List[str]:
    notes = []
    for transport, what in (("lsl", "LSL"), ("zmq", "ZeroMQ")):
        if floor and transport in floor:
            entry = floor[transport]
            above = entry.get("daemon_overhead_above_floor_ms")
            notes.append(f"[bold]transport floor {what} (relay, no model): p99 {entry['p99_ms']:.2f} ms[/], median "
                         f"{entry['median_ms']:.2f} ms"
                         + ("" if above is None else f"; daemon overhead above it {above:.2f} ms"))
    return notes


def _plot_series(results: Dict[str, Any]) -> List[tuple]:
    """``(label, latencies in ms)`` of every system and output that measured any."""
    labels = _labels(results["settings"])
    series = []
    for system, result in results["systems"].items():
        for transport in ("lsl", "zmq"):
            latencies = result.get("latencies_ms", {}).get(transport)
            if latencies is not None and len(latencies):
                series.append((f"{labels.get(system, system)} {transport.upper()}",
                               np.asarray(latencies, dtype=np.float64)))
    if not series:
        raise BenchFailure("nothing to plot: no latency was measured")
    return series


def write_plot(results: Dict[str, Any], path: Path) -> Path:
    """Latency histogram and CDF (log time axis) of every system and output, p50/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _plot_series(results)
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
    _style_axes(hist_axis, cdf_axis)
    s = results["settings"]
    figure.suptitle(f"brainformer-rt bench: {s['n_streams']} stream(s), hop {s['hop_samples']} "
                    f"({s['hop_ms']:.1f} ms), {s['duration_s']:g} s after {s['warmup_s']:g} s warm-up "
                    "(dashed: p50, dotted: p99)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _style_axes(hist_axis: Any, cdf_axis: Any) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

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
