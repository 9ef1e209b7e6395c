"""Streaming, stateful resampling to the model rate, and the timestamps that go with it.

Two converters, chosen per (input rate, model rate, model low-pass corner) by `resampler_method`:

- ``"linear"``: libsamplerate's linear interpolator (PyPI ``samplerate``). Output ``j`` of the
  converter is the straight line between two input samples at input position ``j * ratio - 1``:
  one input sample late, with the first outputs (position < 0) a copy of sample 0. Those are
  dropped, so output ``k`` represents input position ``k * ratio + phase`` (`input_position`,
  ``0 <= phase < ratio``), and it comes out as soon as the input sample after it arrives: the
  hold-back is at most one output sample (0.83 ms mean at 500 → 600.615 Hz). It computes in
  float32 whatever `dtype` is, and a flush (``last=True``) adds nothing: there is nothing to
  interpolate past the last sample.
- ``"soxr QQ"``: soxr's ``ResampleStream`` at quality ``QQ`` (quick cubic; the other soxr
  qualities hold back hundreds of samples), time-aligned (``phase`` 0); it holds back about two
  input samples plus one output sample (2.8 ms mean at 500 Hz, 1.8 ms at 1 kHz).

Neither has an anti-aliasing filter: each is an interpolation kernel sampled at the output
rate. For linear interpolation the error that reaches the model's band ``[0, B]`` (``B`` the
model's ``lowpass_hz``; its whole band when it has none) is known exactly: the kernel's response
is ``sinc²(F / input_rate)``, so input content shows up in the band from every frequency
``F = k * output_rate ± f`` (``k >= 1``, ``f <= B``) with gain ``sinc²(F / input_rate)``, and the
band itself droops by ``1 - sinc²(B / input_rate)`` at its edge. `linear_error_db` is the largest
of these; linear is used when it is at most `LINEAR_MAX_ERROR_DB` (−26.5 dB, the peak of the
kernel's first side lobe: no alias path may fall in the kernel's main lobe except deep in its
null, and the band must sit well inside it). With ``B`` = 40 Hz at 600.615 Hz: 500 Hz → −28.7 dB
(linear); 1 kHz → −10.6 dB (content near 400 Hz mirrors to 600 Hz and lands near 0 Hz) and
2048 Hz → −2 dB (plain folding of 560–640 Hz): soxr QQ, which has the same weakness there
(−11 dB, −1 dB) but a flatter band; only a real low-pass before it would fix those.

Every output sample is stamped with the timestamp of the EEG instant it represents, read from
the input timestamps (a ring of the recent ones) plus the sub-sample fraction at the input rate.
Chunked calls give the very same samples as one call on the whole signal: the daemon (chunks of
a few samples) and the offline path (whole recordings) use this one class.

Example::

    resampler = StreamResampler(500.0, 600.614990234375, n_channels=60, lowpass_hz=40.0)
    y, t = resampler.process(x, timestamps)   # (m, 60) float32 and (m,) float64 views
"""

from __future__ import annotations

import math

import numpy as np
import samplerate
import soxr

__all__ = [
    "LINEAR",
    "LINEAR_MAX_ERROR_DB",
    "RESAMPLER_QUALITY",
    "SOXR_QQ",
    "StreamResampler",
    "linear_error_db",
    "resampler_method",
]

#: soxr quality: "QQ" (quick cubic) holds back ~2 input samples; the others hold back hundreds.
RESAMPLER_QUALITY = "QQ"
#: The two converters, by the name `StreamResampler.method` and the plan report use.
LINEAR = "linear"
SOXR_QQ = f"soxr {RESAMPLER_QUALITY}"
#: Largest in-band error (alias gain or band-edge droop) linear interpolation may have, in dB:
#: the peak of sinc²'s first side lobe (x ≈ 1.43), so every alias path lies past the main lobe
#: or deep in its null.
LINEAR_MAX_ERROR_DB = -26.5
#: Alias paths ``k * output_rate ± B`` looked at; past k ≈ 20 sinc² is below −55 dB.
_ALIAS_ORDERS = 20


def linear_error_db(input_sfreq_hz: float, output_sfreq_hz: float, lowpass_hz: float | None) -> float:
    """Worst error linear interpolation from `input_sfreq_hz` to `output_sfreq_hz` brings into the
    band ``[0, lowpass_hz]`` (the whole output band when None), in dB relative to the signal: the
    largest alias gain ``sinc²(F / input_rate)`` over ``F = k * output_rate ± f`` (``k >= 1``,
    ``0 <= f <= band``) and the droop ``1 - sinc²(band / input_rate)`` at the band edge."""
    band = output_sfreq_hz / 2 if lowpass_hz is None else min(float(lowpass_hz), output_sfreq_hz / 2)
    offsets = np.linspace(-band, band, 2001)
    orders = np.arange(1, _ALIAS_ORDERS + 1)[:, None]
    alias = float(np.max(np.sinc((orders * output_sfreq_hz + offsets) / input_sfreq_hz) ** 2))
    droop = 1.0 - float(np.sinc(band / input_sfreq_hz)) ** 2
    return 20.0 * math.log10(max(alias, droop, 1e-12))


