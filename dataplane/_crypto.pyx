# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""The WireGuard transport transform: seal and open whole PacketBatches in place.

Theory of operation: a session has one ``SendKey`` and one ``ReceiveKey``. Each holds an
OpenSSL ``EVP_CIPHER_CTX`` keyed once for ChaCha20-Poly1305; per packet only the nonce
changes. ``seal`` pads every alive slot to a multiple of 16 (capped at the MTU), pushes the
16-byte data header (type 4, receiver index, counter) into the headroom and appends the tag
into the tailroom. ``open`` checks header, counter limit and replay window, authenticates
and decrypts in place, and only then marks the counter seen, so a forged packet can never
move the window. Both loops run with the GIL released; a per-slot status says what went
wrong instead of an exception.

A key object is not thread-safe (its cipher context is mutable state). It refuses, with a
``RuntimeError``, to be entered by a second thread while a batch is in flight; distinct
keys run truly in parallel.

Also here: the replay window (RFC 6479 ring of 8192 bits, 8128 usable, as wireguard-go and
Linux) and the one-shot HChaCha20 / XChaCha20-Poly1305 used by cookie replies
(draft-irtf-cfrg-xchacha-03).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from dataplane._batch cimport (
    PacketBatch, ST_OK, ST_TOO_SHORT, ST_BAD_TYPE, ST_REPLAY, ST_BAD_TAG, ST_COUNTER_LIMIT,
    ST_NO_ROOM, ST_CRYPTO_ERROR,
)
from dataplane._libcrypto cimport (
    EVP_CIPHER, EVP_CIPHER_fetch, EVP_CIPHER_CTX, EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_ctrl,
    EVP_chacha20_poly1305, EVP_EncryptInit_ex, EVP_EncryptUpdate, EVP_EncryptFinal_ex,
    EVP_DecryptInit_ex, EVP_DecryptUpdate, EVP_DecryptFinal_ex,
    EVP_CTRL_AEAD_GET_TAG, EVP_CTRL_AEAD_SET_TAG, OPENSSL_cleanse,
    EVP_CipherInit_ex2, EVP_CIPHER_CTX_get_params, EVP_CIPHER_CTX_set_params, OSSL_PARAM,
    OSSL_PARAM_construct_octet_string, OSSL_PARAM_construct_end, OSSL_CIPHER_PARAM_AEAD_TAG,
)

# Whitepaper §6.1: the last usable counter is 2^64 - 2^13 - 1 (checked on send and receive).
cdef uint64_t C_REJECT_AFTER_MESSAGES = 0xFFFFFFFFFFFFDFFFULL

cdef enum:
    MESSAGE_TRANSPORT_DATA = 4
    HEADER_LEN = 16
    TAG_LEN = 16
    KEY_LEN = 32
    WINDOW_BITS = (RING_WORDS - 1) * 64

# Fetched once: passing the legacy EVP_chacha20_poly1305() to an init makes OpenSSL 3 look
# the provider implementation up again every time (a handshake creates two keys).
cdef const EVP_CIPHER* CHACHA20_POLY1305 = EVP_CIPHER_fetch(NULL, b"ChaCha20-Poly1305", NULL)
if CHACHA20_POLY1305 == NULL:
    CHACHA20_POLY1305 = EVP_chacha20_poly1305()

REJECT_AFTER_MESSAGES = C_REJECT_AFTER_MESSAGES
REPLAY_WINDOW_BITS = WINDOW_BITS


cdef inline void store_le32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void store_le64(uint8_t* p, uint64_t v) noexcept nogil:
    store_le32(p, <uint32_t>v)
    store_le32(p + 4, <uint32_t>(v >> 32))


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | \
        (<uint32_t>p[3] << 24)


cdef inline uint64_t load_le64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>load_le32(p)) | ((<uint64_t>load_le32(p + 4)) << 32)


cdef inline void wg_nonce(uint8_t* nonce, uint64_t counter) noexcept nogil:
    memset(nonce, 0, 4)
    store_le64(nonce + 4, counter)


# ---------------------------------------------------------------------------------------
# Replay window

cdef inline bint replay_check(const replay_t* w, uint64_t c) noexcept nogil:
    if c > w.last:
        return True
    if w.last - c >= WINDOW_BITS:
        return False
    return (w.ring[(c >> 6) & (RING_WORDS - 1)] >> (c & 63)) & 1 == 0


