"""Moved to :mod:`dataplane.netstack`; this alias stays for one release."""

from dataplane.netstack.network import EPHEMERAL_PORTS, OverlayNetwork, OverlaySocket

__all__ = ["EPHEMERAL_PORTS", "OverlayNetwork", "OverlaySocket"]
