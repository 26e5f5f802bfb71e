# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""IPv4/IPv6 + UDP headers built and parsed in place, and the ICMP echo responder.

Theory of operation: the in-process overlay sockets (``sockets.py``) speak IP to the data
plane without a kernel in between, so this module does per packet what a kernel's IP and
UDP layers do, over whole PacketBatches without the GIL:

* ``push_udp`` / ``push_udp_each`` take slots holding UDP payloads and write the UDP
  header (RFC 768) and an IPv4 (RFC 791, 20 bytes, DF set, TTL 64) or IPv6 (RFC 8200,
  hop limit 64) header *in front of* each payload, by moving the slot's offset back 28 or
  48 bytes. The room for that is the caller's choice when it creates the batch: a
  ``PacketBatch(headroom=48 + h)`` leaves ``h`` bytes in front of the finished IPv6
  packet (``h`` = 16 lets the core push the WireGuard header without a copy). The UDP
  checksum is always computed, over IPv4 too (mandatory only for IPv6, RFC 8200 §8.1);
  a computed 0 is sent as 0xFFFF (RFC 768).
* ``parse_udp`` validates each slot as an IP datagram addressed to a UDP port: version,
  header and length fields against the bytes present, the IPv4 header checksum, the UDP
  checksum over the pseudo-header (RFC 768; RFC 8200 §8.1, where a zero checksum is
  dropped), and IPv6 extension headers (Hop-by-Hop, Routing with no segments left,
  Destination Options are skipped; IPv4-mapped addresses in an IPv6 header are refused,
  RFC 4291 §2.5.5.2). Fragments are not reassembled: IPv4 packets with MF
  or an offset and IPv6 packets with a Fragment header are dropped as V_FRAGMENT (an
  overlay socket never sends one, the overlay MTU being the data plane's). The result is
  a verdict per slot plus, for good ones, addresses, ports and the payload's span; the
  batch's status gets the closest ST_* reason for every slot dropped.
* ``echo_reply`` answers ping: an alive ICMPv4 echo request (type 8, RFC 792) or ICMPv6
  echo request (type 128, RFC 4443 §4.1) with a valid checksum, addressed to one of our
  addresses from a unicast source, becomes its echo reply in place: addresses swapped,
  TTL / hop limit reset to 64, type 0 / 129, IPv4 header checksum and ICMP checksum
  (over the IPv6 pseudo-header for ICMPv6) recomputed; identifier, sequence and data are
  kept (RFC 792, RFC 4443 §4.2). Everything else is left untouched.

Checksums use RFC 1071 §2(B): a one's complement sum does not depend on byte order, so
the bytes are summed as native 32-bit words and the folded complement is stored in
native order, which lands as the right bytes on either endianness.

Addresses are 16 bytes, IPv4 as ``::ffff:a.b.c.d`` (the PacketBatch endpoint form), so one
array serves both families. Network input never raises: each loop validates the slot
bounds once per call, then checks every length before reading a header field.
"""

import socket as _socket
from ipaddress import IPv6Address as _IPv6Address

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from dataplane.netstack._inet cimport (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    be16,
    build_ip,
    csum_add,
    csum_fold,
    csum_pseudo,
    csum_store,
    htons,
    is_unicast,
    is_v4,
    l4_pseudo,
    locate_l4,
    map_v4,
    put16,
)

from dataplane._batch cimport (
    PacketBatch,
    ST_BAD_IP,
    ST_BAD_TYPE,
    ST_FRAGMENT,
    ST_BAD_CHECKSUM,
    ST_NO_ROOM,
    ST_OK,
    ST_TOO_BIG,
    ST_TOO_SHORT,
)

# Python names of the verdicts (C names in _ip.pxd).
OK = V_OK
SKIPPED = V_SKIPPED
TRUNCATED = V_TRUNCATED
BAD_HEADER = V_BAD_HEADER
NOT_UDP = V_NOT_UDP
FRAGMENT = V_FRAGMENT
BAD_CHECKSUM = V_BAD_CHECKSUM
N_VERDICTS = V_N
VERDICT_NAMES = ("ok", "skipped", "truncated", "bad_header", "not_udp", "fragment",
                 "bad_checksum")

IPV4_HEADER = IPV4_UDP_HEADER
IPV6_HEADER = IPV6_UDP_HEADER
TTL = DEFAULT_TTL

cdef enum:
    ICMP_ECHO_REPLY = 0
    ICMP_ECHO_REQUEST = 8
    ICMPV6_ECHO_REQUEST = 128
    ICMPV6_ECHO_REPLY = 129

# The first 12 bytes of an IPv4-mapped IPv6 address (RFC 4291 §2.5.5.2).
cdef uint8_t[12] _MAPPED = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_ZERO12 = b"\x00" * 12

# Per-verdict batch status.
cdef uint8_t[7] _STATUS_OF = [ST_OK, ST_OK, ST_TOO_SHORT, ST_BAD_IP, ST_BAD_TYPE,
                              ST_FRAGMENT, ST_BAD_CHECKSUM]


# -- RFC 1071 checksum (the sum itself is in _inet.pxd) -----------------------------

cdef uint16_t internet_checksum(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint16_t c = <uint16_t>~csum_fold(csum_add(p, n, 0))
    return htons(c)


# -- building -----------------------------------------------------------------------------

cdef inline uint8_t _push_one(uint8_t* slot, uint32_t* off, uint32_t* length,
                              const uint8_t* a, const uint16_t* ports) noexcept nogil:
    cdef const uint8_t* src = a
    cdef const uint8_t* dst = a + 16
    cdef bint v4 = is_v4(src)
    cdef uint32_t plen = length[0]
    cdef uint32_t hl, ulen
    cdef uint8_t* u
    cdef uint16_t c
    if v4 != is_v4(dst):
        return ST_BAD_IP
    hl = IPV4_UDP_HEADER if v4 else IPV6_UDP_HEADER
    if off[0] < hl:
        return ST_NO_ROOM
    # IPv4 total length and the UDP length are both 16-bit fields.
    if plen + (IPV4_UDP_HEADER if v4 else 8) > 0xFFFF:
        return ST_TOO_BIG
    ulen = plen + 8
    u = slot + off[0] - 8
    build_ip(u - (hl - 8), src, dst, PROTO_UDP, ulen)
    put16(u, ports[0])
    put16(u + 2, ports[1])
    put16(u + 4, <uint16_t>ulen)
    put16(u + 6, 0)
    c = <uint16_t>~csum_fold(csum_add(u, ulen, l4_pseudo(src, dst, ulen, PROTO_UDP)))
    if c == 0:
        c = 0xFFFF                      # 0 means "no checksum" (RFC 768)
    memcpy(u + 6, &c, 2)
    off[0] -= hl
    length[0] += hl
    return ST_OK


cdef Py_ssize_t push_udp_batch(PacketBatch batch, const uint8_t* addrs, Py_ssize_t addr_stride,
                               const uint16_t* ports, Py_ssize_t port_stride) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t built = 0
    cdef uint8_t st
    cdef Py_ssize_t count = batch.count
    cdef Py_ssize_t size = batch.slot_size
    if count == 0:
        return 0
    if batch.first_bad_bounds() >= 0:
        return -1
    cdef uint8_t* slab = &batch.slab[0]
    cdef uint32_t* offsets = &batch.offsets[0]
    cdef uint32_t* lengths = &batch.lengths[0]
    cdef uint8_t* status = &batch.status[0]
    for i in range(count):
        if status[i] != ST_OK:
            continue
        st = _push_one(slab + i * size, &offsets[i], &lengths[i],
                       addrs + i * addr_stride, ports + i * port_stride)
        if st == ST_OK:
            built += 1
        else:
            status[i] = st
    return built


# -- parsing ------------------------------------------------------------------------------

cdef inline uint8_t _parse_one(const uint8_t* p, uint32_t n, uint8_t* a, uint16_t* ports,
                               uint32_t* span) noexcept nogil:
    cdef bint v4 = False
    cdef uint32_t off = 0, end = 0, ulen
    cdef uint8_t proto = 0
    cdef uint8_t v = locate_l4(p, n, &v4, &off, &end, &proto)
    cdef const uint8_t* u
    cdef const uint8_t* src
    cdef const uint8_t* dst
    cdef Py_ssize_t alen
    if v != V_OK:
        return v
    if proto != PROTO_UDP:
        return V_NOT_UDP
    if end - off < 8:
        return V_TRUNCATED
    u = p + off
    ulen = be16(u + 4)
    if ulen < 8:
        return V_BAD_HEADER
    if ulen > end - off:
        return V_TRUNCATED
    if v4:
        src = p + 12
        dst = p + 16
        alen = 4
    else:
        src = p + 8
        dst = p + 24
        alen = 16
    if be16(u + 6) == 0:
        if not v4:
            return V_BAD_CHECKSUM       # RFC 8200 §8.1: zero UDP checksums are discarded
    elif csum_fold(csum_add(u, ulen, csum_pseudo(src, dst, alen, ulen, PROTO_UDP))) != 0xFFFF:
        return V_BAD_CHECKSUM
    if v4:
        memcpy(a, _MAPPED, 12)
        memcpy(a + 12, src, 4)
        memcpy(a + 16, _MAPPED, 12)
        memcpy(a + 28, dst, 4)
    else:
        memcpy(a, src, 16)
        memcpy(a + 16, dst, 16)
    ports[0] = be16(u)
    ports[1] = be16(u + 2)
    span[0] = off + 8
    span[1] = ulen - 8
    return V_OK


cdef Py_ssize_t parse_udp_batch(PacketBatch batch, uint8_t* verdicts, uint8_t* addrs,
                                uint16_t* ports, uint32_t* spans) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t good = 0
    cdef uint8_t v
    cdef Py_ssize_t count = batch.count
    cdef Py_ssize_t size = batch.slot_size
    if count == 0:
        return 0
    if batch.first_bad_bounds() >= 0:
        return -1
    cdef uint8_t* slab = &batch.slab[0]
    cdef uint32_t* offsets = &batch.offsets[0]
    cdef uint32_t* lengths = &batch.lengths[0]
    cdef uint8_t* status = &batch.status[0]
    for i in range(count):
        if status[i] != ST_OK:
            verdicts[i] = V_SKIPPED
            continue
        v = _parse_one(slab + i * size + offsets[i], lengths[i], addrs + 32 * i,
                       ports + 2 * i, spans + 2 * i)
        verdicts[i] = v
        if v == V_OK:
            good += 1
        else:
            status[i] = _STATUS_OF[v]
    return good


# -- ICMP echo ----------------------------------------------------------------------------

cdef inline bint _ours(const uint8_t* a16, const uint8_t* ours, Py_ssize_t n_ours) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n_ours):
        if memcmp(a16, ours + 16 * k, 16) == 0:
            return True
    return False


cdef inline bint _echo_one(uint8_t* p, uint32_t n, const uint8_t* ours, Py_ssize_t n_ours,
                           uint32_t* new_len) noexcept nogil:
    cdef bint v4 = False
    cdef uint32_t off = 0, end = 0, l4
    cdef uint8_t proto = 0
    cdef uint8_t[16] tmp
    cdef uint8_t* icmp
    cdef uint64_t acc
    if locate_l4(p, n, &v4, &off, &end, &proto) != V_OK:
        return False
    l4 = end - off
    if l4 < 8:
        return False
    icmp = p + off
    if icmp[1] != 0:                    # code 0 is the only echo request code
        return False
    if v4:
        if proto != PROTO_ICMP or icmp[0] != ICMP_ECHO_REQUEST:
            return False
        map_v4(tmp, p + 16)
        if not _ours(tmp, ours, n_ours):
            return False
        # Never answer toward an unspecified, broadcast or multicast source: the reply
        # would go to nobody or to everybody.
        map_v4(tmp, p + 12)
        if not is_unicast(tmp):
            return False
        if csum_fold(csum_add(icmp, l4, 0)) != 0xFFFF:
            return False
        memcpy(tmp, p + 12, 4)
        memcpy(p + 12, p + 16, 4)
        memcpy(p + 16, tmp, 4)
        p[8] = DEFAULT_TTL
        put16(p + 10, 0)
        csum_store(p + 10, csum_add(p, off, 0))
        icmp[0] = ICMP_ECHO_REPLY
        put16(icmp + 2, 0)
        csum_store(icmp + 2, csum_add(icmp, l4, 0))
    else:
        if proto != PROTO_ICMPV6 or icmp[0] != ICMPV6_ECHO_REQUEST:
            return False
        if not _ours(p + 24, ours, n_ours) or not is_unicast(p + 8):
            return False
        acc = csum_pseudo(p + 8, p + 24, 16, l4, PROTO_ICMPV6)
        if csum_fold(csum_add(icmp, l4, acc)) != 0xFFFF:
            return False
        memcpy(tmp, p + 8, 16)
        memcpy(p + 8, p + 24, 16)
        memcpy(p + 24, tmp, 16)
        p[7] = DEFAULT_TTL
        icmp[0] = ICMPV6_ECHO_REPLY
        put16(icmp + 2, 0)
        csum_store(icmp + 2, csum_add(icmp, l4, csum_pseudo(p + 8, p + 24, 16, l4, PROTO_ICMPV6)))
    new_len[0] = end                    # bytes after the IP length are not echoed
    return True


cdef Py_ssize_t echo_reply_batch(PacketBatch batch, const uint8_t* ours, Py_ssize_t n_ours,
                                 uint8_t* marks) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t turned = 0
    cdef uint32_t new_len = 0
    cdef Py_ssize_t count = batch.count
    cdef Py_ssize_t size = batch.slot_size
    if count == 0:
        return 0
    if batch.first_bad_bounds() >= 0:
        return -1
    cdef uint8_t* slab = &batch.slab[0]
    cdef uint32_t* offsets = &batch.offsets[0]
    cdef uint32_t* lengths = &batch.lengths[0]
    cdef uint8_t* status = &batch.status[0]
    for i in range(count):
        marks[i] = 0
        if status[i] != ST_OK:
            continue
        if _echo_one(slab + i * size + offsets[i], lengths[i], ours, n_ours, &new_len):
            marks[i] = 1
            lengths[i] = new_len
            turned += 1
    return turned


# -- Python surface -----------------------------------------------------------------------

cdef int _raise_bounds(PacketBatch batch) except -1:
    cdef Py_ssize_t i
    for i in range(batch.count):
        if batch.offsets[i] + batch.lengths[i] > batch.slot_size:
            raise ValueError(
                f"slot {i} has offset {batch.offsets[i]} + length {batch.lengths[i]} "
                f"beyond its slot of {batch.slot_size} bytes")
    raise ValueError("slot bounds changed during the call")


def pack_address(address):
    """16-byte form of an IP address text (IPv4 as ``::ffff:a.b.c.d``); ValueError if bad."""
    if isinstance(address, (bytes, bytearray)):
        if len(address) == 16:
            return bytes(address)
        if len(address) == 4:
            return _MAPPED_PREFIX + bytes(address)
        raise ValueError(f"packed address must be 4 or 16 bytes, got {len(address)}")
    try:
        return _MAPPED_PREFIX + _socket.inet_pton(_socket.AF_INET, address)
    except (OSError, TypeError):
        pass
    try:
        return _socket.inet_pton(_socket.AF_INET6, address)
    except (OSError, TypeError) as e:
        raise ValueError(f"not an IP address: {address!r}") from e


def unpack_address(a16):
    """Text form of a 16-byte address; IPv4-mapped addresses come back as dotted quads."""
    a = bytes(a16)
    if len(a) != 16:
        raise ValueError(f"address must be 16 bytes, got {len(a)}")
    if a[:12] == _MAPPED_PREFIX:
        return _socket.inet_ntop(_socket.AF_INET, a[12:])
    if a[:12] == _ZERO12:
        # glibc writes these (deprecated IPv4-compatible) as "::a.b.c.d"; use the
        # RFC 5952 form that ipaddress (and everyone else) gives.
        return str(_IPv6Address(a))
    return _socket.inet_ntop(_socket.AF_INET6, a)


def checksum(data):
    """RFC 1071 Internet checksum of ``data`` as a number (pack with ``!H`` to store it)."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    cdef Py_ssize_t n = v.shape[0]
    cdef uint16_t r
    if n == 0:
        return 0xFFFF
    with nogil:
        r = internet_checksum(&v[0], n)
    return r


def push_udp(PacketBatch batch not None, src, dst, int sport, int dport):
    """Wrap every alive slot's payload in UDP + IP headers for one flow; return how many.

    ``src`` and ``dst`` are IP address texts (or packed) of the same family. Each slot
    needs 28 (IPv4) or 48 (IPv6) bytes in front of its payload, else ST_NO_ROOM.
    """
    cdef bytes a = pack_address(src) + pack_address(dst)
    if (a[:12] == _MAPPED_PREFIX) != (a[16:28] == _MAPPED_PREFIX):
        raise ValueError(f"source {src!r} and destination {dst!r} differ in address family")
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"ports out of range: {sport}, {dport}")
    cdef uint16_t[2] ports = [<uint16_t>sport, <uint16_t>dport]
    cdef const uint8_t* ap = a
    cdef Py_ssize_t r
    # Reads a and ports, writes the slab/offsets/lengths/status of `batch` (the caller's).
    with nogil:
        r = push_udp_batch(batch, ap, 0, ports, 0)
    if r < 0:
        _raise_bounds(batch)
    return r


