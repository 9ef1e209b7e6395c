"""`brainformer-rt listen`: subscribe to the daemon's LSL stream or ZeroMQ address, show rate and
latency live, report (the subscribers are `brainformer_rt.tools.listener`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config

#: Display refresh period of the live table.
REFRESH_S = 0.25


def listen(
    lsl: Optional[str] = typer.Option(None, "--lsl", help="Name of the LSL stream to read."),
    zmq: Optional[str] = typer.Option(None, "--zmq", help="ZeroMQ address to subscribe to."),
    topic: str = typer.Option("", "--topic", help="ZeroMQ topic prefix."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write latency statistics to this JSON file."),
    curve_server_key: Optional[Path] = typer.Option(None, "--curve-server-key", help="CURVE: the publisher's server.key."),
    curve_client_key: Optional[Path] = typer.Option(None, "--curve-client-key", help="CURVE: this subscriber's NAME.key_secret."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Reference subscriber: drain LSL or ZeroMQ, keep the newest, show rate and latency."""
    use_lsl_config(lsl_config)
    listen_command(lsl=lsl, zmq=zmq, topic=topic, duration=duration, json_path=json_path,
                   curve_server_key=curve_server_key, curve_client_key=curve_client_key)


def listen_command(
    lsl: Optional[str] = None,
    zmq: Optional[str] = None,
    topic: str = "",
    duration: Optional[float] = None,
    json_path: Optional[Path] = None,
    curve_server_key: Optional[Path] = None,
    curve_client_key: Optional[Path] = None,
    max_messages: Optional[int] = None,
) -> dict:
    """Check the options, open the subscriber, receive until the duration, ``max_messages``
    messages (None: no limit) or a signal; print the summary table (and write it as JSON);
    returns the summary."""
    from rich.console import Console

    from brainformer.commands.common import fail
    from brainformer_rt.commands._cli_logging import setup_cli_logging
    from brainformer_rt.serving.inlet import StreamNotFoundError, UnsupportedStreamError
    from brainformer_rt.tools.listener import LSLSubscriber, ZMQSubscriber

    setup_cli_logging()
    if (lsl is None) == (zmq is None):
        fail("give exactly one of --lsl NAME or --zmq ADDRESS")
    if duration is not None and duration <= 0:
        fail(f"--duration must be positive, got {duration:g}")
    if lsl is not None and (curve_server_key is not None or curve_client_key is not None):
        fail("--curve-server-key / --curve-client-key are for --zmq (LSL has no encryption)")
    source, address = ("lsl", lsl) if lsl is not None else ("zmq", zmq)
    try:
        subscriber = LSLSubscriber(lsl) if lsl is not None else ZMQSubscriber(
            zmq, topic, curve_server_key=curve_server_key, curve_client_key=curve_client_key)
        subscriber.open()
    except (StreamNotFoundError, UnsupportedStreamError, ValueError) as error:
        fail(error)
    console = Console()
    try:
        stats = _receive(console, subscriber, source, address, duration, max_messages)
        summary = stats.summary(source, address, subscriber)
        if subscriber.feedback_channels:
            summary["feedback"] = [dataclasses.asdict(channel) for channel in subscriber.feedback_channels]
    finally:
        subscriber.close()
    console.print(_table(stats, summary, subscriber.channel_names, subscriber.feedback_channels))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(summary, indent=2))
    return summary


def _receive(console: Any, subscriber: Any, source: str, address: str, duration: Optional[float],
             max_messages: Optional[int] = None) -> Any:
    """Receive until ``duration`` is over, ``max_messages`` arrived or SIGINT/SIGTERM; a live
    table on a terminal only (piped output gets just the summary). Returns the ListenStats."""
    import pylsl
    from rich.live import Live

    from brainformer_rt.serving.signals import StopRequest
    from brainformer_rt.tools.listener import ListenStats

    stats = ListenStats()
    deadline = None if duration is None else stats.started_s + duration
    live = Live(console=console, auto_refresh=False, transient=True) if console.is_terminal else None
    next_refresh_s = 0.0
    try:
        with StopRequest(interrupt=False) as stop:
            if live is not None:
                live.start()
            while not stop.is_set() and (max_messages is None or stats.messages < max_messages):
                now = pylsl.local_clock()
                if deadline is not None and now >= deadline:
                    break
                timeout_s = 0.1 if deadline is None else min(0.1, deadline - now)
                stats.add(subscriber.receive_all(max(timeout_s, 0.0)))
                if live is not None and now >= next_refresh_s:
                    live.update(_table(stats, stats.summary(source, address, subscriber), subscriber.channel_names,
                                       subscriber.feedback_channels), refresh=True)
                    next_refresh_s = now + REFRESH_S
    finally:
        if live is not None:
            live.stop()
    return stats


def _table(stats: Any, summary: dict, channel_names: list[str], feedback_channels: Optional[list] = None):
    """The live and final table; a feedback stream shows every signal with its unit, measure,
    band and delay (a MEG stream its first 4 channels)."""
    from rich.table import Table

    table = Table(title=f"listening to {summary['source']} {summary['address']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    latency = summary["latency_ms"]
    table.add_row("messages", f"{summary['messages']} ({summary['message_rate_hz']:.1f}/s)")
    table.add_row("samples", f"{summary['samples']} ({summary['sample_rate_hz']:.1f}/s)")
    if latency["n"]:
        table.add_row("latency median / p99", f"{latency['median']:.3f} / {latency['p99']:.3f} ms")
    if "seq_gaps" in summary:
        table.add_row("seq gaps (messages missed)", f"{summary['seq_gaps']} ({summary['messages_missed']})")
    else:
        table.add_row("reconnects", str(summary["reconnects"]))
    if feedback_channels:
        for i, channel in enumerate(feedback_channels):
            value = "–" if stats.newest is None or i >= stats.newest.data.shape[1] else f"{stats.newest.data[-1, i]:.4g}"
            table.add_row(f"last {channel.name} ({channel.describe()})", value)
    elif stats.newest is not None:
        newest = stats.newest.data[-1]
        for i in range(min(4, len(newest))):
            name = channel_names[i] if i < len(channel_names) else f"channel {i}"
            table.add_row(f"last {name}", f"{newest[i]:.4g}")
    return table
