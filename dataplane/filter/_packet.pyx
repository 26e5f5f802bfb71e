# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Per-packet core of the packet filter: compiled rule tables, flow table, batch loops.

Theory of operation. ``dataplane.filter.packet`` turns FilterRule JSON into, per address
family, two sorted arrays of *elementary segments* of the address space (the pieces between
consecutive interval boundaries of all source resp. destination IP sets):

* a source segment names an interned bitset of the rules whose ``SrcIPs`` (or a granted
  ``cap:``) cover it — all matching rules, not only the most specific one;
* a destination segment names a run of ``DstEntry`` (rule id, port range), one for every
  ``DstPorts`` entry whose IP set covers it.

A verdict is two binary searches, an AND of three rule bitsets (source segment, destination
segment, rules listing the protocol) and, for each surviving rule, a binary search of the
destination run (sorted by rule) for that rule's port ranges. A deny usually ends at the AND.
Prefixes, ``a-b`` ranges and ``*`` are all plain intervals, so ranges need no CIDR expansion.
Memory is O(boundaries x distinct rule sets / 64) words, shared between equal sets.

The flow table remembers what *we* sent (outbound pass) so that replies may come back: a
chained hash table of at most ``capacity`` entries threaded on an LRU list. An outbound
packet inserts or refreshes its flow (expiry = now + timeout) and moves it to the LRU tail;
with a constant timeout and a non-decreasing ``now`` the LRU head is also the entry that
expires first, so expired entries are purged from the head and, when the table is full, the
head is evicted. Lookups never modify the table. The hash is seeded per table (not a PRF;
chains stay short because the table is at most half full).

Both batch loops are nogil code (``with nogil(SHORT_SCAN_RELEASES_GIL)``, see setup.py:
short scans keep the GIL by default); they read the packet slab and write only ``status``
(inbound) or the flow table (outbound). The caller serialises calls (the core lock).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport isfinite
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from dataplane._batch cimport ST_BAD_IP, ST_OK, ST_PACKET_FILTER, PacketBatch


cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil   # GCC/Clang; x != 0

cdef enum:
    # IP protocol numbers (IANA).
    P_ICMP = 1
    P_TCP = 6
    P_UDP = 17
    P_ICMPV6 = 58
    P_SCTP = 132
    # IPv6 extension headers we walk (RFC 8200 §4; AH is RFC 4302).
    X_HOPOPTS = 0
    X_ROUTING = 43
    X_FRAGMENT = 44
    X_AH = 51
    X_DSTOPTS = 60
    # More extension headers than this is not a packet we pass (conservative, see packet.py).
    MAX_EXT_HEADERS = 8
    # RFC 1858: a later fragment starting inside the first 80 bytes (largest IPv4 header +
    # a basic TCP header, in 8-byte blocks) could rewrite the ports or flags we checked.
    MIN_FRAG_BLOCKS = 10
    TCP_SYN = 0x02
    TCP_ACK = 0x10
    # Match modes.
    M_PORT = 0      # proto in rule, dst IP and port in a DstPorts entry (TCP SYN, UDP, SCTP)
    M_IPS = 1       # src and dst IP only (ICMP: "any port open -> ping allowed", as Go)
    M_ALLPORTS = 2  # proto in rule, dst IP in an entry whose range is 0-65535 (others)


ctypedef struct Pkt:
    int fam                       # 0 = IPv4, 1 = IPv6
    int proto
    uint64_t shi, slo, dhi, dlo
    const uint8_t* l4
    uint32_t l4len
    bint frag                     # a non-first fragment: no transport header
    uint32_t fragoff              # its offset in 8-byte blocks


cdef inline uint32_t rd16(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint64_t rd32(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16) | (<uint64_t>p[2] << 8)
            | <uint64_t>p[3])


cdef inline uint64_t rd64(const uint8_t* p) noexcept nogil:
    return (rd32(p) << 32) | rd32(p + 4)


