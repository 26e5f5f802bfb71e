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
remaining slots is kept for the next ``read``; one the kernel should never produce
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
from libc.string cimport memcpy
from posix.uio cimport iovec, writev
from posix.unistd cimport read, write

from dataplane._batch cimport PacketBatch, ST_OK, ST_TOO_BIG, ST_TOO_SHORT
from dataplane.transport._sys cimport poll, pollfd, POLLIN, POLLERR, POLLHUP

cdef enum:
    ERRNO_SLOTS = 256  # errno values are small positive integers on Linux (< 134)

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
    TCP_CWR = 0x80

    PLACE_NO_ROOM = 0
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


cdef inline void tcp_checksum(uint8_t* ip, bint v6, Py_ssize_t ip_len,
                              Py_ssize_t tcp_len) noexcept nogil:
    # Pseudo-header (addresses, protocol, TCP length) + the whole TCP segment.
    cdef uint8_t* tcp = ip + ip_len
    cdef uint64_t acc
    tcp[16] = 0
    tcp[17] = 0
    if v6:
        acc = csum_add(0, ip + 8, 32)
    else:
        acc = csum_add(0, ip + 12, 8)
    acc += 6 + <uint64_t>tcp_len
    acc = csum_add(acc, tcp, tcp_len)
    store_be16(tcp + 16, csum_fold(acc))


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
                                 Py_ssize_t limit) noexcept nogil:
    """Cut one TSO segment into ``gso_size`` TCP segments in slots ``k``...; returns how
    many, PLACE_NO_ROOM if they do not all fit in ``room``, PLACE_BAD if malformed."""
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
    if segs > room:
        return PLACE_NO_ROOM
    seq = (<uint32_t>load_be16(pkt + ip_len + 4) << 16) | load_be16(pkt + ip_len + 6)
    ident = load_be16(pkt + 4)
    flags = pkt[ip_len + 13]
    for i in range(segs):
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
    return segs


cdef inline Py_ssize_t place(const uint8_t* buf, Py_ssize_t r, PacketBatch batch,
                             Py_ssize_t k, Py_ssize_t room, Py_ssize_t limit) noexcept nogil:
    """Put what one vnet read returned (header + packet) into slots from ``k``."""
    cdef uint8_t gso
    if r < VNET_HDR_LEN:
        return PLACE_BAD
    gso = buf[1] & ~GSO_ECN
    if gso == GSO_NONE:
        return place_plain(buf, buf + VNET_HDR_LEN, r - VNET_HDR_LEN, batch, k, limit)
    if gso == GSO_TCPV4 or gso == GSO_TCPV6:
        return place_tso(buf, buf + VNET_HDR_LEN, r - VNET_HDR_LEN, batch, k, room, limit)
    return PLACE_BAD


def split_offloaded(data, PacketBatch batch not None):
    """Place one ``virtio_net_hdr`` + packet (as a vnet TUN read returns it) into ``batch``
    the way ``TunIO.read`` does; returns the number of slots used, 0 if they would not
    fit, -1 if malformed. For tests and tools; the read loop does this without the GIL."""
    cdef const uint8_t[::1] src = memoryview(data).cast("B")
    cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
    cdef Py_ssize_t k = batch.count, used
    if src.shape[0] == 0:
        return PLACE_BAD
    if batch.capacity == k:
        return PLACE_NO_ROOM
    used = place(&src[0], src.shape[0], batch, k, batch.capacity - k, limit)
    if used > 0:
        batch.count = k + used
    return used


