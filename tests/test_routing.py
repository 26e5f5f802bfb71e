"""Overlay routers (outbound/inbound) and the underlay router, over PacketBatches."""

from __future__ import annotations

import array
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.routing.overlay import (
    Drop,
    InboundRouter,
    Loopback,
    OutboundRouter,
    ToOverlay,
    WireGuard,
    build_inbound_table,
    build_outbound_table,
)
from dataplane.routing.underlay import UnderlayRouter


def pkt(src: str, dst: str, payload: bytes = b"payload") -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0) + (
            s.packed + d.packed + payload
        )
    return struct.pack("!IHBB", 0x60000000, len(payload), 17, 64) + s.packed + d.packed + payload


def batch_of(*packets: bytes) -> PacketBatch:
    return PacketBatch.from_packets(list(packets), capacity=max(1, len(packets)))


PEERS = {
    1: ["10.0.0.0/8", "fd00::/8"],
    2: ["10.1.0.0/16", "fd00:1::/32"],
    3: ["0.0.0.0/0", "::/0"],  # exit node
}


def outbound() -> OutboundRouter:
    r = OutboundRouter()
    r.swap(
        build_outbound_table(
            {1: PEERS[1], 2: PEERS[2]},
            local_addresses={"100.64.0.5": 9, "fd7a:115c:a1e0::5": 9},
            loopback_routes={"100.100.100.100/32": 4},
            drop_routes=["10.1.2.0/24", "fd00:1:0:2::/64"],
        )
    )
    return r


@pytest.mark.parametrize(
    "dst, action",
    [
        ("10.9.9.9", WireGuard(1)),
        ("10.1.9.9", WireGuard(2)),  # longer prefix of peer 2 inside peer 1's
        ("10.1.2.3", Drop()),  # hole inside peer 2's /16
        ("10.1.3.3", WireGuard(2)),
        ("100.64.0.5", Loopback(9)),  # our own address
        ("100.100.100.100", Loopback(4)),  # local service
        ("192.168.1.1", None),
        ("fd00::1", WireGuard(1)),
        ("fd00:1::1", WireGuard(2)),
        ("fd00:1:0:2::9", Drop()),
        ("fd7a:115c:a1e0::5", Loopback(9)),
        ("2001:db8::1", None),
    ],
)
def test_outbound_lookup(dst, action):
    assert outbound().lookup(dst) == action


def test_outbound_batch_sets_peers_loopback_and_reasons():
    r = outbound()
    me = "100.64.0.5"
    batch = batch_of(
        pkt(me, "10.9.9.9"),
        pkt(me, "10.1.9.9"),
        pkt(me, "10.1.2.3"),
        pkt(me, me),  # to ourselves: loopback, never leaves
        pkt(me, "192.168.1.1"),
        b"\x45\x00",  # truncated header
        pkt("fd7a:115c:a1e0::5", "fd00:1::1"),
        pkt("fd7a:115c:a1e0::5", "fd00:1:0:2::1"),
        pkt("fd7a:115c:a1e0::5", "fd7a:115c:a1e0::5"),
        pkt("fd7a:115c:a1e0::5", "2001:db8::1"),
        pkt(me, "10.9.9.9"),
    )
    batch.set_status(10, DropReason.REPLAY)  # dead slot: untouched
    loop, npeer, nloop = r.route(batch)
    assert (npeer, nloop) == (3, 2)
    st = [batch.status_of(i) for i in range(len(batch))]
    assert st == [
        DropReason.OK,
        DropReason.OK,
        DropReason.ROUTE_DROP,
        DropReason.OK,
        DropReason.NO_ROUTE,
        DropReason.BAD_IP,
        DropReason.OK,
        DropReason.ROUTE_DROP,
        DropReason.OK,
        DropReason.NO_ROUTE,
        DropReason.REPLAY,
    ]
    assert [batch.peer(i) for i in (0, 1, 3, 6, 8)] == [1, 2, -1, 2, -1]
    assert list(loop) == [-1, -1, -1, 9, -1, -1, -1, -1, 9, -1, -1]
    assert batch.peer(10) == -1


def test_default_router_routes_nothing():
    batch = batch_of(pkt("10.0.0.1", "10.0.0.2"), pkt("::1", "::2"))
    OutboundRouter().route(batch)
    assert batch.status_counts()[DropReason.NO_ROUTE] == 2
    batch = batch_of(pkt("10.0.0.1", "10.0.0.2"))
    InboundRouter().route(batch)
    assert batch.status_of(0) == DropReason.NO_ROUTE


def test_loopback_of_own_address_beats_a_peer_claiming_it():
    """A peer whose AllowedIPs cover (or equal) our address never gets our packets."""
    t = build_outbound_table(
        {3: PEERS[3], 4: ["100.64.0.5/32"]}, local_addresses={"100.64.0.5/10": 1, "fd7a::5": 1}
    )
    r = OutboundRouter(t)
    assert r.lookup("100.64.0.5") == Loopback(1)
    assert r.lookup("100.64.0.6") == WireGuard(3)
    assert r.lookup("fd7a::5") == Loopback(1)
    assert r.lookup("fd7a::6") == WireGuard(3)


