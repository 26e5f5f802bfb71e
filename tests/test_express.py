"""The established-session path (transport/_express.pyx) between two cores, without root.

Each side has a real loopback UDP socket and, in place of a TUN device, one end of a
Unix datagram socketpair (TunIO without IFF_VNET_HDR only reads and writes whole packets,
which a datagram socket gives too). Sessions come up through the cores' Python path; then
packets go through ``pump_outbound`` / ``pump_inbound`` and the cores do the bookkeeping.
"""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core import udp_packet

from dataplane._batch import DropReason, PacketBatch
from dataplane.core import DataPlane
from dataplane.results import Output
from dataplane.transport._express import Express
from dataplane.transport._tun import TunIO
from dataplane.transport._udp import BatchIO
from dataplane.transport.bookkeeping import bookkeeping_due
from dataplane.wireguard.keys import PrivateKey

ADDR = {"a": "10.0.0.1", "b": "10.0.0.2"}


class Side:
    def __init__(self, name: str) -> None:
        self.name = name
        self.key = PrivateKey.generate()
        self.core = DataPlane(self.key)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.endpoint = self.udp.getsockname()
        self.app, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.app.settimeout(2)
        self.dev.setblocking(False)  # as a TUN fd is opened: reads stop at EAGAIN
        self.tun_io = TunIO(self.dev.fileno())
        self.udp_io = BatchIO(self.udp.fileno(), socket.AF_INET, 64)
        self.express = Express()
        self.express.set_tun(self.dev.fileno(), False)
        self.express.set_udp(self.udp.fileno(), socket.AF_INET)
        self.peer = -1

    def close(self) -> None:
        for s in (self.udp, self.app, self.dev):
            s.close()


