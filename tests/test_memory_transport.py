"""MemoryWire between two drivers, MemoryOverlay, and overlay sockets across the wire."""

from __future__ import annotations

import threading
import time

import pytest

from dataplane._batch import DropReason, PacketBatch
from dataplane.driver import ThreadedDataPlane
from dataplane.netstack import OverlayNetwork
from dataplane.results import Output
from dataplane.transport import ip_model as model
from dataplane.transport.memory import MemoryOverlay, MemoryWire

EP_A = ("192.0.2.1", 51820)
EP_B = ("2001:db8::2", 41641)


class TunnelCore:
    """A stand-in for the real core without crypto: overlay batches go out on the wire to
    ``peer``; datagrams from the wire are delivered to overlay ``overlay_id``. Records the
    endpoint and peer id of every datagram received, as the real core would use them."""

    def __init__(self) -> None:
        self.underlay_id = 0
        self.peer = EP_B
        self.overlay_id = 0
        self.seen: list[tuple[tuple[str, int], int]] = []
        self.lock = threading.Lock()

    def next_event(self):
        return None

    def process_outbound(self, now, overlay_id, batch):
        out = Output()
        out.send(self.underlay_id, self.peer, batch)
        return out

    def process_inbound(self, now, underlay_id, batch):
        with self.lock:
            self.seen += [(batch.endpoint(i), batch.peer(i)) for i in range(len(batch))]
        out = Output()
        out.deliver(self.overlay_id, batch)
        return out

    def process_events(self, now):
        return Output()


class Pair:
    def __init__(self, **wire_args) -> None:
        self.core_a, self.core_b = TunnelCore(), TunnelCore()
        self.a = ThreadedDataPlane(self.core_a, max_idle_sleep=0.5, name="a").start()
        self.b = ThreadedDataPlane(self.core_b, max_idle_sleep=0.5, name="b").start()
        self.wire = MemoryWire(self.a, self.b, EP_A, EP_B, **wire_args)
        self.core_a.underlay_id, self.core_a.peer = self.wire.id_a, EP_B
        self.core_b.underlay_id, self.core_b.peer = self.wire.id_b, EP_A

    def close(self) -> None:
        self.wire.close()
        self.a.close()
        self.b.close()
        self.a.raise_if_failed()
        self.b.raise_if_failed()


@pytest.fixture
def pair():
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def taps(p: Pair) -> tuple[MemoryOverlay, MemoryOverlay]:
    ta, tb = MemoryOverlay(p.a), MemoryOverlay(p.b)
    p.core_a.overlay_id, p.core_b.overlay_id = ta.id, tb.id
    return ta, tb


def test_wire_carries_batches_and_stamps_the_senders_endpoint(pair):
    ta, tb = taps(pair)
    pkts = [b"one", b"two", b"three"]
    assert ta.send(pkts)
    assert tb.collect(3) == pkts
    assert {ep for ep, _ in pair.core_b.seen} == {EP_A}
    assert {peer for _, peer in pair.core_b.seen} == {-1}
    tb.send([b"back"])
    assert ta.collect(1) == [b"back"]
    assert pair.core_a.seen == [(EP_B, -1)]
    st = pair.wire.a_to_b.stats
    assert (st.batches, st.packets, st.bytes) == (1, 3, 11)


def test_only_alive_slots_travel_and_arrive_alive_without_peer(pair):
    ta, tb = taps(pair)
    b = PacketBatch.from_packets([b"keep-1", b"filtered", b"keep-2"])
    b.set_status(1, DropReason.PACKET_FILTER)
    b.fill_peer(7)
    ta.send(b)
    got = tb.receive(timeout=2)
    assert got.packets() == [b"keep-1", b"keep-2"]
    assert got.alive() == [0, 1]
    assert [got.peer(i) for i in range(2)] == [-1, -1]
    assert pair.wire.a_to_b.stats.dropped_dead == 1


def test_misaddressed_datagrams_are_lost_and_counted(pair):
    ta, tb = taps(pair)
    pair.core_a.peer = ("192.0.2.99", 51820)
    ta.send([b"lost", b"lost too"])
    assert tb.collect(1, timeout=0.3) == []
    assert pair.wire.a_to_b.stats.dropped_misaddressed == 2


