"""Classification of underlay datagrams and padding removal (dataplane._ident).

Every expectation is checked on the Cython batch loop *and* on the pure-Python model
(``dataplane.ident.classify_datagram`` / ``unpad_packet``); hypothesis then checks that
the two agree on random, truncated and mutated datagrams.
"""

from __future__ import annotations

import os
import struct
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.ident import (
    COUNT_GENEVE,
    DISCO_MAGIC,
    GENEVE,
    GENEVE_CONTROL,
    GENEVE_PROTO_DISCO,
    GENEVE_PROTO_WIREGUARD,
    N_KINDS,
    Kind,
    Verdict,
    classify,
    classify_datagram,
    consume,
    kind_counts,
    unpad,
    unpad_packet,
)

OK = DropReason.OK
SHORT = DropReason.TOO_SHORT
UNCL = DropReason.UNCLASSIFIED
STUN_COOKIE = 0x2112A442


# --- builders ---------------------------------------------------------------------------


def wg(msg_type: int, length: int, fill: int | None = None) -> bytes:
    """A WireGuard-shaped message: type, three zero reserved bytes, then filler."""
    body = os.urandom(length - 4) if fill is None else bytes([fill]) * (length - 4)
    return bytes([msg_type, 0, 0, 0]) + body


def disco(length: int = 62 + 16 + 2 + 44) -> bytes:
    return DISCO_MAGIC + os.urandom(length - len(DISCO_MAGIC))


def stun(
    msg_type: int = 0x0001,
    body: bytes = b"",
    length_field: int | None = None,
    cookie: int = STUN_COOKIE,
) -> bytes:
    n = len(body) if length_field is None else length_field
    return struct.pack("!HHI", msg_type, n, cookie) + os.urandom(12) + body


def geneve(
    proto: int,
    payload: bytes,
    *,
    opt_len: int = 0,
    vni: int = 0x123456,
    control: bool = False,
    critical: bool = False,
    version: int = 0,
    reserved: int = 0,
    trailer: int = 0,
    options: bytes | None = None,
) -> bytes:
    byte0 = (version << 6) | opt_len
    byte1 = (control << 7) | (critical << 6) | reserved
    header = bytes([byte0, byte1]) + proto.to_bytes(2, "big") + vni.to_bytes(3, "big")
    header += bytes([trailer])
    opts = os.urandom(4 * opt_len) if options is None else options
    return header + opts + payload


def run(datagrams, **kw):
    """Classify ``datagrams`` as one batch; return (batch, kinds, vnis)."""
    batch = PacketBatch.from_packets(datagrams, headroom=kw.pop("headroom", 16), **kw)
    vnis = array("I", [0xFFFFFFFF] * len(batch))
    kinds = classify(batch, vnis=memoryview(vnis))
    return batch, kinds, vnis


def verdict_of(datagram: bytes) -> Verdict:
    """The Cython verdict for one datagram, in the model's shape."""
    batch, kinds, vnis = run([datagram])
    strip = batch.offset(0) - batch.headroom
    return Verdict(batch.status_of(0), kinds[0], strip, vnis[0])


def check(
    datagram: bytes, status: DropReason, kind: int = 0, header_len: int = 0, vni: int = 0
) -> None:
    expected = Verdict(status, kind, header_len, vni)
    assert classify_datagram(datagram) == expected
    assert verdict_of(datagram) == expected


# --- each kind ----------------------------------------------------------------------------

STUN_BODY = b"\x00\x20\x00\x08" + os.urandom(8)  # an XOR-MAPPED-ADDRESS-sized attribute

