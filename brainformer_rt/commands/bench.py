"""`brainformer-rt bench`: run the benchmark, print the tables, write ``--json`` / ``--plot``.

It re-executes itself inside a loopback-only network namespace first when it can (root or user
namespaces); otherwise it warns and goes on with the loopback LSL configuration alone. Exit code
2 for unusable options, 1 when the run fails.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from brainformer.commands.common import fail
from brainformer.errors import EXIT_FAILURE
from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config


def bench(
    model: Optional[str] = typer.Option(None, "--model", help="Model directory or `default`."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of streaming measured (after warm-up)."),
    streams_n: int = typer.Option(1, "--streams", help="Number of EEG streams served by one daemon."),
    hop: Optional[int] = typer.Option(None, "--hop", help="New samples between two predictions (default: the model's)."),
    engine: str = typer.Option("auto", "--engine", help="auto | eager | compile | aot | cuda-graph"),
    also_engines: Optional[List[str]] = typer.Option(
        None, "--also-engine", help="Also measure the daemon with this engine, in the same run (repeatable)."),
    also_rates: Optional[List[float]] = typer.Option(
        None, "--also-rate", help="Also measure the daemon on the recording played at this rate in Hz "
                                  "(resampled by the daemon), in the same run (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure (and the raw latencies) to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Latency histogram / CDF PNG."),
    peer: str = typer.Option("naive", "--peer", help="naive | none: also run the naive loop for a ratio."),
    floor: bool = typer.Option(False, "--floor", help="Also run a relay with no model: the transport floor of this machine."),
    busy_poll: bool = typer.Option(False, "--busy-poll", help="The daemon serves with `serve --busy-poll`."),
    aligned: bool = typer.Option(False, "--aligned", help="Players push in step (one acquisition clock); default: independent phases."),
    cold_cache: bool = typer.Option(False, "--cold-cache", help="First measure the daemon on an empty compiled-forward cache, its build running; then the rest on the cache it filled."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """End-to-end latency benchmark: player → daemon → subscriber, in one command."""
    use_lsl_config(lsl_config)
    from rich.console import Console

    from brainformer_rt.commands._bench_report import results_table
    from brainformer_rt.tools.bench import BenchError, BenchFailure, BenchSettings, run_bench

    console = Console()
    _enter_loopback_namespace()
    settings = BenchSettings(model=model or "default", duration_s=duration, n_streams=streams_n, hop_samples=hop,
                             engine=engine, also_engines=tuple(also_engines or ()),
                             also_rates_hz=tuple(also_rates or ()), device=device, peer=peer, floor=floor, busy_poll=busy_poll,
                             aligned=aligned, cold_cache=cold_cache)
    try:
        results = run_bench(settings, lambda line: console.print(line, highlight=False))
    except BenchError as error:
        fail(error)
    except BenchFailure as error:
        fail(error, EXIT_FAILURE)
    console.print(results_table(results))
    _write_files(results, json_path, plot, console)


def _enter_loopback_namespace() -> None:
    """Re-execute inside a loopback-only namespace when possible (a warning when not); warnings
    and errors of the run to stderr."""
    from rich.console import Console

    from brainformer_rt.commands._cli_logging import setup_cli_logging
    from brainformer_rt.commands.common import enter_loopback_namespace

    err_console = Console(stderr=True)
    enter_loopback_namespace(err_console)
    # Jumps in the measured outputs' timestamps are counted in the results, not logged as warnings.
    logging.getLogger("brainformer_rt.serving.inlet").setLevel(logging.ERROR)
    # Warnings and errors only: progress goes to the console.
    setup_cli_logging(logging.WARNING, err_console)


def _write_files(results: Dict[str, Any], json_path: Optional[Path], plot: Optional[Path], console: Any) -> None:
    from brainformer_rt.commands._bench_report import write_plot

    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        console.print(f"results written to {json_path}", highlight=False)
    if plot is not None:
        write_plot(results, plot)
        console.print(f"plot written to {plot}", highlight=False)