cdef inline void replay_update(replay_t* w, uint64_t c) noexcept nogil:
    # Caller has checked c. Words between the old and the new head are recycled.
    cdef uint64_t cur, new, gap, k
    if c > w.last:
        cur = w.last >> 6
        new = c >> 6
        gap = new - cur
        if gap > RING_WORDS:
            gap = RING_WORDS
        for k in range(1, gap + 1):
            w.ring[(cur + k) & (RING_WORDS - 1)] = 0
        w.last = c
    w.ring[(c >> 6) & (RING_WORDS - 1)] |= (<uint64_t>1) << (c & 63)


cdef class ReplayWindow:
    """Sliding window of received counters (RFC 6479), 8128 usable bits.

    ``check`` only asks; ``update`` marks a counter seen and returns False (changing
    nothing) if ``check`` would have refused it. A fresh window accepts counter 0 once.
    """

    def __cinit__(self):
        memset(&self.w, 0, sizeof(replay_t))

    @property
    def last(self):
        return self.w.last

    def check(self, uint64_t counter):
        return replay_check(&self.w, counter)

    def update(self, uint64_t counter):
        if not replay_check(&self.w, counter):
            return False
        replay_update(&self.w, counter)
        return True

    def reset(self):
        memset(&self.w, 0, sizeof(replay_t))


# ---------------------------------------------------------------------------------------
# Keys

cdef class _Key:
    def __cinit__(self, key, *args, **kwargs):
        self.ctx = NULL

    def __init__(self, key):
        cdef const uint8_t[::1] k = memoryview(key).cast("B")
        if k.shape[0] != KEY_LEN:
            raise ValueError(f"a transport key is 32 bytes, got {k.shape[0]}")
        self.ctx = EVP_CIPHER_CTX_new()
        if self.ctx == NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        cdef int ok = EVP_CipherInit_ex2(self.ctx, CHACHA20_POLY1305, &k[0], NULL,
                                         1 if self.encrypt else 0, NULL)
        if ok != 1:
            raise RuntimeError("OpenSSL refused the ChaCha20-Poly1305 key")

    def __dealloc__(self):
        if self.ctx != NULL:
            # EVP_CIPHER_CTX_free cleanses the key schedule.
            EVP_CIPHER_CTX_free(self.ctx)
            self.ctx = NULL

    cdef int _enter(self) except -1:
        # Runs with the GIL held, so the test-and-set cannot race with another thread.
        if self.busy:
            raise RuntimeError(
                f"{type(self).__name__} is in use by another thread; use one key per thread")
        if self.ctx == NULL:
            raise RuntimeError(f"{type(self).__name__} was not initialised")
        self.busy = True
        return 0

    def __repr__(self):
        return f"<{type(self).__name__}>"  # never show key material


cdef inline int tag_param(EVP_CIPHER_CTX* ctx, uint8_t* tag, bint get) noexcept nogil:
    cdef OSSL_PARAM params[2]
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_LEN)
    params[1] = OSSL_PARAM_construct_end()
    if get:
        return EVP_CIPHER_CTX_get_params(ctx, params)
    return EVP_CIPHER_CTX_set_params(ctx, params)


cdef inline int seal_one_c(EVP_CIPHER_CTX* ctx, uint8_t* p, Py_ssize_t n, uint64_t counter,
                           uint32_t receiver) noexcept nogil:
    """Encrypt ``p[16:16+n]`` in place, write the header at ``p`` and the tag after."""
    cdef uint8_t nonce[12]
    cdef int outl = 0
    wg_nonce(nonce, counter)
    p[0] = MESSAGE_TRANSPORT_DATA
    p[1] = 0
    p[2] = 0
    p[3] = 0
    store_le32(p + 4, receiver)
    store_le64(p + 8, counter)
    if EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 1, NULL) != 1:
        return 0
    if n and EVP_EncryptUpdate(ctx, p + HEADER_LEN, &outl, p + HEADER_LEN, <int>n) != 1:
        return 0
    if EVP_EncryptFinal_ex(ctx, p + HEADER_LEN + n, &outl) != 1:
        return 0
    return tag_param(ctx, p + HEADER_LEN + n, True) == 1


cdef inline Py_ssize_t padded_length(Py_ssize_t n, Py_ssize_t mtu) noexcept nogil:
    # Whitepaper §5.4.6: pad to 16 but never past the MTU (a full-MTU packet is not padded).
    cdef Py_ssize_t padded = (n + 15) & ~(<Py_ssize_t>15)
    if n >= mtu:
        return n
    if padded > mtu:
        return mtu
    return padded


