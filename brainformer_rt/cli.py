"""`brainformer-rt`: serve predicted MEG from live EEG, and the tools around it.

Every command that touches LSL points liblsl at a loopback-only configuration before pylsl is
imported (see serving/lsl_config.py); `--lsl-config` chooses another file explicitly.
"""

from __future__ import annotations

import typer

from brainformer_rt.commands import bench, check, demo, engine, listen, serve, simulate, streams

app = typer.Typer(
    name="brainformer-rt",
    help="Real-time EEG→MEG: LSL in, predicted MEG out on LSL and ZeroMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (serve.serve, check.check, simulate.simulate, listen.listen, streams.streams, bench.bench, demo.demo):
    app.command()(command)
app.add_typer(engine.app, name="engine")

if __name__ == "__main__":
    app()
