"""`brainformer-rt serve`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config


def serve(
    stream: List[str] = typer.Option([], "--stream", help="LSL stream name (or type) of the EEG; repeat to serve several."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory or `default`."),
    zmq: Optional[str] = typer.Option(None, "--zmq", help="ZeroMQ PUB address (default tcp://127.0.0.1:5556)."),
    no_zmq: bool = typer.Option(False, "--no-zmq", help="Do not publish on ZeroMQ."),
    lsl_name: Optional[str] = typer.Option(None, "--lsl-name", help="Name of the output LSL stream (default brainformer-meg)."),
    hop: Optional[int] = typer.Option(None, "--hop", help="New samples between two predictions (default: the model's)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    engine: Optional[str] = typer.Option(None, "--engine", help="auto | eager | compile | aot | cuda-graph"),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve TOML (configs/serve.toml); flags override it."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    wait: Optional[float] = typer.Option(None, "--wait", help="Seconds to wait for the stream before giving up."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    metrics_host: Optional[str] = typer.Option(None, "--metrics-host", help="Address of the metrics server (default 127.0.0.1)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="text | json"),
    zmq_curve_keys: Optional[Path] = typer.Option(None, "--zmq-curve-keys", help="Directory with CURVE keys for ZeroMQ."),
    stats_json: Optional[Path] = typer.Option(None, "--stats-json", help="Write the final statistics to this JSON file."),
    busy_poll: bool = typer.Option(False, "--busy-poll", help="Spin instead of sleeping while waiting for input: lower latency for one core at 100 %."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
    input_unit: Optional[str] = typer.Option(None, "--input-unit", help="Unit of the stream's EEG (uV, mV, V, -6 …), overriding its meta-data."),
    channel_map: Optional[Path] = typer.Option(None, "--channel-map", help="TOML file of \"stream label\" = \"model label\" pairs."),
    montage: Optional[str] = typer.Option(None, "--montage", help="Electrode positions of the stream: an MNE montage name (standard_1020) or a file."),
    max_missing: Optional[float] = typer.Option(None, "--max-missing", help="Largest fraction of the model's electrodes that may be missing and interpolated (default: no limit for a model with linear path statistics, else 0.25)."),
    min_expected_share: Optional[float] = typer.Option(None, "--min-expected-share", help="Refuse a stream whose cap is expected to give less than this share of the model's full-cap r (default 0.5)."),
    feedback: Optional[Path] = typer.Option(None, "--feedback", help="Feedback signals TOML (docs/feedback.md): envelope, power or phase of sensor groups, on <lsl-name>-feedback and the ZeroMQ topic feedback; replaces the config's [feedback] tables."),
) -> None:
    """Serve predicted MEG for one or more live EEG streams."""
    # Exits 0 after a stop, 1 on a failure while serving, 2 on unusable settings, model or stream.
    use_lsl_config(lsl_config)
    from brainformer.commands.common import fail
    from brainformer.errors import EXIT_OK
    from brainformer.settings import SettingsError
    from brainformer_rt.serving.signals import Interrupted, StopRequest

    # Signals are taken over first, so that a stop at any later moment ends in an orderly exit.
    stop = StopRequest().install()
    try:
        from brainformer_rt.serving.app import load_serve_settings, serve as serve_daemon

        settings = load_serve_settings(
            config, stream=stream, model=model, zmq=zmq, no_zmq=no_zmq, lsl_name=lsl_name, hop=hop, device=device,
            engine=engine, duration=duration, wait=wait, metrics_port=metrics_port, metrics_host=metrics_host,
            log_format=log_format, zmq_curve_keys=zmq_curve_keys, stats_json=stats_json,
            busy_poll=busy_poll or None,  # not given: the config file (or the default) decides
            input_unit=input_unit, channel_map=channel_map, montage=montage, max_missing=max_missing,
            min_expected_share=min_expected_share, feedback=feedback,
        )
    except SettingsError as error:
        stop.restore()
        fail(error)
    except Interrupted:
        stop.restore()
        raise typer.Exit(EXIT_OK) from None
    from rich.console import Console

    console = Console(highlight=False, markup=False)
    outcome = serve_daemon(settings, stop, announce=lambda line: console.print(line, soft_wrap=True))
    if outcome.code != EXIT_OK:
        fail(outcome.error, outcome.code)  # after the closing log lines: the last line anyone sees
    from brainformer_rt.commands._serve_report import print_report

    print_report(console, outcome.metrics, outcome.signal_name)
