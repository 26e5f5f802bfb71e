# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""BLAKE2s, HMAC-BLAKE2s and the Noise KDF chain in C, for the handshake's symmetric work.

Theory of operation: a WireGuard responder runs about twenty HMAC-BLAKE2s over inputs of at
most 64 bytes per handshake (whitepaper §5.4: ``KDF_n`` is HKDF with HMAC-BLAKE2s). In
Python each HMAC costs two hash objects, two pad translations and a dozen attribute look-ups
(~2 µs), together as much as one X25519. Here BLAKE2s (RFC 7693, 10 rounds over a 64-byte
block, 32-bit words) is written out in C and the HMAC states live on the stack, so one
``KDF_n`` is a single call that never builds an intermediate Python object.

``kdf`` takes the chaining key (any length) and the input key material and returns ``n``
32-byte outputs; ``hmac_blake2s`` is the plain RFC 2104 HMAC (keys longer than a block are
hashed first, as the RFC says). ``hash2`` is ``BLAKE2s(a || b)``, the ``MixHash`` step.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cdef enum:
    BLOCK = 64
    OUT = 32

cdef uint32_t IV[8]
IV[:] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]

# The message schedule SIGMA (RFC 7693 §2.7) is baked into compress() below.


cdef struct b2s:
    uint32_t h[8]
    uint64_t t          # bytes compressed so far
    uint8_t buf[64]
    Py_ssize_t buflen


cdef inline uint32_t rotr(uint32_t x, int n) noexcept nogil:
    return (x >> n) | (x << (32 - n))


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | \
        (<uint32_t>p[3] << 24)


