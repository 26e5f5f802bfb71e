"""dataplane: a WireGuard / Tailscale packet-processing data plane for Python.

The per-packet work (seal/open, routing, filtering, classification) runs in Cython over
``PacketBatch`` slabs without the GIL; handshakes, timers and configuration run in Python
per batch. ``DataPlane`` is the sans-I/O core, ``ThreadedDataPlane`` drives it with threads,
and the transports (``dataplane.transport``) connect it to UDP, TUN and in-process sockets.
"""

from dataplane._batch import DropReason, PacketBatch
from dataplane.core import ConfigError, DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.filter.packet import FilterError, PacketFilter
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "ConfigError",
    "DataPlane",
    "DropReason",
    "FilterError",
    "PacketBatch",
    "PacketFilter",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "ThreadedDataPlane",
    "__version__",
]

__version__ = "0.1.0"
