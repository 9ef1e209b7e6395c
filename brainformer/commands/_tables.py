"""The rich tables of an `EvaluationReport`, shared by `brainformer evaluate` and `brainformer train`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brainformer.evaluation import EvaluationReport

__all__ = ["format_artefacts", "format_comparisons", "format_effective_delays", "format_table", "wide_console"]

#: How the table names each sample set.
_SUBSET_LABELS = {"all": "all", "clean": "clean", "cardiac": "cardiac"}


def format_table(report: EvaluationReport, title: str) -> Any:
    """A rich table: one row per method with mean r and mean R² (± bootstrap sd, [95 % interval]),
    NMSE, and mean r on magnetometers and gradiometers.

    When the report holds artefact-free scores, each method gets a row per sample set: all
    held-out samples, the clean ones (heartbeats and blinks left out) and the cardiac ones
    (inside heartbeat windows); `format_artefacts` says how many samples each set holds.
    """
    from rich import box
    from rich.table import Table

    summary = report.to_dict()
    subsets = list(report.subsets())
    table = Table(title=title, box=box.SIMPLE_HEAD)
    columns = ["method"] + (["samples"] if subsets else []) + ["mean r ± sd [95% CI]", "mean R² ± sd [95% CI]", "NMSE", "r mag", "r grad"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "samples") else "right", no_wrap=True)
    for name in report.methods:
        entry = summary[name]
        label = name.replace("_", " ")
        if not subsets:
            table.add_row(label, *_cells(entry, entry.get("mag", {}).get("r_mean"), entry.get("grad", {}).get("r_mean")))
            continue
        table.add_row(label, "all", *_cells(entry, entry.get("mag", {}).get("r_mean"), entry.get("grad", {}).get("r_mean")))
        for subset in subsets:
            part = entry[subset]
            table.add_row("", _SUBSET_LABELS[subset], *_cells(part, part.get("r_mag"), part.get("r_grad")),
                          style="dim" if subset == "cardiac" else None)
        table.add_section()
    return table


def _cells(entry: dict, r_mag: Any, r_grad: Any) -> list[str]:
    cells = []
    for key in ("r_mean", "r2_mean"):
        boot = entry["bootstrap"][key]
        cells.append(f"{entry[key]:.3f} ± {boot['std']:.3f} [{boot['ci95'][0]:.3f}, {boot['ci95'][1]:.3f}]")
    cells.append(f"{entry['nmse']:.3f}")
    cells += [f"{r:.3f}" if r is not None else "–" for r in (r_mag, r_grad)]
    return cells


def format_comparisons(report: EvaluationReport) -> list[str]:
    """One line per baseline and sample set: paired bootstrap interval of model − baseline for
    mean r and R²."""
    lines = []
    for key, entry in report.to_dict()["comparisons"].items():
        for subset in ["all", *report.subsets()]:
            part = entry if subset == "all" else entry[subset]
            dr, dr2 = part["r_mean"], part["r2_mean"]
            where = "" if subset == "all" and not report.subsets() else f" ({_SUBSET_LABELS[subset]})"
            lines.append(
                f"{key.replace('_', ' ')}{where}: Δr {dr['value']:+.3f} [{dr['ci95'][0]:+.3f}, {dr['ci95'][1]:+.3f}], "
                f"ΔR² {dr2['value']:+.3f} [{dr2['ci95'][0]:+.3f}, {dr2['ci95'][1]:+.3f}]"
            )
    return lines


def format_artefacts(report: EvaluationReport) -> list[str]:
    """What the clean samples are: heartbeats and blinks found, the windows left out, the clean
    share of the held-out samples, and every note (e.g. no EOG channel)."""
    if report.artefacts is None:
        return []
    art = report.artefacts.to_dict()
    before, after = (int(round(1000 * w)) for w in art["heartbeat_window_s"])
    rate = f", {art['heart_rate_bpm']:.0f} bpm" if art["heart_rate_bpm"] is not None else ""
    if art["ecg_source"] != "none":
        beats = f"{art['heartbeats']} heartbeats ({art['ecg_source']}{rate}; {art['heartbeats_in_scored_rows']} held out)"
    else:
        beats = "no heartbeats in the rule"
    if art["blinks_detected"]:
        blinks = f"{art['blinks']} blinks ({art['eog_source']}; {art['blinks_in_scored_rows']} held out)"
    else:
        blinks = "no blinks in the rule"
    lines = [
        f"artefacts: {beats}, {blinks}",
        f"clean = outside −{before} … +{after} ms of each R peak and ±{int(round(1000 * art['blink_window_s']))} ms "
        f"of each blink: {art['n_clean']:,} of {art['n_scored']:,} held-out samples ({100 * art['clean_share']:.0f} %); "
        f"cardiac = inside the heartbeat windows: {art['n_cardiac']:,}",
    ]
    lines += [f"note: {note}" for note in art["notes"]]  # why something is not in the rule
    return lines


def format_effective_delays(report: EvaluationReport) -> list[Any]:
    """Two rich tables of each method against the zero-phase truth (the brain as it is now): mean
    r at zero lag, and the lag of the peak r with that r; overall and per band (the band's
    signal lag follows its cycles, its envelope lag its power)."""
    from rich import box
    from rich.table import Table

    rows = []  # (label, {band: EffectiveDelay})
    for fitted_to, methods in report.effective_delays.items():
        for method, delays in methods.items():
            if method == "model" and fitted_to != report.truth_name:
                continue  # the model has one target: its own
            rows.append((method.replace("_", " ") + ("" if method == "model" else f" → {fitted_to}"), delays))
    if not rows:
        return []
    bands = list(rows[0][1])
    tables = []
    for title, cell in (
        ("mean r against the zero-phase truth at zero lag (as served)", lambda d: f"{d.r_at_zero:.3f}"),
        ("lag of the peak r against the zero-phase truth, ms: peak r", lambda d: f"{d.lag_ms:+.0f}: {d.r_at_lag:.2f}"),
    ):
        table = Table(title=title, box=box.SIMPLE_HEAD)
        table.add_column("method → truth its fit", no_wrap=True)
        for band in bands:
            table.add_column(band.replace("envelope", "env."), justify="right", no_wrap=True)
        for label, delays in rows:
            table.add_row(label, *(cell(delays[band]) for band in bands))
        tables.append(table)
    return tables


def wide_console(stderr: bool = False) -> Any:
    """A rich console at least 120 columns wide when not writing to a terminal (tables stay on one line)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and console.width < 120:
        console = Console(stderr=stderr, width=120)
    return console
