"""IPv4/IPv6 + UDP push/parse and the ICMP echo responder against the struct model."""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.netstack import _ip
from dataplane.transport import ip_model as model

V4 = ("100.64.0.1", "100.64.0.2")
V6 = ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2")
HEADROOM = 16 + _ip.IPV6_HEADER  # what the overlay sockets use

ipv4s = st.integers(1, 0xDFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6s = (
    st.integers(1, (1 << 128) - 1)
    .map(lambda n: ipaddress.IPv6Address(n))
    .filter(lambda a: a.ipv4_mapped is None and not a.is_multicast)
    .map(str)
)
ports = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=1400)
flows = st.one_of(st.tuples(ipv4s, ipv4s), st.tuples(ipv6s, ipv6s))


def batch_of(packets, headroom: int = 16, **kw) -> PacketBatch:
    return PacketBatch.from_packets(
        packets, mtu=max([1, *map(len, packets)]), headroom=headroom, **kw
    )


def c_parse(pkt: bytes) -> model.Parsed:
    """The Cython parser's view of one packet, in the model's terms."""
    b = batch_of([pkt])
    r = _ip.parse_udp(b)
    name = _ip.VERDICT_NAMES[r.verdict(0)]
    if name != "ok":
        return model.Parsed(name)
    assert b.status_of(0) == DropReason.OK
    return model.Parsed("ok", r.source(0), r.destination(0), bytes(r.payload(0)))


# -- checksum -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071_model(data):
    assert _ip.checksum(data) == model.checksum(data)


def test_checksum_known_answer():
    # RFC 1071 §3 example words 0001 f203 f4f5 f6f7: sum ddf2, checksum 220d.
    assert _ip.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # A header holding its own checksum sums to all ones: checksum 0.
    hdr = model.ip_header("192.0.2.1", "198.51.100.7", 17, 8)
    assert _ip.checksum(hdr) == 0


# -- building -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(flows, ports, ports, st.lists(payloads, min_size=1, max_size=6))
def test_push_udp_matches_model_byte_for_byte(flow, sport, dport, datas):
    src, dst = flow
    b = batch_of(datas, headroom=HEADROOM)
    assert _ip.push_udp(b, src, dst, sport, dport) == len(datas)
    for i, data in enumerate(datas):
        expect = model.udp(src, dst, sport, dport, data)
        assert bytes(b[i]) == expect
        # The finished packet leaves the 16 bytes of headroom the core needs.
        assert b.offset(i) == HEADROOM - (len(expect) - len(data))
        assert b.offset(i) >= 16
        parsed = model.parse_udp(expect)
        assert parsed.verdict == "ok" and parsed.payload == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(flows, ports, ports, payloads), min_size=1, max_size=8))
def test_push_udp_each_per_slot_flows_round_trip_through_parse(items):
    b = batch_of([d for _, _, _, d in items], headroom=HEADROOM)
    addrs = b"".join(_ip.pack_address(s) + _ip.pack_address(d) for (s, d), _, _, _ in items)
    port_arr = memoryview(bytearray(4 * len(items))).cast("H")
    for i, (_, sp, dp, _) in enumerate(items):
        port_arr[2 * i], port_arr[2 * i + 1] = sp, dp
    assert _ip.push_udp_each(b, addrs, port_arr) == len(items)
    r = _ip.parse_udp(b)
    assert r.good == len(items)
    for i, ((s, d), sp, dp, data) in enumerate(items):
        assert bytes(b[i]) == model.udp(s, d, sp, dp, data)
        assert r.source(i) == (s, sp)
        assert r.destination(i) == (d, dp)
        assert bytes(r.payload(i)) == data
    assert [(p, src) for _, _, p, src in r.datagrams()] == [
        (data, (s, sp)) for (s, _), sp, _, data in items
    ]


