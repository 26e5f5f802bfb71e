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

Each packet lands ``headroom`` bytes into its slot, so the core can seal it in place. The
read asks for up to one byte more than the batch's packet limit (slot minus headroom and
tailroom): a packet that fills that extra byte is larger than the interface MTU allows and
is kept (truncated) with status ST_TOO_BIG rather than silently cut. Errors never raise:
``read`` returns ``-errno``, ``write`` counts per errno (EINVAL for a packet the kernel
refuses, EIO/EBADFD once the interface is gone), since they are events of the device and
not programming errors.
"""

from libc.errno cimport errno, EINTR, EAGAIN
from libc.stdint cimport uint8_t, uint32_t
from posix.unistd cimport read, write

from dataplane._batch cimport PacketBatch, ST_OK, ST_TOO_BIG, ST_TOO_SHORT
from dataplane.transport._sys cimport poll, pollfd, POLLIN, POLLERR, POLLHUP

cdef enum:
    ERRNO_SLOTS = 256  # errno values are small positive integers on Linux (< 134)


cdef class TunIO:
    """read/write of whole batches on one TUN fd (which the caller owns and keeps open)."""

    cdef int fd
    cdef int wake_fd
    cdef readonly unsigned long long rx_packets, rx_bytes, rx_too_big
    cdef readonly unsigned long long tx_packets, tx_bytes, tx_failed

    def __cinit__(self, int fd, int wake_fd=-1):
        if fd < 0:
            raise ValueError(f"bad file descriptor {fd}")
        self.fd = fd
        self.wake_fd = wake_fd

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
        for e in range(ERRNO_SLOTS):
            errs[e] = 0
        # Reads the batch (owned by the caller for the duration of the call) and writes
        # only local counters.
        with nogil:
            for i in range(count):
                if batch.status[i] != ST_OK:
                    continue
                while True:
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
