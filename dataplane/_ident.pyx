# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Classification of inbound underlay datagrams, and padding removal of decrypted packets.

Theory of operation: everything a UDP underlay receives lands in one PacketBatch. Before
WireGuard sees it, ``classify`` decides per alive slot what the datagram is and writes a
kind byte per slot:

* WireGuard (whitepaper §5.4.2-§5.4.7): type byte 1-4 followed by three zero reserved
  bytes, with the exact length of its message: initiation 148, response 92, cookie reply
  64, transport data at least 32 (16 header + 16 tag); not necessarily a multiple of 16,
  since padding never goes past the MTU. The kind value is the message type itself.
* Disco (tailscale ``ts_disco_protocol``): the 6-byte magic ``"TS" F0 9F 92 AC`` and at
  least the whole 62-byte header (magic, 32-byte sender key, 24-byte nonce), the threshold
  of the reference's ``is_disco_message`` and Go's ``LooksLikeDiscoWrapper``.
* STUN (RFC 5389 §6): top two bits zero, magic cookie 0x2112A442 at offset 4, a binding
  request (0x0001), success (0x0101) or error response (0x0111), and a length field that
  is a multiple of 4 and accounts for exactly the bytes after the 20-byte header. The Go
  client checks STUN first; the reference never detects it (routing.md §13.1).
* Geneve (RFC 8926 §3.4): version 0, reserved bits and trailer byte zero, and protocol
  0x7A11 (disco) or 0x7A12 (WireGuard) as Tailscale's UDP relays send them. The header
  and its options (``8 + 4 * opt_len`` bytes) are stripped in place by moving the slot's
  offset, so they stay readable in front of the payload; the payload must be what the
  protocol field says. A set C bit means critical options, which we cannot parse, so
  RFC 8926 §3.4 tells us to drop; a set O bit (control) is accepted only for disco,
  which is how relay servers send their bind challenges, because a control packet's
  payload must never be forwarded, which is what we would do with WireGuard data.

The four formats cannot be confused: a WireGuard datagram read as Geneve has protocol 0,
disco starts with 'T' (Geneve version 1), and a STUN binding type puts non-zero bits in
Geneve's reserved field. A datagram shorter than its kind needs (or shorter than the
20-byte STUN header, the smallest thing we accept) gets ST_TOO_SHORT; anything else that
does not fit gets ST_UNCLASSIFIED. Classified slots stay ST_OK: the caller routes them by
kind (``consume`` marks e.g. disco slots ST_DISCO once they are taken out).

``unpad`` runs on decrypted transport-data plaintexts: it reads the IPv4 total length or
IPv6 payload length + 40 and trims the slot to it, which removes WireGuard's zero padding
(whitepaper §5.4.6). An empty plaintext is a keepalive (ST_KEEPALIVE); a header that is
not IPv4/IPv6, is shorter than its fixed part, or claims more bytes than were decrypted
is ST_BAD_IP.

Both loops run without the GIL over raw pointers into the batch's arrays; the Python
wrappers hold a reference to the batch and validate the slot bounds once per call.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from dataplane._batch cimport (
    PacketBatch,
    ST_BAD_IP,
    ST_KEEPALIVE,
    ST_MAX,
    ST_OK,
    ST_TOO_SHORT,
    ST_UNCLASSIFIED,
)

# Python names of the kinds (the C names carry a KIND_ prefix, see _ident.pxd).
UNCLASSIFIED = KIND_NONE
WG_INITIATION = KIND_WG_INITIATION
WG_RESPONSE = KIND_WG_RESPONSE
WG_COOKIE = KIND_WG_COOKIE
WG_DATA = KIND_WG_DATA
DISCO = KIND_DISCO
STUN = KIND_STUN
N_KINDS = KIND_N
GENEVE = KIND_FLAG_GENEVE
GENEVE_CONTROL = KIND_FLAG_CONTROL
BASE_MASK = KIND_BASE_MASK
COUNT_GENEVE = KIND_N           # index of the Geneve total in kind_counts()

