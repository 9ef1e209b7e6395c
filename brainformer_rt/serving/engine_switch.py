"""The daemon's ``auto`` engine on a CPU: ``eager`` at once, the compiled ``aot`` forward when it is
ready and checked, switched between two calls without a gap in the output.

Compiling costs tens of seconds: nobody should wait that long for the first prediction, nor
serve the slow path for a whole session. So :class:`SwitchingEngine`:

1. ``setup()`` prepares ``eager`` (milliseconds) and starts a preparing thread at the lowest
   priority;
2. that thread takes the ``aot`` packages from the disk cache when they are there, else has
   them compiled by a process of its own at the lowest CPU priority (`aot_build`; compiling in
   this process would hold Python's GIL for seconds at a time and stall serving), then loads them;
3. it checks the compiled forward on live windows: the serving thread hands over copies of the
   next ``CHECK_WINDOWS`` windows it served with their eager predictions, and the compiled
   predictions of the same windows must agree within ``CHECK_ATOL + CHECK_RTOL · max|eager|``;
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
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from brainformer_rt.serving.engine import AotEngine, EagerEngine, Engine, make_engine, resolve_device
from brainformer_rt.serving.logs import log_event

logger = logging.getLogger(__name__)

__all__ = ["SwitchingEngine", "SwitchStatus", "serving_engine"]

#: Live windows the compiled forward must reproduce before it serves.
CHECK_WINDOWS = 8
#: Agreement asked of the compiled predictions (scaled units, where the MEG has unit variance).
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-3
#: A compiling process that takes longer than this is stopped (eager keeps serving).
BUILD_TIMEOUT_S = 900.0
#: How often the preparing thread looks at the compiling process and at a stop request.
POLL_S = 0.1
#: Niceness of the preparing thread and of the compiling process: the lowest priority, so that
#: they run when the server does not. ``BRAINFORMER_AOT_BUILD_NICE`` (0-19) sets another, for a
#: machine whose cores other work keeps busy, where niceness 19 gets next to no time.
DEFAULT_BUILD_NICE = 19


class SwitchFailed(RuntimeError):
    """The compiled forward cannot take over; the message says why."""


@dataclass
class SwitchStatus:
    """Where the move to the compiled forward stands (what ``describe()`` and the metrics show).

    state: ``preparing`` → ``checking`` → ``switched``, or ``failed`` (eager serves on).
    source: ``cache`` (packages found) or ``compiled`` (built in the background), once known.
    prepare_s: engine set-up → compiled forward loaded.
    switched_after_s: engine set-up → first call served by the compiled forward.
    max_abs_diff: largest |compiled − eager| over the checked windows.
    """

    state: str = "preparing"
    target: str = "aot"
    source: Optional[str] = None
    prepare_s: Optional[float] = None
    checked_windows: int = 0
    max_abs_diff: Optional[float] = None
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
        self._build: Optional[subprocess.Popen] = None
        self._live: Optional[_LiveWindows] = None
        self._started: Optional[float] = None

    def setup(self) -> "SwitchingEngine":
        started = time.perf_counter()
        self._started = time.monotonic()
        self.eager.setup()
        self.n_output_channels = self.eager.n_output_channels
        self.input_buffer = self.eager.input_buffer
        self._live = _LiveWindows(CHECK_WINDOWS, self.batch_size, self.input_buffer.shape[1:],
                                  (self.output_samples, self.n_output_channels))
        self._ready = True
        self.setup_s = time.perf_counter() - started
        self._thread = threading.Thread(target=self._prepare_compiled, name="engine-switch", daemon=True)
        self._thread.start()
        return self

    # -- serving thread ------------------------------------------------------------------------------
    def infer(self, windows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        if self._take_over.is_set() and self.active is self.eager:
            self._switch_now()
        result = self.active.infer(windows, out=out)
        if self._live.wanted:
            self._live.offer(windows, result)
        return result

    def _switch_now(self) -> None:
        self.active = self.compiled
        self.switch.state = "switched"
        self.switch.switched_after_s = time.monotonic() - self._started
        log_event(logger, logging.INFO, "engine_switched",
                  "engine auto: now serving with the compiled forward (%s, from %s) after %.1f s; it matched "
                  "eager on %d live windows (max |diff| %.1e)", self.compiled.kind, self.switch.source,
                  self.switch.switched_after_s, self.switch.checked_windows, self.switch.max_abs_diff,
                  engine=self.compiled.kind, source=self.switch.source, after_s=self.switch.switched_after_s,
                  max_abs_diff=self.switch.max_abs_diff)

    # -- preparing thread --------------------------------------------------------------------------
    def _prepare_compiled(self) -> None:
        try:
            _lower_this_thread_priority()
            missing = {b: self.compiled.package_path(b) for b in self.compiled.buckets}
            missing = {b: path for b, path in missing.items() if not path.exists()}
            self.switch.source = "compiled" if missing else "cache"
            if missing:
                self._build_packages(missing)
            if self._stop.is_set():
                return
            self.compiled.setup()  # every package is on disk now: this only loads them
            self.switch.prepare_s = time.monotonic() - self._started
            self.switch.state = "checking"
            self._check_on_live_windows()
        except SwitchFailed as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - whatever torch raises; eager serves on
            self._fail(f"{type(error).__name__}: {error}")
        else:
            if not self._stop.is_set():
                self._take_over.set()

    def _build_packages(self, packages: Dict[int, Path]) -> None:
        """Have `aot_build` compile ``packages`` in a process of its own, at the lowest priority."""
        config = getattr(self.model, "config", None)
        if not hasattr(config, "save_pretrained"):
            raise SwitchFailed(f"{type(self.model).__name__} cannot be handed to a compiling process "
                               "(it has no model config to save)")
        cache = next(iter(packages.values())).parent
        log_event(logger, logging.INFO, "engine_compiling",
                  "engine auto: serving with eager while the compiled forward is built in the background "
                  "(first start with this model; later starts load it from %s)", cache, cache=str(cache))
        with tempfile.TemporaryDirectory(prefix="brainformer-aot-") as work:
            # What `load_model` reads back: the config and the weights, as a model directory.
            config.save_pretrained(work)
            save_file({name: tensor.detach().contiguous() for name, tensor in self.model.state_dict().items()},
                      str(Path(work) / "model.safetensors"))
            command = [sys.executable, "-m", "brainformer_rt.serving.aot_build", "--model", work,
                       "--window", str(self.window_samples), "--output-samples", str(self.output_samples),
                       "--threads", str(torch.get_num_threads())]
            command += [f"--package={bucket}={path}" for bucket, path in sorted(packages.items())]
            # One compile worker: the build must not take both cores from the server.
            env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
            with open(Path(work) / "build.log", "w+b") as log:
                self._build = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
                _lower_priority(self._build.pid)
                returncode = self._wait_for_build()
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines()
        if returncode is None:
            raise SwitchFailed("stopped while compiling")
        if returncode != 0:
            raise SwitchFailed(f"the compiling process exited with {returncode}"
                               + (f": {lines[-1]}" if lines else ""))

    def _wait_for_build(self) -> Optional[int]:
        """The build's exit code; None when stopped first (the build is killed)."""
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while self._build.poll() is None:
            if self._stop.is_set() or time.monotonic() > deadline:
                self._build.kill()
                self._build.wait()
                if not self._stop.is_set():
                    raise SwitchFailed(f"compiling took more than {BUILD_TIMEOUT_S:.0f} s")
                return None
            time.sleep(POLL_S)
        return self._build.returncode

    def _check_on_live_windows(self) -> None:
        """The compiled forward on copies of live windows must give eager's predictions."""
        live = self._live
        live.wanted = True
        if not live.wait_full(self._stop):
            return
        largest = 0.0
        for slot in range(len(live.rows)):
            k = int(live.rows[slot])
            eager = live.predictions[slot, :k]
            compiled = self.compiled.infer(live.windows[slot, :k])
            diff = float(np.max(np.abs(compiled - eager)))
            largest = max(largest, diff)
            if not diff <= CHECK_ATOL + CHECK_RTOL * float(np.max(np.abs(eager))):
                raise SwitchFailed(f"the compiled forward differs from eager on a live window by {diff:.3g}")
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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.compiled.close()
        self.eager.close()
        super().close()