def test_roaming_b_changes_the_source_endpoint(pair):
    ta, tb = taps(pair)
    new = ("203.0.113.5", 1234)
    pair.wire.move_b(new)
    tb.send([b"from new place"])
    assert ta.collect(1) == [b"from new place"]
    assert pair.core_a.seen[-1] == (new, -1)
    # A still sends to the old endpoint until its core learns the new one: lost.
    ta.send([b"to old"])
    assert tb.collect(1, timeout=0.3) == []
    assert pair.wire.a_to_b.stats.dropped_misaddressed == 1
    pair.core_a.peer = new
    ta.send([b"to new"])
    assert tb.collect(1) == [b"to new"]
    with pytest.raises(ValueError, match="A's endpoint"):
        pair.wire.move_b(EP_A)


def test_loss_is_seeded_and_accounted():
    p = Pair(loss=0.5, seed=42)
    try:
        ta, tb = taps(p)
        for k in range(20):
            ta.send([b"%d-%d" % (k, j) for j in range(10)])
        st = p.wire.a_to_b.stats
        deadline = time.monotonic() + 5
        while st.packets + st.dropped_loss < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = []
        while (b := tb.receive(timeout=0.3)) is not None:
            got += b.packets()
        assert st.packets == len(got)
        assert st.packets + st.dropped_loss == 200
        assert 50 < st.dropped_loss < 150
        assert len(set(got)) == len(got)
    finally:
        p.close()


def test_total_loss_and_duplication():
    p = Pair(loss=1.0)
    try:
        ta, tb = taps(p)
        ta.send([b"x"] * 5)
        assert tb.collect(1, timeout=0.3) == []
        assert p.wire.a_to_b.stats.dropped_loss == 5
    finally:
        p.close()
    p = Pair(duplicate=1.0)
    try:
        ta, tb = taps(p)
        ta.send([b"a", b"b"])
        assert tb.collect(4) == [b"a", b"a", b"b", b"b"]
        assert p.wire.a_to_b.stats.duplicated == 2
    finally:
        p.close()


def test_reordering_swaps_batches_and_releases_a_lone_held_batch():
    p = Pair(reorder=1.0, seed=1)
    try:
        ta, tb = taps(p)
        # Send one batch at a time, each after the previous has left A's driver.
        for k in range(4):
            ta.send([b"%d" % k])
            deadline = time.monotonic() + 2
            while p.wire.a_to_b.stats.reordered + p.wire.a_to_b.stats.packets < k + 1:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        got = tb.collect(4)
        assert got == [b"1", b"0", b"3", b"2"]
        # A held batch with nothing after it still arrives (after the idle poll).
        ta.send([b"late"])
        assert tb.collect(1, timeout=3) == [b"late"]
    finally:
        p.close()


def test_wire_threads_are_named_and_joined():
    p = Pair()
    names = {t.name for t in threading.enumerate()}
    assert {"wire-a2b", "wire-b2a"} <= names
    p.wire.close()
    names = {t.name for t in threading.enumerate()}
    assert not {"wire-a2b", "wire-b2a"} & names
    p.wire.close()  # idempotent
    p.a.close()
    p.b.close()


def test_closing_the_drivers_first_also_stops_the_wire():
    p = Pair()
    p.a.close()
    p.b.close()
    p.wire.close()
    assert not p.wire.a_to_b.thread.is_alive() and not p.wire.b_to_a.thread.is_alive()


def test_bad_arguments():
    a = ThreadedDataPlane(TunnelCore(), max_idle_sleep=0.5)
    b = ThreadedDataPlane(TunnelCore(), max_idle_sleep=0.5)
    try:
        with pytest.raises(ValueError, match="probability"):
            MemoryWire(a, b, loss=1.5)
        with pytest.raises(ValueError, match="both ends"):
            MemoryWire(a, b, EP_A, EP_A)
        with pytest.raises(ValueError, match="endpoint"):
            MemoryWire(a, b, ("not-an-ip", 1), EP_B)
    finally:
        a.close()
        b.close()


# -- overlay sockets across the wire ---------------------------------------------------------


