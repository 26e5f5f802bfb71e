"""A readiness descriptor: an eventfd that is readable exactly while something is ready.

Overlay sockets are not kernel sockets, so ``select``, ``selectors`` and asyncio's
``add_reader`` cannot wait on them directly. Each socket that is asked for ``fileno()``
gets one of these: the netstack sets it when the socket becomes readable (data, end of
stream, an error, a connection to accept) and clears it when that is no longer so. It is
created on first use, so sockets nobody selects on cost no descriptor. Linux only
(``os.eventfd``, Python 3.10).
"""

from __future__ import annotations

import os


class Readiness:
    """Readable while ``set``; ``clear`` drains it. Not thread-safe on its own: callers
    hold the lock of whatever state it mirrors."""

    __slots__ = ("_fd", "_set")

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._set = False

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("readiness descriptor is closed")
        return self._fd

    def update(self, ready: bool) -> None:
        if ready and not self._set:
            os.eventfd_write(self._fd, 1)
            self._set = True
        elif not ready and self._set:
            try:
                os.eventfd_read(self._fd)
            except BlockingIOError:
                pass
            self._set = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._set = False
