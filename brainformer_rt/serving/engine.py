"""Inference engines: ``eager``, ``compile`` (``torch.compile``), ``aot`` (AOTInductor) and ``cuda-graph``.

Every engine follows the same shape (after gpt-fast's ``generate.py``):

- ``setup()`` allocates fixed-shape input/output buffers once, moves the model to the device,
  runs the warm-up (and compiles or captures), so that nothing of that lands in the statistics;
- ``infer(windows (k, T, n_eeg) float32, out=None) -> (k, S, n_out) float32`` copies the windows
  into the static input buffer, runs the per-window step and copies the predictions out — the
  result is a host array the caller may keep (or ``out`` when given, to avoid an allocation).

Output span: ``S = output_samples`` newest samples of each window (default: the whole window,
``S = T``). A server publishes only the newest hop of each window, so it asks for a short span and
the model skips the decoder work of older segments (``BrainformerForMEGPrediction``'s
``last_samples``); the predictions equal the whole-window ones' ``[:, -S:]``.

Batching: an engine is built for ``batch_size`` windows; a call may pass any ``k <= batch_size``.
Engines with static shapes (``compile``, ``aot``, ``cuda-graph``) are prepared for a few bucket sizes
(1, 2, 4, … and ``batch_size``) and pad ``k`` up to the smallest bucket that fits: the padding
rows hold whatever the input buffer held before and their outputs are ignored. ``eager`` runs
exactly ``k`` windows.

The caller can skip one copy by writing the windows straight into :attr:`Engine.input_buffer`
and passing (a leading slice of) it to ``infer``.

The model is any ``torch.nn.Module`` whose ``forward(input_values (B, T, n_eeg))`` returns a
tensor ``(B, T, n_out)`` or an output object with a ``predictions`` tensor of that shape
(``BrainformerForMEGPrediction``); for ``S < T`` it must also take ``last_samples=S`` and return
``(B, S, n_out)``. Inputs and outputs are in the model's scaled units.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from brainformer_rt.serving.aot_cache import (PackageLock, acquire_unless_ready, aot_cache_dir, ensure_cache_dir,
                                            log_path, sidecar_path)

logger = logging.getLogger(__name__)

__all__ = ["ENGINE_KINDS", "EngineError", "Engine", "EagerEngine", "CompileEngine", "AotEngine", "CudaGraphEngine",
           "make_engine", "resolve_device", "resolve_kind", "batch_buckets", "aot_cache_dir", "aot_inductor_configs"]

ENGINE_KINDS = ("auto", "eager", "compile", "aot", "cuda-graph")
DEVICES = ("auto", "cpu", "cuda")

#: Forward passes run in ``setup()`` per bucket size before anything is measured or captured.
WARMUP_ITERATIONS = 3


class EngineError(ValueError):
    """An engine cannot be built as asked (unknown kind, CUDA missing, unusable model output)."""


def resolve_device(device: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA → :class:`EngineError`."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EngineError(f"device {name!r} asked for, but CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use --device cpu")
        return torch.device(name)
    raise EngineError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")


def resolve_kind(kind: str, device: torch.device) -> str:
    """``auto`` → ``cuda-graph`` on CUDA, ``eager`` on CPU; ``cuda-graph`` on a CPU → :class:`EngineError`."""
    if kind not in ENGINE_KINDS:
        raise EngineError(f"engine must be one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "cuda-graph" if device.type == "cuda" else "eager"
    if kind == "aot" and device.type != "cpu":
        raise EngineError("engine 'aot' runs on the CPU; on CUDA use --engine cuda-graph")
    if kind == "cuda-graph" and device.type != "cuda":
        if not torch.cuda.is_available():
            raise EngineError("engine 'cuda-graph' needs CUDA, but CUDA is not available on this machine; "
                              "use --engine eager or compile")
        raise EngineError("engine 'cuda-graph' needs --device cuda")
    return kind


def batch_buckets(batch_size: int) -> List[int]:
    """Static batch sizes prepared for ``batch_size``: powers of two below it, then itself."""
    if batch_size < 1:
        raise EngineError(f"batch_size must be >= 1, got {batch_size}")
    buckets, size = [], 1
    while size < batch_size:
        buckets.append(size)
        size *= 2
    buckets.append(batch_size)
    return buckets


def _predictions(model: torch.nn.Module, windows: torch.Tensor, last_samples: Optional[int] = None) -> torch.Tensor:
    """``(B, T, n_eeg)`` → ``(B, S, n_out)``: the model's prediction tensor (``S = last_samples or T``)."""
    output = model(windows) if last_samples is None else model(windows, last_samples=last_samples)
    if isinstance(output, torch.Tensor):
        return output
    predictions = getattr(output, "predictions", None)
    if not isinstance(predictions, torch.Tensor):
        raise EngineError(f"{type(model).__name__} returned {type(output).__name__} without a `predictions` "
                          "tensor; the engine serves regression models (head='regression')")
    return predictions


