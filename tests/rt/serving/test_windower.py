"""Windower: when a window is due, what it publishes, what is skipped and counted."""

from __future__ import annotations

import pytest

from brainformer_rt.serving.windower import Windower


def test_first_window_needs_a_full_window_then_every_hop():
    w = Windower(window_samples=8, hop_samples=2)
    assert [w.poll(n) for n in range(0, 8)] == [0] * 8
    assert w.poll(8) == 2  # first window: its newest hop samples
    assert w.poll(9) == 0
    assert w.poll(10) == 2
    assert w.poll(12) == 2
    assert (w.windows_served, w.windows_skipped, w.samples_unpublished) == (3, 0, 0)


def test_sample_by_sample_input_publishes_every_sample_exactly_once():
    window, hop = 16, 4
    w = Windower(window, hop)
    published_ends = []
    published = 0
    for total in range(1, 200):
        n = w.poll(total)
        if n:
            published_ends.append(total)
            published += n
    assert published_ends == list(range(window, 200, hop))
    # Samples window-hop+1 … last served end are covered once each.
    assert published == published_ends[-1] - (window - hop)
    assert w.windows_skipped == 0 and w.samples_unpublished == 0


def test_chunks_larger_than_a_hop_publish_all_new_samples_and_count_skips():
    w = Windower(window_samples=8, hop_samples=2)
    assert w.poll(8) == 2
    # 5 new samples at once: the windows ending at 10 and 12 are replaced by the one ending at 13.
    assert w.poll(13) == 5
    assert w.windows_skipped == 1
    assert w.samples_unpublished == 0
    assert w.poll(14) == 0  # only one new sample since the last window


def test_falling_behind_more_than_a_window_serves_the_newest_and_counts_the_loss():
    w = Windower(window_samples=8, hop_samples=2)
    assert w.poll(8) == 2
    assert w.poll(30) == 8  # capped at one window
    assert w.windows_skipped == 22 // 2 - 1
    assert w.samples_unpublished == 22 - 8
    assert w.windows_served == 2


def test_samples_until_due_counts_down_to_the_next_window():
    w = Windower(window_samples=8, hop_samples=2)
    assert [w.samples_until_due(n) for n in (0, 5, 7)] == [8, 3, 1]
    assert w.poll(8) == 2
    assert [w.samples_until_due(n) for n in (8, 9)] == [2, 1]
    assert w.poll(10) == 2 and w.samples_until_due(11) == 1  # never 0 or less


def test_max_publish_caps_what_a_late_window_publishes_and_counts_the_rest():
    w = Windower(window_samples=8, hop_samples=2, max_publish=4)
    assert w.poll(8) == 2
    assert w.poll(12) == 4  # two hops late: still everything
    assert w.poll(18) == 4  # three hops late: the engine predicts only the newest 4
    assert w.samples_unpublished == 2
    first = w.poll(20)
    assert w.supersede(first, w.poll(24)) == 4 and w.samples_unpublished == 4
    for bad in (1, 9, 4.0):
        with pytest.raises(ValueError, match="max_publish"):
            Windower(8, 2, max_publish=bad)


def test_reset_waits_for_a_fresh_full_window():
    w = Windower(window_samples=8, hop_samples=2)
    assert w.poll(8) == 2
    w.reset(9)  # a gap after sample 9: the old samples may not be mixed with new ones
    assert [w.poll(n) for n in range(10, 17)] == [0] * 7
    assert w.poll(17) == 2


def test_drop_counts_the_window_as_skipped_and_its_samples_as_unpublished():
    w = Windower(window_samples=8, hop_samples=4)
    n = w.poll(8)
    w.drop(n)
    assert (w.windows_served, w.windows_skipped, w.samples_unpublished) == (0, 1, 4)
    assert w.poll(12) == 4  # the dropped samples are not re-published later


@pytest.mark.parametrize("window, hop", [(0, 1), (8, 0), (8, 9), (8, 2.0)])
def test_invalid_sizes_are_refused(window, hop):
    with pytest.raises(ValueError, match="_samples"):
        Windower(window, hop)


def test_a_window_superseded_before_it_ran_is_skipped_and_its_samples_move_on():
    w = Windower(window_samples=8, hop_samples=2)
    first = w.poll(8)
    second = w.poll(10)
    assert w.supersede(first, second) == 4  # the newer window publishes both ranges
    assert (w.windows_served, w.windows_skipped, w.samples_unpublished) == (1, 1, 0)
    third = w.poll(16)
    assert w.supersede(6, third) == 8  # capped at one window
    assert w.samples_unpublished == 6 + 6 - 8