def push_udp_each(PacketBatch batch not None, addrs, ports):
    """Like ``push_udp`` with per-slot flows: ``addrs`` holds 32 bytes per slot (source
    then destination, 16 bytes each), ``ports`` a uint16 pair per slot (host order).

    Slots whose two addresses differ in family get ST_BAD_IP.
    """
    cdef const uint8_t[::1] av = memoryview(addrs).cast("B")
    cdef const uint16_t[::1] pv = ports
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t r
    if av.shape[0] < 32 * n:
        raise ValueError(f"addrs holds {av.shape[0]} bytes, {32 * n} needed")
    if pv.shape[0] < 2 * n:
        raise ValueError(f"ports holds {pv.shape[0]} entries, {2 * n} needed")
    if n == 0:
        return 0
    with nogil:
        r = push_udp_batch(batch, &av[0], 32, &pv[0], 2)
    if r < 0:
        _raise_bounds(batch)
    return r


def echo_reply(PacketBatch batch not None, ours):
    """Turn echo requests to one of ``ours`` (16-byte addresses, concatenated) into replies.

    Returns the indexes of the slots turned (they stay alive: send them back); every
    other slot is left untouched.
    """
    cdef const uint8_t[::1] ov = memoryview(ours).cast("B")
    cdef Py_ssize_t k = ov.shape[0] // 16
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t r, i
    if ov.shape[0] % 16:
        raise ValueError(f"ours must be 16 bytes per address, got {ov.shape[0]} bytes")
    if n == 0 or k == 0:
        return []
    cdef bytearray marks = bytearray(n)
    cdef uint8_t* mp = marks
    with nogil:
        r = echo_reply_batch(batch, &ov[0], k, mp)
    if r < 0:
        _raise_bounds(batch)
    if r == 0:
        return []
    return [i for i in range(n) if mp[i]]


