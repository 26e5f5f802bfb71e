"""Typing stub for dataplane.transport._udp (see _udp.pyx)."""

from typing_extensions import disjoint_base

from dataplane._batch import PacketBatch

def pack_endpoint(endpoint: tuple[str, int]) -> tuple[bytes, int]: ...

@disjoint_base
class BatchIO:
    rx_packets: int
    rx_bytes: int
    rx_truncated: int
    @property
    def rx_kernel_dropped(self) -> int: ...
    tx_packets: int
    tx_bytes: int
    tx_failed: int
    gso: bool
    def __new__(cls, fd: int, family: int, capacity: int = ..., wake_fd: int = ...) -> BatchIO: ...
    def recv(self, batch: PacketBatch, timeout: float = ...) -> int: ...
    def send(
        self, batch: PacketBatch, endpoint: tuple[str, int] | None = ...
    ) -> tuple[int, list[int]]: ...