def test_identical_prefixes_resolve_to_lowest_peer_regardless_of_order():
    a = build_outbound_table({7: ["10.0.0.0/24"], 5: ["10.0.0.0/24"], 6: ["10.0.0.0/25"]})
    b = build_outbound_table({6: ["10.0.0.0/25"], 5: ["10.0.0.0/24"], 7: ["10.0.0.0/24"]})
    for t in (a, b):
        r = OutboundRouter(t)
        assert r.lookup("10.0.0.200") == WireGuard(5)
        assert r.lookup("10.0.0.1") == WireGuard(6)  # the longer prefix wins


def test_drop_beats_identical_peer_prefix():
    r = OutboundRouter(build_outbound_table({1: ["10.0.0.0/24"]}, drop_routes=["10.0.0.0/24"]))
    assert r.lookup("10.0.0.1") == Drop()


def test_swap_installs_atomically_and_freezes():
    r = OutboundRouter()
    first = build_outbound_table({1: ["10.0.0.0/8"]})
    r.swap(first)
    batch = batch_of(pkt("1.1.1.1", "10.0.0.1"))
    second = first.copy()  # edit a copy of the live table
    second.remove("10.0.0.0/8")
    old = r.swap(second)
    assert old is first and r.table is second and second.frozen
    r.route(batch)
    assert batch.status_of(0) == DropReason.NO_ROUTE
    # The old table is intact for readers that loaded it before the swap.
    assert OutboundRouter(first).lookup("10.0.0.1") == WireGuard(1)
    with pytest.raises(TypeError):
        r.swap({"10.0.0.0/8": 1})


def test_bad_configuration_raises_with_the_value():
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        build_outbound_table({1: ["10.0.0.0/33"]})
    with pytest.raises(ValueError, match="peer id"):
        build_outbound_table({-1: ["10.0.0.0/8"]})
    with pytest.raises(ValueError, match="transport id"):
        build_inbound_table({"10.0.0.0/8": 1 << 30})


def test_inbound_router():
    r = InboundRouter(
        build_inbound_table(
            {"100.64.0.5/32": 0, "fd7a:115c:a1e0::5/128": 0, "192.168.0.0/16": 2},
            drop_routes=["192.168.9.0/24"],
        )
    )
    assert r.lookup("100.64.0.5") == ToOverlay(0)
    assert r.lookup("192.168.9.1") == Drop()
    assert r.lookup("100.64.0.6") is None
    batch = batch_of(
        pkt("100.64.0.9", "100.64.0.5"),
        pkt("100.64.0.9", "192.168.1.1"),
        pkt("100.64.0.9", "192.168.9.1"),
        pkt("100.64.0.9", "100.64.0.6"),  # not for us
        pkt("fd7a:115c:a1e0::9", "fd7a:115c:a1e0::5"),
        pkt("fd7a:115c:a1e0::9", "fd7a:115c:a1e0::6"),
        b"\x60" + b"\x00" * 30,  # truncated IPv6
    )
    out = array.array("i", [0] * 8)
    res, routed = r.route(batch, out)
    assert res is out and routed == 3
    assert list(out[:7]) == [0, 2, -1, -1, 0, -1, -1]
    assert [batch.status_of(i) for i in range(7)] == [
        DropReason.OK,
        DropReason.OK,
        DropReason.ROUTE_DROP,
        DropReason.NO_ROUTE,
        DropReason.OK,
        DropReason.NO_ROUTE,
        DropReason.BAD_IP,
    ]


@settings(max_examples=40, deadline=None)
@given(
    peers=st.dictionaries(
        st.integers(0, 50),
        st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=4),
        max_size=6,
    ),
    holes=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=3),
    dsts=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40),
)
def test_outbound_batch_agrees_with_model(peers, holes, dsts):
    nets = {p: [ipaddress.IPv4Network(x, strict=False) for x in v] for p, v in peers.items()}
    hole_nets = [ipaddress.IPv4Network(x, strict=False) for x in holes]
    r = OutboundRouter(build_outbound_table(nets, drop_routes=hole_nets))
    # Model: longest prefix; identical prefix -> drop first, then lowest peer id.
    cands = [(n.prefixlen, 0, -1, n) for n in hole_nets]
    cands += [(n.prefixlen, 1, p, n) for p, ns in nets.items() for n in ns]
    # Also probe inside every prefix.
    dsts = dsts + [int(c[3].network_address) for c in cands]
    batch = batch_of(*[pkt("1.1.1.1", str(ipaddress.IPv4Address(d))) for d in dsts])
    r.route(batch)
    for i, d in enumerate(dsts):
        a = ipaddress.IPv4Address(d)
        matching = [c for c in cands if a in c[3]]
        if not matching:
            assert batch.status_of(i) == DropReason.NO_ROUTE
            continue
        best_len = max(c[0] for c in matching)
        best = min((c for c in matching if c[0] == best_len), key=lambda c: (c[1], c[2]))
        if best[1] == 0:
            assert batch.status_of(i) == DropReason.ROUTE_DROP
        else:
            assert batch.status_of(i) == DropReason.OK and batch.peer(i) == best[2]


