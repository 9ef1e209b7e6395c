"""Test-session guards: LSL only on loopback, inside a loopback-only network namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainformer.paths import SAMPLE_RECORDING
from brainformer_rt.serving.lsl_config import in_loopback_namespace, use_loopback_config


# Must run before any test imports pylsl: liblsl reads its config at the first LSL call.
use_loopback_config()


def pytest_sessionstart(session):
    if not in_loopback_namespace():
        raise pytest.UsageError(
            "tests open LSL streams and must run in a loopback-only network namespace: "
            "use `make test` (or scripts/netns-run python -m pytest)"
        )


@pytest.fixture(scope="session")
def sample_fif() -> Path:
    return SAMPLE_RECORDING
