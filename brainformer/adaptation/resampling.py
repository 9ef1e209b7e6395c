"""Streaming, stateful resampling to the model rate with soxr, and the timestamps that go with it.

soxr's ``ResampleStream`` at quality ``QQ`` (the only soxr quality that holds back a few samples
rather than hundreds) is time-aligned: output sample ``k`` represents the input instant
``k * input_rate / output_rate`` input samples after input sample 0 (`input_position`). The
samples it holds back (`pending_samples`, about 2 output samples) are latency, not a shift, so
each output sample is stamped with the timestamp of the EEG instant it represents, read from the
input timestamps (a ring of the recent ones) plus the sub-sample fraction at the input rate.

Chunked calls give the very same samples as one call on the whole signal: the daemon (chunks of
a few samples) and the offline path (whole recordings) use this one class.

Example::

    resampler = StreamResampler(500.0, 600.614990234375, n_channels=60)
    y, t = resampler.process(x, timestamps)   # (m, 60) float32 and (m,) float64 views
"""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["RESAMPLER_QUALITY", "StreamResampler"]

#: soxr quality: "QQ" (quick cubic) holds back ~2 output samples; the others hold back hundreds.
RESAMPLER_QUALITY = "QQ"


def _ring_size(max_chunk_samples: int) -> int:
    size = 1024
    while size < 2 * max_chunk_samples + 64:
        size *= 2
    return size


class StreamResampler:
    """Resample `(n, n_channels)` chunks from `input_sfreq_hz` to `output_sfreq_hz`, with state.

    Args:
        input_sfreq_hz: rate of the chunks given to `process`.
        output_sfreq_hz: rate of the samples it returns.
        n_channels: columns of every chunk.
        dtype: ``float32`` (the daemon) or ``float64`` (offline); chunks are cast to it.
        max_chunk_samples: initial buffer size; buffers grow (once) for a bigger chunk.

    State (all of it, reset by `reset`): soxr's filter state, the input and output sample
    counts, and the ring of recent input timestamps.
    """

    def __init__(
        self,
        input_sfreq_hz: float,
        output_sfreq_hz: float,
        n_channels: int,
        dtype: type | np.dtype = np.float32,
        max_chunk_samples: int = 4096,
    ) -> None:
        self.input_sfreq_hz = float(input_sfreq_hz)
        self.output_sfreq_hz = float(output_sfreq_hz)
        self.n_channels = int(n_channels)
        self.dtype = np.dtype(dtype)
        #: Input samples per output sample.
        self.ratio = self.input_sfreq_hz / self.output_sfreq_hz
        self._soxr = soxr.ResampleStream(
            self.input_sfreq_hz, self.output_sfreq_hz, self.n_channels, dtype=self.dtype.name, quality=RESAMPLER_QUALITY
        )
        self._allocate(max(1, int(max_chunk_samples)))
        self.reset()

    def _allocate(self, max_chunk_samples: int) -> None:
        self._max_chunk = max_chunk_samples
        out_rows = int(np.ceil(max_chunk_samples / self.ratio)) + 16
        self._out = np.empty((out_rows, self.n_channels), self.dtype)
        self._out_ts = np.empty(out_rows)
        self._position = np.empty(out_rows)  # fractional input index of each output sample
        self._floor = np.empty(out_rows)
        self._index = np.empty(out_rows, np.int64)
        self._steps = np.arange(out_rows, dtype=np.float64)
        old_ring = getattr(self, "_ring", None)
        self._ring = np.zeros(_ring_size(max_chunk_samples))
        if old_ring is not None and self._n_in:  # keep the recent timestamps across a growth
            keep = min(len(old_ring), self._n_in)
            idx = np.arange(self._n_in - keep, self._n_in)
            self._ring[idx & (len(self._ring) - 1)] = old_ring[idx & (len(old_ring) - 1)]

    def reset(self) -> None:
        """Forget the signal: the next chunk starts a new one (output 0 = its first sample)."""
        self._soxr.clear()
        self._n_in = 0  # input samples given so far
        self._n_out = 0  # output samples returned so far

    # ---------------------------------------------------------------------------------------
    def input_position(self, output_index: int | np.ndarray) -> float | np.ndarray:
        """Fractional input sample index that output sample `output_index` represents."""
        return output_index * self.ratio

    @property
    def pending_samples(self) -> float:
        """Output samples soxr holds back right now (latency, in output samples)."""
        return float(self._soxr.delay())

    @property
    def delay_s(self) -> float:
        """The hold-back now, in seconds: how long after its EEG instant a sample comes out."""
        return self.pending_samples / self.output_sfreq_hz

    @property
    def samples_in(self) -> int:
        return self._n_in

    @property
    def samples_out(self) -> int:
        return self._n_out

    # ---------------------------------------------------------------------------------------
    def process(
        self, chunk: np.ndarray, timestamps: np.ndarray | None = None, last: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`chunk` `(n, n_channels)` (+ its `(n,)` timestamps) → `(m, n_channels)` at the output
        rate and their `(m,)` timestamps: views of this object's buffers, valid until the next
        call. `last=True` flushes the held-back samples (end of a recording; never live)."""
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        n = chunk.shape[0]
        if chunk.ndim != 2 or chunk.shape[1] != self.n_channels:
            raise ValueError(f"resampler: expected a chunk (n, {self.n_channels}), got {chunk.shape}")
        if n > self._max_chunk:
            self._allocate(max(n, 2 * self._max_chunk))
        if timestamps is not None:
            if len(timestamps) != n:
                raise ValueError(f"resampler: {n} samples but {len(timestamps)} timestamps")
            mask = len(self._ring) - 1
            start = self._n_in & mask
            first = min(n, len(self._ring) - start)
            self._ring[start : start + first] = timestamps[:first]
            self._ring[: n - first] = timestamps[first:]
        self._n_in += n
        last = bool(last)  # soxr refuses numpy booleans
        y = self._soxr.resample_chunk(chunk, last=last) if (n or last) else self._out[:0]
        m = y.shape[0]
        if m > self._out.shape[0]:  # only a flush can exceed the per-chunk bound
            self._allocate(int(np.ceil(m * self.ratio)) + 1)
        out = self._out[:m]
        out[...] = y
        ts = None
        if timestamps is not None and m:
            ts = self._timestamps(m)
        elif timestamps is not None:
            ts = self._out_ts[:0]
        self._n_out += m
        return out, ts

    def _timestamps(self, m: int) -> np.ndarray:
        """Timestamps of the next `m` output samples: input timestamp at the integer part of
        their input position, plus the fraction at the nominal input rate."""
        position = self._position[:m]
        np.add(self._steps[:m], self._n_out, out=position)
        position *= self.ratio
        floor = self._floor[:m]
        np.floor(position, out=floor)
        np.minimum(floor, self._n_in - 1, out=floor)  # a flush may look past the last input
        index = self._index[:m]
        np.copyto(index, floor, casting="unsafe")
        np.bitwise_and(index, len(self._ring) - 1, out=index)
        ts = self._out_ts[:m]
        np.take(self._ring, index, out=ts)
        position -= floor
        position /= self.input_sfreq_hz
        ts += position
        return ts