cdef class UdpParse:
    """Per-slot results of ``parse_udp``; reused across batches to avoid allocations."""

    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t good
    cdef bytearray _verdicts
    cdef bytearray _addrs
    cdef uint16_t[::1] _ports
    cdef uint32_t[::1] _spans
    cdef PacketBatch _batch

    def __init__(self, Py_ssize_t capacity=128):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.count = 0
        self.good = 0
        self._verdicts = bytearray(capacity)
        self._addrs = bytearray(32 * capacity)
        self._ports = memoryview(bytearray(4 * capacity)).cast("H")
        self._spans = memoryview(bytearray(8 * capacity)).cast("I")
        self._batch = None

    cdef int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.count:
            raise IndexError(f"slot {i} out of range for {self.count} parsed")
        return 0

    @property
    def verdicts(self):
        """Read-only view of the verdict of each parsed slot."""
        return memoryview(self._verdicts)[:self.count].toreadonly()

    def verdict(self, Py_ssize_t i):
        self._check(i)
        return self._verdicts[i]

    def verdict_counts(self):
        """Number of slots per verdict, indexed by the verdict value."""
        counts = [0] * V_N
        cdef Py_ssize_t i
        for i in range(self.count):
            counts[self._verdicts[i]] += 1
        return counts

    cdef int _need_ok(self, Py_ssize_t i) except -1:
        self._check(i)
        if self._verdicts[i] != V_OK:
            raise ValueError(f"slot {i} is not a good UDP datagram "
                             f"({VERDICT_NAMES[self._verdicts[i]]})")
        return 0

    def source(self, Py_ssize_t i):
        """``(ip, port)`` the datagram in slot ``i`` came from."""
        self._need_ok(i)
        return (unpack_address(self._addrs[32 * i:32 * i + 16]), self._ports[2 * i])

    def destination(self, Py_ssize_t i):
        """``(ip, port)`` the datagram in slot ``i`` is addressed to."""
        self._need_ok(i)
        return (unpack_address(self._addrs[32 * i + 16:32 * i + 32]), self._ports[2 * i + 1])

    def payload_span(self, Py_ssize_t i):
        """``(offset within the packet, length)`` of slot ``i``'s UDP payload."""
        self._need_ok(i)
        return (self._spans[2 * i], self._spans[2 * i + 1])

    def payload(self, Py_ssize_t i):
        """Zero-copy view of slot ``i``'s UDP payload inside the parsed batch."""
        self._need_ok(i)
        off = self._spans[2 * i]
        return self._batch[i][off:off + self._spans[2 * i + 1]]

    def datagrams(self):
        """``(dst16, dst_port, payload_bytes, (src_ip, src_port))`` for each good slot.

        ``dst16`` is the packed destination (for a dictionary lookup without formatting);
        consecutive datagrams from one source share one formatted address string.
        """
        cdef list out = []
        cdef Py_ssize_t i
        cdef uint32_t off, ln
        cdef PacketBatch b = self._batch
        cdef bytes last_src = None
        cdef str last_text = None
        cdef bytes src
        cdef char* addrs = self._addrs
        cdef char* slab
        if b is None or self.count == 0:
            return out
        if b.count < self.count:
            raise ValueError("the batch changed after parse_udp; parse it again")
        slab = <char*>&b.slab[0]
        for i in range(self.count):
            if self._verdicts[i] != V_OK:
                continue
            src = PyBytes_FromStringAndSize(addrs + 32 * i, 16)
            if src != last_src:
                last_src = src
                last_text = unpack_address(src)
            off = b.offsets[i] + self._spans[2 * i]
            ln = self._spans[2 * i + 1]
            if <Py_ssize_t>off + ln > b.slot_size:
                raise ValueError("the batch changed after parse_udp; parse it again")
            out.append((PyBytes_FromStringAndSize(addrs + 32 * i + 16, 16),
                        self._ports[2 * i + 1],
                        PyBytes_FromStringAndSize(slab + i * b.slot_size + off, ln),
                        (last_text, self._ports[2 * i])))
        return out


def parse_udp(PacketBatch batch not None, UdpParse into=None):
    """Validate every alive slot as an IPv4/IPv6 UDP datagram; see the module docstring.

    Dropped slots get an ST_* status on the batch; the finer verdict, and for good slots
    the addresses, ports and payload span, are in the returned ``UdpParse`` (``into`` if
    given and large enough, else a new one).
    """
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t r
    if into is None or into.capacity < n:
        into = UdpParse(max(n, 1 if into is None else into.capacity * 2, n))
    cdef uint8_t* vp = into._verdicts
    cdef uint8_t* ap = into._addrs
    cdef uint16_t* pp = &into._ports[0]
    cdef uint32_t* sp = &into._spans[0]
    # Reads the slab, writes statuses of `batch` and the arrays of `into`; both are owned
    # by the caller for the call.
    with nogil:
        r = parse_udp_batch(batch, vp, ap, pp, sp)
    if r < 0:
        into.count = 0
        into.good = 0
        into._batch = None
        _raise_bounds(batch)
    into.count = n
    into.good = r
    into._batch = batch
    return into
