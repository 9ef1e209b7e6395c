"""What `brainformer-rt demo` shows: the live panel, the progress lines, the summary table and
the PNG (traces of the held-out part, latency histogram).

Live r is shown on all scored samples and on the clean ones (outside the heartbeat and blink
windows of `brainformer evaluate`): the cardiac field is in EEG and MEG alike, and predicting it
says nothing about brain signal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.markup import escape
from rich.table import Table

from brainformer_rt.tools.demo.scoring import CorrelationFigures, DemoScore

__all__ = ["live_table", "plain_progress", "summary_table", "write_plot"]

#: Seconds of held-out traces in the plot.
PLOT_TRACE_S = 3.0


# ==============================================================================================
# Tables
# ==============================================================================================
def _fmt(value: float, spec: str = ".3f", none: str = "–") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _r_text(figures: CorrelationFigures) -> str:
    if figures.n_samples < 2:
        return "not reached yet"
    return (f"mags {_fmt(figures.mag, '.2f')} · grads {_fmt(figures.grad, '.2f')} · all {_fmt(figures.all, '.2f')}"
            f"   ({figures.n_samples:,} samples)")


def live_table(score: DemoScore, elapsed_s: float, duration_s: float, model_label: str):
    latency = score.latency_ms()
    progress = f"{min(elapsed_s, duration_s):4.1f} / {duration_s:g} s"
    table = Table(title=f"brainformer-rt demo · {escape(model_label)} · {progress}",
                  title_justify="left", show_header=False, min_width=72)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("EEG samples in", f"{score.samples_in:,} ({score.reference.recording_sfreq_hz:.1f} Hz)")
    lost = f", {score.messages_missed:,} lost on the way" if score.messages_missed else ""
    # A message lost on the way also leaves a hole in the samples: not a skipped window.
    skipped = max(score.windows_skipped_estimate - score.messages_missed, 0)
    table.add_row("windows served / skipped", f"{score.messages:,} / {skipped:,}"
                  f"   (hop {score.hop_samples} samples{lost})")
    table.add_row("e2e latency median / p99", f"{_fmt(latency['median'])} / {_fmt(latency['p99'])} ms")
    _add_budget_row(table, score)
    table.add_row("model forward", "reported by the daemon at the end")
    table.add_row("playing", f"{_fmt(score.recording_position_s(), '.1f')} s of "
                  f"{score.reference.n_samples / score.reference.recording_sfreq_hz:.1f} s: {score.part_now()}")
    table.add_row("r held-out (last 25 %)", _r_text(score.figures(score.held_out)))
    table.add_row("r held-out, clean samples", _r_text(score.figures(score.held_out_clean)))
    table.add_row("r in-sample (training part)", _r_text(score.figures(score.in_sample)))
    return table


def plain_progress(score: DemoScore, elapsed_s: float) -> str:
    latency = score.latency_ms()
    held = score.figures(score.held_out)
    clean = score.figures(score.held_out_clean)
    return (f"{elapsed_s:5.1f} s: {score.samples_in} EEG samples in, {score.messages} windows served, "
            f"e2e latency median {_fmt(latency['median'])} ms / p99 {_fmt(latency['p99'])} ms, "
            f"r held-out {_fmt(held.all, '.2f')} ({held.n_samples} samples), "
            f"clean {_fmt(clean.all, '.2f')} ({clean.n_samples} samples)")


def summary_table(score: DemoScore, stats: dict, live_s: float, model_label: str):
    table = Table(title=f"brainformer-rt demo: summary ({escape(model_label)}, {live_s:.1f} s)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    totals = stats.get("totals", {})
    info = stats.get("info", {})
    latency = score.latency_ms()
    table.add_row("EEG samples in", f"{int(totals.get('samples_in', score.samples_in)):,}")
    if totals:
        table.add_row("windows served / skipped / stale",
                      f"{int(totals['windows_served']):,} / {int(totals['windows_skipped']):,} / "
                      f"{int(totals['windows_stale']):,}")
    else:
        skipped = max(score.windows_skipped_estimate - score.messages_missed, 0)
        table.add_row("windows served / skipped (seen here)", f"{score.messages:,} / {skipped:,}")
    table.add_row("ZeroMQ messages received / missed", f"{score.messages:,} / {score.messages_missed:,}")
    table.add_row("e2e latency at the subscriber median / p99 / max",
                  f"{_fmt(latency['median'])} / {_fmt(latency['p99'])} / {_fmt(latency['max'])} ms")
    _add_budget_row(table, score)
    daemon_e2e = stats.get("e2e_latency", {}).get("all", {})
    if daemon_e2e:
        table.add_row("e2e latency in the daemon (published) median / p99",
                      f"{_fmt(daemon_e2e.get('median_ms'))} / {_fmt(daemon_e2e.get('p99_ms'))} ms")
    forward = stats.get("stages", {}).get("forward", {})
    table.add_row(f"model forward median / p99{_engine_text(info.get('engine'))}",
                  f"{_fmt(forward.get('median_ms'))} / {_fmt(forward.get('p99_ms'))} ms" if forward else "not reported")
    _add_correlation_rows(table, score)
    check = (f"{score.eeg_checked:,} EEG samples, all exact" if score.eeg_mismatched == 0
             else f"{score.eeg_mismatched:,} of {score.eeg_checked:,} EEG samples differ")
    table.add_row("timestamp → recording mapping checked on", check)
    return table


def _add_budget_row(table: Table, score: DemoScore) -> None:
    """The e2e latency is transport and compute; the brain signal is seen later still."""
    budget = score.delay_budget()
    if budget is not None:
        table.add_row("delay as the brain sees it (mean, in band)", escape(budget.text()))


def _engine_text(engine: Any) -> str:
    """`` (compile on cpu, 2 threads)`` from the daemon's engine info, or nothing."""
    if not (isinstance(engine, dict) and engine.get("kind")):
        return ""
    n_threads = engine.get("torch_threads")
    threads = ""
    if engine.get("device") == "cpu" and n_threads:
        threads = f", {n_threads} thread{'s' if n_threads != 1 else ''}"
    return f" ({engine['kind']} on {engine.get('device', '?')}{threads})"