cdef inline void store32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef void compress(b2s* s, const uint8_t* block, bint last) noexcept nogil:
    # Written out (generated from SIGMA): constant message indices and named words let the
    # compiler keep the state in registers, about a fifth faster than indexing SIGMA.
    cdef uint32_t m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15
    cdef uint32_t v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15
    m0 = load32(block + 0)
    m1 = load32(block + 4)
    m2 = load32(block + 8)
    m3 = load32(block + 12)
    m4 = load32(block + 16)
    m5 = load32(block + 20)
    m6 = load32(block + 24)
    m7 = load32(block + 28)
    m8 = load32(block + 32)
    m9 = load32(block + 36)
    m10 = load32(block + 40)
    m11 = load32(block + 44)
    m12 = load32(block + 48)
    m13 = load32(block + 52)
    m14 = load32(block + 56)
    m15 = load32(block + 60)
    v0 = s.h[0]
    v1 = s.h[1]
    v2 = s.h[2]
    v3 = s.h[3]
    v4 = s.h[4]
    v5 = s.h[5]
    v6 = s.h[6]
    v7 = s.h[7]
    v8 = IV[0]
    v9 = IV[1]
    v10 = IV[2]
    v11 = IV[3]
    v12 = IV[4]
    v13 = IV[5]
    v14 = IV[6]
    v15 = IV[7]
    v12 ^= <uint32_t>s.t
    v13 ^= <uint32_t>(s.t >> 32)
    if last:
        v14 = ~v14
    # round 0
    v0 = v0 + v4 + m0
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m1
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m2
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m3
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m4
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m5
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m6
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m7
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m8
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m9
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m10
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m11
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m12
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m13
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m14
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m15
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 1
    v0 = v0 + v4 + m14
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m10
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m4
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m8
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m9
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m15
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m13
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m6
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m1
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m12
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m0
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m2
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m11
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m7
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m5
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m3
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 2
    v0 = v0 + v4 + m11
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m8
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m12
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m0
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m5
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m2
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m15
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m13
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m10
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m14
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m3
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m6
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m7
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m1
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m9
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m4
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 3
    v0 = v0 + v4 + m7
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m9
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m3
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m1
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m13
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m12
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m11
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m14
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m2
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m6
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m5
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m10
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m4
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m0
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m15
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m8
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 4
    v0 = v0 + v4 + m9
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m0
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m5
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m7
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m2
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m4
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m10
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m15
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m14
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m1
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m11
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m12
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m6
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m8
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m3
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m13
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 5
    v0 = v0 + v4 + m2
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m12
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m6
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m10
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m0
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m11
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m8
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m3
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m4
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m13
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m7
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m5
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m15
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m14
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m1
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m9
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 6
    v0 = v0 + v4 + m12
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m5
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m1
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m15
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m14
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m13
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m4
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m10
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m0
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m7
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m6
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m3
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m9
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m2
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m8
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m11
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 7
    v0 = v0 + v4 + m13
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m11
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m7
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m14
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m12
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m1
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m3
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m9
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m5
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m0
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m15
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m4
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m8
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m6
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m2
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m10
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 8
    v0 = v0 + v4 + m6
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m15
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m14
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m9
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m11
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m3
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m0
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m8
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m12
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m2
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m13
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m7
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m1
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m4
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m10
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m5
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    # round 9
    v0 = v0 + v4 + m10
    v12 = rotr(v12 ^ v0, 16)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 12)
    v0 = v0 + v4 + m2
    v12 = rotr(v12 ^ v0, 8)
    v8 = v8 + v12
    v4 = rotr(v4 ^ v8, 7)
    v1 = v1 + v5 + m8
    v13 = rotr(v13 ^ v1, 16)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 12)
    v1 = v1 + v5 + m4
    v13 = rotr(v13 ^ v1, 8)
    v9 = v9 + v13
    v5 = rotr(v5 ^ v9, 7)
    v2 = v2 + v6 + m7
    v14 = rotr(v14 ^ v2, 16)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 12)
    v2 = v2 + v6 + m6
    v14 = rotr(v14 ^ v2, 8)
    v10 = v10 + v14
    v6 = rotr(v6 ^ v10, 7)
    v3 = v3 + v7 + m1
    v15 = rotr(v15 ^ v3, 16)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 12)
    v3 = v3 + v7 + m5
    v15 = rotr(v15 ^ v3, 8)
    v11 = v11 + v15
    v7 = rotr(v7 ^ v11, 7)
    v0 = v0 + v5 + m15
    v15 = rotr(v15 ^ v0, 16)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 12)
    v0 = v0 + v5 + m11
    v15 = rotr(v15 ^ v0, 8)
    v10 = v10 + v15
    v5 = rotr(v5 ^ v10, 7)
    v1 = v1 + v6 + m9
    v12 = rotr(v12 ^ v1, 16)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 12)
    v1 = v1 + v6 + m14
    v12 = rotr(v12 ^ v1, 8)
    v11 = v11 + v12
    v6 = rotr(v6 ^ v11, 7)
    v2 = v2 + v7 + m3
    v13 = rotr(v13 ^ v2, 16)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 12)
    v2 = v2 + v7 + m12
    v13 = rotr(v13 ^ v2, 8)
    v8 = v8 + v13
    v7 = rotr(v7 ^ v8, 7)
    v3 = v3 + v4 + m13
    v14 = rotr(v14 ^ v3, 16)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 12)
    v3 = v3 + v4 + m0
    v14 = rotr(v14 ^ v3, 8)
    v9 = v9 + v14
    v4 = rotr(v4 ^ v9, 7)
    s.h[0] ^= v0 ^ v8
    s.h[1] ^= v1 ^ v9
    s.h[2] ^= v2 ^ v10
    s.h[3] ^= v3 ^ v11
    s.h[4] ^= v4 ^ v12
    s.h[5] ^= v5 ^ v13
    s.h[6] ^= v6 ^ v14
    s.h[7] ^= v7 ^ v15


cdef inline void b2s_init(b2s* s) noexcept nogil:
    """Unkeyed BLAKE2s-256 (parameter block: digest length 32, fanout 1, depth 1)."""
    memcpy(s.h, IV, sizeof(IV))
    s.h[0] ^= 0x01010000 ^ OUT
    s.t = 0
    s.buflen = 0