def test_push_udp_room_family_and_size_limits():
    b = batch_of([b"a", b"b"], headroom=40)  # room for IPv4 (28) but not IPv6 (48)
    assert _ip.push_udp(b, *V6, 1, 2) == 0
    assert [b.status_of(i) for i in range(2)] == [DropReason.NO_ROOM] * 2
    b = batch_of([b"a"], headroom=40)
    assert _ip.push_udp(b, *V4, 1, 2) == 1
    assert bytes(b[0]) == model.udp(*V4, 1, 2, b"a")

    with pytest.raises(ValueError, match="family"):
        _ip.push_udp(batch_of([b"x"], headroom=64), V4[0], V6[1], 1, 2)
    with pytest.raises(ValueError, match="not an IP address"):
        _ip.push_udp(batch_of([b"x"], headroom=64), "nope", V4[1], 1, 2)
    with pytest.raises(ValueError, match="ports"):
        _ip.push_udp(batch_of([b"x"], headroom=64), *V4, 1, 70000)

    # Per-slot: a mixed-family slot is dropped, the others built.
    b = batch_of([b"ok", b"mixed"], headroom=64)
    addrs = (
        _ip.pack_address(V4[0])
        + _ip.pack_address(V4[1])
        + _ip.pack_address(V4[0])
        + _ip.pack_address(V6[1])
    )
    assert _ip.push_udp_each(b, addrs, memoryview(bytearray(8)).cast("H")) == 1
    assert b.status_of(1) == DropReason.BAD_IP
    with pytest.raises(ValueError, match="addrs"):
        _ip.push_udp_each(b, addrs[:40], memoryview(bytearray(8)).cast("H"))

    # A UDP length above 65535 cannot be expressed.
    big = PacketBatch(1, mtu=65530, headroom=64)
    big.append(bytes(65530))
    assert _ip.push_udp(big, *V6, 1, 2) == 0
    assert big.status_of(0) == DropReason.TOO_BIG


def test_dead_slots_are_left_alone_and_bounds_are_checked():
    b = batch_of([b"keep", b"dead"], headroom=64)
    b.set_status(1, DropReason.NO_ROUTE)
    before = bytes(b.slot(1))
    assert _ip.push_udp(b, *V4, 5, 6) == 1
    assert bytes(b.slot(1)) == before and b.status_of(1) == DropReason.NO_ROUTE
    r = _ip.parse_udp(b)
    assert r.verdict(1) == _ip.SKIPPED and r.verdict(0) == _ip.OK
    with pytest.raises(ValueError, match="not a good UDP datagram"):
        r.source(1)


# -- parsing ------------------------------------------------------------------------------


