"""The ``aot`` engine's packages, compiled in a process of its own that outlives the daemon.

The ``auto`` engine starts this while the daemon serves with ``eager`` (`engine_switch`):
compiling inside the daemon would hold Python's GIL for seconds at a time and stall serving,
and a build killed with the daemon would be lost (a first run shorter than the build would
never leave a package behind). So :func:`start_build` starts it detached (a session of its
own, not stopped with the daemon, nobody waits for it), at the lowest CPU priority and, on a
machine of two cores or fewer, on the core the server does not need most (:func:`placement`).

    python -m brainformer_rt.serving.aot_build --model DIR --window 128 --output-samples 32 \\
        --threads 1 --package 1=CACHE/KEY.pt2 [--package 2=...] [--lock 1=FD ...] \\
        [--model-label default] [--remove-model] [--nice 19] [--cpus 1]

The daemon names each package's path: the cache key is computed there, from the model it
serves, so that the next start finds the package under the same key. The daemon holds the
key's lock (`aot_cache.PackageLock`) and hands it over as descriptor ``FD``: one build per key,
whoever else starts meanwhile waits for this one. This process loads the same weights (``DIR``
holds what the daemon saved of its model, removed here once read), writes the packages, and
removes its temporary files and its locks on every way out: SIGTERM, SIGINT and SIGHUP end it
through the same clean-up, and a build that runs past ``BUILD_TIMEOUT_S`` stops itself. A kill
it cannot catch leaves files whose lock is free: the next start removes them
(`aot_cache.clean_stale`).
Exit 0 when every package was written; 1 with one line on stderr (its log) otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from brainformer_rt.serving.aot_cache import (BUILD_TIMEOUT_S, TMP_MARK, PackageLock, ensure_cache_dir, lock_path,
                                              log_path)

__all__ = ["start_build", "placement", "build_niceness", "BuildPlacement", "NICE_VARIABLE", "DEFAULT_BUILD_NICE"]

#: Sets the niceness of the background build and of the daemon's thread that waits for it (0-19).
NICE_VARIABLE = "BRAINFORMER_AOT_BUILD_NICE"
#: The lowest priority: the build runs when the server does not. On a machine whose cores other
#: work keeps busy a build at 19 gets next to no time; ``NICE_VARIABLE`` sets a lower one there.
DEFAULT_BUILD_NICE = 19


class BuildStopped(BaseException):
    """A signal or the time limit ended the build (a BaseException: nothing may swallow it)."""


class BuildPlacement:
    """The builder's share of the machine: its niceness, the CPUs it may use (None: all), its
    compile jobs, and the CPUs the serving thread keeps to itself while it builds (None: not
    pinned)."""

    def __init__(self, nice: int, cpus: Optional[List[int]], compile_threads: int,
                 serving_cpus: Optional[List[int]] = None) -> None:
        self.nice = nice
        self.cpus = cpus
        self.compile_threads = compile_threads
        self.serving_cpus = serving_cpus

    def __repr__(self) -> str:
        return (f"BuildPlacement(nice={self.nice}, cpus={self.cpus}, compile_threads={self.compile_threads}, "
                f"serving_cpus={self.serving_cpus})")


def build_niceness() -> int:
    """The niceness of the background build: ``$BRAINFORMER_AOT_BUILD_NICE``, else
    :data:`DEFAULT_BUILD_NICE`. Raises ``ValueError`` naming the variable for anything but 0-19."""
    value = os.environ.get(NICE_VARIABLE, str(DEFAULT_BUILD_NICE))
    if not (value.isdigit() and 0 <= int(value) <= 19):
        raise ValueError(f"{NICE_VARIABLE} must be an integer from 0 to 19, got {value!r}")
    return int(value)


def placement(available: Optional[Sequence[int]] = None) -> BuildPlacement:
    """The builder's share of the machine: :func:`build_niceness` and one compile job always; on
    two cores, the builder on the last of the CPUs the server may use and the serving thread on
    the other while it builds, so that the compiler never takes the serving thread's core
    (measurements in docs/engines.md). ``available``: those CPUs (default: this process's)."""
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) != 2:  # one core: nothing to share out; more: the builder's one job leaves enough
        return BuildPlacement(build_niceness(), None, 1)
    return BuildPlacement(build_niceness(), cpus[-1:], 1, serving_cpus=cpus[:-1])


