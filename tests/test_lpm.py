"""LpmTable against a brute-force ipaddress model (property tests) and its batch API."""

from __future__ import annotations

import array
import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.routing._lpm import LpmTable

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SlowLpm:
    """The obvious model: a dict of networks; lookup scans them all."""

    def __init__(self) -> None:
        self.routes: dict[ipaddress._BaseNetwork, int] = {}

    def lookup(self, addr: ipaddress._BaseAddress) -> int | None:
        best = None
        for net, v in self.routes.items():
            if net.version == addr.version and addr in net:
                if best is None or net.prefixlen > best[0]:
                    best = (net.prefixlen, v)
        return None if best is None else best[1]


# Addresses are drawn near a few "hot" bases so that prefixes overlap and nest a lot;
# flipping random low bits exercises every depth of the trie.
V4_BASES = [0x0A000000, 0x0A010203, 0xC0A80001, 0x00000000, 0xFFFFFFFF, 0x64400000]
V6_BASES = [
    0xFD7A_115C_A1E0_0000_0000_0000_0000_0000,
    0x2001_0DB8_0000_0000_0000_0000_0000_0001,
    0,
    (1 << 128) - 1,
    0xFE80_0000_0000_0000_1234_5678_9ABC_DEF0,
]


def addr_ints(version: int) -> st.SearchStrategy[int]:
    bits = 32 if version == 4 else 128
    bases = V4_BASES if version == 4 else V6_BASES
    near = st.builds(
        lambda b, k, r: b ^ (r & ((1 << k) - 1)),
        st.sampled_from(bases),
        st.integers(0, bits),
        st.integers(0, (1 << bits) - 1),
    )
    return st.one_of(near, st.integers(0, (1 << bits) - 1))


def networks(version: int) -> st.SearchStrategy[ipaddress._BaseNetwork]:
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.builds(
        lambda a, plen: cls((a, plen), strict=False), addr_ints(version), st.integers(0, bits)
    )


def addresses(version: int) -> st.SearchStrategy[ipaddress._BaseAddress]:
    return addr_ints(version).map(ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "insert", "remove", "remove_existing"]),
        st.sampled_from([4, 6]),
        st.data(),
    ),
    max_size=80,
)


def check_agrees(t: LpmTable, model: SlowLpm, probes: list) -> None:
    assert len(t) == len(model.routes)
    assert t.len4 == sum(1 for n in model.routes if n.version == 4)
    assert sorted(t.items(), key=_key) == sorted(model.routes.items(), key=_key)
    for net, v in model.routes.items():
        assert t.get(net) == v
        assert net in t
    for a in probes:
        assert t.lookup(a) == model.lookup(a), a


def _key(item: tuple) -> tuple:
    net = item[0]
    return (net.version, int(net.network_address), net.prefixlen)


@FAST
@given(data=st.data())
def test_agrees_with_model_under_interleaved_inserts_and_removes(data):
    t = LpmTable()
    model = SlowLpm()
    empty_bytes = t.memory_bytes()
    nsteps = data.draw(st.integers(1, 60))
    for _ in range(nsteps):
        version = data.draw(st.sampled_from([4, 6]))
        op = data.draw(st.sampled_from(["insert", "insert", "remove", "remove_existing"]))
        if op == "insert":
            net = data.draw(networks(version))
            v = data.draw(st.integers(0, 2**31 - 1))
            assert t.insert(net, v) == model.routes.get(net)
            model.routes[net] = v
        elif op == "remove_existing" and model.routes:
            net = data.draw(st.sampled_from(sorted(model.routes, key=lambda n: _key((n,)))))
            assert t.remove(net) == model.routes.pop(net)
        else:
            net = data.draw(networks(version))
            assert t.remove(net) == model.routes.pop(net, None)
        if data.draw(st.booleans()):
            probe = data.draw(addresses(version))
            assert t.lookup(probe) == model.lookup(probe)
    probes = data.draw(st.lists(st.one_of(addresses(4), addresses(6)), max_size=40))
    # Probe the edges of every stored prefix too: first, last, and just outside.
    for net in model.routes:
        probes += [net.network_address, net.broadcast_address]
        if int(net.broadcast_address) < (1 << net.max_prefixlen) - 1:
            probes.append(net.broadcast_address + 1)
    check_agrees(t, model, probes)
    c = t.copy()
    check_agrees(c, model, probes[:20])
    # Removing everything restores the empty shape: no node or leaf is leaked.
    for net in list(model.routes):
        assert t.remove(net) == model.routes.pop(net)
    assert len(t) == 0 and t.items() == []
    assert t.memory_bytes() == empty_bytes


