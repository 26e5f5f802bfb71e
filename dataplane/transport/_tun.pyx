# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Batched TUN I/O: packets read straight into PacketBatch slots and written straight out.

Theory of operation: a Linux TUN file descriptor (``IFF_TUN | IFF_NO_PI``, opened
non-blocking) gives one IP packet per ``read`` and takes one per ``write``; there is no
``readv``-of-many for character devices, so batching means *several syscalls per wake-up
without the GIL*. ``TunIO.read`` ``poll``s the TUN fd and a wake-up eventfd (so closing
stops a reading thread at once), then keeps calling non-blocking ``read`` into consecutive
slots until the kernel says EAGAIN or the batch is full: one GIL release and one Python
round trip per burst instead of per packet. ``TunIO.write`` walks the batch's alive slots
in one GIL-free loop, one ``write`` each.

With ``vnet_hdr`` (the fd was opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``), every
read and write carries a 10-byte ``virtio_net_hdr`` in front of the packet, and the kernel
hands us TCP segments of up to 64 KiB (TSO) and packets whose transport checksum it left
for us to fill in (``NEEDS_CSUM``): far fewer reads, and far less work in the sending
kernel, per byte. ``read`` then goes through a 64 KiB scratch buffer: a plain packet is
copied into its slot (its checksum completed if asked), a TSO segment is cut into
``gso_size`` pieces, one slot each, with the IPv4 id / total length / header checksum,
the IPv6 payload length, the TCP sequence number, FIN/PSH/CWR and the TCP checksum of
each piece rewritten, exactly as a NIC does. A segment that does not fit the batch's
remaining slots is continued by the next ``read``; one the kernel should never produce
(unknown GSO type, malformed headers) is dropped and counted in ``rx_offload_errors``.
Writes prepend a header that says "checksum already verified": WireGuard's AEAD has
authenticated the packet, as the kernel implementation also tells its stack.

