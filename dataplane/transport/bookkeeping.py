"""When a transport thread hands the established-session path's bookkeeping to the core.

``Express`` (``transport/_express.pyx``) sends and delivers batches of established
sessions without Python; the core still has to learn what went through (counters,
WireGuard timers, roaming, rekeying). Doing that right after every batch put a few hundred
microseconds of cold interpreter on a CPU that the next leg of a round trip needed (on two
cores a ping's RTT went from 0.54 to 0.95 ms). So a transport thread defers it: the first
handled batch starts a ``ACCOUNT_DELAY`` clock, and once it has run out the thread submits
an empty batch, which makes the core drain the path's tallies, on the next wake-up or
when its poll times out at the due time (``timeout``), whichever comes first. Any batch
the core processes drains them too.

The delay bounds how late the core sees the traffic: timers fire seconds after the events
they follow, and a roamed peer is answered at its new address at most this much later.
"""

from __future__ import annotations

import time

__all__ = ["ACCOUNT_DELAY", "Bookkeeping"]

ACCOUNT_DELAY = 0.005
"""Longest a transport thread defers the bookkeeping of handled batches (seconds)."""


class Bookkeeping:
    """One transport thread's deferral clock (not thread-safe: one per thread)."""

    def __init__(self, delay: float = ACCOUNT_DELAY) -> None:
        self.delay = delay
        self._due: float | None = None

    def timeout(self, idle: float) -> float:
        """How long the next wait for input may last: ``idle``, or until bookkeeping is due."""
        due = self._due
        if due is None:
            return idle
        return max(0.0, min(idle, due - time.monotonic()))

    def due(self, handled: bool) -> bool:
        """After a pump (``handled``: the path took the batch): submit the bookkeeping now?"""
        due = self._due
        if due is None:
            if handled:
                self._due = time.monotonic() + self.delay
            return False
        return time.monotonic() >= due

    def settled(self) -> None:
        """A batch is going to the core, which drains everything: nothing is owed."""
        self._due = None