def start_build(model, packages: Dict[int, Path], locks: Dict[int, PackageLock], window_samples: int,
                output_samples: int, threads: int, model_label: str) -> subprocess.Popen:
    """Start the detached builder of ``packages`` (bucket → path) and hand it ``locks`` (bucket →
    the key's lock, held by the caller; closed here, so the builder holds them alone).

    Its output goes to the first package's ``KEY.log`` (kept when the build fails). Raises
    ``ValueError`` for a model that cannot be handed over (it has no config to save)."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not hasattr(config, "save_pretrained"):
        raise ValueError(f"{type(model).__name__} cannot be handed to a compiling process (it has no model config "
                         "to save)")
    first = min(packages)
    cache = ensure_cache_dir(packages[first].parent)
    key = packages[first].stem
    work = Path(tempfile.mkdtemp(prefix=f"{key}{TMP_MARK}model-", dir=cache))
    try:
        # What `load_model` reads back: the config and the weights, as a model directory.
        config.save_pretrained(work)
        save_file({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()},
                  str(work / "model.safetensors"))
        where = placement()
        command = [sys.executable, "-m", "brainformer_rt.serving.aot_build", "--model", str(work), "--remove-model",
                   "--model-label", model_label, "--window", str(window_samples), "--output-samples",
                   str(output_samples), "--threads", str(threads), "--nice", str(where.nice)]
        if where.cpus is not None:
            command += ["--cpus", ",".join(str(cpu) for cpu in where.cpus)]
        command += [f"--package={bucket}={path}" for bucket, path in sorted(packages.items())]
        command += [f"--lock={bucket}={lock.fd}" for bucket, lock in sorted(locks.items())]
        env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(where.compile_threads)}
        with open(log_path(cache, key), "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                       pass_fds=[lock.fd for lock in locks.values()], start_new_session=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for lock in locks.values():
        lock.write_owner(process.pid)
        lock.close()  # the builder holds it now
    return process


def _packages(values: List[str], option: str) -> Dict[int, str]:
    parsed = {}
    for value in values:
        bucket, sep, rest = value.partition("=")
        if not sep or not bucket.isdigit() or not rest:
            raise SystemExit(f"aot_build: {option} must be BUCKET=VALUE, got {value!r}")
        parsed[int(bucket)] = rest
    return parsed


def _remove_handed_model(args: argparse.Namespace) -> None:
    """The model folder the daemon wrote for this build (only such a folder: ``KEY.tmp-model-*``)."""
    if args.remove_model and TMP_MARK in Path(args.model).name:
        shutil.rmtree(args.model, ignore_errors=True)


def _stop_on_signal(signum: int, frame) -> None:
    for other in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(other, signal.SIG_IGN)  # the clean-up that follows runs to its end
    raise BuildStopped(f"stopped by {signal.Signals(signum).name}")


def _take_share(nice: int, cpus: Optional[str]) -> None:
    """This process's (and its compilers') share of the machine, taken before anything heavy."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except (AttributeError, OSError):  # not permitted, or not on this platform: it still works
        pass
    # Linux's autogroups share the CPU between sessions first and by niceness only within one: a
    # build in a session of its own would get as much as the whole daemon, whatever its own
    # niceness. Its session's group gets the niceness too (only when this process leads the
    # session, as a detached build does: never the group of the shell that runs it by hand).
    if os.getsid(0) == os.getpid():
        try:
            Path("/proc/self/autogroup").write_text(str(nice))
        except OSError:  # no autogroups (another kernel, or the CPU controller of a cgroup decides)
            pass
    if cpus:
        try:
            os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
        except (AttributeError, OSError, ValueError):
            pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainformer_rt.serving.aot_build", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--remove-model", action="store_true", help="remove the model directory once read")
    parser.add_argument("--model-label", default=None, help="how the user names the model (for engine status)")
    parser.add_argument("--window", type=int, required=True, help="samples per window")
    parser.add_argument("--output-samples", type=int, required=True, help="newest samples predicted per window")
    parser.add_argument("--threads", type=int, required=True, help="torch threads of the serving process")
    parser.add_argument("--package", action="append", required=True, metavar="BUCKET=PATH")
    parser.add_argument("--lock", action="append", default=[], metavar="BUCKET=FD",
                        help="the held lock of a package's key, as an inherited descriptor")
    parser.add_argument("--nice", type=int, default=DEFAULT_BUILD_NICE, help="niceness of the build")
    parser.add_argument("--cpus", default=None, help="comma-separated CPUs the build may use (default: all)")
    args = parser.parse_args(argv)
    packages = {bucket: Path(path) for bucket, path in _packages(args.package, "--package").items()}
    _take_share(args.nice, args.cpus)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, _stop_on_signal)
    signal.alarm(int(BUILD_TIMEOUT_S))
    locks: Dict[int, PackageLock] = {}
    built: List[int] = []
    try:
        for bucket, fd in _packages(args.lock, "--lock").items():
            locks[bucket] = PackageLock.adopt(lock_path(packages[bucket].parent, packages[bucket].stem), int(fd))
        import torch

        from brainformer.model_dir import load_model
        from brainformer_rt.serving.engine import AotEngine

        # The kernels are compiled for the serving process's thread count (part of the cache key).
        torch.set_num_threads(args.threads)
        model = load_model(args.model, device="cpu")
        _remove_handed_model(args)
        engine = AotEngine(model, torch.device("cpu"), max(packages), args.window,
                           buckets=sorted(packages), output_samples=args.output_samples)
        for bucket, path in sorted(packages.items()):
            if engine.package_path(bucket) != path:
                raise ValueError(f"the package of bucket {bucket} has the key {engine.package_path(bucket).stem} "
                                 f"here, not {path.stem}: the model or the build settings differ from the server's")
            engine.build_package(bucket, lock=locks.pop(bucket, None), model_label=args.model_label)
            built.append(bucket)
    except BaseException as error:  # noqa: BLE001 - one line for whoever waits for this build
        line = f"aot_build: {type(error).__name__}: {error}"
        print(line, file=sys.stderr, flush=True)
        for bucket, path in packages.items():
            if bucket not in built and bucket != min(packages):  # the first one's log is this output
                log_path(path.parent, path.stem).write_text(line + "\n")
        return 1
    finally:
        signal.alarm(0)
        for lock in locks.values():
            lock.release()
        _remove_handed_model(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