@pytest.mark.parametrize(
    ("addr_a", "addr_b"), [("100.64.0.1", "100.64.0.2"), ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2")]
)
def test_overlay_sockets_talk_across_the_wire(pair, addr_a, addr_b):
    net_a = OverlayNetwork(pair.a, [addr_a], name="ova")
    net_b = OverlayNetwork(pair.b, [addr_b], name="ovb")
    pair.core_a.overlay_id, pair.core_b.overlay_id = net_a.id, net_b.id
    try:
        with net_b.udp_socket(7) as echo, net_a.udp_socket() as client:
            for k in range(20):
                client.sendto(b"msg %d" % k, (addr_b, 7))
                data, src = echo.recvfrom(timeout=2)
                assert src == (addr_a, client.getsockname()[1])
                echo.sendto(data, src)
                assert client.recvfrom(timeout=2) == (b"msg %d" % k, (addr_b, 7))
        # B answers A's ping over the wire.
        assert net_a.ping(addr_b, timeout=2) > 0
        assert net_b.counters["echo_requests_answered"] == 1
        assert not net_a.drops and not net_b.drops
    finally:
        net_a.close()
        net_b.close()


def test_packets_on_the_wire_are_valid_ip(pair):
    """What the sockets hand the data plane checks out against the struct model."""
    ta = MemoryOverlay(pair.a)
    net_b = OverlayNetwork(pair.b, ["100.64.0.2"])
    pair.core_a.overlay_id = ta.id  # A delivers what comes off the wire to the tap
    try:
        with net_b.udp_socket(999) as s:
            s.sendto(b"hello", ("100.64.0.1", 53))
            (pkt,) = ta.collect(1)
            assert pkt == model.udp("100.64.0.2", "100.64.0.1", 999, 53, b"hello")
    finally:
        net_b.close()
        ta.close()


# -- the real core -------------------------------------------------------------------------


def test_real_cores_handshake_and_carry_overlay_sockets_over_the_wire():
    """Two DataPlane cores (WireGuard, routing, filters) joined by the wire: overlay UDP and
    ping both ways after a real handshake, IPv4 and IPv6, and ping of our own address."""
    from dataplane.core import DataPlane
    from dataplane.wireguard.keys import PrivateKey

    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    a = ThreadedDataPlane(DataPlane(ka), max_idle_sleep=0.5, name="a").start()
    b = ThreadedDataPlane(DataPlane(kb), max_idle_sleep=0.5, name="b").start()
    wire = MemoryWire(a, b, EP_A, EP_B)
    net_a = OverlayNetwork(a, ["100.64.0.1", "fd7a:115c:a1e0::1"], name="ova")
    net_b = OverlayNetwork(b, ["100.64.0.2", "fd7a:115c:a1e0::2"], name="ovb")
    try:
        with a.locked() as core:
            core.add_peer(
                kb.public_key,
                allowed_ips=["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
                endpoint=EP_B,
                underlay=wire.id_a,
            )
            core.set_addresses(net_a.addresses, overlay=net_a.id)
        with b.locked() as core:
            core.add_peer(
                ka.public_key,
                allowed_ips=["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
                endpoint=EP_A,
                underlay=wire.id_b,
            )
            core.set_addresses(net_b.addresses, overlay=net_b.id)
        with net_b.udp_socket(7) as echo, net_a.udp_socket() as client:
            for dst in ("100.64.0.2", "fd7a:115c:a1e0::2"):
                for k in range(10):
                    client.sendto(b"over wireguard %d" % k, (dst, 7))
                    data, src = echo.recvfrom(timeout=5)
                    assert data == b"over wireguard %d" % k
                    assert src[1] == client.getsockname()[1]
                    echo.sendto(data, src)
                    assert client.recvfrom(timeout=5) == (data, (dst, 7))
        assert net_a.ping("100.64.0.2", timeout=5) > 0
        assert net_b.ping("fd7a:115c:a1e0::1", timeout=5) > 0
        assert net_a.ping("100.64.0.1", timeout=5) > 0  # our own address: core loopback
        # 20 datagrams + 2 pings (request or reply) + at least one handshake message each way.
        assert wire.a_to_b.stats.packets >= 23 and wire.b_to_a.stats.packets >= 23
        assert not net_a.drops and not net_b.drops
    finally:
        net_a.close()
        net_b.close()
        wire.close()
        a.close()
        b.close()
    a.raise_if_failed()
    b.raise_if_failed()
