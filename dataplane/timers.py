"""A deadline scheduler that coalesces time ranges, with handles that really cancel.

Theory of operation (the semantics of the reference's ``ts_time``, minus its stale-handle
bug): every event carries a window ``[start, end]`` (both inclusive) inside which it may
fire. ``next_dispatch_range()`` starts at the earliest ``start`` and narrows ``end`` to the
smallest ``end`` among all events whose ``start`` falls inside the range so far, so one
wake-up at ``next_dispatch()`` (= that ``end``) fires a whole cluster of nearby deadlines,
each inside its own window. ``dispatch(now)`` takes every event with ``start <= now`` (even if
its window has not ended: that is the coalescing) in ascending ``start`` order, ties first in
first out; an event whose window is long past is dispatched late, never dropped.

Unlike ``ts_time``, where dropping a handle does nothing and cancelled-by-replacement events
still fire, ``Handle.cancel()`` removes the event, and ``reschedule`` moves it; both are
no-ops once it fired. ``Scheduler.rearm`` replaces a timer's event in one call and leaves
it alone when its window does not change. The scheduler has no clock: ``now`` always comes
from the caller.

Storage is a list sorted by (start, sequence number), so insertion and cancellation are a
bisection plus a memmove, and dispatch pops a prefix. That stays cheap for the tens of
thousands of timers a large peer set needs.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from typing import Generic, NamedTuple, TypeVar

__all__ = ["TimeRange", "Handle", "Scheduler"]

E = TypeVar("E")
_INF = float("inf")


class TimeRange(NamedTuple):
    """An inclusive window ``[start, end]`` of monotonic seconds."""

    start: float
    end: float

    @classmethod
    def at(cls, t: float) -> TimeRange:
        return cls(t, t)

    @classmethod
    def around(cls, t: float, slack: float) -> TimeRange:
        return cls(t - slack, t + slack)

    def contains(self, t: float) -> bool:
        return self.start <= t <= self.end


class Handle(Generic[E]):
    """Names one scheduled event; ``cancel`` and ``reschedule`` act on it while pending."""

    __slots__ = ("_sched", "_key", "end", "event")

    def __init__(self, sched: Scheduler[E], key: tuple[float, int], end: float, event: E) -> None:
        self._sched: Scheduler[E] | None = sched
        self._key = key  # (start, sequence number): the entry's position in the scheduler
        self.end = end
        self.event = event

    @property
    def start(self) -> float:
        return self._key[0]

    @property
    def range(self) -> TimeRange:
        return TimeRange(self._key[0], self.end)

    @property
    def pending(self) -> bool:
        return self._sched is not None

    def cancel(self) -> bool:
        """Remove the event. Returns whether it was still pending."""
        sched = self._sched
        if sched is None:
            return False
        sched._remove(self)
        return True

    def reschedule(self, start: float, end: float | None = None) -> Handle[E] | None:
        """Move a pending event to a new window; None if it already fired or was cancelled."""
        sched = self._sched
        if sched is None:
            return None
        sched._remove(self)
        return sched.add(start, end, self.event)

    def __repr__(self) -> str:
        state = "pending" if self.pending else "done"
        return f"<Handle {self.event!r} [{self.range.start}, {self.range.end}] {state}>"


class Scheduler(Generic[E]):
    """Events with time windows; see the module docstring for the coalescing rule."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, Handle[E]]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Handle[E]]:
        return (h for _, _, h in self._entries)

    def add(self, start: float, end: float | None = None, event: E = None) -> Handle[E]:  # type: ignore[assignment]
        """Schedule ``event`` to fire inside ``[start, end]`` (``end`` defaults to ``start``)."""
        if end is None:
            end = start
        if not end >= start:  # also catches NaN
            raise ValueError(f"time range end {end} is before its start {start}")
        seq = next(self._seq)
        h = Handle(self, (start, seq), end, event)
        bisect.insort(self._entries, (start, seq, h))
        return h

    def rearm(self, h: Handle[E] | None, start: float, end: float, event: E) -> Handle[E]:
        """Cancel ``h`` (if given and still pending) and schedule ``event`` on ``[start, end]``.

        A pending ``h`` already on exactly that window is returned as it is, with its own
        event: re-arming to an unchanged deadline (every packet of a burst re-arms the same
        timers at the same ``now``) then neither removes nor re-sorts anything."""
        if h is not None and h._sched is self:
            if h._key[0] == start and h.end == end:
                return h
            self._remove(h)
        return self.add(start, end, event)

    def add_range(self, rng: TimeRange, event: E) -> Handle[E]:
        return self.add(rng.start, rng.end, event)

    def _remove(self, h: Handle[E]) -> None:
        # (start, seq) sorts just before the entry (start, seq, handle): no key function.
        i = bisect.bisect_left(self._entries, h._key)
        assert self._entries[i][2] is h
        del self._entries[i]
        h._sched = None

    def dispatch(self, now: float) -> list[E]:
        """Remove and return, in start order, every event whose window has started."""
        i = bisect.bisect_right(self._entries, (now, _INF))
        if not i:
            return []
        due = self._entries[:i]
        del self._entries[:i]
        out = []
        for _, _, h in due:
            h._sched = None
            out.append(h.event)
        return out

    def next_dispatch_range(self) -> TimeRange | None:
        """The range in which one dispatch fires the earliest cluster; may lie in the past."""
        if not self._entries:
            return None
        start, _, first = self._entries[0]
        end = first.end
        for s, _, h in self._entries:
            if s > end:
                break
            if h.end < end:
                end = h.end
        return TimeRange(start, end)

    def next_dispatch(self) -> float | None:
        rng = self.next_dispatch_range()
        return None if rng is None else rng.end

    def clear(self) -> None:
        for _, _, h in self._entries:
            h._sched = None
        self._entries.clear()
