"""The in-process overlay's network stack: our overlay addresses as sockets, without a TUN.

``OverlayNetwork`` (``network.py``) is one overlay transport of a driver that owns a set of
overlay addresses; applications get UDP sockets, ICMP echo and TCP from it. The
per-packet work is Cython over whole PacketBatches (``_ip`` for IP/UDP/ICMP, ``_inet.pxd``
for the helpers they share).
"""

from dataplane.netstack.network import EPHEMERAL_PORTS, OverlayNetwork, OverlaySocket

__all__ = ["EPHEMERAL_PORTS", "OverlayNetwork", "OverlaySocket"]