# -- underlay ---------------------------------------------------------------------------


def test_underlay_route_writes_endpoint_and_transport():
    u = UnderlayRouter({1: (0, ("192.0.2.1", 51820)), 2: (1, ("2001:db8::2", 4242))})
    assert u.lookup(1) == (0, ("192.0.2.1", 51820))
    assert u.lookup(3) is None
    batch = batch_of(*[pkt("10.0.0.1", "10.0.0.2")] * 5)
    for i, p in enumerate([1, 2, 3, -1, 2]):
        batch.set_peer(i, p)
    batch.set_status(4, DropReason.NO_SESSION)
    out, routed = u.route(batch)
    assert routed == 2
    assert list(out) == [0, 1, -1, -1, -1]
    assert batch.endpoint(0) == ("192.0.2.1", 51820)
    assert batch.endpoint(1) == ("2001:db8::2", 4242)
    assert [batch.status_of(i) for i in range(5)] == [
        DropReason.OK,
        DropReason.OK,
        DropReason.NO_ROUTE,
        DropReason.NO_ROUTE,
        DropReason.NO_SESSION,
    ]


def test_underlay_set_remove_replace():
    u = UnderlayRouter()
    u.set(1000, 3, ("198.51.100.7", 1))  # grows the dense table
    assert u.lookup(1000) == (3, ("198.51.100.7", 1))
    u.remove(1000)
    assert u.lookup(1000) is None and u.peers() == []
    u.replace({5: (2, ("::1", 9))})
    assert dict(u.items()) == {5: (2, ("::1", 9))}
    with pytest.raises(ValueError):
        u.set(1, 0, ("not an ip", 1))
    with pytest.raises(ValueError):
        u.set(1, 0, ("1.2.3.4", 70000))
    with pytest.raises(ValueError):
        u.set(-2, 0, ("1.2.3.4", 1))
    with pytest.raises(ValueError):
        u.set(1, -1, ("1.2.3.4", 1))


def test_roaming_moves_peer_to_latest_authenticated_endpoint():
    u = UnderlayRouter({1: (0, ("192.0.2.1", 51820)), 2: (1, ("192.0.2.2", 51820))})
    batch = batch_of(*[b"x"] * 5)
    eps = [
        ("203.0.113.9", 1111),
        ("192.0.2.2", 51820),
        ("203.0.113.9", 2222),
        ("2001:db8::7", 7),
        ("203.0.113.66", 6),
    ]
    for i, (p, ep) in enumerate(zip([1, 2, 1, 4, 2], eps, strict=True)):
        batch.set_peer(i, p)
        batch.set_endpoint(i, ep)
    batch.set_status(4, DropReason.BAD_TAG)  # forged: must not move peer 2
    changed = u.roam(batch, transport=1)
    assert changed == [1, 4]  # peer 2 already there
    assert u.lookup(1) == (1, ("203.0.113.9", 2222))  # last packet wins
    assert u.lookup(2) == (1, ("192.0.2.2", 51820))
    assert u.lookup(4) == (1, ("2001:db8::7", 7))
    assert u.roam(batch, transport=1) == []  # nothing new the second time
    # Routing now uses the roamed endpoint.
    out_batch = batch_of(b"y")
    out_batch.set_peer(0, 1)
    out, _ = u.route(out_batch)
    assert out[0] == 1 and out_batch.endpoint(0) == ("203.0.113.9", 2222)


def test_concurrent_swaps_route_each_batch_by_one_table():
    """A reader routing batches (GIL released) while tables are swapped sees, for each
    batch, either the old or the new table, never a mix."""
    import threading

    tables = [build_outbound_table({p: ["0.0.0.0/0", "::/0"]}) for p in (1, 2)]
    r = OutboundRouter(tables[0])
    pkts = [pkt("10.0.0.1", f"10.{i // 256}.{i % 256}.1") for i in range(512)]
    pkts += [pkt("fd00::1", f"fd00::{i:x}") for i in range(512)]
    mixed: list[set] = []
    seen: set = set()
    stop = threading.Event()

    def reader() -> None:
        for _ in range(400):
            if stop.is_set():
                break
            batch = PacketBatch.from_packets(pkts, capacity=len(pkts), mtu=64)
            r.route(batch)
            peers = set(batch.peer_ids)
            seen.update(peers)
            if len(peers) != 1:
                mixed.append(peers)

    t = threading.Thread(target=reader, name="lpm-reader")
    t.start()
    try:
        for i in range(2000):
            r.swap(tables[i % 2])
            if not t.is_alive():
                break
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert mixed == []
    assert seen <= {1, 2}
