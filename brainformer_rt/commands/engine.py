"""`brainformer-rt engine build | status | clear`: the compiled forward's cache (docs/engines.md).

``serve --engine auto`` on a CPU serves with eager until the ``aot`` packages of its model are
in the cache, and builds the missing ones in the background. ``engine build`` builds them ahead
of an experiment; ``engine status`` says what is cached for which model and machine, and which
builds run; ``engine clear`` empties the cache. ``status`` and ``clear`` never import torch.
Exit codes: 0 done, 1 a build failed or a running build keeps ``clear`` from emptying the
cache, 2 unusable options (the message names the option).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

#: Terminal columns from which `engine status` prints a table; narrower, a record per package.
WIDE_STATUS_COLUMNS = 140

app = typer.Typer(name="engine", no_args_is_help=True, add_completion=False,
                  help="The compiled forward's cache (`--engine auto` on a CPU): build ahead, show, empty.")


@app.command("build")
def build(
    model: Optional[str] = typer.Option(None, "--model", help="Model directory, `default` or `default-lowdelay` (default: the config's, else `default`)."),
    config: Optional[Path] = typer.Option(None, "--config", help="The serve TOML the experiment will use: its model, hop_samples, streams and torch_threads."),
    hop: Optional[int] = typer.Option(None, "--hop", min=1, help="New samples between two predictions, as given to serve (default: the model's)."),
    streams: Optional[int] = typer.Option(None, "--streams", min=1, help="Number of EEG streams serve will serve (default 1)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads of serve (its torch_threads; default: torch's choice, as serve)."),
) -> None:
    """Build the compiled packages a `serve` with these settings needs (progress shown)."""
    from rich.console import Console

    from brainformer.commands.common import fail
    from brainformer.errors import EXIT_FAILURE
    from brainformer.settings import SettingsError
    from brainformer_rt.tools.engine_cache import EngineBuildError, build_target, plan_packages

    console = Console(highlight=False)
    try:
        target = build_target(config, model, hop, streams, threads)
        with console.status(f"loading {target.model} …"):
            engine, plans = plan_packages(target)
    except (SettingsError, EngineBuildError) as error:
        fail(error)
    cache = plans[0].path.parent
    console.print(f"model {engine.model_label}: window {engine.window_samples} samples, newest "
                  f"{engine.output_samples} predicted, batch buckets {engine.buckets}, "
                  f"{_threads_text(target.threads)}; cache {cache}", soft_wrap=True)
    try:
        _build_with_progress(console, engine, plans)
    except KeyboardInterrupt:
        fail("interrupted: nothing half-built was kept", EXIT_FAILURE)
    except Exception as error:  # noqa: BLE001 - what the compiler raised, as one line
        fail(f"the build failed: {type(error).__name__}: {error}", EXIT_FAILURE)
    console.print(f"ready: `serve` with these settings serves compiled from its first window "
                  f"({len(plans)} package{'s' if len(plans) != 1 else ''} in {cache})", soft_wrap=True)


def _threads_text(threads: Optional[int]) -> str:
    import torch

    return f"{threads} torch thread{'s' if threads != 1 else ''}" if threads else \
        f"torch's default threads ({torch.get_num_threads()})"


def _build_with_progress(console, engine, plans) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from brainformer_rt.serving.engine import aot_inductor_configs
    from brainformer_rt.tools.engine_cache import build_planned

    how = "compiling with autotuning (a minute or two)" if "max_autotune" in aot_inductor_configs() else "compiling"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        tasks = {plan.bucket: progress.add_task(f"bucket {plan.bucket}: queued", total=1) for plan in plans}

        def started(plan) -> None:
            progress.update(tasks[plan.bucket], description=f"bucket {plan.bucket}: {how}")
            progress.start_task(tasks[plan.bucket])

        def waiting(plan, pid: int) -> None:
            progress.update(tasks[plan.bucket], description=f"bucket {plan.bucket}: waiting for process "
                                                            f"{pid or '?'}, which builds it already")

        def done(plan, seconds: float, other_builder: Optional[int]) -> None:
            if plan.cached:
                text = "in the cache already"
            elif other_builder is not None:
                text = f"built by process {other_builder or '?'} in the meantime"
            else:
                text = f"built in {seconds:.1f} s"
            progress.update(tasks[plan.bucket], description=f"bucket {plan.bucket}: {text} ({plan.path.name})",
                            completed=1)

        build_planned(engine, plans, on_start=started, on_wait=waiting, on_done=done)


@app.command("status")
def status(
    json_output: bool = typer.Option(False, "--json", help="Print the cache's entries as JSON."),
) -> None:
    """Show what the cache holds: each package's model, shapes, threads, CPU, size and age, and the builds running."""
    import json

    from rich.console import Console
    from rich.table import Table

    from brainformer_rt.serving.aot_cache import aot_cache_dir, cache_listing, running_builders

    cache = aot_cache_dir()
    entries, builders = cache_listing(cache), running_builders(cache)
    console = Console(highlight=False)
    if json_output:
        console.print_json(json.dumps({"cache": str(cache), "entries": [vars(entry) for entry in entries],
                                       "builders": [vars(builder) for builder in builders]}))
        return
    if not entries:
        console.print(f"no compiled packages in {cache}", soft_wrap=True)
        return
    now = time.time()
    rows = []
    for entry in entries:
        facts = entry.facts
        state = {"ready": "ready", "building": f"building (pid {entry.builder_pid or '?'})",
                 "failed": f"failed: {entry.error or 'see its log'}"}[entry.state]
        shape = f"{facts['window_samples']}→{facts.get('output_samples')}" if "window_samples" in facts else ""
        machine = f"{str(facts.get('torch', '')).split('+')[0]} {(facts.get('cpu') or [''])[-1]}".strip()
        rows.append({"model": str(facts.get("model_dir", "?")), "state": state, "batch": str(facts.get("bucket", "")),
                     "in→out": shape, "threads": str(facts.get("threads", "")),
                     "tuned": {True: "yes", False: "no"}.get(facts.get("autotune"), ""), "torch, CPU": machine,
                     "size": _size(entry.size_bytes), "age": _age(now - entry.modified) if entry.modified else "",
                     "key": entry.key[:8]})
    if console.width >= WIDE_STATUS_COLUMNS:
        table = Table(title=f"compiled packages in {cache}", title_justify="left")
        for column in rows[0]:  # the long cells fold; the short ones (the key among them) stay whole
            table.add_column(column, overflow="fold", no_wrap=column not in ("model", "state", "torch, CPU"))
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
    else:  # ten columns do not fit: folded, the key and the state would break across lines
        console.print(f"compiled packages in {cache}", soft_wrap=True)
        for row in rows:
            record = Table.grid(padding=(0, 2))
            record.add_column(no_wrap=True)
            record.add_column(overflow="fold")
            for name, value in row.items():
                record.add_row(name, value)
            console.print()
            console.print(record)
    if builders:
        console.print(", ".join(f"build running: pid {b.pid or '?'} for {b.key}" for b in builders), soft_wrap=True)