cdef class SendKey(_Key):
    """Sending half of a session: seals batches with consecutive counters."""

    def __cinit__(self, key, *args, **kwargs):
        self.encrypt = True

    def seal(self, PacketBatch batch not None, uint32_t receiver_index, uint64_t counter,
             Py_ssize_t mtu=1420, peer=None):
        """Seal every alive slot (only those with ``peers[i] == peer`` if given) in place.

        Returns the next unused counter. A slot without head/tail room gets ST_NO_ROOM; once
        the counter reaches REJECT_AFTER_MESSAGES the remaining slots get ST_COUNTER_LIMIT.
        """
        if mtu <= 0:
            raise ValueError(f"mtu must be positive, got {mtu}")
        cdef int want = -1 if peer is None else peer
        self._enter()
        try:
            # Reads and writes only this batch's slab/metadata and this key's ctx; the caller
            # owns the batch for the duration of the call.
            with nogil:
                counter = seal_batch(self.ctx, batch, receiver_index, counter, mtu, want)
        finally:
            self.busy = False
        return counter

    def seal_one(self, uint32_t receiver_index, uint64_t counter, plaintext,
                 Py_ssize_t mtu=1420):
        """Seal one message (e.g. a keepalive) and return the datagram as bytes."""
        cdef const uint8_t[::1] src = memoryview(plaintext).cast("B")
        cdef Py_ssize_t n = src.shape[0]
        if counter >= C_REJECT_AFTER_MESSAGES:
            raise ValueError("counter at or past REJECT_AFTER_MESSAGES")
        cdef Py_ssize_t padded = padded_length(n, mtu)
        buf = bytearray(HEADER_LEN + padded + TAG_LEN)
        cdef uint8_t[::1] out = buf
        if n:
            memcpy(&out[HEADER_LEN], &src[0], n)
        self._enter()
        try:
            ok = seal_one_c(self.ctx, &out[0], padded, counter, receiver_index)
        finally:
            self.busy = False
        if not ok:
            raise RuntimeError("OpenSSL failed to seal")
        return bytes(buf)


cdef class ReceiveKey(_Key):
    """Receiving half of a session: opens the batch slots addressed to its index."""

    def __cinit__(self, key, *args, **kwargs):
        self.encrypt = False

    def open(self, PacketBatch batch not None, ReplayWindow window not None,
             uint32_t receiver_index, int peer=-1):
        """Open, in place, every alive unassigned data slot for ``receiver_index``.

        Considered: slots with status OK, ``peers[i] == -1``, type 4 and this receiver
        index. On success the slot's view becomes the (still padded) plaintext and
        ``peers[i] = peer``; otherwise its status says why. Returns how many opened.
        """
        cdef Py_ssize_t opened
        self._enter()
        try:
            # Reads/writes this batch, this key's ctx and this session's window, all owned
            # by the caller for the duration of the call.
            with nogil:
                opened = open_batch(self.ctx, &window.w, batch, receiver_index, peer)
        finally:
            self.busy = False
        return opened


cdef uint64_t seal_batch(EVP_CIPHER_CTX* ctx, PacketBatch batch, uint32_t receiver_index,
                         uint64_t counter, Py_ssize_t mtu, int want) noexcept nogil:
    """Seal the alive slots (of peer ``want``, or all if -1); returns the next counter."""
    cdef Py_ssize_t i, n, padded, off
    cdef Py_ssize_t count = batch.count, slot = batch.slot_size
    cdef uint8_t* p
    for i in range(count):
        if batch.status[i] != ST_OK:
            continue
        if want >= 0 and batch.peers[i] != want:
            continue
        if counter >= C_REJECT_AFTER_MESSAGES:
            batch.status[i] = ST_COUNTER_LIMIT
            continue
        n = batch.lengths[i]
        off = batch.offsets[i]
        padded = padded_length(n, mtu)
        if off < HEADER_LEN or off + padded + TAG_LEN > slot:
            batch.status[i] = ST_NO_ROOM
            continue
        p = batch.slot_ptr(i) + off
        if padded > n:
            memset(p + n, 0, padded - n)
        if not seal_one_c(ctx, p - HEADER_LEN, padded, counter, receiver_index):
            batch.status[i] = ST_CRYPTO_ERROR
            continue
        batch.offsets[i] = <uint32_t>(off - HEADER_LEN)
        batch.lengths[i] = <uint32_t>(HEADER_LEN + padded + TAG_LEN)
        counter += 1
    return counter


