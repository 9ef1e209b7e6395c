"""What ``brainformer-rt serve`` prints when it ends: the statistics table (rich)."""

from __future__ import annotations

import math
from typing import Any, Optional

from brainformer_rt.serving.metrics import ServeMetrics

__all__ = ["summary_table", "print_report"]


def print_report(console: Any, metrics: ServeMetrics, signal_name: Optional[str]) -> None:
    """After a clean stop: what stopped it, then the statistics."""
    if signal_name:
        console.print(f"stopped by {signal_name}")
    console.print(summary_table(metrics))


def _ms(value: Optional[float]) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_table(metrics: ServeMetrics):
    """A rich ``Table`` of the final statistics (counters per stream, stage and e2e percentiles)."""
    from rich.table import Table

    table = Table(title="brainformer-rt serve: statistics", title_justify="left")
    table.add_column("metric")
    columns = ["count", "median_ms", "p95_ms", "p99_ms", "max_ms"]
    for column in columns:
        table.add_column(column, justify="right")
    for stage, ring in metrics.stages.items():
        summary = ring.summary()
        table.add_row(f"stage: {stage}", str(summary["count"]), *(_ms(summary[c]) for c in columns[1:]))
        if stage == "preprocess":  # the adaptation is a part of it, shown per stream
            for name, adapt in metrics.adapt.items():
                summary = adapt.summary()
                label = "  of which adaptation" + (f": {name}" if len(metrics.stream_names) > 1 else "")
                table.add_row(label, str(summary["count"]), *(_ms(summary[c]) for c in columns[1:]))
    engine = metrics.engine_facts()
    if engine.get("kind") == "auto":
        switch = engine.get("switch") or {}
        after = switch.get("switched_after_s")
        table.caption = (f"engine auto: serving with {engine.get('active')}" + (
            f" since {after:.1f} s after start-up ({switch.get('source')})" if after is not None else
            f" ({switch.get('state')}" + (f": {switch['reason']}" if switch.get("reason") else "") + ")"))
    rows = [("e2e latency (all)", metrics.e2e_summary())]
    if len(metrics.stream_names) > 1:
        rows += [(f"e2e latency: {name}", metrics.e2e_summary(name)) for name in metrics.stream_names]
    for label, summary in rows:
        table.add_row(label, str(summary["count"]), *(_ms(summary[c]) for c in columns[1:]), style="bold")
    budget = metrics.delay_budget()
    if budget is not None:  # the e2e latency is transport and compute: the brain is seen later still
        caption = f"delay as the brain sees it (mean, in band): {budget.text()}"
        table.caption = caption if table.caption is None else f"{table.caption}\n{caption}"

    # One row per counter, one column per stream: stays readable on a narrow terminal.
    counters = Table(title="counters", title_justify="left")
    counters.add_column("counter")
    for name in metrics.stream_names:
        counters.add_column(name, justify="right")
    keys = ["samples_in", "samples_published", "windows_served", "windows_skipped", "windows_stale",
            "samples_unpublished", "gaps", "gap_samples", "reconnects", "silences", "nan_chunks", "nan_windows",
            "flat_windows", "zmq_drops"]
    for key in keys:
        counters.add_row(key.replace("_", " "), *(str(getattr(metrics.streams[name], key)) for name in metrics.stream_names))

    from rich.console import Group

    return Group(table, counters)
