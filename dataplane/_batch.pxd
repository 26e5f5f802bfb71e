# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""C-level view of PacketBatch, for other Cython modules to cimport.

Slot i occupies ``slab[i * slot_size : (i + 1) * slot_size]``; its packet is the
``lengths[i]`` bytes starting ``offsets[i]`` bytes into the slot. ``headroom`` bytes
before the first packet byte and ``tailroom`` bytes after the last are reserved when a
packet is appended, so headers can be pushed/pulled and padding + tag appended in place.

GIL policy: per-packet loops are nogil code. Long ones (seal/open, syscalls) run in
``with nogil:``; short per-batch scans use ``with nogil(SHORT_SCAN_RELEASES_GIL):``, a
build-time constant (see setup.py), False by default because a GIL hand-off under
contention costs more than a scan of a few µs.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t


# Per-slot status. 0 means "alive"; every other value is the reason the slot was dropped.
# Keep in sync with dataplane/_batch.pyx (DropReason) and _batch.pyi.
cdef enum:
    ST_OK = 0
    ST_TOO_SHORT = 1          # shorter than the header/tag it must carry
    ST_BAD_TYPE = 2           # not a message type this stage handles
    ST_UNKNOWN_RECEIVER = 3   # no session for the receiver index
    ST_REPLAY = 4             # counter already seen or left of the window
    ST_BAD_TAG = 5            # AEAD authentication failed
    ST_COUNTER_LIMIT = 6      # counter at or past REJECT_AFTER_MESSAGES
    ST_NO_ROOM = 7            # not enough headroom/tailroom for the transform
    ST_EXPIRED = 8            # session too old
    ST_NO_ROUTE = 9
    ST_ROUTE_DROP = 10        # explicit drop route (a hole in a prefix)
    ST_SOURCE_FILTER = 11     # inner source not owned by the decrypting peer
    ST_PACKET_FILTER = 12     # rejected by the ACL
    ST_BAD_IP = 13            # malformed IP header
    ST_UNCLASSIFIED = 14      # datagram of no known protocol
    ST_QUEUE_FULL = 15
    ST_NO_SESSION = 16
    ST_KEEPALIVE = 17         # authenticated empty packet: consumed, not delivered
    ST_HANDSHAKE = 18         # handshake message: consumed by the control path
    ST_DISCO = 19
    ST_STUN = 20
    ST_TOO_BIG = 21
    ST_CRYPTO_ERROR = 22      # the AEAD library failed (not the packet's fault)
    ST_BAD_CHECKSUM = 23      # IP/UDP/ICMP checksum wrong
    ST_FRAGMENT = 24          # IP fragment (not reassembled)
    ST_CONSUMED = 25          # answered by a local responder (ICMP echo): not delivered
    ST_BAD_MAC = 26           # handshake message with an invalid mac1
    ST_UNDER_LOAD = 27        # handshake refused under load (answered with a cookie reply)
    ST_RATE_LIMITED = 28      # handshake flood / per-source token bucket
    ST_STALE = 29             # initiation with a timestamp not newer than the last one
    ST_MAX = 32               # size of per-reason counter arrays


# (address in the endpoint form of ``ep_addr``, port) -> the ``(ip, port)`` tuple the rest of
# the code uses: a dotted quad for IPv4 (v4-mapped here), compressed text for IPv6.
cdef object unpack_endpoint(const uint8_t* addr16, uint16_t port)


cdef class PacketBatch:
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t slot_size
    cdef readonly Py_ssize_t headroom
    cdef readonly Py_ssize_t tailroom
    cdef Py_ssize_t count
    cdef object _buf                 # the bytearray behind slab

    cdef uint8_t[::1] slab
    cdef uint32_t[::1] offsets
    cdef uint32_t[::1] lengths
    cdef int32_t[::1] peers          # peer id per slot, -1 when unknown
    cdef uint8_t[::1] status         # ST_* per slot
    # Underlay endpoint per slot: IPv6 address (IPv4 as ::ffff:a.b.c.d) and port.
    cdef uint8_t[:, ::1] ep_addr
    cdef uint16_t[::1] ep_port

    cdef inline uint8_t* slot_ptr(self, Py_ssize_t i) noexcept nogil:
        return &self.slab[i * self.slot_size]

    cdef inline uint8_t* pkt_ptr(self, Py_ssize_t i) noexcept nogil:
        return &self.slab[i * self.slot_size + self.offsets[i]]

    cdef inline Py_ssize_t first_bad_bounds(self) noexcept nogil:
        # Stages validate bounds once per batch, then trust offsets/lengths in their loops.
        cdef Py_ssize_t i
        for i in range(self.count):
            if <Py_ssize_t>self.offsets[i] + <Py_ssize_t>self.lengths[i] > self.slot_size:
                return i
        return -1

    cdef int _check_index(self, Py_ssize_t i) except -1
    cdef Py_ssize_t _norm(self, Py_ssize_t i) except -1
    cdef Py_ssize_t _append(self, object data) except -1
    cdef Py_ssize_t _append_raw(self, const uint8_t* src, Py_ssize_t n) except -1
