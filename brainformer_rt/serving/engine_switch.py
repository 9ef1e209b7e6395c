"""The daemon's ``auto`` engine on a CPU: ``eager`` at once, the compiled ``aot`` forward when it is
ready and checked, switched between two calls without a gap in the output.

Compiling costs tens of seconds: nobody should wait that long for the first prediction, nor
serve the slow path for a whole session. So :class:`SwitchingEngine`:

1. ``setup()`` prepares ``eager`` (milliseconds) and removes what killed builds left in the
   cache (`aot_cache.clean_stale`). When every ``aot`` package is in the disk cache, it loads
   them there and then (well under a second), checks them against eager on ``CHECK_WINDOWS``
   probe windows, and the compiled forward serves from the first call on. Otherwise it starts
   a preparing thread at the lowest priority, and eager serves meanwhile;
2. that thread has the missing packages compiled by a process of its own (`aot_build`;
   compiling in this process would hold Python's GIL for seconds at a time and stall serving),
   detached: it finishes into the cache even when this daemon stops first, so the next start
   finds them. While another process builds the same package (another daemon, `engine
   build`), the thread waits for that build instead of starting another (`aot_cache`'s lock).
   On a 2-core machine the build keeps to one core and the serving thread to the other until
   the packages are there (`aot_build.placement`);
3. once the packages are there it loads them and checks the compiled forward on live windows:
   the serving thread hands over copies of the next ``CHECK_WINDOWS`` windows it served with
   their eager predictions, and the compiled predictions of the same windows must agree within
   ``CHECK_ATOL + CHECK_RTOL · max|eager|``;
4. the serving thread swaps the forward at its next call (event ``engine_switched``): no call
   is skipped or served twice.

A build, load or check that fails leaves ``eager`` serving; the reason is logged
(``engine_switch_failed``) and kept in :attr:`SwitchingEngine.switch`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from brainformer_rt.serving.aot_build import build_niceness, placement, start_build
from brainformer_rt.serving.aot_cache import (BUILD_TIMEOUT_S, PackageLock, aot_cache_dir, clean_stale, lock_holder,
                                              log_path, read_last_line)
from brainformer_rt.serving.engine import AotEngine, EagerEngine, Engine, make_engine, resolve_device
from brainformer_rt.serving.logs import log_event

logger = logging.getLogger(__name__)

__all__ = ["SwitchingEngine", "SwitchStatus", "serving_engine", "serving_output_samples", "model_label"]

#: Live windows the compiled forward must reproduce before it serves.
CHECK_WINDOWS = 8
#: Agreement asked of the compiled predictions (scaled units, where the MEG has unit variance).
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-3
#: How often the preparing thread looks at the build and at a stop request.
POLL_S = 0.1
#: Seed of the probe windows that cached packages are checked on before they serve.
PROBE_SEED = 0


class SwitchFailed(RuntimeError):
    """The compiled forward cannot take over; the message says why."""


class _StoppedFirst(Exception):
    """The daemon stopped before the packages were built (the build goes on in the background)."""


@dataclass
class SwitchStatus:
    """Where the move to the compiled forward stands (what ``describe()`` and the metrics show).

    state: ``preparing`` → ``checking`` → ``switched``, or ``failed`` (eager serves on).
    source: ``cache`` (packages found at set-up) or ``compiled`` (built in the background), once known.
    build: for ``compiled``: ``started`` (this daemon started the build) or ``joined`` (it waited
        for a build another process had started).
    builder_pid: the process that built (or builds) the packages.
    prepare_s: engine set-up → compiled forward loaded.
    checked_on: ``probe`` windows (cached packages, checked in set-up) or ``live`` windows.
    eager_calls: calls served by eager before the switch (0: compiled from the first window).
    switched_after_s: engine set-up → first call served by the compiled forward.
    max_abs_diff: largest |compiled − eager| over the checked windows.
    """

    state: str = "preparing"
    target: str = "aot"
    source: Optional[str] = None
    build: Optional[str] = None
    builder_pid: Optional[int] = None
    prepare_s: Optional[float] = None
    checked_on: Optional[str] = None
    checked_windows: int = 0
    max_abs_diff: Optional[float] = None
    eager_calls: int = 0
    switched_after_s: Optional[float] = None
    reason: Optional[str] = None

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


class _LiveWindows:
    """Copies of the windows the serving thread served and of their eager predictions, for the
    check; preallocated, so handing one over costs two copies and no allocation."""

    def __init__(self, n: int, batch_size: int, window_shape: Sequence[int], output_shape: Sequence[int]) -> None:
        self.windows = np.zeros((n, batch_size, *window_shape), dtype=np.float32)
        self.predictions = np.zeros((n, batch_size, *output_shape), dtype=np.float32)
        self.rows = np.zeros(n, dtype=np.int64)
        self.filled = 0
        self.wanted = False  # set by the preparing thread once the compiled forward is loaded
        self._full = threading.Event()

    def offer(self, windows: np.ndarray, predictions: np.ndarray) -> None:
        slot, k = self.filled, len(windows)
        self.windows[slot, :k] = windows
        self.predictions[slot, :k] = predictions
        self.rows[slot] = k
        self.filled += 1
        if self.filled == len(self.rows):
            self.wanted = False
            self._full.set()

    def wait_full(self, stop: threading.Event) -> bool:
        while not self._full.wait(POLL_S):
            if stop.is_set():
                return False
        return True


class SwitchingEngine(Engine):
    """``eager`` now, ``aot`` once prepared and checked (see the module docstring); CPU only.

    Serves through whichever engine is active; :attr:`input_buffer` is eager's, so the windows
    land in place while eager serves (the compiled engine copies them into its own buffer).
    """

    kind = "auto"

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int, window_samples: int,
                 n_input_channels: Optional[int] = None, buckets: Optional[Sequence[int]] = None,
                 output_samples: Optional[int] = None) -> None:
        super().__init__(model, device, batch_size, window_samples, n_input_channels, buckets, output_samples)
        shape = dict(n_input_channels=self.n_input_channels, buckets=self.buckets, output_samples=self.output_samples)
        self.eager = EagerEngine(model, device, batch_size, window_samples, **shape)
        self.compiled = AotEngine(model, device, batch_size, window_samples, **shape)
        self.active: Engine = self.eager
        self.switch = SwitchStatus()
        self._take_over = threading.Event()  # set when the compiled forward passed its check
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._build: Optional[subprocess.Popen] = None  # the build this daemon started (detached)
        self._live: Optional[_LiveWindows] = None
        self._started: Optional[float] = None
        # The serving thread's CPUs while a build runs (see _build_packages), applied by it at
        # its next call: a set to keep to, or the set it had before; None: nothing to change.
        self._serving_cpus: Optional[set] = None
        self._unpinned_cpus: Optional[set] = None

    def setup(self) -> "SwitchingEngine":
        started = time.perf_counter()
        self._started = time.monotonic()
        self.eager.setup()
        self.n_output_channels = self.eager.n_output_channels
        self.input_buffer = self.eager.input_buffer
        self._live = _LiveWindows(CHECK_WINDOWS, self.batch_size, self.input_buffer.shape[1:],
                                  (self.output_samples, self.n_output_channels))
        self._ready = True
        self.compiled.model_label = self.model_label
        if not self._take_cached_packages():
            self._thread = threading.Thread(target=self._prepare_compiled, name="engine-switch", daemon=True)
            self._thread.start()
        self.setup_s = time.perf_counter() - started
        return self

    # -- serving thread ------------------------------------------------------------------------------
    def infer(self, windows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        if self._serving_cpus is not None:
            self._move_serving_thread()
        if self._take_over.is_set() and self.active is self.eager:
            self._switch_now()
        result = self.active.infer(windows, out=out)
        if self.active is self.eager:
            self.switch.eager_calls += 1
        if self._live.wanted:
            self._live.offer(windows, result)
        return result

    def _move_serving_thread(self) -> None:
        """This thread (the one that calls ``infer``) onto the CPUs asked for."""
        cpus, self._serving_cpus = self._serving_cpus, None
        try:
            os.sched_setaffinity(0, cpus)  # pid 0: the calling thread only
        except OSError as error:
            logger.debug("engine auto: the serving thread stays where it is (%s)", error)

    def _switch_now(self) -> None:
        self.active = self.compiled
        self.switch.state = "switched"
        self.switch.switched_after_s = time.monotonic() - self._started
        log_event(logger, logging.INFO, "engine_switched",
                  "engine auto: now serving with the compiled forward (%s, from %s) after %.1f s and %d eager "
                  "calls; it matched eager on %d %s windows (max |diff| %.1e)", self.compiled.kind, self.switch.source,
                  self.switch.switched_after_s, self.switch.eager_calls, self.switch.checked_windows,
                  self.switch.checked_on, self.switch.max_abs_diff,
                  engine=self.compiled.kind, source=self.switch.source, after_s=self.switch.switched_after_s,
                  eager_calls=self.switch.eager_calls, checked_on=self.switch.checked_on,
                  max_abs_diff=self.switch.max_abs_diff)

    # -- set-up: packages from the cache -------------------------------------------------------------
    def _take_cached_packages(self) -> bool:
        """When every package is cached: load and check them now, so that the compiled forward
        serves the first window (False: some are missing, the preparing thread gets them)."""
        try:
            removed = clean_stale(aot_cache_dir())
            if removed:
                logger.info("engine auto: removed %d files that killed builds left in %s", len(removed),
                            aot_cache_dir())
            if not all(self.compiled.package_path(bucket).exists() for bucket in self.compiled.buckets):
                return False
            self.switch.source = "cache"
            self.compiled.setup()  # every package is on disk: this only loads them
            self.switch.prepare_s = time.monotonic() - self._started
            self.switch.state = "checking"
            self._check_on_probe_windows()
        except SwitchFailed as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - whatever torch raises; eager serves on
            self._fail(f"{type(error).__name__}: {error}")
        else:
            self._take_over.set()
        return True

    def _check_on_probe_windows(self) -> None:
        """The compiled forward on ``CHECK_WINDOWS`` windows of unit-variance noise (the scaled
        units of the model's input) must give eager's predictions, in every batch bucket."""
        rng = np.random.default_rng(PROBE_SEED)
        largest = 0.0
        for index in range(CHECK_WINDOWS):
            bucket = self.compiled.buckets[index % len(self.compiled.buckets)]
            windows = rng.standard_normal((bucket, *self.input_buffer.shape[1:])).astype(np.float32)
            largest = max(largest, self._compare(windows, self.eager.infer(windows)))
        self.switch.checked_on = "probe"
        self.switch.checked_windows = CHECK_WINDOWS
        self.switch.max_abs_diff = largest

    def _compare(self, windows: np.ndarray, eager: np.ndarray) -> float:
        compiled = self.compiled.infer(windows)
        diff = float(np.max(np.abs(compiled - eager)))
        if not diff <= CHECK_ATOL + CHECK_RTOL * float(np.max(np.abs(eager))):
            raise SwitchFailed(f"the compiled forward differs from eager on a checked window by {diff:.3g}")
        return diff

    # -- preparing thread --------------------------------------------------------------------------
    def _prepare_compiled(self) -> None:
        try:
            _lower_this_thread_priority()
            self.switch.source = "compiled"
            self._build_packages({b: self.compiled.package_path(b) for b in self.compiled.buckets})
            if self._stop.is_set():
                return
            self.compiled.setup()  # every package is on disk now: this only loads them
            self.switch.prepare_s = time.monotonic() - self._started
            self.switch.state = "checking"
            self._check_on_live_windows()
        except _StoppedFirst as stopped:
            self.switch.reason = str(stopped)  # not a failure: the next start finds the packages
        except SwitchFailed as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - whatever torch raises; eager serves on
            self._fail(f"{type(error).__name__}: {error}")
        else:
            if not self._stop.is_set():
                self._take_over.set()

    def _build_packages(self, packages: Dict[int, Path]) -> None:
        """Wait until every package of ``packages`` is in the cache: built by a detached process
        this daemon starts, or by one that was already building it (one build per package).
        Meanwhile, on two cores, the serving thread keeps the core the build does not use."""
        if not hasattr(getattr(self.model, "config", None), "save_pretrained"):
            raise SwitchFailed(f"{type(self.model).__name__} cannot be handed to a compiling process "
                               "(it has no model config to save)")
        serving_cpus = placement().serving_cpus
        if serving_cpus is not None:
            self._unpinned_cpus = os.sched_getaffinity(0)
            self._serving_cpus = set(serving_cpus)
        try:
            self._wait_for_packages(packages)
        finally:
            if serving_cpus is not None:
                self._serving_cpus = self._unpinned_cpus

    def _wait_for_packages(self, packages: Dict[int, Path]) -> None:
        cache = next(iter(packages.values())).parent
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            missing = {b: path for b, path in packages.items() if not path.exists()}
            if not missing:
                return
            locks = self._locks_of_unbuilt(missing)
            if locks and self._build is not None:  # ours ended without them
                for lock in locks.values():
                    lock.release()
                raise SwitchFailed(self._failed_build_reason(cache, missing))
            if locks:
                self._start_build(missing, locks)
            elif self.switch.build is None:
                pid = next((p for path in missing.values() if (p := lock_holder(cache, path.stem))), None)
                self.switch.build, self.switch.builder_pid = "joined", pid
                log_event(logger, logging.INFO, "engine_build_joined",
                          "engine auto: serving with eager while process %s builds the compiled forward (started "
                          "before this daemon); waiting for it instead of building it twice", pid or "?",
                          cache=str(cache), builder_pid=pid)
            # Until each package is there, or nobody builds it any more (then: once more round).
            while any(not path.exists() and lock_holder(cache, path.stem) is not None for path in missing.values()):
                if self._stop.is_set():
                    raise _StoppedFirst("stopped before the compiled forward was built (its build goes on)")
                if time.monotonic() > deadline:
                    raise SwitchFailed(f"the compiled forward was not built within {BUILD_TIMEOUT_S:.0f} s")
                time.sleep(POLL_S)

    def _locks_of_unbuilt(self, missing: Dict[int, Path]) -> Dict[int, PackageLock]:
        """The locks of the missing packages that nobody builds now."""
        locks = {}
        for bucket, path in missing.items():
            lock = PackageLock.try_acquire(path.parent, path.stem)
            if lock is not None and path.exists():  # finished a moment ago
                lock.release()
            elif lock is not None:
                locks[bucket] = lock
        return locks

    def _start_build(self, packages: Dict[int, Path], locks: Dict[int, PackageLock]) -> None:
        cache = next(iter(packages.values())).parent
        try:
            self._build = start_build(self.model, {b: packages[b] for b in locks}, locks, self.window_samples,
                                      self.output_samples, torch.get_num_threads(),
                                      self.model_label or type(self.model).__name__)
        except BaseException as error:
            for lock in locks.values():
                lock.release()
            if isinstance(error, Exception):
                raise SwitchFailed(f"the compiling process did not start: {type(error).__name__}: {error}") from None
            raise
        self.switch.build, self.switch.builder_pid = "started", self._build.pid
        log_event(logger, logging.INFO, "engine_compiling",
                  "engine auto: serving with eager while process %d builds the compiled forward in the background "
                  "(first start with this model; it finishes into %s even if this daemon stops first, and later "
                  "starts load it from there)", self._build.pid, cache, cache=str(cache), builder_pid=self._build.pid)

    def _failed_build_reason(self, cache: Path, missing: Dict[int, Path]) -> str:
        returncode = self._build.poll()
        line = next((line for path in missing.values() if (line := read_last_line(log_path(cache, path.stem)))), None)
        return (f"the compiling process exited with {returncode if returncode is not None else 'an error'}"
                + (f": {line}" if line else ""))

    def _check_on_live_windows(self) -> None:
        """The compiled forward on copies of live windows must give eager's predictions."""
        live = self._live
        live.wanted = True
        if not live.wait_full(self._stop):
            return
        largest = 0.0
        for slot in range(len(live.rows)):
            k = int(live.rows[slot])
            largest = max(largest, self._compare(live.windows[slot, :k], live.predictions[slot, :k]))
        self.switch.checked_on = "live"
        self.switch.checked_windows = len(live.rows)
        self.switch.max_abs_diff = largest

    def _fail(self, reason: str) -> None:
        self.switch.state = "failed"
        self.switch.reason = reason
        if self._stop.is_set():
            return
        log_event(logger, logging.WARNING, "engine_switch_failed",
                  "engine auto: the compiled forward cannot take over (%s); serving on with eager", reason,
                  reason=reason)

    # -- the rest of the Engine interface ------------------------------------------------------------
    def describe(self) -> Dict[str, object]:
        return {**self.eager.describe(), "kind": self.kind, "active": self.active.kind,
                "switch": self.switch.to_dict()}

    def close(self) -> None:
        """Stops the preparing thread; a build this daemon started goes on into the cache."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._unpinned_cpus is not None:  # the serving thread closes the engine: back where it was
            self._serving_cpus = self._unpinned_cpus
            self._move_serving_thread()
        if self._build is not None and self._build.poll() is None:
            log_event(logger, logging.INFO, "engine_build_continues",
                      "engine auto: process %d goes on building the compiled forward into %s; the next start "
                      "with this model serves with it from its first window", self._build.pid, aot_cache_dir(),
                      builder_pid=self._build.pid, cache=str(aot_cache_dir()))
        self.compiled.close()
        self.eager.close()
        super().close()


def _lower_this_thread_priority() -> None:
    """The preparing thread at the build's niceness (`aot_build.build_niceness`, which the
    builder gets too): it runs when the server does not. A bad setting fails the switch before
    any build starts, saying which variable."""
    try:
        niceness = build_niceness()
    except ValueError as error:
        raise SwitchFailed(str(error)) from None
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (AttributeError, OSError):  # not permitted, or not on this platform: it still works
            pass


def serving_engine(model: torch.nn.Module, kind: str, device: str, batch_size: int, window_samples: int,
                   output_samples: Optional[int] = None, model_label: Optional[str] = None) -> Engine:
    """The daemon's engine: :class:`SwitchingEngine` for ``auto`` on a CPU, else
    :func:`~brainformer_rt.serving.engine.make_engine` (``auto`` on CUDA: ``cuda-graph``).
    ``model_label``: how the user named the model (recorded beside compiled packages)."""
    torch_device = resolve_device(device)
    if kind == "auto" and torch_device.type == "cpu":
        engine = SwitchingEngine(model, torch_device, batch_size, window_samples, output_samples=output_samples)
    else:
        engine = make_engine(model, kind, torch_device, batch_size, window_samples, output_samples=output_samples)
    engine.model_label = model_label
    return engine


def model_label(model: str) -> str:
    """How a compiled package's record names the model: a bundled model's name, else its
    directory as an absolute path."""
    from brainformer.paths import BUNDLED_MODELS

    return model if model in BUNDLED_MODELS else str(Path(model).resolve())


def serving_output_samples(model: torch.nn.Module, window_samples: int, hop_samples: int) -> int:
    """Newest samples the engine predicts per window: two hops (so a window merged with a late one
    still publishes every sample), or the whole window for a model whose forward has no
    ``last_samples``. A window publishes only its newest hop; the decoder work for older segments
    and the skip path's rows for older samples would be thrown away."""
    import inspect

    if "last_samples" not in inspect.signature(model.forward).parameters:
        return window_samples
    return min(window_samples, 2 * hop_samples)
