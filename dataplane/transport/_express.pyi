from typing_extensions import disjoint_base

from dataplane._batch import PacketBatch
from dataplane._crypto import ReceiveKey, ReplayWindow, SendKey
from dataplane.routing._lpm import LpmTable
from dataplane.transport._tun import TunIO
from dataplane.transport._udp import BatchIO

@disjoint_base
class Express:
    overlay_id: int
    mtu: int
    enabled: bool
    outbound_batches: int
    inbound_batches: int
    outbound_declined: int
    inbound_declined: int
    def __init__(self) -> None: ...
    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def disable(self) -> None: ...
    def set_udp(self, fd: int, family: int, capacity: int = ...) -> None: ...
    def set_tun(self, fd: int, vnet_hdr: bool) -> None: ...
    def install(
        self,
        enabled: bool,
        overlay_id: int,
        mtu: int,
        out_table: LpmTable,
        in_table: LpmTable,
        src_table: LpmTable,
        senders: list[tuple[int, SendKey, int, float, int, bytes, int]],
        receivers: list[tuple[int, int, ReceiveKey, ReplayWindow, float]],
    ) -> None: ...
    def drain(
        self,
    ) -> tuple[
        list[tuple[int, int, int, int, int, int, tuple[str, int] | None, bool]],
        dict[int, int],
        dict[int, int],
        dict[int, int],
        int,
    ]: ...
    @property
    def pending(self) -> bool: ...
    def pump_outbound(
        self, tun: TunIO, batch: PacketBatch, timeout: float, due: float = ..., delay: float = ...
    ) -> tuple[int, float]: ...
    def pump_inbound(
        self, udp: BatchIO, batch: PacketBatch, timeout: float, due: float = ..., delay: float = ...
    ) -> tuple[int, float]: ...
