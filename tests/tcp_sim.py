"""Two (or more) sans-I/O TcpStacks on a simulated network, in simulated time.

``Net`` carries the IP packets each stack emits to the stack owning the destination
address after ``delay`` seconds, with seeded loss, duplication and reordering (extra
delay), and a bandwidth limit if given; ``run`` advances time from event to event
(deliveries and the stacks' timer deadlines), so minutes of protocol time take
milliseconds. Tests reach into the stacks directly: ``net.stack(A).connect(...)``.
``Impairment.path_mtu`` drops larger packets and reports ICMP "too big" to the sender's
stack (``icmp_error``) one delay later; ``call_at`` runs any event in simulated time.

``Peer`` is the other rig: one stack whose only peer is the test, which builds every
segment with ``tcp_model`` and parses every segment the stack sends; ``Remote`` keeps the
hand-played side's sequence numbers and timestamps (``test_tcp_rules``, ``test_tcp_hostile``).
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
    path_mtu: int = 0  # larger packets are dropped and ICMP "too_big" goes to the sender


@dataclass(order=True)
class _Delivery:
    when: float
    seq: int
    dst: bytes = field(compare=False)
    packet: bytes | Callable[[], None] = field(compare=False)  # or an event to run


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
        self.too_big = 0  # packets refused by path_mtu
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
        if imp.path_mtu and len(pkt) > imp.path_mtu:
            self.dropped += 1
            self.too_big += 1
            self._icmp_too_big(pkt, imp.path_mtu)
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

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``when`` (between deliveries, in order)."""
        self._seq += 1
        heapq.heappush(self._queue, _Delivery(when, self._seq, b"", fn))

    def _icmp_too_big(self, pkt: bytes, mtu: int) -> None:
        # RFC 1191 / RFC 8201: the router's ICMP quotes the segment; the sender's stack
        # gets it as an icmp_error call (what OverlayNetwork does with a real ICMP).
        import tcp_model

        seg = tcp_model.parse(pkt)
        src16, dst16 = pack_address(seg.src), pack_address(seg.dst)
        stack = self.stacks.get(src16)
        if stack is None:
            return

        def report() -> None:
            stack.icmp_error(
                (src16, seg.sport), (dst16, seg.dport), seg.seq, "too_big", mtu, self.now
            )

        self.call_at(self.now + self.imp.delay, report)

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
                if callable(d.packet):
                    d.packet()
                    continue
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


# -- one stack driven by hand ----------------------------------------------------------------


class Peer:
    """One ``TcpStack`` whose only peer is the test, which builds each segment with
    ``tcp_model`` and parses each one the stack sends (strictly: a bad checksum or
    option fails the test).

    ``us`` is the stack's address, ``them`` the remote TCP the test plays. Time is
    ``self.now``; ``advance`` moves it, running the stack's timers at their deadlines and
    collecting what they send, so a test sees exactly when each segment goes out."""

    def __init__(
        self,
        us: str = A,
        them: str = B,
        *,
        limits: TcpLimits | None = None,
        mtu: int = 1420,
        now: float = 1000.0,
        seed: int = 1,
    ) -> None:
        import tcp_model

        self.model = tcp_model
        self.us, self.them = us, them
        self.us16, self.them16 = pack_address(us), pack_address(them)
        self.now = now
        self.stack = TcpStack(
            [self.us16],
            mtu=mtu,
            limits=limits or TcpLimits(),
            secret=bytes([seed]) * 32,
            rng=random.Random(seed),
        )
        self.log: list[tuple[float, object]] = []  # (time, Seg) of everything the stack sent

    # segments in

    def seg(self, sport: int, dport: int, **fields):
        """A segment from the test's TCP (``them``:sport) to the stack (``us``:dport)."""
        return self.model.Seg(self.them, self.us, sport, dport, **fields)

    def send(self, *segs, raw: bool = False, **build_options):
        """Deliver segments (``Seg`` or, with ``raw``, IP packet bytes) as one batch at
        ``now``; returns what the stack sent in reply."""
        packets = [s if raw else self.model.build(s, **build_options) for s in segs]
        self.stack.input(PacketBatch.from_packets(packets, mtu=65000), self.now)
        return self.out()

    # segments out

    def out_packets(self) -> list[bytes]:
        return [bytes(p) for b in self.stack.take_output() for p in b.packets()]

    def out(self):
        """Everything the stack queued since the last look, parsed."""
        got = [self.model.parse(p) for p in self.out_packets()]
        self.log.extend((self.now, s) for s in got)
        return got

    def advance(self, seconds: float):
        """Let ``seconds`` pass, firing timers at their deadlines; returns a list of
        (time, Seg) sent meanwhile (timers only: the test's TCP says nothing)."""
        end = self.now + seconds
        sent = []
        for s in self.out():
            sent.append((self.now, s))
        while True:
            due = self.stack.next_deadline()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.stack.timers(self.now)
            for s in self.out():
                sent.append((self.now, s))
        self.now = end
        return sent

    def until(self, pred, limit: float = 600.0):
        """Advance deadline by deadline until ``pred(seg)`` holds for a segment sent;
        returns (time, seg) or None."""
        end = self.now + limit
        while True:
            for s in self.out():
                if pred(s):
                    return self.now, s
            due = self.stack.next_deadline()
            if due is None or due > end:
                self.now = end
                return None
            self.now = max(self.now, due)
            self.stack.timers(self.now)


