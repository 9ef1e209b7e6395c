"""`brainformer evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brainformer.commands.common import fail


def evaluate(
    model: str = typer.Option("default", "--model", help="Model directory, or `default` for the bundled model."),
    data: Optional[Path] = typer.Option(None, "--data", help="Recording to score (default: the bundled sample recording)."),
    split: float = typer.Option(0.75, "--split", help="Train fraction in time; the rest is held out."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all metrics to this JSON file."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Directory for PNG plots."),
) -> None:
    """Score the model and the ridge / lagged-ridge baselines on the held-out part, in one run:
    on all held-out samples, on the clean ones (heartbeats and blinks left out) and inside
    heartbeat windows."""
    from brainformer.commands._tables import (
        format_artefacts,
        format_comparisons,
        format_effective_delays,
        format_table,
        wide_console,
    )
    from brainformer.evaluation import DEFAULT_SETTLE_S, evaluate_recording, write_json, write_plots
    from brainformer.model_dir import load_model
    from brainformer.paths import SAMPLE_RECORDING

    console = wide_console()
    data_path = Path(data) if data is not None else SAMPLE_RECORDING
    if not 0 < split < 1:
        fail(f"--split must lie strictly between 0 and 1, got {split}")
    try:
        loaded = load_model(model)
        with console.status("preprocessing, fitting baselines, predicting …"):
            report, info = evaluate_recording(loaded, data_path, split=split)
        report.setup["model"] = str(model)
        written = write_plots(report, plots, info) if plots is not None else []
        if json_path is not None:
            write_json(report, json_path)
    except (ValueError, OSError) as err:  # EvaluationError, ModelDirError, DataError are ValueErrors
        fail(err)
    held_out = (f"{data_path.name}: held-out {report.setup['n_test_samples'] / report.sfreq_hz:.1f} s "
                f"(split {split:g}, first {DEFAULT_SETTLE_S:g} s of each part dropped)")
    for line in format_artefacts(report):
        console.print(line, highlight=False, soft_wrap=True)
    for name, scored in report.all_truths().items():
        own = " (the model's target)" if scored is report else ""
        console.print(format_table(scored, f"{held_out}; truth: {name} MEG{own}, baselines fitted to it"))
        for line in format_comparisons(scored):
            console.print(line, highlight=False, soft_wrap=True)
    for table in format_effective_delays(report):
        console.print(table)
    if json_path is not None:
        console.print(f"metrics → {json_path}")
    for path in written:
        console.print(f"plot → {path}")
