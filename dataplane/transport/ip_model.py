"""Slow, obviously-correct reference for ``dataplane.netstack._ip``: struct + RFC 1071.

Theory of operation: every function here handles one packet as ``bytes`` with the
standard library only, written straight from the RFCs (768 UDP, 791 IPv4, 792 ICMP,
8200 IPv6, 4443 ICMPv6, 1071 checksum) and independent of the Cython code. The tests
compare the batch kernels with it packet by packet; tools and tests also use it to craft
packets the data plane never sends itself (pings, fragments, options, bad checksums).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PROTO_ICMP = 1
PROTO_UDP = 17
PROTO_ICMPV6 = 58
TTL = 64
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def checksum(data: bytes) -> int:
    """RFC 1071: one's complement of the one's complement sum of big-endian 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = _packed(src), _packed(dst)
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!I3xB", length, proto)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = TTL) -> bytes:
    """The IPv4 (DF, ID 0) or IPv6 datagram our sockets send: UDP checksum always set."""
    ulen = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, ulen, 0)
    c = checksum(pseudo_header(src, dst, PROTO_UDP, ulen) + header + payload) or 0xFFFF
    segment = header[:6] + struct.pack("!H", c) + payload
    return ip_header(src, dst, PROTO_UDP, len(segment), ttl=ttl) + segment


def ip_header(
    src: str, dst: str, proto: int, l4_len: int, *, ttl: int = TTL, flags_frag: int = 0x4000
) -> bytes:
    s, d = _packed(src), _packed(dst)
    if len(s) == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0, flags_frag, ttl, proto, 0, s, d)
        return h[:10] + struct.pack("!H", checksum(h)) + h[12:]
    return struct.pack("!IHBB16s16s", 6 << 28, l4_len, proto, ttl, s, d)


def echo(
    src: str, dst: str, ident: int, seq: int, data: bytes = b"", *, reply: bool = False
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request (or reply) with correct checksums."""
    v6 = ipaddress.ip_address(src).version == 6
    if v6:
        kind, proto = (129 if reply else 128), PROTO_ICMPV6
    else:
        kind, proto = (0 if reply else 8), PROTO_ICMP
    msg = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    covered = pseudo_header(src, dst, proto, len(msg)) + msg if v6 else msg
    msg = msg[:2] + struct.pack("!H", checksum(covered)) + msg[4:]
    return ip_header(src, dst, proto, len(msg)) + msg


@dataclass
class Parsed:
    """What the model makes of one packet: a verdict name and, for good UDP, its fields."""

    verdict: str
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None
    payload: bytes | None = None


def _locate(pkt: bytes) -> tuple[str, int, str, str, int, int] | str:
    """(version, proto, src, dst, l4 offset, end) of a valid IP packet, else a verdict."""
    if not pkt:
        return "truncated"
    version = pkt[0] >> 4
    if version == 4:
        if len(pkt) < 20:
            return "truncated"
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        if ihl < 20 or total < ihl:
            return "bad_header"
        if total > len(pkt):
            return "truncated"
        if checksum(pkt[:ihl]) != 0:
            return "bad_checksum"
        if struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:
            return "fragment"
        src = str(ipaddress.IPv4Address(pkt[12:16]))
        dst = str(ipaddress.IPv4Address(pkt[16:20]))
        return ("4", pkt[9], src, dst, ihl, total)
    if version == 6:
        if len(pkt) < 40:
            return "truncated"
        end = 40 + struct.unpack_from("!H", pkt, 4)[0]
        if end > len(pkt):
            return "truncated"
        if pkt[8:20] == _MAPPED or pkt[24:36] == _MAPPED:
            return "bad_header"
        nh, off = pkt[6], 40
        for _ in range(8):
            if nh in (0, 43, 60):
                if off + 8 > end:
                    return "truncated"
                if nh == 43 and pkt[off + 3] != 0:
                    return "bad_header"
                hlen = (pkt[off + 1] + 1) * 8
                if off + hlen > end:
                    return "truncated"
                nh, off = pkt[off], off + hlen
            elif nh == 44:
                return "fragment"
            else:
                src = str(ipaddress.IPv6Address(pkt[8:24]))
                dst = str(ipaddress.IPv6Address(pkt[24:40]))
                return ("6", nh, src, dst, off, end)
        return "bad_header"
    return "bad_header"


def parse_udp(pkt: bytes) -> Parsed:
    loc = _locate(pkt)
    if isinstance(loc, str):
        return Parsed(loc)
    version, proto, src, dst, off, end = loc
    if proto != PROTO_UDP:
        return Parsed("not_udp")
    if end - off < 8:
        return Parsed("truncated")
    sport, dport, ulen, csum = struct.unpack_from("!HHHH", pkt, off)
    if ulen < 8:
        return Parsed("bad_header")
    if ulen > end - off:
        return Parsed("truncated")
    segment = pkt[off : off + ulen]
    if csum == 0:
        if version == "6":
            return Parsed("bad_checksum")
    elif checksum(pseudo_header(src, dst, PROTO_UDP, ulen) + segment) != 0:
        return Parsed("bad_checksum")
    return Parsed("ok", (src, sport), (dst, dport), segment[8:])


def echo_reply(pkt: bytes, ours: set[str]) -> bytes | None:
    """The reply our responder must produce for ``pkt``, or None if it must not answer."""
    loc = _locate(pkt)
    if isinstance(loc, str):
        return None
    version, proto, src, dst, off, end = loc
    msg = pkt[off:end]
    if len(msg) < 8 or msg[1] != 0:
        return None
    want = (PROTO_ICMP, 8) if version == "4" else (PROTO_ICMPV6, 128)
    if (proto, msg[0]) != want or dst not in ours:
        return None
    s = ipaddress.ip_address(src)
    if s.is_unspecified or s.is_multicast or (version == "4" and int(s) >= 0xE0000000):
        return None
    if version == "4":
        if checksum(msg) != 0:
            return None
        header = bytearray(pkt[:off])
        header[8] = TTL
        header[12:16], header[16:20] = pkt[16:20], pkt[12:16]
        header[10:12] = b"\x00\x00"
        header[10:12] = struct.pack("!H", checksum(bytes(header)))
        out = bytearray(msg)
        out[0], out[2:4] = 0, b"\x00\x00"
        out[2:4] = struct.pack("!H", checksum(bytes(out)))
        return bytes(header) + bytes(out)
    if checksum(pseudo_header(src, dst, proto, len(msg)) + msg) != 0:
        return None
    header = bytearray(pkt[:off])
    header[7] = TTL
    header[8:24], header[24:40] = pkt[24:40], pkt[8:24]
    out = bytearray(msg)
    out[0], out[2:4] = 129, b"\x00\x00"
    out[2:4] = struct.pack("!H", checksum(pseudo_header(dst, src, proto, len(msg)) + bytes(out)))
    return bytes(header) + bytes(out)