class Rig:
    """Two sides, sessions up, established-session paths attached."""

    def __init__(self, attach: bool = True) -> None:
        self.a, self.b = Side("a"), Side("b")
        for me, other in ((self.a, self.b), (self.b, self.a)):
            me.peer = me.core.add_peer(
                other.key.public_key,
                allowed_ips=[f"{ADDR[other.name]}/32"],
                endpoint=other.endpoint,
            )
            me.core.set_addresses([ADDR[me.name]])
            me.core.set_routes(inbound={"0.0.0.0/0": 0, "::/0": 0})
        # Handshake (and the first packet each way) through the Python path, in memory.
        self.slow("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"first"))
        self.slow("b", udp_packet(ADDR["b"], ADDR["a"], 2, 1, b"back"))
        if attach:
            for s in (self.a, self.b):
                s.core.attach_express(s.express, 0, 0)

    def side(self, name: str) -> Side:
        return self.a if name == "a" else self.b

    def slow(self, src: str, pkt: bytes) -> None:
        """One packet through the cores' Python path, datagrams carried in memory."""
        now = time.monotonic()
        pending = [
            (src, self.side(src).core.process_outbound(now, 0, PacketBatch.from_packets([pkt])))
        ]
        while pending:
            frm, out = pending.pop(0)
            to = "b" if frm == "a" else "a"
            for batches in out.to_overlay.values():
                for b in batches:
                    for p in b.packets(alive_only=True):
                        self.side(frm).dev.send(p)
            for (_uid, _ep), batches in out.to_underlay.items():
                for b in batches:
                    rx = PacketBatch.from_packets(b.packets(alive_only=True))
                    rx.fill_endpoint(self.side(frm).endpoint)
                    pending.append((to, self.side(to).core.process_inbound(now, 0, rx)))
        for s in (self.a, self.b):  # drain what the overlay "TUNs" got
            s.app.setblocking(False)
            try:
                while True:
                    s.app.recv(65536)
            except BlockingIOError:
                pass
            s.app.settimeout(2)

    def out(self, name: str, *packets: bytes) -> tuple[bool, PacketBatch]:
        """Write packets to the side's "TUN" and run its outbound pump once: whether the
        path sent them (else the batch holds them for the core)."""
        s = self.side(name)
        for p in packets:
            s.app.send(p)
        return self._pump(s, s.express.pump_outbound, s.tun_io, "outbound_batches")

    def into(self, name: str) -> tuple[bool, PacketBatch]:
        """Run the side's inbound pump once on what its UDP socket has."""
        s = self.side(name)
        return self._pump(s, s.express.pump_inbound, s.udp_io, "inbound_batches")

    @staticmethod
    def _pump(s: Side, pump, io, counter: str) -> tuple[bool, PacketBatch]:
        batch = PacketBatch(64)
        before = getattr(s.express, counter)
        # Bookkeeping due 1 ms after a handled burst: the pump returns then (or at once
        # with a burst it declined), well before the 1 s timeout.
        n, due = pump(io, batch, 1.0, 0.0, 0.001)
        handled = getattr(s.express, counter) > before
        assert n == len(batch) and handled == (n == 0) and handled == (due > 0)
        return handled, batch

    def account(self) -> None:
        for s in (self.a, self.b):
            out = s.core.process_events(time.monotonic())
            assert isinstance(out, Output)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_packets_cross_both_ways_and_the_cores_count_them(rig):
    pkts = [udp_packet(ADDR["a"], ADDR["b"], 1, 2, bytes([i]) * (10 + 90 * i)) for i in range(5)]
    handled, batch = rig.out("a", *pkts)
    assert handled and len(batch) == 0
    time.sleep(0.05)  # all five queued at b's socket
    assert rig.into("b")[0]
    assert [rig.b.app.recv(65536) for _ in pkts] == pkts
    reply = udp_packet(ADDR["b"], ADDR["a"], 2, 1, b"pong")
    assert rig.out("b", reply)[0] and rig.into("a")[0]
    assert rig.a.app.recv(65536) == reply

    before_a = rig.a.core.stats().peers[rig.a.peer]
    before_b = rig.b.core.stats().peers[rig.b.peer]
    delivered_b = rig.b.core.delivered_packets
    rig.account()  # the bookkeeping the transports run within ACCOUNT_DELAY
    sa, sb = rig.a.core.stats().peers[rig.a.peer], rig.b.core.stats().peers[rig.b.peer]
    assert (sa.tx_packets - before_a.tx_packets, sa.rx_packets - before_a.rx_packets) == (5, 1)
    assert (sb.rx_packets - before_b.rx_packets, sb.tx_packets - before_b.tx_packets) == (5, 1)
    assert sa.tx_bytes - before_a.tx_bytes == sum(32 + -(-len(p) // 16) * 16 for p in pkts)
    assert rig.b.core.delivered_packets - delivered_b == 5


def test_the_send_counter_is_shared_with_the_python_path(rig):
    kp = rig.a.core.device.peers[rig.a.peer].current
    start = kp.send_counter
    assert rig.out("a", *[udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"x")] * 3)[0]
    assert kp.send_counter == start + 3
    rig.into("b")
    # The Python path goes on from there: b accepts it (no counter reused, no replay).
    rig.slow("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"slow"))
    assert kp.send_counter == start + 4
    assert rig.b.core.device.drops[DropReason.REPLAY] == 0
    assert rig.b.core.device.peers[rig.b.peer].current.window.last == start + 3


def test_a_batch_with_anything_else_is_left_for_the_core(rig):
    good = udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"ok")
    unrouted = udp_packet(ADDR["a"], "10.9.9.9", 1, 2, b"nowhere")
    handled, batch = rig.out("a", good, unrouted)
    assert not handled
    assert batch.packets() == [good, unrouted]  # untouched: the slow path routes it
    assert rig.a.express.outbound_declined == 1


def test_inbound_declines_what_is_not_session_data(rig):
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        junk.sendto(b"\x01" + bytes(147), rig.b.endpoint)  # an initiation-sized message
        handled, batch = rig.into("b")
        assert not handled
        assert batch.packets() == [b"\x01" + bytes(147)]
        junk.sendto(b"\x04\0\0\0" + b"\xff" * 28, rig.b.endpoint)  # unknown receiver index
        assert not rig.into("b")[0]
    finally:
        junk.close()


def test_replay_and_spoofed_source_are_dropped_and_counted(rig):
    # Read a's datagrams off b's socket ourselves, then send them again from elsewhere.
    spoofed = udp_packet("10.0.0.77", ADDR["b"], 1, 2, b"not yours")
    good = udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"once")
    assert rig.out("a", good)[0]
    wire = rig.b.udp.recv(65536)
    assert rig.out("a", spoofed)[0]
    wire_spoofed = rig.b.udp.recv(65536)
    replayer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    replayer.bind(("127.0.0.1", 0))
    new_port = replayer.getsockname()[1]
    try:
        for dgram in (wire, wire, wire_spoofed):
            replayer.sendto(dgram, rig.b.endpoint)
            assert rig.into("b")[0]
    finally:
        replayer.close()
    assert rig.b.app.recv(65536) == good
    rig.account()
    assert rig.b.core.device.drops[DropReason.REPLAY] == 1
    assert rig.b.core.drops[DropReason.SOURCE_FILTER] == 1
    # Authenticated datagrams from the new address: b now answers there (roaming).
    assert rig.b.core.peer_config(rig.b.peer).endpoint == ("127.0.0.1", new_port)


def test_bookkeeping_runs_the_wireguard_timers(rig):
    peer_a = rig.a.core.device.peers[rig.a.peer]
    peer_b = rig.b.core.device.peers[rig.b.peer]
    peer_a.timers.pop("new_handshake", None)
    assert rig.out("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"t"))[0]
    assert rig.into("b")[0]
    rig.account()
    assert "new_handshake" in peer_a.timers  # data sent, nothing back yet
    assert "passive_keepalive" in peer_b.timers  # data received, nothing sent since
    assert rig.a.core.active_peers == frozenset({rig.a.peer})
    # A whole exchange between two bookkeeping rounds: the hooks run in the order the
    # events happened, so a's reply-received cancels the timer its request armed.
    rig.account()
    assert rig.out("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"ping"))[0]
    assert rig.into("b")[0]
    assert rig.out("b", udp_packet(ADDR["b"], ADDR["a"], 2, 1, b"pong"))[0]
    assert rig.into("a")[0]
    rig.account()
    assert "new_handshake" not in peer_a.timers and "passive_keepalive" in peer_a.timers
    assert "passive_keepalive" not in peer_b.timers and "new_handshake" in peer_b.timers


def test_configuration_changes_reach_the_path(rig):
    pkt = udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"x")
    rig.a.core.set_filter([])  # a Tailscale packet filter: only the core applies it
    assert not rig.a.express.enabled
    assert rig.out("a", pkt)[0] is False
    rig.a.core.set_filter(None)
    assert rig.a.express.enabled and rig.out("a", pkt)[0]
    rig.a.core.remove_peer(rig.a.peer)  # its sessions go with it
    assert rig.out("a", pkt)[0] is False


def test_without_the_cores_nothing_is_handled():
    r = Rig(attach=False)
    try:
        assert not r.a.express.enabled
        assert not r.out("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"x"))[0]
    finally:
        r.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=4))
def test_hostile_datagrams_never_raise(rig, datagrams):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for d in datagrams:
            sender.sendto(d, rig.b.endpoint)
        time.sleep(0.002)
        handled, batch = rig.into("b")
        if not handled:  # declined: left exactly as received for the core
            assert batch.packets() == datagrams[: len(batch)]
        rig.b.core.process_inbound(time.monotonic(), 0, batch)  # and the core copes
    finally:
        sender.close()


def test_bookkeeping_is_due_once_its_time_passed():
    assert not bookkeeping_due(0.0)  # nothing owed
    assert not bookkeeping_due(time.monotonic() + 1.0)
    assert bookkeeping_due(time.monotonic() - 0.001)


def test_pump_returns_when_bookkeeping_falls_due(rig):
    # A handled burst makes the bookkeeping due `delay` later; with no more traffic the
    # pump returns then, not at its (long) timeout.
    rig.a.app.send(udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"x"))
    start = time.monotonic()
    n, due = rig.a.express.pump_outbound(rig.a.tun_io, PacketBatch(64), 5.0, 0.0, 0.05)
    took = time.monotonic() - start
    assert n == 0 and start < due <= time.monotonic() and took < 1.0


