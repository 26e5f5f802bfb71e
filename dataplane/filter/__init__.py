"""Source filter (cryptokey routing) and packet filter (Tailscale FilterRule ACLs)."""

from dataplane.filter.packet import FilterError, PacketFilter, parse_rules

__all__ = ["FilterError", "PacketFilter", "parse_rules"]
