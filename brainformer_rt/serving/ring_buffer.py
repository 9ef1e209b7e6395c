"""Preallocated ring of samples and their timestamps.

Every sample is stored twice, at ``i`` and ``i + capacity``, in a ``(2 * capacity, channels)``
array. Any run of the newest ``n <= capacity`` samples is then one contiguous slice, so the
newest window is handed to the next stage as a view: no copy, no ``np.roll``, no allocation.
The price is one extra copy per write, of data that is already in cache.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Fixed-capacity ring of ``(time, channels)`` samples with float64 timestamps.

    Args:
        capacity_samples: how many of the newest samples are kept.
        n_channels: channels per sample.
        dtype: sample dtype (float32 by default; writes are cast to it).

    Not thread-safe: one writer and its readers share a thread (the serve loop).
    """

    def __init__(self, capacity_samples: int, n_channels: int, dtype=np.float32):
        if int(capacity_samples) != capacity_samples or capacity_samples < 1:
            raise ValueError(f"capacity_samples must be a positive integer, got {capacity_samples!r}")
        if int(n_channels) != n_channels or n_channels < 1:
            raise ValueError(f"n_channels must be a positive integer, got {n_channels!r}")
        self.capacity_samples = int(capacity_samples)
        self.n_channels = int(n_channels)
        # (2 * capacity, channels): the second half mirrors the first.
        self._data = np.zeros((2 * self.capacity_samples, self.n_channels), dtype=dtype)
        # (2 * capacity,)
        self._timestamps = np.zeros(2 * self.capacity_samples, dtype=np.float64)
        self._head = 0  # slot in [0, capacity) that the next sample goes to
        self._valid_samples = 0  # samples written since the last clear(), capped at capacity
        # Samples ever written (an absolute sample index: never reset, not even by clear(); it
        # includes samples dropped from oversized chunks).
        self.total_written = 0

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def available_samples(self) -> int:
        """How many samples :meth:`latest` can return right now."""
        return self._valid_samples

    def write(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Append ``data (n, channels)`` with ``timestamps (n,)``, oldest first.

        A chunk longer than the capacity keeps only its newest ``capacity`` samples (the older
        ones would be overwritten by the same write anyway); ``total_written`` still counts all.
        """
        n = len(timestamps)
        if data.ndim != 2 or data.shape[1] != self.n_channels or data.shape[0] != n:
            raise ValueError(
                f"data must have shape (n, {self.n_channels}) with n = len(timestamps) = {n}, "
                f"got {data.shape}"
            )
        if n == 0:
            return
        self.total_written += n
        capacity = self.capacity_samples
        self._valid_samples = min(self._valid_samples + n, capacity)
        if n > capacity:
            data = data[n - capacity:]
            timestamps = timestamps[n - capacity:]
            n = capacity
        head = self._head
        first = min(n, capacity - head)  # samples that fit before the end of the first half
        rest = n - first
        self._store(head, data[:first], timestamps[:first])
        if rest:
            self._store(0, data[first:], timestamps[first:])
        self._head = (head + n) % capacity

    def _store(self, slot: int, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Write a run that does not wrap at ``slot`` and at its mirror ``slot + capacity``."""
        n = len(timestamps)
        mirror = slot + self.capacity_samples
        self._data[slot:slot + n] = data
        self._data[mirror:mirror + n] = data
        self._timestamps[slot:slot + n] = timestamps
        self._timestamps[mirror:mirror + n] = timestamps

    def latest(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` samples, oldest first: ``(data (n, channels), timestamps (n,))``.

        Both are contiguous views into the buffer, valid until the next :meth:`write`; copy them
        if they must outlive it, and do not write into them.
        """
        if n < 0 or n > self.available_samples:
            raise ValueError(
                f"n must be between 0 and the {self.available_samples} samples available "
                f"(capacity {self.capacity_samples}), got {n}"
            )
        # The newest sample sits at head - 1 and at head - 1 + capacity; ending the slice at
        # head + capacity keeps its start at head + capacity - n >= head >= 0.
        end = self._head + self.capacity_samples
        return self._data[end - n:end], self._timestamps[end - n:end]

    def clear(self) -> None:
        """Forget every sample (e.g. after a gap in the stream) so that :meth:`latest` never
        returns a run that spans the gap; ``total_written`` keeps counting."""
        self._valid_samples = 0
