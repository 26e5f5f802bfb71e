# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
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

cdef uint8_t SIGMA[10][16]
SIGMA[0][:] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
SIGMA[1][:] = [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3]
SIGMA[2][:] = [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4]
SIGMA[3][:] = [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8]
SIGMA[4][:] = [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13]
SIGMA[5][:] = [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9]
SIGMA[6][:] = [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11]
SIGMA[7][:] = [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10]
SIGMA[8][:] = [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5]
SIGMA[9][:] = [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0]


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


cdef inline void G(uint32_t* v, int a, int b, int c, int d, uint32_t x, uint32_t y) noexcept nogil:
    v[a] = v[a] + v[b] + x
    v[d] = rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = rotr(v[b] ^ v[c], 12)
    v[a] = v[a] + v[b] + y
    v[d] = rotr(v[d] ^ v[a], 8)
    v[c] = v[c] + v[d]
    v[b] = rotr(v[b] ^ v[c], 7)


cdef void compress(b2s* s, const uint8_t* block, bint last) noexcept nogil:
    cdef uint32_t m[16]
    cdef uint32_t v[16]
    cdef int i
    cdef const uint8_t* z
    for i in range(16):
        m[i] = load32(block + 4 * i)
    for i in range(8):
        v[i] = s.h[i]
        v[i + 8] = IV[i]
    v[12] ^= <uint32_t>s.t
    v[13] ^= <uint32_t>(s.t >> 32)
    if last:
        v[14] = ~v[14]
    for i in range(10):
        z = SIGMA[i]
        G(v, 0, 4, 8, 12, m[z[0]], m[z[1]])
        G(v, 1, 5, 9, 13, m[z[2]], m[z[3]])
        G(v, 2, 6, 10, 14, m[z[4]], m[z[5]])
        G(v, 3, 7, 11, 15, m[z[6]], m[z[7]])
        G(v, 0, 5, 10, 15, m[z[8]], m[z[9]])
        G(v, 1, 6, 11, 12, m[z[10]], m[z[11]])
        G(v, 2, 7, 8, 13, m[z[12]], m[z[13]])
        G(v, 3, 4, 9, 14, m[z[14]], m[z[15]])
    for i in range(8):
        s.h[i] ^= v[i] ^ v[i + 8]


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
