"""Two real nodes (DataPlane + ThreadedDataPlane + OverlayNetwork) joined by a MemoryWire.

WireGuard handshakes, routing and filters are the real ones; only the underlay is in
memory (optionally lossy), so overlay TCP and UDP can be tested without root or sockets.
"""

from __future__ import annotations

from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.netstack import OverlayNetwork
from dataplane.transport.memory import MemoryWire
from dataplane.wireguard.keys import PrivateKey

A4, B4 = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"
EP_A, EP_B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


class OverlayPair:
    def __init__(self, tcp_limits=None, **wire_args) -> None:
        ka, kb = PrivateKey.generate(), PrivateKey.generate()
        self.a = ThreadedDataPlane(DataPlane(ka), name="a").start()
        self.b = ThreadedDataPlane(DataPlane(kb), name="b").start()
        self.wire = MemoryWire(self.a, self.b, EP_A, EP_B, **wire_args)
        self.net_a = OverlayNetwork(self.a, [A4, A6], name="ova", tcp_limits=tcp_limits)
        self.net_b = OverlayNetwork(self.b, [B4, B6], name="ovb", tcp_limits=tcp_limits)
        for drv, peer_key, ips, ep, wid, net in (
            (self.a, kb, [B4 + "/32", B6 + "/128"], EP_B, self.wire.id_a, self.net_a),
            (self.b, ka, [A4 + "/32", A6 + "/128"], EP_A, self.wire.id_b, self.net_b),
        ):
            with drv.locked() as core:
                core.add_peer(peer_key.public_key, allowed_ips=ips, endpoint=ep, underlay=wid)
                core.set_addresses(net.addresses, overlay=net.id)

    def close(self) -> None:
        self.net_a.close()
        self.net_b.close()
        self.wire.close()
        self.a.close()
        self.b.close()
        self.a.raise_if_failed()
        self.b.raise_if_failed()
