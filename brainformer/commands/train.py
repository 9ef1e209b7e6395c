"""`brainformer train`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from brainformer.commands.common import fail
from brainformer.errors import EXIT_USAGE

if TYPE_CHECKING:
    from brainformer.evaluation import EvaluationReport
    from brainformer.settings import ExperimentSettings
    from brainformer.training import TrainingData, TrainResult


def train(
    data: List[Path] = typer.Option(..., "--data", help="Recordings, BIDS roots, or a dataset written by `prepare`."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (config.json + model.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training TOML, e.g. configs/train-sample.toml."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the number of epochs in the config."),
    report_to: str = typer.Option("none", "--report-to", help="none | tensorboard | wandb"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed in the config."),
) -> None:
    """Train a model with the Hugging Face Trainer and write a self-sufficient model directory."""
    from rich.console import Console

    from brainformer.commands._tables import wide_console
    from brainformer.training import (
        TrainingError,
        check_report_to,
        evaluate_trained,
        launch_rank,
        load_training_data,
        train_model,
    )

    # Under torchrun / accelerate launch every process runs this; only the main one speaks.
    is_main = launch_rank() == 0
    console = wide_console() if is_main else Console(quiet=True)
    try:
        check_report_to(report_to)
        settings = _settings_with_overrides(config, epochs, seed)
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--out {out}: exists and is not a directory")
        with console.status("preparing data …"):
            training_data = load_training_data(data, settings)
        _print_data_summary(console, training_data)
        result = train_model(training_data, settings, out, report_to=report_to)
        if not result.is_main_process:
            return
        with console.status("scoring against the baselines …"):
            reports = evaluate_trained(result.model, training_data, settings)
    except (ValueError, OSError) as err:  # TrainingError, SettingsError, DataError, PreprocessingError …
        if not is_main:
            raise typer.Exit(EXIT_USAGE) from None
        fail(err)
    _print_result(console, result, out, reports, report_to)


def _settings_with_overrides(config_file: Path | None, epochs: int | None, seed: int | None) -> ExperimentSettings:
    """The settings of `--config` (or the defaults) with `--epochs` / `--seed` applied and validated."""
    from brainformer.settings import SettingsError, TrainingSettings, load_settings

    settings = load_settings(config_file)
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        try:
            training: TrainingSettings = dataclasses.replace(settings.training, **overrides)
        except SettingsError as err:
            option = "--epochs" if "epochs" in str(err) else "--seed"
            raise SettingsError(f"{option}: {err}") from None
        settings = dataclasses.replace(settings, training=training)
    return settings


def _print_data_summary(console: Any, training_data: TrainingData) -> None:
    config = training_data.config
    console.print(
        f"{len(training_data.sources)} recording(s), {config.n_eeg_channels} EEG → {config.n_meg_channels} MEG "
        f"at {config.sfreq_hz:g} Hz; windows: {len(training_data.train)} train, "
        f"{len(training_data.validation)} validation, {len(training_data.test)} test",
        highlight=False,
    )


def _print_result(
    console: Any, result: TrainResult, out: Path, reports: list[tuple[str, str, EvaluationReport]], report_to: str
) -> None:
    """The model written, its losses, and one table per scored part next to the baselines."""
    from brainformer.commands._tables import format_comparisons, format_table
    from brainformer.training import CHECKPOINTS_DIRNAME

    n_parameters = sum(p.numel() for p in result.model.parameters())
    processes = f" on {result.world_size} processes" if result.world_size > 1 else ""
    best = "–" if result.best_validation_loss is None else f"{result.best_validation_loss:.4f}"
    test = "–" if result.test_loss is None else f"{result.test_loss:.4f}"
    console.print(
        f"model written to {out} ({n_parameters / 1e6:.2f} M parameters) after {result.epochs_run:g} epoch(s) "
        f"in {result.wall_s:.0f} s{processes}; best validation loss {best}, test loss {test}",
        highlight=False,
    )
    for name, part, report in reports:
        seconds = report.setup["n_test_samples"] / report.sfreq_hz
        console.print(format_table(report, f"{name}: {part} part ({seconds:.1f} s)"))
        for line in format_comparisons(report):
            console.print(line, highlight=False)
    if not reports:
        console.print("no continuous recording to score against the baselines; use `brainformer evaluate --data FILE`")
    if report_to == "tensorboard":
        console.print(f"TensorBoard logs: {out / CHECKPOINTS_DIRNAME / 'runs'}")
