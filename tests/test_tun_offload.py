"""TUN offloads: TSO segments and partial checksums cut and completed like a NIC would.

``split_offloaded`` runs the exact code of the vnet read loop on one buffer, so these
tests need no TUN device; a pure-Python model (RFC 1071 checksums, RFC 793 sequence
numbers) checks every byte of every piece. The device path itself is exercised by
tests/test_tun.py and the iperf3 runs of tests/test_interface_e2e.py.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from icmp_ping import checksum

from dataplane._batch import DropReason, PacketBatch
from dataplane.transport._tun import split_offloaded

GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP = 0, 1, 4, 3
NEEDS_CSUM = 1
SRC4, DST4 = ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("10.1.0.2")
SRC6, DST6 = ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2")


def vnet(flags: int, gso: int, hdr_len: int = 0, gso_size: int = 0, start: int = 0,
         offset: int = 0) -> bytes:  # fmt: skip
    return struct.pack("=BBHHHH", flags, gso, hdr_len, gso_size, start, offset)


def tcp_segment(v6: bool, payload: bytes, *, seq: int = 1000, flags: int = 0x18,
                ident: int = 7, options: bytes = b"") -> bytes:  # fmt: skip
    """An IP+TCP packet with zero checksums (what the model fills in is checked)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (5 + len(options) // 4) << 4,
                      flags, 65535, 0, 0) + options + payload  # fmt: skip
    if v6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, SRC6.packed,
                           DST6.packed) + tcp  # fmt: skip
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0,
                       SRC4.packed, DST4.packed) + tcp  # fmt: skip


