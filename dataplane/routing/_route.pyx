# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Per-packet kernels of the routers and the source filter, over a PacketBatch.

Theory of operation: routing tables are :class:`LpmTable` s whose int32 values encode a
*route action* in their top bits (``kind << ACTION_SHIFT | id``): WireGuard peer,
loopback to an overlay transport, overlay transport (inbound), or explicit drop. A
kernel runs the table's interleaved batch lookup over the alive slots, then decodes each
result into per-slot state (``batch.peers``, an int32 output array, ``batch.status``)
in the same ``nogil`` pass. The Python wrappers in ``overlay.py``, ``underlay.py`` and
``filter/source.py`` only validate arguments and pick the current table.

The underlay table is a dense per-peer array (peer ids are small and allocated
sequentially): transport id, endpoint address (IPv6 or v4-mapped) and port.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from dataplane._batch cimport (PacketBatch, ST_OK, ST_NO_ROUTE, ST_ROUTE_DROP,
                               ST_SOURCE_FILTER)
from dataplane.routing._lpm cimport LpmTable, batch_lookup


cdef enum:
    _SHIFT = 28
    _ID_MASK = (1 << 28) - 1
    _KIND_PEER = 0          # outbound: WireGuard peer; inbound: overlay transport
    _KIND_LOOPBACK = 1      # outbound only: hand back to a local overlay transport
    _KIND_DROP = 2          # explicit drop (a hole in a larger prefix)

ACTION_SHIFT = _SHIFT
MAX_ID = _ID_MASK
KIND_PEER = _KIND_PEER
KIND_LOOPBACK = _KIND_LOOPBACK
KIND_DROP = _KIND_DROP


cdef int32_t *_scratch(Py_ssize_t n) except NULL:
    cdef int32_t *p = <int32_t *>malloc((n if n > 0 else 1) * sizeof(int32_t))
    if p == NULL:
        raise MemoryError()
    return p


def route_outbound(LpmTable table, PacketBatch batch, int32_t[::1] loopback):
    """Outbound routing of each alive slot by destination.

    WireGuard route: ``batch.peers[i]`` = peer, ``loopback[i]`` = -1. Loopback route:
    ``loopback[i]`` = overlay transport, ``batch.peers[i]`` = -1. Drop route: status
    ST_ROUTE_DROP; no route: ST_NO_ROUTE; malformed IP: ST_BAD_IP. Dead slots get
    ``loopback[i]`` = -1 and are otherwise untouched. Returns (to_peers, to_loopback).
    """
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t i, npeer = 0, nloop = 0
    cdef int32_t v, kind
    if loopback.shape[0] < n:
        raise ValueError(f"loopback has {loopback.shape[0]} entries, batch has {n} packets")
    if n == 0:
        return (0, 0)
    # Writes this batch's peers/status and loopback[]; reads the frozen table.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        batch_lookup(table, batch, False, &loopback[0])
        for i in range(n):
            if batch.status[i] != ST_OK:
                continue
            v = loopback[i]
            if v < 0:
                batch.status[i] = ST_NO_ROUTE
                continue
            kind = v >> _SHIFT
            if kind == _KIND_PEER:
                batch.peers[i] = v & _ID_MASK
                loopback[i] = -1
                npeer += 1
            elif kind == _KIND_LOOPBACK:
                batch.peers[i] = -1
                loopback[i] = v & _ID_MASK
                nloop += 1
            else:
                batch.status[i] = ST_ROUTE_DROP
                loopback[i] = -1
    return (npeer, nloop)


def route_inbound(LpmTable table, PacketBatch batch, int32_t[::1] out):
    """Inbound routing by destination: ``out[i]`` = overlay transport, else -1.

    Drop route: ST_ROUTE_DROP; no route: ST_NO_ROUTE; malformed IP: ST_BAD_IP.
    Returns the number of slots routed to a transport.
    """
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t i, routed = 0
    cdef int32_t v
    if out.shape[0] < n:
        raise ValueError(f"out has {out.shape[0]} entries, batch has {n} packets")
    if n == 0:
        return 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        batch_lookup(table, batch, False, &out[0])
        for i in range(n):
            if batch.status[i] != ST_OK:
                continue
            v = out[i]
            if v < 0:
                batch.status[i] = ST_NO_ROUTE
            elif (v >> _SHIFT) == _KIND_PEER:
                out[i] = v & _ID_MASK
                routed += 1
            else:
                batch.status[i] = ST_ROUTE_DROP
                out[i] = -1
    return routed


def check_sources(LpmTable table, PacketBatch batch):
    """Cryptokey routing's source check on each alive slot.

    The longest prefix containing the inner source address must belong to
    ``batch.peers[i]`` (the peer that decrypted it); otherwise ST_SOURCE_FILTER.
    Malformed IP: ST_BAD_IP. Returns the number of slots dropped by the filter.
    """
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t i, dropped = 0
    cdef int32_t *owner
    if n == 0:
        return 0
    owner = _scratch(n)
    # Reads the frozen table and this batch's packets and peers; writes its status.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        batch_lookup(table, batch, True, owner)
        for i in range(n):
            if batch.status[i] != ST_OK:
                continue
            if owner[i] < 0 or owner[i] != batch.peers[i]:
                batch.status[i] = ST_SOURCE_FILTER
                dropped += 1
    free(owner)
    return dropped


