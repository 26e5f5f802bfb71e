"""Slow, obviously-correct reference for TCP segments: build and parse, struct + RFC 1071.

Theory of operation: a ``Seg`` is one TCP segment inside one IPv4 or IPv6 packet, with
its addresses as text and its options as fields (MSS, window scale, SACK-permitted, SACK
blocks, timestamps) or as raw bytes. ``build`` turns it into the bytes of an IP packet
(RFC 791 / RFC 8200 header, RFC 9293 §3.1 TCP header, RFC 1071 checksum over the
pseudo-header of RFC 9293 §3.1 / RFC 8200 §8.1); ``parse`` does the reverse and checks
everything it can, raising ``Malformed(verdict)`` with the name ``_tcp.VERDICT_NAMES``
uses for the same fault. The code uses the standard library only and shares nothing with
``dataplane``, so the tests can compare the C parser and the C segment builder with it.

The order of ``parse``'s checks is the one a receiver needs (IP layer, protocol, TCP header
length, checksum, addresses, options), which is also the C parser's; where the RFCs leave a
choice (an option of a known kind with the wrong length), the model does what Linux does:
ignore the option. ``tcp_verdict`` names a fault as the TCP layer reports it: a packet
that is not valid IP carrying TCP is "not_tcp" there (the IP layer judges it). Test-only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
FLAG_NAMES = {FIN: "F", SYN: "S", RST: "R", PSH: "P", ACK: ".", URG: "U"}

PROTO_TCP = 6
TTL = 64
MAX_WSCALE = 14  # RFC 7323 §2.3
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WS, OPT_SACK_PERM, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8
_MAPPED = b"\x00" * 10 + b"\xff\xff"
MOD = 1 << 32


class Malformed(ValueError):
    """A packet ``parse`` refuses; ``verdict`` names the fault as ``_tcp`` does."""

    def __init__(self, verdict: str, why: str = "", layer: str = "tcp") -> None:
        super().__init__(f"{layer} {verdict}: {why}" if why else f"{layer} {verdict}")
        self.verdict = verdict
        self.layer = layer  # "ip" for faults of the IP layer, "tcp" for the segment's


def checksum(data: bytes) -> int:
    """RFC 1071: one's complement of the one's complement sum of big-endian 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, length: int) -> bytes:
    """RFC 9293 §3.1 (IPv4) and RFC 8200 §8.1 (IPv6)."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, PROTO_TCP, length)
    return s + d + struct.pack("!I3xB", length, PROTO_TCP)


def is_v6(text: str) -> bool:
    return ipaddress.ip_address(text).version == 6


def seq_add(a: int, b: int) -> int:
    return (a + b) % MOD


def seq_lt(a: int, b: int) -> bool:
    """RFC 9293 §3.4: comparison modulo 2**32."""
    return 0 < (b - a) % MOD < 1 << 31


@dataclass
class Seg:
    """One TCP segment and the addresses of the IP packet around it."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = ACK
    wnd: int = 65535
    payload: bytes = b""
    mss: int | None = None
    ws: int | None = None  # the shift count as sent (parse does not clamp it)
    sack_perm: bool = False
    ts: tuple[int, int] | None = None  # (TSval, TSecr)
    sack: list[tuple[int, int]] = field(default_factory=list)
    urg: int = 0
    raw_options: bytes | None = None  # build: used instead of the fields; parse: as found
    unknown_options: list[int] = field(default_factory=list)  # kinds parse skipped

    @property
    def seg_len(self) -> int:
        """RFC 9293 §3.4 SEG.LEN: payload plus SYN and FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    @property
    def end(self) -> int:
        return seq_add(self.seq, self.seg_len)

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    def only(self, flags: int) -> bool:
        """Exactly these of SYN, FIN, RST and ACK (PSH, URG and ECN bits aside)."""
        return self.flags & (SYN | FIN | RST | ACK) == flags

    @property
    def flag_text(self) -> str:
        return "".join(n for f, n in FLAG_NAMES.items() if self.flags & f) or "-"

    def reply(self, **changes) -> Seg:
        """A segment going the other way on the same 4-tuple, options cleared."""
        base = Seg(self.dst, self.src, self.dport, self.sport)
        return replace(base, **changes)

    def __repr__(self) -> str:
        opts = []
        if self.mss is not None:
            opts.append(f"mss={self.mss}")
        if self.ws is not None:
            opts.append(f"ws={self.ws}")
        if self.sack_perm:
            opts.append("sackOK")
        if self.ts is not None:
            opts.append(f"ts={self.ts[0]}/{self.ts[1]}")
        if self.sack:
            opts.append(f"sack={self.sack}")
        return (
            f"<Seg {self.src}:{self.sport}>{self.dst}:{self.dport} [{self.flag_text}] "
            f"seq={self.seq} ack={self.ack} wnd={self.wnd} len={len(self.payload)}"
            f"{' ' + ' '.join(opts) if opts else ''}>"
        )


def encode_options(seg: Seg) -> bytes:
    """The options of ``seg`` in Linux's layout (MSS, SACK-permitted with timestamps or
    NOP NOP, NOP window scale; NOP NOP timestamps, NOP NOP SACK), padded to 32 bits."""
    if seg.raw_options is not None:
        raw = seg.raw_options
    else:
        out = bytearray()
        if seg.mss is not None:
            out += struct.pack("!BBH", OPT_MSS, 4, seg.mss)
        if seg.sack_perm and seg.ts is not None:
            out += bytes([OPT_SACK_PERM, 2])
        elif seg.sack_perm:
            out += bytes([OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2])
        elif seg.ts is not None:
            out += bytes([OPT_NOP, OPT_NOP])
        if seg.ts is not None:
            out += struct.pack("!BBII", OPT_TS, 10, seg.ts[0] % MOD, seg.ts[1] % MOD)
        if seg.ws is not None:
            out += bytes([OPT_NOP, OPT_WS, 3, seg.ws])
        if seg.sack:
            out += bytes([OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(seg.sack)])
            for lo, hi in seg.sack:
                out += struct.pack("!II", lo % MOD, hi % MOD)
        raw = bytes(out)
    return raw + b"\x00" * (-len(raw) % 4)


def build(
    seg: Seg,
    *,
    bad_checksum: bool = False,
    doff: int | None = None,
    ttl: int = TTL,
    ip_id: int = 0,
    flags_frag: int = 0x4000,
) -> bytes:
    """The IP packet carrying ``seg``. ``doff`` overrides the data offset field (in
    32-bit words); ``bad_checksum`` spoils the TCP checksum."""
    opts = encode_options(seg)
    if len(opts) > 40:
        raise ValueError(f"{len(opts)} bytes of options do not fit a TCP header")
    off_words = doff if doff is not None else (20 + len(opts)) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        seg.sport,
        seg.dport,
        seg.seq % MOD,
        seg.ack % MOD,
        (off_words & 0xF) << 4,
        seg.flags & 0xFF,
        seg.wnd,
        0,
        seg.urg,
    )
    tcp = header + opts + seg.payload
    c = checksum(pseudo_header(seg.src, seg.dst, len(tcp)) + tcp)
    if bad_checksum:
        c ^= 0x5A5A
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    return ip_packet(seg.src, seg.dst, tcp, ttl=ttl, ip_id=ip_id, flags_frag=flags_frag)


def ip_packet(
    src: str,
    dst: str,
    l4: bytes,
    *,
    proto: int = PROTO_TCP,
    ttl: int = TTL,
    ip_id: int = 0,
    flags_frag: int = 0x4000,
) -> bytes:
    """RFC 791 (no options, DF) or RFC 8200 (no extension headers) around ``l4``."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) != len(d):
        raise ValueError("address families differ")
    if len(s) == 4:
        h = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, flags_frag, ttl, proto, 0, s, d
        )
        return h[:10] + struct.pack("!H", checksum(h)) + h[12:] + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, ttl, s, d) + l4