cdef inline int parse_ip(const uint8_t* p, uint32_t n, Pkt* q, bint embedded) noexcept nogil:
    """Fill ``q`` from the IP header at ``p`` (``n`` bytes available); 0 = ok, 1 = malformed.

    ``embedded`` is for the copy of our packet inside an ICMP error: it is usually cut
    short, so its length fields only bound, rather than must fit, the bytes present.
    """
    cdef uint32_t ihl, tot, off, hl
    cdef int nh, k, v
    if n < 1:
        return 1
    v = p[0] >> 4
    if v == 4:
        if n < 20:
            return 1
        ihl = (p[0] & 15) * 4
        if ihl < 20 or ihl > n:
            return 1
        tot = rd16(p + 2)
        if tot < ihl:
            return 1
        if tot > n:
            if not embedded:
                return 1
            tot = n
        q.fam = 0
        q.proto = p[9]
        q.shi = 0
        q.slo = rd32(p + 12)
        q.dhi = 0
        q.dlo = rd32(p + 16)
        q.fragoff = rd16(p + 6) & 0x1fff
        q.frag = q.fragoff != 0
        q.l4 = p + ihl
        q.l4len = tot - ihl
        return 0
    if v == 6:
        if n < 40:
            return 1
        tot = 40 + rd16(p + 4)
        if tot > n:
            if not embedded:
                return 1
            tot = n
        q.fam = 1
        q.shi = rd64(p + 8)
        q.slo = rd64(p + 16)
        q.dhi = rd64(p + 24)
        q.dlo = rd64(p + 32)
        q.frag = 0
        q.fragoff = 0
        nh = p[6]
        off = 40
        k = 0
        while nh == X_HOPOPTS or nh == X_ROUTING or nh == X_DSTOPTS or nh == X_AH \
                or nh == X_FRAGMENT:
            k += 1
            if k > MAX_EXT_HEADERS or off + 8 > tot:
                return 1
            if nh == X_FRAGMENT:
                hl = 8
                q.fragoff = rd16(p + off + 2) >> 3
                q.frag = q.fragoff != 0
            elif nh == X_AH:
                hl = (<uint32_t>p[off + 1] + 2) * 4
            else:
                hl = (<uint32_t>p[off + 1] + 1) * 8
            if off + hl > tot:
                return 1
            nh = p[off]
            off += hl
            if q.frag:
                break          # what follows a non-first fragment header is payload
        q.proto = nh
        q.l4 = p + off
        q.l4len = tot - off
        return 0
    return 1


cdef inline Py_ssize_t seg_find(const uint64_t* shi, const uint64_t* slo, Py_ssize_t n,
                                uint64_t hi, uint64_t lo) noexcept nogil:
    """Index of the last segment starting at or below (hi, lo); start[0] is always 0."""
    cdef Py_ssize_t a = 0, b = n, m
    while b - a > 1:
        m = (a + b) >> 1
        if shi[m] < hi or (shi[m] == hi and slo[m] <= lo):
            a = m
        else:
            b = m
    return a


cdef inline Py_ssize_t first_of_rule(const DstEntry* e, Py_ssize_t a, Py_ssize_t b,
                                     uint32_t r) noexcept nogil:
    """Lower bound of rule ``r`` in the run e[a:b], which is sorted by rule id."""
    cdef Py_ssize_t m
    while a < b:
        m = (a + b) >> 1
        if e[m].rule < r:
            a = m + 1
        else:
            b = m
    return a