cdef void b2s_update(b2s* s, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t take
    # The last block is compressed by final (with the last-block flag), so a full buffer
    # is only compressed once more input follows.
    while n > 0:
        if s.buflen == BLOCK:
            s.t += BLOCK
            compress(s, s.buf, False)
            s.buflen = 0
        take = BLOCK - s.buflen
        if take > n:
            take = n
        memcpy(s.buf + s.buflen, p, take)
        s.buflen += take
        p += take
        n -= take


cdef void b2s_final(b2s* s, uint8_t* out) noexcept nogil:
    cdef int i
    s.t += s.buflen
    memset(s.buf + s.buflen, 0, BLOCK - s.buflen)
    compress(s, s.buf, True)
    for i in range(8):
        store32(out + 4 * i, s.h[i])


cdef struct hmac_key:
    b2s inner
    b2s outer


cdef void hmac_init(hmac_key* k, const uint8_t* key, Py_ssize_t keylen) noexcept nogil:
    """Absorb the padded key into both states; ``keylen`` <= BLOCK."""
    cdef uint8_t pad[64]
    cdef int i
    memset(pad, 0, BLOCK)
    if keylen:
        memcpy(pad, key, keylen)
    for i in range(BLOCK):
        pad[i] ^= 0x36
    b2s_init(&k.inner)
    b2s_update(&k.inner, pad, BLOCK)
    for i in range(BLOCK):
        pad[i] ^= 0x36 ^ 0x5C
    b2s_init(&k.outer)
    b2s_update(&k.outer, pad, BLOCK)
    memset(pad, 0, BLOCK)


cdef void hmac_run(const hmac_key* k, const uint8_t* a, Py_ssize_t an,
                   const uint8_t* b, Py_ssize_t bn, uint8_t* out) noexcept nogil:
    """HMAC(key, a || b) from the keyed states (copied, so the key is reusable)."""
    cdef b2s s
    cdef uint8_t inner[32]
    s = k.inner
    b2s_update(&s, a, an)
    b2s_update(&s, b, bn)
    b2s_final(&s, inner)
    s = k.outer
    b2s_update(&s, inner, OUT)
    b2s_final(&s, out)


cdef inline void absorb_pad(b2s* s) noexcept nogil:
    """Compress a buffered full block now; only valid if more input will follow."""
    s.t += BLOCK
    compress(s, s.buf, False)
    s.buflen = 0


cdef void kdf_c(const uint8_t* key, Py_ssize_t keylen, const uint8_t* data, Py_ssize_t n,
                int outputs, uint8_t* out) noexcept nogil:
    """HKDF-BLAKE2s with empty info: ``outputs`` x 32 bytes into ``out``; keylen <= BLOCK."""
    cdef hmac_key k
    cdef uint8_t t0[32]
    cdef uint8_t ctr
    cdef int i
    hmac_init(&k, key, keylen)
    hmac_run(&k, data, n, NULL, 0, t0)
    hmac_init(&k, t0, OUT)
    # Every HMAC under t0 has input after the pad block (at least the counter byte), so
    # the pad blocks can be compressed once here instead of once per output.
    absorb_pad(&k.inner)
    absorb_pad(&k.outer)
    ctr = 1
    hmac_run(&k, NULL, 0, &ctr, 1, out)
    for i in range(1, outputs):
        ctr = <uint8_t>(i + 1)
        hmac_run(&k, out + OUT * (i - 1), OUT, &ctr, 1, out + OUT * i)
    memset(t0, 0, OUT)
    memset(&k, 0, sizeof(k))


cdef bytes _long_key(const uint8_t[::1] key):
    cdef b2s s
    cdef uint8_t digest[32]
    b2s_init(&s)
    b2s_update(&s, &key[0] if key.shape[0] else NULL, key.shape[0])
    b2s_final(&s, digest)
    return digest[:OUT]


cdef inline void mac_c(const uint8_t* key, Py_ssize_t keylen, const uint8_t* data,
                       Py_ssize_t n, uint8_t* out) noexcept nogil:
    """Keyed BLAKE2s with a 16-byte digest (RFC 7693 §3.3: the key is the first block)."""
    cdef b2s s
    cdef uint8_t block[64]
    cdef uint8_t digest[32]
    memcpy(s.h, IV, sizeof(IV))
    s.h[0] ^= 0x01010000 ^ (<uint32_t>keylen << 8) ^ 16
    s.t = 0
    s.buflen = 0
    if keylen:
        memset(block, 0, BLOCK)
        memcpy(block, key, keylen)
        b2s_update(&s, block, BLOCK)
        memset(block, 0, BLOCK)
    b2s_update(&s, data, n)
    b2s_final(&s, digest)
    memcpy(out, digest, 16)


def mac(const uint8_t[::1] key, const uint8_t[::1] data):
    """MAC(key, data) of the whitepaper: keyed BLAKE2s-128 (mac1, mac2, cookies)."""
    cdef uint8_t out[16]
    if key.shape[0] > 32:
        raise ValueError(f"MAC key must be at most 32 bytes, got {key.shape[0]}")
    mac_c(&key[0] if key.shape[0] else NULL, key.shape[0],
          &data[0] if data.shape[0] else NULL, data.shape[0], out)
    return out[:16]


def check_mac1(const uint8_t[::1] key, const uint8_t[::1] msg):
    """Whether the 16 bytes 32 from the end of ``msg`` are MAC(key, everything before)."""
    cdef uint8_t out[16]
    cdef uint8_t diff = 0
    cdef Py_ssize_t off = msg.shape[0] - 32, i
    if key.shape[0] > 32:
        raise ValueError(f"MAC key must be at most 32 bytes, got {key.shape[0]}")
    if off < 0:
        return False
    mac_c(&key[0] if key.shape[0] else NULL, key.shape[0], &msg[0] if off else NULL, off, out)
    for i in range(16):  # constant time, as hmac.compare_digest
        diff |= out[i] ^ msg[off + i]
    return diff == 0


def blake2s(const uint8_t[::1] data):
    """Unkeyed BLAKE2s-256 (tests compare it with hashlib)."""
    cdef b2s s
    cdef uint8_t digest[32]
    b2s_init(&s)
    b2s_update(&s, &data[0] if data.shape[0] else NULL, data.shape[0])
    b2s_final(&s, digest)
    return digest[:OUT]


def hash2(const uint8_t[::1] a, const uint8_t[::1] b):
    """BLAKE2s-256(a || b)."""
    cdef b2s s
    cdef uint8_t digest[32]
    b2s_init(&s)
    b2s_update(&s, &a[0] if a.shape[0] else NULL, a.shape[0])
    b2s_update(&s, &b[0] if b.shape[0] else NULL, b.shape[0])
    b2s_final(&s, digest)
    return digest[:OUT]


def hmac_blake2s(key, const uint8_t[::1] data):
    """RFC 2104 HMAC over BLAKE2s-256."""
    cdef const uint8_t[::1] k
    cdef hmac_key st
    cdef uint8_t out[32]
    if len(key) > BLOCK:
        key = _long_key(key)
    k = key
    hmac_init(&st, &k[0] if k.shape[0] else NULL, k.shape[0])
    hmac_run(&st, &data[0] if data.shape[0] else NULL, data.shape[0], NULL, 0, out)
    memset(&st, 0, sizeof(st))
    return out[:OUT]


def kdf(int n, key, const uint8_t[::1] data):
    """``KDF_n(key, data)`` of the whitepaper (n = 1..3), as a tuple of 32-byte keys."""
    cdef const uint8_t[::1] k
    cdef uint8_t out[96]
    if not 1 <= n <= 3:
        raise ValueError(f"KDF outputs must be 1..3, got {n}")
    if len(key) > BLOCK:
        key = _long_key(key)
    k = key
    kdf_c(&k[0] if k.shape[0] else NULL, k.shape[0],
          &data[0] if data.shape[0] else NULL, data.shape[0], n, out)
    if n == 1:
        result = (out[:OUT],)
    elif n == 2:
        result = (out[:OUT], out[OUT:2 * OUT])
    else:
        result = (out[:OUT], out[OUT:2 * OUT], out[2 * OUT:3 * OUT])
    memset(out, 0, sizeof(out))
    return result


# ---------------------------------------------------------------- the responder's chain
#
# Noise_IKpsk2 for the responder in three calls, split where an X25519 result or a peer
# lookup is needed (the caller does those with ``cryptography``):
#
#   initiation_static(h0, ck0, body, es)   e, es, decrypt s       -> (s, h, ck) | None
#   initiation_payload(h, ck, body, ss)    ss, decrypt timestamp  -> (payload, h, ck) | None
#   response(h, ck, e, ee, se, psk)        e, ee, se, psk, seal   -> (enc(empty), Tsend, Trecv)
#
# Each AEAD key seals or opens exactly one message (nonce 0, aad h), as in noise.py.
# ``consume_initiation`` runs the first two (and the peer lookup between them) in one call.
# Arguments are taken as bytes objects (anything else is copied once): a handshake passes
# some twenty 32-byte values, and a typed memoryview costs about a tenth of a KDF each.

from dataplane._libcrypto cimport (
    EVP_CIPHER_CTX, EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_ctrl,
    EVP_CTRL_AEAD_GET_TAG, EVP_CTRL_AEAD_SET_TAG, EVP_chacha20_poly1305,
    EVP_CipherInit_ex2, EVP_EncryptUpdate, EVP_EncryptFinal_ex,
    EVP_DecryptUpdate, EVP_DecryptFinal_ex, OPENSSL_cleanse,
)

cdef enum:
    TAG = 16
    INIT_BODY = 108        # e (32) | enc(s) (32 + 16) | enc(timestamp) (12 + 16)

cdef uint8_t ZERO_NONCE[12]
memset(ZERO_NONCE, 0, 12)
# One context for every handshake AEAD, re-keyed by each Init: callers hold the GIL for the
# whole call (no nogil section here), so no two calls ever share it at once.
cdef EVP_CIPHER_CTX* aead_ctx = EVP_CIPHER_CTX_new()
# The cipher is set once; each seal/open then only loads a key and the nonce (re-selecting
# the cipher would re-fetch it from the provider every time).
cdef bint aead_ready = aead_ctx != NULL and EVP_CipherInit_ex2(
    aead_ctx, EVP_chacha20_poly1305(), NULL, NULL, 1, NULL) == 1


cdef int aead(bint seal, const uint8_t* key, const uint8_t* h, const uint8_t* src,
              int n, uint8_t* dst) noexcept nogil:
    """ChaCha20-Poly1305, nonce 0, aad ``h`` (32 bytes). Seal: ``n`` plaintext bytes to
    ``n + 16``; open: ``n`` >= 16 ciphertext bytes to ``n - 16``. 1 on success, 0 if the tag
    is wrong, -1 if OpenSSL failed."""
    cdef EVP_CIPHER_CTX* ctx = aead_ctx
    cdef int outl = 0, ok = 0
    cdef uint8_t tag[16]
    if not aead_ready:
        return -1
    if seal:
        if (EVP_CipherInit_ex2(ctx, NULL, key, ZERO_NONCE, 1, NULL) == 1
                and EVP_EncryptUpdate(ctx, NULL, &outl, h, OUT) == 1
                and (n == 0 or EVP_EncryptUpdate(ctx, dst, &outl, src, n) == 1)
                and EVP_EncryptFinal_ex(ctx, tag, &outl) == 1
                and EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG, dst + n) == 1):
            ok = 1
        else:
            ok = -1
    else:
        n -= TAG
        memcpy(tag, src + n, TAG)
        if (EVP_CipherInit_ex2(ctx, NULL, key, ZERO_NONCE, 0, NULL) == 1
                and EVP_DecryptUpdate(ctx, NULL, &outl, h, OUT) == 1
                and (n == 0 or EVP_DecryptUpdate(ctx, dst, &outl, src, n) == 1)
                and EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG, tag) == 1):
            ok = 1 if EVP_DecryptFinal_ex(ctx, tag, &outl) == 1 else 0
        else:
            ok = -1
    return ok


