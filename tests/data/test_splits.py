"""brainformer.data.splits: parts in time and the windows inside them."""

from __future__ import annotations

from brainformer.data import split_parts, window_starts
from brainformer.settings import DataSettings


def test_split_parts_and_windows():
    parts = split_parts(10_000, 100.0, DataSettings(split=0.75, validation_fraction=0.2, settle_s=1.0))
    assert parts == {"train": (100, 6000), "validation": (6100, 7500), "test": (7600, 10_000)}
    no_validation = split_parts(1000, 100.0, DataSettings(validation_fraction=0.0, settle_s=0.0))
    assert no_validation["validation"] == (750, 750) and no_validation["train"] == (0, 750)
    starts = window_starts(100, 400, 64, 32)
    assert starts.tolist() == list(range(100, 400 - 64 + 1, 32)) and starts[-1] + 64 <= 400
    assert window_starts(0, 63, 64, 1).size == 0
