"""EventLog: exact per-item counts, windows and last events strictly before a query time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrec.data.eventlog import NEVER, EventLog


def _brute(items: np.ndarray, times: np.ndarray, n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    before = times < t
    counts = np.bincount(items[before], minlength=n + 1)
    last = np.full(n + 1, NEVER, dtype=np.int64)
    for i, ts in zip(items[before], times[before], strict=True):
        last[i] = max(last[i], ts)
    return counts, last


@pytest.mark.parametrize("max_snapshots", [1, 3, 64, 10_000])
def test_counts_and_last_events_equal_a_brute_force_count(max_snapshots):
    rng = np.random.default_rng(0)
    n, e = 17, 400
    items = rng.integers(1, n + 1, e)
    times = rng.integers(0, 50, e) * 86_400  # day-granular: many same-time ties
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, max_snapshots)
    # every event time exactly (the cut), one second either side, and outside the span
    query = np.unique(np.concatenate([times, times - 1, times + 1, [-5, 10**10]]))
    counts, last = (
        log.counts_before(torch.from_numpy(query)),
        log.last_before(torch.from_numpy(query)),
    )
    assert counts.shape == last.shape == (len(query), n + 1)
    for q, t in enumerate(query):
        want_counts, want_last = _brute(items, times, n, int(t))
        np.testing.assert_array_equal(counts[q].numpy(), want_counts)
        np.testing.assert_array_equal(last[q].numpy(), want_last)


def test_an_event_at_the_query_time_is_not_seen_one_before_it_is():
    day = 86_400
    log = EventLog(torch.tensor([1, 2, 2]), torch.tensor([10 * day, 10 * day, 9 * day]), 3)
    at = log.counts_before(torch.tensor([10 * day, 10 * day + 1, 9 * day]))
    assert at.tolist() == [[0, 0, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert log.last_before(torch.tensor([10 * day]))[0, 2] == 9 * day
    assert log.last_before(torch.tensor([10 * day]))[0, 1] == NEVER
    windows = log.window_counts(torch.tensor([11 * day]), [day, 2 * day, 0])
    assert windows[0].tolist() == [[0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert log.first_time.tolist()[1:3] == [10 * day, 9 * day] and log.first_time[3] > 10**18


def test_memory_per_item_is_bounded_by_the_snapshots():
    rng = np.random.default_rng(1)
    n = 1000
    small = EventLog(torch.from_numpy(rng.integers(1, n + 1, 2_000)), torch.arange(2_000), n, 8)
    big = EventLog(torch.from_numpy(rng.integers(1, n + 1, 200_000)), torch.arange(200_000), n, 8)
    assert small.nbytes_per_item() == big.nbytes_per_item() == pytest.approx(9 * 12 + 8, rel=0.01)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="item ids must be in 0..3"):
        EventLog(torch.tensor([4]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match=r"\[E\] each"):
        EventLog(torch.tensor([1, 2]), torch.tensor([0]), 3)