def _size(n_bytes: int) -> str:
    """Bytes for people: kB below a megabyte (a record or a log), where "0.0 MB" would read as empty."""
    if not n_bytes:
        return ""
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{max(n_bytes / 1e3, 0.1):.1f} kB"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


@app.command("clear")
def clear(
    force: bool = typer.Option(False, "--force", help="Stop running builds first (SIGTERM) instead of refusing."),
) -> None:
    """Empty the cache (every package, record and log); refuses while a build runs, unless --force."""
    from rich.console import Console

    from brainformer.commands.common import fail
    from brainformer.errors import EXIT_FAILURE
    from brainformer_rt.serving.aot_cache import aot_cache_dir, clear_cache, running_builders, stop_builders

    cache = aot_cache_dir()
    console = Console(highlight=False)
    builders = running_builders(cache)
    if builders and not force:
        pids = ", ".join(str(b.pid or "?") for b in builders)
        fail(f"a build is running in {cache} (pid {pids}); wait for it, or stop it with `engine clear --force`",
             EXIT_FAILURE)
    for builder in stop_builders(cache) if builders else []:
        console.print(f"stopped the build of {builder.key} (pid {builder.pid or '?'})", soft_wrap=True)
    sizes = {path: _file_size(path) for path in cache.iterdir()} if cache.is_dir() else {}
    removed = clear_cache(cache)
    total = sum(sizes.get(path, 0) for path in removed)
    packages = sum(path.suffix == ".pt2" for path in removed)
    console.print(f"removed {len(removed)} file{'s' if len(removed) != 1 else ''} ({packages} "
                  f"package{'s' if packages != 1 else ''}, {_size(total) or '0 bytes'}) from {cache}", soft_wrap=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0
