"""Source filter (cryptokey routing): only the owner of a source address may send from it."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.filter.source import SourceFilter
from dataplane.routing._lpm import LpmTable
from dataplane.routing.overlay import OutboundRouter, WireGuard, build_outbound_table


def pkt(src: str, dst: str, payload: bytes = b"data") -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, 6, 0) + (
            s.packed + d.packed + payload
        )
    return struct.pack("!IHBB", 0x60000000, len(payload), 6, 64) + s.packed + d.packed + payload


def run(f: SourceFilter, items: list[tuple[int, str]], dst4="100.64.0.1", dst6="fd7a::1"):
    batch = PacketBatch.from_packets(
        [pkt(src, dst4 if ":" not in src else dst6) for _, src in items],
        capacity=max(1, len(items)),
    )
    for i, (peer, _) in enumerate(items):
        batch.set_peer(i, peer)
    dropped = f.apply(batch)
    return batch, dropped


ALLOWED = {
    1: ["10.0.0.0/8", "fd00::/16"],
    2: ["10.1.0.0/16", "fd00:1::/32", "192.168.1.7/32"],
    3: ["10.1.2.0/24"],
}


@pytest.mark.parametrize(
    "peer, src, ok",
    [
        (1, "10.9.9.9", True),
        (2, "10.9.9.9", False),  # peer 2 does not own it
        (1, "10.1.9.9", False),  # overlap: the /16 of peer 2 is more specific
        (2, "10.1.9.9", True),
        (3, "10.1.2.3", True),  # /24 inside /16 inside /8
        (2, "10.1.2.3", False),
        (1, "10.1.2.3", False),
        (2, "192.168.1.7", True),
        (2, "192.168.1.8", False),  # no owner at all
        (1, "fd00::1", True),
        (1, "fd00:1::1", False),
        (2, "fd00:1::1", True),
        (3, "fd00:1::1", False),
        (3, "2001:db8::1", False),
    ],
)
def test_ownership_by_longest_prefix(peer, src, ok):
    f = SourceFilter(ALLOWED)
    batch, dropped = run(f, [(peer, src)])
    assert f.allows(peer, src) is ok
    assert batch.status_of(0) == (DropReason.OK if ok else DropReason.SOURCE_FILTER)
    assert dropped == (0 if ok else 1)


def test_batch_mixes_families_dead_slots_and_bad_headers():
    f = SourceFilter(ALLOWED)
    items = [
        (1, "10.9.9.9"),
        (2, "10.9.9.9"),
        (2, "fd00:1::5"),
        (1, "fd00:1::5"),
        (3, "10.1.2.200"),
        (-1, "10.9.9.9"),
    ]
    batch = PacketBatch.from_packets(
        [pkt(s, "100.64.0.1" if ":" not in s else "fd7a::1") for _, s in items]
        + [b"\x45" + b"\x00" * 10, pkt("10.9.9.9", "100.64.0.1")],
        capacity=8,
    )
    for i, (p, _) in enumerate(items):
        batch.set_peer(i, p)
    batch.set_peer(6, 1)
    batch.set_peer(7, 2)
    batch.set_status(7, DropReason.BAD_TAG)  # already dropped: left alone
    assert f.apply(batch) == 3
    assert [batch.status_of(i) for i in range(8)] == [
        DropReason.OK,
        DropReason.SOURCE_FILTER,
        DropReason.OK,
        DropReason.SOURCE_FILTER,
        DropReason.OK,
        DropReason.SOURCE_FILTER,
        DropReason.BAD_IP,
        DropReason.BAD_TAG,
    ]


def test_identical_prefixes_deterministic_and_consistent_with_outbound():
    routes_a = {9: ["10.5.0.0/16"], 4: ["10.5.0.0/16"], 6: ["10.5.5.0/24"]}
    routes_b = dict(reversed(list(routes_a.items())))
    for routes in (routes_a, routes_b):
        f = SourceFilter(routes)
        out = OutboundRouter(build_outbound_table(routes))
        for addr in ("10.5.1.1", "10.5.5.5"):
            owner = f.owner(addr)
            assert out.lookup(addr) == WireGuard(owner)
        assert f.owner("10.5.1.1") == 4 and f.owner("10.5.5.5") == 6


def test_update_and_swap():
    f = SourceFilter({1: ["10.0.0.0/8"]})
    old = f.update({2: ["10.0.0.0/8"]})
    assert old.lookup("10.1.1.1") == 1 and f.owner("10.1.1.1") == 2
    t = LpmTable({"fd00::/8": 7})
    f2 = SourceFilter.from_table(t)
    assert t.frozen and f2.owner("fd00::1") == 7
    with pytest.raises(TypeError):
        f.swap("10.0.0.0/8")
    with pytest.raises(ValueError, match="10.0.0.0/40"):
        SourceFilter({1: ["10.0.0.0/40"]})


def test_empty_filter_drops_everything():
    batch, dropped = run(SourceFilter(), [(1, "10.0.0.1"), (1, "fd00::1")])
    assert dropped == 2


@settings(max_examples=40, deadline=None)
@given(
    peers=st.dictionaries(
        st.integers(0, 20),
        st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=4),
        max_size=5,
    ),
    srcs=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 2**128 - 1)), max_size=30),
)
def test_ipv6_ownership_agrees_with_model(peers, srcs):
    nets = {p: [ipaddress.IPv6Network(x, strict=False) for x in v] for p, v in peers.items()}
    f = SourceFilter(nets)
    # Probe inside every prefix too, claimed by each peer in turn.
    srcs = srcs + [(p, int(n.network_address)) for p in nets for ns in nets.values() for n in ns]
    items = [(p, str(ipaddress.IPv6Address(a))) for p, a in srcs]
    batch, _ = run(f, items)
    for i, (peer, src) in enumerate(items):
        a = ipaddress.IPv6Address(src)
        cands = [(n.prefixlen, -q) for q, ns in nets.items() for n in ns if a in n]
        owner = -max(cands)[1] if cands else None
        want = DropReason.OK if owner == peer else DropReason.SOURCE_FILTER
        assert batch.status_of(i) == want
