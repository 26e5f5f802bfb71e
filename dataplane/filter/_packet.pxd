# cython: language_level=3
"""C-level declarations of the compiled packet filter (see _packet.pyx)."""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


# Addresses are 128-bit keys (hi, lo); an IPv4 address a.b.c.d is (0, a.b.c.d) in its own
# family table, so both families share one lookup routine.

ctypedef struct DstEntry:
    uint32_t rule                 # compiled rule id
    uint16_t first_port           # inclusive port range of the DstPorts entry
    uint16_t last_port

ctypedef struct FamilyTable:
    # Source side: sorted elementary-segment starts; segment i covers
    # [start[i], start[i + 1]) and maps to bitset src_set[i] of the bitset pool.
    Py_ssize_t nsrc
    uint64_t* src_hi
    uint64_t* src_lo
    uint32_t* src_set
    # Destination side: segment i maps to entries[dst_off[i] : dst_off[i] + dst_len[i]]
    # (sorted by rule id) and to bitset dst_set[i] of the rules owning those entries.
    Py_ssize_t ndst
    uint64_t* dst_hi
    uint64_t* dst_lo
    uint32_t* dst_off
    uint32_t* dst_len
    uint32_t* dst_set

ctypedef struct RuleTables:
    Py_ssize_t nrules
    Py_ssize_t nwords             # 64-bit words per rule bitset
    Py_ssize_t nsets
    uint64_t* proto_bits          # 256 x nwords: bitset of the rules listing each protocol
    uint64_t* bits                # bitset pool (nsets x nwords); set 0 is the empty set
    DstEntry* entries
    FamilyTable fam[2]            # [0] IPv4, [1] IPv6

ctypedef struct FlowKey:
    uint64_t rhi, rlo             # remote address (the peer we talk to)
    uint64_t lhi, llo             # local address
    uint64_t meta                 # family << 48 | proto << 32 | remote port << 16 | local port

ctypedef struct Flow:
    FlowKey key
    double expires
    uint64_t hash
    int32_t hnext                 # next in hash chain, or in the free list
    int32_t prev, next            # LRU list: head = least recently refreshed

ctypedef struct FlowTable:
    Flow* e
    int32_t* buckets
    uint64_t mask
    uint64_t seed
    int32_t capacity
    int32_t count
    int32_t free
    int32_t head, tail
    double timeout


cdef class CompiledRules:
    cdef RuleTables t


cdef class FilterCore:
    cdef FlowTable ft
    cdef readonly CompiledRules rules

    cdef void _reset(self) noexcept