def v6_with_ext(src, dst, sport, dport, data, exts: list[tuple[int, bytes]]) -> bytes:
    """An IPv6 UDP packet with extension headers ``(type, body)`` (body padded to 8n-2)."""
    udp = model.udp(src, dst, sport, dport, data)[40:]
    chain = b""
    types = [t for t, _ in exts] + [17]
    for k, (_, body) in enumerate(exts):
        body = body + bytes(-(len(body) + 2) % 8)
        chain += bytes([types[k + 1], (len(body) + 2) // 8 - 1]) + body
    plen = len(chain) + len(udp)
    fixed = struct.pack("!IHBB", 6 << 28, plen, types[0], 64)
    return fixed + _ip.pack_address(src) + _ip.pack_address(dst) + chain + udp


def frag_v4(src, dst, data, flags_frag) -> bytes:
    pkt = model.udp(src, dst, 1, 2, data)
    seg = pkt[20:]
    return model.ip_header(src, dst, 17, len(seg), flags_frag=flags_frag) + seg


CASES = {
    "v4_ok": model.udp(*V4, 1000, 53, b"query"),
    "v6_ok": model.udp(*V6, 1000, 53, b"query"),
    "v4_empty_payload": model.udp(*V4, 1, 2, b""),
    "v4_zero_checksum_allowed": (lambda p: p[:26] + b"\0\0" + p[28:])(model.udp(*V4, 1, 2, b"abc")),
    "v6_zero_checksum": (lambda p: p[:46] + b"\0\0" + p[48:])(model.udp(*V6, 1, 2, b"abc")),
    "v4_bad_udp_checksum": (lambda p: p[:-1] + bytes([p[-1] ^ 1]))(model.udp(*V4, 1, 2, b"abc")),
    "v6_bad_udp_checksum": (lambda p: p[:-1] + bytes([p[-1] ^ 1]))(model.udp(*V6, 1, 2, b"abc")),
    "v4_bad_header_checksum": (lambda p: p[:8] + b"\x3f" + p[9:])(model.udp(*V4, 1, 2, b"abc")),
    "v4_more_fragments": frag_v4(*V4, b"abc", 0x2000),
    "v4_fragment_offset": frag_v4(*V4, b"abc", 0x0010),
    "v6_fragment_header": v6_with_ext(*V6, 1, 2, b"abc", [(44, bytes(6))]),
    "v6_hop_by_hop_and_dest_opts": v6_with_ext(*V6, 7, 8, b"ext", [(0, b""), (60, bytes(12))]),
    "v6_routing_done": v6_with_ext(*V6, 7, 8, b"rt", [(43, bytes(6))]),
    "v6_routing_segments_left": v6_with_ext(*V6, 7, 8, b"rt", [(43, b"\x00\x01" + bytes(4))]),
    "v6_too_many_ext": v6_with_ext(*V6, 7, 8, b"x", [(60, b"")] * 9),
    "v6_mapped_source": model.udp("::ffff:10.0.0.1", V6[1], 1, 2, b"x"),
    "v4_trailing_bytes": model.udp(*V4, 1, 2, b"abc") + b"pad",
    "v4_udp_length_short": (lambda seg: model.ip_header(*V4, 17, len(seg)) + seg)(
        model.udp(*V4, 1, 2, b"a")[20:] + b"bcd"
    ),
    "v4_udp_length_long": (lambda p: p[:24] + struct.pack("!H", 200) + p[26:])(
        model.udp(*V4, 1, 2, b"abcd")
    ),
    "v4_udp_length_tiny": (lambda p: p[:24] + struct.pack("!H", 4) + p[26:])(
        model.udp(*V4, 1, 2, b"abcd")
    ),
    "v4_icmp": model.echo(*V4, 1, 1, b"ping"),
    "v6_icmp": model.echo(*V6, 1, 1, b"ping"),
    "v4_tcp": (lambda h: h + bytes(20))(model.ip_header(*V4, 6, 20)),
    "v4_truncated": model.udp(*V4, 1, 2, b"abcdef")[:-3],
    "v6_truncated": model.udp(*V6, 1, 2, b"abcdef")[:39],
    "v4_ihl_too_small": b"\x44" + model.udp(*V4, 1, 2, b"x")[1:],
    "version_5": b"\x50" + bytes(59),
    "empty": b"",
}

EXPECTED = {
    "v4_ok": "ok",
    "v6_ok": "ok",
    "v4_empty_payload": "ok",
    "v4_zero_checksum_allowed": "ok",
    "v6_zero_checksum": "bad_checksum",
    "v4_bad_udp_checksum": "bad_checksum",
    "v6_bad_udp_checksum": "bad_checksum",
    "v4_bad_header_checksum": "bad_checksum",
    "v4_more_fragments": "fragment",
    "v4_fragment_offset": "fragment",
    "v6_fragment_header": "fragment",
    "v6_hop_by_hop_and_dest_opts": "ok",
    "v6_routing_done": "ok",
    "v6_routing_segments_left": "bad_header",
    "v6_too_many_ext": "bad_header",
    "v6_mapped_source": "bad_header",
    "v4_trailing_bytes": "ok",
    "v4_udp_length_short": "ok",
    "v4_udp_length_long": "truncated",
    "v4_udp_length_tiny": "bad_header",
    "v4_icmp": "not_udp",
    "v6_icmp": "not_udp",
    "v4_tcp": "not_udp",
    "v4_truncated": "truncated",
    "v6_truncated": "truncated",
    "v4_ihl_too_small": "bad_header",
    "version_5": "bad_header",
    "empty": "truncated",
}

STATUS = {
    "ok": DropReason.OK,
    "truncated": DropReason.TOO_SHORT,
    "bad_header": DropReason.BAD_IP,
    "not_udp": DropReason.BAD_TYPE,
    "fragment": DropReason.FRAGMENT,
    "bad_checksum": DropReason.BAD_CHECKSUM,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parse_cases_agree_with_model_and_expectation(name):
    pkt = CASES[name]
    got, want = c_parse(pkt), model.parse_udp(pkt)
    assert got == want
    assert got.verdict == EXPECTED[name]
    b = batch_of([pkt])
    _ip.parse_udp(b)
    assert b.status_of(0) == STATUS[got.verdict]


def test_parse_specific_fields():
    r = c_parse(CASES["v6_hop_by_hop_and_dest_opts"])
    assert r.src == (V6[0], 7) and r.dst == (V6[1], 8) and r.payload == b"ext"
    # A UDP length shorter than the IP payload ends the datagram there (RFC 768).
    assert c_parse(CASES["v4_udp_length_short"]).payload == b"a"
    assert c_parse(CASES["v4_trailing_bytes"]).payload == b"abc"


def mutations(pkt: bytes, rng: random.Random, n: int):
    for _ in range(n):
        m = bytearray(pkt)
        op = rng.randrange(3)
        if op == 0 and m:
            for _ in range(rng.randint(1, 3)):
                m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del m[rng.randrange(len(m) + 1) :]
        else:
            m += os.urandom(rng.randrange(8))
        yield bytes(m)


def test_parse_agrees_with_model_on_mutated_packets():
    rng = random.Random(6)
    seeds = [CASES[k] for k in sorted(CASES)]
    pkts = [m for s in seeds for m in mutations(s, rng, 60)]
    b = batch_of(pkts)
    r = _ip.parse_udp(b)
    for i, pkt in enumerate(pkts):
        want = model.parse_udp(pkt)
        assert _ip.VERDICT_NAMES[r.verdict(i)] == want.verdict, pkt.hex()
        if want.verdict == "ok":
            assert (r.source(i), r.destination(i), bytes(r.payload(i))) == (
                want.src,
                want.dst,
                want.payload,
            )
        assert b.status_of(i) == STATUS[want.verdict]
    assert r.good == sum(c == "ok" for c in map(lambda p: model.parse_udp(p).verdict, pkts))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=16))
def test_hostile_random_bytes_give_statuses_never_exceptions(pkts):
    # Make the version nibble interesting half the time.
    pkts = [
        bytes([(0x45, 0x60)[k % 2] | (p[0] & 0x0F)]) + p[1:] if p and k % 3 else p
        for k, p in enumerate(pkts)
    ]
    b = batch_of(pkts)
    r = _ip.parse_udp(b)
    for i, p in enumerate(pkts):
        assert _ip.VERDICT_NAMES[r.verdict(i)] == model.parse_udp(p).verdict
    b2 = batch_of(pkts)
    turned = _ip.echo_reply(b2, _ip.pack_address(V4[1]) + _ip.pack_address(V6[1]))
    for i, p in enumerate(pkts):
        want = model.echo_reply(p, {V4[1], V6[1]})
        assert (i in turned) == (want is not None)
        assert bytes(b2[i]) == (want if want is not None else p)


def test_truncations_of_valid_packets():
    for pkt in (CASES["v4_ok"], CASES["v6_ok"], CASES["v6_hop_by_hop_and_dest_opts"]):
        cut = [pkt[:k] for k in range(len(pkt))]
        b = batch_of(cut)
        r = _ip.parse_udp(b)
        assert r.good == 0
        assert all(
            _ip.VERDICT_NAMES[r.verdict(i)] == model.parse_udp(p).verdict for i, p in enumerate(cut)
        )


def test_parse_reuses_its_result_object_and_grows():
    r = _ip.UdpParse(2)
    b = batch_of([CASES["v4_ok"]] * 5)
    r2 = _ip.parse_udp(b, r)
    assert r2 is not r and r2.capacity >= 5 and r2.good == 5
    r3 = _ip.parse_udp(batch_of([CASES["v6_ok"]]), r2)
    assert r3 is r2 and r3.count == 1 and r3.source(0) == (V6[0], 1000)
    with pytest.raises(IndexError):
        r3.verdict(1)


# -- ICMP echo ----------------------------------------------------------------------------

OURS = {V4[1], V6[1]}
OURS16 = b"".join(_ip.pack_address(a) for a in sorted(OURS))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([V4, V6]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=1000),
)
def test_echo_reply_matches_model_and_is_a_valid_reply(flow, ident, seq, data):
    src, dst = flow
    req = model.echo(src, dst, ident, seq, data)
    b = batch_of([req])
    assert _ip.echo_reply(b, OURS16) == [0]
    got = bytes(b[0])
    assert got == model.echo_reply(req, OURS)
    # ... which is exactly the reply our address would build from scratch.
    assert got == model.echo(dst, src, ident, seq, data, reply=True)
    assert b.status_of(0) == DropReason.OK


