# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""C-level view of the transport keys and the replay window, for the established-session
path (``transport/_express.pyx``) to cimport."""

from libc.stdint cimport uint32_t, uint64_t

from dataplane._batch cimport PacketBatch
from dataplane._libcrypto cimport EVP_CIPHER_CTX

cdef enum:
    RING_WORDS = 128          # RFC 6479 ring of 64-bit words; one is always being recycled


cdef struct replay_t:
    uint64_t last             # greatest counter marked seen
    uint64_t ring[RING_WORDS]


cdef class ReplayWindow:
    cdef replay_t w


cdef class _Key:
    cdef EVP_CIPHER_CTX* ctx
    cdef bint busy
    cdef bint encrypt
    cdef int _enter(self) except -1


cdef class SendKey(_Key):
    # The next unused counter: kept here, with the cipher context, so every sender of the
    # session (the Python device and the established-session path) draws from one sequence.
    cdef public uint64_t counter


cdef class ReceiveKey(_Key):
    pass


cdef uint64_t seal_batch(EVP_CIPHER_CTX* ctx, PacketBatch batch, uint32_t receiver_index,
                         uint64_t counter, Py_ssize_t mtu, int want) noexcept nogil

cdef Py_ssize_t open_batch(EVP_CIPHER_CTX* ctx, replay_t* w, PacketBatch batch,
                           uint32_t receiver_index, int peer) noexcept nogil