def valid_tcp(pkt: bytes) -> tuple[bool, int, int, bytes]:
    """(checksums ok, seq, flags, payload) of one packet, checked like a receiver would."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        ok = checksum(pkt[:ihl]) == 0
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - ihl)
        tcp = pkt[ihl:]
    else:
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
        ok = True
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(pkt) - 40, 6)
        tcp = pkt[40:]
    ok = ok and checksum(pseudo + tcp) == 0
    seq, flags = struct.unpack_from("!I", tcp, 4)[0], tcp[13]
    return ok, seq, flags, tcp[(tcp[12] >> 4) * 4 :]


@pytest.mark.parametrize("v6", [False, True])
def test_tso_segment_is_cut_into_mss_pieces_with_fixed_headers(v6):
    payload = bytes(range(256)) * 16 + b"tail"  # 4100 bytes: 3 full pieces and a short one
    mss = 1340  # fits 1420 after 40 B IPv6 + 32 B TCP with timestamps
    pkt = tcp_segment(v6, payload, flags=0x19 | 0x80, options=b"\x01\x01\x08\x0a" + bytes(8))
    head = len(pkt) - len(payload)
    batch = PacketBatch(8, mtu=1420)
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    used = split_offloaded(vnet(NEEDS_CSUM, gso, head, mss, head - 32, 16) + pkt, batch)
    assert used == (4, 0) and len(batch) == 4
    pieces = batch.packets()
    assert b"".join(valid_tcp(p)[3] for p in pieces) == payload
    for i, p in enumerate(pieces):
        ok, seq, flags, data = valid_tcp(p)
        assert ok, f"piece {i}: bad checksum"
        assert seq == 1000 + i * mss and len(data) == (mss if i < 3 else len(payload) - 3 * mss)
        ip_len = 40 if v6 else 20
        assert p[ip_len : ip_len + 4] == pkt[ip_len : ip_len + 4]  # ports kept
        # FIN and PSH only on the last piece, CWR only on the first, ACK on all.
        assert flags & 0x10
        assert bool(flags & 0x01) == bool(flags & 0x08) == (i == 3)
        assert bool(flags & 0x80) == (i == 0)
        if not v6:
            assert struct.unpack_from("!H", p, 4)[0] == 7 + i  # IP id counts up


def test_partial_checksum_is_completed():
    for proto, pad in ((6, 0), (17, 1)):
        body = b"x" * (33 + pad)
        if proto == 17:
            l4 = struct.pack("!HHHH", 1, 2, 8 + len(body), 0) + body
            field = 6
        else:
            l4 = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 5 << 4, 0x10, 100, 0, 0) + body
            field = 16
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                         SRC4.packed, DST4.packed)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        # The kernel leaves the pseudo-header sum (not complemented) in the field.
        pseudo = SRC4.packed + DST4.packed + struct.pack("!BBH", 0, proto, len(l4))
        partial = ~checksum(pseudo) & 0xFFFF
        l4 = l4[:field] + struct.pack("!H", partial) + l4[field + 2 :]
        batch = PacketBatch(2)
        assert split_offloaded(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, field) + ip + l4, batch) == (
            1,
            0,
        )
        out = batch.packets()[0]
        assert checksum(pseudo + out[20:]) == 0


def test_plain_packet_without_flags_is_copied_untouched():
    pkt = tcp_segment(False, b"hello")
    batch = PacketBatch(2)
    assert split_offloaded(vnet(0, GSO_NONE) + pkt, batch) == (1, 0)
    assert batch.packets() == [pkt]


def test_a_segment_larger_than_the_batch_continues_in_the_next_one():
    payload = bytes(range(250)) * 16  # 4000 bytes: 4 pieces of 1000
    pkt = tcp_segment(False, payload)
    data = vnet(0, GSO_TCPV4, 40, 1000) + pkt
    first, second = PacketBatch(3, mtu=1420), PacketBatch(8, mtu=1420)
    assert split_offloaded(data, first) == (3, 3)
    assert split_offloaded(data, second, 3) == (1, 0)
    pieces = first.packets() + second.packets()
    assert [valid_tcp(p)[1] for p in pieces] == [1000 + i * 1000 for i in range(4)]
    assert all(valid_tcp(p)[0] for p in pieces)
    assert b"".join(valid_tcp(p)[3] for p in pieces) == payload


@pytest.mark.parametrize(
    "data",
    [
        b"",
        vnet(0, GSO_NONE)[:5],
        vnet(0, GSO_UDP, 28, 1000) + bytes(100),  # UFO is never enabled
        vnet(0, GSO_TCPV4, 40, 1000) + bytes(30),  # shorter than its headers
        vnet(0, GSO_TCPV4, 40, 0) + tcp_segment(False, bytes(100)),  # gso_size 0
        vnet(0, GSO_TCPV4, 40, 1500) + tcp_segment(False, bytes(3000)),  # pieces > MTU
        vnet(0, GSO_TCPV6, 60, 1000) + tcp_segment(False, bytes(100)),  # v4 as v6
        vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 30, 16) + tcp_segment(False, b""),  # field past end
    ],
)
def test_malformed_offload_is_refused(data):
    batch = PacketBatch(4, mtu=1420)
    assert split_offloaded(data, batch)[0] == -1
    assert len(batch) == 0


def test_oversize_plain_packet_is_marked_too_big():
    batch = PacketBatch(2, mtu=200)
    assert split_offloaded(vnet(0, GSO_NONE) + bytes(400), batch) == (1, 0)
    assert batch.status_of(0) == DropReason.TOO_BIG


@settings(max_examples=200, deadline=None)
@given(
    v6=st.booleans(),
    payload=st.binary(min_size=0, max_size=9000),
    mss=st.integers(min_value=1, max_value=1360),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_tso_pieces_reassemble_to_the_segment(v6, payload, mss, seq):
    pkt = tcp_segment(v6, payload, seq=seq, flags=0x18)
    segs = max(1, -(-len(payload) // mss))
    data = vnet(0, GSO_TCPV6 if v6 else GSO_TCPV4, 0, mss) + pkt
    got, first = [], 0
    while True:  # as the read loop does: continue the segment in fresh batches
        batch = PacketBatch(100, mtu=1420)
        used, first = split_offloaded(data, batch, first)
        assert used == len(batch) >= 1
        got += batch.packets()
        if not first:
            break
    assert len(got) == segs
    out = b""
    for i, p in enumerate(got):
        ok, s, _, d = valid_tcp(p)
        assert ok and s == (seq + i * mss) % 2**32
        out += d
    assert out == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_never_crashes(data):
    batch = PacketBatch(64, mtu=1420)
    used, resume = split_offloaded(data, batch)
    assert used == -1 or 1 <= used == len(batch) <= 64
    assert resume == 0 or used == 64


# --- GRO on write: runs of one flow become one super-segment -----------------------------


def checksummed(pkt: bytes) -> bytes:
    """``pkt`` (from tcp_segment) with valid IPv4 header and TCP checksums."""
    v6 = pkt[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    if not v6:
        pkt = pkt[:10] + struct.pack("!H", checksum(pkt[:20])) + pkt[12:]
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - 20)
    else:
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(pkt) - 40, 6)
    tcp = pkt[ip_len:]
    c = checksum(pseudo + tcp[:16] + b"\0\0" + tcp[18:])
    return pkt[: ip_len + 16] + struct.pack("!H", c) + pkt[ip_len + 18 :]


@pytest.fixture
def pipe_io():
    """A TunIO writing into a pipe, so the exact bytes a vnet TUN would get can be read."""
    import fcntl
    import os

    from dataplane.transport._tun import TunIO

    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ: room for a few 64 KiB super-segments
    try:
        yield TunIO(w, -1, vnet_hdr=True), r
    finally:
        os.close(r)
        os.close(w)


def written_units(fd: int) -> list[tuple[bytes, bytes]]:
    """Split what was written into (vnet header, packet) pairs using the IP lengths."""
    import os

    data = b""
    while True:
        try:
            os.set_blocking(fd, False)
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    units = []
    while data:
        hdr, rest = data[:10], data[10:]
        n = (
            struct.unpack_from("!H", rest, 2)[0]
            if rest[0] >> 4 == 4
            else 40 + struct.unpack_from("!H", rest, 4)[0]
        )
        units.append((hdr, rest[:n]))
        data = rest[n:]
    return units


def flow(v6: bool, sizes: list[int], *, seq: int = 5000, ident: int = 100, last_psh=True,
         sport: int = 40000) -> list[bytes]:  # fmt: skip
    out = []
    for i, size in enumerate(sizes):
        flags = 0x10 | (0x08 if last_psh and i == len(sizes) - 1 else 0)
        pkt = tcp_segment(v6, bytes([i]) * size, seq=seq, flags=flags, ident=ident + i,
                          options=b"\x01\x01\x08\x0a" + bytes(8))  # fmt: skip
        pkt = pkt[: 40 if v6 else 20] + struct.pack("!H", sport) + pkt[(40 if v6 else 20) + 2 :]
        out.append(checksummed(pkt))
        seq += size
    return out


@pytest.mark.parametrize("v6", [False, True])
def test_write_merges_a_flow_and_the_kernel_view_splits_back_to_the_same_packets(pipe_io, v6):
    io, r = pipe_io
    pkts = flow(v6, [1300] * 5 + [700])
    written, errors = io.write(PacketBatch.from_packets(pkts))
    assert (written, errors) == (6, {}) and io.tx_merged == 1
    units = written_units(r)
    assert len(units) == 1
    hdr, sup = units[0]
    flags, gso, hdr_len, gso_size, start, offset = struct.unpack("=BBHHHH", hdr)
    assert (flags, gso, gso_size) == (1, GSO_TCPV6 if v6 else GSO_TCPV4, 1300)
    assert (hdr_len, start, offset) == (len(pkts[0]) - 1300, 40 if v6 else 20, 16)
    # What the kernel's TSO would make of it is exactly what we were given.
    back = PacketBatch(16, mtu=1420)
    assert split_offloaded(hdr + sup, back) == (6, 0)
    assert back.packets() == pkts


def test_write_keeps_runs_apart_where_gro_must(pipe_io):
    io, r = pipe_io
    a = flow(False, [1000, 1000, 1000], last_psh=True)  # PSH ends the run
    b = flow(False, [1000, 1000], seq=9000, last_psh=False)  # another run: seq jumps
    c = flow(False, [1000, 1000], sport=40001, seq=11000, last_psh=False)  # another flow
    d = flow(False, [500, 1000], seq=50000, last_psh=False)  # short piece first: no merge
    syn = checksummed(tcp_segment(False, b"syn", flags=0x02))
    junk = b"dropped before the write"
    batch = PacketBatch.from_packets([a[0], junk, *a[1:], *b, *c, *d, syn])
    batch.set_status(1, DropReason.NO_ROUTE)  # a dropped slot inside a run is skipped
    written, errors = io.write(batch)
    assert written == 10 and errors == {} and io.tx_merged == 3
    units = written_units(r)
    assert [struct.unpack("=BB", h[:2])[1] for h, _ in units] == [GSO_TCPV4] * 3 + [0] * 3
    back = PacketBatch(16, mtu=1420)
    for h, p in units[:3]:
        split_offloaded(h + p, back)
    assert back.packets() == a + b + c
    assert [p for _, p in units[3:]] == [*d, syn]


def test_plain_writes_are_marked_checksum_verified(pipe_io):
    io, r = pipe_io
    pkt = checksummed(tcp_segment(False, b"one"))
    assert io.write(PacketBatch.from_packets([pkt])) == (1, {})
    ((hdr, got),) = written_units(r)
    assert hdr == struct.pack("=BBHHHH", 2, 0, 0, 0, 0, 0) and got == pkt