def _ip_layer(pkt: bytes) -> tuple[bool, int, str, str, int, int]:
    """(v4, protocol, src, dst, l4 offset, l4 end) of a valid IP packet (RFC 791,
    RFC 8200 §4 extension headers walked at most 8 deep)."""
    if not pkt:
        raise Malformed("truncated", "empty", layer="ip")
    version = pkt[0] >> 4
    if version == 4:
        if len(pkt) < 20:
            raise Malformed("truncated", "IPv4 header", layer="ip")
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        if ihl < 20 or total < ihl:
            raise Malformed("bad_header", "IHL / total length", layer="ip")
        if total > len(pkt):
            raise Malformed("truncated", "total length", layer="ip")
        if checksum(pkt[:ihl]) != 0:
            raise Malformed("bad_checksum", "IPv4 header", layer="ip")
        if struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:
            raise Malformed("fragment", "", layer="ip")
        src = str(ipaddress.IPv4Address(pkt[12:16]))
        dst = str(ipaddress.IPv4Address(pkt[16:20]))
        return True, pkt[9], src, dst, ihl, total
    if version == 6:
        if len(pkt) < 40:
            raise Malformed("truncated", "IPv6 header", layer="ip")
        end = 40 + struct.unpack_from("!H", pkt, 4)[0]
        if end > len(pkt):
            raise Malformed("truncated", "payload length", layer="ip")
        if pkt[8:20] == _MAPPED or pkt[24:36] == _MAPPED:
            raise Malformed("bad_header", "IPv4-mapped address on the wire (RFC 4291)", layer="ip")
        nh, off = pkt[6], 40
        for _ in range(8):
            if nh in (0, 43, 60):
                if off + 8 > end:
                    raise Malformed("truncated", "extension header", layer="ip")
                if nh == 43 and pkt[off + 3] != 0:
                    raise Malformed("bad_header", "routing header with segments left", layer="ip")
                hlen = (pkt[off + 1] + 1) * 8
                if off + hlen > end:
                    raise Malformed("truncated", "extension header length", layer="ip")
                nh, off = pkt[off], off + hlen
            elif nh == 44:
                raise Malformed("fragment", "", layer="ip")
            else:
                src = str(ipaddress.IPv6Address(pkt[8:24]))
                dst = str(ipaddress.IPv6Address(pkt[24:40]))
                return False, nh, src, dst, off, end
        raise Malformed("bad_header", "extension header chain too long", layer="ip")
    raise Malformed("bad_header", f"IP version {version}", layer="ip")


