"""What the preprocessing tests share: the sample rate, feeding a preprocessor in chunks."""

from __future__ import annotations

import numpy as np

from brainformer.preprocessing import StreamingPreprocessor

SFREQ_HZ = 600.614990234375


def run_chunked(pre: StreamingPreprocessor, x: np.ndarray, sizes) -> tuple[np.ndarray, np.ndarray]:
    outs, stamps, i = [], [], 0
    timestamps = np.arange(len(x), dtype=np.float64) / pre.spec.input_sfreq_hz
    for size in sizes:
        if i >= len(x):
            break
        out, ts = pre.process(x[i : i + size], timestamps[i : i + size])
        outs.append(out)
        stamps.append(ts)
        i += size
    assert i >= len(x)
    return np.concatenate(outs), np.concatenate(stamps)


def random_sizes(rng: np.random.Generator, n: int) -> list[int]:
    # Many 1-sample chunks, some small and some large ones, and an empty one.
    return [0] + list(rng.choice([1, 1, 1, 2, 3, 7, 16, 33, 250, 1000], size=n))