# WireGuard message sizes (whitepaper §5.4.2, §5.4.3, §5.4.6, §5.4.7).
cdef enum:
    WG_INITIATION_LEN = 148
    WG_RESPONSE_LEN = 92
    WG_COOKIE_LEN = 64
    WG_DATA_MIN_LEN = 32        # 16-byte header + 16-byte tag of an empty (keepalive) payload

# RFC 5389 §6.
cdef enum:
    STUN_HEADER_LEN = 20
    STUN_BINDING_REQUEST = 0x0001
    STUN_BINDING_SUCCESS = 0x0101
    STUN_BINDING_ERROR = 0x0111
cdef uint32_t STUN_MAGIC_COOKIE = 0x2112A442

# ts_disco_protocol: 6 magic + 32 sender key + 24 nonce.
cdef enum:
    DISCO_HEADER_LEN = 62

# RFC 8926 §3.4 and tailscale net/packet/geneve.go.
cdef enum:
    GENEVE_BASE_LEN = 8
    GENEVE_PROTO_DISCO_ = 0x7A11
    GENEVE_PROTO_WIREGUARD_ = 0x7A12

GENEVE_PROTO_DISCO = GENEVE_PROTO_DISCO_
GENEVE_PROTO_WIREGUARD = GENEVE_PROTO_WIREGUARD_
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
MIN_DATAGRAM = STUN_HEADER_LEN


cdef inline uint16_t _be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | p[3])


cdef inline uint8_t _classify_payload(const uint8_t* p, Py_ssize_t n,
                                      uint8_t* kind) noexcept nogil:
    """Status of the unencapsulated message ``p[0:n]``; its kind goes to ``kind[0]``."""
    cdef uint8_t t
    cdef Py_ssize_t need
    cdef uint16_t mtype
    cdef Py_ssize_t mlen
    kind[0] = KIND_NONE
    if n < STUN_HEADER_LEN:
        return ST_TOO_SHORT
    t = p[0]
    if 1 <= t <= 4 and p[1] == 0 and p[2] == 0 and p[3] == 0:
        if t == KIND_WG_DATA:
            # No multiple-of-16 check: padding stops at the MTU, so a full-size packet
            # (e.g. 1420 B plaintext) arrives as 1452 bytes.
            if n < WG_DATA_MIN_LEN:
                return ST_TOO_SHORT
        else:
            if t == KIND_WG_INITIATION:
                need = WG_INITIATION_LEN
            elif t == KIND_WG_RESPONSE:
                need = WG_RESPONSE_LEN
            else:
                need = WG_COOKIE_LEN
            if n < need:
                return ST_TOO_SHORT
            if n != need:
                return ST_UNCLASSIFIED
        kind[0] = t
        return ST_OK
    if (t & 0xC0) == 0 and _be32(p + 4) == STUN_MAGIC_COOKIE:
        mtype = _be16(p)
        if (mtype != STUN_BINDING_REQUEST and mtype != STUN_BINDING_SUCCESS
                and mtype != STUN_BINDING_ERROR):
            return ST_UNCLASSIFIED
        mlen = _be16(p + 2)
        if mlen % 4:
            return ST_UNCLASSIFIED
        if STUN_HEADER_LEN + mlen > n:
            return ST_TOO_SHORT
        if STUN_HEADER_LEN + mlen != n:
            return ST_UNCLASSIFIED
        kind[0] = KIND_STUN
        return ST_OK
    if (t == 0x54 and p[1] == 0x53 and p[2] == 0xF0 and p[3] == 0x9F
            and p[4] == 0x92 and p[5] == 0xAC):
        if n < DISCO_HEADER_LEN:
            return ST_TOO_SHORT
        kind[0] = KIND_DISCO
        return ST_OK
    return ST_UNCLASSIFIED