cdef inline bint rules_match(const RuleTables* R, const Pkt* q, uint32_t port,
                             int mode) noexcept nogil:
    """Some rule admits the source, lists the protocol (unless ``mode`` is M_IPS) and has
    a DstPorts entry covering the destination (and port, per ``mode``)."""
    cdef const FamilyTable* F = &R.fam[q.fam]
    cdef const uint64_t* sb
    cdef const uint64_t* db
    cdef const uint64_t* pb
    cdef const DstEntry* e
    cdef Py_ssize_t s, d, k, off, end, w, nw = R.nwords
    cdef uint64_t x
    cdef uint32_t r
    if F.nsrc == 0 or F.ndst == 0:
        return 0
    s = F.src_set[seg_find(F.src_hi, F.src_lo, F.nsrc, q.shi, q.slo)]
    if s == 0:
        return 0               # no rule admits this source: skip the destination search
    d = seg_find(F.dst_hi, F.dst_lo, F.ndst, q.dhi, q.dlo)
    if F.dst_set[d] == 0:
        return 0
    sb = R.bits + s * nw
    db = R.bits + F.dst_set[d] * nw
    pb = R.proto_bits + q.proto * nw
    off = F.dst_off[d]
    end = off + F.dst_len[d]
    for w in range(nw):
        # Candidate rules: source and destination IP both covered (and protocol listed).
        x = sb[w] & db[w]
        if mode != M_IPS:
            x &= pb[w]
        while x:
            if mode == M_IPS:
                return 1
            r = <uint32_t>(w * 64 + __builtin_ctzll(x))
            x &= x - 1
            k = first_of_rule(R.entries, off, end, r)
            while k < end and R.entries[k].rule == r:
                e = &R.entries[k]
                k += 1
                if mode == M_PORT:
                    if e.first_port <= port <= e.last_port:
                        return 1
                elif e.first_port == 0 and e.last_port == 65535:
                    return 1
    return 0


# ----------------------------------------------------------------------------- flow table

cdef inline uint64_t mix(uint64_t h, uint64_t x) noexcept nogil:
    h = (h ^ x) * <uint64_t>0x9E3779B97F4A7C15
    return h ^ (h >> 29)


cdef inline uint64_t flow_hash(const FlowTable* ft, const FlowKey* k) noexcept nogil:
    cdef uint64_t h = ft.seed
    h = mix(h, k.rhi)
    h = mix(h, k.rlo)
    h = mix(h, k.lhi)
    h = mix(h, k.llo)
    h = mix(h, k.meta)
    h ^= h >> 32
    h *= <uint64_t>0xD6E8FEB86659FD93
    return h ^ (h >> 32)


cdef inline bint key_eq(const FlowKey* a, const FlowKey* b) noexcept nogil:
    return (a.rlo == b.rlo and a.llo == b.llo and a.meta == b.meta and a.rhi == b.rhi
            and a.lhi == b.lhi)


cdef inline void make_key(FlowKey* k, int fam, int proto, uint64_t rhi, uint64_t rlo,
                          uint32_t rport, uint64_t lhi, uint64_t llo,
                          uint32_t lport) noexcept nogil:
    k.rhi = rhi
    k.rlo = rlo
    k.lhi = lhi
    k.llo = llo
    k.meta = ((<uint64_t>fam << 48) | (<uint64_t>proto << 32) | (<uint64_t>rport << 16)
              | lport)


cdef inline int32_t ft_find(const FlowTable* ft, const FlowKey* k, uint64_t h) noexcept nogil:
    cdef int32_t i = ft.buckets[h & ft.mask]
    while i >= 0:
        if ft.e[i].hash == h and key_eq(&ft.e[i].key, k):
            return i
        i = ft.e[i].hnext
    return -1


cdef inline bint ft_lookup(const FlowTable* ft, const FlowKey* k, double now) noexcept nogil:
    cdef int32_t i
    if ft.count == 0:
        return 0
    i = ft_find(ft, k, flow_hash(ft, k))
    return i >= 0 and ft.e[i].expires > now


cdef inline void lru_unlink(FlowTable* ft, int32_t i) noexcept nogil:
    cdef Flow* f = &ft.e[i]
    if f.prev >= 0:
        ft.e[f.prev].next = f.next
    else:
        ft.head = f.next
    if f.next >= 0:
        ft.e[f.next].prev = f.prev
    else:
        ft.tail = f.prev


