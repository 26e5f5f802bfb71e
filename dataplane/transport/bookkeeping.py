"""When a transport thread hands the established-session path's bookkeeping to the core.

``Express`` (``transport/_express.pyx``) sends and delivers bursts of established sessions
without Python, and its pump stays in C from one burst to the next; the core still has to
learn what went through (counters, WireGuard timers, rekeying; roaming already took effect
in C). Doing that right after every burst put a few hundred microseconds of cold
interpreter on a CPU that the next leg of a round trip needed (on two cores a ping's RTT
went from 0.54 to 0.95 ms). So the first handled burst makes the bookkeeping *due*
``ACCOUNT_DELAY`` later; the pump returns to its thread once that time has passed (at once
if bursts keep coming, else when its wait times out then), and the thread submits an
empty batch, which makes the core drain the path's tallies. Any batch the core processes
drains them too.

The delay bounds how late the core sees the traffic: counters in ``wg show`` lag by at most
this much, and the timers it arms fire seconds after the events they follow.
"""

from __future__ import annotations

import time
from typing import Any

from dataplane._batch import PacketBatch

__all__ = ["ACCOUNT_DELAY", "bookkeeping_due", "hand_over"]

ACCOUNT_DELAY = 0.005
"""Longest a transport thread defers the bookkeeping of handled bursts (seconds)."""


def hand_over(port: Any, batch: PacketBatch, capacity: int, mtu: int) -> tuple[PacketBatch, bool]:
    """Submit ``batch`` on the driver input ``port``; returns the batch to read into next
    and whether the driver refused this one (its queue full).

    A batch processed inline and let go of is read into again (no ~188 KB allocation per
    read); one that was queued or delivered onwards is replaced by a fresh one.
    """
    refused = not port.submit(batch)
    if not batch.recycle():
        batch = PacketBatch(capacity, mtu=mtu)
    return batch, refused


def bookkeeping_due(due: float) -> bool:
    """Whether bookkeeping owed since a pump set ``due`` (0: nothing owed) must run now."""
    return due > 0 and time.monotonic() >= due
