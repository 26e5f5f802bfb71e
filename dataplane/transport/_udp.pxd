# cython: language_level=3
"""C-level view of BatchIO, for the established-session path to receive and send without
the GIL and without a trip through Python."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from posix.uio cimport iovec

from dataplane._batch cimport PacketBatch
from dataplane.transport._sys cimport mmsghdr, msghdr, sockaddr_in6

cdef enum:
    UDP_ERRNO_SLOTS = 256     # size of the per-errno array send_c fills


# The sockaddr for (address in the batch's endpoint form, port) on a socket of ``family``:
# its length, 0 when impossible (an IPv6 destination on an IPv4 socket).
cdef int endpoint_to_sockaddr(int family, const uint8_t* addr16, uint16_t port,
                              sockaddr_in6* out) noexcept nogil


cdef class BatchIO:

    cdef int fd
    cdef int family
    cdef int wake_fd
    cdef unsigned int capacity
    # The receiver and the sender each have their own arrays: one thread may receive while
    # another sends. Two concurrent receivers (or senders) are refused.
    cdef mmsghdr* rx_msgs
    cdef iovec* rx_iovs
    cdef sockaddr_in6* rx_addrs
    cdef uint8_t* rx_cmsg_buf        # receive: room for one SO_RXQ_OVFL control message each
    cdef size_t rx_cmsg_space
    cdef uint32_t rx_ovfl_last       # newest raw (wrapping) kernel drop count seen
    cdef bint rx_busy, tx_busy
    cdef mmsghdr* msgs
    cdef iovec* iovs
    cdef sockaddr_in6* addrs
    cdef Py_ssize_t* slot_of         # send: first batch slot of each message
    cdef unsigned int* segs_of       # send: datagrams in each message
    cdef uint8_t* cmsg_buf           # send: one UDP_SEGMENT control message per message
    cdef size_t cmsg_space
    cdef public bint gso             # use UDP GSO for single-destination sends
    cdef readonly bint gro           # receive coalesced runs (enable_gro)
    cdef uint8_t* gro_buf            # GRO_MSGS buffers of GRO_BUF bytes
    cdef mmsghdr* gro_msgs
    cdef iovec* gro_iovs
    cdef sockaddr_in6* gro_addrs
    cdef uint8_t* gro_cmsg_buf       # room for UDP_GRO and SO_RXQ_OVFL per message
    cdef size_t gro_cmsg_space
    cdef unsigned int gro_held       # messages of the last recvmmsg ...
    cdef unsigned int gro_next       # ... the next one to cut into slots ...
    cdef Py_ssize_t gro_piece        # ... and its next datagram
    cdef readonly unsigned long long rx_coalesced  # messages that carried > 1 datagram
    cdef readonly unsigned long long rx_packets, rx_bytes, rx_truncated
    # Datagrams the kernel dropped at this socket (receive buffer full), as reported by
    # SO_RXQ_OVFL; stays 0 unless the socket has the option on.
    cdef readonly unsigned long long rx_kernel_dropped
    cdef readonly unsigned long long tx_packets, tx_bytes, tx_failed

    # Wait up to ``ms`` (< 0: forever) and append the datagrams that are ready; returns how
    # many, ``err`` = the errno that ended it (0 for none; EAGAIN is not an error).
    cdef Py_ssize_t recv_c(self, PacketBatch batch, int ms, int* err) noexcept nogil
    cdef Py_ssize_t _recv_plain_c(self, PacketBatch batch, int ms, int* err) noexcept nogil
    cdef Py_ssize_t _recv_gro_c(self, PacketBatch batch, int ms, int* err) noexcept nogil
    cdef void note_kernel_drops(self, msghdr* hdr) noexcept nogil
    # Send the alive slots (of peer ``want`` only, if >= 0) to ``sa``, or, if ``sa`` is
    # NULL, each to its slot's endpoint. Returns how many went; refusals are counted per
    # errno in ``errs`` (UDP_ERRNO_SLOTS entries, added to) and in tx_failed.
    cdef Py_ssize_t send_c(self, PacketBatch batch, sockaddr_in6* sa, int salen, int want,
                           unsigned long long* errs) noexcept nogil
    cdef Py_ssize_t _send_gso_c(self, PacketBatch batch, sockaddr_in6* sa, int salen,
                                int want, Py_ssize_t* next_slot,
                                unsigned long long* errs) noexcept nogil
    cdef Py_ssize_t _send_plain_c(self, PacketBatch batch, Py_ssize_t i, sockaddr_in6* sa,
                                  int salen, int want, unsigned long long* errs) noexcept nogil
