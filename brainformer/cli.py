"""`brainformer`: prepare datasets, train, evaluate and simulate paired EEG/MEG recordings.

Each command (one module in `brainformer/commands/`) parses its options and calls the library
module that owns the work. Heavy imports happen inside the commands to keep `--help` fast.
"""

from __future__ import annotations

import typer

from brainformer.commands import evaluate, prepare, simulate_data, statistics, train

app = typer.Typer(
    name="brainformer",
    help="Train and evaluate EEG→MEG transformers on paired recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(prepare.prepare)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command("simulate-data")(simulate_data.simulate_data)
app.command()(statistics.statistics)

if __name__ == "__main__":
    app()