cdef inline void lru_append(FlowTable* ft, int32_t i) noexcept nogil:
    ft.e[i].prev = ft.tail
    ft.e[i].next = -1
    if ft.tail >= 0:
        ft.e[ft.tail].next = i
    else:
        ft.head = i
    ft.tail = i


cdef inline void ft_remove(FlowTable* ft, int32_t i) noexcept nogil:
    cdef int32_t* link = &ft.buckets[ft.e[i].hash & ft.mask]
    while link[0] != i:
        link = &ft.e[link[0]].hnext
    link[0] = ft.e[i].hnext
    lru_unlink(ft, i)
    ft.e[i].hnext = ft.free
    ft.free = i
    ft.count -= 1


cdef inline void ft_purge(FlowTable* ft, double now) noexcept nogil:
    while ft.head >= 0 and ft.e[ft.head].expires <= now:
        ft_remove(ft, ft.head)


cdef inline void ft_record(FlowTable* ft, const FlowKey* k, double now) noexcept nogil:
    cdef uint64_t h = flow_hash(ft, k)
    cdef int32_t i = ft_find(ft, k, h)
    if i >= 0:
        ft.e[i].expires = now + ft.timeout
        lru_unlink(ft, i)
        lru_append(ft, i)
        return
    ft_purge(ft, now)
    if ft.free < 0:
        ft_remove(ft, ft.head)           # full: evict the least recently refreshed flow
    i = ft.free
    ft.free = ft.e[i].hnext
    ft.e[i].key = k[0]
    ft.e[i].hash = h
    ft.e[i].expires = now + ft.timeout
    ft.e[i].hnext = ft.buckets[h & ft.mask]
    ft.buckets[h & ft.mask] = i
    lru_append(ft, i)
    ft.count += 1


# ----------------------------------------------------------------------------- verdicts

cdef inline bint is_icmp(const Pkt* q) noexcept nogil:
    return (q.fam == 0 and q.proto == P_ICMP) or (q.fam == 1 and q.proto == P_ICMPV6)


cdef inline bint is_echo_request(int fam, int t) noexcept nogil:
    return t == (8 if fam == 0 else 128)


cdef inline bint is_echo_reply(int fam, int t) noexcept nogil:
    return t == (0 if fam == 0 else 129)


cdef inline bint is_icmp_error(int fam, int t) noexcept nogil:
    # v4: destination unreachable, time exceeded, parameter problem (RFC 792);
    # v6: unreachable, packet too big, time exceeded, parameter problem (RFC 4443).
    if fam == 0:
        return t == 3 or t == 11 or t == 12
    return 1 <= t <= 4


cdef inline uint32_t l4_min(const Pkt* q) noexcept nogil:
    """Transport header bytes we need, or 0 for protocols we do not look into."""
    if q.proto == P_TCP:
        return 20
    if q.proto == P_UDP:
        return 8
    if q.proto == P_SCTP:
        return 12
    if is_icmp(q):
        return 8
    return 0


cdef inline bint dst_blocked(const Pkt* q) noexcept nogil:
    """Multicast or link-local unicast destination (except 169.254.169.254), as Go."""
    if q.fam == 0:
        return ((q.dlo >> 28) == 0xE
                or ((q.dlo >> 16) == 0xA9FE and q.dlo != <uint64_t>0xA9FEA9FE))
    return (q.dhi >> 56) == 0xFF or (q.dhi >> 54) == 0x3FA


