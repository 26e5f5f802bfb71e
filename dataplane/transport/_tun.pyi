"""Typing stub for dataplane.transport._tun (see _tun.pyx)."""

from typing_extensions import disjoint_base

from dataplane._batch import PacketBatch

@disjoint_base
class TunIO:
    rx_packets: int
    rx_bytes: int
    rx_too_big: int
    rx_offloaded: int
    rx_offload_errors: int
    vnet_hdr: bool
    tx_packets: int
    tx_bytes: int
    tx_failed: int
    tx_merged: int
    def __new__(cls, fd: int, wake_fd: int = ..., vnet_hdr: bool = ...) -> TunIO: ...
    def read(self, batch: PacketBatch, timeout: float = ...) -> int: ...
    def write(self, batch: PacketBatch) -> tuple[int, dict[int, int]]: ...
    def device_failed(self) -> bool: ...

def split_offloaded(
    data: bytes | bytearray | memoryview, batch: PacketBatch, first: int = ...
) -> tuple[int, int]: ...
