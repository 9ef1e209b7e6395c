"""The small JSON files the demo's processes hand each other (start sample, playback clock, the
daemon's statistics): written atomically, read as ``{}`` until they exist."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["read_json", "write_json"]


def read_json(path: Path) -> dict:
    """The object in ``path``, or ``{}`` while it does not exist (or is not JSON yet)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, values: dict) -> None:
    """Atomic: the reader, polling in another process, never sees a half-written file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(values))
    os.replace(partial, path)