class Engine:
    """Base class: static host buffers, shape checks and the copy-out; subclasses run the step.

    Args:
        model: the module (see the module docstring); put in eval mode and moved to ``device``.
        device: where the forward runs.
        batch_size: most windows per call.
        window_samples: ``T``, samples per window.
        n_input_channels: ``n_eeg``; taken from ``model.config.n_eeg_channels`` when None.
        buckets: static batch sizes to prepare (default :func:`batch_buckets`); the largest must
            be ``batch_size``.
        output_samples: ``S``, newest samples predicted per window (default: ``window_samples``).
    """

    kind = "base"

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int, window_samples: int,
                 n_input_channels: Optional[int] = None, buckets: Optional[Sequence[int]] = None,
                 output_samples: Optional[int] = None) -> None:
        if n_input_channels is None:
            n_input_channels = getattr(getattr(model, "config", None), "n_eeg_channels", None)
            if n_input_channels is None:
                raise EngineError("n_input_channels is needed for a model without config.n_eeg_channels")
        if window_samples < 1:
            raise EngineError(f"window_samples must be >= 1, got {window_samples}")
        self.model = model
        self.device = device
        self.batch_size = int(batch_size)
        self.buckets = batch_buckets(self.batch_size) if buckets is None else sorted({int(b) for b in buckets})
        if not self.buckets or self.buckets[0] < 1 or self.buckets[-1] != self.batch_size:
            raise EngineError(f"buckets {buckets} must be batch sizes >= 1 whose largest is batch_size={self.batch_size}")
        self.window_samples = int(window_samples)
        self.output_samples = self.window_samples if output_samples is None else int(output_samples)
        if not 1 <= self.output_samples <= self.window_samples:
            raise EngineError(f"output_samples must be in 1..window_samples={self.window_samples}, got {output_samples}")
        # None: the plain forward (whole window); else the model's last_samples argument.
        self._last_samples = None if self.output_samples == self.window_samples else self.output_samples
        self.n_input_channels = int(n_input_channels)
        self.n_output_channels: Optional[int] = None
        self.setup_s: Optional[float] = None
        #: How the user named the model (``default``, a directory), where a cache records it.
        self.model_label: Optional[str] = None
        self._bucket_for = [0] + [next(b for b in self.buckets if b >= k) for k in range(1, self.batch_size + 1)]
        self._host_in: Optional[torch.Tensor] = None
        self._host_out: Optional[torch.Tensor] = None
        self.input_buffer: Optional[np.ndarray] = None  # (batch_size, T, n_eeg) view of _host_in
        self._output_np: Optional[np.ndarray] = None  # (batch_size, S, n_out) view of _host_out
        self._ready = False

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self) -> "Engine":
        """Allocate the static buffers, move the model, warm up (and compile / capture)."""
        started = time.perf_counter()
        self.model.eval()
        self.model.to(self.device)
        pin = self.device.type == "cuda"
        shape_in = (self.batch_size, self.window_samples, self.n_input_channels)
        with torch.inference_mode():
            self._host_in = torch.zeros(shape_in, dtype=torch.float32, pin_memory=pin)
            try:
                probe = self._forward(self._host_in[:1].to(self.device))
            except TypeError as error:
                if self._last_samples is None:
                    raise
                raise EngineError(f"output_samples={self.output_samples} needs a model whose forward takes "
                                  f"last_samples; {type(self.model).__name__} does not ({error})") from None
            if probe.ndim != 3 or probe.shape[:2] != (1, self.output_samples):
                raise EngineError(f"model output shape {tuple(probe.shape)} is not (batch, "
                                  f"{self.output_samples}, channels) for an input (1, {self.window_samples}, "
                                  f"{self.n_input_channels})")
            self.n_output_channels = int(probe.shape[2])
            self._host_out = torch.zeros((self.batch_size, self.output_samples, self.n_output_channels),
                                         dtype=torch.float32, pin_memory=pin)
            self.input_buffer = self._host_in.numpy()
            self._output_np = self._host_out.numpy()
            self._prepare()
        self._ready = True
        self.setup_s = time.perf_counter() - started
        logger.info("engine %s ready on %s in %.2f s (buckets %s)", self.kind, self.device, self.setup_s, self.buckets)
        return self

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_eeg)`` device tensor → ``(B, S, n_out)`` predictions (eager)."""
        return _predictions(self.model, windows, self._last_samples)

    def _prepare(self) -> None:
        """Subclass hook, run under ``inference_mode`` after the buffers exist: warm up / compile / capture."""
        raise NotImplementedError

    # -- per window ---------------------------------------------------------------------------------
    def infer(self, windows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Predict ``(k, S, n_out)`` float32 for ``windows`` ``(k, T, n_eeg)`` float32, ``1 <= k <= batch_size``.

        Returns ``out`` (filled) when given, else a new array the caller owns.
        """
        if not self._ready:
            raise RuntimeError("call setup() before infer()")
        k = self._check_windows(windows)
        if not self._is_input_buffer(windows):
            np.copyto(self.input_buffer[:k], windows)
        with torch.inference_mode():
            self._run(k)
        result = self._output_np[:k]
        if out is None:
            return result.copy()
        np.copyto(out, result)
        return out

    def _run(self, k: int) -> None:
        """Predictions for ``_host_in[:k]`` into ``_host_out[:k]`` (host memory, complete on return):
        by default the step of the smallest bucket that holds ``k`` windows."""
        self._run_bucket(self._bucket_for[k], k)

    def _run_bucket(self, bucket: int, k: int) -> None:
        """Subclass hook of the static-shape engines: run bucket ``bucket``'s step on
        ``_host_in[:bucket]`` and copy the first ``k`` rows of its output into ``_host_out[:k]``."""
        raise NotImplementedError

    def _check_windows(self, windows: np.ndarray) -> int:
        if not isinstance(windows, np.ndarray) or windows.dtype != np.float32 or windows.ndim != 3:
            raise EngineError("windows must be a float32 numpy array (batch, time, channels), got "
                              f"{type(windows).__name__} {getattr(windows, 'dtype', '')} {getattr(windows, 'shape', '')}")
        k, t, c = windows.shape
        if not 1 <= k <= self.batch_size or t != self.window_samples or c != self.n_input_channels:
            raise EngineError(f"windows shape {windows.shape} does not fit (1..{self.batch_size}, "
                              f"{self.window_samples}, {self.n_input_channels})")
        return k

    def _is_input_buffer(self, windows: np.ndarray) -> bool:
        return (windows.__array_interface__["data"][0] == self.input_buffer.__array_interface__["data"][0]
                and windows.strides == self.input_buffer.strides)

    def describe(self) -> Dict[str, object]:
        return {"kind": self.kind, "device": str(self.device), "batch_size": self.batch_size,
                "buckets": list(self.buckets), "window_samples": self.window_samples,
                "output_samples": self.output_samples,
                "n_input_channels": self.n_input_channels, "n_output_channels": self.n_output_channels,
                "setup_s": self.setup_s, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}

    def close(self) -> None:
        """Release the buffers (and graphs); the engine cannot be used afterwards."""
        self._ready = False


