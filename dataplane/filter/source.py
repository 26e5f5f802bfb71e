"""Source filter: WireGuard cryptokey routing's check on decrypted packets.

Theory of operation: a decrypted packet may only carry an inner source address that
the decrypting peer owns through its AllowedIPs (whitepaper §2, "cryptokey routing").
Ownership is a longest-prefix match over all peers' AllowedIPs, so when prefixes of
several peers overlap, the most specific prefix decides (10.0.0.0/8 -> A and
10.1.0.0/16 -> B: 10.1.2.3 belongs to B only); identical prefixes go to the lowest peer
id (shared with the outbound router through ``allowed_ips_table``, so we accept from an
address exactly the peer we would send that address to). The reference resolves such
ties by hash-map order (routing.md §10.1).

``apply(batch)`` runs one nogil pass (``_route.check_sources``): each alive slot's
source address is looked up and compared with ``batch.peers[i]``; a mismatch or no
owner gives ST_SOURCE_FILTER, a malformed IP header ST_BAD_IP. Table updates are
wholesale ``swap()`` s of a frozen table (see ``dataplane.routing.overlay``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dataplane._batch import PacketBatch
from dataplane.routing._lpm import LpmTable
from dataplane.routing._route import check_sources
from dataplane.routing.overlay import Address, allowed_ips_table

__all__ = ["SourceFilter"]


class SourceFilter:
    """Drops decrypted packets whose source address the decrypting peer does not own."""

    def __init__(self, peer_routes: Mapping[int, Iterable[object]] | None = None) -> None:
        self._table = allowed_ips_table(peer_routes or {})

    @classmethod
    def from_table(cls, table: LpmTable) -> SourceFilter:
        """A filter over an existing prefix -> peer id table (frozen on the way in)."""
        f = cls()
        f.swap(table)
        return f

    @property
    def table(self) -> LpmTable:
        return self._table

    def update(self, peer_routes: Mapping[int, Iterable[object]]) -> LpmTable:
        """Rebuild from peer id -> AllowedIPs and swap it in; returns the old table."""
        return self.swap(allowed_ips_table(peer_routes))

    def swap(self, table: LpmTable) -> LpmTable:
        if not isinstance(table, LpmTable):
            raise TypeError(f"expected an LpmTable, got {type(table).__name__}")
        old, self._table = self._table, table.freeze()
        return old

    def owner(self, addr: Address) -> int | None:
        """The peer that owns a source address, or None."""
        return self._table.lookup(addr)

    def allows(self, peer: int, addr: Address) -> bool:
        return self._table.lookup(addr) == peer

    def apply(self, batch: PacketBatch) -> int:
        """Check every alive slot; returns the number dropped with ST_SOURCE_FILTER."""
        return check_sources(self._table, batch)