NAKED = [
    pytest.param(wg(1, 148), Kind.WG_INITIATION, id="wg-initiation"),
    pytest.param(wg(2, 92), Kind.WG_RESPONSE, id="wg-response"),
    pytest.param(wg(3, 64), Kind.WG_COOKIE, id="wg-cookie"),
    pytest.param(wg(4, 32), Kind.WG_DATA, id="wg-keepalive"),
    pytest.param(wg(4, 64), Kind.WG_DATA, id="wg-data-64"),
    pytest.param(wg(4, 16 + 1424 + 16), Kind.WG_DATA, id="wg-data-mtu"),
    pytest.param(disco(62), Kind.DISCO, id="disco-header-only"),
    pytest.param(disco(124), Kind.DISCO, id="disco-ping"),
    pytest.param(stun(0x0001), Kind.STUN, id="stun-request"),
    pytest.param(stun(0x0101, STUN_BODY), Kind.STUN, id="stun-success"),
    pytest.param(
        stun(0x0111, b"\x00\x09\x00\x04" + b"\x00\x00\x04\x00"), Kind.STUN, id="stun-error"
    ),
]


@pytest.mark.parametrize("datagram, kind", NAKED)
def test_each_kind_is_classified_and_left_in_place(datagram, kind):
    check(datagram, OK, kind)
    batch, kinds, _ = run([datagram])
    assert bytes(batch[0]) == datagram
    assert batch.offset(0) == batch.headroom


def test_wireguard_kinds_equal_the_message_type():
    assert [Kind.WG_INITIATION, Kind.WG_RESPONSE, Kind.WG_COOKIE, Kind.WG_DATA] == [1, 2, 3, 4]
    assert len(Kind) == N_KINDS


# --- near misses --------------------------------------------------------------------------

NEAR_MISSES = [
    pytest.param(wg(1, 147), SHORT, id="initiation-one-short"),
    pytest.param(wg(1, 149), UNCL, id="initiation-one-long"),
    pytest.param(wg(2, 91), SHORT, id="response-one-short"),
    pytest.param(wg(2, 93), UNCL, id="response-one-long"),
    pytest.param(wg(3, 63), SHORT, id="cookie-one-short"),
    pytest.param(wg(3, 65), UNCL, id="cookie-one-long"),
    pytest.param(wg(4, 31), SHORT, id="data-one-short"),
    pytest.param(wg(4, 16), SHORT, id="data-header-only"),
    pytest.param(wg(0, 148), UNCL, id="type-0"),
    pytest.param(wg(5, 64), UNCL, id="type-5"),
    pytest.param(b"\x01\x01\x00\x00" + bytes(144), UNCL, id="reserved-1-nonzero"),
    pytest.param(b"\x02\x00\x80\x00" + bytes(88), UNCL, id="reserved-2-nonzero"),
    pytest.param(b"\x04\x00\x00\x01" + bytes(60), UNCL, id="reserved-3-nonzero"),
    pytest.param(stun(cookie=0x2112A443), UNCL, id="stun-wrong-cookie"),
    pytest.param(stun(cookie=0x4221A412), UNCL, id="stun-cookie-byte-swapped"),
    pytest.param(stun(0x4001), UNCL, id="stun-top-bits-set"),
    pytest.param(stun(0x0011), UNCL, id="stun-binding-indication"),
    pytest.param(stun(0x0003), UNCL, id="stun-allocate"),
    pytest.param(stun(0x0101, STUN_BODY, length_field=16), SHORT, id="stun-length-past-end"),
    pytest.param(stun(0x0101, STUN_BODY, length_field=8), UNCL, id="stun-trailing-bytes"),
    pytest.param(
        stun(0x0101, STUN_BODY + b"\0\0", length_field=14), UNCL, id="stun-length-not-multiple-of-4"
    ),
    pytest.param(stun(0x0101, STUN_BODY)[:-1], SHORT, id="stun-one-short"),
    pytest.param(stun(0x0001)[:19], SHORT, id="stun-header-truncated"),
    pytest.param(disco(61), SHORT, id="disco-header-one-short"),
    pytest.param(disco(38), SHORT, id="disco-go-naked-threshold"),
    pytest.param(b"TS\xf0\x9f\x92\xad" + bytes(100), UNCL, id="disco-magic-last-byte"),
    pytest.param(b"ts\xf0\x9f\x92\xac" + bytes(100), UNCL, id="disco-magic-lowercase"),
    pytest.param(b"", SHORT, id="empty"),
    pytest.param(bytes(19), SHORT, id="19-zeros"),
    pytest.param(bytes(20), UNCL, id="20-zeros"),
    pytest.param(bytes(range(256)) * 4, UNCL, id="counting-bytes"),
]