cdef Py_ssize_t open_batch(EVP_CIPHER_CTX* ctx, replay_t* w, PacketBatch batch,
                           uint32_t receiver_index, int peer) noexcept nogil:
    """Open the alive unassigned type-4 slots for ``receiver_index``; returns how many."""
    cdef Py_ssize_t i, n, off, ct
    cdef Py_ssize_t count = batch.count
    cdef Py_ssize_t opened = 0
    cdef uint8_t* p
    cdef uint64_t counter
    cdef uint8_t nonce[12]
    cdef int outl
    for i in range(count):
        if batch.status[i] != ST_OK or batch.peers[i] != -1:
            continue
        n = batch.lengths[i]
        if n < 8:
            continue
        p = batch.pkt_ptr(i)
        if p[0] != MESSAGE_TRANSPORT_DATA or load_le32(p + 4) != receiver_index:
            continue
        if p[1] | p[2] | p[3]:
            batch.status[i] = ST_BAD_TYPE
            continue
        if n < HEADER_LEN + TAG_LEN:
            batch.status[i] = ST_TOO_SHORT
            continue
        counter = load_le64(p + 8)
        if counter >= C_REJECT_AFTER_MESSAGES:
            batch.status[i] = ST_COUNTER_LIMIT
            continue
        if not replay_check(w, counter):
            batch.status[i] = ST_REPLAY
            continue
        ct = n - HEADER_LEN - TAG_LEN
        wg_nonce(nonce, counter)
        outl = 0
        if (EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 0, NULL) != 1
                or (ct and EVP_DecryptUpdate(ctx, p + HEADER_LEN, &outl,
                                             p + HEADER_LEN, <int>ct) != 1)
                or tag_param(ctx, p + HEADER_LEN + ct, False) != 1
                or EVP_DecryptFinal_ex(ctx, p + HEADER_LEN + ct, &outl) != 1):
            batch.status[i] = ST_BAD_TAG
            continue
        replay_update(w, counter)
        off = batch.offsets[i]
        batch.offsets[i] = <uint32_t>(off + HEADER_LEN)
        batch.lengths[i] = <uint32_t>ct
        batch.peers[i] = peer
        opened += 1
    return opened


def receiver_indices(PacketBatch batch not None):
    """Distinct receiver indices of the alive, unassigned type-4 slots, in first-seen order."""
    cdef Py_ssize_t i, j, k = 0
    cdef Py_ssize_t count = batch.count
    cdef uint32_t r
    cdef const uint8_t* p
    cdef uint32_t[::1] seen = memoryview(bytearray(4 * max(count, 1))).cast("I")
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] != ST_OK or batch.peers[i] != -1 or batch.lengths[i] < 8:
                continue
            p = batch.pkt_ptr(i)
            if p[0] != MESSAGE_TRANSPORT_DATA:
                continue
            r = load_le32(p + 4)
            # Batches usually carry one or two sessions, so a linear scan beats hashing.
            for j in range(k):
                if seen[j] == r:
                    break
            else:
                seen[k] = r
                k += 1
    return [seen[j] for j in range(k)]


# ---------------------------------------------------------------------------------------
# One-shot AEADs for the control path (cookie replies)

cdef inline uint32_t rotl32(uint32_t v, int c) noexcept nogil:
    return (v << c) | (v >> (32 - c))


cdef inline void quarter_round(uint32_t* x, int a, int b, int c, int d) noexcept nogil:
    x[a] += x[b]
    x[d] = rotl32(x[d] ^ x[a], 16)
    x[c] += x[d]
    x[b] = rotl32(x[b] ^ x[c], 12)
    x[a] += x[b]
    x[d] = rotl32(x[d] ^ x[a], 8)
    x[c] += x[d]
    x[b] = rotl32(x[b] ^ x[c], 7)