@FAST
@given(nets=st.lists(networks(4), max_size=40), probes=st.lists(addresses(4), max_size=30))
def test_ipv4_every_length(nets, probes):
    t = LpmTable()
    model = SlowLpm()
    for i, n in enumerate(nets):
        t.insert(n, i)
        model.routes[n] = i
    check_agrees(t, model, probes + [n.network_address for n in nets])


@FAST
@given(nets=st.lists(networks(6), max_size=40), probes=st.lists(addresses(6), max_size=30))
def test_ipv6_every_length(nets, probes):
    t = LpmTable()
    model = SlowLpm()
    for i, n in enumerate(nets):
        t.insert(n, i)
        model.routes[n] = i
    check_agrees(t, model, probes + [n.broadcast_address for n in nets])


@pytest.mark.parametrize("version", [4, 6])
def test_all_prefix_lengths_nested(version):
    """One route per length on one address: each address depth hits its own length."""
    bits = 32 if version == 4 else 128
    base = V4_BASES[2] if version == 4 else V6_BASES[0]
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    acls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    t = LpmTable()
    for plen in range(bits + 1):
        t.insert(cls((base, plen), strict=False), plen)
    assert len(t) == bits + 1
    for plen in range(bits + 1):
        # Flip the bit just after the prefix: the match must be exactly /plen.
        probe = base ^ (1 << (bits - plen - 1)) if plen < bits else base
        assert t.lookup(acls(probe)) == plen
    # Remove odd lengths: lookups fall back to the next shorter even length.
    for plen in range(1, bits + 1, 2):
        assert t.remove(cls((base, plen), strict=False)) == plen
    for plen in range(bits + 1):
        probe = base ^ (1 << (bits - plen - 1)) if plen < bits else base
        assert t.lookup(acls(probe)) == plen - (plen % 2)


def test_families_are_separate():
    t = LpmTable({"0.0.0.0/0": 4})
    assert t.lookup("::") is None
    assert t.lookup("8.8.8.8") == 4
    t.insert("::/0", 6)
    assert t.lookup("::ffff:8.8.8.8") == 6
    assert t.len4 == 1 and t.len6 == 1


def test_key_forms_and_truncation():
    t = LpmTable()
    assert t.insert("10.1.2.3/8", 1) is None  # host bits dropped, like wg
    assert t.get("10.0.0.0/8") == 1
    assert t.insert(ipaddress.ip_network("10.0.0.0/8"), 2) == 1
    assert t.insert((b"\x0a\x00\x00\x00", 8), 3) == 2
    assert t.insert(ipaddress.ip_interface("10.9.9.9/8"), 4) == 3
    assert len(t) == 1
    t["192.168.1.1"] = 7  # bare address: host route
    assert t.get("192.168.1.1/32") == 7
    assert t.lookup(b"\xc0\xa8\x01\x01") == 7
    assert t.lookup(ipaddress.ip_address("192.168.1.1")) == 7
    assert t.lookup("192.168.1.2", -1) == -1
    del t["192.168.1.1/32"]
    with pytest.raises(KeyError):
        del t["192.168.1.1/32"]
    with pytest.raises(KeyError):
        t["1.0.0.0/8"]


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/-1",
        "10.0.0.0/x",
        "300.1.1.1/8",
        "nope",
        "1.2.3/8",
        "010.1.1.1",
    ],
)
def test_bad_prefixes_raise_value_error(bad):
    with pytest.raises(ValueError):
        LpmTable().insert(bad, 1)


