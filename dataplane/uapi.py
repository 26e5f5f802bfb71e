"""The cross-platform WireGuard userspace API (UAPI) over a UNIX socket, so ``wg`` works.

Theory of operation. Three layers, each testable alone:

* **Parsing** (:func:`parse_set`) turns the lines of one ``set=1`` request into a
  :class:`SetRequest`, checking every line (hex keys, strict decimal numbers, booleans that
  can only be ``true``, endpoints ``IP:port`` / ``[IPv6]:port``, prefixes ``addr/cidr`` with
  an optional leading ``-`` to remove one) and raising :class:`UAPIError` carrying the
  negative errno that the reply will hold.
* **The interface** (:class:`Interface`) holds what the UAPI exposes and the core does not
  keep (listen port, fwmark, whether a private key is set) next to the driver. A ``set``
  is planned on a copy of the peer table first: the whole request is replayed on plain
  ``_PeerModel`` records (replace_peers, remove, update_only, prefixes moving between
  peers, masking and de-duplication as wireguard-go does) and every value the core would
  refuse is checked there. Planning and applying happen in one critical section under the
  driver lock (``ThreadedDataPlane.locked()``), the change applied as a diff against the
  core's peers (sessions of unchanged peers survive ``wg setconf``/``syncconf``) with the
  routing tables rebuilt once per request: a malformed or refused request changes nothing,
  unlike the reference, which applies each line as it reads it. Moving the UDP socket
  (``bind_port``) is I/O and happens between a checking pass and the applying pass, never
  under the lock. ``get`` copies plain values under the lock and formats after it.
* **The server** (:class:`UAPIServer`) owns ``<dir>/NAME.sock``: it refuses to replace a
  live socket, removes a stale one, creates the new one with wireguard-go's permissions
  (directory 0755, socket 0700) without a window where it has others, and runs one named
  accept thread plus one short-lived thread per connection (bounded in number, idle
  connections time out). Requests are framed by lines: a line over 64 KiB, or a ``set``
  over ``max_request`` bytes, gets an errno and the connection is closed (the stream
  cannot be re-synchronised); an unknown operation closes the connection without a reply,
  as wireguard-go does; a ``set`` cut off before its blank line is never applied. The
  accept thread also notices when the socket file is deleted (``on_deleted``), which is
  how wireguard-go learns it should shut down. ``close()`` stops and joins every thread
  and removes the socket if it is still ours.

The core cannot change its private key, so a key change rebuilds it: the driver runs a
:class:`CoreSlot` that forwards to the current ``DataPlane``, and a new key builds a new
``DataPlane`` (through ``core_factory``) with the same peers and swaps it into the slot
under the lock. Sessions and counters restart, which a key change implies anyway. With no
private key (all zeros) the slot is *inert*: it drops all traffic and runs no timers.
If the driver runs a bare ``DataPlane`` instead of a slot, key changes are refused with
EOPNOTSUPP and nothing else in the request is applied.

A bad line inside a ``set`` does not end the connection: the request is read to its blank
line, answered with one errno, and the next request is served. Deviations from
wireguard-go 0.0.20220316, each pinned by ``tests/test_wg_conformance.py``: failed sets
change nothing; ``allowed_ip=-prefix`` removes one prefix (2025 protocol); endpoint port 0
and low-order public keys are refused (the core cannot hold them); IPv4-mapped IPv6
endpoints are stored and shown as IPv4 (the core normalises them).
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import os
import re
import selectors
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dataplane._batch import DropReason, PacketBatch
from dataplane.core import DataPlane
from dataplane.results import Endpoint, Output
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey, clamp

__all__ = [
    "CoreSlot",
    "DEFAULT_SOCKET_DIR",
    "Interface",
    "PeerOp",
    "SetRequest",
    "UAPIError",
    "UAPIServer",
    "parse_set",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = "/var/run/wireguard"
MAX_LINE = 64 * 1024
"""Longest request line (wireguard-go's bufio.Scanner limit); longer is EIO."""
MAX_REQUEST = 8 * 1024 * 1024
"""Largest ``set`` request (implementation limit; ~100k allowed IPs); larger is EFBIG."""
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0
WATCH_INTERVAL = 0.5  # how often the accept thread checks that its socket file still exists

# Replies carry negative errno values after a failed set (wg negates them to print).
EINVAL = -_errno.EINVAL
EPROTO = -_errno.EPROTO
EIO = -_errno.EIO
EADDRINUSE = -_errno.EADDRINUSE
EOPNOTSUPP = -_errno.EOPNOTSUPP
EFBIG = -_errno.EFBIG

_UNSET: Any = object()
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DECIMAL = re.compile(r"[0-9]{1,10}")
_ZERO_KEY = bytes(32)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UAPIError(Exception):
    """A request the interface refuses; ``errno`` is the (negative) value to reply with."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


# -- parsing a set request --


@dataclass
class PeerOp:
    """One ``public_key=`` section of a set request, in the order its lines came."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    psk: Any = _UNSET  # PresharedKey, None (all zeros: remove it) or _UNSET
    endpoint: Any = _UNSET  # (ip, port) or _UNSET
    keepalive: Any = _UNSET  # int seconds (0 disables) or _UNSET
    # ("clear", None) for replace_allowed_ips, ("add"|"del", prefix) for allowed_ip lines.
    allowed_ops: list[tuple[str, IPNetwork | None]] = field(default_factory=list)


@dataclass
class SetRequest:
    private_key: Any = _UNSET  # 32 raw bytes (all zeros clears it) or _UNSET
    listen_port: Any = _UNSET
    fwmark: Any = _UNSET
    replace_peers: bool = False
    peers: list[PeerOp] = field(default_factory=list)


def _hex_key(value: str, key: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        raise UAPIError(EINVAL, f"{key}: expected 64 hex digits")
    return bytes.fromhex(value)


def _number(value: str, limit: int, key: str) -> int:
    if not _DECIMAL.fullmatch(value) or int(value) > limit:
        raise UAPIError(EINVAL, f"{key}: expected a decimal number 0..{limit}")
    return int(value)


def _true(value: str, key: str) -> bool:
    if value != "true":
        raise UAPIError(EINVAL, f"{key}: the only accepted value is true")
    return True


def parse_endpoint(value: str) -> Endpoint:
    """``IPv4:port`` or ``[IPv6]:port``; names are never resolved here (as in the reference)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise UAPIError(EINVAL, f"endpoint {value!r}: expected [IPv6]:port")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or ":" in host:
            raise UAPIError(EINVAL, f"endpoint {value!r}: expected IP:port")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UAPIError(EINVAL, f"endpoint {value!r}: not an IP address") from None
    if value.startswith("[") != (addr.version == 6):
        raise UAPIError(EINVAL, f"endpoint {value!r}: IPv6 and only IPv6 goes in brackets")
    number = _number(port, 0xFFFF, "endpoint port")
    if number == 0:
        raise UAPIError(EINVAL, f"endpoint {value!r}: port 0")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (str(addr), number)


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prefix(value: str) -> tuple[str, IPNetwork]:
    action = "add"
    if value.startswith("-"):
        action, value = "del", value[1:]
    addr, sep, length = value.partition("/")
    if not sep or not _DECIMAL.fullmatch(length) or "%" in addr:
        raise UAPIError(EINVAL, f"allowed_ip {value!r}: expected addr/cidr")
    try:
        return action, ipaddress.ip_network(f"{addr}/{int(length)}", strict=False)
    except ValueError:
        raise UAPIError(EINVAL, f"allowed_ip {value!r}: bad prefix") from None


def parse_set(lines: list[str]) -> SetRequest:
    """Check and collect the lines of one set request (without ``set=1`` and the blank line)."""
    req = SetRequest()
    peer: PeerOp | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIError(EPROTO, f"line without '=': {line[:40]!r}")
        if key == "public_key":
            try:
                peer = PeerOp(PublicKey(_hex_key(value, key)))
            except ValueError:
                raise UAPIError(EINVAL, "public_key: bad key") from None
            req.peers.append(peer)
        elif peer is None:
            if key == "private_key":
                req.private_key = _hex_key(value, key)
            elif key == "listen_port":
                req.listen_port = _number(value, 0xFFFF, key)
            elif key == "fwmark":
                req.fwmark = _number(value, 0xFFFFFFFF, key)
            elif key == "replace_peers":
                req.replace_peers = _true(value, key)
            else:
                raise UAPIError(EINVAL, f"unknown interface key {key[:40]!r}")
        elif key == "remove":
            peer.remove = _true(value, key)
        elif key == "update_only":
            peer.update_only = _true(value, key)
        elif key == "preshared_key":
            raw = _hex_key(value, key)
            peer.psk = None if raw == _ZERO_KEY else PresharedKey(raw)
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.keepalive = _number(value, 0xFFFF, key)
        elif key == "replace_allowed_ips":
            _true(value, key)
            peer.allowed_ops.append(("clear", None))
        elif key == "allowed_ip":
            peer.allowed_ops.append(_prefix(value))
        elif key == "protocol_version":
            if value != "1":
                raise UAPIError(EINVAL, "protocol_version: only 1 is supported")
        else:
            raise UAPIError(EINVAL, f"unknown peer key {key[:40]!r}")
    return req


# -- the core behind a swappable slot --


class CoreSlot:
    """The core the driver runs: forwards to ``core``, which a private-key change replaces.

    ``inert`` (no private key configured) drops every packet and runs no timers, as a
    WireGuard interface without a key can neither send nor receive.
    """

    def __init__(self, core: DataPlane, *, inert: bool = False) -> None:
        self.core = core
        self.inert = inert

    @staticmethod
    def _drop_all(batch: PacketBatch) -> Output:
        for i in batch.alive():
            batch.set_status(i, DropReason.NO_ROUTE)
        return Output()

    def next_event(self) -> float | None:
        return None if self.inert else self.core.next_event()

    def process_outbound(self, now: float, overlay_id: int, batch: Any) -> Output:
        if self.inert:
            return self._drop_all(batch)
        return self.core.process_outbound(now, overlay_id, batch)

    def process_inbound(self, now: float, underlay_id: int, batch: Any) -> Output:
        if self.inert:
            return self._drop_all(batch)
        return self.core.process_inbound(now, underlay_id, batch)

    def process_events(self, now: float) -> Output:
        return Output() if self.inert else self.core.process_events(now)

    def __getattr__(self, name: str) -> Any:
        # stats(), peer_ids()... of the current core, for code that reads through the driver.
        return getattr(self.core, name)


# -- the interface --


@dataclass
class _PeerModel:
    """A peer's UAPI-visible configuration; plans are computed on copies of these."""

    pid: int | None
    public_key: PublicKey
    psk: PresharedKey | None
    endpoint: Endpoint | None
    keepalive: int
    allowed: dict[IPNetwork, None]  # an ordered set

    def copy(self) -> _PeerModel:
        return _PeerModel(
            self.pid, self.public_key, self.psk, self.endpoint, self.keepalive, dict(self.allowed)
        )


def _low_order(public_key: PublicKey) -> bool:
    # X25519 with a low-order point gives all zeros for any clamped scalar; cryptography
    # refuses that exchange, as the core's add_peer would.
    probe = X25519PrivateKey.from_private_bytes(clamp(b"\x01" * 32))
    try:
        probe.exchange(X25519PublicKey.from_public_bytes(public_key.raw))
    except ValueError:
        return True
    return False


def _default_factory(old: DataPlane) -> Callable[[PrivateKey], DataPlane]:
    def build(key: PrivateKey) -> DataPlane:
        core = DataPlane(key, mtu=old.mtu)
        core.set_addresses(old.addresses)  # all on overlay transport 0: see the docstring
        return core

    return build


class Interface:
    """What ``wg`` sees of one interface: the driver's core plus port, fwmark and key state.

    ``bind_port(port) -> actual port`` (optional) moves the UDP socket when ``listen_port``
    changes; an ``OSError`` with EADDRINUSE becomes the errno reply and changes nothing.
    ``apply_fwmark(mark)`` (optional) marks the sockets. ``core_factory(private_key)``
    builds the replacement ``DataPlane`` on a key change (addresses, routes, filters of the
    interface); the default copies the MTU and the addresses (onto overlay transport 0).
    """

    def __init__(
        self,
        driver: Any,
        *,
        listen_port: int = 0,
        fwmark: int = 0,
        bind_port: Callable[[int], int] | None = None,
        apply_fwmark: Callable[[int], None] | None = None,
        core_factory: Callable[[PrivateKey], DataPlane] | None = None,
    ) -> None:
        self.driver = driver
        self.listen_port = listen_port
        self.fwmark = fwmark
        self._bind_port = bind_port
        self._apply_fwmark = apply_fwmark
        self._core_factory = core_factory
        # One set at a time (a set may take the driver lock twice, around a bind).
        self._set_lock = threading.Lock()
        self.sets_applied = 0
        self.sets_refused = 0

    # -- reading ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[tuple[CoreSlot | None, DataPlane]]:
        with self.driver.locked() as held:
            if isinstance(held, CoreSlot):
                yield held, held.core
            else:
                yield None, held

    @staticmethod
    def _has_key(slot: CoreSlot | None) -> bool:
        return slot is None or not slot.inert

    @staticmethod
    def _models(core: DataPlane) -> dict[bytes, _PeerModel]:
        models = {}
        for pid in core.peer_ids():
            peer = core.device.peers[pid]
            models[peer.public_key.raw] = _PeerModel(
                pid,
                peer.public_key,
                None if peer.psk.secret_bytes() == _ZERO_KEY else peer.psk,
                peer.endpoint,
                int(peer.persistent_keepalive or 0),
                dict.fromkeys(ipaddress.ip_network(n) for n in core.allowed_ips(pid)),
            )
        return models

    def get(self) -> str:
        """The body of a ``get=1`` reply (without the ``errno=0`` line).

        Only a snapshot of plain values is taken under the driver lock (packets wait for
        it); the text is formatted after the lock is released.
        """
        with self._locked() as (slot, core):
            key = core.device.private_key.secret_bytes() if self._has_key(slot) else None
            port, mark = self.listen_port, self.fwmark
            peers = []
            for pid in core.peer_ids():
                peer = core.device.peers[pid]
                st = peer.stats()
                peers.append((peer.public_key.raw, peer.psk.secret_bytes(), st.endpoint,
                              st.last_handshake, st.tx_bytes, st.rx_bytes,
                              peer.persistent_keepalive, core.allowed_ips(pid)))  # fmt: skip
        out: list[str] = []
        if key is not None:
            out.append(f"private_key={key.hex()}")
        if port:
            out.append(f"listen_port={port}")
        if mark:
            out.append(f"fwmark={mark}")
        for pk, psk, endpoint, handshake, tx, rx, keepalive, allowed in peers:
            sec, nsec = _unix_time(handshake)
            out.append(f"public_key={pk.hex()}")
            out.append(f"preshared_key={psk.hex()}")
            out.append("protocol_version=1")
            if endpoint is not None:
                out.append(f"endpoint={format_endpoint(endpoint)}")
            out.append(f"last_handshake_time_sec={sec}")
            out.append(f"last_handshake_time_nsec={nsec}")
            out.append(f"tx_bytes={tx}")
            out.append(f"rx_bytes={rx}")
            out.append(f"persistent_keepalive_interval={int(keepalive or 0)}")
            out.extend(f"allowed_ip={net}" for net in allowed)
        return "".join(line + "\n" for line in out)

    # -- writing ------------------------------------------------------------------------------

    def set(self, request: SetRequest) -> None:
        """Apply a parsed request entirely or not at all; raises UAPIError."""
        with self._set_lock:
            try:
                self._set(request)
            except UAPIError:
                self.sets_refused += 1
                raise
            self.sets_applied += 1

    def set_lines(self, lines: list[str]) -> int:
        """Parse and apply one request; returns the errno to reply (0 on success)."""
        try:
            request = parse_set(lines)
        except UAPIError as e:
            with self._set_lock:
                self.sets_refused += 1
            log.info("uapi set refused (errno %d): %s", e.errno, e)
            return e.errno
        try:
            self.set(request)
        except UAPIError as e:
            log.info("uapi set refused (errno %d): %s", e.errno, e)
            return e.errno
        return 0

    def _prepare(
        self, slot: CoreSlot | None, core: DataPlane, req: SetRequest
    ) -> tuple[dict[bytes, _PeerModel], dict[bytes, _PeerModel], PrivateKey | None, bool]:
        """Plan ``req`` on the core's current peers and check it: (current, target, key,
        whether the key changes). Called with the driver lock held; changes nothing."""
        current = self._models(core)
        old_key = core.device.private_key if self._has_key(slot) else None
        new_key, key_changes = old_key, False
        if req.private_key is not _UNSET:
            raw = req.private_key
            new_key = None if raw == _ZERO_KEY else PrivateKey(clamp(raw))
            key_changes = new_key != old_key
            if key_changes and slot is None:
                raise UAPIError(EOPNOTSUPP, "this core cannot change its private key")
        own = new_key.public_key if new_key is not None else None
        target = self._plan(current, req, own)
        for model in target.values():
            if model.pid is None and _low_order(model.public_key):
                raise UAPIError(EINVAL, f"peer {model.public_key} is a low-order point")
        return current, target, new_key, key_changes

    def _set(self, req: SetRequest) -> None:
        old_port = self.listen_port
        port = old_port
        if req.listen_port is not _UNSET and req.listen_port != old_port:
            port = req.listen_port
            if self._bind_port is not None:
                # Binding is I/O and must not happen under the driver lock, nor for a
                # request that is going to fail: check the request first.
                with self._locked() as (slot, core):
                    self._prepare(slot, core, req)
                try:
                    port = self._bind_port(req.listen_port)
                except OSError as e:
                    code = e.errno if e.errno else _errno.EIO
                    raise UAPIError(-code, f"listen_port {req.listen_port}: {e}") from None

        # Plan again on the peers as they are now (another controller may have changed
        # them meanwhile) and apply, all in one critical section.
        with self._locked() as (slot, core):
            try:
                current, target, new_key, key_changes = self._prepare(slot, core, req)
            except UAPIError:
                if port != old_port and self._bind_port is not None:
                    self._rebind(old_port)
                raise
            if key_changes:
                assert slot is not None
                build = self._core_factory or _default_factory(core)
                fresh = build(new_key or PrivateKey.generate())
                with _one_rebuild(fresh):
                    for model in target.values():
                        self._add(fresh, model)
                slot.core, slot.inert = fresh, new_key is None
            else:
                try:
                    with _one_rebuild(core):
                        self._apply_diff(core, current, target)
                except ValueError as e:  # the plan checks what the core checks: a bug
                    log.error("core refused a checked UAPI plan: %s", e)
                    raise UAPIError(EINVAL, f"core refused the change: {e}") from None
            self.listen_port = port
            if req.fwmark is not _UNSET and req.fwmark != self.fwmark:
                self.fwmark = req.fwmark
                if self._apply_fwmark is not None:
                    self._apply_fwmark(req.fwmark)

    def _rebind(self, port: int) -> None:
        assert self._bind_port is not None
        try:
            self._bind_port(port)
        except OSError as e:
            log.error("could not return to listen port %d: %s", port, e)

    @staticmethod
    def _plan(
        current: dict[bytes, _PeerModel], req: SetRequest, own: PublicKey | None
    ) -> dict[bytes, _PeerModel]:
        """Replay the request on copies, as wireguard-go would apply it line by line."""
        state = {} if req.replace_peers else {k: m.copy() for k, m in current.items()}
        if own is not None:
            state.pop(own.raw, None)  # a new private key removes the peer with its public key
        # Each prefix has one owner; the index keeps every line O(1) for large requests.
        owner = {net: m for m in state.values() for net in m.allowed}
        for op in req.peers:
            raw = op.public_key.raw
            if own is not None and raw == own.raw:
                continue  # the reference ignores a peer with the interface's own key
            if op.remove:
                gone = state.pop(raw, None)
                for net in gone.allowed if gone is not None else ():
                    del owner[net]
                continue
            model = state.get(raw)
            if model is None:
                if op.update_only:
                    continue
                old = current.get(raw)
                model = _PeerModel(old.pid if old else None, op.public_key, None, None, 0, {})
            if op.psk is not _UNSET:
                model.psk = op.psk
            if op.endpoint is not _UNSET:
                model.endpoint = op.endpoint
            if op.keepalive is not _UNSET:
                model.keepalive = op.keepalive
            for action, prefix in op.allowed_ops:
                if prefix is None:  # replace_allowed_ips
                    for mine in model.allowed:
                        del owner[mine]
                    model.allowed.clear()
                elif action == "del":
                    if prefix in model.allowed:
                        del model.allowed[prefix]
                        del owner[prefix]
                else:
                    previous = owner.get(prefix)
                    if previous is not None and previous is not model:
                        del previous.allowed[prefix]  # given to another peer: it moves
                    owner[prefix] = model
                    model.allowed[prefix] = None
            state[raw] = model
        return state

    @staticmethod
    def _add(core: DataPlane, model: _PeerModel) -> None:
        model.pid = core.add_peer(
            model.public_key,
            allowed_ips=list(model.allowed),
            psk=model.psk,
            endpoint=model.endpoint,
            persistent_keepalive=model.keepalive or None,
            peer_id=model.pid
            if model.pid is not None and model.pid not in core.peer_ids()
            else None,
        )

    def _apply_diff(
        self, core: DataPlane, current: dict[bytes, _PeerModel], target: dict[bytes, _PeerModel]
    ) -> None:
        for raw, gone in current.items():
            if raw not in target:
                assert gone.pid is not None
                core.remove_peer(gone.pid)
        for raw, model in target.items():
            old = current.get(raw)
            if old is None:
                model.pid = None
                self._add(core, model)
                continue
            assert old.pid is not None
            changes: dict[str, Any] = {}
            if model.psk != old.psk:
                changes["psk"] = model.psk
            if model.endpoint != old.endpoint:
                changes["endpoint"] = model.endpoint
            if model.keepalive != old.keepalive:
                changes["persistent_keepalive"] = model.keepalive or None
            if list(model.allowed) != list(old.allowed):
                changes["allowed_ips"] = list(model.allowed)
            if changes:
                core.update_peer(old.pid, **changes)

    def apply_config(self, config: Any) -> None:
        """Replace the whole configuration with a parsed wg-quick file (``wg setconf``)."""
        from dataplane.config import Config

        assert isinstance(config, Config)
        i = config.interface
        req = SetRequest(replace_peers=True)
        if i.private_key is not None:
            req.private_key = i.private_key.secret_bytes()
        if i.listen_port is not None:
            req.listen_port = i.listen_port
        if i.fwmark is not None:
            req.fwmark = i.fwmark
        for p in config.peers:
            op = PeerOp(p.public_key, psk=p.preshared_key, keepalive=p.persistent_keepalive or 0)
            if p.endpoint is not None:
                op.endpoint = parse_endpoint(format_endpoint(p.endpoint.pair()))
            op.allowed_ops = [("add", n) for n in p.allowed_ips]
            req.peers.append(op)
        self.set(req)


@contextmanager
def _one_rebuild(core: DataPlane) -> Iterator[None]:
    """Rebuild the core's routing tables once for a whole request instead of per peer
    (``wg setconf`` of 1000 peers); used under the driver lock, so no packet sees the
    tables between the peer changes and the rebuild at the end."""
    configure = getattr(core, "configure", None)
    if configure is None:  # an inert slot without a core
        yield
        return
    with configure():
        yield


def _unix_time(wall: float | None) -> tuple[int, int]:
    if not wall:
        return 0, 0
    ns = int(round(wall * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000


# -- the socket server --


class _LineTooLong(Exception):
    pass


class _Lines:
    """Reads ``\\n``-terminated lines from a stream socket, each at most ``limit`` bytes."""

    def __init__(self, conn: socket.socket, limit: int) -> None:
        self._conn = conn
        self._limit = limit
        self._buf = bytearray()

    def readline(self) -> str | None:
        """The next line without its ``\\n``; None at end of stream (or a cut-off line)."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                if nl > self._limit:
                    raise _LineTooLong
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                # latin-1 never fails; anything non-ASCII is then an invalid key or value.
                return line.decode("latin-1")
            if len(self._buf) > self._limit:
                raise _LineTooLong
            try:
                chunk = self._conn.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self._buf += chunk


class UAPIServer:
    """Serve ``interface`` on ``<socket_dir>/<name>.sock``; see the module docstring."""

    def __init__(
        self,
        name: str,
        interface: Interface,
        *,
        socket_dir: str = DEFAULT_SOCKET_DIR,
        max_line: int = MAX_LINE,
        max_request: int = MAX_REQUEST,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        on_deleted: Callable[[], None] | None = None,
    ) -> None:
        if not re.fullmatch(r"[a-zA-Z0-9_=+.-]{1,15}", name) or name in (".", ".."):
            raise ValueError(f"bad interface name {name!r}")
        self.name = name
        self.interface = interface
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, f"{name}.sock")
        self.max_line = max_line
        self.max_request = max_request
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.on_deleted = on_deleted
        self.deleted = threading.Event()
        self.requests = 0
        self.rejected_connections = 0
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, socket.socket] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> UAPIServer:
        if self._thread is not None or self._closed:
            raise RuntimeError("a UAPIServer starts once")
        try:
            self._sock = self._listen()
        except BaseException:
            self._closed = True
            self._wake_r.close()
            self._wake_w.close()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"uapi-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> socket.socket:
        os.makedirs(self.socket_dir, mode=0o755, exist_ok=True)
        self._remove_stale()
        # Bind under a private name, set the mode, then link it into place: nobody can
        # connect while the mode is still the default, and an existing name is not clobbered.
        tmp = os.path.join(self.socket_dir, f".{self.name}.{os.getpid()}.{id(self)}.tmp")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            sock.bind(tmp)
            try:
                os.chmod(tmp, 0o700)
                sock.listen(self.max_connections)
                os.link(tmp, self.path)
            finally:
                os.unlink(tmp)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale UAPI socket %s", self.path)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        finally:
            probe.close()
        raise FileExistsError(f"{self.path} is in use by another process")

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every connection, join every thread, remove our socket."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._stopping = True
            conns = dict(self._conns)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for conn in conns.values():
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        current = threading.current_thread()
        if self._thread is not None and self._thread is not current:
            self._thread.join(timeout)
        for t in conns:
            if t is not current:
                t.join(timeout)
        with self._lock:
            late = dict(self._conns)  # accepted between the snapshot and the stop
        for t in late:
            if t is not current:
                t.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self._is_ours():
                os.unlink(self.path)
        self._wake_r.close()
        self._wake_w.close()
        alive = [
            t.name
            for t in (self._thread, *conns, *late)
            if t is not None and t is not current and t.is_alive()
        ]
        if alive:
            raise RuntimeError(f"UAPI threads did not stop within {timeout}s: {alive}")

    def __enter__(self) -> UAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _is_ours(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    # -- accept thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                events = sel.select(WATCH_INTERVAL)
                if self._stopping:
                    break
                if not self.deleted.is_set() and not self._is_ours():
                    self.deleted.set()
                    log.info("UAPI socket %s was removed", self.path)
                    if self.on_deleted is not None:
                        try:
                            self.on_deleted()
                        except Exception:  # noqa: BLE001 - the owner's bug; keep serving
                            log.exception("on_deleted callback failed")
                for key, _ in events:
                    if key.fileobj is self._sock:
                        self._accept()
        finally:
            sel.close()

    def _accept(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with self._lock:
            self._conns = {t: c for t, c in self._conns.items() if t.is_alive()}
            if self._stopping or len(self._conns) >= self.max_connections:
                self.rejected_connections += 1
                conn.close()
                return
            t = threading.Thread(
                target=self._handle, args=(conn,), name=f"uapi-{self.name}-conn", daemon=True
            )
            self._conns[t] = conn
        t.start()

    # -- one connection -------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            self._converse(conn, _Lines(conn, self.max_line))
        except _LineTooLong:
            self._reply(conn, EIO)
        except OSError:
            pass
        except Exception:  # noqa: BLE001 - a bug must not kill the server; it is logged
            log.exception("UAPI connection failed")
        finally:
            with self._lock:
                self._conns.pop(threading.current_thread(), None)
            conn.close()

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    @staticmethod
    def _reply(conn: socket.socket, errno: int, body: str = "") -> None:
        try:
            conn.sendall(f"{body}errno={errno}\n\n".encode("ascii"))
        except OSError:
            pass

    def _converse(self, conn: socket.socket, lines: _Lines) -> None:
        while not self._stopping:
            op = lines.readline()
            if op is None:
                return
            if op == "get=1":
                end = lines.readline()
                if end is None:
                    return
                if end != "":
                    self._reply(conn, EINVAL)  # we cannot know where this request ends
                    return
                self._count()
                self._reply(conn, 0, self.interface.get())
            elif op == "set=1":
                body: list[str] = []
                size = 0
                while True:
                    line = lines.readline()
                    if line is None:
                        return  # cut off before its blank line: never applied
                    if line == "":
                        break
                    size += len(line) + 1
                    if size > self.max_request:
                        self._reply(conn, EFBIG)
                        return
                    body.append(line)
                self._count()
                self._reply(conn, self.interface.set_lines(body))
            else:
                return  # unknown operation: close without a reply, as the reference does
