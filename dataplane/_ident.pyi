"""Typing stub for dataplane._ident (see _ident.pyx)."""

from collections.abc import Iterable
from typing import Final, TypeVar, overload

from dataplane._batch import PacketBatch

# Base kinds (``kind & BASE_MASK``); the WireGuard ones equal the message type byte.
UNCLASSIFIED: Final[int]  # 0
WG_INITIATION: Final[int]  # 1
WG_RESPONSE: Final[int]  # 2
WG_COOKIE: Final[int]  # 3
WG_DATA: Final[int]  # 4
DISCO: Final[int]  # 5
STUN: Final[int]  # 6
N_KINDS: Final[int]  # 7
# Flags or-ed into the kind of a Geneve-encapsulated datagram.
GENEVE: Final[int]  # 0x80
GENEVE_CONTROL: Final[int]  # 0x40, the Geneve O bit
BASE_MASK: Final[int]  # 0x3F
COUNT_GENEVE: Final[int]  # index of the Geneve total in kind_counts()

GENEVE_PROTO_DISCO: Final[int]  # 0x7A11
GENEVE_PROTO_WIREGUARD: Final[int]  # 0x7A12
DISCO_MAGIC: Final[bytes]
MIN_DATAGRAM: Final[int]

_Kinds = TypeVar("_Kinds", bytearray, memoryview)

@overload
def classify(batch: PacketBatch, kinds: None = ..., vnis: memoryview | None = ...) -> bytearray: ...
@overload
def classify(batch: PacketBatch, kinds: _Kinds, vnis: memoryview | None = ...) -> _Kinds: ...
def unpad(batch: PacketBatch) -> int: ...
def kind_counts(
    batch: PacketBatch, kinds: bytes | bytearray | memoryview, alive_only: bool = ...
) -> list[int]: ...
def consume(
    batch: PacketBatch,
    kinds: bytes | bytearray | memoryview,
    wanted: Iterable[int],
    status: int,
) -> list[int]: ...
