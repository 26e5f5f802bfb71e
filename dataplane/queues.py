"""Bounded, non-blocking-for-the-producer queues between the driver and its transports.

Theory of operation: a ``BatchQueue`` carries whole batches, never single packets. ``put``
never blocks: when the queue is full the *new* item is refused (tail drop, as a NIC ring
does), counted in ``dropped`` together with the packets it held, and ``put`` returns False.
That keeps the driver from ever waiting on a slow transport and keeps memory bounded.
Consumers block in ``get(timeout)``; ``close()`` wakes them and makes further ``get`` calls
raise ``QueueClosed`` once the queue is drained, and further ``put`` calls drop.

A queue may share its ``Condition`` with other queues (the driver's input queues all share
the driver's), so one ``wait`` covers every source.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_DEPTH = 256


class QueueClosed(Exception):
    """The queue was closed and has nothing left to give."""


def packets_in(item: object) -> int:
    """Packets carried by a queue item: a batch, or a tuple whose last element is one."""
    batch = item[-1] if isinstance(item, tuple) else item
    try:
        return len(batch)  # type: ignore[arg-type]
    except TypeError:
        return 1


class BatchQueue(Generic[T]):
    """A bounded FIFO of batches with tail drop and drop accounting."""

    def __init__(
        self,
        maxlen: int = DEFAULT_DEPTH,
        name: str = "queue",
        cond: threading.Condition | None = None,
    ) -> None:
        if maxlen <= 0:
            raise ValueError(f"queue depth must be positive, got {maxlen}")
        self.name = name
        self.maxlen = maxlen
        self._items: deque[T] = deque()
        self._cond = cond if cond is not None else threading.Condition()
        self._closed = False
        self._room_waiters = 0
        self._interrupted = False
        self.dropped = 0  # items refused
        self.dropped_packets = 0  # packets inside the refused items
        self.enqueued = 0

    def put(self, item: T) -> bool:
        """Append ``item`` unless the queue is full or closed; never blocks."""
        with self._cond:
            if self._closed or len(self._items) >= self.maxlen:
                self.dropped += 1
                self.dropped_packets += packets_in(item)
                return False
            self._items.append(item)
            self.enqueued += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Next item, waiting up to ``timeout`` seconds (None = forever); None on timeout
        or after ``interrupt``.

        Raises ``QueueClosed`` once the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed and not self._interrupted:
                self._cond.wait_for(
                    lambda: self._items or self._closed or self._interrupted, timeout
                )
            self._interrupted = False
            if self._items:
                return self._pop_locked()
            if self._closed:
                raise QueueClosed(self.name)
            return None

    def interrupt(self) -> None:
        """Make the consumer's current (or next) ``get`` return None at once: for a
        consumer that also waits for something else (a timer that moved earlier)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def get_nowait(self) -> T | None:
        with self._cond:
            return self._pop_locked()

    def _pop_locked(self) -> T | None:
        # For owners that already hold the (possibly shared) condition.
        if not self._items:
            return None
        item = self._items.popleft()
        if self._room_waiters:
            self._cond.notify_all()
        return item

    def full(self) -> bool:
        return len(self._items) >= self.maxlen

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until ``put`` would be accepted (or the queue closes); False on timeout.

        For producers that prefer back-pressure to drops; the driver itself never waits.
        """
        with self._cond:
            self._room_waiters += 1
            try:
                return self._cond.wait_for(
                    lambda: self._closed or len(self._items) < self.maxlen, timeout
                )
            finally:
                self._room_waiters -= 1

    def wait_below(self, depth: int, timeout: float | None = None) -> bool:
        """Block until fewer than ``depth`` items are queued (or the queue closes); False
        on timeout. For producers that keep the queue short on purpose."""
        with self._cond:
            self._room_waiters += 1
            try:
                return self._cond.wait_for(
                    lambda: self._closed or len(self._items) < depth, timeout
                )
            finally:
                self._room_waiters -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<BatchQueue {self.name} {len(self._items)}/{self.maxlen}"
            f" dropped={self.dropped}{' closed' if self._closed else ''}>"
        )
