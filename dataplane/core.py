"""DataPlane: the synchronous core that turns batches of packets into batches of packets.

Theory of operation. Three entry points, each taking ``now`` (monotonic seconds) and
returning an :class:`~dataplane.results.Output`; no I/O, threads or clocks of its own:

``process_outbound(now, overlay_id, batch)`` — IP packets from a local (overlay) transport::

    [record flows for return traffic] -> route by destination (LPM):
        our address / loopback route -> back to an overlay transport (no crypto, no filter)
        hole -> ROUTE_DROP; nothing -> NO_ROUTE
        peer -> group per peer -> Device.send: pad + seal in place, or stage + handshake
    -> datagrams per (underlay transport of the peer, peer endpoint)

``process_inbound(now, underlay_id, batch)`` — UDP payloads from an underlay transport::

    classify (strip Geneve) -> disco / STUN taken out for the control plane
    -> Device.receive: handshakes (replies out), open transport data in place, roaming
    -> unpad by IP length -> source filter (AllowedIPs of the decrypting peer)
    -> packet filter (if one is installed) -> route by destination -> overlay transports

``process_events(now)`` — WireGuard timers and the idle-peer garbage collection.

Every slot that does not make it carries its reason in the batch, and the core adds the
reasons of its own stages (routing, filters, classification) to ``drops``; the device
counts its own. Per-packet work is Cython with the GIL released (classify, open/seal,
unpad, filters, LPM, grouping); Python runs per batch, per peer group, per handshake.

Configuration (peers, AllowedIPs, addresses, routes, filter rules) rebuilds frozen tables
and swaps them in with one assignment; the driver serialises configuration with packet
processing through its core lock, so a batch always sees one consistent configuration.

Packet filter default: none installed means WireGuard semantics (AllowedIPs alone decide);
``set_filter`` installs Tailscale semantics (default deny, rules, return traffic).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dataplane import _ident
from dataplane._batch import DropReason, PacketBatch, _pack_endpoint
from dataplane._group import distinct, group
from dataplane.filter.packet import PacketFilter
from dataplane.filter.source import SourceFilter
from dataplane.results import Endpoint, Output
from dataplane.routing.overlay import (
    InboundRouter,
    OutboundRouter,
    build_inbound_table,
    build_outbound_table,
)
from dataplane.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from dataplane.wireguard.device import ConfigError, Device, Transmit
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from dataplane.wireguard.peer import PeerStats

__all__ = ["ConfigError", "CoreStats", "DataPlane", "PeerConfig"]

PEER_EXPIRATION = 45.0
"""A peer with no outgoing data for this long leaves the active set (reference: 45 s)."""
PEER_GC_INTERVAL = 10.0

_UNSET: Any = object()
# Statuses a stage of the core may set; each is counted in ``drops`` when it appears.
_CORE_REASONS = (
    DropReason.NO_ROUTE,
    DropReason.ROUTE_DROP,
    DropReason.SOURCE_FILTER,
    DropReason.PACKET_FILTER,
    DropReason.BAD_IP,
    DropReason.UNCLASSIFIED,
    DropReason.TOO_SHORT,
    DropReason.TOO_BIG,
)


def _exclusive(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a core method under the established-session path's state lock (if one is
    attached), and hand that path the new sessions/tables if the method changed them."""

    @functools.wraps(method)
    def locked(self: DataPlane, *args: Any, **kwargs: Any) -> Any:
        if self._express is None:  # the usual embedding: no lock, no context manager
            return method(self, *args, **kwargs)
        with self._express_locked():
            return method(self, *args, **kwargs)

    return locked


def _wall_clock() -> float:
    return datetime.now(timezone.utc).timestamp()