def _add_correlation_rows(table: Table, score: DemoScore) -> None:
    for label, correlation in (("r held-out (last 25 % of the recording)", score.held_out),
                               ("r held-out, clean samples (no heartbeat/blink)", score.held_out_clean),
                               ("r in-sample (training part)", score.in_sample),
                               ("r in-sample, clean samples", score.in_sample_clean)):
        figures = score.figures(correlation)
        table.add_row(f"{label}: mags / grads / all",
                      f"{_fmt(figures.mag, '.3f')} / {_fmt(figures.grad, '.3f')} / {_fmt(figures.all, '.3f')}")
        seconds = figures.n_samples / score.reference.model_sfreq_hz
        table.add_row("   samples scored", f"{figures.n_samples:,} ({seconds:.1f} s)")
    table.add_row("clean = outside", _artefact_text(score.reference.artefacts))


def _artefact_text(artefacts: Any) -> str:
    """Which windows the clean samples leave out, and what could not be detected."""
    from brainformer.evaluation.artefacts import BLINK_WINDOW_S, HEARTBEAT_WINDOW_S

    if artefacts is None:
        return "nothing (artefacts not looked for)"
    before, after = (int(round(1000 * w)) for w in HEARTBEAT_WINDOW_S)
    text = f"−{before} … +{after} ms of {artefacts.heartbeats.size} R peaks"
    if artefacts.blinks_detected:
        text += f", ±{int(round(1000 * BLINK_WINDOW_S))} ms of {artefacts.blinks.size} blinks"
    if artefacts.notes:
        text += " (" + "; ".join(artefacts.notes) + ")"
    return escape(text)


# ==============================================================================================
# The plot
# ==============================================================================================
def _contiguous_run(rows: np.ndarray, max_len: int) -> Optional[tuple[int, int]]:
    """The longest run of consecutive row numbers in sorted ``rows``, capped at ``max_len``."""
    if rows.size < 2:
        return None
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks + 1, [rows.size]])
    best = int(np.argmax(stops - starts))
    start = int(rows[starts[best]])
    return start, start + min(int(stops[best] - starts[best]), max_len)