@pytest.mark.parametrize("datagram, status", NEAR_MISSES)
def test_near_misses_are_dropped(datagram, status):
    check(datagram, status)


# --- Geneve -------------------------------------------------------------------------------

INNER = [
    pytest.param(GENEVE_PROTO_WIREGUARD, wg(1, 148), Kind.WG_INITIATION, id="initiation"),
    pytest.param(GENEVE_PROTO_WIREGUARD, wg(2, 92), Kind.WG_RESPONSE, id="response"),
    pytest.param(GENEVE_PROTO_WIREGUARD, wg(3, 64), Kind.WG_COOKIE, id="cookie"),
    pytest.param(GENEVE_PROTO_WIREGUARD, wg(4, 32), Kind.WG_DATA, id="keepalive"),
    pytest.param(GENEVE_PROTO_WIREGUARD, wg(4, 96), Kind.WG_DATA, id="data"),
    pytest.param(GENEVE_PROTO_DISCO, disco(), Kind.DISCO, id="disco"),
    pytest.param(GENEVE_PROTO_DISCO, disco(62), Kind.DISCO, id="disco-header-only"),
]


@pytest.mark.parametrize("opt_len", [0, 1, 5, 63])
@pytest.mark.parametrize("proto, inner, kind", INNER)
def test_geneve_wrapped_kinds_are_stripped_in_place(proto, inner, kind, opt_len):
    datagram = geneve(proto, inner, opt_len=opt_len, vni=0xABCDEF)
    hlen = 8 + 4 * opt_len
    check(datagram, OK, kind | GENEVE, hlen, 0xABCDEF)
    batch, kinds, vnis = run([datagram], headroom=0, mtu=2000)
    assert kinds[0] & ~GENEVE == kind
    assert bytes(batch[0]) == inner
    assert batch.offset(0) == hlen
    # The stripped header stays readable in front of the payload.
    assert bytes(batch.slot(0)[:hlen]) == datagram[:hlen]


def test_geneve_control_bit_is_accepted_for_disco_only():
    check(
        geneve(GENEVE_PROTO_DISCO, disco(), control=True, vni=7),
        OK,
        Kind.DISCO | GENEVE | GENEVE_CONTROL,
        8,
        7,
    )
    check(geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64), control=True), UNCL)


GENEVE_MISSES = [
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64), version=1), UNCL, id="version-1"),
    pytest.param(geneve(GENEVE_PROTO_DISCO, disco(), version=3), UNCL, id="version-3"),
    pytest.param(
        geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64), critical=True), UNCL, id="critical-options"
    ),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64), reserved=1), UNCL, id="reserved-bits"),
    pytest.param(geneve(GENEVE_PROTO_DISCO, disco(), trailer=1), UNCL, id="trailer-byte"),
    pytest.param(geneve(0x6558, wg(4, 64)), UNCL, id="protocol-ethernet"),
    pytest.param(geneve(0x0800, wg(4, 64)), UNCL, id="protocol-ipv4"),
    pytest.param(geneve(0x7A13, wg(4, 64)), UNCL, id="protocol-7a13"),
    pytest.param(geneve(GENEVE_PROTO_DISCO, wg(4, 64)), UNCL, id="disco-proto-wg-payload"),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, disco()), UNCL, id="wg-proto-disco-payload"),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, stun()), UNCL, id="wg-proto-stun-payload"),
    pytest.param(geneve(GENEVE_PROTO_DISCO, stun()), UNCL, id="disco-proto-stun-payload"),
    pytest.param(
        geneve(GENEVE_PROTO_WIREGUARD, b"", opt_len=63, options=bytes(200)),
        SHORT,
        id="options-past-end",
    ),
    pytest.param(
        geneve(GENEVE_PROTO_WIREGUARD, b"", opt_len=1, options=b""), SHORT, id="options-missing"
    ),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, wg(1, 147)), SHORT, id="initiation-one-short"),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, wg(4, 31)), SHORT, id="data-too-short"),
    pytest.param(geneve(GENEVE_PROTO_DISCO, disco(61)), SHORT, id="disco-header-one-short"),
    pytest.param(geneve(GENEVE_PROTO_WIREGUARD, b""), SHORT, id="header-only"),
    pytest.param(
        geneve(GENEVE_PROTO_WIREGUARD, geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64))),
        UNCL,
        id="nested-geneve",
    ),
]


