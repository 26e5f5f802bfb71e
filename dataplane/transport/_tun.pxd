# cython: language_level=3
"""C-level view of TunIO, for the established-session path to read and write without the
GIL and without a trip through Python."""

from libc.stdint cimport uint8_t

from dataplane._batch cimport PacketBatch

cdef enum:
    TUN_ERRNO_SLOTS = 256     # size of the per-errno array write_c fills


cdef class TunIO:
    cdef int fd
    cdef int wake_fd
    cdef readonly bint vnet_hdr
    cdef uint8_t* scratch           # one vnet read (header + up to 64 KiB), vnet_hdr only
    cdef Py_ssize_t pending         # bytes in scratch not all placed (no room last time)
    cdef Py_ssize_t pending_piece   # the TSO piece of it to place next
    cdef readonly unsigned long long rx_packets, rx_bytes, rx_too_big
    cdef readonly unsigned long long rx_offloaded, rx_offload_errors
    cdef readonly unsigned long long tx_packets, tx_bytes, tx_failed, tx_merged

    # Wait up to ``ms`` (< 0: forever) and append what is ready; returns how many were
    # appended, ``err`` = the errno that ended it (0 for none; EAGAIN is not an error).
    cdef Py_ssize_t read_c(self, PacketBatch batch, int ms, int* err) noexcept nogil
    cdef Py_ssize_t _read_vnet_c(self, PacketBatch batch, int ms, int* err) noexcept nogil
    # Write the alive slots; returns how many went, counts refusals per errno in ``errs``.
    cdef Py_ssize_t write_c(self, PacketBatch batch,
                            unsigned long long* errs) noexcept nogil
