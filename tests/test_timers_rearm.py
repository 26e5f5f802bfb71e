"""Scheduler.rearm: replace a timer's event in one call, keep it when the window is unchanged."""

from dataplane.timers import Scheduler


def test_rearm_moves_the_event_and_cancels_the_old_one():
    s: Scheduler[str] = Scheduler()
    old = s.add(5.0, 6.0, "old")
    new = s.rearm(old, 8.0, 9.0, "new")
    assert new is not old and not old.pending and new.pending
    assert len(s) == 1
    assert s.dispatch(7.0) == []  # the old window passed: nothing of it is left
    assert s.dispatch(8.0) == ["new"]


def test_rearm_to_the_same_window_keeps_handle_and_event():
    s: Scheduler[str] = Scheduler()
    other = s.add(5.0, 5.0, "other")
    h = s.add(5.0, 6.0, "first")
    assert s.rearm(h, 5.0, 6.0, "second") is h
    assert h.event == "first" and len(s) == 2 and other.pending
    assert s.dispatch(5.0) == ["other", "first"]  # its place among equal starts is kept


def test_rearm_of_none_or_a_finished_handle_schedules_anew():
    s: Scheduler[str] = Scheduler()
    a = s.rearm(None, 1.0, 2.0, "a")
    assert a.pending and s.dispatch(1.0) == ["a"]
    b = s.rearm(a, 1.0, 2.0, "b")  # a fired: same window or not, b is a new event
    assert b is not a and b.pending and s.dispatch(1.0) == ["b"]
    c = s.add(3.0, 3.0, "c")
    c.cancel()
    d = s.rearm(c, 3.0, 3.0, "d")
    assert d is not c and s.dispatch(3.0) == ["d"]


def test_rearm_of_another_schedulers_handle_leaves_it_alone():
    s1: Scheduler[str] = Scheduler()
    s2: Scheduler[str] = Scheduler()
    foreign = s2.add(1.0, 1.0, "foreign")
    mine = s1.rearm(foreign, 1.0, 1.0, "mine")
    assert mine is not foreign and foreign.pending
    assert s1.dispatch(1.0) == ["mine"] and s2.dispatch(1.0) == ["foreign"]
