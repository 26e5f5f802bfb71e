"""Scheduler: coalescing ranges (ts_time semantics) and handles that really cancel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.timers import Scheduler, TimeRange


def test_basic():
    s = Scheduler()
    s.add(1.0, 1.0, "a")
    assert s.next_dispatch_range() == TimeRange(1.0, 1.0)
    assert s.dispatch(0.999) == []
    assert s.dispatch(1.0) == ["a"]
    assert s.next_dispatch_range() is None and s.next_dispatch() is None
    assert s.dispatch(5.0) == []


def test_many_coalesces_overlapping_windows():
    s = Scheduler()
    for r in [(1, 9), (2, 8), (3, 7), (4, 6), (5, 5), (2, 4)]:
        s.add(r[0], r[1], r)
    rng = s.next_dispatch_range()
    assert rng == TimeRange(1, 4)
    fired = s.dispatch(rng.end)
    assert fired == [(1, 9), (2, 8), (2, 4), (3, 7), (4, 6)]
    assert all(a <= rng.end <= b for a, b in fired)
    assert s.next_dispatch_range() == TimeRange(5, 5)
    assert s.dispatch(5) == [(5, 5)]


def test_ties_dispatch_fifo_and_late_events_still_fire():
    s = Scheduler()
    for name in "abc":
        s.add(2.0, 3.0, name)
    assert s.dispatch(100.0) == ["a", "b", "c"]


def test_cancel_really_cancels_and_reschedule_moves():
    s = Scheduler()
    h1 = s.add(1.0, 2.0, "one")
    h2 = s.add(1.0, 2.0, "two")
    h3 = s.add(3.0, 3.0, "three")
    assert h1.cancel() and not h1.pending
    assert not h1.cancel()
    h2b = h2.reschedule(10.0, 11.0)
    assert h2b is not None and not h2.pending and h2b.pending
    assert s.dispatch(5.0) == ["three"]
    assert h3.reschedule(20.0) is None  # already fired
    assert s.next_dispatch_range() == TimeRange(10.0, 11.0)
    assert s.dispatch(11.0) == ["two"]
    assert len(s) == 0


def test_bad_range_rejected():
    with pytest.raises(ValueError):
        Scheduler().add(2.0, 1.0, "x")
    with pytest.raises(ValueError):
        Scheduler().add(float("nan"), None, "x")


def test_clear_makes_handles_inert():
    s = Scheduler()
    h = s.add(1.0, 1.0, "x")
    s.clear()
    assert not h.pending and h.reschedule(2.0) is None and s.dispatch(9) == []


@pytest.mark.parametrize(
    "ranges,ops",
    [
        # ts_time/proptest-regressions seeds, in seconds
        ([(0.001, 0.001), (0.001, 0.002)], None),
        ([(15.845, 15.845), (15.845, 15.845)], None),
    ],
)
def test_regression_seeds(ranges, ops):
    s = Scheduler()
    for i, (a, b) in enumerate(ranges):
        s.add(a, b, i)
    fired = []
    while (rng := s.next_dispatch_range()) is not None:
        got = s.dispatch(rng.end)
        assert got
        for i in got:
            a, b = ranges[i]
            assert a <= rng.end <= b
        fired += got
    assert sorted(fired) == list(range(len(ranges)))


def test_regression_add_dispatch_add():
    s = Scheduler()
    s.add(7.888, 55.678, "a")
    assert s.dispatch(s.next_dispatch()) == ["a"]
    s.add(0.001, 0.001, "b")
    assert s.dispatch(s.next_dispatch()) == ["b"]
    h = s.add(0.001, 0.001, "c")
    h2 = h.reschedule(0.001, 0.001)
    assert s.dispatch(1.0) == ["c"] and h2 is not None and not h2.pending


ranges_st = st.lists(
    st.tuples(st.integers(1, 65535), st.integers(0, 65535)).map(
        lambda t: (t[0] / 1000, (t[0] + t[1]) / 1000)
    ),
    min_size=1,
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(ranges_st)
def test_events_fire_once_inside_their_window_at_increasing_times(ranges):
    s = Scheduler()
    for i, (a, b) in enumerate(ranges):
        s.add(a, b, i)
    fired: list[int] = []
    last = float("-inf")
    while (t := s.next_dispatch()) is not None:
        assert t > last
        last = t
        got = s.dispatch(t)
        assert got
        for i in got:
            a, b = ranges[i]
            assert a <= t <= b
        fired += got
    assert sorted(fired) == list(range(len(ranges)))


op_st = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 100), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 200), st.just(0)),
    st.tuples(st.just("resched"), st.integers(0, 200), st.integers(0, 100)),
    st.tuples(st.just("dispatch"), st.integers(0, 150), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=60))
def test_handles_model(ops):
    """Against a brute-force model: no cancelled event fires, fired events are due, each once."""
    s = Scheduler()
    handles = []
    live: dict[int, tuple[float, float]] = {}  # event id -> window
    order: dict[int, int] = {}  # event id -> insertion sequence (ties fire FIFO)
    seq = 0
    fired: set[int] = set()
    now = 0.0
    ident = 0
    for op, a, b in ops:
        if op == "add":
            start = now + a
            h = s.add(start, start + b, ident)
            handles.append(h)
            live[ident] = (start, start + b)
            order[ident] = seq = seq + 1
            ident += 1
        elif op == "cancel" and handles:
            h = handles[a % len(handles)]
            was = h.event in live and h.pending
            assert h.cancel() == was
            live.pop(h.event, None) if was else None
        elif op == "resched" and handles:
            k = a % len(handles)
            h = handles[k]
            new = h.reschedule(now + b, now + b + 1)
            assert (new is None) == (h.event not in live)
            if new is not None:
                handles[k] = new
                live[h.event] = (now + b, now + b + 1)
                order[h.event] = seq = seq + 1
        elif op == "dispatch":
            now += a
            got = s.dispatch(now)
            expect = sorted((w[0], order[e], e) for e, w in live.items() if w[0] <= now)
            assert got == [e for _, _, e in expect]
            for e in got:
                assert e not in fired
                fired.add(e)
                del live[e]
        assert len(s) == len(live)
        rng = s.next_dispatch_range()
        if live:
            first = min(w[0] for w in live.values())
            assert rng is not None and rng.start == first and rng.end >= first
        else:
            assert rng is None