class Remote:
    """The test's side of one connection with a ``Peer``'s stack: its sequence numbers,
    its timestamp clock and the options it offers, so a test writes
    ``r.push(b"data")`` and gets back the segments the stack answered with.

    ``port`` is the stack's port, ``rport`` the test's. ``seq`` is the next sequence
    number the test sends, ``rcv_nxt`` what it acknowledges (None before the stack's
    SYN), ``ts_recent`` the last TSval it saw from the stack (echoed as TSecr)."""

    def __init__(
        self,
        peer: Peer,
        port: int,
        rport: int = 40000,
        *,
        isn: int = 1000,
        mss: int | None = 1460,
        ws: int | None = 7,
        sack: bool = True,
        ts: bool = True,
        wnd: int = 65535,
    ) -> None:
        self.peer = peer
        self.port, self.rport = port, rport
        self.isn = isn % (1 << 32)
        self.seq = self.isn
        self.rcv_nxt: int | None = None
        self.mss, self.ws, self.sack_ok, self.ts_ok = mss, ws, sack, ts
        self.wnd = wnd
        self.tsval = 7000
        self.ts_recent = 0
        self.syn_ack = None  # the stack's SYN or SYN-ACK, once seen

    def seg(self, flags: int = 0x10, payload: bytes = b"", **fields):
        m = self.peer.model
        f = dict(seq=self.seq, ack=self.rcv_nxt or 0, wnd=self.wnd, flags=flags, payload=payload)
        if self.ts_ok:
            f["ts"] = (self.tsval, self.ts_recent if flags & m.ACK else 0)
        f.update(fields)
        return self.peer.seg(self.rport, self.port, **f)

    def mine(self, segs):
        """The segments of ``segs`` on this connection (and note their timestamps)."""
        got = [
            s
            for s in segs
            if s.sport == self.port and s.dport == self.rport and s.dst == self.peer.them
        ]
        for s in got:
            if s.ts is not None:
                self.ts_recent = s.ts[0]
        return got

    def send(self, *segs, **build_options):
        """Deliver; returns the stack's replies on this connection."""
        return self.mine(self.peer.send(*segs, **build_options))

    def push(self, payload: bytes, flags: int = 0x18, **fields):
        """Send ``payload`` at ``seq`` (advancing it); the replies."""
        s = self.seg(flags, payload, **fields)
        self.seq = (self.seq + s.seg_len) % (1 << 32)
        self.tsval += 1
        return self.send(s)

    def ack(self, upto: int | None = None, **fields):
        """A pure ACK (of ``upto``, default everything seen); the replies."""
        if upto is not None:
            self.rcv_nxt = upto % (1 << 32)
        self.tsval += 1
        return self.send(self.seg(0x10, **fields))

    def fin(self, payload: bytes = b"", **fields):
        return self.push(payload, flags=0x11, **fields)

    def take(self, segs):
        """Acknowledge-side bookkeeping: move rcv_nxt past in-order ``segs``."""
        for s in self.mine(segs):
            if self.rcv_nxt is None or s.seq == self.rcv_nxt:
                if s.seg_len:
                    self.rcv_nxt = s.end
        return segs

    def syn_options(self) -> dict:
        o: dict = {}
        if self.mss is not None:
            o["mss"] = self.mss
        if self.ws is not None:
            o["ws"] = self.ws
        if self.sack_ok:
            o["sack_perm"] = True
        return o

    def open(self, **syn_fields):
        """Active open from the test to the stack's listener on ``port``: SYN, the stack's
        SYN-ACK, final ACK. Returns the SYN-ACK (``Connection`` via ``accept``)."""
        m = self.peer.model
        fields = {**self.syn_options(), **syn_fields}
        syn = self.seg(m.SYN, ack=0, **fields)
        self.seq = (self.seq + 1) % (1 << 32)
        replies = self.send(syn)
        (sa,) = [s for s in replies if s.has(m.SYN | m.ACK)]
        self.syn_ack = sa
        self.rcv_nxt = (sa.seq + 1) % (1 << 32)
        self.ack()
        return sa

    def answer(self, syn=None, **synack_fields):
        """Passive side of the stack's connect: SYN-ACK to its SYN (taken from its output
        if not given), then its ACK. Returns what it sent after the SYN-ACK."""
        m = self.peer.model
        if syn is None:
            (syn,) = [s for s in self.peer.out() if s.flags & m.SYN]
        self.syn_ack = syn
        self.port, self.rport = syn.sport, syn.dport
        if syn.ts is not None:
            self.ts_recent = syn.ts[0]
        self.rcv_nxt = (syn.seq + 1) % (1 << 32)
        fields = {**self.syn_options(), **synack_fields}
        sa = self.seg(m.SYN | m.ACK, **fields)
        self.seq = (self.seq + 1) % (1 << 32)
        return self.send(sa)