cdef inline bint icmp_error_related(const FlowTable* ft, const Pkt* q,
                                    double now) noexcept nogil:
    """Does the packet quoted by this ICMP error belong to a flow we started?"""
    cdef Pkt inner
    cdef FlowKey k
    if parse_ip(q.l4 + 8, q.l4len - 8, &inner, 1) != 0:
        return 0
    # The quoted packet is one we sent: same family, and its source is the address the
    # error is delivered to.
    if inner.fam != q.fam or inner.frag or inner.shi != q.dhi or inner.slo != q.dlo:
        return 0
    if inner.proto == P_TCP or inner.proto == P_UDP or inner.proto == P_SCTP:
        if inner.l4len < 4:
            return 0
        make_key(&k, inner.fam, inner.proto, inner.dhi, inner.dlo, rd16(inner.l4 + 2),
                 inner.shi, inner.slo, rd16(inner.l4))
        return ft_lookup(ft, &k, now)
    if is_icmp(&inner):
        if inner.l4len < 8 or not is_echo_request(inner.fam, inner.l4[0]):
            return 0
        make_key(&k, inner.fam, inner.proto, inner.dhi, inner.dlo, rd16(inner.l4 + 4),
                 inner.shi, inner.slo, 0)
        return ft_lookup(ft, &k, now)
    return 0


cdef inline uint8_t inbound_verdict(const RuleTables* R, const FlowTable* ft,
                                    const uint8_t* p, uint32_t n, double now) noexcept nogil:
    cdef Pkt q
    cdef FlowKey k
    cdef int t
    if n == 0:
        return ST_OK               # WireGuard keepalive: nothing to deliver, nothing to filter
    if parse_ip(p, n, &q, 0) != 0:
        return ST_BAD_IP
    if dst_blocked(&q):
        return ST_PACKET_FILTER
    if q.frag:
        # The first fragment carried the transport header and was filtered.
        return ST_OK if q.fragoff >= MIN_FRAG_BLOCKS else ST_PACKET_FILTER
    if q.l4len < l4_min(&q):
        return ST_BAD_IP
    if q.proto == P_TCP:
        # Only a bare SYN opens a connection; everything else is return traffic or is
        # refused by the TCP stack (Go "tcp non-syn").
        if (q.l4[13] & (TCP_SYN | TCP_ACK)) != TCP_SYN:
            return ST_OK
        return ST_OK if rules_match(R, &q, rd16(q.l4 + 2), M_PORT) else ST_PACKET_FILTER
    if q.proto == P_UDP or q.proto == P_SCTP:
        make_key(&k, q.fam, q.proto, q.shi, q.slo, rd16(q.l4), q.dhi, q.dlo, rd16(q.l4 + 2))
        if ft_lookup(ft, &k, now):
            return ST_OK
        return ST_OK if rules_match(R, &q, rd16(q.l4 + 2), M_PORT) else ST_PACKET_FILTER
    if is_icmp(&q):
        t = q.l4[0]
        if is_echo_reply(q.fam, t):
            make_key(&k, q.fam, q.proto, q.shi, q.slo, rd16(q.l4 + 4), q.dhi, q.dlo, 0)
            if ft_lookup(ft, &k, now):
                return ST_OK
        elif is_icmp_error(q.fam, t):
            if icmp_error_related(ft, &q, now):
                return ST_OK
        return ST_OK if rules_match(R, &q, 0, M_IPS) else ST_PACKET_FILTER
    return ST_OK if rules_match(R, &q, 0, M_ALLPORTS) else ST_PACKET_FILTER


cdef inline bint outbound_record(FlowTable* ft, const uint8_t* p, uint32_t n,
                                 double now) noexcept nogil:
    cdef Pkt q
    cdef FlowKey k
    if n == 0 or parse_ip(p, n, &q, 0) != 0 or q.frag:
        return 0
    if q.l4len < l4_min(&q):
        return 0
    if q.proto == P_TCP or q.proto == P_UDP or q.proto == P_SCTP:
        # Keyed as the reply will look: remote = our destination.
        make_key(&k, q.fam, q.proto, q.dhi, q.dlo, rd16(q.l4 + 2), q.shi, q.slo, rd16(q.l4))
    elif is_icmp(&q) and is_echo_request(q.fam, q.l4[0]):
        make_key(&k, q.fam, q.proto, q.dhi, q.dlo, rd16(q.l4 + 4), q.shi, q.slo, 0)
    else:
        return 0
    ft_record(ft, &k, now)
    return 1