cdef inline uint8_t _classify(const uint8_t* p, Py_ssize_t n, uint8_t* kind,
                              Py_ssize_t* strip, uint32_t* vni) noexcept nogil:
    """Status of datagram ``p[0:n]``; kind, Geneve header length and VNI via pointers."""
    cdef uint16_t proto
    cdef Py_ssize_t hlen
    cdef uint8_t st, k
    cdef bint control
    strip[0] = 0
    vni[0] = 0
    # Geneve only with a protocol we know: other protocol values are read as naked
    # datagrams (a WireGuard message has opt_len 1-4 and protocol 0).
    if n >= GENEVE_BASE_LEN and (p[0] & 0xC0) == 0 and (p[1] & 0x3F) == 0 and p[7] == 0:
        proto = _be16(p + 2)
        if proto == GENEVE_PROTO_DISCO_ or proto == GENEVE_PROTO_WIREGUARD_:
            kind[0] = KIND_NONE
            if p[1] & 0x40:
                return ST_UNCLASSIFIED
            control = (p[1] & 0x80) != 0
            hlen = GENEVE_BASE_LEN + 4 * (p[0] & 0x3F)
            if hlen > n:
                return ST_TOO_SHORT
            st = _classify_payload(p + hlen, n - hlen, &k)
            if st != ST_OK:
                return st
            if proto == GENEVE_PROTO_DISCO_:
                if k != KIND_DISCO:
                    return ST_UNCLASSIFIED
            elif k > KIND_WG_DATA or control:
                return ST_UNCLASSIFIED
            kind[0] = k | KIND_FLAG_GENEVE | (KIND_FLAG_CONTROL if control else 0)
            strip[0] = hlen
            vni[0] = (<uint32_t>p[4] << 16) | (<uint32_t>p[5] << 8) | p[6]
            return ST_OK
    return _classify_payload(p, n, kind)


cdef Py_ssize_t classify_batch(PacketBatch batch, uint8_t* kinds,
                               uint32_t* vnis) noexcept nogil:
    cdef Py_ssize_t i, strip
    cdef Py_ssize_t done = 0
    cdef uint8_t st, k
    cdef uint32_t vni
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
            kinds[i] = KIND_NONE
            if vnis != NULL:
                vnis[i] = 0
            continue
        st = _classify(slab + i * size + offsets[i], lengths[i], &k, &strip, &vni)
        if st != ST_OK:
            status[i] = st
            k = KIND_NONE
            vni = 0
        else:
            done += 1
            if strip:
                offsets[i] += <uint32_t>strip
                lengths[i] -= <uint32_t>strip
        kinds[i] = k
        if vnis != NULL:
            vnis[i] = vni
    return done


cdef inline uint8_t _unpad_one(const uint8_t* p, uint32_t n, uint32_t* ip_len) noexcept nogil:
    cdef uint32_t ihl, total
    if n == 0:
        return ST_KEEPALIVE
    if (p[0] >> 4) == 4:
        if n < 20:
            return ST_BAD_IP
        ihl = (p[0] & 0x0F) * 4
        total = _be16(p + 2)
        if ihl < 20 or total < ihl or total > n:
            return ST_BAD_IP
    elif (p[0] >> 4) == 6:
        if n < 40:
            return ST_BAD_IP
        total = 40 + <uint32_t>_be16(p + 4)
        if total > n:
            return ST_BAD_IP
    else:
        return ST_BAD_IP
    ip_len[0] = total
    return ST_OK


cdef Py_ssize_t unpad_batch(PacketBatch batch) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t alive = 0
    cdef uint8_t st
    cdef uint32_t ip_len = 0
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
        st = _unpad_one(slab + i * size + offsets[i], lengths[i], &ip_len)
        if st != ST_OK:
            status[i] = st
        else:
            lengths[i] = ip_len
            alive += 1
    return alive


cdef int _raise_bounds(PacketBatch batch) except -1:
    cdef Py_ssize_t i = batch.first_bad_bounds()
    raise ValueError(
        f"slot {i} has offset {batch.offsets[i]} + length {batch.lengths[i]} beyond its "
        f"slot of {batch.slot_size} bytes")