@pytest.mark.parametrize("datagram, status", GENEVE_MISSES)
def test_geneve_near_misses_are_dropped(datagram, status):
    check(datagram, status)


def test_geneve_with_options_runs_payload_checks_after_the_options():
    # The options happen to look like a WireGuard header; only the real payload counts.
    opts = wg(4, 32)
    datagram = geneve(GENEVE_PROTO_DISCO, disco(), opt_len=8, options=opts)
    check(datagram, OK, Kind.DISCO | GENEVE, 40, 0x123456)


def test_naked_formats_never_parse_as_geneve():
    # RFC 8926 reading of each naked format: WireGuard has protocol 0, disco version 1,
    # and STUN binding types set reserved bits, so none can be taken for Geneve.
    for d in (wg(1, 148), wg(4, 64), disco(), stun(0x0001), stun(0x0101), stun(0x0111)):
        v = classify_datagram(d)
        assert v.status == OK and v.header_len == 0 and not v.kind & GENEVE


# --- batch behaviour ----------------------------------------------------------------------


def mixed():
    return [
        wg(4, 64),
        bytes(5),
        disco(),
        wg(1, 148),
        stun(0x0101, STUN_BODY),
        geneve(GENEVE_PROTO_WIREGUARD, wg(4, 48), vni=9),
        wg(2, 93),
        geneve(GENEVE_PROTO_DISCO, disco(), control=True, vni=1),
    ]


def test_batch_matches_model_slot_by_slot():
    datagrams = mixed()
    batch, kinds, vnis = run(datagrams)
    for i, d in enumerate(datagrams):
        v = classify_datagram(d)
        assert batch.status_of(i) == v.status
        assert kinds[i] == v.kind
        assert vnis[i] == v.vni
        assert batch.offset(i) == batch.headroom + v.header_len
        if v.status == OK:
            assert bytes(batch[i]) == d[v.header_len :]


def test_dropped_slots_are_left_alone():
    datagrams = mixed()
    batch = PacketBatch.from_packets(datagrams)
    batch.set_status(0, DropReason.QUEUE_FULL)
    batch.set_status(5, DropReason.NO_ROUTE)
    kinds = bytearray(b"\xff" * len(batch))
    assert classify(batch, kinds) is kinds
    assert kinds[0] == kinds[5] == Kind.UNCLASSIFIED
    assert batch.status_of(0) == DropReason.QUEUE_FULL
    assert batch.status_of(5) == DropReason.NO_ROUTE
    assert bytes(batch[5]) == datagrams[5]  # not stripped
    assert kinds[3] == Kind.WG_INITIATION


def test_classify_is_idempotent_on_naked_and_strips_geneve_once():
    batch, kinds, _ = run(mixed())
    before = (
        [int(s) for s in batch.statuses],
        bytes(kinds),
        [batch.offset(i) for i in range(len(batch))],
    )
    k2 = classify(batch)
    after = (
        [int(s) for s in batch.statuses],
        bytes(k2),
        [batch.offset(i) for i in range(len(batch))],
    )
    # Geneve slots are now naked payloads: same base kind, flags gone, no further strip.
    assert before[0] == after[0] and before[2] == after[2]
    assert [k & ~(GENEVE | GENEVE_CONTROL) for k in before[1]] == list(after[1])