def test_roaming_takes_effect_before_the_bookkeeping(rig):
    # b's peer moves to a new port: the very next packet b sends goes there.
    assert rig.out("a", udp_packet(ADDR["a"], ADDR["b"], 1, 2, b"hi"))[0]
    wire = rig.b.udp.recv(65536)
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    moved.settimeout(2)
    try:
        moved.sendto(wire, rig.b.endpoint)
        assert rig.into("b")[0]
        assert rig.out("b", udp_packet(ADDR["b"], ADDR["a"], 2, 1, b"reply"))[0]
        assert moved.recv(65536)[0] == 4  # a transport message, at the new address
    finally:
        moved.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=160)),
        min_size=1,
        max_size=4,
    )
)
def test_forged_transport_messages_are_dropped_and_counted(rig, forged):
    # Messages for b's real session (so the path takes them) with made-up counters and
    # bodies: none authenticates, none reaches b's "TUN", each is counted once.
    index = rig.b.core.device.peers[rig.b.peer].current.local_index
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = sum(rig.b.core.device.drops.values()) + sum(rig.b.core.drops.values())
    try:
        for counter, body in forged:
            sender.sendto(
                b"\x04\0\0\0" + index.to_bytes(4, "little") + counter.to_bytes(8, "little") + body,
                rig.b.endpoint,
            )
        time.sleep(0.002)
        handled, _ = rig.into("b")
        assert handled
    finally:
        sender.close()
    rig.account()
    after = sum(rig.b.core.device.drops.values()) + sum(rig.b.core.drops.values())
    assert after - before == len(forged)
    rig.b.app.setblocking(False)
    with pytest.raises(BlockingIOError):
        rig.b.app.recv(65536)
    rig.b.app.settimeout(2)