def classify(PacketBatch batch not None, kinds=None, vnis=None):
    """Classify every alive slot of ``batch`` in place and return the per-slot kinds.

    ``kinds`` (optional, reused across calls to avoid an allocation) is a writable buffer
    of at least ``len(batch)`` bytes; a new ``bytearray`` is returned when omitted. Slots
    already dropped get kind UNCLASSIFIED and keep their status. ``vnis``, if given, is a
    writable uint32 buffer that receives each slot's Geneve VNI (0 when not Geneve).
    """
    cdef Py_ssize_t n = batch.count
    if kinds is None:
        kinds = bytearray(n)
    cdef uint8_t[::1] kv = kinds
    if kv.shape[0] < n:
        raise ValueError(f"kinds holds {kv.shape[0]} entries, the batch {n} packets")
    cdef uint32_t[::1] vv
    cdef uint32_t* vp = NULL
    if vnis is not None:
        vv = vnis
        if vv.shape[0] < n:
            raise ValueError(f"vnis holds {vv.shape[0]} entries, the batch {n} packets")
        if n:
            vp = &vv[0]
    if n == 0:
        return kinds
    cdef uint8_t* kp = &kv[0]
    cdef Py_ssize_t r
    # Reads the slab, writes offsets/lengths/status of `batch` and `kinds`/`vnis`; the
    # caller owns all of them for the duration of the call.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        r = classify_batch(batch, kp, vp)
    if r < 0:
        _raise_bounds(batch)
    return kinds


def unpad(PacketBatch batch not None):
    """Trim every alive slot to the length its IP header states; return how many remain.

    Drops keepalives (empty plaintexts) as ST_KEEPALIVE and malformed headers as ST_BAD_IP.
    """
    cdef Py_ssize_t r
    # Reads the slab, writes lengths/status of `batch`, owned by the caller.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        r = unpad_batch(batch)
    if r < 0:
        _raise_bounds(batch)
    return r


def kind_counts(PacketBatch batch not None, kinds, bint alive_only=False):
    """Number of slots per base kind, plus the Geneve-encapsulated total at COUNT_GENEVE.

    ``kinds`` is the array ``classify`` filled for this batch. With ``alive_only`` only
    slots whose status is still ST_OK are counted.
    """
    cdef const uint8_t[::1] kv = kinds
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t i
    cdef Py_ssize_t[KIND_BASE_MASK + 2] counts
    cdef uint8_t k
    if kv.shape[0] < n:
        raise ValueError(f"kinds holds {kv.shape[0]} entries, the batch {n} packets")
    for i in range(KIND_BASE_MASK + 2):
        counts[i] = 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(n):
            if alive_only and batch.status[i] != ST_OK:
                continue
            k = kv[i]
            counts[k & KIND_BASE_MASK] += 1
            if k & KIND_FLAG_GENEVE:
                counts[KIND_BASE_MASK + 1] += 1
    for i in range(KIND_N, KIND_BASE_MASK + 1):
        if counts[i]:
            raise ValueError(f"kinds holds {counts[i]} values of base kind {i}, not a kind")
    return [counts[i] for i in range(KIND_N)] + [counts[KIND_BASE_MASK + 1]]


def consume(PacketBatch batch not None, kinds, wanted, int status):
    """Set ``status`` on every alive slot whose base kind is in ``wanted``; return their indexes.

    This is how the caller takes disco, STUN or handshake datagrams out of the data path
    (e.g. ``consume(batch, kinds, {DISCO}, DropReason.DISCO)``) after or before copying them.
    """
    cdef const uint8_t[::1] kv = kinds
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t i
    cdef Py_ssize_t m = 0
    cdef uint64_t mask = 0
    cdef uint8_t st = <uint8_t>status
    if kv.shape[0] < n:
        raise ValueError(f"kinds holds {kv.shape[0]} entries, the batch {n} packets")
    if status <= ST_OK or status >= ST_MAX:
        raise ValueError(f"status {status} is not a drop reason (1..{ST_MAX - 1})")
    for w in wanted:
        if not 0 < w < KIND_N:
            raise ValueError(f"{w!r} is not a kind (1..{KIND_N - 1})")
        mask |= (<uint64_t>1) << <int>w
    if n == 0:
        return []
    cdef uint32_t[::1] taken = memoryview(bytearray(4 * n)).cast("I")
    # Reads `kinds`, writes the status of `batch` and the local `taken`.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(n):
            if batch.status[i] == ST_OK and (mask >> (kv[i] & KIND_BASE_MASK)) & 1:
                batch.status[i] = st
                taken[m] = <uint32_t>i
                m += 1
    return [taken[i] for i in range(m)]
