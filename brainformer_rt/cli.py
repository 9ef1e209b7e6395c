"""`brainformer-rt`: serve predicted MEG from live EEG, and the tools around it.

Every command that touches LSL points liblsl at a loopback-only configuration before pylsl is
imported (see serving/lsl_config.py); `--lsl-config` chooses another file explicitly.
"""

from __future__ import annotations

import os

# numpy's linear algebra in these commands is small (the adapter's and each stream's linear path
# products, the plan-time re-solve of the linear path): a multi-threaded BLAS only competes with
# the serving thread and torch's threads for the cores. On a loaded 2-core machine a re-solve took
# seconds instead of 30 ms and starved the serving thread meanwhile. One BLAS thread unless the
# user chose otherwise; it must be set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402 - after the BLAS setting

from brainformer_rt.commands import bench, check, demo, engine, listen, serve, simulate, streams  # noqa: E402

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