def _network(prefix: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(prefix, strict=False)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad prefix {prefix!r}: {e}") from None


def _address(addr: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        if isinstance(addr, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
            return addr.ip
        text = str(addr)
        return ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
    except ValueError as e:
        raise ConfigError(f"bad address {addr!r}: {e}") from None


@dataclass
class PeerConfig:
    """A peer's configuration as the core holds it."""

    peer_id: int
    public_key: PublicKey
    psk: PresharedKey | None
    endpoint: Endpoint | None
    persistent_keepalive: float | None
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    underlay: int


@dataclass
class CoreStats:
    """Counters of the core: its own per-reason drops plus the device's."""

    drops: dict[str, int]
    device_drops: dict[str, int]
    device_events: dict[str, int]
    disco: int
    stun: int
    loopback: int
    delivered: int
    peers: dict[int, PeerStats]


class DataPlane:
    """The synchronous data plane; see the module docstring."""

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        wall_clock: Callable[[], float] = _wall_clock,
        mtu: int = 1420,
        rng: Any = None,
    ) -> None:
        self.device = Device(private_key, wall_clock=wall_clock, mtu=mtu, rng=rng)
        self.mtu = mtu
        self._allowed: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        self._underlay_of: dict[int, int] = {}
        self._next_peer = 0
        self._addresses: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
        self._inbound_routes: dict[Any, int] | None = None
        self._loopback_routes: dict[Any, int] = {}
        self._drop_routes: list[Any] = []
        self.outbound_router = OutboundRouter()
        self.inbound_router = InboundRouter()
        self.source_filter = SourceFilter()
        self.packet_filter: PacketFilter | None = None
        self.drops: Counter[DropReason] = Counter()
        self.disco_received = 0
        self.stun_received = 0
        self.loopback_packets = 0
        self.delivered_packets = 0
        # Peer activity: last outgoing data per peer, and the set published to callers.
        self._last_out: dict[int, float] = {}
        self._active: frozenset[int] = frozenset()
        self._gc_at: float | None = None
        self._deferring = 0
        self._dirty = False
        # The established-session path (attach_express), what it was last given, and
        # whether this thread holds its lock.
        self._express: Any = None
        self._express_ids = (0, 0)
        self._express_on_errors: Callable[[str, dict[int, int]], None] | None = None
        self._express_version: tuple[int, int, bool] | None = None
        self._express_holding = False
        self._tables_version = 0

    # -- configuration ---------------------------------------------------------------------

    @property
    def public_key(self) -> PublicKey:
        return self.device.public_key

    @property
    def private_key(self) -> PrivateKey:
        return self.device.private_key

    @_exclusive
    def set_private_key(self, private_key: PrivateKey) -> None:
        """Change our static key; every session is dropped and peers re-handshake."""
        self.device.set_private_key(private_key)

    @contextmanager
    def configure(self) -> Iterator[DataPlane]:
        """Make many changes with one table rebuild at the end (e.g. a whole ``wg setconf``).

        Routing tables are rebuilt once when the outermost block exits, even if it raises
        (the changes made up to then are in force, as without the block).
        """
        with self._express_locked():
            self._deferring += 1
            try:
                yield self
            finally:
                self._deferring -= 1
                if not self._deferring and self._dirty:
                    self._rebuild()

    def peer_config(self, peer_id: int) -> PeerConfig:
        """What a peer is configured with (not its counters: see ``stats``)."""
        peer = self.device._peer(peer_id)
        psk = None if peer.psk == PresharedKey.zero() else peer.psk
        return PeerConfig(
            peer_id=peer_id,
            public_key=peer.public_key,
            psk=psk,
            endpoint=peer.endpoint,
            persistent_keepalive=peer.persistent_keepalive,
            allowed_ips=list(self._allowed[peer_id]),
            underlay=self._underlay_of.get(peer_id, 0),
        )

    def peer_id_of(self, public_key: PublicKey) -> int | None:
        return self.device.peer_id(public_key)

    @_exclusive
    def add_peer(
        self,
        public_key: PublicKey,
        *,
        allowed_ips: Iterable[object] = (),
        psk: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: float | None = None,
        underlay: int = 0,
        peer_id: int | None = None,
    ) -> int:
        """Add a peer and return its id (``peer_id`` if given, else the next free one)."""
        if peer_id is None:
            while self._next_peer in self.device.peers:
                self._next_peer += 1
            peer_id = self._next_peer
        nets = [_network(p) for p in allowed_ips]
        self.device.add_peer(
            peer_id,
            public_key,
            psk=psk,
            persistent_keepalive=persistent_keepalive,
            endpoint=endpoint,
        )
        self._allowed[peer_id] = nets
        self._underlay_of[peer_id] = underlay
        self._rebuild()
        return peer_id

    @_exclusive
    def update_peer(
        self,
        peer_id: int,
        *,
        allowed_ips: Iterable[object] = _UNSET,
        public_key: PublicKey = _UNSET,
        psk: PresharedKey | None = _UNSET,
        endpoint: Endpoint | None = _UNSET,
        persistent_keepalive: float | None = _UNSET,
        underlay: int = _UNSET,
    ) -> None:
        """Change some of a peer's settings; a new key or PSK drops its sessions."""
        nets = None if allowed_ips is _UNSET else [_network(p) for p in allowed_ips]
        changes = {
            name: value
            for name, value in (
                ("public_key", public_key),
                ("psk", psk),
                ("persistent_keepalive", persistent_keepalive),
                ("endpoint", endpoint),
            )
            if value is not _UNSET
        }
        self.device.update_peer(peer_id, **changes)
        if underlay is not _UNSET:
            self._underlay_of[peer_id] = underlay
        if nets is not None:
            self._allowed[peer_id] = nets
            self._rebuild()

    @_exclusive
    def remove_peer(self, peer_id: int) -> None:
        self.device.remove_peer(peer_id)
        del self._allowed[peer_id]
        self._underlay_of.pop(peer_id, None)
        self._last_out.pop(peer_id, None)
        self._publish_active()
        self._rebuild()

    def peer_ids(self) -> list[int]:
        return sorted(self.device.peers)

    def allowed_ips(self, peer_id: int) -> list[str]:
        return [str(n) for n in self._allowed[peer_id]]

    @_exclusive
    def set_addresses(self, addresses: Iterable[object], overlay: int = 0) -> None:
        """Our own overlay addresses; packets to them go to overlay transport ``overlay``.

        Sent by a local transport, they loop back without leaving the host; received
        from a peer, they are delivered to ``overlay`` (unless ``set_routes(inbound=…)``
        replaced the inbound table).
        """
        self._addresses = {_address(a): overlay for a in addresses}
        self._rebuild()

    @property
    def addresses(self) -> list[str]:
        return [str(a) for a in self._addresses]

    @_exclusive
    def set_routes(
        self,
        *,
        inbound: Mapping[object, int] | None = _UNSET,
        loopback: Mapping[object, int] | None = _UNSET,
        drop: Iterable[object] = _UNSET,
    ) -> None:
        """Replace route sets: ``inbound`` prefix -> overlay transport for decrypted packets
        (None: our own addresses only), ``loopback`` prefix -> overlay transport for local
        services, ``drop`` holes in larger prefixes (both directions)."""
        if inbound is not _UNSET:
            self._inbound_routes = None if inbound is None else dict(inbound)
        if loopback is not _UNSET:
            self._loopback_routes = dict(loopback or {})
        if drop is not _UNSET:
            self._drop_routes = list(drop)
        self._rebuild()

    @_exclusive
    def set_filter(self, rules: Any, *, caps: Iterable[str] = ()) -> None:
        """Install Tailscale FilterRules (JSON text or list); None removes the filter.

        Invalid rules raise ``FilterError`` and leave the previous filter in force.
        """
        if rules is None:
            self.packet_filter = None
        elif self.packet_filter is None:
            self.packet_filter = PacketFilter(rules, caps=caps)
        else:
            self.packet_filter.update(rules, caps=caps)

    def _rebuild(self) -> None:
        if self._deferring:
            self._dirty = True
            return
        self._dirty = False
        # Build everything first, then swap: a failure leaves the old tables in force.
        out_table = build_outbound_table(
            self._allowed,
            local_addresses=self._addresses,
            loopback_routes=self._loopback_routes,
            drop_routes=self._drop_routes,
        )
        local: Mapping[object, int]
        if self._inbound_routes is None:
            local = {f"{a}/{a.max_prefixlen}": oid for a, oid in self._addresses.items()}
        else:
            local = self._inbound_routes
        in_table = build_inbound_table(local, drop_routes=self._drop_routes)
        src = SourceFilter(self._allowed)
        self.outbound_router.swap(out_table)
        self.inbound_router.swap(in_table)
        self.source_filter = src
        self._tables_version += 1

    # -- packets -----------------------------------------------------------------------------

    @_exclusive
    def process_outbound(self, now: float, overlay_id: int, batch: PacketBatch) -> Output:
        """Route, seal (or stage) and address a batch of IP packets from overlay_id."""
        out = Output()
        if self._express is not None:
            self._express_account(now, out)
            if not len(batch):  # sent by the established-session path: bookkeeping only
                return out
        before = batch.status_counts()
        loop, to_peers, to_loop = self.outbound_router.route(batch)
        if to_loop:
            for oid, b in group(batch, loop).items():
                self.loopback_packets += len(b)
                out.deliver(oid, b)
        if to_peers:
            if self.packet_filter is not None:
                self.packet_filter.record_outbound(batch, now)
            per_peer = group(batch)
            for peer in per_peer:
                self._mark_active(peer, now)
            self._emit(out, self.device.send(now, per_peer), None)
        self._count(before, batch)
        return out

    @_exclusive
    def process_inbound(self, now: float, underlay_id: int, batch: PacketBatch) -> Output:
        """Classify, decrypt, check and deliver a batch of datagrams from underlay_id."""
        out = Output()
        if self._express is not None:
            self._express_account(now, out)
            if not len(batch):  # delivered by the established-session path
                return out
        before = batch.status_counts()
        kinds = _ident.classify(batch)
        for i in _ident.consume(batch, kinds, (_ident.DISCO,), DropReason.DISCO):
            out.disco.append((underlay_id, batch.endpoint(i), bytes(batch[i])))
            self.disco_received += 1
        for i in _ident.consume(batch, kinds, (_ident.STUN,), DropReason.STUN):
            out.stun.append((underlay_id, batch.endpoint(i), bytes(batch[i])))
            self.stun_received += 1
        transmits = self.device.receive(now, batch)
        # The underlay an authenticated packet arrived on is where that peer now lives.
        for peer in distinct(batch):
            if peer in self._underlay_of:
                self._underlay_of[peer] = underlay_id
        _ident.unpad(batch)
        self.source_filter.apply(batch)
        if self.packet_filter is not None:
            self.packet_filter.check_inbound(batch, now)
        dest, routed = self.inbound_router.route(batch)
        if routed:
            for oid, b in group(batch, dest).items():
                self.delivered_packets += len(b)
                out.deliver(oid, b)
        self._emit(out, transmits, underlay_id)
        self._count(before, batch)
        return out

    @_exclusive
    def process_events(self, now: float) -> Output:
        """Run the WireGuard timers and the active-peer GC that are due."""
        out = Output()
        if self._express is not None:
            self._express_account(now, out)
        self._emit(out, self.device.dispatch_events(now), None)
        if self._gc_at is not None and now >= self._gc_at:
            self._collect_idle(now)
        return out

    def next_event(self) -> float | None:
        """When ``process_events`` should run next (monotonic seconds), or None."""
        rng = self.device.next_event()
        deadline = None if rng is None else rng.end
        if self._gc_at is not None and (deadline is None or self._gc_at < deadline):
            deadline = self._gc_at
        return deadline

    def _emit(self, out: Output, transmits: list[Transmit], reply_underlay: int | None) -> None:
        for t in transmits:
            if t.peer is None:
                # Cookie replies answer a source, on the underlay it came from.
                uid = reply_underlay if reply_underlay is not None else 0
            else:
                uid = self._underlay_of.get(t.peer, 0)
            out.send(uid, t.endpoint, t.batch)

    def _count(self, before: list[int], batch: PacketBatch) -> None:
        after = batch.status_counts()
        for reason in _CORE_REASONS:
            delta = after[reason] - before[reason]
            if delta > 0:
                self.drops[reason] += delta

    # -- peer activity -------------------------------------------------------------------------

    def _mark_active(self, peer: int, now: float) -> None:
        self._last_out[peer] = now
        if peer not in self._active:
            self._publish_active()
        if self._gc_at is None:
            self._gc_at = now + PEER_GC_INTERVAL

    def _collect_idle(self, now: float) -> None:
        for peer, last in list(self._last_out.items()):
            if now - last >= PEER_EXPIRATION:
                del self._last_out[peer]
        self._publish_active()
        self._gc_at = now + PEER_GC_INTERVAL if self._last_out else None

    def _publish_active(self) -> None:
        current = frozenset(self._last_out)
        if current != self._active:
            self._active = current

    @property
    def active_peers(self) -> frozenset[int]:
        """Peers with outgoing data in the last ~45 s; a new object only when it changes."""
        return self._active

    # -- observability ---------------------------------------------------------------------------

    def stats(self) -> CoreStats:
        """Counters; traffic of the established-session path shows once its bookkeeping ran
        (within ``transport.bookkeeping.ACCOUNT_DELAY`` of the packets)."""
        return CoreStats(
            drops={r.name: n for r, n in self.drops.items()},
            device_drops={r.name: n for r, n in self.device.drops.items()},
            device_events=dict(self.device.events),
            disco=self.disco_received,
            stun=self.stun_received,
            loopback=self.loopback_packets,
            delivered=self.delivered_packets,
            peers={pid: self.device.peer_stats(pid) for pid in self.device.peers},
        )

    # -- the established-session path --------------------------------------------------------

    def attach_express(
        self,
        express: Any,
        overlay_id: int,
        underlay_id: int,
        *,
        on_errors: Callable[[str, dict[int, int]], None] | None = None,
    ) -> None:
        """Let ``express`` (a ``transport._express.Express`` whose TUN and UDP transmit
        objects are set) carry the established sessions between overlay transport
        ``overlay_id`` (a TUN device) and underlay ``underlay_id`` itself.

        From here on every method of the core runs under the path's state lock and
        hands it the sessions, endpoints and tables whenever they change; the path is
        on while no packet filter is installed. Its transmit errors are reported as
        ``on_errors("udp" | "tun", {errno: count})``. The driver's clock must be
        ``time.monotonic`` (the path's clock is CLOCK_MONOTONIC).
        """
        express.acquire()
        try:
            self._express = express
            self._express_ids = (overlay_id, underlay_id)
            self._express_on_errors = on_errors
            self._express_sync()
        finally:
            express.release()

    @contextmanager
    def _express_locked(self) -> Iterator[None]:
        ex = self._express
        if ex is None or self._express_holding:
            yield
            return
        ex.acquire()
        self._express_holding = True
        try:
            yield
        finally:
            try:
                if self._express is ex and self._express_version != self._express_state():
                    self._express_sync()
            finally:
                self._express_holding = False
                ex.release()

    def _express_state(self) -> tuple[int, int, bool]:
        return (self.device.epoch, self._tables_version, self.packet_filter is None)

    def _express_sync(self) -> None:
        # With the state lock held: give the path the sessions it may use right now.
        overlay_id, underlay_id = self._express_ids
        senders = []
        receivers = []
        for pid, peer in self.device.peers.items():
            if self._underlay_of.get(pid, 0) != underlay_id:
                continue
            kp = peer.current
            if kp is not None and peer.endpoint is not None:
                addr16, port = _pack_endpoint(peer.endpoint)
                senders.append(
                    (pid, kp.send, kp.remote_index, kp.created + REJECT_AFTER_TIME,
                     REJECT_AFTER_MESSAGES, addr16, port)
                )  # fmt: skip
            for kp in (peer.current, peer.previous):
                if kp is not None:
                    receivers.append(
                        (kp.local_index, pid, kp.receive, kp.window,
                         kp.created + REJECT_AFTER_TIME)
                    )  # fmt: skip
        self._express.install(
            self.packet_filter is None,
            overlay_id,
            self.device.mtu,
            self.outbound_router.table,
            self.inbound_router.table,
            self.source_filter.table,
            senders,
            receivers,
        )
        self._express_version = self._express_state()

    def _express_account(self, now: float, out: Output) -> None:
        # The bookkeeping of what the path did since the last call (see Device.account_express).
        if not self._express.pending:
            return
        peers, drops, udp_errors, tun_errors, delivered = self._express.drain()
        if peers:
            self._emit(out, self.device.account_express(now, peers), None)
            _, underlay_id = self._express_ids
            for pid, tx_n, _tb, rx_d, rx_k, _rb, _src, _rx_last in peers:
                if tx_n:
                    self._mark_active(pid, now)
                if (rx_d or rx_k) and pid in self._underlay_of:
                    self._underlay_of[pid] = underlay_id
        for reason, n in drops.items():
            r = DropReason(reason)
            (self.drops if r in _CORE_REASONS else self.device.drops)[r] += n
        self.delivered_packets += delivered
        if self._express_on_errors is not None:
            if udp_errors:
                self._express_on_errors("udp", udp_errors)
            if tun_errors:
                self._express_on_errors("tun", tun_errors)
