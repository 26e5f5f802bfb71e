# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Split a batch into per-destination batches (per peer, per overlay transport).

Theory of operation: routing writes one small integer key per slot (a peer id, a transport
id). ``group`` finds the distinct keys of the alive slots in one nogil pass and, when a
single key owns every slot, hands the batch back as is (the common case: one flow, one
peer). Otherwise it copies each alive packet, at the same offset so head- and tailroom
are kept, with its metadata, into a new batch per key: one memcpy per packet in a nogil
loop, no Python per packet.
"""

from libc.stdint cimport int32_t
from libc.string cimport memcpy

from dataplane._batch cimport PacketBatch, ST_OK


cdef const int32_t[::1] _keys(PacketBatch batch, keys) except *:
    cdef const int32_t[::1] k
    if keys is None:
        return batch.peers
    k = memoryview(keys).cast("B").cast("i")
    if k.shape[0] < batch.count:
        raise ValueError(f"{k.shape[0]} keys for {batch.count} packets")
    return k


cdef Py_ssize_t count_keys(PacketBatch batch, const int32_t[::1] k, int32_t[::1] found,
                           int32_t[::1] counts, Py_ssize_t* alive_out):
    """Distinct non-negative keys of the alive slots (first-seen order) and their counts."""
    cdef Py_ssize_t i, j, nd = 0, alive = 0, n = batch.count
    cdef int32_t key
    # Batches usually carry one or two keys, so a linear scan beats hashing.
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(n):
            if batch.status[i] != ST_OK or k[i] < 0:
                continue
            alive += 1
            key = k[i]
            for j in range(nd):
                if found[j] == key:
                    counts[j] += 1
                    break
            else:
                found[nd] = key
                counts[nd] = 1
                nd += 1
    alive_out[0] = alive
    return nd


def distinct(PacketBatch batch not None, keys=None):
    """The distinct non-negative keys (default: peer ids) of the alive slots, first seen first."""
    cdef Py_ssize_t n = batch.count
    if n == 0:
        return []
    cdef const int32_t[::1] k = _keys(batch, keys)
    cdef int32_t[::1] found = memoryview(bytearray(4 * n)).cast("i")
    cdef int32_t[::1] counts = memoryview(bytearray(4 * n)).cast("i")
    cdef Py_ssize_t alive = 0, j
    cdef Py_ssize_t nd = count_keys(batch, k, found, counts, &alive)
    return [found[j] for j in range(nd)]


def group(PacketBatch batch not None, keys=None):
    """Alive slots grouped by key: ``{key: PacketBatch}``, in first-seen key order.

    ``keys`` is an int32 buffer with one key per slot (default: the batch's peer ids).
    Slots whose key is negative are left out, as are slots that are not alive.
    """
    cdef Py_ssize_t n = batch.count
    if n == 0:
        return {}
    cdef const int32_t[::1] k = _keys(batch, keys)
    cdef int32_t[::1] found = memoryview(bytearray(4 * n)).cast("i")
    cdef int32_t[::1] counts = memoryview(bytearray(4 * n)).cast("i")
    cdef Py_ssize_t alive = 0, i, j
    cdef Py_ssize_t nd = count_keys(batch, k, found, counts, &alive)
    cdef int32_t key
    if nd == 1 and alive == n:
        return {found[0]: batch}
    out = {}
    cdef PacketBatch dst
    cdef Py_ssize_t m, slot = batch.slot_size
    for j in range(nd):
        dst = PacketBatch(counts[j], slot - batch.headroom - batch.tailroom, batch.headroom,
                          batch.tailroom, slot)
        key = found[j]
        m = 0
        # Reads `batch`, writes the fresh `dst`; both owned by this call.
        with nogil(SHORT_SCAN_RELEASES_GIL):
            for i in range(n):
                if batch.status[i] != ST_OK or k[i] != key:
                    continue
                memcpy(dst.slot_ptr(m) + batch.offsets[i], batch.pkt_ptr(i), batch.lengths[i])
                dst.offsets[m] = batch.offsets[i]
                dst.lengths[m] = batch.lengths[i]
                dst.peers[m] = batch.peers[i]
                dst.status[m] = ST_OK
                memcpy(&dst.ep_addr[m, 0], &batch.ep_addr[i, 0], 16)
                dst.ep_port[m] = batch.ep_port[i]
                m += 1
            dst.count = m
        out[key] = dst
    return out