# ----------------------------------------------------------------------------- Python API

cdef void* _copy(object arr, Py_ssize_t itemsize, Py_ssize_t* count) except? NULL:
    """Copy a buffer (array.array) into PyMem memory; NULL for an empty buffer."""
    cdef const uint8_t[::1] mv = memoryview(arr).cast("B")
    cdef Py_ssize_t nbytes = mv.shape[0]
    cdef void* out
    if nbytes % itemsize:
        raise ValueError("buffer size is not a multiple of its item size")
    if count != NULL:
        count[0] = nbytes // itemsize
    if nbytes == 0:
        return NULL
    out = PyMem_Malloc(nbytes)
    if out == NULL:
        raise MemoryError()
    memcpy(out, &mv[0], nbytes)
    return out


cdef int _check_now(double now) except -1:
    if not isfinite(now):
        raise ValueError(f"now must be a finite number of monotonic seconds, got {now}")
    return 0


cdef class CompiledRules:
    """Immutable C tables built by ``dataplane.filter.packet.compile_rules``.

    Arguments are ``array.array`` buffers: ``proto_bits`` ('Q', ``nwords`` per protocol
    0..255), ``bits`` ('Q', ``nwords`` per set, set 0 empty), the entries as three parallel
    arrays ('I', 'H', 'H'; runs sorted by rule), and per family a tuple (src_hi 'Q', src_lo
    'Q', src_set 'I', dst_hi 'Q', dst_lo 'Q', dst_off 'I', dst_len 'I', dst_set 'I'). The
    constructor checks every index so the nogil code can trust them.
    """

    def __cinit__(self):
        memset(&self.t, 0, sizeof(RuleTables))

    def __init__(self, Py_ssize_t nrules, Py_ssize_t nwords, proto_bits, bits, ent_rule,
                 ent_first, ent_last, v4, v6):
        cdef Py_ssize_t n, nbits, nent, n2, f, i, k
        cdef FamilyTable* F
        cdef RuleTables* t = &self.t
        if self.t.proto_bits != NULL or self.t.bits != NULL:
            raise RuntimeError("CompiledRules is immutable")
        if nrules < 0 or nwords < 1 or nwords * 64 < nrules:
            raise ValueError("bad rule/bitset sizes")
        t.nrules = nrules
        t.nwords = nwords
        t.proto_bits = <uint64_t*>_copy(proto_bits, 8, &n)
        if n != 256 * nwords:
            raise ValueError("proto_bits must hold one bitset per protocol number")
        t.bits = <uint64_t*>_copy(bits, 8, &nbits)
        if nbits < nwords or nbits % nwords:
            raise ValueError("bitset pool must hold whole sets, the empty set first")
        t.nsets = nbits // nwords
        for i in range(nwords):
            if t.bits[i] != 0:
                raise ValueError("bitset 0 must be empty")
        t.entries = NULL
        nent = len(ent_rule)
        if len(ent_first) != nent or len(ent_last) != nent:
            raise ValueError("entry arrays differ in length")
        if nent:
            t.entries = <DstEntry*>PyMem_Malloc(nent * sizeof(DstEntry))
            if t.entries == NULL:
                raise MemoryError()
            for i in range(nent):
                if not 0 <= ent_rule[i] < nrules:
                    raise ValueError("entry rule id out of range")
                t.entries[i].rule = ent_rule[i]
                t.entries[i].first_port = ent_first[i]
                t.entries[i].last_port = ent_last[i]
        for f, spec in enumerate((v4, v6)):
            F = &t.fam[f]
            src_hi, src_lo, src_set, dst_hi, dst_lo, dst_off, dst_len, dst_set = spec
            F.src_hi = <uint64_t*>_copy(src_hi, 8, &F.nsrc)
            F.src_lo = <uint64_t*>_copy(src_lo, 8, &n)
            F.src_set = <uint32_t*>_copy(src_set, 4, &n2)
            if n != F.nsrc or n2 != F.nsrc:
                raise ValueError("source segment arrays differ in length")
            for i in range(F.nsrc):
                if F.src_set[i] >= t.nsets:
                    raise ValueError("source bitset index out of range")
            if F.nsrc and (F.src_hi[0] != 0 or F.src_lo[0] != 0):
                raise ValueError("the first source segment must start at address 0")
            F.dst_hi = <uint64_t*>_copy(dst_hi, 8, &F.ndst)
            F.dst_lo = <uint64_t*>_copy(dst_lo, 8, &n)
            F.dst_off = <uint32_t*>_copy(dst_off, 4, &n2)
            if n != F.ndst or n2 != F.ndst:
                raise ValueError("destination segment arrays differ in length")
            F.dst_len = <uint32_t*>_copy(dst_len, 4, &n2)
            F.dst_set = <uint32_t*>_copy(dst_set, 4, &n)
            if n2 != F.ndst or n != F.ndst:
                raise ValueError("destination segment arrays differ in length")
            for i in range(F.ndst):
                if <Py_ssize_t>F.dst_off[i] + F.dst_len[i] > nent:
                    raise ValueError("destination run out of range")
                if F.dst_set[i] >= t.nsets:
                    raise ValueError("destination bitset index out of range")
                for k in range(F.dst_off[i] + 1, F.dst_off[i] + F.dst_len[i]):
                    if t.entries[k - 1].rule > t.entries[k].rule:
                        raise ValueError("destination run not sorted by rule")
            if F.ndst and (F.dst_hi[0] != 0 or F.dst_lo[0] != 0):
                raise ValueError("the first destination segment must start at address 0")

    def __dealloc__(self):
        cdef int f
        PyMem_Free(self.t.proto_bits)
        PyMem_Free(self.t.bits)
        PyMem_Free(self.t.entries)
        for f in range(2):
            PyMem_Free(self.t.fam[f].src_hi)
            PyMem_Free(self.t.fam[f].src_lo)
            PyMem_Free(self.t.fam[f].src_set)
            PyMem_Free(self.t.fam[f].dst_hi)
            PyMem_Free(self.t.fam[f].dst_lo)
            PyMem_Free(self.t.fam[f].dst_off)
            PyMem_Free(self.t.fam[f].dst_len)
            PyMem_Free(self.t.fam[f].dst_set)

    @property
    def nrules(self):
        return self.t.nrules

    def segment_counts(self):
        """(IPv4 src, IPv4 dst, IPv6 src, IPv6 dst) segment counts, for diagnostics."""
        return (self.t.fam[0].nsrc, self.t.fam[0].ndst, self.t.fam[1].nsrc,
                self.t.fam[1].ndst)


