"""Receiver indices: random, non-zero, unique 32-bit session ids (whitepaper §5.4.2).

Theory of operation: every pending initiation and every keypair owns one index, chosen at
random so that indices reveal nothing and cannot be guessed; the table maps it back to the
peer and the object (``PendingInitiation`` or ``Keypair``) that owns it. 0 is never handed
out: the device uses it nowhere, but wireguard-go peers and our tests treat it as "none",
and a random 0 once made a reference session unreachable. An index is freed when its owner
dies (handshake completed or abandoned, keypair replaced, expired or wiped).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["IndexTable", "UrandomBits"]


class UrandomBits:
    """``getrandbits`` from os.urandom, drawn 1 KiB at a time: one system call per 256
    indices instead of one per handshake. Indices go on the wire in clear, so holding
    unused ones in memory reveals nothing."""

    def __init__(self) -> None:
        self._pool: list[int] = []

    def getrandbits(self, k: int) -> int:
        if k != 32:
            return int.from_bytes(os.urandom((k + 7) // 8), "little") >> (-k % 8)
        if not self._pool:
            self._pool = memoryview(os.urandom(1024)).cast("I").tolist()
        return self._pool.pop()


class IndexTable:
    def __init__(self, randbits: Callable[[int], int]) -> None:
        self._randbits = randbits
        self._table: dict[int, tuple[Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, index: int) -> bool:
        return index in self._table

    def new_index(self, peer: Any, owner: Any) -> int:
        while True:
            index = self._randbits(32)
            if index and index not in self._table:
                self._table[index] = (peer, owner)
                return index

    def set_owner(self, index: int, peer: Any, owner: Any) -> None:
        """Hand an existing index to a new owner (a completed initiation becomes a keypair)."""
        if index not in self._table:
            raise KeyError(f"index {index:#010x} is not allocated")
        self._table[index] = (peer, owner)

    def lookup(self, index: int) -> tuple[Any, Any] | None:
        return self._table.get(index)

    def free(self, index: int) -> None:
        self._table.pop(index, None)
