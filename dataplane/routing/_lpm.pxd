# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""C-level view of the longest-prefix-match table, for other Cython modules to cimport.

Addresses are handled as 128-bit keys split in two host-order words ``(hi, lo)``, left
aligned: an IPv6 address is ``hi = bytes 0..7, lo = bytes 8..15``; an IPv4 address
``a`` is ``hi = a << 32, lo = 0``. IPv4 and IPv6 live in separate tries.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t

from dataplane._batch cimport PacketBatch


# A child slot: either a whole prefix inlined where it is alone (a leaf: path
# compression, no separate allocation, so a lookup ending in a leaf costs no extra
# memory access) or a pointer to the next node (kept in ``hi``).
ctypedef struct LpmKid:
    uint64_t hi
    uint64_t lo
    int32_t value
    uint8_t plen
    uint8_t is_node

# A stride-8 trie node (see the module docstring of _lpm.pyx). Prefixes whose length
# ends inside this node's octet (relative length 0..7) live in ``vals``, addressed by
# the ART base index (1..255) through the ``pfx`` bitset; longer prefixes hang below
# the octet's child slot, addressed through the ``kid`` bitset. Both arrays are dense
# and indexed by popcount rank, so a node costs memory only for what it holds.
ctypedef struct LpmNode:
    uint64_t pfx[4]
    uint64_t kid[4]
    int32_t *vals
    LpmKid *kids
    uint16_t npfx
    uint16_t nkid
    uint16_t cap_pfx
    uint16_t cap_kid


cdef enum:
    LPM_NONE = -1          # "no route" as returned by the C lookup functions


cdef class LpmTable:
    cdef LpmNode *root4
    cdef LpmNode *root6
    cdef Py_ssize_t n4
    cdef Py_ssize_t n6
    cdef Py_ssize_t nbytes        # bytes currently malloc'd for nodes, arrays and leaves
    cdef readonly bint frozen

    cdef int32_t lookup4(self, uint64_t hi) noexcept nogil
    cdef int32_t lookup6(self, uint64_t hi, uint64_t lo) noexcept nogil
    cdef int32_t lookup_packet(self, const uint8_t *pkt, Py_ssize_t n, bint source,
                               int *bad) noexcept nogil
    cdef int _check_mutable(self) except -1


cdef void batch_lookup(LpmTable t, PacketBatch batch, bint source,
                       int32_t *out) noexcept nogil

cdef int read_ip_addr(const uint8_t *pkt, Py_ssize_t n, bint source,
                      uint64_t *hi, uint64_t *lo) noexcept nogil
