"""Two (or more) sans-I/O TcpStacks on a simulated network, in simulated time.

``Net`` carries the IP packets each stack emits to the stack owning the destination
address after ``delay`` seconds, with seeded loss, duplication and reordering (extra
delay), and a bandwidth limit if given; ``run`` advances time from event to event
(deliveries and the stacks' timer deadlines), so minutes of protocol time take
milliseconds. Tests reach into the stacks directly: ``net.stack(A).connect(...)``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dataplane._batch import PacketBatch
from dataplane.netstack._ip import pack_address
from dataplane.netstack.tcp import TcpLimits, TcpStack

A = "10.0.0.1"
B = "10.0.0.2"
A6 = "fd00::1"
B6 = "fd00::2"


@dataclass
class Impairment:
    delay: float = 0.005
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability that a packet takes reorder_delay extra
    reorder_delay: float = 0.004
    rate: float = 0.0  # bytes per second, 0 = unlimited
    drop: Callable[[bytes], bool] | None = None  # drop packets it says True for


@dataclass(order=True)
class _Delivery:
    when: float
    seq: int
    dst: bytes = field(compare=False)
    packet: bytes = field(compare=False)


class Net:
    def __init__(
        self,
        *addresses: str,
        impairment: Impairment | None = None,
        seed: int = 1,
        limits: TcpLimits | None = None,
        mtu: int = 1420,
        start: float = 1000.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.imp = impairment or Impairment()
        self.now = start
        self.stacks: dict[bytes, TcpStack] = {}
        by_owner: dict[int, list[bytes]] = {}
        for k, text in enumerate(addresses or (A, B)):
            by_owner.setdefault(k, []).append(pack_address(text))
        for k, packed in by_owner.items():
            stack = TcpStack(
                packed,
                mtu=mtu,
                limits=limits or TcpLimits(),
                secret=bytes([k]) * 32,
                rng=random.Random(seed * 100 + k),
            )
            for p in packed:
                self.stacks[p] = stack
        self._queue: list[_Delivery] = []
        self._seq = 0
        self._link_free = 0.0
        self.sent: list[bytes] = []  # every packet put on the wire (for assertions)
        self.delivered = 0
        self.dropped = 0
        self.trace: Callable[[float, bytes, bytes], None] | None = None

    def stack(self, address: str) -> TcpStack:
        return self.stacks[pack_address(address)]

    def flush(self) -> None:
        """Put every stack's pending output on the wire."""
        for stack in set(self.stacks.values()):
            for batch in stack.take_output():
                for pkt in batch.packets():
                    self._send(bytes(pkt))

    def inject(self, packet: bytes, delay: float = 0.0) -> None:
        """Deliver a hand-made IP packet to its destination after ``delay``."""
        self._push(self.now + delay, packet)

    def _send(self, pkt: bytes) -> None:
        self.sent.append(pkt)
        if self.trace:
            self.trace(self.now, _dst(pkt), pkt)
        imp = self.imp
        if imp.drop is not None and imp.drop(pkt):
            self.dropped += 1
            return
        if imp.loss and self.rng.random() < imp.loss:
            self.dropped += 1
            return
        when = self.now + imp.delay
        if imp.rate:
            start = max(self.now, self._link_free)
            self._link_free = start + len(pkt) / imp.rate
            when = self._link_free + imp.delay
        if imp.reorder and self.rng.random() < imp.reorder:
            when += imp.reorder_delay
        self._push(when, pkt)
        if imp.duplicate and self.rng.random() < imp.duplicate:
            self._push(when + 0.0001, pkt)

    def _push(self, when: float, pkt: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Delivery(when, self._seq, _dst(pkt), pkt))

    def step(self) -> bool:
        """Advance to the next event and handle it; False when nothing is left."""
        self.flush()
        deadlines = [d for s in set(self.stacks.values()) if (d := s.next_deadline())]
        nxt_timer = min(deadlines) if deadlines else None
        nxt_pkt = self._queue[0].when if self._queue else None
        if nxt_timer is None and nxt_pkt is None:
            return False
        if nxt_pkt is not None and (nxt_timer is None or nxt_pkt <= nxt_timer):
            self.now = max(self.now, nxt_pkt)
            # Everything arriving at this instant for one stack goes as one batch.
            per_stack: dict[int, tuple[TcpStack, list[bytes]]] = {}
            while self._queue and self._queue[0].when <= self.now:
                d = heapq.heappop(self._queue)
                stack = self.stacks.get(d.dst)
                if stack is None:
                    self.dropped += 1
                    continue
                per_stack.setdefault(id(stack), (stack, []))[1].append(d.packet)
            for stack, packets in per_stack.values():
                for k in range(0, len(packets), 128):
                    chunk = packets[k : k + 128]
                    batch = PacketBatch.from_packets(chunk, mtu=0xFFFF - 64)
                    self.delivered += len(chunk)
                    stack.input(batch, self.now)
        else:
            self.now = max(self.now, nxt_timer)
            for stack in set(self.stacks.values()):
                stack.timers(self.now)
        self.flush()
        return True

    def run(self, seconds: float = 10.0, until: Callable[[], bool] | None = None) -> bool:
        """Step until ``until()`` holds (True) or ``seconds`` of simulated time pass."""
        end = self.now + seconds
        while self.now <= end:
            if until is not None and until():
                return True
            if not self.step():
                return until() if until is not None else True
            if self.now > end:
                break
        return until() if until is not None else True

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass, handling whatever happens meanwhile."""
        end = self.now + seconds
        while True:
            self.flush()
            deadlines = [d for s in set(self.stacks.values()) if (d := s.next_deadline())]
            nxt = min([*deadlines, *([self._queue[0].when] if self._queue else [])], default=None)
            if nxt is None or nxt > end:
                self.now = end
                return
            self.step()


def _dst(pkt: bytes) -> bytes:
    if pkt[0] >> 4 == 4:
        return b"\x00" * 10 + b"\xff\xff" + pkt[16:20]
    return pkt[24:40]


def addr(text: str, port: int) -> tuple[bytes, int]:
    return (pack_address(text), port)


def transfer(
    net: Net,
    sender,
    receiver,
    data: bytes,
    seconds: float = 60.0,
    chunk: int = 1 << 16,
) -> bytes:
    """Push ``data`` from connection ``sender`` to ``receiver`` (sans-I/O, simulated
    time), reading as it arrives; returns what was received."""
    got = bytearray()
    sent = 0
    buf = bytearray(1 << 16)
    stack_s = sender.stack
    stack_r = receiver.stack
    end = net.now + seconds
    while net.now < end:
        while sent < len(data):
            n = stack_s.send(sender, memoryview(data)[sent : sent + chunk], net.now)
            if not n:
                break
            sent += n
        while True:
            n = stack_r.recv_into(receiver, buf, net.now)
            if not n:
                break
            got += buf[:n]
        if len(got) >= len(data):
            break
        if not net.step():
            break
    return bytes(got)
