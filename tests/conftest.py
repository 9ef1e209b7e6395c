"""Test-session guards: LSL only on loopback, inside a loopback-only network namespace."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One thread for each numerical library, set before numpy and torch load them and inherited by
# every program a test starts: on a loaded 2-core machine their worker threads wait on each other
# (the simulator's oracle tests took over 300 s each on two OpenBLAS threads, 20-76 s on one;
# test_learning.py 225 s on two torch threads, 38 s on one). A value set by the caller wins.
for _threads_variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_variable, "1")

import pytest  # noqa: E402 - after the thread settings

from brainformer.paths import SAMPLE_RECORDING
from brainformer_rt.serving.lsl_config import in_loopback_namespace, use_loopback_config


# Must run before any test imports pylsl: liblsl reads its config at the first LSL call.
use_loopback_config()

# Compiled engine packages go to a cache of this session (inherited by every daemon a test
# starts), never into the user's: a test must not find what an earlier run compiled.
os.environ["BRAINFORMER_CACHE"] = tempfile.mkdtemp(prefix="brainformer-test-cache-")
# Removed when the session (each xdist worker has its own) ends: runs left hundreds behind.
atexit.register(shutil.rmtree, os.environ["BRAINFORMER_CACHE"], ignore_errors=True)
# The background builds that `--engine auto` daemons start (the demo's, among others) outlive
# them: quick ones, without autotuning (tests that mean the autotuned package say so).
os.environ.setdefault("BRAINFORMER_AOT_AUTOTUNE", "0")
# ... and at the tests' own priority: at niceness 19 on a machine that other work keeps busy a
# build gets next to no CPU, and whatever waits for it (a bench phase, a switch) waits on that
# load. The niceness itself is tested where it is set explicitly (test_engine_build).
os.environ.setdefault("BRAINFORMER_AOT_BUILD_NICE", "0")


def pytest_sessionstart(session):
    if not in_loopback_namespace():
        raise pytest.UsageError(
            "tests open LSL streams and must run in a loopback-only network namespace: "
            "use `make test` (or scripts/netns-run python -m pytest)"
        )


def pytest_sessionfinish(session, exitstatus):
    """No build of this session's cache outlives the session."""
    from brainformer_rt.serving.aot_cache import aot_cache_dir, stop_builders

    stop_builders(aot_cache_dir())


@pytest.fixture(scope="session")
def sample_fif() -> Path:
    return SAMPLE_RECORDING


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one torch thread, and the test machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