def test_bad_values_and_types():
    t = LpmTable()
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", -1)
    with pytest.raises(TypeError):
        t.lookup(3.5)
    with pytest.raises(ValueError):
        t.lookup(b"\x00\x01\x02")


def test_frozen_tables_are_read_only_and_copy_is_independent():
    t = LpmTable({"10.0.0.0/8": 1, "fd00::/8": 2}).freeze()
    assert t.frozen
    for mutate in (lambda: t.insert("1.0.0.0/8", 1), lambda: t.remove("10.0.0.0/8"), t.clear):
        with pytest.raises(RuntimeError):
            mutate()
    c = t.copy()
    assert not c.frozen
    c.insert("10.1.0.0/16", 5)
    c.remove("fd00::/8")
    assert t.lookup("10.1.1.1") == 1 and t.lookup("fd00::1") == 2
    assert c.lookup("10.1.1.1") == 5 and c.lookup("fd00::1") is None


def test_clear_and_iteration():
    t = LpmTable({"10.0.0.0/8": 1, "10.0.0.0/24": 2, "::1": 3})
    assert set(t) == {ipaddress.ip_network(n) for n in ("10.0.0.0/8", "10.0.0.0/24", "::1/128")}
    t.clear()
    assert len(t) == 0 and t.lookup("10.0.0.1") is None


# -- batch lookups ------------------------------------------------------------------------


def ipv4_packet(src: int, dst: int, payload: bytes = b"") -> bytes:
    header = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0, src, dst)
    return header + payload


def ipv6_packet(src: int, dst: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), 17, 64)
        + src.to_bytes(16, "big")
        + dst.to_bytes(16, "big")
        + payload
    )


def malformed_packets() -> list[bytes]:
    good4 = ipv4_packet(1, 2)
    good6 = ipv6_packet(1, 2)
    return [
        b"",
        good4[:19],  # truncated IPv4 header
        bytes([0x44]) + good4[1:],  # IHL 4 < 5
        bytes([0x4F]) + good4[1:],  # IHL 15: options beyond the packet
        good6[:39],  # truncated IPv6 header
        bytes([0x50]) + good4[1:],  # version 5
        bytes([0x00]) * 40,  # version 0
    ]


@FAST
@given(
    nets=st.lists(st.one_of(networks(4), networks(6)), max_size=30),
    pkts=st.lists(
        st.one_of(
            st.tuples(st.just(4), addr_ints(4), addr_ints(4)),
            st.tuples(st.just(6), addr_ints(6), addr_ints(6)),
            st.tuples(st.just(0), st.integers(0, 6), st.just(0)),
        ),
        max_size=50,
    ),
    source=st.booleans(),
    dead=st.sets(st.integers(0, 49)),
)
def test_batch_lookup_agrees_with_single_lookups(nets, pkts, source, dead):
    t = LpmTable()
    for i, n in enumerate(nets):
        t.insert(n, i)
    bad = malformed_packets()
    raw = []
    for kind, a, b in pkts:
        if kind == 4:
            raw.append(ipv4_packet(a, b, b"x" * 8))
        elif kind == 6:
            raw.append(ipv6_packet(a, b, b"y" * 3))
        else:
            raw.append(bad[a])
    batch = PacketBatch.from_packets(raw, capacity=max(1, len(raw)))
    for i in dead:
        if i < len(raw):
            batch.set_status(i, DropReason.REPLAY)
    out = array.array("i", [12345] * (len(raw) + 2))
    hits = t.lookup_batch(batch, out, source)
    expected_hits = 0
    for i, (kind, a, b) in enumerate(pkts):
        if i in dead:
            assert out[i] == -1 and batch.status_of(i) == DropReason.REPLAY
        elif kind == 0:
            assert out[i] == -1 and batch.status_of(i) == DropReason.BAD_IP
        else:
            addr = (
                ipaddress.ip_address(a if source else b)
                if kind == 4
                else ipaddress.IPv6Address(a if source else b)
            )
            want = t.lookup(addr)
            assert out[i] == (-1 if want is None else want)
            assert batch.status_of(i) == DropReason.OK
            expected_hits += want is not None
    assert out[len(raw)] == 12345  # nothing written past the batch
    assert hits == expected_hits