def test_echo_leaves_everything_else_untouched():
    other = "100.64.0.99"
    pkts = [
        model.echo(V4[0], other, 1, 1),  # not our address
        model.echo(V4[1], V4[0], 1, 1, reply=True),  # a reply, not a request
        model.echo(V6[0], V6[1], 1, 1, reply=True),
        CASES["v4_ok"],  # UDP
        model.echo("224.0.0.1", V4[1], 1, 1),  # multicast source
        model.echo("0.0.0.0", V4[1], 1, 1),  # unspecified source
        model.echo("ff02::1", V6[1], 1, 1),
        (lambda p: p[:-1] + bytes([p[-1] ^ 0x80]))(model.echo(V4[0], V4[1], 1, 1, b"x")),
        (lambda p: p[:-1] + bytes([p[-1] ^ 0x80]))(model.echo(V6[0], V6[1], 1, 1, b"x")),
        (lambda p: p[:21] + b"\x01" + p[22:])(model.echo(V4[0], V4[1], 1, 1)),  # code 1
        model.echo(V4[0], V4[1], 1, 1)[:27],  # truncated ICMP
    ]
    b = batch_of(pkts)
    assert _ip.echo_reply(b, OURS16) == []
    assert b.packets() == pkts
    assert all(b.status_of(i) == DropReason.OK for i in range(len(pkts)))

    # Dead slots are not answered even when they are echo requests to us.
    b = batch_of([model.echo(V4[0], V4[1], 1, 1)])
    b.set_status(0, DropReason.PACKET_FILTER)
    assert _ip.echo_reply(b, OURS16) == []
    # No addresses of ours: nothing is ours.
    assert _ip.echo_reply(batch_of([model.echo(V4[0], V4[1], 1, 1)]), b"") == []
    with pytest.raises(ValueError, match="16 bytes"):
        _ip.echo_reply(b, b"\x00" * 15)


