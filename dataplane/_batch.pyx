# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""PacketBatch: N fixed-size packet slots in one contiguous slab.

Theory of operation: every layer of the data plane passes batches, never single packets.
A batch owns one ``bytearray`` slab cut into ``capacity`` slots of ``slot_size`` bytes.
Packet *i* lives at ``offsets[i]`` inside its slot for ``lengths[i]`` bytes. Appending
puts a packet ``headroom`` bytes into its slot and guarantees ``tailroom`` bytes after it,
so the WireGuard header (16 B) is pushed in front and padding + tag (≤ 31 B) appended
behind without copying. Per-slot metadata (peer id, status, underlay endpoint) lives in
parallel typed arrays that Cython code reads and writes without the GIL.

Python-level methods validate their arguments and raise ``IndexError``/``ValueError``;
nothing reachable from Python writes outside the slab.
"""

import ipaddress
import operator
from enum import IntEnum

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.ref cimport Py_REFCNT
from libc.string cimport memcpy, memset

cimport cython


cdef extern from "Python.h":
    ctypedef struct PyByteArrayObject:
        Py_ssize_t ob_exports


class DropReason(IntEnum):
    """Per-slot status; OK is alive, every other value names why the slot was dropped."""

    OK = ST_OK
    TOO_SHORT = ST_TOO_SHORT
    BAD_TYPE = ST_BAD_TYPE
    UNKNOWN_RECEIVER = ST_UNKNOWN_RECEIVER
    REPLAY = ST_REPLAY
    BAD_TAG = ST_BAD_TAG
    COUNTER_LIMIT = ST_COUNTER_LIMIT
    NO_ROOM = ST_NO_ROOM
    EXPIRED = ST_EXPIRED
    NO_ROUTE = ST_NO_ROUTE
    ROUTE_DROP = ST_ROUTE_DROP
    SOURCE_FILTER = ST_SOURCE_FILTER
    PACKET_FILTER = ST_PACKET_FILTER
    BAD_IP = ST_BAD_IP
    UNCLASSIFIED = ST_UNCLASSIFIED
    QUEUE_FULL = ST_QUEUE_FULL
    NO_SESSION = ST_NO_SESSION
    KEEPALIVE = ST_KEEPALIVE
    HANDSHAKE = ST_HANDSHAKE
    DISCO = ST_DISCO
    STUN = ST_STUN
    TOO_BIG = ST_TOO_BIG
    CRYPTO_ERROR = ST_CRYPTO_ERROR
    BAD_CHECKSUM = ST_BAD_CHECKSUM
    FRAGMENT = ST_FRAGMENT
    CONSUMED = ST_CONSUMED
    BAD_MAC = ST_BAD_MAC
    UNDER_LOAD = ST_UNDER_LOAD
    RATE_LIMITED = ST_RATE_LIMITED
    STALE = ST_STALE


_VALID_STATUS = frozenset(int(r) for r in DropReason)
STATUS_SLOTS = ST_MAX
DEFAULT_CAPACITY = 128
DEFAULT_MTU = 1420
DEFAULT_HEADROOM = 16
DEFAULT_TAILROOM = 32

cdef bytes _V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


cdef object unpack_endpoint(const uint8_t* a, uint16_t port):
    # IPv4 without ipaddress: it is the common underlay, and this runs per received batch.
    if (a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9]) == 0 \
            and a[10] == 0xFF and a[11] == 0xFF:
        return (f"{a[12]}.{a[13]}.{a[14]}.{a[15]}", port)
    return (str(ipaddress.IPv6Address(a[:16])), port)


@cython.auto_pickle(False)
cdef class PacketBatch:
    """A batch of up to ``capacity`` packets in one slab.

    ``mtu`` is the largest packet an overlay transport appends; the slot is sized
    ``headroom + mtu + tailroom`` rounded up to 64 bytes unless ``slot_size`` is given.
    ``append`` accepts anything that fits between the headroom and the end of the slot,
    which also admits sealed datagrams (``mtu + 32``) read from an underlay.
    """

    # Everything is allocated in __cinit__ so that no instance, however created (__new__,
    # a subclass skipping __init__), ever has unallocated arrays behind its nogil accessors.
    def __cinit__(self, Py_ssize_t capacity=DEFAULT_CAPACITY, Py_ssize_t mtu=DEFAULT_MTU,
                  Py_ssize_t headroom=DEFAULT_HEADROOM, Py_ssize_t tailroom=DEFAULT_TAILROOM,
                  slot_size=None):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if mtu <= 0 or headroom < 0 or tailroom < 0:
            raise ValueError(
                f"mtu must be positive and headroom/tailroom non-negative "
                f"(mtu={mtu}, headroom={headroom}, tailroom={tailroom})")
        cdef Py_ssize_t need = headroom + mtu + tailroom
        cdef Py_ssize_t size
        if slot_size is None:
            size = (need + 63) & ~63
        else:
            size = slot_size
            if size < need:
                raise ValueError(
                    f"slot_size {size} is smaller than headroom + mtu + tailroom = {need}")
        if size > 0xFFFFFFFF or capacity > (1 << 40) // size:
            raise ValueError(f"batch too large: {capacity} slots of {size} bytes")
        self.capacity = capacity
        self.slot_size = size
        self.headroom = headroom
        self.tailroom = tailroom
        self.count = 0
        self._buf = bytearray(capacity * size)
        self.slab = self._buf
        # All per-slot metadata in one allocation (small batches are made per handshake);
        # 4-byte arrays first, so every array starts aligned to its element size.
        cdef Py_ssize_t c = capacity
        meta = memoryview(bytearray(31 * c))
        self.offsets = meta[0:4 * c].cast("I")
        self.lengths = meta[4 * c:8 * c].cast("I")
        self.peers = meta[8 * c:12 * c].cast("i")
        self.ep_port = meta[12 * c:14 * c].cast("H")
        self.status = meta[14 * c:15 * c]
        self.ep_addr = meta[15 * c:31 * c].cast("B", (c, 16))
        self.peers[:] = -1

    @classmethod
    def from_packets(cls, packets, **kwargs):
        """Build a batch holding a copy of each bytes-like object in ``packets``.

        ``capacity`` defaults to the number of packets (at least 1).
        """
        items = list(packets)
        if "capacity" not in kwargs:
            kwargs["capacity"] = max(1, len(items))
        cdef PacketBatch batch = cls(**kwargs)
        for p in items:
            batch._append(p)
        return batch

    @property
    def max_packet(self):
        """Largest packet ``append`` accepts: from the headroom to the end of the slot."""
        return self.slot_size - self.headroom

    @property
    def room(self):
        """Slots still free."""
        return self.capacity - self.count

    def __len__(self):
        return self.count

    cdef int _check_index(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.count:
            raise IndexError(f"packet index {i} out of range for a batch of {self.count}")
        return 0

    cdef Py_ssize_t _norm(self, Py_ssize_t i) except -1:
        if i < 0:
            i += self.count
        self._check_index(i)
        return i

    def append(self, data):
        """Copy ``data`` (any bytes-like object) into the next free slot; returns its index."""
        return self._append(data)

    cdef Py_ssize_t _append(self, object data) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t i
        # bytes is what tests and transports built in Python hand us; skip the buffer
        # protocol for it (most of the cost of a small append).
        if PyBytes_CheckExact(data):
            return self._append_raw(<const uint8_t*>PyBytes_AS_STRING(data),
                                    PyBytes_GET_SIZE(data))
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError as e:  # e.g. a strided memoryview: same error as a non-buffer
            raise TypeError(f"packet must be a contiguous bytes-like object: {e}") from None
        try:
            i = self._append_raw(<const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return i

    cdef Py_ssize_t _append_raw(self, const uint8_t* src, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = self.count
        if i >= self.capacity:
            raise ValueError(f"batch is full ({self.capacity} packets)")
        if n > self.slot_size - self.headroom:
            raise ValueError(
                f"packet of {n} bytes does not fit a slot "
                f"(max {self.slot_size - self.headroom} after {self.headroom} B headroom)")
        if n:
            memcpy(&self.slab[i * self.slot_size + self.headroom], src, n)
        self.offsets[i] = self.headroom
        self.lengths[i] = n
        self.peers[i] = -1
        self.status[i] = ST_OK
        memset(&self.ep_addr[i, 0], 0, 16)
        self.ep_port[i] = 0
        self.count = i + 1
        return i

    def extend(self, packets):
        """``append`` each bytes-like object of ``packets``."""
        for p in packets:
            self._append(p)

    def clear(self):
        """Forget all packets; the slab is kept for reuse."""
        self.count = 0

    def recycle(self):
        """``clear()`` and return True if nothing but the caller can still see this batch:
        no other reference to it and no view of its slab (``batch[i]``, ``slot(i)``) alive.
        A transport that reads batch after batch reuses the slab then instead of allocating
        and zeroing a new one (188 KB for 128 slots) per read. False leaves it untouched.

        The caller's own reference, and the one this call holds, are the two expected."""
        # ob_exports counts buffer views of the bytearray; our own typed memoryview
        # ``slab`` is one of them.
        if Py_REFCNT(self) > 2 or (<PyByteArrayObject*>self._buf).ob_exports != 1:
            return False
        self.count = 0
        return True

    def __getitem__(self, Py_ssize_t i):
        """Zero-copy, writable ``memoryview`` of packet ``i``."""
        i = self._norm(i)
        if <Py_ssize_t>self.offsets[i] + <Py_ssize_t>self.lengths[i] > self.slot_size:
            raise ValueError(f"packet {i} bounds run past its slot (a stage corrupted them)")
        cdef Py_ssize_t start = i * self.slot_size + self.offsets[i]
        return memoryview(self._buf)[start:start + self.lengths[i]]

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            yield self[i]

    def packets(self, alive_only=False):
        """Copies of the packets as ``bytes`` (only the OK ones if ``alive_only``)."""
        cdef Py_ssize_t i
        cdef Py_ssize_t bad = self.first_bad_bounds()
        if bad >= 0:
            self[bad]  # raises the usual error for corrupted bounds
        return [PyBytes_FromStringAndSize(<const char*>self.pkt_ptr(i), self.lengths[i])
                for i in range(self.count)
                if not alive_only or self.status[i] == ST_OK]

    def slot(self, Py_ssize_t i):
        """Zero-copy view of the whole slot ``i`` (headroom and tailroom included)."""
        i = self._norm(i)
        return memoryview(self._buf)[i * self.slot_size:(i + 1) * self.slot_size]

    def offset(self, Py_ssize_t i):
        i = self._norm(i)
        return self.offsets[i]

    def set_bounds(self, Py_ssize_t i, Py_ssize_t offset, Py_ssize_t length):
        """Move packet ``i`` to ``[offset, offset + length)`` within its slot."""
        i = self._norm(i)
        if (offset < 0 or length < 0 or offset > self.slot_size
                or length > self.slot_size - offset):
            raise ValueError(
                f"bounds [{offset}, {offset + length}) outside a slot of {self.slot_size}")
        self.offsets[i] = offset
        self.lengths[i] = length

    def set_packet(self, Py_ssize_t i, data):
        """Replace packet ``i`` with a copy of ``data`` (placed after the headroom)."""
        i = self._norm(i)
        cdef const uint8_t[::1] src = memoryview(data).cast("B")
        cdef Py_ssize_t n = src.shape[0]
        if n > self.slot_size - self.headroom:
            raise ValueError(f"packet of {n} bytes does not fit a slot")
        if n:
            memcpy(&self.slab[i * self.slot_size + self.headroom], &src[0], n)
        self.offsets[i] = self.headroom
        self.lengths[i] = n

    def peer(self, Py_ssize_t i):
        i = self._norm(i)
        return self.peers[i]

    def set_peer(self, Py_ssize_t i, int peer):
        i = self._norm(i)
        self.peers[i] = peer

    def status_of(self, Py_ssize_t i):
        """The slot's status as a ``DropReason`` (a plain int for an unnamed value)."""
        i = self._norm(i)
        try:
            return DropReason(self.status[i])
        except ValueError:
            return self.status[i]

    def set_status(self, Py_ssize_t i, int status):
        i = self._norm(i)
        if status not in _VALID_STATUS:
            raise ValueError(f"status {status} out of range: not a DropReason value")
        self.status[i] = status

    def fill_peer(self, int peer):
        """Set the peer id of every slot."""
        self.peers[:self.count] = peer

    def fill_endpoint(self, endpoint):
        """Set the underlay endpoint ``(ip, port)`` of every slot."""
        cdef Py_ssize_t i
        packed, port = _pack_endpoint(endpoint)
        cdef const uint8_t[::1] src = packed
        for i in range(self.count):
            memcpy(&self.ep_addr[i, 0], &src[0], 16)
            self.ep_port[i] = port

    def endpoint(self, Py_ssize_t i):
        """Underlay endpoint ``(ip, port)`` of slot ``i``; IPv4 comes back as dotted quad."""
        i = self._norm(i)
        return unpack_endpoint(&self.ep_addr[i, 0], self.ep_port[i])

    def set_endpoint(self, Py_ssize_t i, endpoint):
        i = self._norm(i)
        packed, port = _pack_endpoint(endpoint)
        cdef const uint8_t[::1] src = packed
        memcpy(&self.ep_addr[i, 0], &src[0], 16)
        self.ep_port[i] = port

    def status_counts(self):
        """Number of slots per status value, as a list indexed by ``DropReason``.

        Raises ``ValueError`` if some slot holds a status of ``STATUS_SLOTS`` or more (only
        possible by writing the ``statuses`` view directly).
        """
        cdef Py_ssize_t counts[256]
        cdef Py_ssize_t i
        memset(counts, 0, sizeof(counts))
        for i in range(self.count):
            counts[self.status[i]] += 1
        for i in range(ST_MAX, 256):
            if counts[i]:
                raise ValueError(f"a slot holds status {i}, outside 0..{ST_MAX - 1}")
        return [counts[i] for i in range(ST_MAX)]

    def alive(self):
        """Indexes of the slots whose status is OK."""
        cdef Py_ssize_t i
        return [i for i in range(self.count) if self.status[i] == ST_OK]

    @property
    def statuses(self):
        """Writable ``memoryview`` (format ``B``) of the status of each packet."""
        return memoryview(self.status)[:self.count]

    @property
    def peer_ids(self):
        """Writable ``memoryview`` (format ``i``) of the peer id of each packet."""
        return memoryview(self.peers)[:self.count]

    @property
    def length_array(self):
        """Read-only ``memoryview`` (format ``I``) of the packet lengths (use set_bounds)."""
        return memoryview(self.lengths)[:self.count].toreadonly()

    def __repr__(self):
        return (f"<PacketBatch {self.count}/{self.capacity} slots of {self.slot_size} B, "
                f"headroom {self.headroom}, tailroom {self.tailroom}>")


def _pack_endpoint(endpoint):
    try:
        host, port = endpoint
        if isinstance(port, bool) or not isinstance(host, str):
            raise TypeError("host must be text and port an int")
        port = operator.index(port)
        addr = ipaddress.ip_address(host)
    except (TypeError, ValueError) as e:
        raise ValueError(f"endpoint must be (ip, port), got {endpoint!r}") from e
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range in endpoint {endpoint!r}")
    if addr.version == 4:
        return _V4_PREFIX + addr.packed, port
    return addr.packed, port