cdef class TunIO:
    """read/write of whole batches on one TUN fd (which the caller owns and keeps open)."""

    cdef int fd
    cdef int wake_fd
    cdef readonly bint vnet_hdr
    cdef uint8_t* scratch           # one vnet read (header + up to 64 KiB), vnet_hdr only
    cdef Py_ssize_t pending         # bytes in scratch not yet placed (no room last time)
    cdef readonly unsigned long long rx_packets, rx_bytes, rx_too_big
    cdef readonly unsigned long long rx_offloaded, rx_offload_errors
    cdef readonly unsigned long long tx_packets, tx_bytes, tx_failed

    def __cinit__(self, int fd, int wake_fd=-1, bint vnet_hdr=False):
        if fd < 0:
            raise ValueError(f"bad file descriptor {fd}")
        self.fd = fd
        self.wake_fd = wake_fd
        self.vnet_hdr = vnet_hdr
        self.scratch = NULL
        self.pending = 0
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
        cdef Py_ssize_t base = batch.count, k
        cdef Py_ssize_t room = batch.capacity - batch.count
        cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
        cdef Py_ssize_t want
        cdef Py_ssize_t n = 0, r
        cdef int rc, err = 0
        cdef int ms = -1 if timeout < 0 else <int>(timeout * 1000)
        cdef pollfd fds[2]
        cdef unsigned long nfds = 1
        cdef uint8_t drain[8]
        cdef unsigned long long nbytes = 0, too_big = 0
        if room <= 0 or limit <= 0:
            return 0
        if self.vnet_hdr:
            return self._read_vnet(batch, timeout)
        # One spare byte past the limit detects an oversize packet; it stays inside the slot
        # because the tailroom is at least that large whenever it is used.
        want = limit + 1 if batch.tailroom > 0 else limit
        fds[0].fd = self.fd
        fds[0].events = POLLIN
        fds[0].revents = 0
        if self.wake_fd >= 0:
            fds[1].fd = self.wake_fd
            fds[1].events = POLLIN
            fds[1].revents = 0
            nfds = 2
        # Blocks in poll, then reads a burst; touches only the batch's slots from
        # batch.count on and their metadata, which the caller owns.
        with nogil:
            while True:
                rc = poll(fds, nfds, ms)
                if rc < 0 and errno == EINTR:
                    continue
                break
            if rc > 0 and nfds == 2 and fds[1].revents != 0:
                # One wake-up per wake(): drain the eventfd so later calls block again.
                read(self.wake_fd, drain, 8)
            if rc < 0:
                err = errno
            elif rc > 0 and fds[0].revents != 0:
                while n < room:
                    k = base + n
                    r = read(self.fd, batch.slot_ptr(k) + batch.headroom, <size_t>want)
                    if r < 0:
                        if errno == EINTR:
                            continue
                        if errno != EAGAIN:
                            err = errno
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
        if n == 0 and err != 0:
            return -err
        return n

    cdef object _read_vnet(self, PacketBatch batch, double timeout):
        cdef Py_ssize_t base = batch.count, k, used
        cdef Py_ssize_t room = batch.capacity - batch.count
        cdef Py_ssize_t limit = batch.slot_size - batch.headroom - batch.tailroom
        cdef Py_ssize_t n = 0, r
        cdef int rc = 1, err = 0
        cdef int ms = -1 if timeout < 0 else <int>(timeout * 1000)
        cdef pollfd fds[2]
        cdef unsigned long nfds = 1
        cdef uint8_t drain[8]
        cdef unsigned long long nbytes = 0, too_big = 0, offloaded = 0, bad = 0
        cdef uint8_t* buf = self.scratch
        fds[0].fd = self.fd
        fds[0].events = POLLIN
        fds[0].revents = 0
        if self.wake_fd >= 0:
            fds[1].fd = self.wake_fd
            fds[1].events = POLLIN
            fds[1].revents = 0
            nfds = 2
        # Touches this object's scratch buffer and the batch's slots from batch.count on,
        # both owned by the (single) reading thread for the duration of the call.
        with nogil:
            if self.pending == 0:
                while True:
                    rc = poll(fds, nfds, ms)
                    if rc < 0 and errno == EINTR:
                        continue
                    break
                if rc > 0 and nfds == 2 and fds[1].revents != 0:
                    read(self.wake_fd, drain, 8)
                if rc < 0:
                    err = errno
            if rc > 0 and (self.pending or fds[0].revents != 0):
                while n < room:
                    if self.pending:
                        r = self.pending
                    else:
                        r = read(self.fd, buf, SCRATCH_LEN)
                        if r < 0:
                            if errno == EINTR:
                                continue
                            if errno != EAGAIN:
                                err = errno
                            break
                    k = base + n
                    used = place(buf, r, batch, k, room - n, limit)
                    if used == PLACE_NO_ROOM:
                        self.pending = r  # first thing placed by the next read
                        break
                    self.pending = 0
                    if used == PLACE_BAD:
                        bad += 1
                        continue
                    if used > 1:
                        offloaded += 1
                    elif batch.status[k] == ST_TOO_BIG:
                        too_big += 1
                    for k in range(base + n, base + n + used):
                        nbytes += batch.lengths[k]
                    n += used
        batch.count = base + n
        self.rx_packets += <unsigned long long>n
        self.rx_bytes += nbytes
        self.rx_too_big += too_big
        self.rx_offloaded += offloaded
        self.rx_offload_errors += bad
        if n == 0 and err != 0:
            return -err
        return n

    def write(self, PacketBatch batch not None):
        """Write every alive slot to the device, one packet per ``write``.

        Returns ``(written, errors)``: ``errors`` maps errno -> packets refused with it (a
        refused packet is skipped, the rest still go out).
        """
        cdef Py_ssize_t i, count = batch.count
        cdef Py_ssize_t r
        cdef int e
        cdef unsigned long long written = 0, nbytes = 0, failed = 0
        cdef unsigned long long errs[ERRNO_SLOTS]
        cdef int any_err = 0
        cdef uint8_t hdr[VNET_HDR_LEN]
        cdef iovec iov[2]
        cdef bint vnet = self.vnet_hdr
        for e in range(ERRNO_SLOTS):
            errs[e] = 0
        for e in range(VNET_HDR_LEN):
            hdr[e] = 0
        hdr[0] = F_DATA_VALID
        iov[0].iov_base = hdr
        iov[0].iov_len = VNET_HDR_LEN
        # Reads the batch (owned by the caller for the duration of the call) and writes
        # only local counters.
        with nogil:
            for i in range(count):
                if batch.status[i] != ST_OK:
                    continue
                while True:
                    if vnet:
                        iov[1].iov_base = batch.pkt_ptr(i)
                        iov[1].iov_len = batch.lengths[i]
                        r = writev(self.fd, iov, 2)
                        if r >= VNET_HDR_LEN:
                            r -= VNET_HDR_LEN
                    else:
                        r = write(self.fd, batch.pkt_ptr(i), batch.lengths[i])
                    if r < 0 and errno == EINTR:
                        continue
                    break
                if r < 0:
                    e = errno
                    errs[e if 0 <= e < ERRNO_SLOTS else 0] += 1
                    failed += 1
                    any_err = 1
                else:
                    written += 1
                    nbytes += <unsigned long long>r
        self.tx_packets += written
        self.tx_bytes += nbytes
        self.tx_failed += failed
        errors = {}
        if any_err:
            for e in range(ERRNO_SLOTS):
                if errs[e]:
                    errors[e] = errs[e]
        return written, errors

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
