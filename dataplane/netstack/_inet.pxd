# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Inline helpers of the netstack's C code: byte order, RFC 1071 checksums, the IP layer.

One home for what ``_ip`` (UDP, ICMP) and ``_tcp`` both do per packet:

* big-endian loads and stores (``be16`` / ``be32`` / ``put16`` / ``put32``);
* the RFC 1071 §2(B) one's complement sum: a one's complement sum does not depend on byte
  order, so the bytes are summed as native 32-bit words and the folded complement is
  stored in native order, which lands as the right bytes on either endianness; the
  pseudo-headers of RFC 768 / RFC 9293 §3.1 (IPv4) and RFC 8200 §8.1 (IPv6);
* ``locate_l4``: validation of an IPv4 / IPv6 header against the bytes present (lengths,
  IPv4 header checksum, fragments refused, IPv6 extension headers walked a bounded
  number of times) and the span of the upper-layer message.

Addresses are 16 bytes, IPv4 as ``::ffff:a.b.c.d`` (the PacketBatch endpoint form).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy


cdef extern from "arpa/inet.h" nogil:
    uint16_t htons(uint16_t)


# Verdicts of the IP layer and of the upper-layer parsers built on it (_ip, _tcp).
cdef enum:
    V_OK = 0                # well-formed
    V_SKIPPED = 1           # the slot was already dropped before this stage
    V_TRUNCATED = 2         # shorter than a header or than a length field claims
    V_BAD_HEADER = 3        # not IPv4/IPv6, or a header field is impossible
    V_NOT_UDP = 4           # a valid IP packet of another protocol than the parser's
    V_FRAGMENT = 5          # an IPv4 fragment or an IPv6 packet with a Fragment header
    V_BAD_CHECKSUM = 6      # IPv4 header or upper-layer checksum wrong
    V_N = 7

    PROTO_ICMP = 1          # IANA protocol numbers
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58
    NH_HOP_BY_HOP = 0       # IPv6 extension headers we skip or refuse (RFC 8200 §4)
    NH_ROUTING = 43
    NH_FRAGMENT = 44
    NH_DEST_OPTIONS = 60
    MAX_EXT_HEADERS = 8     # bound on the extension header walk (hostile chains)
    DEFAULT_TTL = 64        # TTL / hop limit of packets we originate (RFC 1700 default)


# -- byte order ---------------------------------------------------------------------------

cdef inline uint16_t be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline void put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>(v & 0xFF)


cdef inline void put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>((v >> 16) & 0xFF)
    p[2] = <uint8_t>((v >> 8) & 0xFF)
    p[3] = <uint8_t>(v & 0xFF)


cdef inline bint is_v4(const uint8_t* a16) noexcept nogil:
    # IPv4-mapped (RFC 4291 §2.5.5.2): ten zero bytes, then 0xFFFF.
    cdef uint8_t k
    for k in range(10):
        if a16[k]:
            return False
    return a16[10] == 0xFF and a16[11] == 0xFF


cdef inline void map_v4(uint8_t* a16, const uint8_t* a4) noexcept nogil:
    cdef uint8_t k
    for k in range(10):
        a16[k] = 0
    a16[10] = 0xFF
    a16[11] = 0xFF
    memcpy(a16 + 12, a4, 4)


cdef inline bint is_unicast(const uint8_t* a16) noexcept nogil:
    # Not unspecified, broadcast or multicast: a source we may answer (RFC 1122
    # §3.2.2.6, RFC 4443 §2.4 e, RFC 9293 §3.9.2's "no segments to broadcast").
    cdef uint8_t k
    if is_v4(a16):
        if a16[12] >= 224:              # multicast, reserved and 255.255.255.255
            return False
        return not (a16[12] == 0 and a16[13] == 0 and a16[14] == 0 and a16[15] == 0)
    if a16[0] == 0xFF:
        return False
    for k in range(16):
        if a16[k]:
            return True
    return False


# -- RFC 1071 checksum --------------------------------------------------------------------

cdef inline uint64_t csum_add(const uint8_t* p, Py_ssize_t n, uint64_t acc) noexcept nogil:
    # Native-order words; an odd last byte counts as the first byte of a zero-padded word.
    # Each region summed must start at an even offset of the checksummed data.
    cdef uint64_t w
    cdef uint32_t w32
    cdef uint16_t w16
    while n >= 8:
        memcpy(&w, p, 8)
        acc += <uint32_t>w
        acc += w >> 32
        p += 8
        n -= 8
    if n >= 4:
        memcpy(&w32, p, 4)
        acc += w32
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&w16, p, 2)
        acc += w16
        p += 2
        n -= 2
    if n:
        w16 = 0
        memcpy(&w16, p, 1)
        acc += w16
    return acc


cdef inline uint16_t csum_fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFFU) + (acc >> 16)
    return <uint16_t>acc