cdef class UnderlayTable:
    """peer id -> (underlay transport id, endpoint), a dense array indexed by peer id."""

    cdef int32_t[::1] transport      # -1: no route for this peer
    cdef uint8_t[:, ::1] addr        # 16-byte IPv6 / v4-mapped endpoint address
    cdef uint16_t[::1] port
    cdef readonly Py_ssize_t size

    def __init__(self, Py_ssize_t size=0):
        self._alloc(size)

    def _alloc(self, Py_ssize_t size):
        cdef Py_ssize_t i
        cap = size if size > 0 else 1
        self.transport = memoryview(bytearray(4 * cap)).cast("i")
        self.addr = memoryview(bytearray(16 * cap)).cast("B", (cap, 16))
        self.port = memoryview(bytearray(2 * cap)).cast("H")
        for i in range(cap):
            self.transport[i] = -1
        self.size = size

    def grow(self, Py_ssize_t size):
        """Make room for peer ids below size (keeps existing entries)."""
        if size <= self.size:
            return
        old_t, old_a, old_p, old_n = self.transport, self.addr, self.port, self.size
        self._alloc(size)
        if old_n:
            self.transport[:old_n] = old_t[:old_n]
            self.addr[:old_n, :] = old_a[:old_n, :]
            self.port[:old_n] = old_p[:old_n]

    def set(self, Py_ssize_t peer, int transport, const uint8_t[::1] addr16, int port):
        if not 0 <= peer <= _ID_MASK:
            raise ValueError(f"peer id {peer} out of range 0..{_ID_MASK}")
        if transport < 0:
            raise ValueError(f"underlay transport id must be >= 0, got {transport}")
        if addr16.shape[0] != 16:
            raise ValueError("endpoint address must be 16 bytes")
        if peer >= self.size:
            self.grow(max(peer + 1, 2 * self.size))
        self.transport[peer] = transport
        memcpy(&self.addr[peer, 0], &addr16[0], 16)
        self.port[peer] = <uint16_t>port

    def clear(self, Py_ssize_t peer):
        if 0 <= peer < self.size:
            self.transport[peer] = -1

    def get(self, Py_ssize_t peer):
        """(transport, 16-byte address, port) or None."""
        if not 0 <= peer < self.size or self.transport[peer] < 0:
            return None
        return (self.transport[peer], bytes(self.addr[peer]), self.port[peer])

    def peers(self):
        cdef Py_ssize_t i
        return [i for i in range(self.size) if self.transport[i] >= 0]

    def route(self, PacketBatch batch, int32_t[::1] out):
        """Per alive slot: endpoint of batch.peers[i] into the slot, out[i] = transport.

        Unknown peer: ST_NO_ROUTE, out[i] = -1. Returns the number of routed slots.
        """
        cdef Py_ssize_t n = batch.count
        cdef Py_ssize_t i, routed = 0
        cdef int32_t p
        if out.shape[0] < n:
            raise ValueError(f"out has {out.shape[0]} entries, batch has {n} packets")
        # Reads this table (mutated only under the core lock), writes the batch's
        # endpoint metadata/status and out[].
        with nogil(SHORT_SCAN_RELEASES_GIL):
            for i in range(n):
                out[i] = -1
                if batch.status[i] != ST_OK:
                    continue
                p = batch.peers[i]
                if p < 0 or p >= self.size or self.transport[p] < 0:
                    batch.status[i] = ST_NO_ROUTE
                    continue
                out[i] = self.transport[p]
                memcpy(&batch.ep_addr[i, 0], &self.addr[p, 0], 16)
                batch.ep_port[i] = self.port[p]
                routed += 1
        return routed

    def roam(self, PacketBatch batch, int transport):
        """Roaming: alive slots with a known peer move it to the slot's endpoint.

        Only call this for authenticated packets (decrypted data or a verified
        handshake), as the whitepaper requires. The last packet of a peer in the batch
        wins. Peers without an underlay route get one (``transport``). Returns the
        sorted list of peers whose route changed.
        """
        cdef Py_ssize_t n = batch.count
        cdef Py_ssize_t i, k
        cdef int32_t p
        cdef Py_ssize_t maxp = -1
        cdef int32_t *changed
        cdef uint8_t *seen
        if transport < 0:
            raise ValueError(f"underlay transport id must be >= 0, got {transport}")
        for i in range(n):
            if batch.status[i] == ST_OK and batch.peers[i] > maxp:
                maxp = batch.peers[i]
        if maxp < 0:
            return []
        if maxp > _ID_MASK:
            raise ValueError(f"peer id {maxp} out of range 0..{_ID_MASK}")
        if maxp >= self.size:
            self.grow(max(maxp + 1, 2 * self.size))
        changed = _scratch(n)
        seen = <uint8_t *>calloc(self.size, 1)
        if seen == NULL:
            free(changed)
            raise MemoryError()
        k = 0
        # Backwards, first sighting only: a peer's last packet in the batch decides, and
        # "changed" compares with the route before this call.
        with nogil(SHORT_SCAN_RELEASES_GIL):
            for i in range(n - 1, -1, -1):
                if batch.status[i] != ST_OK:
                    continue
                p = batch.peers[i]
                if p < 0 or seen[p]:
                    continue
                seen[p] = 1
                if (self.transport[p] != transport or self.port[p] != batch.ep_port[i]
                        or memcmp(&self.addr[p, 0], &batch.ep_addr[i, 0], 16) != 0):
                    self.transport[p] = transport
                    memcpy(&self.addr[p, 0], &batch.ep_addr[i, 0], 16)
                    self.port[p] = batch.ep_port[i]
                    changed[k] = p
                    k += 1
        free(seen)
        result = sorted([changed[i] for i in range(k)])
        free(changed)
        return result
