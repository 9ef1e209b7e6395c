"""Parts and windows: the one definition of which rows train, validate and test, and of which
windows exist inside them.

Per recording of n samples at the model rate (all in time, never shuffled across):

```
0                 split·(1-validation_fraction)·n        split·n                      n
|── settle ─ train ──────────────|── settle ─ validation ──|── settle ─ test ───────────|
```

`settle_s` seconds are dropped at the start of each part (the causal filters settle after the
first sample and after nothing else, but a part's first window must not see the previous part's
data), and no window crosses a boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from brainformer.data.prepared import PreparedRecording
    from brainformer.settings import DataSettings

__all__ = ["SPLITS", "split_parts", "window_index", "window_starts"]

SPLITS = ("train", "validation", "test")


def split_parts(n_samples: int, sfreq_hz: float, data: DataSettings) -> dict[str, tuple[int, int]]:
    """Usable ``[start, stop)`` rows of each part (settling dropped), keyed train/validation/test.

    The same definition serves training (windows), evaluation (continuous test segments) and
    the ridge baselines (λ chosen on validation). A part too short for its settling is empty.
    """
    n_samples = int(n_samples)
    test_start = int(round(data.split * n_samples))
    validation_start = int(round(data.split * (1.0 - data.validation_fraction) * n_samples))
    settle = int(round(data.settle_s * sfreq_hz))

    def usable(start: int, stop: int) -> tuple[int, int]:
        return (min(start + settle, stop), stop)

    return {
        "train": usable(0, validation_start),
        "validation": usable(validation_start, test_start),
        "test": usable(test_start, n_samples),
    }


def window_starts(start: int, stop: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """First rows of the windows of `window_samples` that fit in ``[start, stop)``, every `hop_samples`."""
    if stop - start < window_samples:
        return np.zeros(0, dtype=np.int64)
    return np.arange(start, stop - window_samples + 1, hop_samples, dtype=np.int64)


def window_index(
    recordings: Sequence[PreparedRecording], part: str | Sequence[str], window_samples: int, hop_samples: int
) -> np.ndarray:
    """Every window of one part (or of adjacent parts together) of `recordings`.

    The single definition of which windows exist, shared by the torch dataset
    (`brainformer.training.ContinuousWindows`) and the Hugging Face view (`hf_windows`).

    Args:
        recordings: prepared recordings (their ``parts``).
        part: ``"train"``, ``"validation"`` or ``"test"``, or several adjacent parts (e.g.
            ``("train", "validation")``), which then form one continuous stretch per recording.
        window_samples, hop_samples: window length and step in rows.

    Returns:
        `(n_windows, 4)` int64 rows ``(recording, start_sample, stretch_start, stretch_stop)``:
        the recording's position in `recordings`, the window's first row, and the ``[start, stop)``
        rows of the stretch it lies in (every window satisfies
        ``stretch_start <= start_sample <= stretch_stop - window_samples``).
    """
    parts = (part,) if isinstance(part, str) else tuple(part)
    blocks = []
    for i, rec in enumerate(recordings):
        spans = [rec.parts[p] for p in parts if rec.parts[p][1] > rec.parts[p][0]]
        if not spans:
            continue
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        starts = window_starts(lo, hi, window_samples, hop_samples)
        block = np.empty((len(starts), 4), dtype=np.int64)
        block[:, 0], block[:, 1], block[:, 2], block[:, 3] = i, starts, lo, hi
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros((0, 4), dtype=np.int64)