cdef inline void mix_hash(uint8_t* h, const uint8_t* data, Py_ssize_t n) noexcept nogil:
    cdef b2s s
    b2s_init(&s)
    b2s_update(&s, h, OUT)
    b2s_update(&s, data, n)
    b2s_final(&s, h)


cdef inline bytes _as_bytes(o):
    """``o`` itself if it is bytes (no buffer acquisition: each typed memoryview costs about
    0.2 µs, a tenth of a KDF), else a copy of its buffer (TypeError if it has none)."""
    return <bytes>o if type(o) is bytes else bytes(memoryview(o))


cdef inline const uint8_t* _fixed(bytes b, Py_ssize_t n, str what) except NULL:
    if len(b) != n:
        raise ValueError(f"{what} must be {n} bytes, got {len(b)}")
    return <const uint8_t*><const char*>b


cdef int static_c(const uint8_t* h0, const uint8_t* ck0, const uint8_t* body,
                  const uint8_t* es, uint8_t* h, uint8_t* ck, uint8_t* s) noexcept nogil:
    """e, es, open s: ``h``/``ck`` advance, ``s`` gets the static key. ``aead``'s result."""
    cdef uint8_t keys[64]
    cdef int ok
    memcpy(h, h0, OUT)
    mix_hash(h, body, OUT)
    kdf_c(ck0, OUT, body, OUT, 1, ck)
    kdf_c(ck, OUT, es, OUT, 2, keys)
    ok = aead(False, keys + OUT, h, body + OUT, OUT + TAG, s)
    memcpy(ck, keys, OUT)
    OPENSSL_cleanse(keys, sizeof(keys))
    if ok == 1:
        mix_hash(h, body + OUT, OUT + TAG)
    return ok


