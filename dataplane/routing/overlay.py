"""Overlay routers: which WireGuard peer or local overlay transport gets an IP packet.

Theory of operation
-------------------
Each router holds one frozen :class:`~dataplane.routing._lpm.LpmTable` whose values
encode a route action (see ``_route.pyx``); ``route(batch)`` is one nogil pass that
sets per-slot results and drop reasons. Control-plane updates build a whole new table
with :func:`build_outbound_table` / :func:`build_inbound_table` and install it with
``swap()``, which is a single reference assignment: a batch is routed entirely by the
table it loaded at its start (old or new), never by a mix, and the old table lives on
until its last reader drops it.

Outbound (local stack -> network), by destination:

* ``WireGuard(peer)``: the peer's AllowedIPs; ``batch.peers[i]`` is set.
* ``Loopback(transport)``: hand the packet straight back to a local overlay transport
  (our own addresses, a local DNS address such as 100.100.100.100); it never leaves the
  host and skips encryption and the inbound filters. The reference has the action but
  never installs it (routing.md §2.3); :func:`build_outbound_table` installs a host
  route for each of our own addresses.
* ``Drop``: an explicit hole in a larger prefix -> ST_ROUTE_DROP.
* no match -> ST_NO_ROUTE.

Inbound (decrypted packets -> local transports), by destination: ``ToOverlay(transport)``
or ``Drop``/no route.

Precedence for *identical* prefixes (different lengths are settled by longest match):
drop > loopback > WireGuard peer, and among peers the lowest peer id wins, so the result
never depends on dict order (the reference uses hash order, routing.md §10.1).
"""

from __future__ import annotations

import array
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dataplane._batch import PacketBatch
from dataplane.routing._lpm import LpmTable
from dataplane.routing._route import (
    ACTION_SHIFT,
    KIND_DROP,
    KIND_LOOPBACK,
    KIND_PEER,
    MAX_ID,
    route_inbound,
    route_outbound,
)

__all__ = [
    "Address",
    "Drop",
    "InboundRouter",
    "Loopback",
    "OutboundRouter",
    "ToOverlay",
    "WireGuard",
    "allowed_ips_table",
    "build_inbound_table",
    "build_outbound_table",
    "host_prefix",
]


#: An address as the routers accept it: text, packed 4/16 bytes or an ipaddress object.
Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class WireGuard:
    """Encrypt and send to this WireGuard peer."""

    peer: int


@dataclass(frozen=True)
class Loopback:
    """Outbound packet handed back to a local overlay transport."""

    transport: int


@dataclass(frozen=True)
class ToOverlay:
    """Inbound packet delivered to a local overlay transport."""

    transport: int


@dataclass(frozen=True)
class Drop:
    """Explicit drop: a hole notched out of a larger prefix."""


DROP_VALUE = KIND_DROP << ACTION_SHIFT


def _check_id(what: str, ident: int) -> int:
    if not isinstance(ident, int) or not 0 <= ident <= MAX_ID:
        raise ValueError(f"{what} must be an int in 0..{MAX_ID}, got {ident!r}")
    return ident


def _encode(kind: int, ident: int) -> int:
    return (kind << ACTION_SHIFT) | ident


def _decode_out(v: int | None) -> WireGuard | Loopback | Drop | None:
    if v is None:
        return None
    kind, ident = v >> ACTION_SHIFT, v & MAX_ID
    if kind == KIND_PEER:
        return WireGuard(ident)
    if kind == KIND_LOOPBACK:
        return Loopback(ident)
    return Drop()