cdef void hchacha20_c(uint8_t* out, const uint8_t* key, const uint8_t* nonce) noexcept nogil:
    cdef uint32_t x[16]
    cdef int i, _
    # "expand 32-byte k"
    x[0] = 0x61707865
    x[1] = 0x3320646e
    x[2] = 0x79622d32
    x[3] = 0x6b206574
    for i in range(8):
        x[4 + i] = load_le32(key + 4 * i)
    for i in range(4):
        x[12 + i] = load_le32(nonce + 4 * i)
    for _ in range(10):  # 20 rounds: column then diagonal
        quarter_round(x, 0, 4, 8, 12)
        quarter_round(x, 1, 5, 9, 13)
        quarter_round(x, 2, 6, 10, 14)
        quarter_round(x, 3, 7, 11, 15)
        quarter_round(x, 0, 5, 10, 15)
        quarter_round(x, 1, 6, 11, 12)
        quarter_round(x, 2, 7, 8, 13)
        quarter_round(x, 3, 4, 9, 14)
    for i in range(4):
        store_le32(out + 4 * i, x[i])
        store_le32(out + 16 + 4 * i, x[12 + i])
    OPENSSL_cleanse(x, sizeof(x))


def hchacha20(key, nonce):
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2): 32-byte key, 16-byte nonce -> subkey."""
    cdef const uint8_t[::1] k = memoryview(key).cast("B")
    cdef const uint8_t[::1] n = memoryview(nonce).cast("B")
    if k.shape[0] != 32 or n.shape[0] != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    out = bytearray(32)
    cdef uint8_t[::1] o = out
    hchacha20_c(&o[0], &k[0], &n[0])
    return bytes(out)


cdef object aead_oneshot(const uint8_t* key, const uint8_t* nonce12, const uint8_t[::1] data,
                         const uint8_t[::1] aad, bint encrypt):
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t ct
    cdef int outl = 0, ok = 1
    cdef EVP_CIPHER_CTX* ctx
    cdef uint8_t[::1] o
    if encrypt:
        out = bytearray(n + TAG_LEN)
        ct = n
    else:
        if n < TAG_LEN:
            return None
        ct = n - TAG_LEN
        out = bytearray(ct if ct else 1)
    o = out
    ctx = EVP_CIPHER_CTX_new()
    if ctx == NULL:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        if encrypt:
            ok = EVP_EncryptInit_ex(ctx, CHACHA20_POLY1305, NULL, key, nonce12)
            if ok == 1 and aad.shape[0]:
                ok = EVP_EncryptUpdate(ctx, NULL, &outl, &aad[0], <int>aad.shape[0])
            if ok == 1 and n:
                ok = EVP_EncryptUpdate(ctx, &o[0], &outl, &data[0], <int>n)
            if ok == 1:
                ok = EVP_EncryptFinal_ex(ctx, &o[0] + n, &outl)
            if ok == 1:
                ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, &o[0] + n)
            if ok != 1:
                raise RuntimeError("OpenSSL failed to seal")
            return bytes(out)
        ok = EVP_DecryptInit_ex(ctx, CHACHA20_POLY1305, NULL, key, nonce12)
        if ok == 1 and aad.shape[0]:
            ok = EVP_DecryptUpdate(ctx, NULL, &outl, &aad[0], <int>aad.shape[0])
        if ok == 1 and ct:
            ok = EVP_DecryptUpdate(ctx, &o[0], &outl, &data[0], <int>ct)
        if ok == 1:
            ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN,
                                     <void*>&data[ct])
        if ok == 1:
            ok = EVP_DecryptFinal_ex(ctx, &o[0], &outl)
        if ok != 1:
            return None
        return bytes(out[:ct])
    finally:
        EVP_CIPHER_CTX_free(ctx)


cdef const uint8_t[::1] _bytes_view(obj, Py_ssize_t want, str what):
    cdef const uint8_t[::1] v = memoryview(obj).cast("B")
    if want >= 0 and v.shape[0] != want:
        raise ValueError(f"{what} must be {want} bytes, got {v.shape[0]}")
    return v


def _xchacha_subkey(key, nonce):
    cdef const uint8_t[::1] k = _bytes_view(key, 32, "key")
    cdef const uint8_t[::1] n = _bytes_view(nonce, 24, "nonce")
    sub = bytearray(32)
    cdef uint8_t[::1] s = sub
    hchacha20_c(&s[0], &k[0], &n[0])
    nonce12 = b"\x00\x00\x00\x00" + bytes(n[16:24])
    return sub, nonce12


def xchacha20poly1305_seal(key, nonce, plaintext, aad=b""):
    """XChaCha20-Poly1305 encryption; returns ciphertext ‖ tag."""
    sub, nonce12 = _xchacha_subkey(key, nonce)
    cdef const uint8_t[::1] s = sub
    cdef const uint8_t[::1] n12 = nonce12
    try:
        return aead_oneshot(&s[0], &n12[0], _bytes_view(plaintext, -1, "plaintext"),
                            _bytes_view(aad, -1, "aad"), True)
    finally:
        sub[:] = bytes(32)


def xchacha20poly1305_open(key, nonce, ciphertext, aad=b""):
    """XChaCha20-Poly1305 decryption; returns the plaintext, or None if it does not verify."""
    sub, nonce12 = _xchacha_subkey(key, nonce)
    cdef const uint8_t[::1] s = sub
    cdef const uint8_t[::1] n12 = nonce12
    try:
        return aead_oneshot(&s[0], &n12[0], _bytes_view(ciphertext, -1, "ciphertext"),
                            _bytes_view(aad, -1, "aad"), False)
    finally:
        sub[:] = bytes(32)


def chacha20poly1305_seal(key, nonce, plaintext, aad=b""):
    """One-shot ChaCha20-Poly1305 (RFC 8439) with a 12-byte nonce; returns ciphertext ‖ tag."""
    cdef const uint8_t[::1] k = _bytes_view(key, 32, "key")
    cdef const uint8_t[::1] n = _bytes_view(nonce, 12, "nonce")
    return aead_oneshot(&k[0], &n[0], _bytes_view(plaintext, -1, "plaintext"),
                        _bytes_view(aad, -1, "aad"), True)


def chacha20poly1305_open(key, nonce, ciphertext, aad=b""):
    """One-shot ChaCha20-Poly1305 decryption; the plaintext, or None if it does not verify."""
    cdef const uint8_t[::1] k = _bytes_view(key, 32, "key")
    cdef const uint8_t[::1] n = _bytes_view(nonce, 12, "nonce")
    return aead_oneshot(&k[0], &n[0], _bytes_view(ciphertext, -1, "ciphertext"),
                        _bytes_view(aad, -1, "aad"), False)


# ---------------------------------------------------------------------------------------
# Baseline for the benchmarks: the bare EVP calls over a flat buffer, with none of the
# data-plane work (no header, padding, replay window, status or metadata) but the same EVP
# calls. Kept here so it is compiled with the same flags and library as the real loops.

def _raw_evp_loop(key, buffer, Py_ssize_t count, Py_ssize_t size, bint encrypt,
                  tags=None):
    """Encrypt (or decrypt+verify) ``count`` packets of ``size`` bytes back to back in
    ``buffer`` in place, with nonces 0..count-1; tags go to / come from ``tags``
    (``count * 16`` bytes). Returns the number that verified (decrypt) or ``count``."""
    cdef const uint8_t[::1] k = _bytes_view(key, 32, "key")
    cdef uint8_t[::1] buf = buffer
    if tags is None:
        tags = bytearray(16 * count)
    cdef uint8_t[::1] tg = tags
    if buf.shape[0] < count * size or tg.shape[0] < count * 16 or count <= 0:
        raise ValueError("buffer or tags too small")
    cdef EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new()
    cdef Py_ssize_t i, good = 0
    cdef uint8_t nonce[12]
    cdef int outl
    if ctx == NULL:
        raise MemoryError()
    try:
        if encrypt:
            EVP_EncryptInit_ex(ctx, CHACHA20_POLY1305, NULL, &k[0], NULL)
        else:
            EVP_DecryptInit_ex(ctx, CHACHA20_POLY1305, NULL, &k[0], NULL)
        with nogil:
            for i in range(count):
                wg_nonce(nonce, <uint64_t>i)
                if encrypt:
                    EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 1, NULL)
                    EVP_EncryptUpdate(ctx, &buf[i * size], &outl, &buf[i * size], <int>size)
                    EVP_EncryptFinal_ex(ctx, &tg[i * 16], &outl)
                    tag_param(ctx, &tg[i * 16], True)
                    good += 1
                else:
                    EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, 0, NULL)
                    EVP_DecryptUpdate(ctx, &buf[i * size], &outl, &buf[i * size], <int>size)
                    tag_param(ctx, &tg[i * 16], False)
                    if EVP_DecryptFinal_ex(ctx, &tg[i * 16], &outl) == 1:
                        good += 1
    finally:
        EVP_CIPHER_CTX_free(ctx)
    return good