cdef int payload_c(uint8_t* h, uint8_t* ck, const uint8_t* enc, Py_ssize_t n,
                   const uint8_t* ss, uint8_t* payload) noexcept nogil:
    """ss, open the ``n``-byte encrypted payload: ``h``/``ck`` advance. ``aead``'s result."""
    cdef uint8_t keys[64]
    cdef int ok
    kdf_c(ck, OUT, ss, OUT, 2, keys)
    ok = aead(False, keys + OUT, h, enc, <int>n, payload)
    if ok == 1:
        mix_hash(h, enc, n)
        memcpy(ck, keys, OUT)
    OPENSSL_cleanse(keys, sizeof(keys))
    return ok


cdef inline int _checked(int ok) except -1:
    if ok < 0:
        raise MemoryError("OpenSSL ChaCha20-Poly1305 failed")
    return ok


def initiation_static(h0, ck0, body, es):
    """Mix e and es, open the initiator's static key: (static, h, ck), or None (bad tag)."""
    cdef bytes h0b = _as_bytes(h0), ck0b = _as_bytes(ck0), bb = _as_bytes(body)
    cdef bytes esb = _as_bytes(es)
    cdef uint8_t h[32]
    cdef uint8_t ck[32]
    cdef uint8_t s[32]
    if len(bb) < OUT + OUT + TAG:
        raise ValueError("initiation body has the wrong length")
    if not _checked(static_c(_fixed(h0b, OUT, "h"), _fixed(ck0b, OUT, "ck"),
                             <const uint8_t*><const char*>bb, _fixed(esb, OUT, "es"),
                             h, ck, s)):
        OPENSSL_cleanse(ck, sizeof(ck))
        return None
    return s[:OUT], h[:OUT], ck[:OUT]