def host_prefix(
    addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The /32 or /128 of one address (an interface like 100.64.0.1/10 counts too)."""
    if isinstance(addr, str) and "/" in addr:
        addr = ipaddress.ip_interface(addr).ip
    a = ipaddress.ip_address(addr)
    return ipaddress.ip_network(a)


def _net(prefix: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(prefix, strict=False)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid prefix {prefix!r}: {exc}") from None


def _peer_claims(peer_routes: Mapping[int, Iterable[object]]) -> dict:
    """prefix -> owning peer; identical prefixes go to the lowest peer id."""
    owner: dict = {}
    for peer in sorted(peer_routes):
        _check_id("peer id", peer)
        for prefix in peer_routes[peer]:
            owner.setdefault(_net(prefix), peer)
    return owner


def allowed_ips_table(peer_routes: Mapping[int, Iterable[object]]) -> LpmTable:
    """Cryptokey-routing table: AllowedIPs prefix -> peer id (for the source filter).

    Uses the same overlap rule as :func:`build_outbound_table`, so the peer that may send
    from an address is the peer we send that address to.
    """
    t = LpmTable()
    for net, peer in _peer_claims(peer_routes).items():
        t.insert(net, peer)
    return t.freeze()


def build_outbound_table(
    peer_routes: Mapping[int, Iterable[object]] | None = None,
    *,
    local_addresses: Mapping[Any, int] | None = None,
    loopback_routes: Mapping[object, int] | None = None,
    drop_routes: Iterable[object] = (),
) -> LpmTable:
    """Frozen outbound table.

    ``peer_routes``: peer id -> AllowedIPs. ``local_addresses``: each of our own
    addresses -> the overlay transport that receives packets sent to it (installed as a
    host route, so it wins over any peer prefix containing it). ``loopback_routes``:
    prefix -> overlay transport (e.g. a local DNS service). ``drop_routes``: holes.
    """
    values: dict = {}
    for net, peer in _peer_claims(peer_routes or {}).items():
        values[net] = _encode(KIND_PEER, peer)
    for addr, transport in (local_addresses or {}).items():  # each an Address
        values[host_prefix(addr)] = _encode(KIND_LOOPBACK, _check_id("transport id", transport))
    for prefix, transport in (loopback_routes or {}).items():
        values[_net(prefix)] = _encode(KIND_LOOPBACK, _check_id("transport id", transport))
    for prefix in drop_routes:
        values[_net(prefix)] = DROP_VALUE
    t = LpmTable()
    t.update(values)
    return t.freeze()


def build_inbound_table(
    local_routes: Mapping[object, int] | None = None, *, drop_routes: Iterable[object] = ()
) -> LpmTable:
    """Frozen inbound table: prefix -> overlay transport, plus holes.

    ``local_routes`` is what this node accepts (its AllowedIPs, or its own addresses as
    /32 and /128 when it has none, as the reference does).
    """
    values: dict = {}
    for prefix, transport in (local_routes or {}).items():
        values[_net(prefix)] = _encode(KIND_PEER, _check_id("transport id", transport))
    for prefix in drop_routes:
        values[_net(prefix)] = DROP_VALUE
    t = LpmTable()
    t.update(values)
    return t.freeze()


def _int32_out(out: object, n: int) -> object:
    if out is None:
        return array.array("i", bytes(4 * n))
    return out


class _Router:
    def __init__(self, table: LpmTable | None = None) -> None:
        self._table = (table if table is not None else LpmTable()).freeze()

    @property
    def table(self) -> LpmTable:
        return self._table

    def swap(self, table: LpmTable) -> LpmTable:
        """Install a new table (frozen on the way in); return the previous one."""
        if not isinstance(table, LpmTable):
            raise TypeError(f"expected an LpmTable, got {type(table).__name__}")
        old, self._table = self._table, table.freeze()
        return old


class OutboundRouter(_Router):
    """Destination -> WireGuard peer | loopback | drop | no route."""

    def lookup(self, addr: Address) -> WireGuard | Loopback | Drop | None:
        return _decode_out(self._table.lookup(addr))

    def route(self, batch: PacketBatch, loopback: object = None) -> tuple[object, int, int]:
        """Route every alive slot (see ``_route.route_outbound``).

        Returns ``(loopback, to_peers, to_loopback)``: the int32 per-slot loopback
        transport array (``loopback`` if given, else a new ``array('i')``) and counts.
        """
        out = _int32_out(loopback, len(batch))
        npeer, nloop = route_outbound(self._table, batch, out)
        return out, npeer, nloop


class InboundRouter(_Router):
    """Destination of a decrypted packet -> overlay transport | drop."""

    def lookup(self, addr: Address) -> ToOverlay | Drop | None:
        v = self._table.lookup(addr)
        if v is None:
            return None
        if v >> ACTION_SHIFT == KIND_PEER:
            return ToOverlay(v & MAX_ID)
        return Drop()

    def route(self, batch: PacketBatch, out: object = None) -> tuple[object, int]:
        """Route every alive slot; returns (per-slot transport array, routed count)."""
        res = _int32_out(out, len(batch))
        return res, route_inbound(self._table, batch, res)