def test_echo_reply_trims_bytes_beyond_the_ip_length_and_mixes_with_udp():
    req = model.echo(V4[0], V4[1], 9, 10, b"data")
    b = batch_of([CASES["v4_ok"], req + b"junk", model.echo(V6[0], V6[1], 3, 4, b"six")])
    assert _ip.echo_reply(b, OURS16) == [1, 2]
    assert bytes(b[1]) == model.echo(V4[1], V4[0], 9, 10, b"data", reply=True)
    assert bytes(b[2]) == model.echo(V6[1], V6[0], 3, 4, b"six", reply=True)
    assert bytes(b[0]) == CASES["v4_ok"]


def test_kernels_run_concurrently_from_threads():
    # The loops release the GIL; separate batches from several threads must not interfere.
    pkts = [model.udp(*V4, 1, 2, os.urandom(100)) for _ in range(64)]
    errors = []

    def work():
        try:
            for _ in range(50):
                b = batch_of(pkts)
                r = _ip.parse_udp(b)
                assert r.good == 64
                assert [p for _, _, p, _ in r.datagrams()] == [p[28:] for p in pkts]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, name=f"ip-{k}") for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_address_helpers():
    assert _ip.pack_address("1.2.3.4") == b"\0" * 10 + b"\xff\xff\x01\x02\x03\x04"
    assert _ip.pack_address(b"\x01\x02\x03\x04") == _ip.pack_address("1.2.3.4")
    assert _ip.unpack_address(_ip.pack_address("fd00::1")) == "fd00::1"
    assert _ip.unpack_address(_ip.pack_address("1.2.3.4")) == "1.2.3.4"
    with pytest.raises(ValueError):
        _ip.pack_address("1.2.3")
    with pytest.raises(ValueError):
        _ip.pack_address(b"abc")


def test_results_refuse_a_batch_changed_after_parsing():
    b = batch_of([CASES["v4_ok"]])
    r = _ip.parse_udp(b)
    b.set_bounds(0, b.slot_size - 4, 4)
    with pytest.raises(ValueError, match="changed"):
        r.datagrams()
    b.clear()
    with pytest.raises(ValueError, match="changed"):
        r.datagrams()
