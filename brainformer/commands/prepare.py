"""`brainformer prepare`: options, progress bars and the summary; the work is
`brainformer.data.write_dataset`. Never imports torch or transformers."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional

import typer

from brainformer.commands.common import fail

if TYPE_CHECKING:
    from brainformer.data import PreparedData
    from brainformer.settings import ExperimentSettings


def prepare(
    data: List[Path] = typer.Option(..., "--data", help="Raw recordings (any MNE-readable file) or BIDS roots; repeat for several."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write (continuous arrays; brainformer.data.hf_windows opens it as a Hugging Face dataset)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training TOML (model + preprocessing + data sections)."),
    split: Optional[float] = typer.Option(None, "--split", help="Fraction of each recording, in time, used for training (default: data.split of --config, else 0.75)."),
    tokenize: bool = typer.Option(False, "--tokenize", help="Mark the dataset as meant for the `tokens` head (labels are quantised to 255-level tokens while training)."),
    jobs: int = typer.Option(1, "--jobs", help="Recordings processed in parallel (processes)."),
) -> None:
    """Preprocess recordings into a time-split dataset (continuous memory-mapped arrays; windows are cut while training)."""
    from rich.console import Console

    from brainformer.data import DataError, find_recordings, write_dataset
    from brainformer.preprocessing import PreprocessingError
    from brainformer.settings import SettingsError

    console = Console(stderr=True)
    if jobs < 1:
        fail(f"--jobs {jobs}: expected an integer >= 1")
    try:
        settings = _settings(config, split, tokenize)
        files = find_recordings(data)
        progress, advance = _progress_bars(console, len(files))
        with _transient_on_error(progress):
            dataset = write_dataset(files, out, settings, jobs=jobs, on_progress=advance)
    except (DataError, PreprocessingError, SettingsError) as err:
        fail(err)
    except OSError as err:
        fail(f"{err.filename or out}: {err.strerror}")
    _print_summary(console, dataset, out)


def _settings(config_file: Path | None, split: float | None, tokenize: bool) -> ExperimentSettings:
    """The settings of `config_file`, with ``--split`` (when given) and ``--tokenize`` (when set)
    overriding its ``[data]`` section."""
    from brainformer.settings import SettingsError, load_settings

    settings = load_settings(config_file)
    overrides: dict[str, Any] = {}
    if split is not None:
        if not (isinstance(split, (int, float)) and math.isfinite(split) and 0 < split < 1):
            raise SettingsError(f"--split {split}: expected a fraction strictly between 0 and 1")
        overrides["split"] = float(split)
    if tokenize:
        overrides["tokenize"] = True
    if overrides:
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, **overrides))
    return settings


def _progress_bars(console: Any, n_files: int) -> tuple[Any, Any]:
    """A `Progress` with one bar per stage of `prepare_recordings`, and the callback advancing them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=console)
    tasks = {
        "statistics": progress.add_task("statistics", total=n_files),
        "preprocess": progress.add_task("preprocessing", total=n_files),
    }
    return progress, lambda stage: progress.advance(tasks[stage])


@contextlib.contextmanager
def _transient_on_error(progress: Any) -> Iterator[None]:
    """Run `progress`; if the body fails, erase the bars so the error stays the only output line."""
    with progress:
        try:
            yield
        except BaseException:
            progress.live.transient = True
            raise


def _print_summary(console: Any, dataset: PreparedData, out: Path) -> None:
    """One row per split (minutes, windows, window, hop), then the layout and size on disk."""
    from rich.table import Table

    from brainformer.data import SPLITS

    fields = dataset.fields
    table = Table(title=f"dataset written to {out}")
    for column in ("split", "minutes", "windows", "window", "hop"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split_name in SPLITS:
        rows = sum(r.parts[split_name][1] - r.parts[split_name][0] for r in dataset.recordings)
        table.add_row(
            split_name,
            f"{rows / fields.sfreq_hz / 60:.2f}",
            str(dataset.n_windows(split_name)),
            str(fields.window_samples),
            str(dataset.hop_samples(split_name)),
        )
    console.print(table)
    size_bytes = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    console.print(
        f"{len(dataset.recordings)} recording(s), {fields.n_eeg_channels} EEG → "
        f"{fields.n_meg_channels} MEG channels at {fields.sfreq_hz:g} Hz, "
        f"continuous float32 arrays (windows cut while training), {size_bytes / 2**20:.1f} MiB"
    )
