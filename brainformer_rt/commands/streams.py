"""`brainformer-rt streams` (no torch: it never runs a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config


def streams(
    timeout: float = typer.Option(1.5, "--timeout", help="Seconds to look for streams."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """List the LSL streams that are visible."""
    use_lsl_config(lsl_config)
    from rich.console import Console

    from brainformer_rt.serving.inlet import MIN_RESOLVE_WAIT_S, list_streams

    console = Console()
    descriptions = list_streams(timeout)
    if not descriptions:
        console.print(f"no LSL streams visible (looked for {max(timeout, MIN_RESOLVE_WAIT_S):g} s)")
        return
    console.print(streams_table(descriptions))


def streams_table(descriptions):
    """A rich ``Table`` of stream descriptions (``inlet.StreamDescription``)."""
    from rich.table import Table

    table = Table(title=f"{len(descriptions)} LSL stream(s)")
    for column in ("name", "type", "channels", "rate (Hz)", "format", "source id", "host"):
        table.add_column(column, justify="right" if column in ("channels", "rate (Hz)") else "left")
    for d in descriptions:
        rate = f"{d.sfreq_hz:g}" if d.sfreq_hz > 0 else "irregular"
        table.add_row(d.name, d.type, str(d.n_channels), rate, d.channel_format, d.source_id, d.hostname)
    return table