def write_plot(score: DemoScore, path: Path) -> str:
    """Predicted vs true traces (best mag, best grad, median mag, median grad, ranked by r on
    the clean samples) over a few seconds of the held-out part (the training part if the
    held-out part was not reached), the heartbeat and blink windows shaded, and a latency
    histogram. Returns which part the traces show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part, correlation, clean = "held-out", score.held_out, score.held_out_clean
    if correlation.n < 2:
        part, correlation, clean = "training (in-sample)", score.in_sample, score.in_sample_clean
    r_all = correlation.r()
    # Ranked by clean r: a sensor that only follows the heartbeat is no example of brain signal.
    r = clean.r() if clean.n >= 2 else r_all
    figure = plt.figure(figsize=(13, 9), layout="constrained")
    grid = figure.add_gridspec(3, 2)
    trace_axes = [figure.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    run = _plotted_rows(score, "test" if part == "held-out" else "train")
    picks = _trace_channels(r, np.asarray(score.reference.meg_types)) if run is not None else []
    if picks:
        rows = np.arange(run[0], run[1])
        truth = score.reference.to_physical(score.reference.meg_true[rows])  # (rows, n_meg)
        for axis, (label, channel) in zip(trace_axes, picks):
            _plot_trace(axis, score, rows, truth[:, channel], label, channel, r[channel], r_all[channel])
    for axis in trace_axes[len(picks):]:
        axis.axis("off")
    _plot_latency(figure.add_subplot(grid[2, :]), np.asarray(score.latencies_s) * 1e3, score.delay_budget())
    figure.suptitle(f"brainformer-rt demo: MEG predicted live from EEG vs the recording's MEG ({part} part)\n"
                    "sensors chosen by r on clean samples; heartbeat and blink windows shaded")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return part


def _plotted_rows(score: DemoScore, part: str) -> Optional[tuple[int, int]]:
    """``[start, stop)`` rows of ``part`` with a prediction each: a few seconds, no hole."""
    start, stop = score.reference.parts[part]
    seen = np.flatnonzero(~np.isnan(score.first_prediction[:, 0]))
    seen = seen[(seen >= start) & (seen < stop)]
    return _contiguous_run(seen, int(PLOT_TRACE_S * score.reference.model_sfreq_hz))


def _trace_channels(r: np.ndarray, types: np.ndarray) -> list[tuple[str, int]]:
    """(label, channel) of the best and the median magnetometer and gradiometer by ``r``,
    the best ones first."""
    picks: list[tuple[str, int]] = []
    for kind in ("mag", "grad"):
        candidates = np.flatnonzero((types == kind) & np.isfinite(r))
        if candidates.size:
            ordered = candidates[np.argsort(r[candidates])]
            picks.append((f"best {kind}", int(ordered[-1])))
            picks.append((f"median {kind}", int(ordered[len(ordered) // 2])))
    picks.sort(key=lambda item: (not item[0].startswith("best"), item[0]))
    return picks


def _plot_trace(axis: Any, score: DemoScore, rows: np.ndarray, truth: np.ndarray, label: str, channel: int,
                r_clean: float, r_all: float) -> None:
    """``truth``: ``(rows,)`` the channel's true MEG in physical units."""
    ref = score.reference
    factor, unit = (1e15, "fT") if ref.meg_types[channel] == "mag" else (1e13, "fT/cm")
    seconds = rows / ref.model_sfreq_hz
    shaded = False
    for start, stop in _runs(~ref.clean[rows]):
        axis.axvspan(seconds[start], seconds[stop - 1], color="tab:red", alpha=0.12, linewidth=0,
                     label=None if shaded else "heartbeat / blink (not clean)")
        shaded = True
    axis.plot(seconds, truth * factor, color="0.2", linewidth=1.0, label="true MEG")
    axis.plot(seconds, score.first_prediction[rows, channel] * factor, color="tab:orange",
              linewidth=1.0, label="predicted live")
    axis.set_title(f"{label}: {ref.meg_names[channel]} (r {r_clean:.2f} clean, {r_all:.2f} all)", fontsize=10)
    axis.set_xlabel("time in the recording (s)")
    axis.set_ylabel(unit)
    axis.legend(loc="upper right", fontsize=8)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index runs where ``flags`` ``(n,)`` is True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _plot_latency(axis: Any, latencies_ms: np.ndarray, budget: Any = None) -> None:
    """The e2e latency's histogram; its title says what the brain signal waits on top."""
    hidden = 0
    if latencies_ms.size:
        p99 = float(np.percentile(latencies_ms, 99))
        # A few outliers (a stalled machine) would squeeze the histogram into one bar.
        shown = latencies_ms[latencies_ms <= max(p99 * 1.5, latencies_ms.min() + 1e-3)]
        hidden = latencies_ms.size - shown.size
        axis.hist(shown, bins=80, color="tab:blue")
        median = float(np.median(latencies_ms))
        axis.axvline(median, color="k", linestyle="--", label=f"median {median:.2f} ms")
        axis.axvline(p99, color="tab:red", linestyle="--", label=f"p99 {p99:.2f} ms")
        axis.legend()
    note = f" ({hidden} above 1.5 × p99 not shown)" if hidden else ""
    axis.set_xlabel(f"end-to-end latency: EEG sample pushed → prediction received (ms){note}")
    axis.set_ylabel("windows")
    if budget is not None:
        axis.set_title(f"on top of it, the brain signal waits for the filters ({budget.filter_ms:.1f} ms group delay at "
                       f"{budget.frequency_hz:.1f} Hz) and the hop ({budget.hop_wait_ms:.1f} ms on average)", fontsize=10)