def initiation_payload(h_in, ck_in, body, ss):
    """Mix ss, open the payload (the timestamp): (payload, h, ck), or None (bad tag)."""
    cdef bytes hb = _as_bytes(h_in), ckb = _as_bytes(ck_in), bb = _as_bytes(body)
    cdef bytes ssb = _as_bytes(ss)
    cdef uint8_t h[32]
    cdef uint8_t ck[32]
    cdef uint8_t payload[INIT_BODY]
    cdef Py_ssize_t off = OUT + OUT + TAG
    cdef Py_ssize_t n = len(bb) - off
    if n < TAG or n > INIT_BODY:
        raise ValueError("initiation body has the wrong length")
    memcpy(h, _fixed(hb, OUT, "h"), OUT)
    memcpy(ck, _fixed(ckb, OUT, "ck"), OUT)
    if not _checked(payload_c(h, ck, <const uint8_t*><const char*>bb + off, n,
                              _fixed(ssb, OUT, "ss"), payload)):
        OPENSSL_cleanse(ck, sizeof(ck))
        return None
    result = (payload[:n - TAG], h[:OUT], ck[:OUT])
    OPENSSL_cleanse(ck, sizeof(ck))
    return result


def response(h_in, ck_in, e, ee, se, psk):
    """Mix e, ee, se and psk, seal the empty payload: (enc(empty), T_send, T_recv) of the
    responder (T_send = T_r2i, the second output of the final split)."""
    cdef bytes hb = _as_bytes(h_in), ckb = _as_bytes(ck_in), eb = _as_bytes(e)
    cdef bytes eeb = _as_bytes(ee), seb = _as_bytes(se), pskb = _as_bytes(psk)
    cdef const uint8_t* hp = _fixed(hb, OUT, "h")
    cdef const uint8_t* ckp = _fixed(ckb, OUT, "ck")
    cdef const uint8_t* ep = _fixed(eb, OUT, "e")
    cdef const uint8_t* eep = _fixed(eeb, OUT, "ee")
    cdef const uint8_t* sep = _fixed(seb, OUT, "se")
    cdef const uint8_t* pskp = _fixed(pskb, OUT, "psk")
    cdef uint8_t h[32]
    cdef uint8_t ck[32]
    cdef uint8_t keys[96]
    cdef uint8_t sealed[16]
    cdef int ok
    memcpy(h, hp, OUT)
    mix_hash(h, ep, OUT)
    kdf_c(ckp, OUT, ep, OUT, 1, ck)
    kdf_c(ck, OUT, eep, OUT, 1, ck)
    kdf_c(ck, OUT, sep, OUT, 1, ck)
    kdf_c(ck, OUT, pskp, OUT, 3, keys)       # ck, tau, k
    memcpy(ck, keys, OUT)
    mix_hash(h, keys + OUT, OUT)
    ok = aead(True, keys + 2 * OUT, h, NULL, 0, sealed)
    if ok < 0:
        OPENSSL_cleanse(keys, sizeof(keys))
        OPENSSL_cleanse(ck, sizeof(ck))
        raise MemoryError("OpenSSL ChaCha20-Poly1305 failed")
    kdf_c(ck, OUT, NULL, 0, 2, keys)              # T_i2r, T_r2i
    result = (sealed[:TAG], keys[OUT:2 * OUT], keys[:OUT])
    OPENSSL_cleanse(keys, sizeof(keys))
    OPENSSL_cleanse(ck, sizeof(ck))
    return result