def _unicast(text: str) -> bool:
    a = ipaddress.ip_address(text)
    if a.version == 4:
        return not (a.is_multicast or int(a) >> 28 >= 0xE or int(a) == 0)
    return not (a.is_multicast or int(a) == 0)


def parse(pkt: bytes) -> Seg:
    """The segment in IP packet ``pkt``, every field checked; ``Malformed`` if not."""
    v4, proto, src, dst, off, end = _ip_layer(bytes(pkt))
    if proto != PROTO_TCP:
        raise Malformed("not_tcp", f"protocol {proto}")
    tcp = bytes(pkt[off:end])
    if len(tcp) < 20:
        raise Malformed("truncated", "TCP header")
    sport, dport, seq, ack, offb, flags, wnd, _csum, urg = struct.unpack_from("!HHIIBBHHH", tcp)
    doff = (offb >> 4) * 4
    if doff < 20 or doff > len(tcp):
        raise Malformed("bad_header", f"data offset {doff} of {len(tcp)}")
    if checksum(pseudo_header(src, dst, len(tcp)) + tcp) != 0:
        raise Malformed("bad_checksum", "TCP")
    if sport == 0 or dport == 0 or not _unicast(src):
        raise Malformed("bad_address")
    seg = Seg(src, dst, sport, dport, seq, ack, flags & 0x3F, wnd, tcp[doff:], urg=urg)
    seg.raw_options = tcp[20:doff]
    _parse_options(seg, tcp[20:doff])
    return seg


def _parse_options(seg: Seg, opts: bytes) -> None:
    """RFC 9293 §3.2: kind, length, value; EOL ends the list, NOP is one byte."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(opts):
            raise Malformed("bad_options", f"option {kind} has no length byte")
        ln = opts[i + 1]
        if ln < 2 or i + ln > len(opts):
            raise Malformed("bad_options", f"option {kind} length {ln}")
        body = opts[i + 2 : i + ln]
        if kind == OPT_MSS and ln == 4:
            seg.mss = struct.unpack("!H", body)[0]
        elif kind == OPT_WS and ln == 3:
            seg.ws = body[0]
        elif kind == OPT_SACK_PERM and ln == 2:
            seg.sack_perm = True
        elif kind == OPT_SACK and ln >= 10 and (ln - 2) % 8 == 0:
            seg.sack = [struct.unpack_from("!II", body, 8 * k) for k in range((ln - 2) // 8)]
        elif kind == OPT_TS and ln == 10:
            seg.ts = struct.unpack("!II", body)
        else:
            seg.unknown_options.append(kind)
        i += ln


def verdict(pkt: bytes) -> str:
    """What the model makes of a packet ("ok" if good), with the IP layer's fault names."""
    try:
        parse(pkt)
    except Malformed as e:
        return e.verdict
    return "ok"


def tcp_verdict(pkt: bytes) -> str:
    """The verdict as the TCP layer gives it (``_tcp.VERDICT_NAMES``): what is not a valid
    IP packet carrying TCP is "not_tcp", left to the IP layer to judge and count."""
    try:
        parse(pkt)
    except Malformed as e:
        return "not_tcp" if e.layer == "ip" else e.verdict
    return "ok"
