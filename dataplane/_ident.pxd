# cython: language_level=3
"""C-level view of dataplane._ident (classification and padding removal), for cimport.

Both batch functions take a ``PacketBatch``, consider only slots whose status is ST_OK,
and return -1 without touching any slot when some slot's ``offsets[i] + lengths[i]``
leaves its slot (a programming error upstream, never packet content).
"""

from libc.stdint cimport uint8_t, uint32_t

from dataplane._batch cimport PacketBatch


# Kind of a classified datagram, one uint8 per slot. The WireGuard kinds equal the
# WireGuard message type byte. Keep in sync with _ident.pyx (Python names) and _ident.pyi.
cdef enum:
    KIND_NONE = 0               # not classified (dropped here or before)
    KIND_WG_INITIATION = 1      # WireGuard handshake initiation, 148 bytes
    KIND_WG_RESPONSE = 2        # WireGuard handshake response, 92 bytes
    KIND_WG_COOKIE = 3          # WireGuard cookie reply, 64 bytes
    KIND_WG_DATA = 4            # WireGuard transport data, >= 32 bytes, multiple of 16
    KIND_DISCO = 5              # Tailscale disco message (magic + key + nonce header)
    KIND_STUN = 6               # RFC 5389 binding request / success / error response
    KIND_N = 7                  # number of base kinds

    # Flags or-ed into the kind of a datagram that arrived inside Geneve (RFC 8926).
    KIND_FLAG_GENEVE = 0x80
    KIND_FLAG_CONTROL = 0x40    # the Geneve O (control) bit was set (relay handshakes)
    KIND_BASE_MASK = 0x3F


# Classify every alive slot (see _ident.pyx). ``kinds`` must hold ``batch.count`` bytes;
# ``vnis`` may be NULL, else ``batch.count`` uint32 (Geneve VNI, 0 when not Geneve).
# Returns the number of slots classified, or -1 when the slot bounds are invalid.
cdef Py_ssize_t classify_batch(PacketBatch batch, uint8_t* kinds,
                               uint32_t* vnis) noexcept nogil

# Trim every alive slot to its IP length; returns the number still alive, or -1 as above.
cdef Py_ssize_t unpad_batch(PacketBatch batch) noexcept nogil

# Trim every alive slot to its IP header's length (ST_KEEPALIVE for an empty one, ST_BAD_IP
# for a malformed header); returns the slots left alive, -1 on bad bounds.
cdef Py_ssize_t unpad_batch(PacketBatch batch) noexcept nogil