Each packet lands ``headroom`` bytes into its slot, so the core can seal it in place. The
read asks for up to one byte more than the batch's packet limit (slot minus headroom and
tailroom): a packet that fills that extra byte is larger than the interface MTU allows and
is kept (truncated) with status ST_TOO_BIG rather than silently cut. Errors never raise:
``read`` returns ``-errno``, ``write`` counts per errno (EINVAL for a packet the kernel
refuses, EIO/EBADFD once the interface is gone), since they are events of the device and
not programming errors.
"""

from libc.errno cimport errno, EINTR, EAGAIN
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy
from posix.uio cimport iovec, writev
from posix.unistd cimport read, write

from dataplane._batch cimport PacketBatch, ST_OK, ST_TOO_BIG, ST_TOO_SHORT
from dataplane.transport._sys cimport poll, pollfd, POLLIN, POLLERR, POLLHUP, wait_readable

cdef enum:
    ERRNO_SLOTS = TUN_ERRNO_SLOTS  # errno values are small positive integers (< 134)

    # struct virtio_net_hdr (linux/virtio_net.h), host byte order on a TUN fd.
    VNET_HDR_LEN = 10
    F_NEEDS_CSUM = 1
    F_DATA_VALID = 2
    GSO_NONE = 0
    GSO_TCPV4 = 1
    GSO_TCPV6 = 4
    GSO_ECN = 0x80
    SCRATCH_LEN = VNET_HDR_LEN + 65535 + 1

    TCP_FIN = 0x01
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_CWR = 0x80
    GRO_MAX_RUN = 64

    PLACE_BAD = -1


cdef inline uint16_t load_be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline void store_be16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline uint16_t load_host16(const uint8_t* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint64_t csum_add(uint64_t acc, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    # The one's-complement sum is the same whether added in 16- or 32-bit big-endian
    # words (the carries fold back in at the end), so take four bytes at a time.
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        acc += ((<uint64_t>p[i] << 24) | (<uint64_t>p[i + 1] << 16)
                | (<uint64_t>p[i + 2] << 8) | p[i + 3])
        i += 4
    if i + 2 <= n:
        acc += (<uint64_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        acc += <uint64_t>p[i] << 8
    return acc


cdef inline uint16_t csum_fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return <uint16_t>(~acc & 0xFFFF)


cdef inline void ipv4_header_checksum(uint8_t* ip, Py_ssize_t ihl) noexcept nogil:
    ip[10] = 0
    ip[11] = 0
    store_be16(ip + 10, csum_fold(csum_add(0, ip, ihl)))


cdef inline uint64_t tcp_pseudo_sum(const uint8_t* ip, bint v6,
                                    Py_ssize_t tcp_len) noexcept nogil:
    # The pseudo-header: addresses, protocol, TCP length (unfolded).
    cdef uint64_t acc = csum_add(0, ip + 8, 32) if v6 else csum_add(0, ip + 12, 8)
    return acc + 6 + <uint64_t>tcp_len


cdef inline void tcp_checksum(uint8_t* ip, bint v6, Py_ssize_t ip_len,
                              Py_ssize_t tcp_len) noexcept nogil:
    cdef uint8_t* tcp = ip + ip_len
    tcp[16] = 0
    tcp[17] = 0
    store_be16(tcp + 16, csum_fold(csum_add(tcp_pseudo_sum(ip, v6, tcp_len), tcp, tcp_len)))


cdef inline void finish_checksum(uint8_t* pkt, Py_ssize_t n, Py_ssize_t start,
                                 Py_ssize_t offset) noexcept nogil:
    # CHECKSUM_PARTIAL: the field already holds the pseudo-header sum; sum from ``start``
    # to the end and store the complement (0 becomes 0xFFFF, as for UDP on the wire).
    cdef uint16_t c = csum_fold(csum_add(0, pkt + start, n - start))
    store_be16(pkt + start + offset, c if c else 0xFFFF)


cdef inline Py_ssize_t place_plain(const uint8_t* hdr, const uint8_t* pkt, Py_ssize_t n,
                                   PacketBatch batch, Py_ssize_t k,
                                   Py_ssize_t limit) noexcept nogil:
    """Copy one non-GSO packet into slot ``k`` (completing its checksum if asked)."""
    cdef Py_ssize_t start = load_host16(hdr + 6), off = load_host16(hdr + 8)
    cdef uint8_t* dst = batch.slot_ptr(k) + batch.headroom
    batch.offsets[k] = <uint32_t>batch.headroom
    batch.peers[k] = -1
    if n > limit:
        memcpy(dst, pkt, limit)
        batch.lengths[k] = <uint32_t>limit
        batch.status[k] = ST_TOO_BIG
        return 1
    memcpy(dst, pkt, n)
    batch.lengths[k] = <uint32_t>n
    batch.status[k] = ST_OK if n > 0 else ST_TOO_SHORT
    if hdr[0] & F_NEEDS_CSUM:
        if start + off + 2 > n:
            return PLACE_BAD
        finish_checksum(dst, n, start, off)
    return 1


cdef inline Py_ssize_t place_tso(const uint8_t* hdr, const uint8_t* pkt, Py_ssize_t n,
                                 PacketBatch batch, Py_ssize_t k, Py_ssize_t room,
                                 Py_ssize_t limit, Py_ssize_t first,
                                 Py_ssize_t* resume) noexcept nogil:
    """Cut one TSO segment into ``gso_size`` TCP segments, pieces ``first``... into slots
    ``k``... (at most ``room``); returns how many were placed, PLACE_BAD if malformed.
    ``resume`` gets the next piece to place when the room ran out, else 0."""
    cdef uint8_t gso = hdr[1] & ~GSO_ECN
    cdef Py_ssize_t mss = load_host16(hdr + 4)
    cdef bint v6 = gso == GSO_TCPV6
    cdef Py_ssize_t ip_len, tcp_hdr, head, payload, segs, i, piece
    cdef uint8_t* dst
    cdef uint8_t* tcp
    cdef uint32_t seq
    cdef uint16_t ident
    cdef uint8_t flags
    if v6:
        if n < 40 or (pkt[0] >> 4) != 6 or pkt[6] != 6:  # no extension headers from TSO
            return PLACE_BAD
        ip_len = 40
    else:
        if n < 20 or (pkt[0] >> 4) != 4 or pkt[9] != 6:
            return PLACE_BAD
        ip_len = (pkt[0] & 0x0F) * 4
    if ip_len < 20 or n < ip_len + 20:
        return PLACE_BAD
    tcp_hdr = (pkt[ip_len + 12] >> 4) * 4
    head = ip_len + tcp_hdr
    if tcp_hdr < 20 or n < head or mss <= 0 or head + mss > limit:
        return PLACE_BAD
    payload = n - head
    segs = (payload + mss - 1) // mss if payload else 1
    if first >= segs:
        return PLACE_BAD
    resume[0] = first + room if first + room < segs else 0
    seq = (<uint32_t>load_be16(pkt + ip_len + 4) << 16) | load_be16(pkt + ip_len + 6)
    ident = load_be16(pkt + 4)
    flags = pkt[ip_len + 13]
    k -= first
    for i in range(first, segs if resume[0] == 0 else resume[0]):
        piece = payload - i * mss
        if piece > mss:
            piece = mss
        dst = batch.slot_ptr(k + i) + batch.headroom
        memcpy(dst, pkt, head)
        memcpy(dst + head, pkt + head + i * mss, piece)
        tcp = dst + ip_len
        store_be16(tcp + 4, <uint16_t>((seq + i * mss) >> 16))
        store_be16(tcp + 6, <uint16_t>(seq + i * mss))
        tcp[13] = flags
        if i + 1 < segs:
            tcp[13] &= ~(TCP_FIN | TCP_PSH)
        if i > 0:
            tcp[13] &= ~TCP_CWR
        if v6:
            store_be16(dst + 4, <uint16_t>(tcp_hdr + piece))
        else:
            store_be16(dst + 2, <uint16_t>(head + piece))
            store_be16(dst + 4, <uint16_t>(ident + i))
            ipv4_header_checksum(dst, ip_len)
        tcp_checksum(dst, v6, ip_len, tcp_hdr + piece)
        batch.offsets[k + i] = <uint32_t>batch.headroom
        batch.lengths[k + i] = <uint32_t>(head + piece)
        batch.peers[k + i] = -1
        batch.status[k + i] = ST_OK
    return (segs if resume[0] == 0 else resume[0]) - first


cdef inline Py_ssize_t place(const uint8_t* buf, Py_ssize_t r, PacketBatch batch,
                             Py_ssize_t k, Py_ssize_t room, Py_ssize_t limit,
                             Py_ssize_t first, Py_ssize_t* resume) noexcept nogil:
    """Put what one vnet read returned (header + packet) into slots from ``k`` (``room`` of
    them, at least one), starting at TSO piece ``first``; see ``place_tso``."""
    cdef uint8_t gso
    resume[0] = 0
    if r < VNET_HDR_LEN or room <= 0:
        return PLACE_BAD
    gso = buf[1] & ~GSO_ECN
    if gso == GSO_NONE:
        return place_plain(buf, buf + VNET_HDR_LEN, r - VNET_HDR_LEN, batch, k, limit)
    if gso == GSO_TCPV4 or gso == GSO_TCPV6:
        return place_tso(buf, buf + VNET_HDR_LEN, r - VNET_HDR_LEN, batch, k, room, limit,
                         first, resume)
    return PLACE_BAD


cdef struct tcp_seg_t:
    Py_ssize_t ip_len
    Py_ssize_t head             # IP + TCP header bytes
    Py_ssize_t payload
    uint32_t seq
    uint8_t flags
    bint v6


cdef inline bint tcp_parse(const uint8_t* p, Py_ssize_t n, tcp_seg_t* t) noexcept nogil:
    """Whether ``p`` is a TCP segment that GRO may merge: no IP options, fragments or
    extension headers, a payload, and no flag but ACK (and PSH, which ends a run)."""
    cdef Py_ssize_t ip_len, tcp_hdr
    if n < 41:
        return False
    if p[0] == 0x45:
        if p[9] != 6 or (load_be16(p + 6) & 0x3FFF) != 0 or load_be16(p + 2) != n:
            return False
        ip_len = 20
    elif (p[0] >> 4) == 6:
        if n < 61 or p[6] != 6 or load_be16(p + 4) != n - 40:
            return False
        ip_len = 40
    else:
        return False
    tcp_hdr = (p[ip_len + 12] >> 4) * 4
    if tcp_hdr < 20 or ip_len + tcp_hdr >= n:
        return False
    t.flags = p[ip_len + 13]
    if (t.flags & ~(TCP_ACK | TCP_PSH)) != 0 or not (t.flags & TCP_ACK):
        return False
    t.ip_len = ip_len
    t.head = ip_len + tcp_hdr
    t.payload = n - t.head
    t.seq = (<uint32_t>load_be16(p + ip_len + 4) << 16) | load_be16(p + ip_len + 6)
    t.v6 = ip_len == 40
    return True


cdef inline bint tcp_follows(const uint8_t* a, const tcp_seg_t* ta, const uint8_t* b,
                             const tcp_seg_t* tb, uint32_t seq, uint16_t ident) noexcept nogil:
    """Whether segment ``b`` continues ``a``'s flow at ``seq`` with headers the kernel's
    GRO would accept as the same (everything but lengths, id, seq, PSH and checksums)."""
    cdef Py_ssize_t ipl = ta.ip_len
    if tb.v6 != ta.v6 or tb.head != ta.head or tb.seq != seq:
        return False
    if ta.v6:
        if memcmp(a, b, 4) != 0 or a[7] != b[7] or memcmp(a + 8, b + 8, 32) != 0:
            return False
    else:
        if a[1] != b[1] or a[8] != b[8] or (a[6] & 0x40) != (b[6] & 0x40):
            return False
        if memcmp(a + 12, b + 12, 8) != 0:
            return False
        if not (a[6] & 0x40) and load_be16(b + 4) != ident:  # without DF, ids count up
            return False
    # Ports, ack number, data offset, window; then the options byte for byte.
    return (memcmp(a + ipl, b + ipl, 4) == 0 and memcmp(a + ipl + 8, b + ipl + 8, 5) == 0
            and memcmp(a + ipl + 14, b + ipl + 14, 2) == 0
            and memcmp(a + ipl + 20, b + ipl + 20, ta.head - ipl - 20) == 0)


cdef inline Py_ssize_t gro_run(PacketBatch batch, Py_ssize_t i, Py_ssize_t count,
                               Py_ssize_t* run, tcp_seg_t* first) noexcept nogil:
    """Slots from ``i`` that form one TCP super-segment (``run`` gets their indices);
    returns how many (0 if slot ``i`` cannot start one)."""
    cdef tcp_seg_t t
    cdef const uint8_t* a = batch.pkt_ptr(i)
    cdef Py_ssize_t m = 1, j, total, last_payload
    cdef uint32_t seq
    cdef uint16_t ident
    if not tcp_parse(a, batch.lengths[i], first):
        return 0
    run[0] = i
    total = first.head + first.payload
    last_payload = first.payload
    seq = first.seq + <uint32_t>first.payload
    ident = load_be16(a + 4) + 1
    t.flags = first.flags
    j = i + 1
    # Every piece but the last carries exactly gso_size (the first's payload) bytes.
    while (j < count and m < GRO_MAX_RUN and last_payload == first.payload
           and not (t.flags & TCP_PSH)):
        if batch.status[j] != ST_OK:
            j += 1
            continue
        if (not tcp_parse(batch.pkt_ptr(j), batch.lengths[j], &t)
                or not tcp_follows(a, first, batch.pkt_ptr(j), &t, seq, ident)
                or t.payload > first.payload or total + t.payload > 65535):
            break
        run[m] = j
        m += 1
        total += t.payload
        last_payload = t.payload
        seq += <uint32_t>t.payload
        ident += 1
        j += 1
    return m


cdef inline Py_ssize_t build_super(PacketBatch batch, const Py_ssize_t* run, Py_ssize_t m,
                                   const tcp_seg_t* first, uint8_t* vhdr, uint8_t* head,
                                   iovec* iov) noexcept nogil:
    """The vnet header, the rewritten first headers and the iovecs of a super-segment made
    of slots ``run[:m]`` (payloads are written from the slots, not copied); its length."""
    cdef const uint8_t* a = batch.pkt_ptr(run[0])
    cdef Py_ssize_t k, total = first.head, ipl = first.ip_len
    cdef uint16_t v
    memcpy(head, a, first.head)
    for k in range(m):
        total += batch.lengths[run[k]] - first.head
        iov[2 + k].iov_base = batch.pkt_ptr(run[k]) + first.head
        iov[2 + k].iov_len = batch.lengths[run[k]] - first.head
    iov[1].iov_base = head
    iov[1].iov_len = first.head
    # PSH of the last piece; the checksum field holds the pseudo-header sum only
    # (CHECKSUM_PARTIAL, as a local sender would hand the segment to a NIC).
    head[ipl + 13] = first.flags | (batch.pkt_ptr(run[m - 1])[ipl + 13] & TCP_PSH)
    if first.v6:
        store_be16(head + 4, <uint16_t>(total - 40))
    else:
        store_be16(head + 2, <uint16_t>total)
        ipv4_header_checksum(head, 20)
    # csum_fold complements; a partial checksum is stored as the plain folded sum.
    store_be16(head + ipl + 16,
               <uint16_t>~csum_fold(tcp_pseudo_sum(head, first.v6, total - ipl)))
    vhdr[0] = F_NEEDS_CSUM
    vhdr[1] = GSO_TCPV6 if first.v6 else GSO_TCPV4
    v = <uint16_t>first.head
    memcpy(vhdr + 2, &v, 2)
    v = <uint16_t>first.payload
    memcpy(vhdr + 4, &v, 2)
    v = <uint16_t>ipl
    memcpy(vhdr + 6, &v, 2)
    v = 16
    memcpy(vhdr + 8, &v, 2)
    return total


def split_offloaded(data, PacketBatch batch not None, Py_ssize_t first=0):
    """Place one ``virtio_net_hdr`` + packet (as a vnet TUN read returns it) into ``batch``
    the way ``TunIO.read`` does, from TSO piece ``first`` on. Returns ``(placed, resume)``:
    slots used (-1 if malformed) and the piece to continue from in another batch (0 when
    all were placed). For tests and tools; the read loop does this without the GIL."""
    cdef const uint8_t[::1] src = memoryview(data).cast("B")
    cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
    cdef Py_ssize_t k = batch.count, used, resume = 0
    if src.shape[0] == 0 or first < 0:
        return PLACE_BAD, 0
    if batch.capacity == k:
        return 0, first
    used = place(&src[0], src.shape[0], batch, k, batch.capacity - k, limit, first, &resume)
    if used > 0:
        batch.count = k + used
    return used, resume


cdef class TunIO:
    """read/write of whole batches on one TUN fd (which the caller owns and keeps open)."""

    def __cinit__(self, int fd, int wake_fd=-1, bint vnet_hdr=False):
        if fd < 0:
            raise ValueError(f"bad file descriptor {fd}")
        self.fd = fd
        self.wake_fd = wake_fd
        self.vnet_hdr = vnet_hdr
        self.scratch = NULL
        self.pending = 0
        self.pending_piece = 0
        if vnet_hdr:
            self.scratch = <uint8_t*>malloc(SCRATCH_LEN)
            if self.scratch == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self.scratch)

    def read(self, PacketBatch batch not None, double timeout=-1.0):
        """Append the packets that are ready (waiting up to ``timeout`` s; < 0 = forever).

        Returns the number appended (0 on timeout or wake-up), or ``-errno`` when the
        device failed before any packet was read (EBADFD/EIO: the interface is gone).
        """
        cdef int err = 0
        cdef int ms = -1 if timeout < 0 else <int>(timeout * 1000)
        cdef Py_ssize_t n
        # Blocks in poll, then reads a burst; touches only the batch's slots from
        # batch.count on and their metadata, which the caller owns.
        with nogil:
            n = self.read_c(batch, ms, &err)
        if n == 0 and err != 0:
            return -err
        return n

    cdef Py_ssize_t read_c(self, PacketBatch batch, int ms, int* err) noexcept nogil:
        cdef Py_ssize_t base = batch.count, k
        cdef Py_ssize_t room = batch.capacity - batch.count
        cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
        cdef Py_ssize_t want
        cdef Py_ssize_t n = 0, r
        cdef int rc
        cdef unsigned long long nbytes = 0, too_big = 0
        err[0] = 0
        if room <= 0 or limit <= 0:
            return 0
        if self.vnet_hdr:
            return self._read_vnet_c(batch, ms, err)
        # One spare byte past the limit detects an oversize packet; it stays inside the slot
        # because the tailroom is at least that large whenever it is used.
        want = limit + 1 if batch.tailroom > 0 else limit
        rc = wait_readable(self.fd, self.wake_fd, ms)
        if rc < 0:
            err[0] = -rc
        elif rc > 0:
            while n < room:
                k = base + n
                r = read(self.fd, batch.slot_ptr(k) + batch.headroom, <size_t>want)
                if r < 0:
                    if errno == EINTR:
                        continue
                    if errno != EAGAIN:
                        err[0] = errno
                    break
                batch.offsets[k] = <uint32_t>batch.headroom
                batch.peers[k] = -1
                if r > limit:
                    batch.lengths[k] = <uint32_t>limit
                    batch.status[k] = ST_TOO_BIG
                    too_big += 1
                else:
                    batch.lengths[k] = <uint32_t>r
                    batch.status[k] = ST_OK if r > 0 else ST_TOO_SHORT
                nbytes += <unsigned long long>r
                n += 1
        batch.count = base + n
        self.rx_packets += <unsigned long long>n
        self.rx_bytes += nbytes
        self.rx_too_big += too_big
        return n

    cdef Py_ssize_t _read_vnet_c(self, PacketBatch batch, int ms, int* err) noexcept nogil:
        cdef Py_ssize_t base = batch.count, k, used, resume = 0
        cdef Py_ssize_t room = batch.capacity - batch.count
        cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
        cdef Py_ssize_t n = 0, r
        cdef int rc = 1
        cdef unsigned long long nbytes = 0, too_big = 0, offloaded = 0, bad = 0
        cdef uint8_t* buf = self.scratch
        # The rest of a TSO segment from the last call goes first, without waiting.
        if self.pending == 0:
            rc = wait_readable(self.fd, self.wake_fd, ms)
            if rc < 0:
                err[0] = -rc
        if rc > 0:
            while n < room:
                if self.pending:
                    r = self.pending
                else:
                    r = read(self.fd, buf, SCRATCH_LEN)
                    if r < 0:
                        if errno == EINTR:
                            continue
                        if errno != EAGAIN:
                            err[0] = errno
                        break
                k = base + n
                used = place(buf, r, batch, k, room - n, limit, self.pending_piece,
                             &resume)
                self.pending = 0
                self.pending_piece = 0
                if used == PLACE_BAD:
                    bad += 1
                    continue
                if buf[1] & ~GSO_ECN:
                    offloaded += resume == 0
                elif batch.status[k] == ST_TOO_BIG:
                    too_big += 1
                for k in range(base + n, base + n + used):
                    nbytes += batch.lengths[k]
                n += used
                if resume:
                    # The batch is full: the rest of this TSO segment starts the next.
                    self.pending = r
                    self.pending_piece = resume
                    break
        batch.count = base + n
        self.rx_packets += <unsigned long long>n
        self.rx_bytes += nbytes
        self.rx_too_big += too_big
        self.rx_offloaded += offloaded
        self.rx_offload_errors += bad
        return n

    def write(self, PacketBatch batch not None):
        """Write every alive slot to the device: one packet per ``write``, or, with
        ``vnet_hdr``, each run of consecutive segments of one TCP flow as one GSO
        super-segment (GRO: one trip through the receiving TCP stack per run).

        Returns ``(written, errors)`` in packets: ``errors`` maps errno -> packets refused
        with it (a refused packet is skipped, the rest still go out).
        """
        cdef unsigned long long errs[ERRNO_SLOTS]
        cdef Py_ssize_t written
        cdef int e
        # Reads the batch (owned by the caller for the duration of the call) and writes
        # only local buffers and counters.
        with nogil:
            written = self.write_c(batch, errs)
        return written, {e: errs[e] for e in range(ERRNO_SLOTS) if errs[e]}

    cdef Py_ssize_t write_c(self, PacketBatch batch,
                            unsigned long long* errs) noexcept nogil:
        cdef Py_ssize_t i, m, count = batch.count
        cdef Py_ssize_t r, total
        cdef int e
        cdef unsigned long long written = 0, nbytes = 0, failed = 0, merged = 0
        cdef uint8_t hdr[VNET_HDR_LEN]
        cdef uint8_t gso_hdr[VNET_HDR_LEN]
        cdef uint8_t head[120]
        cdef iovec iov[GRO_MAX_RUN + 2]
        cdef Py_ssize_t run[GRO_MAX_RUN]
        cdef tcp_seg_t first
        cdef bint vnet = self.vnet_hdr
        for e in range(ERRNO_SLOTS):
            errs[e] = 0
        for e in range(VNET_HDR_LEN):
            hdr[e] = 0
        hdr[0] = F_DATA_VALID
        i = 0
        while i < count:
            if batch.status[i] != ST_OK:
                i += 1
                continue
            m = gro_run(batch, i, count, run, &first) if vnet else 0
            if m > 1:
                total = build_super(batch, run, m, &first, gso_hdr, head, iov)
                iov[0].iov_base = gso_hdr
                iov[0].iov_len = VNET_HDR_LEN
                i = run[m - 1] + 1
            else:
                m = 1
                run[0] = i
                total = batch.lengths[i]
                iov[0].iov_base = hdr
                iov[0].iov_len = VNET_HDR_LEN
                iov[1].iov_base = batch.pkt_ptr(i)
                iov[1].iov_len = total
                i += 1
            while True:
                if vnet:
                    r = writev(self.fd, iov, 2 + (m if m > 1 else 0))
                else:
                    r = write(self.fd, batch.pkt_ptr(run[0]), batch.lengths[run[0]])
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                e = errno
                errs[e if 0 <= e < ERRNO_SLOTS else 0] += m
                failed += m
            else:
                written += m
                nbytes += <unsigned long long>total
                if m > 1:
                    merged += 1
        self.tx_packets += written
        self.tx_bytes += nbytes
        self.tx_failed += failed
        self.tx_merged += merged
        return <Py_ssize_t>written

    def device_failed(self):
        """True when poll reports an error or hang-up on the fd (the interface was deleted)."""
        cdef pollfd fds[1]
        cdef int rc
        fds[0].fd = self.fd
        fds[0].events = POLLIN
        fds[0].revents = 0
        with nogil:
            rc = poll(fds, 1, 0)
        return rc > 0 and (fds[0].revents & (POLLERR | POLLHUP)) != 0