def build_niceness() -> int:
    """The niceness of the build (``BRAINFORMER_AOT_BUILD_NICE``, default :data:`DEFAULT_BUILD_NICE`)."""
    value = os.environ.get("BRAINFORMER_AOT_BUILD_NICE", str(DEFAULT_BUILD_NICE))
    if not (value.isdigit() and 0 <= int(value) <= 19):
        raise SwitchFailed(f"BRAINFORMER_AOT_BUILD_NICE must be an integer from 0 to 19, got {value!r}")
    return int(value)


def _lower_priority(pid: int) -> None:
    """The build's niceness for ``pid`` (a process, or on Linux a thread): it runs when the server does not."""
    niceness = build_niceness()
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except (AttributeError, OSError):  # not permitted, or not on this platform: it still works
        pass


def _lower_this_thread_priority() -> None:
    if sys.platform.startswith("linux"):
        _lower_priority(threading.get_native_id())


def serving_engine(model: torch.nn.Module, kind: str, device: str, batch_size: int, window_samples: int,
                   output_samples: Optional[int] = None) -> Engine:
    """The daemon's engine: :class:`SwitchingEngine` for ``auto`` on a CPU, else
    :func:`~brainformer_rt.serving.engine.make_engine` (``auto`` on CUDA: ``cuda-graph``)."""
    torch_device = resolve_device(device)
    if kind == "auto" and torch_device.type == "cpu":
        return SwitchingEngine(model, torch_device, batch_size, window_samples, output_samples=output_samples)
    return make_engine(model, kind, torch_device, batch_size, window_samples, output_samples=output_samples)
