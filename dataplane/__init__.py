"""dataplane: a WireGuard / Tailscale packet-processing data plane for Python.

The per-packet work (seal/open, routing, filtering, classification) runs in Cython over
``PacketBatch`` slabs without the GIL; handshakes, timers and configuration run in Python
per batch. See README.md for a tour.
"""

from dataplane._batch import DropReason, PacketBatch

__all__ = ["DropReason", "PacketBatch", "__version__"]

__version__ = "0.1.0"