def test_kinds_buffer_reuse_and_errors():
    batch = PacketBatch.from_packets(mixed())
    with pytest.raises(ValueError, match="kinds holds 3 entries"):
        classify(batch, bytearray(3))
    with pytest.raises(ValueError, match="vnis holds"):
        classify(batch, vnis=memoryview(array("I", [0])))
    with pytest.raises((TypeError, ValueError, BufferError)):
        classify(batch, bytes(len(batch)))  # read-only
    big = bytearray(500)
    assert classify(batch, big) is big
    assert big[len(batch) :] == bytes(500 - len(batch))
    assert bytes(classify(PacketBatch(capacity=4))) == b""


def test_slot_bounds_cannot_be_corrupted_from_python():
    # classify/unpad also re-check offset + length against the slot before their nogil
    # loops; from Python the invariant cannot even be broken any more.
    batch = PacketBatch.from_packets([wg(4, 64), geneve(GENEVE_PROTO_WIREGUARD, wg(4, 64))])
    with pytest.raises(TypeError):
        batch.length_array[0] = batch.slot_size
    with pytest.raises(ValueError):
        batch.set_bounds(0, batch.headroom, batch.slot_size)
    classify(batch)
    assert batch.offset(1) > batch.headroom  # Geneve header stripped, bounds intact
    assert batch.status_of(0) == OK and batch.status_of(1) == OK


def test_kind_counts():
    batch, kinds, _ = run(mixed())
    counts = kind_counts(batch, kinds)
    assert len(counts) == N_KINDS + 1
    assert counts[Kind.WG_DATA] == 2
    assert counts[Kind.WG_INITIATION] == 1
    assert counts[Kind.DISCO] == 2
    assert counts[Kind.STUN] == 1
    assert counts[Kind.UNCLASSIFIED] == 2
    assert counts[COUNT_GENEVE] == 2
    assert sum(counts[:N_KINDS]) == len(batch)
    batch.set_status(0, DropReason.REPLAY)
    alive = kind_counts(batch, kinds, alive_only=True)
    assert alive[Kind.WG_DATA] == 1 and alive[Kind.UNCLASSIFIED] == 0
    kinds[1] = 9
    with pytest.raises(ValueError, match="base kind 9"):
        kind_counts(batch, kinds)
    with pytest.raises(ValueError):
        kind_counts(batch, kinds[:2])


def test_consume_marks_and_returns_the_wanted_kinds():
    batch, kinds, _ = run(mixed())
    taken = consume(batch, kinds, {Kind.DISCO}, DropReason.DISCO)
    assert taken == [2, 7]
    assert [batch.status_of(i) for i in taken] == [DropReason.DISCO] * 2
    hs = consume(
        batch, kinds, [Kind.WG_INITIATION, Kind.WG_RESPONSE, Kind.WG_COOKIE], DropReason.HANDSHAKE
    )
    assert hs == [3]
    assert consume(batch, kinds, {Kind.DISCO}, DropReason.DISCO) == []  # already taken
    assert batch.alive() == [0, 4, 5]
    with pytest.raises(ValueError, match="not a drop reason"):
        consume(batch, kinds, {Kind.STUN}, DropReason.OK)
    with pytest.raises(ValueError, match="not a kind"):
        consume(batch, kinds, {0}, DropReason.STUN)
    with pytest.raises(ValueError, match="not a kind"):
        consume(batch, kinds, {N_KINDS}, DropReason.STUN)
    assert consume(PacketBatch(), bytearray(), {Kind.STUN}, DropReason.STUN) == []


# --- unpad --------------------------------------------------------------------------------


def ipv4(payload_len: int, ihl: int = 5, total: int | None = None) -> bytes:
    hdr = bytearray(4 * ihl)
    hdr[0] = 0x40 | ihl
    length = 4 * ihl + payload_len if total is None else total
    hdr[2:4] = length.to_bytes(2, "big")
    hdr[8], hdr[9] = 64, 17
    return bytes(hdr) + os.urandom(payload_len)


