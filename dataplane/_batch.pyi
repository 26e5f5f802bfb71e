"""Typing stub for dataplane._batch (see _batch.pyx)."""

from collections.abc import Iterable, Iterator
from enum import IntEnum

from typing_extensions import disjoint_base

class DropReason(IntEnum):
    OK = 0
    TOO_SHORT = 1
    BAD_TYPE = 2
    UNKNOWN_RECEIVER = 3
    REPLAY = 4
    BAD_TAG = 5
    COUNTER_LIMIT = 6
    NO_ROOM = 7
    EXPIRED = 8
    NO_ROUTE = 9
    ROUTE_DROP = 10
    SOURCE_FILTER = 11
    PACKET_FILTER = 12
    BAD_IP = 13
    UNCLASSIFIED = 14
    QUEUE_FULL = 15
    NO_SESSION = 16
    KEEPALIVE = 17
    HANDSHAKE = 18
    DISCO = 19
    STUN = 20
    TOO_BIG = 21
    CRYPTO_ERROR = 22
    BAD_CHECKSUM = 23
    FRAGMENT = 24
    CONSUMED = 25
    BAD_MAC = 26
    UNDER_LOAD = 27
    RATE_LIMITED = 28
    STALE = 29

STATUS_SLOTS: int
DEFAULT_CAPACITY: int
DEFAULT_MTU: int
DEFAULT_HEADROOM: int
DEFAULT_TAILROOM: int

_Endpoint = tuple[str, int]

@disjoint_base
class PacketBatch:
    capacity: int
    slot_size: int
    headroom: int
    tailroom: int
    def __new__(
        cls,
        capacity: int = ...,
        mtu: int = ...,
        headroom: int = ...,
        tailroom: int = ...,
        slot_size: int | None = ...,
    ) -> PacketBatch: ...
    @classmethod
    def from_packets(
        cls, packets: Iterable[bytes | bytearray | memoryview], **kwargs: int
    ) -> PacketBatch: ...
    @property
    def max_packet(self) -> int: ...
    @property
    def room(self) -> int: ...
    def __len__(self) -> int: ...
    def append(self, data: bytes | bytearray | memoryview) -> int: ...
    def extend(self, packets: Iterable[bytes | bytearray | memoryview]) -> None: ...
    def clear(self) -> None: ...
    def recycle(self) -> bool: ...
    def __getitem__(self, i: int) -> memoryview: ...
    def __iter__(self) -> Iterator[memoryview]: ...
    def packets(self, alive_only: bool = ...) -> list[bytes]: ...
    def slot(self, i: int) -> memoryview: ...
    def offset(self, i: int) -> int: ...
    def set_bounds(self, i: int, offset: int, length: int) -> None: ...
    def set_packet(self, i: int, data: bytes | bytearray | memoryview) -> None: ...
    def peer(self, i: int) -> int: ...
    def set_peer(self, i: int, peer: int) -> None: ...
    def status_of(self, i: int) -> DropReason: ...
    def set_status(self, i: int, status: int) -> None: ...
    def fill_peer(self, peer: int) -> None: ...
    def fill_endpoint(self, endpoint: _Endpoint) -> None: ...
    def endpoint(self, i: int) -> _Endpoint: ...
    def set_endpoint(self, i: int, endpoint: _Endpoint) -> None: ...
    def status_counts(self) -> list[int]: ...
    def alive(self) -> list[int]: ...
    @property
    def statuses(self) -> memoryview: ...
    @property
    def peer_ids(self) -> memoryview: ...
    @property
    def length_array(self) -> memoryview: ...
