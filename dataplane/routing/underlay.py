"""Underlay router: WireGuard peer -> (underlay transport id, endpoint).

Theory of operation: an exact-match table, kept as dense C arrays indexed by peer id
(``_route.UnderlayTable``), so ``route(batch)`` writes each alive slot's endpoint into
the batch metadata (``ep_addr``/``ep_port``) and its transport into an int32 array in
one nogil pass; slots of peers without a route get ST_NO_ROUTE. Endpoints are
``(ip, port)`` tuples, stored as 16-byte IPv6 (IPv4 as ``::ffff:a.b.c.d``) like the
batch does.

Updates: ``replace(routes)`` builds a new table and swaps the reference (wholesale, as
the control plane does after path discovery); ``set``/``remove`` and roaming edit the
current table in place and, like every other mutation of the core, must run under the
core lock (batches are routed under the same lock, so they see an entry before or after
the change, never half of it). ``roam(batch, transport)`` implements WireGuard
roaming: an *authenticated* packet from a new endpoint moves its peer there.
"""

from __future__ import annotations

import array
import ipaddress
from collections.abc import Iterable, Mapping

from dataplane._batch import PacketBatch
from dataplane.routing._route import MAX_ID, UnderlayTable

__all__ = ["Endpoint", "UnderlayRouter"]

Endpoint = tuple[str, int]

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _pack(endpoint: Endpoint) -> tuple[bytes, int]:
    try:
        host, port = endpoint
        addr = ipaddress.ip_address(host)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"endpoint must be (ip, port), got {endpoint!r}") from exc
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range 0..65535 in endpoint {endpoint!r}")
    packed = _V4_MAPPED + addr.packed if addr.version == 4 else addr.packed
    return packed, port


def _unpack(raw: bytes, port: int) -> Endpoint:
    if raw.startswith(_V4_MAPPED):
        return (str(ipaddress.IPv4Address(raw[12:])), port)
    return (str(ipaddress.IPv6Address(raw)), port)


def _check_peer(peer: int) -> int:
    if not isinstance(peer, int) or not 0 <= peer <= MAX_ID:
        raise ValueError(f"peer id must be an int in 0..{MAX_ID}, got {peer!r}")
    return peer


class UnderlayRouter:
    """peer id -> (underlay transport id, endpoint)."""

    def __init__(self, routes: Mapping[int, tuple[int, Endpoint]] | None = None) -> None:
        self._table = self._build(routes or {})

    @staticmethod
    def _build(routes: Mapping[int, tuple[int, Endpoint]]) -> UnderlayTable:
        peers = [_check_peer(p) for p in routes]
        t = UnderlayTable(max(peers) + 1 if peers else 0)
        for peer, (transport, endpoint) in routes.items():
            packed, port = _pack(endpoint)
            t.set(peer, transport, packed, port)
        return t

    def replace(self, routes: Mapping[int, tuple[int, Endpoint]]) -> None:
        """Install a whole new routing table (built first, then swapped in)."""
        self._table = self._build(routes)

    def set(self, peer: int, transport: int, endpoint: Endpoint) -> None:
        packed, port = _pack(endpoint)
        self._table.set(_check_peer(peer), transport, packed, port)

    def remove(self, peer: int) -> None:
        self._table.clear(peer)

    def lookup(self, peer: int) -> tuple[int, Endpoint] | None:
        got = self._table.get(peer)
        if got is None:
            return None
        transport, raw, port = got
        return transport, _unpack(raw, port)

    def peers(self) -> list[int]:
        return self._table.peers()

    def items(self) -> Iterable[tuple[int, tuple[int, Endpoint]]]:
        for p in self._table.peers():
            route = self.lookup(p)
            assert route is not None
            yield p, route

    def route(self, batch: PacketBatch, out: object = None) -> tuple[object, int]:
        """Per alive slot: the peer's endpoint into the slot; returns (transports, count).

        ``out`` (int32, >= len(batch)) receives each slot's underlay transport or -1.
        """
        res = out if out is not None else array.array("i", bytes(4 * len(batch)))
        return res, self._table.route(batch, res)

    def roam(self, batch: PacketBatch, transport: int) -> list[int]:
        """Move peers of authenticated alive slots to the endpoint they came from.

        ``batch`` arrived on underlay ``transport`` with per-slot sender endpoints and
        ``peers`` set by decryption. Returns the peers whose route changed.
        """
        return self._table.roam(batch, transport)