def ipv6(payload_len: int, plen: int | None = None) -> bytes:
    hdr = bytearray(40)
    hdr[0] = 0x60
    hdr[4:6] = (payload_len if plen is None else plen).to_bytes(2, "big")
    hdr[6], hdr[7] = 17, 64
    return bytes(hdr) + os.urandom(payload_len)


def pad16(pkt: bytes) -> bytes:
    return pkt + bytes(-len(pkt) % 16)


UNPAD = [
    pytest.param(ipv4(44), OK, 64, id="v4-exact"),
    pytest.param(pad16(ipv4(21)), OK, 41, id="v4-padded"),
    pytest.param(pad16(ipv4(0)), OK, 20, id="v4-header-only"),
    pytest.param(pad16(ipv4(3, ihl=15)), OK, 63, id="v4-options"),
    pytest.param(ipv6(24), OK, 64, id="v6-exact"),
    pytest.param(pad16(ipv6(9)), OK, 49, id="v6-padded"),
    pytest.param(ipv6(0), OK, 40, id="v6-header-only"),
    pytest.param(b"", DropReason.KEEPALIVE, 0, id="keepalive"),
    pytest.param(ipv4(10)[:19], DropReason.BAD_IP, 0, id="v4-under-20"),
    pytest.param(ipv4(10, total=31), DropReason.BAD_IP, 0, id="v4-total-one-long"),
    pytest.param(ipv4(10, total=19), DropReason.BAD_IP, 0, id="v4-total-under-20"),
    pytest.param(ipv4(10, ihl=6, total=23), DropReason.BAD_IP, 0, id="v4-total-under-ihl"),
    pytest.param(ipv4(0, ihl=4, total=16) + bytes(8), DropReason.BAD_IP, 0, id="v4-ihl-4"),
    pytest.param(ipv4(0, ihl=4, total=20) + bytes(8), DropReason.BAD_IP, 0, id="v4-ihl-4-tot"),
    pytest.param(ipv6(10)[:39], DropReason.BAD_IP, 0, id="v6-under-40"),
    pytest.param(ipv6(10, plen=11), DropReason.BAD_IP, 0, id="v6-payload-one-long"),
    pytest.param(ipv6(10, plen=0xFFFF), DropReason.BAD_IP, 0, id="v6-payload-huge"),
    pytest.param(b"\x50" + bytes(63), DropReason.BAD_IP, 0, id="version-5"),
    pytest.param(bytes(64), DropReason.BAD_IP, 0, id="version-0-zeros"),
    pytest.param(b"\x00", DropReason.BAD_IP, 0, id="one-byte"),
]


@pytest.mark.parametrize("pkt, status, length", UNPAD)
def test_unpad(pkt, status, length):
    assert unpad_packet(pkt) == (status, length)
    batch = PacketBatch.from_packets([pkt])
    alive = unpad(batch)
    assert batch.status_of(0) == status
    assert alive == (status == OK)
    if status == OK:
        assert bytes(batch[0]) == pkt[:length]
        assert batch.offset(0) == batch.headroom
    else:
        assert bytes(batch[0]) == pkt  # dropped slots keep their bytes


def test_unpad_batch_skips_dropped_slots_and_counts_survivors():
    pkts = [pad16(ipv4(7)), b"", pad16(ipv6(3)), b"\x45" + bytes(3), pad16(ipv4(1))]
    batch = PacketBatch.from_packets(pkts)
    batch.set_status(4, DropReason.SOURCE_FILTER)
    assert unpad(batch) == 2
    assert [batch.status_of(i) for i in range(5)] == [
        OK,
        DropReason.KEEPALIVE,
        OK,
        DropReason.BAD_IP,
        DropReason.SOURCE_FILTER,
    ]
    assert list(batch.length_array) == [27, 0, 43, 4, 32]
    assert unpad(batch) == 2  # idempotent
    assert unpad(PacketBatch()) == 0


# --- properties ---------------------------------------------------------------------------

SAMPLES = (
    [p.values[0] for p in NAKED]
    + [p.values[1] for p in INNER]
    + [geneve(proto, inner, opt_len=2) for proto, inner, _ in (p.values for p in INNER)]
)
SAMPLES_BY_KIND = [geneve(GENEVE_PROTO_DISCO, disco(), control=True)] + SAMPLES

FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def agree(datagrams) -> None:
    batch, kinds, vnis = run(datagrams, mtu=2048)
    for i, d in enumerate(datagrams):
        v = classify_datagram(d)
        got = Verdict(batch.status_of(i), kinds[i], batch.offset(i) - batch.headroom, vnis[i])
        assert got == v, (i, d.hex())
        assert v.status in (OK, SHORT, UNCL)
        assert (v.status == OK) == (v.kind != 0)
        assert bytes(batch[i]) == d[v.header_len :]


def test_truncation_at_every_offset_agrees_with_model():
    for d in SAMPLES_BY_KIND:
        agree([d[:n] for n in range(len(d) + 1)])
        # and one byte appended: still never an exception
        agree([d + b"\0", d + b"\xff"])


@FEW
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=40))
def test_random_bytes_agree_with_model(datagrams):
    agree(datagrams)


@st.composite
def mutated(draw):
    d = bytearray(draw(st.sampled_from(SAMPLES_BY_KIND)))
    for _ in range(draw(st.integers(0, 3))):
        if not d:
            break
        i = draw(st.integers(0, len(d) - 1))
        d[i] = draw(st.sampled_from([0, 1, 0x40, 0x80, 0xFF, d[i] ^ 1, d[i]]))
    cut = draw(st.integers(0, len(d)))
    return bytes(d[:cut]) if draw(st.booleans()) else bytes(d)


@FEW
@given(st.lists(mutated(), min_size=1, max_size=20))
def test_mutated_messages_agree_with_model(datagrams):
    agree(datagrams)


@st.composite
def ip_like(draw):
    version = draw(st.sampled_from([4, 6, 0, 5, 15]))
    low = draw(st.integers(0, 15))
    n = draw(st.integers(0, 120))
    body = bytearray(draw(st.binary(min_size=n, max_size=n)))
    if body:
        body[0] = (version << 4) | low
    if len(body) >= 6 and draw(st.booleans()):
        # a plausible length field, near the real size
        want = max(0, len(body) - draw(st.integers(-2, 20)) - (40 if version == 6 else 0))
        at = 4 if version == 6 else 2
        body[at : at + 2] = min(want, 0xFFFF).to_bytes(2, "big")
    return bytes(body)


@FEW
@given(st.lists(ip_like(), min_size=1, max_size=40))
def test_unpad_agrees_with_model(pkts):
    batch = PacketBatch.from_packets(pkts)
    unpad(batch)
    for i, p in enumerate(pkts):
        status, length = unpad_packet(p)
        assert batch.status_of(i) == status
        assert len(batch[i]) == (length if status == OK else len(p))


def test_threads_classify_and_unpad_distinct_batches():
    # The loops run without the GIL; distinct batches in distinct threads must not interfere.
    import threading

    datagrams = mixed() * 16
    plain = [pad16(ipv4(i % 40)) for i in range(128)]
    expected = [classify_datagram(d) for d in datagrams]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                batch, kinds, vnis = run(datagrams)
                assert [batch.status_of(i) for i in range(len(batch))] == [
                    v.status for v in expected
                ]
                assert list(kinds) == [v.kind for v in expected]
                pb = PacketBatch.from_packets(plain)
                assert unpad(pb) == 128
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, name=f"ident-{n}") for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_full_mtu_data_is_classified_although_not_a_multiple_of_16():
    # Regression: a 1420-byte plaintext is not padded (padding stops at the MTU), so its
    # datagram is 16 + 1420 + 16 = 1452 bytes, which is not a multiple of 16.
    for n in (1452, 33, 47):
        batch = PacketBatch.from_packets([wg(4, n)])
        assert bytes(classify(batch)) == bytes([Kind.WG_DATA])
        assert batch.status_of(0) == OK
        v = classify_datagram(wg(4, n))
        assert (v.status, v.kind) == (OK, Kind.WG_DATA)
