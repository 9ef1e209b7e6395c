"""`brainformer statistics`: the linear path's sufficient statistics for an existing model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from brainformer.commands.common import fail


def statistics(
    model: str = typer.Option(..., "--model", help="Model directory (or `default`, `default-lowdelay`) to add them to."),
    data: List[Path] = typer.Option(..., "--data", help="The recordings (or BIDS roots) the model was trained on."),
    config: Optional[Path] = typer.Option(None, "--config", help="The training TOML the model was trained with."),
) -> None:
    """Write the sufficient statistics of a model's linear skip path (lagged EEG covariance,
    EEG–MEG cross-covariance, the penalty grid) into its directory, from the recordings and the
    recipe it was trained with: what lets `brainformer-rt serve` re-solve the linear path for a
    stream's own electrodes and say what a cap will give. The weights are not touched; `brainformer
    train` writes the file itself."""
    from rich.console import Console

    from brainformer.linear_path import load_statistics, write_model_statistics
    from brainformer.settings import load_settings

    console = Console(highlight=False)
    try:
        settings = load_settings(config)
        with console.status("preparing the training rows, accumulating their statistics …"):
            path, difference = write_model_statistics(model, data, settings)
        statistics = load_statistics(path.parent)
        full = statistics.solve()
    except (ValueError, OSError) as err:  # StatisticsError, SettingsError, DataError are ValueErrors
        fail(err)
    console.print(f"written {path} ({path.stat().st_size / 1e6:.2f} MB): lags {list(statistics.lags)} samples, "
                  f"{statistics.fitting.count} fitting + {statistics.validation.count} validation rows in {len(statistics.folds)} "
                  "stretches", soft_wrap=True)
    console.print(f"the skip path they give differs from the model's by at most {difference:.2g}; "
                  f"held-out r {full.expected.r:.3f}, R² {full.expected.r2:.3f} with every electrode", soft_wrap=True)