cdef class FilterCore:
    """Flow table plus the batch loops; rules are swapped in whole by ``set_rules``."""

    def __cinit__(self):
        memset(&self.ft, 0, sizeof(FlowTable))

    def __init__(self, int max_flows, double flow_timeout, unsigned long long seed,
                 CompiledRules rules):
        cdef uint64_t nb = 1
        if self.ft.e != NULL:
            raise RuntimeError("FilterCore is already initialised")
        if not 1 <= max_flows <= (1 << 28):
            raise ValueError(f"max_flows must be in 1..{1 << 28}, got {max_flows}")
        if not flow_timeout > 0.0:
            raise ValueError(f"flow_timeout must be positive, got {flow_timeout}")
        while nb < <uint64_t>max_flows * 2:
            nb <<= 1
        self.ft.e = <Flow*>PyMem_Malloc(max_flows * sizeof(Flow))
        self.ft.buckets = <int32_t*>PyMem_Malloc(nb * sizeof(int32_t))
        if self.ft.e == NULL or self.ft.buckets == NULL:
            raise MemoryError()
        self.ft.capacity = max_flows
        self.ft.mask = nb - 1
        self.ft.seed = seed
        self.ft.timeout = flow_timeout
        self._reset()
        self.set_rules(rules)

    cdef void _reset(self) noexcept:
        cdef int32_t i
        cdef uint64_t b
        for b in range(self.ft.mask + 1):
            self.ft.buckets[b] = -1
        for i in range(self.ft.capacity):
            self.ft.e[i].hnext = i + 1 if i + 1 < self.ft.capacity else -1
        self.ft.free = 0
        self.ft.count = 0
        self.ft.head = -1
        self.ft.tail = -1

    def __dealloc__(self):
        PyMem_Free(self.ft.e)
        PyMem_Free(self.ft.buckets)

    def set_rules(self, CompiledRules rules not None):
        self.rules = rules

    @property
    def max_flows(self):
        return self.ft.capacity

    @property
    def flow_timeout(self):
        return self.ft.timeout

    def clear_flows(self):
        self._reset()

    def flow_count(self, double now):
        _check_now(now)
        ft_purge(&self.ft, now)
        return self.ft.count

    def check_inbound(self, PacketBatch batch not None, double now):
        cdef CompiledRules rules = self.rules      # held so the tables outlive the loop
        cdef const RuleTables* R = &rules.t
        cdef const FlowTable* ft = &self.ft
        cdef Py_ssize_t i, n = batch.count, dropped = 0
        cdef Py_ssize_t limit = batch.slot_size
        cdef uint8_t st
        cdef uint8_t[::1] status = batch.status
        cdef uint32_t[::1] offsets = batch.offsets
        cdef uint32_t[::1] lengths = batch.lengths
        _check_now(now)
        # Bounds once per batch: the loop trusts offsets/lengths of alive slots only when
        # they lie inside their slot; anything else is malformed.
        with nogil(SHORT_SCAN_RELEASES_GIL):
            # Reads the slab, offsets, lengths and the flow table; writes status[i] only.
            # No purge here: inbound traffic never changes the table.
            for i in range(n):
                if status[i] != ST_OK:
                    continue
                if <Py_ssize_t>offsets[i] + <Py_ssize_t>lengths[i] > limit:
                    status[i] = ST_BAD_IP
                    dropped += 1
                    continue
                st = inbound_verdict(R, ft, batch.pkt_ptr(i), lengths[i], now)
                if st != ST_OK:
                    status[i] = st
                    dropped += 1
        return dropped

    def record_outbound(self, PacketBatch batch not None, double now):
        cdef FlowTable* ft = &self.ft
        cdef Py_ssize_t i, n = batch.count, recorded = 0
        cdef Py_ssize_t limit = batch.slot_size
        cdef uint8_t[::1] status = batch.status
        cdef uint32_t[::1] offsets = batch.offsets
        cdef uint32_t[::1] lengths = batch.lengths
        _check_now(now)
        with nogil(SHORT_SCAN_RELEASES_GIL):
            # Reads the slab; writes the flow table only (statuses are left alone).
            ft_purge(ft, now)
            for i in range(n):
                if status[i] != ST_OK:
                    continue
                if <Py_ssize_t>offsets[i] + <Py_ssize_t>lengths[i] > limit:
                    continue
                recorded += outbound_record(ft, batch.pkt_ptr(i), lengths[i], now)
        return recorded

    def flows(self, double now):
        """Live flows as (family, proto, remote int, remote port, local int, local port)."""
        _check_now(now)
        cdef int32_t i
        cdef Flow* f
        out = []
        ft_purge(&self.ft, now)
        i = self.ft.head
        while i >= 0:
            f = &self.ft.e[i]
            out.append((4 if (f.key.meta >> 48) == 0 else 6, (f.key.meta >> 32) & 0xffff,
                        (int(f.key.rhi) << 64) | f.key.rlo, (f.key.meta >> 16) & 0xffff,
                        (int(f.key.lhi) << 64) | f.key.llo, f.key.meta & 0xffff))
            i = f.next
        return out