cdef inline uint64_t csum_pseudo(const uint8_t* src, const uint8_t* dst, Py_ssize_t alen,
                                 uint32_t l4len, uint8_t proto) noexcept nogil:
    # IPv4 (RFC 768, RFC 9293 §3.1): src, dst, zero, proto, 16-bit length. IPv6 (RFC 8200
    # §8.1): src, dst, 32-bit length, 3 zero bytes, next header. The same sum of words.
    cdef uint64_t acc = csum_add(src, alen, 0)
    acc = csum_add(dst, alen, acc)
    acc += htons(<uint16_t>(l4len >> 16)) + htons(<uint16_t>(l4len & 0xFFFF))
    acc += htons(proto)
    return acc


cdef inline void csum_store(uint8_t* field, uint64_t acc) noexcept nogil:
    cdef uint16_t c = <uint16_t>~csum_fold(acc)
    memcpy(field, &c, 2)


# -- the IP layer -------------------------------------------------------------------------

cdef inline uint8_t locate_l4(const uint8_t* p, uint32_t n, bint* v4, uint32_t* l4off,
                              uint32_t* l4end, uint8_t* proto) noexcept nogil:
    """Validate the IP layer of p[0:n]; find the upper-layer header and the packet's end."""
    cdef uint32_t ihl, total, end, off, hlen
    cdef uint8_t nh
    cdef int _hop
    if n < 1:
        return V_TRUNCATED
    if (p[0] >> 4) == 4:
        if n < 20:
            return V_TRUNCATED
        ihl = (p[0] & 0x0F) * 4
        total = be16(p + 2)
        if ihl < 20 or total < ihl:
            return V_BAD_HEADER
        if total > n:
            return V_TRUNCATED
        if csum_fold(csum_add(p, ihl, 0)) != 0xFFFF:
            return V_BAD_CHECKSUM
        if be16(p + 6) & 0x3FFF:        # MF flag or a fragment offset
            return V_FRAGMENT
        v4[0] = True
        l4off[0] = ihl
        l4end[0] = total
        proto[0] = p[9]
        return V_OK
    if (p[0] >> 4) == 6:
        if n < 40:
            return V_TRUNCATED
        end = 40 + <uint32_t>be16(p + 4)
        if end > n:
            return V_TRUNCATED
        # IPv4-mapped addresses must not appear on the wire (RFC 4291 §2.5.5.2); they
        # would also alias our IPv4 addresses in the 16-byte tables.
        if is_v4(p + 8) or is_v4(p + 24):
            return V_BAD_HEADER
        nh = p[6]
        off = 40
        for _hop in range(MAX_EXT_HEADERS):
            if nh == NH_HOP_BY_HOP or nh == NH_ROUTING or nh == NH_DEST_OPTIONS:
                if off + 8 > end:
                    return V_TRUNCATED
                # A routing header with segments left means we are not the final
                # destination; forwarding is not our job (RFC 8200 §4.4).
                if nh == NH_ROUTING and p[off + 3] != 0:
                    return V_BAD_HEADER
                hlen = (<uint32_t>p[off + 1] + 1) * 8
                if off + hlen > end:
                    return V_TRUNCATED
                nh = p[off]
                off += hlen
            elif nh == NH_FRAGMENT:
                return V_FRAGMENT
            else:
                v4[0] = False
                l4off[0] = off
                l4end[0] = end
                proto[0] = nh
                return V_OK
        return V_BAD_HEADER
    return V_BAD_HEADER


cdef inline void ip_addresses(const uint8_t* p, bint v4, uint8_t* a32) noexcept nogil:
    # Source then destination of the IP packet at p, 16 bytes each.
    if v4:
        map_v4(a32, p + 12)
        map_v4(a32 + 16, p + 16)
    else:
        memcpy(a32, p + 8, 32)


cdef inline uint32_t build_ip(uint8_t* p, const uint8_t* src, const uint8_t* dst,
                              uint8_t proto, uint32_t l4len) noexcept nogil:
    """Write an IPv4 (20 bytes, DF, ID 0: RFC 6864 §4.1) or IPv6 (40 bytes) header for an
    upper-layer message of ``l4len`` bytes; returns the header length. ``src`` and ``dst``
    are 16-byte addresses of one family (the caller checks)."""
    if is_v4(src):
        p[0] = 0x45                     # version 4, IHL 5 (no options)
        p[1] = 0
        put16(p + 2, <uint16_t>(l4len + 20))
        put16(p + 4, 0)
        put16(p + 6, 0x4000)
        p[8] = DEFAULT_TTL
        p[9] = proto
        put16(p + 10, 0)
        memcpy(p + 12, src + 12, 4)
        memcpy(p + 16, dst + 12, 4)
        csum_store(p + 10, csum_add(p, 20, 0))
        return 20
    p[0] = 0x60                         # version 6, traffic class 0, flow label 0
    p[1] = 0
    p[2] = 0
    p[3] = 0
    put16(p + 4, <uint16_t>l4len)
    p[6] = proto
    p[7] = DEFAULT_TTL
    memcpy(p + 8, src, 16)
    memcpy(p + 24, dst, 16)
    return 40


cdef inline uint64_t l4_pseudo(const uint8_t* src, const uint8_t* dst, uint32_t l4len,
                               uint8_t proto) noexcept nogil:
    # The pseudo-header sum for 16-byte addresses of either family.
    if is_v4(src):
        return csum_pseudo(src + 12, dst + 12, 4, l4len, proto)
    return csum_pseudo(src, dst, 16, l4len, proto)
