# cython: language_level=3
"""C-level view of dataplane.netstack._ip (IPv4/IPv6 + UDP headers, ICMP echo), for cimport.

Addresses are 16 bytes everywhere, IPv4 as ``::ffff:a.b.c.d`` (as in PacketBatch.ep_addr).
Every batch function considers only slots whose status is ST_OK and returns -1 without
touching any slot when some slot's ``offsets[i] + lengths[i]`` leaves its slot (a
programming error upstream, never packet content).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from dataplane._batch cimport PacketBatch


# The verdicts (V_*) and the IP-layer helpers are shared with _tcp (_inet.pxd).
from dataplane.netstack._inet cimport (
    DEFAULT_TTL,
    V_BAD_CHECKSUM,
    V_BAD_HEADER,
    V_FRAGMENT,
    V_N,
    V_NOT_UDP,
    V_OK,
    V_SKIPPED,
    V_TRUNCATED,
)


cdef enum:
    # Header sizes pushed in front of a payload.
    IPV4_UDP_HEADER = 28    # 20 IPv4 (no options) + 8 UDP
    IPV6_UDP_HEADER = 48    # 40 IPv6 + 8 UDP


# Push IPv4 or IPv6 + UDP headers in front of every alive slot's payload. ``addrs`` holds
# 32 bytes per slot (source then destination, 16 bytes each) and ``ports`` 2 per slot
# (source, destination, host order); a stride of 0 uses the first entry for every slot.
# Slots without room get ST_NO_ROOM, mixed address families ST_BAD_IP, a datagram longer
# than 65535 ST_TOO_BIG. Returns the number of packets built, or -1 (bad bounds).
cdef Py_ssize_t push_udp_batch(PacketBatch batch, const uint8_t* addrs, Py_ssize_t addr_stride,
                               const uint16_t* ports, Py_ssize_t port_stride) noexcept nogil

# Validate every alive slot as an IPv4/IPv6 UDP datagram. Writes ``verdicts[i]`` (V_*);
# for V_OK slots also ``addrs[32 i:32 i + 32]`` (source, destination), ``ports[2 i]``
# (source, destination) and ``spans[2 i]`` (payload offset within the packet, length).
# Other slots get an ST_* drop status. Returns the number of V_OK slots, or -1.
cdef Py_ssize_t parse_udp_batch(PacketBatch batch, uint8_t* verdicts, uint8_t* addrs,
                                uint16_t* ports, uint32_t* spans) noexcept nogil

# Turn every alive ICMPv4/ICMPv6 echo request addressed to one of the ``n_ours``
# 16-byte addresses at ``ours`` into its echo reply, in place; ``marks[i]`` is 1 for the
# slots turned, 0 for the others (left untouched). Returns the number turned, or -1.
cdef Py_ssize_t echo_reply_batch(PacketBatch batch, const uint8_t* ours, Py_ssize_t n_ours,
                                 uint8_t* marks) noexcept nogil

# RFC 1071 Internet checksum of p[0:n] as it would be stored (network byte order value).
cdef uint16_t internet_checksum(const uint8_t* p, Py_ssize_t n) noexcept nogil
