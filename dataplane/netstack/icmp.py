"""ICMP and ICMPv6 in Python, for what is rare: our pings and the errors that concern TCP.

Echo *replies* to peers' pings are answered in C (``_ip.echo_reply``); this module builds
our own echo requests (``echo_request``), recognises the replies (``echo_reply_key``),
and reads the errors a TCP connection must hear of (``parse_error``): Destination
Unreachable (RFC 792; RFC 4443 §3.1), Fragmentation Needed / Packet Too Big (RFC 1191,
RFC 8201) and Time Exceeded, each with the start of the datagram it quotes, from which
the connection is found (RFC 1122 §4.2.3.9, RFC 5927 §4.1). A message that is malformed,
has a bad checksum or quotes something too short yields None: never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dataplane.netstack._ip import TTL, checksum

_MAPPED = b"\x00" * 10 + b"\xff\xff"
PROTO_TCP = 6

# ICMPv4 Destination Unreachable codes (RFC 792, RFC 1122 §3.2.2.1, RFC 1812 §5.2.7.1)
_V4_UNREACH = {0: "net", 1: "host", 2: "protocol", 3: "port", 5: "host", 6: "net", 7: "host"}
_V4_ADMIN = {9, 10, 13}
# ICMPv6 Destination Unreachable codes (RFC 4443 §3.1)
_V6_UNREACH = {0: "net", 1: "admin", 2: "host", 3: "host", 4: "port", 5: "admin", 6: "admin"}


@dataclass(frozen=True)
class IcmpError:
    """What an ICMP error says about a TCP segment we sent."""

    kind: str  # "net", "host", "protocol", "port", "admin", "too_big", "ttl"
    mtu: int  # the next-hop MTU of "too_big", else 0
    local: bytes  # the quoted segment's source (ours), 16 bytes
    local_port: int
    remote: bytes
    remote_port: int
    seq: int


def echo_request(src: bytes, dst: bytes, ident: int, seq: int, data: bytes) -> bytes:
    """An ICMP (RFC 792) or ICMPv6 (RFC 4443 §4.1) echo request from src to dst."""
    msg = bytearray(struct.pack("!BBHHH", 0, 0, 0, ident, seq) + bytes(data))
    if src.startswith(_MAPPED):
        msg[0] = 8
        msg[2:4] = struct.pack("!H", checksum(msg))
        header = bytearray(
            struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(msg), 0, 0x4000, TTL, 1, 0)
            + src[12:]
            + dst[12:]
        )
        header[10:12] = struct.pack("!H", checksum(header))
        return bytes(header + msg)
    msg[0] = 128
    pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
    msg[2:4] = struct.pack("!H", checksum(pseudo + msg))
    return struct.pack("!IHBB", 6 << 28, len(msg), 58, TTL) + src + dst + bytes(msg)


def _icmp_message(pkt: bytes) -> tuple[bool, bytes, bytes] | None:
    """(is IPv4, packed source, ICMP message) of a valid ICMP/ICMPv6 packet, else None.

    Only called for packets ``parse_udp`` found to be valid, unfragmented IP of another
    protocol; ICMPv6 behind extension headers is not recognised."""
    if len(pkt) < 20:
        return None
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        msg = pkt[ihl:total]
        if pkt[9] != 1 or len(msg) < 8 or checksum(msg) != 0:
            return None
        return True, _MAPPED + pkt[12:16], msg
    if len(pkt) < 40:
        return None
    plen = struct.unpack_from("!H", pkt, 4)[0]
    msg = pkt[40 : 40 + plen]
    if pkt[6] != 58 or len(msg) < 8:
        return None
    pseudo = pkt[8:40] + struct.pack("!I3xB", len(msg), 58)
    if checksum(pseudo + msg) != 0:
        return None
    return False, pkt[8:24], msg


def echo_reply_key(pkt: bytes) -> tuple[int, int, bytes] | None:
    """(identifier, sequence, packed source) of a valid echo reply, else None."""
    found = _icmp_message(pkt)
    if found is None:
        return None
    v4, src, msg = found
    if msg[0] != (0 if v4 else 129) or msg[1] != 0:
        return None
    ident, seq = struct.unpack_from("!HH", msg, 4)
    return ident, seq, src


def parse_error(pkt: bytes) -> IcmpError | None:
    """The TCP segment an ICMP error quotes and what the error says, else None."""
    found = _icmp_message(pkt)
    if found is None:
        return None
    v4, _, msg = found
    mtu = 0
    kind: str | None
    if v4:
        typ, code = msg[0], msg[1]
        if typ == 3:
            if code == 4:
                kind = "too_big"
                mtu = struct.unpack_from("!H", msg, 6)[0]
            elif code in _V4_ADMIN:
                kind = "admin"
            else:
                kind = _V4_UNREACH.get(code)
        elif typ == 11:
            kind = "ttl"
        else:
            return None
        quoted = msg[8:]
        if len(quoted) < 20 or quoted[0] >> 4 != 4:
            return None
        ihl = (quoted[0] & 15) * 4
        if quoted[9] != PROTO_TCP or len(quoted) < ihl + 8:
            return None
        local, remote = _MAPPED + quoted[12:16], _MAPPED + quoted[16:20]
        l4 = quoted[ihl:]
    else:
        typ, code = msg[0], msg[1]
        if typ == 1:
            kind = _V6_UNREACH.get(code)
        elif typ == 2:
            kind = "too_big"
            mtu = struct.unpack_from("!I", msg, 4)[0]
        elif typ == 3:
            kind = "ttl"
        else:
            return None
        quoted = msg[8:]
        if len(quoted) < 48 or quoted[0] >> 4 != 6 or quoted[6] != PROTO_TCP:
            return None
        local, remote = quoted[8:24], quoted[24:40]
        l4 = quoted[40:]
    if kind is None:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", l4, 0)
    return IcmpError(kind, mtu, local, sport, remote, dport, seq)
