"""`brainformer`: prepare datasets, train, evaluate and simulate paired EEG/MEG recordings.

Each command parses its options and calls one function of the module that owns the work, so the
command line stays a thin layer. Heavy imports happen inside the commands to keep `--help` fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="brainformer",
    help="Train and evaluate EEG→MEG transformers on paired recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def prepare(
    data: List[Path] = typer.Option(..., "--data", help="Raw recordings (any MNE-readable file) or BIDS roots; repeat for several."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write (continuous arrays; brainformer.data.hf_windows opens it as a Hugging Face dataset)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training TOML (model + preprocessing + data sections)."),
    split: Optional[float] = typer.Option(None, "--split", help="Fraction of each recording, in time, used for training (default: data.split of --config, else 0.75)."),
    tokenize: bool = typer.Option(False, "--tokenize", help="Mark the dataset as meant for the `tokens` head (labels are quantised to 255-level tokens while training)."),
    jobs: int = typer.Option(1, "--jobs", help="Recordings processed in parallel (processes)."),
) -> None:
    """Preprocess recordings into a time-split dataset (continuous memory-mapped arrays; windows are cut while training)."""
    from brainformer.data import prepare_command

    prepare_command(data=data, out=out, config_file=config, split=split, tokenize=tokenize, jobs=jobs)


@app.command()
def train(
    data: List[Path] = typer.Option(..., "--data", help="Recordings, BIDS roots, or a dataset written by `prepare`."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (config.json + model.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training TOML, e.g. configs/train-sample.toml."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the number of epochs in the config."),
    report_to: str = typer.Option("none", "--report-to", help="none | tensorboard | wandb"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed in the config."),
) -> None:
    """Train a model with the Hugging Face Trainer and write a self-sufficient model directory."""
    from brainformer.training import train_command

    train_command(data=data, out=out, config_file=config, epochs=epochs, report_to=report_to, seed=seed)


@app.command()
def evaluate(
    model: str = typer.Option("default", "--model", help="Model directory, or `default` for the bundled model."),
    data: Optional[Path] = typer.Option(None, "--data", help="Recording to score (default: the bundled sample recording)."),
    split: float = typer.Option(0.75, "--split", help="Train fraction in time; the rest is held out."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all metrics to this JSON file."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Directory for PNG plots."),
) -> None:
    """Score the model and the ridge / lagged-ridge baselines on the held-out part, in one run."""
    from brainformer.evaluation import evaluate_command

    evaluate_command(model=model, data=data, split=split, json_path=json_path, plots_dir=plots)


@app.command("simulate-data")
def simulate_data(
    layout: str = typer.Option("sample", "--layout", help="sample | ds000117"),
    duration: float = typer.Option(60.0, "--duration", help="Seconds to simulate."),
    sfreq: Optional[float] = typer.Option(None, "--sfreq", help="Sampling rate in Hz (default: the layout's)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="Raw FIF file to write (EEG + MEG)."),
) -> None:
    """Simulate paired EEG/MEG from a real forward model and write a raw FIF."""
    from brainformer.simulation import simulate_data_command

    simulate_data_command(layout=layout, duration_s=duration, sfreq_hz=sfreq, seed=seed, out=out)


if __name__ == "__main__":
    app()
