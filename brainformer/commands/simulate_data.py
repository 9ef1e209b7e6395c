"""`brainformer simulate-data`: the options, a progress bar and the summary table.

The work is `brainformer.simulation.write_simulation`; this module only presents it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from brainformer.commands.common import fail

logger = logging.getLogger(__name__)


def simulate_data(
    layout: str = typer.Option("sample", "--layout", help="sample | ds000117"),
    duration: float = typer.Option(60.0, "--duration", help="Seconds to simulate."),
    sfreq: Optional[float] = typer.Option(None, "--sfreq", help="Sampling rate in Hz (default: the layout's)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="Raw FIF file to write (EEG + MEG)."),
    planted_share: float = typer.Option(
        0.0, "--planted-share",
        help="Add a known non-linear term computable from the EEG (an alpha-envelope-gated beta source) "
             "holding this share of each MEG channel's 1-40 Hz variance; 0: none (default)."),
) -> None:
    """Simulate paired EEG/MEG from a real forward model and write a raw FIF."""
    simulate_data_command(layout=layout, duration_s=duration, sfreq_hz=sfreq, seed=seed, out=out,
                          planted_share=planted_share)


def simulate_data_command(layout: str, duration_s: float, sfreq_hz: float | None, seed: int, out: Path,
                          planted_share: float = 0.0) -> None:
    """Write a simulated raw FIF and its truth sidecar, with a progress bar; print a summary.

    Bad input exits with code 2 and one line naming the problem.
    """
    from rich.console import Console

    from brainformer.simulation import write_simulation

    try:
        with _progress_bar(f"simulating {layout}") as progress:
            truth_file, truth, n_samples = write_simulation(layout, duration_s, sfreq_hz, seed, Path(out),
                                                            planted_share=planted_share, progress=progress)
    except ValueError as err:
        fail(err)
    Console().print(_summary(layout, Path(out), truth_file, truth, n_samples))


def _summary(layout: str, out: Path, truth_file: Path, truth: Any, n_samples: int) -> Any:
    """The summary table: files, size, seed and the oracle's R² after the default preprocessing."""
    import numpy as np
    from rich.table import Table

    from brainformer.simulation import oracle_map, planted_share
    from brainformer.simulation.oracle import default_config

    table = Table(title=f"simulated {layout}", show_header=False)
    table.add_row("recording", str(out))
    table.add_row("truth sidecar", str(truth_file))
    table.add_row("duration", f"{n_samples / truth.sfreq_hz:g} s ({n_samples} samples at {truth.sfreq_hz:g} Hz)")
    table.add_row("channels", f"{truth.n_eeg} EEG + {truth.n_meg} MEG")
    table.add_row("seed / subject", f"{truth.seed} / {truth.subject}")
    try:
        r2 = oracle_map(truth, default_config(truth)).expected_r2
        table.add_row("oracle R² (default preprocessing)", f"{float(np.mean(r2)):.3f} mean over MEG channels")
        if truth.planted_source is not None:
            share = planted_share(truth, default_config(truth))
            table.add_row("planted term (default preprocessing)",
                          f"{float(np.mean(share)):.4f} of the MEG variance, mean over channels (set: {truth.planted_share:g})")
    except Exception as err:  # noqa: BLE001 - the summary must not fail a finished simulation
        logger.warning("oracle R² not computed: %s", err)
    return table


class _progress_bar:
    """Context manager yielding a ``progress(done, total)`` callback that drives a transient rich bar.

    The bar appears at the first call, when the total is known, so bad input fails before any bar.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        return self._update

    def _update(self, done: int, total: int) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=total)
        self._progress.update(self._task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
