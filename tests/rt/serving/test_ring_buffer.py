import numpy as np
import pytest

from brainformer_rt.serving.ring_buffer import RingBuffer


def _chunks(n_total: int, n_channels: int, sizes: list[int]):
    """Consecutive chunks of a ramp: sample k has value k + channel/100 and timestamp k/10."""
    values = np.arange(n_total, dtype=np.float64)[:, None] + np.arange(n_channels)[None, :] / 100
    timestamps = np.arange(n_total) / 10.0
    start = 0
    for size in sizes:
        yield values[start:start + size], timestamps[start:start + size]
        start += size


def test_latest_returns_the_newest_samples_in_order_across_many_wraps():
    ring = RingBuffer(capacity_samples=7, n_channels=3, dtype=np.float64)
    sizes = [1, 2, 3, 5, 7, 1, 6, 4, 2, 3, 5, 1, 1, 7, 2]
    history_values, history_timestamps = [], []
    for values, timestamps in _chunks(sum(sizes), 3, sizes):
        ring.write(values, timestamps)
        history_values.append(values)
        history_timestamps.append(timestamps)
        all_values = np.concatenate(history_values)
        all_timestamps = np.concatenate(history_timestamps)
        assert ring.total_written == len(all_timestamps)
        for n in range(0, ring.available_samples + 1):
            data, stamps = ring.latest(n)
            np.testing.assert_array_equal(data, all_values[len(all_values) - n:])
            np.testing.assert_array_equal(stamps, all_timestamps[len(all_timestamps) - n:])


def test_latest_is_a_contiguous_view_without_copy():
    ring = RingBuffer(capacity_samples=8, n_channels=4)
    for values, timestamps in _chunks(13, 4, [5, 5, 3]):  # the newest 8 straddle the wrap point
        ring.write(values, timestamps)
    data, stamps = ring.latest(8)
    assert data.flags.c_contiguous and stamps.flags.c_contiguous
    assert np.shares_memory(data, ring._data) and np.shares_memory(stamps, ring._timestamps)
    assert data.dtype == np.float32 and data.shape == (8, 4)
    np.testing.assert_array_equal(stamps, np.arange(5, 13) / 10.0)


def test_chunk_larger_than_capacity_keeps_only_the_newest():
    ring = RingBuffer(capacity_samples=4, n_channels=2, dtype=np.float64)
    ring.write(*next(_chunks(3, 2, [3])))  # head not at 0 before the big write
    values, timestamps = next(_chunks(10, 2, [10]))
    ring.write(values, timestamps)
    assert ring.total_written == 13
    data, stamps = ring.latest(4)
    np.testing.assert_array_equal(data, values[-4:])
    np.testing.assert_array_equal(stamps, timestamps[-4:])


def test_latest_more_than_available_raises():
    ring = RingBuffer(capacity_samples=10, n_channels=1)
    ring.write(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="3 samples available"):
        ring.latest(4)


def test_clear_forgets_samples_but_keeps_counting():
    ring = RingBuffer(capacity_samples=5, n_channels=2, dtype=np.float64)
    for values, timestamps in _chunks(6, 2, [6]):
        ring.write(values, timestamps)
    ring.clear()
    assert ring.available_samples == 0 and ring.total_written == 6
    with pytest.raises(ValueError):
        ring.latest(1)
    ring.write(np.full((2, 2), 7.0), np.array([10.0, 10.1]))
    data, stamps = ring.latest(2)
    np.testing.assert_array_equal(data, np.full((2, 2), 7.0))
    np.testing.assert_array_equal(stamps, [10.0, 10.1])
    assert ring.total_written == 8


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 2)])
def test_write_rejects_wrong_shapes(shape):
    ring = RingBuffer(capacity_samples=5, n_channels=2)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        ring.write(np.zeros(shape), np.zeros(3))


@pytest.mark.parametrize("capacity, channels", [(0, 1), (4, 0), (2.5, 1)])
def test_constructor_rejects_bad_sizes(capacity, channels):
    with pytest.raises(ValueError):
        RingBuffer(capacity, channels)