def resampler_method(input_sfreq_hz: float, output_sfreq_hz: float, lowpass_hz: float | None) -> str:
    """`LINEAR` where its in-band error is at most `LINEAR_MAX_ERROR_DB`, else `SOXR_QQ`."""
    error_db = linear_error_db(input_sfreq_hz, output_sfreq_hz, lowpass_hz)
    return LINEAR if error_db <= LINEAR_MAX_ERROR_DB else SOXR_QQ


class _Soxr:
    """soxr QQ: time-aligned, output 0 at input position 0."""

    def __init__(self, input_hz: float, output_hz: float, n_channels: int, dtype: np.dtype) -> None:
        self.phase = 0.0
        self._stream = soxr.ResampleStream(input_hz, output_hz, n_channels, dtype=dtype.name, quality=RESAMPLER_QUALITY)

    def clear(self) -> None:
        self._stream.clear()

    def convert(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        return self._stream.resample_chunk(chunk, last=last)


class _Linear:
    """libsamplerate linear, its first outputs (before input sample 0) dropped: output ``k`` at
    input position ``k * ratio + phase``."""

    def __init__(self, input_hz: float, output_hz: float, n_channels: int) -> None:
        self._ratio = output_hz / input_hz  # libsamplerate's ratio: output / input
        step = input_hz / output_hz
        # Converter outputs j < 1/step sit before sample 0 (position j * step - 1 < 0).
        self._skip = math.ceil(1.0 / step - 1e-9)
        self.phase = self._skip * step - 1.0
        self._converter = samplerate.Resampler("linear", channels=n_channels)
        # Given one frame, libsamplerate 0.2.2's linear converter reads the frame *before* its
        # input (src_linear.c's main loop starts at in_used = 0 and reads data_in[-channels]),
        # which the whole-signal call has as the previous sample. One-frame chunks are passed
        # as row 1 of this buffer, row 0 holding that previous sample, so the read is defined
        # and gives what one call would.
        self._guard = np.zeros((2, n_channels), np.float32)
        self.clear()

    def clear(self) -> None:
        self._converter.reset()
        self._to_skip = self._skip
        self._started = False

    def convert(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        if not len(chunk):  # a flush: linear interpolation has no tail to give
            return self._guard[:0]
        if len(chunk) == 1:
            self._guard[1] = chunk[0]
            if not self._started:  # after a reset the converter takes sample 0 as the one before
                self._guard[0] = chunk[0]
            chunk = self._guard[1:]
        self._started = True
        y = self._converter.process(chunk, self._ratio, end_of_input=False)
        self._guard[0] = chunk[-1]
        if self._to_skip:
            dropped = min(len(y), self._to_skip)
            self._to_skip -= dropped
            y = y[dropped:]
        return y


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
        lowpass_hz: the model's low-pass corner (``lowpass_hz`` of its config; None: no
            low-pass, its whole band counts), which decides the converter (`resampler_method`).
        method: `LINEAR` or `SOXR_QQ` to force one (benchmarks); None: `resampler_method`.

    State (all of it, reset by `reset`): the converter's state, the input and output sample
    counts, and the ring of recent input timestamps.
    """

    def __init__(
        self,
        input_sfreq_hz: float,
        output_sfreq_hz: float,
        n_channels: int,
        dtype: type | np.dtype = np.float32,
        max_chunk_samples: int = 4096,
        *,
        lowpass_hz: float | None = None,
        method: str | None = None,
    ) -> None:
        self.input_sfreq_hz = float(input_sfreq_hz)
        self.output_sfreq_hz = float(output_sfreq_hz)
        self.n_channels = int(n_channels)
        self.dtype = np.dtype(dtype)
        #: Input samples per output sample.
        self.ratio = self.input_sfreq_hz / self.output_sfreq_hz
        #: The converter: `LINEAR` or `SOXR_QQ`.
        self.method = method or resampler_method(self.input_sfreq_hz, self.output_sfreq_hz, lowpass_hz)
        if self.method == LINEAR:
            self._converter: _Linear | _Soxr = _Linear(self.input_sfreq_hz, self.output_sfreq_hz, self.n_channels)
        elif self.method == SOXR_QQ:
            self._converter = _Soxr(self.input_sfreq_hz, self.output_sfreq_hz, self.n_channels, self.dtype)
        else:
            raise ValueError(f"resampler: method {method!r}: expected {LINEAR!r} or {SOXR_QQ!r}")
        #: Input position of output sample 0, in input samples (0 for soxr).
        self.phase = self._converter.phase
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
        """Forget the signal: the next chunk starts a new one (its first sample is input 0)."""
        self._converter.clear()
        self._n_in = 0  # input samples given so far
        self._n_out = 0  # output samples returned so far

    # ---------------------------------------------------------------------------------------
    def input_position(self, output_index: int | np.ndarray) -> float | np.ndarray:
        """Fractional input sample index that output sample `output_index` represents."""
        return output_index * self.ratio + self.phase

    @property
    def pending_samples(self) -> float:
        """How far the newest output lags the newest input, in output samples: the EEG time
        from the instant of the newest sample returned to that of the newest sample given."""
        if self._n_in == 0:
            return 0.0
        lag = (self._n_in - 1) - self.input_position(self._n_out - 1)
        return max(0.0, float(lag) / self.ratio)  # a flush may run past the newest input

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
        y = self._converter.convert(chunk, last) if (n or last) else self._out[:0]
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
        position += self.phase
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
