"""TAI64N timestamps for handshake initiations (whitepaper §5.4.2), monotonic per clock.

Theory of operation: an initiation carries the sender's wall time as TAI64N (12 bytes:
seconds + 2^62 + 10 as u64 big-endian, then nanoseconds as u32 big-endian). The responder
keeps the greatest timestamp seen per peer and drops initiations that are not newer, which
defeats replays. Two consequences shape this module:

* the nanoseconds are *whitened* (rounded down to 2^24 ns, ~16.8 ms) so that the timestamp
  does not leak precise timing;
* our own timestamps must never go backwards, even when the injected wall clock steps back
  (NTP), or the peer would drop our initiations until the clock caught up. ``TAI64NClock``
  therefore returns ``last + 2^24 ns`` whenever the wall clock would not produce a larger
  value. The nanosecond field may then pass 10^9; it carries into the seconds only on u32
  overflow, and ordering stays the lexicographic order of the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

__all__ = ["TAI64N_BASE", "WHITENER_MASK", "tai64n", "TAI64NClock"]

TAI64N_BASE = 0x400000000000000A  # 2^62 + 10 (TAI - UTC offset used by WireGuard)
WHITENER_MASK = 0x1000000 - 1  # low 24 bits of the nanoseconds are cleared
_STEP = WHITENER_MASK + 1
_PACK = struct.Struct(">QI")


def _split(unix_time: float) -> tuple[int, int]:
    secs = math.floor(unix_time)
    nanos = int((unix_time - secs) * 1e9)
    nanos = min(nanos, 999_999_999) & ~WHITENER_MASK
    return TAI64N_BASE + secs, nanos


def tai64n(unix_time: float) -> bytes:
    """The whitened 12-byte TAI64N form of a UNIX time in seconds."""
    secs, nanos = _split(unix_time)
    return _PACK.pack(secs & 0xFFFFFFFFFFFFFFFF, nanos)


def unpack(stamp: bytes) -> tuple[int, int]:
    """(seconds, nanoseconds) of a 12-byte timestamp."""
    return _PACK.unpack(stamp)


class TAI64NClock:
    """Strictly increasing TAI64N timestamps from an injectable wall clock (UNIX seconds)."""

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._wall = wall_clock
        self._last: tuple[int, int] | None = None

    def now(self) -> bytes:
        cur = _split(self._wall())
        last = self._last
        if last is not None and cur <= last:
            secs, nanos = last
            nanos += _STEP
            if nanos > 0xFFFFFFFF:
                secs += 1
                nanos &= 0xFFFFFFFF
            cur = (secs, nanos)
        self._last = cur
        return _PACK.pack(cur[0] & 0xFFFFFFFFFFFFFFFF, cur[1])
