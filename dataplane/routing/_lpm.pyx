# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Longest-prefix-match table: IPv4 and IPv6 prefixes -> small non-negative integers.

Theory of operation
-------------------
The table is a multibit trie with a fixed stride of one octet (the BART/ART design of
``gaissmai/bart``, also used by the reference's ``ts_bart``), one trie per family:

* A node at depth ``d`` owns address bits ``[8d, 8d+8)``. Prefixes of length
  ``8d .. 8d+7`` are stored *in* the node under their Knuth/Hariguchi ART base index
  ``idx = (octet >> (8 - r)) + (1 << r)`` (``r`` = length relative to the node, so
  ``idx`` is 1..255 and longer prefixes have larger indices). Longer prefixes go below
  the child slot of octet ``d``.
* Both sets are a 256-bit presence bitset plus a dense array indexed by popcount rank,
  so a node holding three prefixes costs three array entries, not 256 ("horizontal
  sparseness"). Memory is proportional to the number of prefixes, never to the address
  space: this is what keeps 1M random IPv4 prefixes (including /32s) in tens of MB,
  where a dense fixed-stride trie or DIR-24-8 with one 256-entry block per long
  prefix would need gigabytes.
* A child slot holding a single prefix stores it as a *leaf* (the whole prefix and its
  value) instead of a chain of one-entry nodes ("vertical sparseness", path
  compression). A leaf is pushed one level down when a second prefix needs its slot,
  and removal re-inlines a node left with one prefix, so the shape stays canonical.
* Longest match inside a node is one AND of the node's prefix bitset with a
  precomputed bitset of the 8 ancestors of the looked-up octet (``_ANC``, 8 KiB), then
  "highest set bit": no loop over prefix lengths.

Lookup walks child slots octet by octet (at most 4 steps for IPv4, 16 for IPv6),
stopping at an empty slot or a leaf, remembering the nodes it passed; if no leaf
matched it asks those nodes for their in-node longest match, deepest first. Every step
is a constant number of word operations, the loop touches no Python object and cannot
fail, so it runs without the GIL. Batch lookups advance 32 addresses level by level
with software prefetches so that their cache misses overlap (``_lookup_group``).

Why this design: compared with a level-compressed (LC/poptrie) trie the fixed stride
keeps insert and remove local and simple (no rebuild of a level when one prefix
changes); compared with a patricia trie (``pytricia``) an IPv4 lookup is at most 4
dependent node visits instead of ~20; compared with DIR-24-8 memory follows the prefix
count (1M random IPv4 prefixes: ~30 MB, ~31 B per prefix; benchmarks/bench_lpm.py).

Concurrency: readers see either the old or the new table
--------------------------------------------------------
A table is mutable until :meth:`LpmTable.freeze` (routers freeze what they install).
A frozen table is never modified again, so any number of ``nogil`` readers may walk it.
Control-plane updates build a new table (or :meth:`LpmTable.copy` the frozen one and
edit the copy) and install it with one reference assignment in the router's ``swap``.
A batch call loads the table reference once, keeps that Python reference for the whole
call, and walks only that table: every packet of one batch is routed by exactly one
table, old or new, never a mix, and the old table is freed only when its last reader
drops it (reference counting).
"""

import ipaddress

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset

from dataplane._batch cimport PacketBatch, ST_OK, ST_BAD_IP


cdef extern from *:
    """
    static inline int dp_popcount64(unsigned long long x) { return __builtin_popcountll(x); }
    static inline int dp_clz64(unsigned long long x) { return __builtin_clzll(x); }
    static inline int dp_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    static inline void dp_prefetch(const void *p) { __builtin_prefetch(p); }
    """
    void dp_prefetch(const void *p) nogil
    int dp_popcount64(unsigned long long x) nogil
    int dp_clz64(unsigned long long x) nogil
    int dp_ctz64(unsigned long long x) nogil


# Ancestor bitsets: _ANC[o] has the base index of every in-node prefix (relative length
# 0..7) that covers octet o. Filled once at import.
cdef uint64_t _ANC[256][4]


cdef void _init_anc() noexcept:
    cdef int o, r, idx
    memset(_ANC, 0, sizeof(_ANC))
    for o in range(256):
        for r in range(8):
            idx = (o >> (8 - r)) + (1 << r)
            _ANC[o][idx >> 6] |= (<uint64_t>1) << (idx & 63)


_init_anc()


# ---------------------------------------------------------------------------------------
# Bit helpers

cdef inline bint _bit(const uint64_t *bits, int i) noexcept nogil:
    return (bits[i >> 6] >> (i & 63)) & 1


cdef inline int _rank(const uint64_t *bits, int i) noexcept nogil:
    """Number of set bits strictly below position i."""
    cdef int w = i >> 6
    cdef int r = 0
    cdef int k
    for k in range(w):
        r += dp_popcount64(bits[k])
    if i & 63:
        r += dp_popcount64(bits[w] & (((<uint64_t>1) << (i & 63)) - 1))
    return r


cdef inline int _octet(uint64_t hi, uint64_t lo, int d) noexcept nogil:
    if d < 8:
        return <int>((hi >> (56 - 8 * d)) & 0xFF)
    return <int>((lo >> (56 - 8 * (d - 8))) & 0xFF)


cdef inline uint64_t _mask64(int n) noexcept nogil:
    """Mask of the n (0..64) most significant bits."""
    if n <= 0:
        return 0
    if n >= 64:
        return <uint64_t>0xFFFFFFFFFFFFFFFF
    return (<uint64_t>0xFFFFFFFFFFFFFFFF) << (64 - n)


cdef inline void _truncate(uint64_t *hi, uint64_t *lo, int plen) noexcept nogil:
    if plen <= 64:
        hi[0] &= _mask64(plen)
        lo[0] = 0
    else:
        lo[0] &= _mask64(plen - 64)


cdef inline bint _leaf_covers(const LpmKid *lf, uint64_t hi, uint64_t lo) noexcept nogil:
    if lf.plen <= 64:
        return ((hi ^ lf.hi) & _mask64(lf.plen)) == 0
    return hi == lf.hi and ((lo ^ lf.lo) & _mask64(lf.plen - 64)) == 0


cdef inline LpmNode *_kid_node(const LpmKid *k) noexcept nogil:
    return <LpmNode *><size_t>k.hi


cdef inline void _set_kid_node(LpmKid *k, LpmNode *n) noexcept nogil:
    k.hi = <uint64_t><size_t>n
    k.lo = 0
    k.value = LPM_NONE
    k.plen = 0
    k.is_node = 1


cdef inline void _set_kid_leaf(LpmKid *k, uint64_t hi, uint64_t lo, int plen,
                               int32_t value) noexcept nogil:
    k.hi = hi
    k.lo = lo
    k.value = value
    k.plen = <uint8_t>plen
    k.is_node = 0


cdef inline int _base_index(int octet, int r) noexcept nogil:
    return (octet >> (8 - r)) + (1 << r)


cdef inline int _highest_common(const uint64_t *a, const uint64_t *b) noexcept nogil:
    """Highest bit set in both 256-bit sets, or -1."""
    cdef uint64_t w
    cdef int k
    for k in range(3, -1, -1):
        w = a[k] & b[k]
        if w:
            return (k << 6) + 63 - dp_clz64(w)
    return -1


# ---------------------------------------------------------------------------------------
# Address parsing from packets

cdef int read_ip_addr(const uint8_t *pkt, Py_ssize_t n, bint source,
                      uint64_t *hi, uint64_t *lo) noexcept nogil:
    """Read the source or destination address of an IP packet: 4 or 6, 0 if malformed.

    IPv4 needs a whole 20-byte header with IHL >= 5 that fits; IPv6 its 40-byte header.
    """
    cdef const uint8_t *a
    cdef int ihl
    cdef int k
    cdef uint64_t h = 0, lw = 0
    if n < 1:
        return 0
    if (pkt[0] >> 4) == 4:
        ihl = pkt[0] & 0x0F
        if n < 20 or ihl < 5 or ihl * 4 > n:
            return 0
        a = pkt + (12 if source else 16)
        hi[0] = ((<uint64_t>a[0] << 56) | (<uint64_t>a[1] << 48)
                 | (<uint64_t>a[2] << 40) | (<uint64_t>a[3] << 32))
        lo[0] = 0
        return 4
    if (pkt[0] >> 4) == 6:
        if n < 40:
            return 0
        a = pkt + (8 if source else 24)
        for k in range(8):
            h = (h << 8) | a[k]
            lw = (lw << 8) | a[k + 8]
        hi[0] = h
        lo[0] = lw
        return 6
    return 0


# ---------------------------------------------------------------------------------------
# Node storage. Allocation failures raise MemoryError (GIL held) and leave the trie
# consistent.

cdef LpmNode *_node_new(LpmTable t) except NULL:
    cdef LpmNode *n = <LpmNode *>malloc(sizeof(LpmNode))
    if n == NULL:
        raise MemoryError()
    memset(n, 0, sizeof(LpmNode))
    t.nbytes += sizeof(LpmNode)
    return n


cdef void _node_free_shallow(LpmTable t, LpmNode *n) noexcept:
    t.nbytes -= sizeof(LpmNode) + n.cap_pfx * sizeof(int32_t) + n.cap_kid * sizeof(LpmKid)
    free(n.vals)
    free(n.kids)
    free(n)


cdef void _node_free_deep(LpmTable t, LpmNode *n) noexcept:
    cdef int i
    if n == NULL:
        return
    for i in range(n.nkid):
        if n.kids[i].is_node:
            _node_free_deep(t, _kid_node(&n.kids[i]))
    _node_free_shallow(t, n)


cdef int _grow_pfx(LpmTable t, LpmNode *n) except -1:
    cdef int cap = n.cap_pfx * 2 if n.cap_pfx else 2
    if cap > 256:
        cap = 256
    cdef int32_t *v = <int32_t *>realloc(n.vals, cap * sizeof(int32_t))
    if v == NULL:
        raise MemoryError()
    t.nbytes += (cap - n.cap_pfx) * sizeof(int32_t)
    n.vals = v
    n.cap_pfx = <uint16_t>cap
    return 0


cdef int _grow_kid(LpmTable t, LpmNode *n) except -1:
    cdef int cap = n.cap_kid * 2 if n.cap_kid else 1
    if cap > 256:
        cap = 256
    cdef LpmKid *v = <LpmKid *>realloc(n.kids, cap * sizeof(LpmKid))
    if v == NULL:
        raise MemoryError()
    t.nbytes += (cap - n.cap_kid) * sizeof(LpmKid)
    n.kids = v
    n.cap_kid = <uint16_t>cap
    return 0


cdef int _set_pfx(LpmTable t, LpmNode *n, int idx, int32_t value, int32_t *old) except -1:
    """Store value at base index idx: 1 if new, 0 if it replaced old[0]."""
    cdef int r = _rank(n.pfx, idx)
    if _bit(n.pfx, idx):
        old[0] = n.vals[r]
        n.vals[r] = value
        return 0
    if n.npfx == n.cap_pfx:
        _grow_pfx(t, n)
    memmove(&n.vals[r + 1], &n.vals[r], (n.npfx - r) * sizeof(int32_t))
    n.vals[r] = value
    n.pfx[idx >> 6] |= (<uint64_t>1) << (idx & 63)
    n.npfx += 1
    return 1


cdef int32_t _del_pfx(LpmTable t, LpmNode *n, int idx) noexcept:
    cdef int r = _rank(n.pfx, idx)
    cdef int32_t v = n.vals[r]
    memmove(&n.vals[r], &n.vals[r + 1], (n.npfx - r - 1) * sizeof(int32_t))
    n.pfx[idx >> 6] &= ~((<uint64_t>1) << (idx & 63))
    n.npfx -= 1
    if n.npfx == 0:
        # Give the array back: a trie that was emptied holds no stale capacity.
        t.nbytes -= n.cap_pfx * sizeof(int32_t)
        free(n.vals)
        n.vals = NULL
        n.cap_pfx = 0
    return v


cdef LpmKid *_add_kid(LpmTable t, LpmNode *n, int o) except NULL:
    """Open the child slot of octet o (absent so far); the caller fills the entry."""
    cdef int r = _rank(n.kid, o)
    if n.nkid == n.cap_kid:
        _grow_kid(t, n)
    memmove(&n.kids[r + 1], &n.kids[r], (n.nkid - r) * sizeof(LpmKid))
    n.kid[o >> 6] |= (<uint64_t>1) << (o & 63)
    n.nkid += 1
    return &n.kids[r]


cdef void _del_kid(LpmTable t, LpmNode *n, int o) noexcept:
    cdef int r = _rank(n.kid, o)
    memmove(&n.kids[r], &n.kids[r + 1], (n.nkid - r - 1) * sizeof(LpmKid))
    n.kid[o >> 6] &= ~((<uint64_t>1) << (o & 63))
    n.nkid -= 1
    if n.nkid == 0:
        t.nbytes -= n.cap_kid * sizeof(LpmKid)
        free(n.kids)
        n.kids = NULL
        n.cap_kid = 0


cdef int _place(LpmTable t, LpmNode *n, int d, uint64_t hi, uint64_t lo, int plen,
                int32_t value) except -1:
    """Put a prefix that has no entry yet into node n at depth d (in-node or as a leaf)."""
    cdef int32_t dummy
    if plen < 8 * (d + 1):
        _set_pfx(t, n, _base_index(_octet(hi, lo, d), plen - 8 * d), value, &dummy)
    else:
        _set_kid_leaf(_add_kid(t, n, _octet(hi, lo, d)), hi, lo, plen, value)
    return 0


cdef LpmNode *_node_copy(LpmTable t, const LpmNode *src) except NULL:
    cdef LpmNode *n = _node_new(t)
    cdef int i
    memcpy(n.pfx, src.pfx, sizeof(n.pfx))
    if src.npfx:
        n.vals = <int32_t *>malloc(src.npfx * sizeof(int32_t))
        if n.vals == NULL:
            n.pfx[0] = n.pfx[1] = n.pfx[2] = n.pfx[3] = 0
            _node_free_shallow(t, n)
            raise MemoryError()
        memcpy(n.vals, src.vals, src.npfx * sizeof(int32_t))
        n.npfx = n.cap_pfx = src.npfx
        t.nbytes += n.cap_pfx * sizeof(int32_t)
    if src.nkid:
        n.kids = <LpmKid *>malloc(src.nkid * sizeof(LpmKid))
        if n.kids == NULL:
            _node_free_shallow(t, n)
            raise MemoryError()
        n.cap_kid = src.nkid
        t.nbytes += n.cap_kid * sizeof(LpmKid)
    # Fill children one by one (nkid counts the finished ones) so that a failure frees
    # exactly what this copy owns and never the source's nodes.
    for i in range(src.nkid):
        n.kids[i] = src.kids[i]
        if src.kids[i].is_node:
            try:
                _set_kid_node(&n.kids[i], _node_copy(t, _kid_node(&src.kids[i])))
            except MemoryError:
                _node_free_deep(t, n)
                raise
        n.nkid = <uint16_t>(i + 1)
    memcpy(n.kid, src.kid, sizeof(n.kid))
    return n


# ---------------------------------------------------------------------------------------
# Trie operations on (hi, lo, plen) keys, already truncated to plen.

cdef int _insert(LpmTable t, LpmNode *root, uint64_t hi, uint64_t lo, int plen,
                 int32_t value, int32_t *old) except -1:
    """1 if the prefix is new, 0 if it replaced a value (stored in old[0])."""
    cdef LpmNode *node = root
    cdef LpmNode *child
    cdef LpmKid *k
    cdef int d = 0
    cdef int o
    while True:
        o = _octet(hi, lo, d)
        if plen < 8 * (d + 1):
            return _set_pfx(t, node, _base_index(o, plen - 8 * d), value, old)
        if not _bit(node.kid, o):
            _set_kid_leaf(_add_kid(t, node, o), hi, lo, plen, value)
            return 1
        k = &node.kids[_rank(node.kid, o)]
        if not k.is_node:
            if k.plen == plen and k.hi == hi and k.lo == lo:
                old[0] = k.value
                k.value = value
                return 0
            # Second prefix under this slot: push the leaf one level down.
            child = _node_new(t)
            try:
                _place(t, child, d + 1, k.hi, k.lo, k.plen, k.value)
            except MemoryError:
                _node_free_shallow(t, child)
                raise
            _set_kid_node(k, child)
            node = child
        else:
            node = _kid_node(k)
        d += 1


cdef int _find_exact(LpmNode *root, uint64_t hi, uint64_t lo, int plen,
                     int32_t *value) noexcept:
    cdef LpmNode *node = root
    cdef LpmKid *k
    cdef int d = 0
    cdef int o, idx
    while True:
        o = _octet(hi, lo, d)
        if plen < 8 * (d + 1):
            idx = _base_index(o, plen - 8 * d)
            if not _bit(node.pfx, idx):
                return 0
            value[0] = node.vals[_rank(node.pfx, idx)]
            return 1
        if not _bit(node.kid, o):
            return 0
        k = &node.kids[_rank(node.kid, o)]
        if not k.is_node:
            if k.plen == plen and k.hi == hi and k.lo == lo:
                value[0] = k.value
                return 1
            return 0
        node = _kid_node(k)
        d += 1


cdef int _remove(LpmTable t, LpmNode *root, uint64_t hi, uint64_t lo, int plen,
                 int32_t *old) except -1:
    """1 if removed (value in old[0]), 0 if absent."""
    cdef LpmNode *path[16]
    cdef int po[16]
    cdef LpmNode *node = root
    cdef LpmNode *parent
    cdef LpmKid *k
    cdef int d = 0
    cdef int o, idx, rl
    cdef uint64_t lhi, llo
    while True:
        o = _octet(hi, lo, d)
        if plen < 8 * (d + 1):
            idx = _base_index(o, plen - 8 * d)
            if not _bit(node.pfx, idx):
                return 0
            old[0] = _del_pfx(t, node, idx)
            break
        if not _bit(node.kid, o):
            return 0
        k = &node.kids[_rank(node.kid, o)]
        if not k.is_node:
            if not (k.plen == plen and k.hi == hi and k.lo == lo):
                return 0
            old[0] = k.value
            _del_kid(t, node, o)
            break
        path[d] = node
        po[d] = o
        node = _kid_node(k)
        d += 1
    # Restore the canonical shape bottom-up: drop empty nodes, re-inline a node holding a
    # single prefix as a leaf in its parent's slot. Nothing is allocated here.
    while d > 0:
        parent = path[d - 1]
        o = po[d - 1]
        k = &parent.kids[_rank(parent.kid, o)]
        if node.npfx + node.nkid == 0:
            _node_free_shallow(t, node)
            _del_kid(t, parent, o)
        elif node.npfx == 0 and node.nkid == 1 and not node.kids[0].is_node:
            k[0] = node.kids[0]
            _node_free_shallow(t, node)
        elif node.npfx == 1 and node.nkid == 0:
            idx = _highest_common(node.pfx, node.pfx)
            rl = 63 - dp_clz64(<uint64_t>idx)
            lhi = hi
            llo = lo
            _truncate(&lhi, &llo, 8 * d)
            if d < 8:
                lhi |= (<uint64_t>((idx - (1 << rl)) << (8 - rl))) << (56 - 8 * d)
            else:
                llo |= (<uint64_t>((idx - (1 << rl)) << (8 - rl))) << (56 - 8 * (d - 8))
            _set_kid_leaf(k, lhi, llo, 8 * d + rl, node.vals[0])
            _node_free_shallow(t, node)
        else:
            break
        node = parent
        d -= 1
    return 1


cdef int32_t _lookup(const LpmNode *root, uint64_t hi, uint64_t lo) noexcept nogil:
    cdef const LpmNode *stack[16]
    cdef int octs[16]
    cdef const LpmNode *node = root
    cdef const LpmKid *k
    cdef int d = 0
    cdef int o, idx
    while True:
        o = _octet(hi, lo, d)
        stack[d] = node
        octs[d] = o
        if not _bit(node.kid, o):
            break
        k = &node.kids[_rank(node.kid, o)]
        if not k.is_node:
            if _leaf_covers(k, hi, lo):
                return k.value
            break
        node = _kid_node(k)
        d += 1
    while d >= 0:
        node = stack[d]
        if node.npfx:
            idx = _highest_common(node.pfx, _ANC[octs[d]])
            if idx >= 0:
                return node.vals[_rank(node.pfx, idx)]
        d -= 1
    return LPM_NONE


# Interleaved lookups. One lookup is a chain of dependent loads (node header, child
# entry, value); for a table larger than the caches each is a miss, so a lone
# lookup costs a few memory latencies and the core idles. _lookup_many walks groups of
# _GROUP lookups down the trie together, one level at a time, prefetching what each
# will read next ("group prefetching"), so the misses of a group overlap. (A per-lookup
# state machine, AMAC, was tried: its unpredictable branches made it 2x slower here.)
# Same answers as _lookup, which tests check; it tracks the best in-node match on the
# way down (a pointer, its value read once at the end) instead of backtracking.

cdef enum:
    _GROUP = 32      # lookups advanced level by level together
    _CHUNK = 256     # addresses parsed and looked up per round (stack arrays)


cdef inline void _prefetch_node(const LpmNode *n) noexcept nogil:
    dp_prefetch(n)
    dp_prefetch((<const char *>n) + 64)


cdef void _lookup_group(const LpmNode *root, const uint64_t *his, const uint64_t *los,
                        int32_t *out, int n) noexcept nogil:
    """Up to _GROUP lookups, level by level; each level is two passes over the group:
    (1) match inside the current node (its header was prefetched by the previous pass)
    and prefetch the child entry, (2) read the child entry: a leaf settles the lookup,
    a node is prefetched for the next level. A pass over the group takes long enough
    for the prefetches issued at its start to land."""
    cdef const LpmNode *node[_GROUP]
    cdef const LpmKid *slot[_GROUP]
    cdef const int32_t *best[_GROUP]
    cdef int open_[_GROUP]          # indexes of lookups still descending
    cdef int nopen = n
    cdef int d = 0
    cdef int g, j, m, o, idx
    cdef const LpmNode *nd
    cdef const LpmKid *k
    for g in range(n):
        node[g] = root
        best[g] = NULL
        open_[g] = g
        out[g] = LPM_NONE
    while nopen:
        m = 0
        for j in range(nopen):
            g = open_[j]
            nd = node[g]
            o = _octet(his[g], los[g], d)
            if nd.npfx:
                idx = _highest_common(nd.pfx, _ANC[o])
                if idx >= 0:
                    best[g] = &nd.vals[_rank(nd.pfx, idx)]
            if _bit(nd.kid, o):
                k = &nd.kids[_rank(nd.kid, o)]
                slot[g] = k
                dp_prefetch(k)
                dp_prefetch((<const char *>k) + sizeof(LpmKid) - 1)
                open_[m] = g
                m += 1
            elif best[g] != NULL:
                dp_prefetch(best[g])
        nopen = m
        m = 0
        for j in range(nopen):
            g = open_[j]
            k = slot[g]
            if k.is_node:
                node[g] = _kid_node(k)
                _prefetch_node(node[g])
                open_[m] = g
                m += 1
            elif _leaf_covers(k, his[g], los[g]):
                out[g] = k.value
                best[g] = NULL
            elif best[g] != NULL:
                dp_prefetch(best[g])
        nopen = m
        d += 1
    for g in range(n):
        if best[g] != NULL:
            out[g] = best[g][0]


cdef void _lookup_many(const LpmNode *root, const uint64_t *his, const uint64_t *los,
                       int32_t *out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t base = 0
    while base < n:
        _lookup_group(root, his + base, los + base, out + base,
                      <int>(n - base if n - base < _GROUP else _GROUP))
        base += _GROUP


# ---------------------------------------------------------------------------------------
# Python-side key parsing

cdef int _parse_v4_text(str s, uint64_t *hi) except -1:
    """Fast dotted-quad parser; returns 0 (not handled) for anything unusual."""
    cdef Py_ssize_t i, n = len(s)
    cdef int part = 0, digits = 0, parts = 0
    cdef uint64_t v = 0
    cdef Py_UCS4 c
    if n < 7 or n > 15:
        return 0
    for i in range(n):
        c = s[i]
        if c == 46:      # '.'
            if digits == 0 or parts == 3:
                return 0
            v = (v << 8) | <uint64_t>part
            parts += 1
            part = 0
            digits = 0
        elif 48 <= c <= 57:
            if digits and part == 0:
                return 0     # leading zero: let ipaddress decide (it rejects them)
            part = part * 10 + <int>c - 48
            digits += 1
            if part > 255:
                return 0
        else:
            return 0
    if digits == 0 or parts != 3:
        return 0
    v = (v << 8) | <uint64_t>part
    hi[0] = v << 32
    return 1


cdef int _parse_addr(object addr, uint64_t *hi, uint64_t *lo) except -1:
    """Parse an address: returns 4 or 6. Accepts str, ipaddress objects, packed bytes."""
    cdef const uint8_t[::1] b
    cdef int k
    cdef uint64_t h = 0, lw = 0
    if isinstance(addr, str):
        if _parse_v4_text(<str>addr, hi):
            lo[0] = 0
            return 4
        addr = ipaddress.ip_address(addr)
    if isinstance(addr, (bytes, bytearray, memoryview)):
        b = memoryview(addr).cast("B")
        if b.shape[0] == 4:
            hi[0] = ((<uint64_t>b[0] << 56) | (<uint64_t>b[1] << 48)
                     | (<uint64_t>b[2] << 40) | (<uint64_t>b[3] << 32))
            lo[0] = 0
            return 4
        if b.shape[0] == 16:
            for k in range(8):
                h = (h << 8) | b[k]
                lw = (lw << 8) | b[k + 8]
            hi[0] = h
            lo[0] = lw
            return 6
        raise ValueError(f"packed address must be 4 or 16 bytes, got {b.shape[0]}")
    if isinstance(addr, ipaddress.IPv4Address):
        hi[0] = (<uint64_t>int(addr)) << 32
        lo[0] = 0
        return 4
    if isinstance(addr, ipaddress.IPv6Address):
        v = int(addr)
        hi[0] = <uint64_t>(v >> 64)
        lo[0] = <uint64_t>(v & 0xFFFFFFFFFFFFFFFF)
        return 6
    raise TypeError(f"expected an IP address (str, bytes or ipaddress), got {addr!r}")


cdef int _parse_prefix(object prefix, uint64_t *hi, uint64_t *lo, int *plen) except -1:
    """Parse a prefix (host bits are truncated, as WireGuard does): returns 4 or 6."""
    cdef int fam, maxlen
    cdef object a, lw
    if isinstance(prefix, tuple):
        if len(prefix) != 2:
            raise ValueError(f"prefix tuple must be (address, length), got {prefix!r}")
        a, lw = prefix
    elif isinstance(prefix, str):
        a, sep, lw = (<str>prefix).partition("/")
        if not sep:
            lw = None
    elif isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        a, lw = prefix.network_address, prefix.prefixlen
    elif isinstance(prefix, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        a, lw = prefix.network.network_address, prefix.network.prefixlen
    else:
        a, lw = prefix, None
    try:
        fam = _parse_addr(a, hi, lo)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid prefix {prefix!r}: {exc}") from None
    maxlen = 32 if fam == 4 else 128
    if lw is None:
        plen[0] = maxlen
    else:
        if isinstance(lw, str) and not (<str>lw).isdigit():
            raise ValueError(f"invalid prefix length in {prefix!r}")
        try:
            plen[0] = int(lw)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"invalid prefix length in {prefix!r}") from None
        if not 0 <= plen[0] <= maxlen:
            raise ValueError(f"prefix length out of range 0..{maxlen} in {prefix!r}")
    _truncate(hi, lo, plen[0])
    return fam


cdef object _make_network(int fam, uint64_t hi, uint64_t lo, int plen):
    if fam == 4:
        return ipaddress.IPv4Network(((<uint32_t>(hi >> 32)), plen))
    return ipaddress.IPv6Network((((<object>hi) << 64) | <object>lo, plen))


cdef void _collect(list out, int fam, const LpmNode *n, int d, uint64_t hi,
                   uint64_t lo) except *:
    """Append (network, value) of every prefix below n (whose path is hi/lo, 8d bits)."""
    cdef int i, rl, o
    cdef uint64_t h, lw, bits
    cdef const LpmKid *k
    cdef int r = 0
    for i in range(1, 256):
        if not _bit(n.pfx, i):
            continue
        rl = 63 - dp_clz64(<uint64_t>i)
        bits = <uint64_t>((i - (1 << rl)) << (8 - rl))
        h = hi
        lw = lo
        if d < 8:
            h |= bits << (56 - 8 * d)
        else:
            lw |= bits << (56 - 8 * (d - 8))
        out.append((_make_network(fam, h, lw, 8 * d + rl), n.vals[r]))
        r += 1
    r = 0
    for o in range(256):
        if not _bit(n.kid, o):
            continue
        k = &n.kids[r]
        r += 1
        if not k.is_node:
            out.append((_make_network(fam, k.hi, k.lo, k.plen), k.value))
            continue
        h = hi
        lw = lo
        if d < 8:
            h |= (<uint64_t>o) << (56 - 8 * d)
        else:
            lw |= (<uint64_t>o) << (56 - 8 * (d - 8))
        _collect(out, fam, _kid_node(k), d + 1, h, lw)


cdef void _depth_stats(const LpmNode *n, int d, list counts) except *:
    cdef int i
    counts[d] += 1
    for i in range(n.nkid):
        if n.kids[i].is_node:
            _depth_stats(_kid_node(&n.kids[i]), d + 1, counts)


# ---------------------------------------------------------------------------------------

cdef class LpmTable:
    """Longest-prefix-match table from IPv4/IPv6 prefixes to ints in 0..2**31-1.

    Prefixes are ``"10.0.0.0/8"``, ``"fd00::/8"``, ``ipaddress`` networks or
    ``(address, length)`` tuples; a bare address is a host route. Host bits are truncated
    (``10.1.2.3/8`` is ``10.0.0.0/8``). Addresses are str, ``ipaddress`` objects or
    packed 4/16-byte ``bytes``.
    """

    def __cinit__(self):
        self.root4 = _node_new(self)
        self.root6 = _node_new(self)

    def __dealloc__(self):
        _node_free_deep(self, self.root4)
        _node_free_deep(self, self.root6)
        self.root4 = NULL
        self.root6 = NULL

    def __init__(self, items=None):
        if items is not None:
            self.update(items)

    cdef int _check_mutable(self) except -1:
        if self.frozen:
            raise RuntimeError("LpmTable is frozen (installed in a router); copy() it to edit")
        return 0

    # -- C API ------------------------------------------------------------------------

    cdef int32_t lookup4(self, uint64_t hi) noexcept nogil:
        return _lookup(self.root4, hi, 0)

    cdef int32_t lookup6(self, uint64_t hi, uint64_t lo) noexcept nogil:
        return _lookup(self.root6, hi, lo)

    cdef int32_t lookup_packet(self, const uint8_t *pkt, Py_ssize_t n, bint source,
                               int *bad) noexcept nogil:
        cdef uint64_t hi, lo
        cdef int fam = read_ip_addr(pkt, n, source, &hi, &lo)
        if fam == 4:
            return _lookup(self.root4, hi, 0)
        if fam == 6:
            return _lookup(self.root6, hi, lo)
        bad[0] = 1
        return LPM_NONE

    # -- mutation -----------------------------------------------------------------------

    def insert(self, prefix, int value):
        """Map prefix to value; return the value it replaced, or None."""
        cdef uint64_t hi, lo
        cdef int plen
        cdef int32_t old = LPM_NONE
        self._check_mutable()
        if value < 0:
            raise ValueError(f"LPM values must be in 0..2**31-1, got {value}")
        fam = _parse_prefix(prefix, &hi, &lo, &plen)
        if fam == 4:
            if _insert(self, self.root4, hi, lo, plen, value, &old):
                self.n4 += 1
                return None
        else:
            if _insert(self, self.root6, hi, lo, plen, value, &old):
                self.n6 += 1
                return None
        return old

    def __setitem__(self, prefix, int value):
        self.insert(prefix, value)

    def update(self, items):
        """Insert every (prefix, value) of a mapping or an iterable of pairs."""
        if hasattr(items, "items"):
            items = items.items()
        for prefix, value in items:
            self.insert(prefix, value)

    def remove(self, prefix):
        """Remove prefix exactly; return its value, or None if it was absent."""
        cdef uint64_t hi, lo
        cdef int plen
        cdef int32_t old = LPM_NONE
        self._check_mutable()
        fam = _parse_prefix(prefix, &hi, &lo, &plen)
        if fam == 4:
            if _remove(self, self.root4, hi, lo, plen, &old):
                self.n4 -= 1
                return old
        else:
            if _remove(self, self.root6, hi, lo, plen, &old):
                self.n6 -= 1
                return old
        return None

    def __delitem__(self, prefix):
        if self.remove(prefix) is None:
            raise KeyError(prefix)

    def clear(self):
        self._check_mutable()
        _node_free_deep(self, self.root4)
        _node_free_deep(self, self.root6)
        self.root4 = NULL
        self.root6 = NULL
        self.n4 = self.n6 = 0
        self.root4 = _node_new(self)
        self.root6 = _node_new(self)

    def freeze(self):
        """Make the table read-only for good (safe for concurrent nogil readers)."""
        self.frozen = True
        return self

    def copy(self):
        """A mutable deep copy (also of a frozen table)."""
        cdef LpmTable t = LpmTable.__new__(LpmTable)
        _node_free_shallow(t, t.root4)
        t.root4 = NULL
        t.root4 = _node_copy(t, self.root4)
        _node_free_shallow(t, t.root6)
        t.root6 = NULL
        t.root6 = _node_copy(t, self.root6)
        t.n4 = self.n4
        t.n6 = self.n6
        return t

    # -- queries ------------------------------------------------------------------------

    def get(self, prefix, default=None):
        """Value stored for exactly this prefix, else default."""
        cdef uint64_t hi, lo
        cdef int plen
        cdef int32_t v
        fam = _parse_prefix(prefix, &hi, &lo, &plen)
        if _find_exact(self.root4 if fam == 4 else self.root6, hi, lo, plen, &v):
            return v
        return default

    def __contains__(self, prefix):
        cdef uint64_t hi, lo
        cdef int plen
        cdef int32_t v
        fam = _parse_prefix(prefix, &hi, &lo, &plen)
        return bool(_find_exact(self.root4 if fam == 4 else self.root6, hi, lo, plen, &v))

    def __getitem__(self, prefix):
        v = self.get(prefix)
        if v is None:
            raise KeyError(prefix)
        return v

    def lookup(self, addr, default=None):
        """Value of the longest prefix containing addr, else default."""
        cdef uint64_t hi, lo
        cdef int32_t v
        fam = _parse_addr(addr, &hi, &lo)
        v = _lookup(self.root4 if fam == 4 else self.root6, hi, lo)
        return default if v < 0 else v

    def __len__(self):
        return self.n4 + self.n6

    @property
    def len4(self):
        return self.n4

    @property
    def len6(self):
        return self.n6

    def items(self):
        """All (ipaddress network, value) pairs: IPv4 first, then IPv6."""
        cdef list out = []
        _collect(out, 4, self.root4, 0, 0, 0)
        _collect(out, 6, self.root6, 0, 0, 0)
        return out

    def __iter__(self):
        return iter([p for p, _ in self.items()])

    def memory_bytes(self):
        """Bytes of C heap held by the trie (nodes, arrays and leaves)."""
        return self.nbytes

    def node_counts(self):
        """(IPv4 nodes per depth, IPv6 nodes per depth), for diagnostics."""
        c4 = [0] * 4
        c6 = [0] * 16
        _depth_stats(self.root4, 0, c4)
        _depth_stats(self.root6, 0, c6)
        return c4, c6

    def __repr__(self):
        return (f"<LpmTable {self.n4} IPv4 + {self.n6} IPv6 prefixes, "
                f"{self.nbytes} bytes{', frozen' if self.frozen else ''}>")

    # -- batch lookups (nogil) ------------------------------------------------------------

    def lookup_batch(self, PacketBatch batch, int32_t[::1] out, bint source=False):
        """LPM on each alive slot's destination (or source) address, into out[i].

        out[i] = value or -1 for alive slots; dead slots get -1 and keep their status.
        Slots whose IP header is malformed get status ST_BAD_IP. Returns the number of
        slots that matched a prefix.
        """
        cdef Py_ssize_t n = batch.count
        cdef Py_ssize_t i, hits = 0
        if out.shape[0] < n:
            raise ValueError(f"out has {out.shape[0]} entries, batch has {n} packets")
        if n == 0:
            return 0
        # Reads the slab/offsets/lengths/status of this batch and this trie (frozen, or
        # owned by the caller); writes out[] and status[]. No Python object is touched.
        with nogil:
            batch_lookup(self, batch, source, &out[0])
            for i in range(n):
                if out[i] >= 0:
                    hits += 1
        return hits

    def lookup_packed(self, const uint8_t[::1] addrs, int family, int32_t[::1] out):
        """LPM for n packed addresses (4*n bytes for IPv4, 16*n for IPv6) into out[:n]."""
        cdef Py_ssize_t width = 4 if family == 4 else 16
        cdef Py_ssize_t n, i, base, m
        cdef const uint8_t *a
        cdef uint64_t his[_CHUNK]
        cdef uint64_t los[_CHUNK]
        cdef int k
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family}")
        if addrs.shape[0] % width:
            raise ValueError(f"packed IPv{family} addresses must be a multiple of {width} bytes")
        n = addrs.shape[0] // width
        if out.shape[0] < n:
            raise ValueError(f"out has {out.shape[0]} entries for {n} addresses")
        if n == 0:
            return 0
        with nogil:
            base = 0
            while base < n:
                m = n - base if n - base < _CHUNK else _CHUNK
                for i in range(m):
                    a = &addrs[width * (base + i)]
                    if family == 4:
                        his[i] = ((<uint64_t>a[0] << 56) | (<uint64_t>a[1] << 48)
                                  | (<uint64_t>a[2] << 40) | (<uint64_t>a[3] << 32))
                        los[i] = 0
                    else:
                        his[i] = 0
                        los[i] = 0
                        for k in range(8):
                            his[i] = (his[i] << 8) | a[k]
                            los[i] = (los[i] << 8) | a[k + 8]
                _lookup_many(self.root4 if family == 4 else self.root6, his, los,
                             &out[base], m)
                base += m
        return n


cdef void batch_lookup(LpmTable t, PacketBatch batch, bint source,
                       int32_t *out) noexcept nogil:
    """out[i] = LPM of slot i's address for alive slots, -1 otherwise; ST_BAD_IP if bad.

    Slots are taken in chunks; each chunk's addresses are parsed, split by family and
    looked up interleaved (_lookup_many), then scattered back.
    """
    cdef Py_ssize_t n = batch.count
    cdef Py_ssize_t base = 0, i, m
    cdef uint64_t his4[_CHUNK]
    cdef uint64_t los4[_CHUNK]
    cdef uint64_t his6[_CHUNK]
    cdef uint64_t los6[_CHUNK]
    cdef int32_t res4[_CHUNK]
    cdef int32_t res6[_CHUNK]
    cdef Py_ssize_t idx4[_CHUNK]
    cdef Py_ssize_t idx6[_CHUNK]
    cdef Py_ssize_t n4, n6
    cdef int fam
    while base < n:
        m = n - base if n - base < _CHUNK else _CHUNK
        n4 = 0
        n6 = 0
        for i in range(base, base + m):
            out[i] = LPM_NONE
            # Headers of packets a few slots ahead: slots are slot_size apart, which the
            # hardware stream prefetcher only partly covers.
            if i + 8 < n:
                dp_prefetch(batch.pkt_ptr(i + 8))
            if batch.status[i] != ST_OK:
                continue
            fam = read_ip_addr(batch.pkt_ptr(i), batch.lengths[i], source, &his6[n6],
                               &los6[n6])
            if fam == 6:
                idx6[n6] = i
                n6 += 1
            elif fam == 4:
                his4[n4] = his6[n6]
                los4[n4] = 0
                idx4[n4] = i
                n4 += 1
            else:
                batch.status[i] = ST_BAD_IP
        if n4:
            _lookup_many(t.root4, his4, los4, res4, n4)
            for i in range(n4):
                out[idx4[i]] = res4[i]
        if n6:
            _lookup_many(t.root6, his6, los6, res6, n6)
            for i in range(n6):
                out[idx6[i]] = res6[i]
        base += m
