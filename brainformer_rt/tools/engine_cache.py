"""`engine build`: the compiled packages a ``serve`` with these settings needs, built ahead of an
experiment, in the foreground (the user waits for it: normal priority, every compile job).

The packages are those ``serve --engine auto`` looks up: the same model, window, output span
(two hops), batch buckets (one per stream count) and torch threads give the same cache keys
(`brainformer_rt.serving.engine.AotEngine`), so a later ``serve`` with the same settings finds
them and serves compiled from its first window. A build that another process runs for the same
key is waited for, not repeated (`brainformer_rt.serving.aot_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

__all__ = ["BuildTarget", "PackagePlan", "EngineBuildError", "build_target", "plan_packages", "build_planned"]


class EngineBuildError(ValueError):
    """Settings or a model a build cannot use; the message names the option or the file."""


@dataclass
class BuildTarget:
    """What the packages are built for: the ``serve`` settings that shape them.

    model: model directory or bundled name; hop_samples: None for the model's; batch_size:
    windows per engine call (the number of streams served); threads: torch threads (None: torch's
    choice, as ``serve`` without ``torch_threads``).
    """

    model: str
    hop_samples: Optional[int]
    batch_size: int
    threads: Optional[int]


@dataclass
class PackagePlan:
    """One package: its batch bucket, where it goes, and whether it is there already."""

    bucket: int
    path: Path
    cached: bool


def build_target(config_file: Optional[Path], model: Optional[str], hop: Optional[int], streams: Optional[int],
                 threads: Optional[int]) -> BuildTarget:
    """The options over the serve TOML ``config_file`` (its ``model``, ``hop_samples``,
    ``streams``/``batch_size`` and ``torch_threads``) over ``serve``'s defaults. Raises
    ``SettingsError`` for a bad config file."""
    from brainformer.settings import ServeSettings, read_serve_config

    values = read_serve_config(config_file)
    source = f"serve config {config_file}" if config_file is not None else "engine build options"
    # A build needs no stream; the config's own streams only count them.
    settings = ServeSettings(**{**values, "streams": values.get("streams") or ["-"]}).validate(source)
    if streams is None:
        streams = settings.batch_size or len(settings.streams)
    return BuildTarget(model=model or settings.model, hop_samples=hop if hop is not None else settings.hop_samples,
                       batch_size=streams, threads=threads if threads is not None else settings.torch_threads)


def plan_packages(target: BuildTarget):
    """``(engine, [PackagePlan])``: the ``aot`` engine ``serve`` would prepare for ``target``,
    and its packages. Sets this process's torch threads to ``target.threads``. Raises
    :class:`EngineBuildError` naming ``--model`` or ``--hop``."""
    import torch

    from brainformer.model_dir import load_model
    from brainformer_rt.serving.engine_switch import model_label, serving_output_samples
    from brainformer_rt.serving.engine import AotEngine

    if target.threads is not None:
        torch.set_num_threads(target.threads)
    try:
        model = load_model(target.model, device="cpu")
    except (ValueError, FileNotFoundError) as error:  # ModelDirError is a ValueError
        raise EngineBuildError(f"--model {target.model!r}: {error}") from None
    config = model.config
    if getattr(config, "head", "regression") != "regression":
        raise EngineBuildError(f"--model {target.model!r} has head {config.head!r}; serve needs a regression-head model")
    window = int(config.window_samples)
    hop = target.hop_samples if target.hop_samples is not None else int(config.hop_samples)
    if not 1 <= hop <= window:
        raise EngineBuildError(f"--hop {hop} is invalid: expected 1..{window} (the model's window_samples)")
    engine = AotEngine(model, torch.device("cpu"), target.batch_size, window,
                       output_samples=serving_output_samples(model, window, hop))
    engine.model_label = model_label(target.model)
    plans = []
    for bucket in engine.buckets:
        path = engine.package_path(bucket)
        plans.append(PackagePlan(bucket, path, path.exists()))
    return engine, plans


def build_planned(engine, plans: List[PackagePlan], on_start: Callable[[PackagePlan], None],
                  on_wait: Callable[[PackagePlan, int], None],
                  on_done: Callable[[PackagePlan, float, Optional[int]], None]) -> None:
    """Build every planned package that is not cached, or wait where another process builds it;
    the callbacks report progress (``on_done(plan, seconds, pid of the other builder or None)``).
    Raises :class:`~brainformer_rt.serving.engine.EngineError` or what the compiler raises when a
    build fails."""
    import time

    from brainformer_rt.serving.aot_cache import clean_stale

    if plans:
        clean_stale(plans[0].path.parent)
    for plan in plans:
        if plan.path.exists():
            on_done(plan, 0.0, None)
            continue
        on_start(plan)
        started, waited_for = time.monotonic(), []

        def waiting(pid: int, plan: PackagePlan = plan) -> None:
            waited_for.append(pid)
            on_wait(plan, pid)

        engine.build_package(plan.bucket, on_wait=waiting)
        on_done(plan, time.monotonic() - started, waited_for[0] if waited_for else None)