def test_batch_lookup_rejects_short_output():
    batch = PacketBatch.from_packets([ipv4_packet(1, 2)] * 3)
    with pytest.raises(ValueError):
        LpmTable().lookup_batch(batch, array.array("i", [0, 0]))


@FAST
@given(
    nets=st.lists(networks(6), max_size=20),
    addrs=st.lists(addr_ints(6), max_size=30),
    nets4=st.lists(networks(4), max_size=20),
    addrs4=st.lists(addr_ints(4), max_size=30),
)
def test_lookup_packed_agrees(nets, addrs, nets4, addrs4):
    t = LpmTable()
    for i, n in enumerate(nets + nets4):
        t.insert(n, i)
    out = array.array("i", [0] * len(addrs))
    assert t.lookup_packed(b"".join(a.to_bytes(16, "big") for a in addrs), 6, out) == len(addrs)
    assert list(out) == [t.lookup(ipaddress.IPv6Address(a), -1) for a in addrs]
    out4 = array.array("i", [0] * len(addrs4))
    t.lookup_packed(b"".join(a.to_bytes(4, "big") for a in addrs4), 4, out4)
    assert list(out4) == [t.lookup(ipaddress.IPv4Address(a), -1) for a in addrs4]
    with pytest.raises(ValueError):
        t.lookup_packed(b"\x00" * 5, 4, out4)


def test_large_random_table_matches_sorted_model():
    """10k random IPv4 prefixes: compare with a per-length dict model (fast brute force)."""
    import random

    rng = random.Random(7)
    t = LpmTable()
    by_len: dict[int, dict[int, int]] = {}
    for i in range(10_000):
        plen = rng.choice([8, 12, 16, 20, 22, 24, 24, 24, 28, 32])
        a = rng.getrandbits(32) & (((1 << plen) - 1) << (32 - plen))
        t.insert((a.to_bytes(4, "big"), plen), i)
        by_len.setdefault(plen, {})[a] = i
    for _ in range(5_000):
        q = rng.getrandbits(32)
        want = None
        for plen in sorted(by_len, reverse=True):
            v = by_len[plen].get(q & (((1 << plen) - 1) << (32 - plen)))
            if v is not None:
                want = v
                break
        assert t.lookup(q.to_bytes(4, "big")) == want
    # Memory stays proportional to the prefix count (a few tens of bytes per prefix).
    assert t.memory_bytes() < 200 * len(t)


def test_interleaved_paths_agree_across_chunks():
    """Batch and packed lookups over >256 addresses (several chunks, all lanes busy)."""
    import random

    rng = random.Random(11)
    t = LpmTable()
    for i in range(3000):
        v = rng.choice([4, 6])
        bits = 32 if v == 4 else 128
        plen = rng.randint(0, bits)
        a = rng.getrandbits(bits) & (((1 << plen) - 1) << (bits - plen))
        t.insert((a.to_bytes(bits // 8, "big"), plen), i)
    stored = [(int(n.network_address), n.version, n.prefixlen) for n, _ in t.items()]
    pkts, want = [], []
    for _ in range(700):
        a, v, plen = rng.choice(stored)
        bits = 32 if v == 4 else 128
        q = a | (rng.getrandbits(bits - plen) if plen < bits else 0)
        if rng.random() < 0.3:
            q = rng.getrandbits(bits)
        pkts.append(ipv4_packet(1, q) if v == 4 else ipv6_packet(1, q))
        want.append(t.lookup(q.to_bytes(bits // 8, "big"), -1))
    batch = PacketBatch.from_packets(pkts, capacity=len(pkts))
    out = array.array("i", [0] * len(pkts))
    assert t.lookup_batch(batch, out) == sum(w >= 0 for w in want)
    assert list(out) == want
    v4 = [p for p in pkts if p[0] >> 4 == 4]
    packed = b"".join(p[16:20] for p in v4)
    out4 = array.array("i", [0] * len(v4))
    t.lookup_packed(packed, 4, out4)
    assert list(out4) == [w for p, w in zip(pkts, want, strict=True) if p[0] >> 4 == 4]