class EagerEngine(Engine):
    """Plain PyTorch forward of exactly ``k`` windows."""

    kind = "eager"

    def _prepare(self) -> None:
        if self.device.type == "cuda":
            self._device_in = torch.zeros(self._host_in.shape, dtype=torch.float32, device=self.device)
        for _ in range(WARMUP_ITERATIONS):
            self._run(self.batch_size)
            if self.batch_size > 1:
                self._run(1)

    def _run(self, k: int) -> None:
        if self.device.type == "cuda":
            self._device_in[:k].copy_(self._host_in[:k], non_blocking=True)
            predictions = self._forward(self._device_in[:k])
            self._host_out[:k].copy_(predictions, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
        else:
            self._host_out[:k].copy_(self._forward(self._host_in[:k]))


class CompileEngine(Engine):
    """``torch.compile`` of the per-window step, one static shape per bucket.

    Mode: on CUDA ``reduce-overhead`` (the mode meant for small, launch-bound shapes; it replays
    CUDA graphs internally), on the CPU the default inductor mode (fused C++ kernels) with
    inductor's *freezing*: the weights become constants of the graph, so they are folded and
    pre-packed for the CPU matmul kernels once instead of on every call. The
    engine owns the model while it serves; weights changed after ``setup()`` would not be seen.
    ``dynamic=False`` keeps one specialised graph per bucket size; all are compiled in ``setup()``.
    Per call, only the guards that tell those graphs apart are evaluated (the stance
    ``skip_guard_eval_unsafe``): the full guard set re-checks every weight of the model on every
    call, for facts the engine already fixes (frozen weights, static shapes).
    """

    kind = "compile"

    def __init__(self, *args, compile_mode: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compile_mode = compile_mode

    def _prepare(self) -> None:
        if self.compile_mode is None:
            self.compile_mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        model, last_samples = self.model, self._last_samples

        def step(windows: torch.Tensor) -> torch.Tensor:
            return _predictions(model, windows, last_samples)

        self._step = torch.compile(step, mode=self.compile_mode, fullgraph=False, dynamic=False)
        if self.device.type == "cuda":
            self._device_in = torch.zeros(self._host_in.shape, dtype=torch.float32, device=self.device)
        import torch._inductor.config as inductor_config

        # Compilation happens at the first call of each bucket, inside this block.
        with inductor_config.patch(freezing=self.device.type == "cpu"):
            for bucket in self.buckets:
                for _ in range(WARMUP_ITERATIONS):
                    self._run_bucket(bucket, bucket)

    def _run(self, k: int) -> None:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            self._run_bucket(self._bucket_for[k], k)

    def _run_bucket(self, bucket: int, k: int) -> None:
        if self.device.type == "cuda":
            self._device_in[:bucket].copy_(self._host_in[:bucket], non_blocking=True)
            if self.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            predictions = self._step(self._device_in[:bucket])
            self._host_out[:k].copy_(predictions[:k], non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
        else:
            self._host_out[:k].copy_(self._step(self._host_in[:bucket])[:k])

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "compile_mode": self.compile_mode}


def aot_inductor_configs() -> Dict[str, object]:
    """Inductor's settings for the ``aot`` packages.

    Freezing makes the weights constants of the library. Autotuning times, for every matrix
    product, inductor's C++ GEMM template (a kernel generated for that product's fixed shapes and
    weights) against the oneDNN call it would otherwise make, and keeps the faster: the serving
    forward's products are small, so a call's fixed cost weighs more than its arithmetic (figures
    in docs/engines.md). It makes a build several times longer; ``BRAINFORMER_AOT_AUTOTUNE=0`` builds
    without it.
    """
    autotune = os.environ.get("BRAINFORMER_AOT_AUTOTUNE", "1")
    if autotune not in ("0", "1"):
        raise EngineError(f"BRAINFORMER_AOT_AUTOTUNE must be 0 or 1, got {autotune!r}")
    configs: Dict[str, object] = {"freezing": True}
    if autotune == "1":
        # Without the report: a table per product on the build's output, nothing it decides.
        configs.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN",
                       max_autotune_report_choices_stats=False)
    return configs


class _ServingStep(torch.nn.Module):
    """What ``aot`` exports: windows ``(B, T, n_eeg)`` → the prediction tensor ``(B, S, n_out)``."""

    def __init__(self, model: torch.nn.Module, last_samples: Optional[int]) -> None:
        super().__init__()
        self.model = model
        self.last_samples = last_samples

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return _predictions(self.model, windows, self.last_samples)


class AotEngine(Engine):
    """AOTInductor: each bucket's step is exported (``torch.export``) and compiled ahead of time
    into a shared library with frozen weights, which the engine calls directly.

    Inductor's fused C++ kernels, as ``compile``, without what ``torch.compile`` runs around them on
    every call (Python guards, the graph's Python wrapper); the library releases Python's GIL while
    it runs. Its matrix products are autotuned (:func:`aot_inductor_configs`), which makes it the
    fastest CPU engine per hop for the default model; ``compile`` keeps the quick default build.

    Compiling is slow (up to a minute per bucket for the default model); the packages are cached on
    disk (:func:`aot_cache_dir`), keyed by everything that shapes the library: the model's code,
    weights and config, the shapes, the output span, the torch version, the build settings, the
    number of torch threads and the CPU's vector instructions (both compiled into the kernels).
    A later start with the same key loads the package instead of compiling. One process builds a
    key at a time; whoever needs it meanwhile waits for that build (:mod:`.aot_cache`: the lock,
    the record beside each package, stale files). The cache holds shared libraries that this
    process loads: keep it private (it is created with mode 0700).
    """

    kind = "aot"

    def _key_facts(self, bucket: int) -> Dict[str, object]:
        """What shapes ``bucket``'s library, besides the model's code and weights (hashed too)."""
        return {"format": 2, "torch": torch.__version__, "bucket": bucket, "window_samples": self.window_samples,
                "n_input_channels": self.n_input_channels, "last_samples": self._last_samples,
                "threads": torch.get_num_threads(), "model": type(self.model).__name__,
                "cpu": [platform.machine(), torch.backends.cpu.get_cpu_capability()],
                "inductor": aot_inductor_configs()}

    def _cache_key(self, bucket: int) -> str:
        digest = hashlib.sha256()
        facts = self._key_facts(bucket)
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            facts["config"] = config.to_json_string(use_diff=False)
        digest.update(json.dumps(facts, sort_keys=True).encode())
        # The model's code: a package of an older forward is never loaded for a newer one.
        source = getattr(sys.modules.get(type(self.model).__module__), "__file__", None)
        if source is not None:
            digest.update(Path(source).read_bytes())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    def package_path(self, bucket: int) -> Path:
        """Where the compiled package of ``bucket`` is cached (it may not exist yet)."""
        return aot_cache_dir() / f"{self._cache_key(bucket)}.pt2"

    def compile_package(self, bucket: int, path: Path) -> None:
        """Export and compile ``bucket``'s step into ``path`` (written beside it as
        ``KEY.tmp-*.pt2``, then renamed: a half-written package is never loaded; the temporary
        file is removed on every way out, a signal turned into an exception included)."""
        import torch._inductor

        ensure_cache_dir(path.parent)
        started = time.perf_counter()
        example = torch.zeros((bucket, self.window_samples, self.n_input_channels), dtype=torch.float32)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations
            program = torch.export.export(_ServingStep(self.model.eval(), self._last_samples), (example,))
            handle, partial = tempfile.mkstemp(prefix=f"{path.stem}.tmp-", suffix=".pt2", dir=path.parent)
            os.close(handle)
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=partial,
                                                         inductor_configs=aot_inductor_configs())
                os.replace(partial, path)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
        logger.info("aot: compiled bucket %d in %.1f s into %s", bucket, time.perf_counter() - started, path)

    def build_package(self, bucket: int, lock: Optional[PackageLock] = None, model_label: Optional[str] = None,
                      on_wait=None) -> Path:
        """``bucket``'s package in the cache, compiled by this process unless it is there.

        One process builds a package at a time: without ``lock`` (the key's lock, already held)
        this takes it, and while another process builds the same package it waits for that
        build (``on_wait(pid)`` once) instead of compiling it twice. Next to the package it
        writes what it was built for (``KEY.json``, for ``engine status``); the lock is released
        on every way out.
        """
        path = self.package_path(bucket)
        if lock is None:
            lock = acquire_unless_ready(path.parent, path.stem, path.exists, on_wait=on_wait)
            if lock is None:  # in the cache, or built meanwhile by the process we waited for
                return path
        try:
            lock.write_owner(os.getpid())
            if not path.exists():
                started = time.time()
                self.compile_package(bucket, path)
                self._write_facts(bucket, path, model_label, started)
            log_path(path.parent, path.stem).unlink(missing_ok=True)  # an earlier failure's
        finally:
            lock.release()
        return path

    def _write_facts(self, bucket: int, path: Path, model_label: Optional[str], started: float) -> None:
        facts = {**self._key_facts(bucket), "key": path.stem, "output_samples": self.output_samples,
                 "model_dir": model_label or self.model_label or type(self.model).__name__,
                 "autotune": "max_autotune" in aot_inductor_configs(),
                 "built_at": time.time(), "build_s": round(time.time() - started, 1)}
        target = sidecar_path(path.parent, path.stem)
        handle, partial = tempfile.mkstemp(prefix=f"{path.stem}.tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(facts, file, indent=1)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)

    def _package(self, bucket: int) -> Path:
        """The compiled package of one bucket: from the cache, or compiled now and cached."""
        return self.build_package(bucket, on_wait=lambda pid: logger.info(
            "aot: waiting for process %s, which builds the package of bucket %d", pid or "?", bucket))

    def _prepare(self) -> None:
        self._runners = {}
        for bucket in self.buckets:
            path = self._package(bucket)
            try:
                self._runners[bucket] = _load_aot_package(path)
            except Exception as error:  # noqa: BLE001 - whatever a damaged package raises
                raise EngineError(f"aot: the cached package {str(path)!r} cannot be loaded ({type(error).__name__}: "
                                  f"{error}); delete it to compile it again") from None
        for bucket in self.buckets:
            for _ in range(WARMUP_ITERATIONS):
                self._run_bucket(bucket, bucket)

    def _run_bucket(self, bucket: int, k: int) -> None:
        self._host_out[:k].copy_(self._runners[bucket](self._host_in[:bucket])[:k])

    def close(self) -> None:
        super().close()
        self._runners = {}


def _load_aot_package(path: Path):
    """The runner of a package compiled on this machine.

    ``aoti_load_package`` first probes which vector instructions this CPU has (by compiling and
    loading test programs in child processes: about 1.5 s here), only to warn when they differ
    from the package's. A package of this cache was compiled here by the same torch (both are in
    its key), so the loader it ends in is called directly where this torch has it.
    """
    try:
        from torch.export.pt2_archive._package import AOTICompiledModel

        loader = torch._C._aoti.AOTIModelPackageLoader
    except (ImportError, AttributeError):  # another torch: the public way, probe included
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    return AOTICompiledModel(loader(str(path), "model", False, 1, -1))


class CudaGraphEngine(Engine):
    """One ``torch.cuda.CUDAGraph`` per bucket over static device buffers.

    ``setup()``: static device input ``(batch_size, T, n_eeg)``; per bucket ``b``: warm-up on a
    side stream (so the allocator's warm-up allocations do not land in the capture), then capture
    of ``forward(static_in[:b])`` into a graph whose output tensor stays fixed.
    Per call: pinned host input → static input (copy-in) → replay → pinned host output
    (copy-out) → synchronise, so the output is on the host before the next replay overwrites it.
    """

    kind = "cuda-graph"

    def _prepare(self) -> None:
        if self.device.type != "cuda":
            raise EngineError("engine 'cuda-graph' needs a CUDA device")
        self._device_in = torch.zeros(self._host_in.shape, dtype=torch.float32, device=self.device)
        self._graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self._graph_out: Dict[int, torch.Tensor] = {}
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for bucket in self.buckets:
                for _ in range(WARMUP_ITERATIONS):
                    self._forward(self._device_in[:bucket])
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        for bucket in self.buckets:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_out[bucket] = self._forward(self._device_in[:bucket])
            self._graphs[bucket] = graph
        torch.cuda.synchronize(self.device)
        for bucket in self.buckets:  # replay once each: the first replay pays one-off costs
            self._run_bucket(bucket, bucket)

    def _run_bucket(self, bucket: int, k: int) -> None:
        self._device_in[:bucket].copy_(self._host_in[:bucket], non_blocking=True)
        self._graphs[bucket].replay()
        self._host_out[:k].copy_(self._graph_out[bucket][:k], non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        super().close()
        self._graphs = {}
        self._graph_out = {}


_ENGINES = {"eager": EagerEngine, "compile": CompileEngine, "aot": AotEngine, "cuda-graph": CudaGraphEngine}


def make_engine(model: torch.nn.Module, kind: str = "auto", device: str = "cpu", batch_size: int = 1,
                window_samples: Optional[int] = None, n_input_channels: Optional[int] = None,
                buckets: Optional[Sequence[int]] = None, compile_mode: Optional[str] = None,
                output_samples: Optional[int] = None) -> Engine:
    """Build (not yet set up) the engine ``kind`` for ``model`` on ``device``.

    Args:
        model: see the module docstring.
        kind: ``auto`` | ``eager`` | ``compile`` | ``aot`` | ``cuda-graph`` (``auto``: cuda-graph on CUDA,
            eager on CPU; ``aot``: CPU only).
        device: ``auto`` | ``cpu`` | ``cuda`` (``cuda:N``).
        batch_size: most windows per ``infer`` call.
        window_samples: samples per window; ``model.config.window_samples`` when None.
        n_input_channels: EEG channels; ``model.config.n_eeg_channels`` when None.
        buckets: static batch sizes to prepare (default 1, 2, 4, …, ``batch_size``).
        compile_mode: ``torch.compile`` mode for ``kind="compile"`` (default: see :class:`CompileEngine`).
        output_samples: newest samples predicted per window (default: the whole window).

    Raises:
        EngineError: unknown kind/device, or a CUDA kind/device on a machine without CUDA.
    """
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    resolved = resolve_kind(kind, torch_device)
    if window_samples is None:
        window_samples = getattr(getattr(model, "config", None), "window_samples", None)
        if window_samples is None:
            raise EngineError("window_samples is needed for a model without config.window_samples")
    if compile_mode is not None and resolved != "compile":
        raise EngineError(f"compile_mode is only used by the compile engine, not {resolved!r}")
    extra = {"compile_mode": compile_mode} if resolved == "compile" else {}
    return _ENGINES[resolved](model, torch_device, batch_size, window_samples, n_input_channels, buckets=buckets,
                              output_samples=output_samples, **extra)