def consume_initiation(h0, ck0, body, es, static_static):
    """``initiation_static``, the lookup ``static_static(s)`` (the precomputed DH with that
    peer, or None) and ``initiation_payload`` in one call: (s, payload, h, ck), or a str
    saying why the initiation is refused. The chain stays in C buffers between the steps."""
    cdef bytes h0b = _as_bytes(h0), ck0b = _as_bytes(ck0), bb = _as_bytes(body)
    cdef bytes esb = _as_bytes(es)
    cdef const uint8_t* h0p = _fixed(h0b, OUT, "h")
    cdef const uint8_t* ck0p = _fixed(ck0b, OUT, "ck")
    cdef const uint8_t* esp = _fixed(esb, OUT, "es")
    cdef const uint8_t* bp = <const uint8_t*><const char*>bb
    cdef Py_ssize_t off = OUT + OUT + TAG
    cdef Py_ssize_t n = len(bb) - off
    cdef uint8_t h[32]
    cdef uint8_t ck[32]
    cdef uint8_t s[32]
    cdef uint8_t payload[INIT_BODY]
    cdef uint8_t acc = 0
    cdef Py_ssize_t i
    cdef bytes ssb
    if n < TAG or n > INIT_BODY:
        raise ValueError("initiation body has the wrong length")
    if not _checked(static_c(h0p, ck0p, bp, esp, h, ck, s)):
        OPENSSL_cleanse(ck, sizeof(ck))
        return "handshake AEAD authentication failed"
    remote_static = s[:OUT]
    ss = static_static(remote_static)
    if ss is None:
        OPENSSL_cleanse(ck, sizeof(ck))
        return "initiation from an unknown static key"
    ssb = _as_bytes(ss)
    cdef const uint8_t* ssp = _fixed(ssb, OUT, "ss")
    for i in range(OUT):  # constant time, as hmac.compare_digest
        acc |= ssp[i]
    if acc == 0:
        OPENSSL_cleanse(ck, sizeof(ck))
        return "all-zero static-static X25519 result"
    if not _checked(payload_c(h, ck, bp + off, n, ssp, payload)):
        OPENSSL_cleanse(ck, sizeof(ck))
        return "handshake AEAD authentication failed"
    result = (remote_static, payload[:n - TAG], h[:OUT], ck[:OUT])
    OPENSSL_cleanse(ck, sizeof(ck))
    return result
