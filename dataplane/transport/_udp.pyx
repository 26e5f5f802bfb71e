# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Batched UDP I/O: recvmmsg straight into PacketBatch slots, sendmmsg straight out of them.

Theory of operation: ``BatchIO`` owns the ``mmsghdr``/``iovec``/address arrays for one
socket (allocated once, sized for the largest batch). ``recv`` first ``poll``s the socket
and an optional wake-up fd (so ``close`` can stop a receiving thread promptly), then takes
every datagram that is ready with one non-blocking ``recvmmsg``; each lands after the
slot's headroom, and its source address is stored in the slot's endpoint fields (IPv4 as
``::ffff:a.b.c.d``). ``send`` hands every alive slot to ``sendmmsg``, either to one
destination or to each slot's own endpoint, retrying after partial sends. Both syscalls run
without the GIL. Errors never raise: they are returned / counted per errno, since on a
network socket EAGAIN, ENOBUFS, ECONNREFUSED (ICMP port unreachable) and friends are
ordinary events.

Kernel drops: a datagram that finds the socket's receive buffer full is dropped by the
kernel before we can see it. With SO_RXQ_OVFL enabled on the socket (the caller's job),
each received message carries the socket's cumulative drop count (uint32) in a control
message; ``recv`` gives every message a control buffer and keeps the newest count in
``rx_kernel_dropped``. The count a message carries is a snapshot taken when it was queued,
so drops after the last queued datagram show up with the next one that gets in.

UDP GRO (``enable_gro`` once the socket has ``UDP_GRO`` on, Linux >= 5.0): the kernel may
then hand us a run of equal-sized datagrams from one sender as one message of up to 64 KiB
(the receive-side twin of the GSO we send with), with the size of each in a ``UDP_GRO``
control message: one trip through the receive path per run instead of per datagram.
``recv`` then takes up to ``GRO_MSGS`` messages into buffers of its own and cuts them
into slots; a message that does not fit the batch is continued by the next ``recv``
before the socket is read again.
"""

from libc.errno cimport errno, EINTR, EAGAIN, EIO, EINVAL, EOPNOTSUPP, ENOPROTOOPT
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from posix.uio cimport iovec

from dataplane._batch cimport PacketBatch, ST_OK, ST_TOO_BIG
from dataplane.transport._sys cimport (
    AF_INET, AF_INET6, MSG_DONTWAIT, MSG_TRUNC, htons, ntohs, mmsghdr, msghdr, recvmmsg,
    sendmmsg, sockaddr_in, sockaddr_in6, cmsghdr, CMSG_FIRSTHDR, CMSG_NXTHDR, CMSG_DATA,
    CMSG_SPACE, CMSG_LEN, SOL_SOCKET, SO_RXQ_OVFL, SOL_UDP, UDP_GRO, UDP_SEGMENT,
    wait_readable,
)

from dataplane._batch import _pack_endpoint  # the one parser of (ip, port)

# UDP GSO (Linux >= 4.18): one sendmsg carries up to GSO_MAX_SEGMENTS equal-sized
# datagrams to one destination; the kernel cuts them apart. It saves most of the per-datagram
# cost of the send path, which dominates for small datagrams.
cdef enum:
    ERRNO_SLOTS = UDP_ERRNO_SLOTS
    GSO_MAX_SEGMENTS = 64
    GSO_MAX_BYTES = 65000
    GRO_MSGS = 32           # messages per recvmmsg with GRO: each may hold a whole run
    GRO_BUF = 65536         # bytes per message buffer: the largest UDP payload fits

cdef uint8_t V4_MAPPED[12]
memset(V4_MAPPED, 0, 10)
V4_MAPPED[10] = 0xFF
V4_MAPPED[11] = 0xFF


cdef inline void sockaddr_to_endpoint(const sockaddr_in6* sa, uint8_t* addr16,
                                      uint16_t* port) noexcept nogil:
    cdef const sockaddr_in* s4
    if sa.sin6_family == AF_INET:
        s4 = <const sockaddr_in*>sa
        memcpy(addr16, V4_MAPPED, 12)
        memcpy(addr16 + 12, &s4.sin_addr.s_addr, 4)
        port[0] = ntohs(s4.sin_port)
    else:
        memcpy(addr16, sa.sin6_addr.s6_addr, 16)
        port[0] = ntohs(sa.sin6_port)


cdef int endpoint_to_sockaddr(int family, const uint8_t* addr16, uint16_t port,
                              sockaddr_in6* out) noexcept nogil:
    """Fill ``out`` for a socket of ``family``; returns the address length, 0 if impossible."""
    cdef sockaddr_in* s4
    memset(out, 0, sizeof(sockaddr_in6))
    if family == AF_INET:
        if memcmp12(addr16, V4_MAPPED) != 0:
            return 0  # an IPv6 destination on an IPv4 socket
        s4 = <sockaddr_in*>out
        s4.sin_family = AF_INET
        s4.sin_port = htons(port)
        memcpy(&s4.sin_addr.s_addr, addr16 + 12, 4)
        return sizeof(sockaddr_in)
    out.sin6_family = AF_INET6
    out.sin6_port = htons(port)
    memcpy(out.sin6_addr.s6_addr, addr16, 16)
    return sizeof(sockaddr_in6)


cdef inline bint rxq_ovfl_count(msghdr* hdr, uint32_t* count) noexcept nogil:
    """Store the socket drop count a received message carries; False if it carries none.

    The kernel attaches that control message only once the count is non-zero.
    """
    cdef cmsghdr* cm = CMSG_FIRSTHDR(hdr)
    while cm != NULL:
        if (cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_RXQ_OVFL
                and cm.cmsg_len >= CMSG_LEN(sizeof(uint32_t))):
            memcpy(count, CMSG_DATA(cm), sizeof(uint32_t))  # no alignment promise
            return True
        cm = CMSG_NXTHDR(hdr, cm)
    return False


cdef inline Py_ssize_t udp_gro_size(msghdr* hdr) noexcept nogil:
    """The datagram size of a coalesced message (UDP_GRO control message), or 0."""
    cdef cmsghdr* cm = CMSG_FIRSTHDR(hdr)
    cdef int size
    while cm != NULL:
        if (cm.cmsg_level == SOL_UDP and cm.cmsg_type == UDP_GRO
                and cm.cmsg_len >= CMSG_LEN(sizeof(int))):
            memcpy(&size, CMSG_DATA(cm), sizeof(int))
            return size if size > 0 else 0
        cm = CMSG_NXTHDR(hdr, cm)
    return 0


cdef inline int recvmmsg_now(int fd, mmsghdr* msgs, unsigned int n, int* err) noexcept nogil:
    # What is ready, without waiting (EINTR retried); 0 and ``err`` set on failure.
    cdef int got
    while True:
        got = recvmmsg(fd, msgs, n, MSG_DONTWAIT, NULL)
        if got < 0 and errno == EINTR:
            continue
        break
    if got < 0:
        err[0] = errno
        return 0
    return got


cdef inline int memcmp12(const uint8_t* a, const uint8_t* b) noexcept nogil:
    cdef int i
    for i in range(12):
        if a[i] != b[i]:
            return 1
    return 0


# Sends go to a handful of peer endpoints again and again: parsing the address text with
# ipaddress each time cost several microseconds per batch. Bounded by clearing.
_packed = {}
_PACKED_MAX = 4096


def pack_endpoint(endpoint):
    """(ip, port) -> (16-byte address, port) in the batch's endpoint form."""
    try:
        return _packed[endpoint]
    except (KeyError, TypeError):
        pass
    result = _pack_endpoint(endpoint)
    if type(endpoint) is tuple:
        if len(_packed) >= _PACKED_MAX:
            _packed.clear()
        _packed[endpoint] = result
    return result


cdef class BatchIO:
    """recvmmsg/sendmmsg for one UDP socket (which the caller owns and keeps open)."""

    def __cinit__(self, int fd, int family, unsigned int capacity=128, int wake_fd=-1):
        self.msgs = NULL
        self.iovs = NULL
        self.addrs = NULL
        self.rx_msgs = NULL
        self.rx_iovs = NULL
        self.rx_addrs = NULL
        self.rx_cmsg_buf = NULL
        self.slot_of = NULL
        self.segs_of = NULL
        self.cmsg_buf = NULL
        self.gso = True
        self.gro = False
        self.gro_buf = NULL
        self.gro_msgs = NULL
        self.gro_iovs = NULL
        self.gro_addrs = NULL
        self.gro_cmsg_buf = NULL
        if family != AF_INET and family != AF_INET6:
            raise ValueError(f"unsupported address family {family}")
        if capacity == 0 or capacity > 4096:
            raise ValueError(f"capacity must be 1..4096, got {capacity}")
        self.fd = fd
        self.family = family
        self.wake_fd = wake_fd
        self.capacity = capacity
        self.msgs = <mmsghdr*>calloc(capacity, sizeof(mmsghdr))
        self.iovs = <iovec*>calloc(capacity, sizeof(iovec))
        self.addrs = <sockaddr_in6*>calloc(capacity, sizeof(sockaddr_in6))
        self.rx_msgs = <mmsghdr*>calloc(capacity, sizeof(mmsghdr))
        self.rx_iovs = <iovec*>calloc(capacity, sizeof(iovec))
        self.rx_addrs = <sockaddr_in6*>calloc(capacity, sizeof(sockaddr_in6))
        self.slot_of = <Py_ssize_t*>calloc(capacity, sizeof(Py_ssize_t))
        self.segs_of = <unsigned int*>calloc(capacity, sizeof(unsigned int))
        self.cmsg_space = CMSG_SPACE(sizeof(uint16_t))
        self.cmsg_buf = <uint8_t*>calloc(capacity, self.cmsg_space)
        self.rx_cmsg_space = CMSG_SPACE(sizeof(uint32_t))
        self.rx_cmsg_buf = <uint8_t*>calloc(capacity, self.rx_cmsg_space)
        if (self.msgs == NULL or self.iovs == NULL or self.addrs == NULL
                or self.slot_of == NULL or self.segs_of == NULL or self.cmsg_buf == NULL
                or self.rx_msgs == NULL or self.rx_iovs == NULL or self.rx_addrs == NULL
                or self.rx_cmsg_buf == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self.msgs)
        free(self.iovs)
        free(self.addrs)
        free(self.rx_msgs)
        free(self.rx_iovs)
        free(self.rx_addrs)
        free(self.rx_cmsg_buf)
        free(self.slot_of)
        free(self.segs_of)
        free(self.cmsg_buf)
        free(self.gro_buf)
        free(self.gro_msgs)
        free(self.gro_iovs)
        free(self.gro_addrs)
        free(self.gro_cmsg_buf)

    def enable_gro(self):
        """Take coalesced runs from now on (the socket must have UDP_GRO on: else nothing
        arrives coalesced and this only costs ~2 MiB of buffers)."""
        if self.gro:
            return
        if self.rx_busy:
            raise RuntimeError("enable_gro while recv runs in another thread")
        self.gro_cmsg_space = CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t))
        self.gro_buf = <uint8_t*>calloc(GRO_MSGS, GRO_BUF)
        self.gro_msgs = <mmsghdr*>calloc(GRO_MSGS, sizeof(mmsghdr))
        self.gro_iovs = <iovec*>calloc(GRO_MSGS, sizeof(iovec))
        self.gro_addrs = <sockaddr_in6*>calloc(GRO_MSGS, sizeof(sockaddr_in6))
        self.gro_cmsg_buf = <uint8_t*>calloc(GRO_MSGS, self.gro_cmsg_space)
        if (self.gro_buf == NULL or self.gro_msgs == NULL or self.gro_iovs == NULL
                or self.gro_addrs == NULL or self.gro_cmsg_buf == NULL):
            raise MemoryError()
        self.gro_held = self.gro_next = 0
        self.gro_piece = 0
        self.gro = True

    def recv(self, PacketBatch batch not None, double timeout=-1.0):
        """Append the datagrams that are ready (waiting up to ``timeout`` s; < 0 = forever).

        Returns the number appended (0 on timeout or wake-up), or ``-errno`` on error.
        A datagram larger than the slot is kept truncated with status ST_TOO_BIG.
        """
        cdef int err = 0
        cdef int ms = -1 if timeout < 0 else <int>(timeout * 1000)
        cdef Py_ssize_t n
        # Test-and-set with the GIL held: cannot race with another Python thread.
        if self.rx_busy:
            raise RuntimeError("BatchIO.recv is already running in another thread")
        self.rx_busy = True
        try:
            # Touches this object's buffers and counters and the batch's slots from
            # batch.count on (the caller's), nothing else.
            with nogil:
                n = self.recv_c(batch, ms, &err)
        finally:
            self.rx_busy = False
        if n == 0 and err:
            return -err
        return n

    cdef Py_ssize_t recv_c(self, PacketBatch batch, int ms, int* err) noexcept nogil:
        err[0] = 0
        if batch.capacity - batch.count <= 0:
            return 0
        if self.gro:
            return self._recv_gro_c(batch, ms, err)
        return self._recv_plain_c(batch, ms, err)

    cdef void note_kernel_drops(self, msghdr* hdr) noexcept nogil:
        cdef uint32_t ovfl
        cdef int32_t delta
        if rxq_ovfl_count(hdr, &ovfl):
            # The kernel's counter is a wrapping uint32: add up the steps, so the total
            # survives a wrap; a step back (never expected) counts nothing.
            delta = <int32_t>(ovfl - self.rx_ovfl_last)
            if delta > 0:
                self.rx_kernel_dropped += <uint32_t>delta
                self.rx_ovfl_last = ovfl

    cdef Py_ssize_t _recv_gro_c(self, PacketBatch batch, int ms, int* err) noexcept nogil:
        cdef Py_ssize_t room = batch.capacity - batch.count, base = batch.count, k
        cdef Py_ssize_t limit = batch.slot_size - batch.headroom
        cdef Py_ssize_t placed = 0, size, pieces, off, plen, total
        cdef unsigned int j
        cdef int n = 0, rc = 1
        cdef const uint8_t* src
        cdef msghdr* hdr
        if self.gro_next >= self.gro_held:
            rc = wait_readable(self.fd, self.wake_fd, ms)
            if rc < 0:
                err[0] = -rc
            elif rc > 0:
                for j in range(GRO_MSGS):
                    self.gro_iovs[j].iov_base = self.gro_buf + <size_t>j * GRO_BUF
                    self.gro_iovs[j].iov_len = GRO_BUF
                    memset(&self.gro_msgs[j], 0, sizeof(mmsghdr))
                    hdr = &self.gro_msgs[j].msg_hdr
                    hdr.msg_iov = &self.gro_iovs[j]
                    hdr.msg_iovlen = 1
                    hdr.msg_name = &self.gro_addrs[j]
                    hdr.msg_namelen = sizeof(sockaddr_in6)
                    hdr.msg_control = self.gro_cmsg_buf + j * self.gro_cmsg_space
                    hdr.msg_controllen = self.gro_cmsg_space
                n = recvmmsg_now(self.fd, self.gro_msgs, GRO_MSGS, err)
                self.gro_held = <unsigned int>n
                self.gro_next = 0
                self.gro_piece = 0
                for j in range(<unsigned int>n):
                    self.note_kernel_drops(&self.gro_msgs[j].msg_hdr)
        while self.gro_next < self.gro_held and placed < room:
            j = self.gro_next
            hdr = &self.gro_msgs[j].msg_hdr
            total = self.gro_msgs[j].msg_len
            size = udp_gro_size(hdr)
            if size == 0 or size > total:
                size = total
            pieces = (total + size - 1) // size if size else 1
            src = self.gro_buf + <size_t>j * GRO_BUF
            while self.gro_piece < pieces and placed < room:
                off = self.gro_piece * size
                plen = total - off
                if plen > size:
                    plen = size
                k = base + placed
                batch.offsets[k] = <uint32_t>batch.headroom
                batch.peers[k] = -1
                batch.status[k] = ST_OK
                if plen > limit:
                    plen = limit
                    batch.status[k] = ST_TOO_BIG
                    self.rx_truncated += 1
                if plen:
                    memcpy(batch.slot_ptr(k) + batch.headroom, src + off, plen)
                batch.lengths[k] = <uint32_t>plen
                sockaddr_to_endpoint(&self.gro_addrs[j], &batch.ep_addr[k, 0],
                                     &batch.ep_port[k])
                self.rx_bytes += <unsigned long long>plen
                placed += 1
                self.gro_piece += 1
            if self.gro_piece >= pieces:
                if pieces > 1:
                    self.rx_coalesced += 1
                self.gro_next += 1
                self.gro_piece = 0
        batch.count = base + placed
        self.rx_packets += <unsigned long long>placed
        if err[0] == EAGAIN:
            err[0] = 0
        return placed

    cdef Py_ssize_t _recv_plain_c(self, PacketBatch batch, int ms, int* err) noexcept nogil:
        cdef unsigned int room = <unsigned int>min(batch.capacity - batch.count, self.capacity)
        cdef unsigned int j
        cdef Py_ssize_t base = batch.count, k
        cdef int n = 0, rc
        if room == 0:
            return 0
        for j in range(room):
            k = base + j
            self.rx_iovs[j].iov_base = batch.slot_ptr(k) + batch.headroom
            self.rx_iovs[j].iov_len = batch.slot_size - batch.headroom
            memset(&self.rx_msgs[j], 0, sizeof(mmsghdr))
            self.rx_msgs[j].msg_hdr.msg_iov = &self.rx_iovs[j]
            self.rx_msgs[j].msg_hdr.msg_iovlen = 1
            self.rx_msgs[j].msg_hdr.msg_name = &self.rx_addrs[j]
            self.rx_msgs[j].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
            # The kernel shrinks msg_controllen to what it wrote: reset on every call.
            self.rx_msgs[j].msg_hdr.msg_control = self.rx_cmsg_buf + j * self.rx_cmsg_space
            self.rx_msgs[j].msg_hdr.msg_controllen = self.rx_cmsg_space
        rc = wait_readable(self.fd, self.wake_fd, ms)
        if rc < 0:
            err[0] = -rc
        elif rc > 0:
            n = recvmmsg_now(self.fd, self.rx_msgs, room, err)
        for j in range(<unsigned int>n):
            k = base + j
            batch.offsets[k] = <uint32_t>batch.headroom
            batch.lengths[k] = self.rx_msgs[j].msg_len
            batch.peers[k] = -1
            batch.status[k] = ST_OK
            if self.rx_msgs[j].msg_hdr.msg_flags & MSG_TRUNC:
                batch.status[k] = ST_TOO_BIG
                batch.lengths[k] = <uint32_t>(batch.slot_size - batch.headroom)
                self.rx_truncated += 1
            sockaddr_to_endpoint(&self.rx_addrs[j], &batch.ep_addr[k, 0],
                                 &batch.ep_port[k])
            self.rx_bytes += self.rx_msgs[j].msg_len
            self.note_kernel_drops(&self.rx_msgs[j].msg_hdr)
        if err[0] == EAGAIN:
            err[0] = 0
        batch.count = base + n
        self.rx_packets += n
        return n

    def send(self, PacketBatch batch not None, endpoint=None):
        """Send every alive slot, to ``endpoint`` or else to each slot's own endpoint.

        Returns ``(sent, errors)`` where ``errors`` lists the errno of each datagram that
        could not be sent (the datagram is skipped, the rest still go out).
        """
        cdef const uint8_t[::1] dst_addr
        cdef uint16_t dst_port = 0
        cdef int fixed_len = 0
        cdef sockaddr_in6 fixed_sa
        cdef sockaddr_in6* sa = NULL
        cdef unsigned long long errs[ERRNO_SLOTS]
        cdef Py_ssize_t sent
        cdef int e
        if endpoint is not None:
            packed, dst_port = pack_endpoint(endpoint)
            dst_addr = packed
            fixed_len = endpoint_to_sockaddr(self.family, &dst_addr[0], dst_port, &fixed_sa)
            if fixed_len == 0:
                raise ValueError(f"cannot send to {endpoint!r} from an IPv4-only socket")
            sa = &fixed_sa
        if self.tx_busy:
            raise RuntimeError("BatchIO.send is already running in another thread")
        self.tx_busy = True
        for e in range(ERRNO_SLOTS):
            errs[e] = 0
        try:
            # Reads the caller's batch, writes this object's arrays and counters.
            with nogil:
                sent = self.send_c(batch, sa, fixed_len, -1, errs)
        finally:
            self.tx_busy = False
        errors = []
        for e in range(ERRNO_SLOTS):
            if errs[e]:
                errors.extend([e] * <Py_ssize_t>errs[e])
        return sent, errors

    cdef Py_ssize_t send_c(self, PacketBatch batch, sockaddr_in6* sa, int salen, int want,
                           unsigned long long* errs) noexcept nogil:
        cdef Py_ssize_t i = 0, sent = 0
        if sa != NULL and self.gso:
            sent = self._send_gso_c(batch, sa, salen, want, &i, errs)
        sent += self._send_plain_c(batch, i, sa, salen, want, errs)
        self.tx_packets += <unsigned long long>sent
        return sent

    cdef Py_ssize_t _send_plain_c(self, PacketBatch batch, Py_ssize_t i, sockaddr_in6* sa,
                                  int salen, int want, unsigned long long* errs) noexcept nogil:
        """One datagram per message from slot ``i`` on."""
        cdef Py_ssize_t count = batch.count, sent = 0
        cdef unsigned int m, j, jj
        cdef int rc, err, alen
        while i < count:
            m = 0
            err = 0
            rc = 0
            while i < count and m < self.capacity:
                if batch.status[i] != ST_OK or (want >= 0 and batch.peers[i] != want):
                    i += 1
                    continue
                self.iovs[m].iov_base = batch.pkt_ptr(i)
                self.iovs[m].iov_len = batch.lengths[i]
                memset(&self.msgs[m], 0, sizeof(mmsghdr))
                self.msgs[m].msg_hdr.msg_iov = &self.iovs[m]
                self.msgs[m].msg_hdr.msg_iovlen = 1
                if sa != NULL:
                    self.msgs[m].msg_hdr.msg_name = sa
                    self.msgs[m].msg_hdr.msg_namelen = salen
                else:
                    alen = endpoint_to_sockaddr(self.family, &batch.ep_addr[i, 0],
                                                batch.ep_port[i], &self.addrs[m])
                    self.msgs[m].msg_hdr.msg_name = &self.addrs[m]
                    self.msgs[m].msg_hdr.msg_namelen = alen
                self.slot_of[m] = i
                m += 1
                i += 1
            j = 0
            while j < m:
                rc = sendmmsg(self.fd, &self.msgs[j], m - j, 0)
                if rc < 0:
                    if errno == EINTR:
                        continue
                    break
                for jj in range(j, j + <unsigned int>rc):
                    self.tx_bytes += self.iovs[jj].iov_len
                j += rc
                sent += rc
            if rc < 0:
                # The first unsent message failed; note it and carry on after it.
                err = errno
                errs[err if 0 <= err < ERRNO_SLOTS else 0] += 1
                self.tx_failed += 1
                i = self.slot_of[j] + 1
        return sent

    cdef Py_ssize_t _send_gso_c(self, PacketBatch batch, sockaddr_in6* sa, int salen,
                                int want, Py_ssize_t* next_slot,
                                unsigned long long* errs) noexcept nogil:
        """Send runs of equal-sized alive slots as GSO messages to one destination.

        Returns the datagrams sent; ``next_slot`` = the first slot not handled. If the
        kernel refuses GSO, it is switched off for this socket and the caller sends the rest
        one datagram a message.
        """
        cdef Py_ssize_t i = 0, count = batch.count
        cdef unsigned int m, v, j, k, nseg
        cdef Py_ssize_t seg, total, n
        cdef int rc = 0, err = 0, sent = 0
        cdef cmsghdr* cm
        cdef mmsghdr* msg
        while i < count:
            m = 0
            v = 0
            err = 0
            rc = 0
            while i < count and m < self.capacity and v < self.capacity:
                if batch.status[i] != ST_OK or (want >= 0 and batch.peers[i] != want):
                    i += 1
                    continue
                msg = &self.msgs[m]
                memset(msg, 0, sizeof(mmsghdr))
                msg.msg_hdr.msg_name = sa
                msg.msg_hdr.msg_namelen = salen
                msg.msg_hdr.msg_iov = &self.iovs[v]
                self.slot_of[m] = i
                seg = batch.lengths[i]
                nseg = 0
                total = 0
                while i < count and v < self.capacity and nseg < GSO_MAX_SEGMENTS:
                    if batch.status[i] != ST_OK or (want >= 0 and batch.peers[i] != want):
                        i += 1
                        continue
                    n = batch.lengths[i]
                    # An empty datagram cannot be a GSO segment: it would vanish.
                    if n > seg or total + n > GSO_MAX_BYTES or (nseg and (seg == 0 or n == 0)):
                        break
                    self.iovs[v].iov_base = batch.pkt_ptr(i)
                    self.iovs[v].iov_len = n
                    v += 1
                    nseg += 1
                    total += n
                    i += 1
                    if n < seg:
                        break  # only the last segment of a message may be shorter
                msg.msg_hdr.msg_iovlen = nseg
                if nseg > 1:
                    msg.msg_hdr.msg_control = self.cmsg_buf + m * self.cmsg_space
                    msg.msg_hdr.msg_controllen = self.cmsg_space
                    cm = CMSG_FIRSTHDR(&msg.msg_hdr)
                    cm.cmsg_level = SOL_UDP
                    cm.cmsg_type = UDP_SEGMENT
                    cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                    (<uint16_t*>CMSG_DATA(cm))[0] = <uint16_t>seg
                self.segs_of[m] = nseg
                m += 1
            j = 0
            while j < m:
                rc = sendmmsg(self.fd, &self.msgs[j], m - j, 0)
                if rc < 0:
                    if errno == EINTR:
                        continue
                    break
                for k in range(j, j + <unsigned int>rc):
                    sent += self.segs_of[k]
                    for nseg in range(<unsigned int>self.msgs[k].msg_hdr.msg_iovlen):
                        self.tx_bytes += self.msgs[k].msg_hdr.msg_iov[nseg].iov_len
                j += rc
            if rc < 0:
                err = errno
            if err:
                if self.segs_of[j] > 1 and (err == EIO or err == EINVAL or err == EOPNOTSUPP
                                            or err == ENOPROTOOPT):
                    self.gso = False  # no GSO here: let the plain path send from message j on
                    next_slot[0] = self.slot_of[j]
                    return sent
                errs[err if 0 <= err < ERRNO_SLOTS else 0] += self.segs_of[j]
                self.tx_failed += self.segs_of[j]
                # Resume after the failed message's slots.
                i = self.slot_of[j]
                nseg = 0
                while i < count and nseg < self.segs_of[j]:
                    if batch.status[i] == ST_OK and (want < 0 or batch.peers[i] == want):
                        nseg += 1
                    i += 1
        next_slot[0] = i
        return sent
