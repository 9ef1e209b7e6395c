"""`brainformer-rt demo`: the whole pipe on the bundled recording, scored live (see
`brainformer_rt.tools.demo`); here the options, the live panel, the summary and the plot.

Exit codes: 0 after the duration, and 0 after Ctrl-C/SIGTERM once predictions came in (the
summary and the plot are written from what was received); 130 when stopped before the first
prediction; 1 when the player or the daemon fails (with the tail of its log); 2 for bad
options or an unusable model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from brainformer_rt.commands.common import LSL_CONFIG_HELP, use_lsl_config

#: Stopped by a signal before there was anything to report (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130
#: Display refresh period of the live panel.
REFRESH_S = 0.25
#: Progress line period when the output is not a terminal (logs, CI).
PLAIN_PROGRESS_S = 2.0


def demo(
    duration: float = typer.Option(20.0, "--duration", help="Seconds to run."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Where to write the summary PNG (default ./brainformer-demo.png)."),
    model: str = typer.Option("default", "--model", help="Model directory to serve instead of the bundled default."),
    lsl_config: Optional[Path] = typer.Option(None, "--lsl-config", help=LSL_CONFIG_HELP),
) -> None:
    """Live demo: play the bundled recording, serve the bundled model, compare with the true MEG."""
    use_lsl_config(lsl_config)
    demo_command(duration=duration, plot=plot, model=model)


def demo_command(duration: float = 20.0, plot: Optional[Path] = None, model: str = "default") -> None:
    """Play the bundled recording, serve ``model`` (default: the bundled one), score its
    predictions live against the recording's MEG, print a summary and write a PNG."""
    from rich.console import Console

    from brainformer.commands.common import fail
    from brainformer_rt.commands._cli_logging import setup_cli_logging
    from brainformer_rt.commands.common import enter_loopback_namespace
    from brainformer_rt.serving.signals import Interrupted, StopRequest
    from brainformer_rt.tools.demo import DemoError, check_options, run_demo

    console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)
    enter_loopback_namespace(err_console)
    # Warnings and errors of the library only: its INFO lines would clutter the panel.
    setup_cli_logging(logging.WARNING, err_console)
    try:
        options = check_options(duration, plot, model)
        with StopRequest() as stop:
            result = run_demo(options, _RichView(console, options.duration_s), stop)
            # Still inside: a second Ctrl-C must not cut the report short.
            _report(console, err_console, result, options)
    except Interrupted as stopped:
        err_console.print(f"stopped by {_signal_text(stopped.args[0] if stopped.args else None)} "
                          "before the first prediction")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except DemoError as error:
        fail("\n".join(filter(None, (str(error), error.log_tail))), error.exit_code)


def _signal_text(signal_name: Optional[str]) -> str:
    return {"SIGINT": "Ctrl-C", None: "a signal"}.get(signal_name, signal_name)


def _report(console: Any, err_console: Any, result: Any, options: Any) -> None:
    """The summary table, the plot and the warnings, from what was received."""
    from rich.markup import escape

    from brainformer_rt.commands._demo_report import summary_table, write_plot

    score = result.score
    if result.stopped_by is not None:
        console.print(f"stopped by {_signal_text(result.stopped_by)} after {result.live_s:.1f} s")
    if result.ended_early is not None:
        err_console.print(f"[yellow]warning:[/] the {result.ended_early} stopped before the end", soft_wrap=True)
    console.print(summary_table(score, result.daemon_stats, result.live_s, options.model_label))
    part = write_plot(score, options.plot_path)
    console.print(f"plot ({part} traces + latency histogram): {escape(str(options.plot_path))}", soft_wrap=True)
    if result.eeg_check_error is not None:
        err_console.print(f"[yellow]warning:[/] could not read the EEG stream here "
                          f"({escape(str(result.eeg_check_error))}); the timestamp mapping was not checked",
                          soft_wrap=True)
    if score.eeg_mismatched:
        err_console.print(f"[yellow]warning:[/] {score.eeg_mismatched} EEG samples did not match the recording at "
                          "their timestamps: the scores may be misaligned", soft_wrap=True)


class _RichView:
    """The run's progress on the terminal: a spinner with the start-up steps, then a live panel;
    one line per step and a progress line every few seconds when the output is not a terminal.

    State: the spinner (start-up), the live panel, and when each was last drawn.
    """

    def __init__(self, console: Any, duration_s: float):
        self.console = console
        self.duration_s = duration_s
        self.model_label = ""
        self._status: Any = None
        self._live: Any = None
        self._next_refresh_s = 0.0
        self._next_plain_s = PLAIN_PROGRESS_S
        self._last_message_s = 0.0

    def announce(self, plan: Any) -> None:
        from rich.markup import escape

        self.model_label = plan.model_label
        self.console.print(f"demo: {plan.recording.name} (loop) → LSL [bold]{plan.stream_name}[/] → brainformer-rt "
                           f"serve ({escape(plan.model_label)}) → ZeroMQ {plan.zmq_address} + LSL "
                           f"[bold]{plan.meg_stream_name}[/]", soft_wrap=True)

    def starting(self, step: str) -> None:
        from rich.markup import escape

        if self._status is None:
            self._status = self.console.status("")
            self._status.start()
        self._status.update(escape(step))
        if not self.console.is_terminal:  # no spinner in a log: one line per step instead
            self.console.print(step, markup=False, soft_wrap=True)

    def update(self, score: Any, elapsed_s: float, received: bool) -> None:
        from brainformer_rt.commands._demo_report import live_table, plain_progress

        if self._status is not None:  # the first prediction is in: the start-up is over
            self._stop_status()
            if self.console.is_terminal:
                from rich.live import Live

                self._live = Live(console=self.console, auto_refresh=False, transient=True)
                self._live.start()
        if received:
            self._last_message_s = elapsed_s
        # Draw right after a message (the next one is a hop away), or when none comes.
        if self._live is not None and elapsed_s >= self._next_refresh_s and (
                received or elapsed_s - self._last_message_s > 0.1):
            self._live.update(live_table(score, elapsed_s, self.duration_s, self.model_label), refresh=True)
            self._next_refresh_s = elapsed_s + REFRESH_S
        if not self.console.is_terminal and elapsed_s >= self._next_plain_s:
            self.console.print(plain_progress(score, elapsed_s), soft_wrap=True)
            self._next_plain_s += PLAIN_PROGRESS_S

    def close(self) -> None:
        self._stop_status()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
