"""The sans-I/O WireGuard device: many peers, handshakes, sessions, timers, no I/O, no clock.

Theory of operation. The caller owns sockets, threads and the clock and drives four entry
points, each taking ``now`` (monotonic seconds):

* ``send(now, {peer_id: batch})``: plaintext IP packets to peers. With a usable session the
  batch is sealed in place (``SendKey.seal``, one nogil loop) and returned as a ``Transmit``
  for the peer's endpoint. Without one, its packets are copied to the peer's staging queue
  (slot status NO_SESSION) and a handshake starts.
* ``receive(now, batch)``: UDP payloads, each slot carrying its source endpoint. One nogil
  pass drops malformed slots and finds the handshake messages; transport messages are opened
  in place per receiver index (``ReceiveKey.open``); handshake messages go through the control
  path below, one at a time. Afterwards, every slot is either alive (authenticated
  plaintext, still padded, ``peers[i]`` = peer id), KEEPALIVE or HANDSHAKE (consumed), or
  dropped with a reason that is also counted in ``drops``.
* ``dispatch_events(now)`` runs the timers that are due; ``next_event()`` says when.

Every call returns a list of ``Transmit(peer, endpoint, batch)``: the alive slots of
``batch`` go to ``endpoint``.

Control path (per handshake message, Python):

    initiation --mac1--> [under load: mac2 or Cookie Reply; token bucket] --Noise-->
      timestamp > last? 20 ms since last? --> roam --> Response, keypair in "next"
    response --mac1--> [under load: ...] --index--> pending? --Noise--> keypair "current",
      flush staged packets (or one keepalive: the initiator confirms)
    cookie reply --index--> store cookie for mac2 (never roams)
    transport on "next" that decrypts --> confirm: next becomes current, flush staged

Timers (wireguard-complete.md "Timer rules"; hooks are named after the event, handlers
after what expired): retransmit (5 s + jitter, give up after 90 s), passive keepalive (10 s
after received data if we sent nothing), new handshake (15 s after sent data with nothing
received), persistent keepalive, session expiry (180 s) and key wipe (540 s). Each peer
keeps at most one handle per timer; re-arming replaces the old handle (or keeps it when the
window is unchanged), and removing a peer cancels all of them, so no stale event ever fires.

Simultaneous initiation: when an initiation arrives while ours is pending (sent less than
REKEY_TIMEOUT ago), the side with the greater static public key keeps its own handshake
and drops the peer's initiation; the other side answers it. Exactly one session pair comes
out, and the loser's pending initiation is abandoned once the winner's session is
confirmed. After REKEY_TIMEOUT both sides answer everything (wireguard-go never arbitrates,
so this also keeps us live against peers that do not), and the "next"/"previous" slots keep
whatever results usable.

Locking: none. The device is not thread-safe; the driver holds the core lock around calls.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dataplane._batch import DropReason, PacketBatch
from dataplane._crypto import receiver_indices
from dataplane.timers import Scheduler, TimeRange

from . import _wgbatch
from .constants import (
    DEFAULT_MTU,
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_THRESHOLD,
    ZERO_KEY_MATERIAL_TIME,
)
from .cookie import CookieChecker, LoadMonitor, RateLimiter, source_bytes
from .indextable import IndexTable, UrandomBits
from .keypair import Keypair
from .keys import PresharedKey, PrivateKey, PublicKey
from .messages import MessageCookieReply, MessageResponse
from .noise import (
    DH,
    NoiseError,
    PeerNoiseCache,
    consume_message_initiation,
    consume_message_response,
    create_message_initiation,
    create_message_response,
)
from .peer import Endpoint, Peer, PeerStats, PendingInitiation
from .tai64n import TAI64NClock

__all__ = ["Device", "Transmit", "ConfigError"]

log = logging.getLogger(__name__)

_UNSET: object = object()
_INIT_HEADER = struct.Struct("<II")
_RESP_HEADER = struct.Struct("<III")
_INIT_TYPE_WORD = struct.pack("<I", MESSAGE_INITIATION)
_INIT_FIELDS = struct.Struct("<4xI108s")  # sender, Noise body (mac1/mac2 follow)
_CONTROL_BATCH = 8  # control messages per output batch
_REASONS = {r.value: r for r in DropReason}


class ConfigError(ValueError):
    """Bad configuration (duplicate peer, our own key as a peer, bad keepalive...)."""


@dataclass
class Transmit:
    """Datagrams to send: every alive slot of ``batch`` goes to ``endpoint``.

    ``peer`` is None for Cookie Replies (answers to a source, not to a known peer).
    """

    peer: int | None
    endpoint: Endpoint
    batch: PacketBatch


def _norm_endpoint(ep: Endpoint | None) -> Endpoint | None:
    if ep is None:
        return None
    host, port = ep
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"endpoint address {host!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not 0 < int(port) <= 0xFFFF:
        raise ConfigError(f"endpoint port {port!r} out of range")
    return (str(addr), int(port))


class _Out:
    """Collects what one call sends, keeping order per destination."""

    def __init__(self, mtu: int) -> None:
        self.mtu = mtu
        self.items: list[Transmit] = []
        self._open: dict[tuple[int | None, Endpoint], PacketBatch] = {}

    def control(self, peer: int | None, endpoint: Endpoint, message: bytes) -> None:
        key = (peer, endpoint)
        b = self._open.get(key)
        if b is None or b.room == 0:
            # Control messages are at most 148 bytes (an initiation): small slots.
            # (Positional arguments: keyword parsing is a tenth of this constructor's cost.)
            b = PacketBatch(_CONTROL_BATCH, MESSAGE_INITIATION_SIZE)
            self._open[key] = b
            self.items.append(Transmit(peer, endpoint, b))
        b.append(message)

    def data(self, peer: int, endpoint: Endpoint, batch: PacketBatch) -> None:
        self._open.pop((peer, endpoint), None)  # later control messages go after the data
        self.items.append(Transmit(peer, endpoint, batch))


class Device:
    """A WireGuard interface without I/O. See the module docstring."""

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        wall_clock: Callable[[], float],
        mtu: int = DEFAULT_MTU,
        rng: random.Random | None = None,
        under_load_threshold: int = UNDER_LOAD_THRESHOLD,
    ) -> None:
        if not 0 < mtu <= 65535:
            raise ConfigError(f"mtu {mtu} out of range")
        self.private_key = private_key
        self.public_key = private_key.public_key
        self.mtu = mtu
        self._rng = rng if rng is not None else random.SystemRandom()
        self._tai64n = TAI64NClock(wall_clock)
        self._wall = wall_clock
        # Receiver indices: from the injected generator (tests replay them), else urandom.
        self.index_table = IndexTable(
            self._rng.getrandbits if rng is not None else UrandomBits().getrandbits
        )
        self.scheduler: Scheduler[tuple[Peer, str, int]] = Scheduler()
        self._timer_serial = 0
        self.cookie_checker = CookieChecker(self.public_key.raw, self._random_bytes)
        self.rate_limiter = RateLimiter()
        self.load_monitor = LoadMonitor(under_load_threshold)
        self._responder_cache = PeerNoiseCache(self.public_key.raw)
        self.peers: dict[int, Peer] = {}
        self._by_key: dict[bytes, Peer] = {}
        #: dropped slots and messages per DropReason
        self.drops: Counter[DropReason] = Counter()
        #: finer-grained causes of drops and notable control-path events
        self.events: Counter[str] = Counter()
        #: bumped whenever a peer's sessions or endpoint change (the established-session
        #: path re-reads them then)
        self.epoch = 0

    def _random_bytes(self, n: int) -> bytes:
        return self._rng.getrandbits(8 * n).to_bytes(n, "little")

    # ------------------------------------------------------------------ configuration

    def add_peer(
        self,
        peer_id: int,
        public_key: PublicKey,
        *,
        psk: PresharedKey | None = None,
        persistent_keepalive: float | None = None,
        endpoint: Endpoint | None = None,
    ) -> Peer:
        if not isinstance(peer_id, int) or not 0 <= peer_id < 2**31:
            raise ConfigError(f"peer id {peer_id!r} must be an int in [0, 2^31)")
        if peer_id in self.peers:
            raise ConfigError(f"peer id {peer_id} already exists")
        self._check_key(public_key, None)
        ka = self._check_keepalive(persistent_keepalive)
        peer = Peer(peer_id, public_key, psk or PresharedKey.zero(), ka, _norm_endpoint(endpoint))
        self._rekey_peer(peer)
        self.peers[peer_id] = peer
        self._by_key[public_key.raw] = peer
        self.epoch += 1
        if ka:
            # wireguard-go sends a keepalive as soon as a persistent keepalive is configured,
            # which also brings the session up; fire at the caller's next dispatch (time 0 is
            # in the past of any monotonic clock).
            self._mod_timer(peer, "persistent_keepalive", 0.0, 0.0)
        return peer

    def update_peer(
        self,
        peer_id: int,
        *,
        public_key: PublicKey | object = _UNSET,
        psk: PresharedKey | None | object = _UNSET,
        persistent_keepalive: float | None | object = _UNSET,
        endpoint: Endpoint | None | object = _UNSET,
    ) -> Peer:
        peer = self._peer(peer_id)
        self.epoch += 1
        rekey = False
        if public_key is not _UNSET and public_key != peer.public_key:
            assert isinstance(public_key, PublicKey)
            self._check_key(public_key, peer)
            del self._by_key[peer.public_key.raw]
            peer.public_key = public_key
            self._by_key[public_key.raw] = peer
            rekey = True
        if psk is not _UNSET:
            new_psk = psk if isinstance(psk, PresharedKey) else PresharedKey.zero()
            if new_psk != peer.psk:
                peer.psk = new_psk
                rekey = True
        if rekey:
            # The old sessions and handshake belong to the old keys: drop them all and
            # rebuild mac1/cookie state for the new key (the reference kept the old ones).
            self._wipe(peer)
            self._rekey_peer(peer)
        if endpoint is not _UNSET:
            peer.endpoint = _norm_endpoint(endpoint)  # type: ignore[arg-type]
        if persistent_keepalive is not _UNSET:
            ka = self._check_keepalive(persistent_keepalive)
            peer.persistent_keepalive = ka
            if ka:
                self._mod_timer(peer, "persistent_keepalive", 0.0, 0.0)
            else:
                self._del_timer(peer, "persistent_keepalive")
        return peer

    def set_private_key(self, private_key: PrivateKey) -> None:
        """Change our static key: every session and handshake in flight was bound to the old
        one, so they are dropped (peers re-handshake on demand), and the mac1/cookie keys and
        the per-peer static-static DH are rebuilt."""
        if private_key == self.private_key:
            return
        owner = self._by_key.get(private_key.public_key.raw)
        if owner is not None:
            raise ConfigError(
                f"private key's public half {private_key.public_key} belongs to peer {owner.id}"
            )
        self.private_key = private_key
        self.public_key = private_key.public_key
        self.epoch += 1
        self.cookie_checker = CookieChecker(self.public_key.raw, self._random_bytes)
        self._responder_cache = PeerNoiseCache(self.public_key.raw)
        for peer in self.peers.values():
            self._wipe(peer)
            peer.static_static = DH(self.private_key.x25519(), peer.public_key.raw)

    def remove_peer(self, peer_id: int) -> None:
        peer = self._peer(peer_id)
        # Packets still waiting for a session die with the peer; count them.
        self._count(DropReason.NO_SESSION, len(peer.staged), "peer_removed")
        peer.staged.clear()
        self._wipe(peer)
        for name in list(peer.timers):
            self._del_timer(peer, name)
        peer.removed = True
        self.epoch += 1
        del self.peers[peer_id]
        del self._by_key[peer.public_key.raw]

    def peer_stats(self, peer_id: int) -> PeerStats:
        return self._peer(peer_id).stats()

    def peer_id(self, public_key: PublicKey) -> int | None:
        p = self._by_key.get(public_key.raw)
        return None if p is None else p.id

    def next_event(self) -> TimeRange | None:
        """When to call ``dispatch_events`` next (any time inside the range; may be past)."""
        return self.scheduler.next_dispatch_range()

    def _peer(self, peer_id: int) -> Peer:
        try:
            return self.peers[peer_id]
        except KeyError:
            raise ConfigError(f"no peer with id {peer_id!r}") from None

    def _check_key(self, key: PublicKey, peer: Peer | None) -> None:
        if not isinstance(key, PublicKey):
            raise ConfigError(f"public key must be a PublicKey, got {type(key).__name__}")
        if key == self.public_key:
            raise ConfigError(f"peer key {key} is this device's own public key")
        other = self._by_key.get(key.raw)
        if other is not None and other is not peer:
            raise ConfigError(f"public key {key} already belongs to peer {other.id}")
        try:
            DH(self.private_key.x25519(), key.raw)
        except NoiseError:
            raise ConfigError(f"public key {key} is a low-order point") from None

    @staticmethod
    def _check_keepalive(value: object) -> float | None:
        if value is None or value == 0:
            return None
        if not isinstance(value, (int, float)) or not 0 < value <= 65535:
            raise ConfigError(f"persistent keepalive {value!r} must be 1..65535 seconds")
        return float(value)

    def _rekey_peer(self, peer: Peer) -> None:
        from .cookie import CookieGenerator

        peer.cookie = CookieGenerator(peer.public_key.raw)
        peer.noise_cache = PeerNoiseCache(peer.public_key.raw)
        peer.static_static = DH(self.private_key.x25519(), peer.public_key.raw)
        peer.last_timestamp = None
        peer.last_initiation_consumed = None

    # ------------------------------------------------------------------ send

    def send(self, now: float, batches: Mapping[int, PacketBatch]) -> list[Transmit]:
        """Seal each peer's batch in place (or stage it) and return what to transmit."""
        out = _Out(self.mtu)
        for peer_id, batch in batches.items():
            peer = self.peers.get(peer_id)
            if peer is None:
                n = _wgbatch.set_status_where(batch, DropReason.OK, DropReason.NO_ROUTE)
                self._count(DropReason.NO_ROUTE, n, "send_unknown_peer")
                continue
            self._send_batch(peer, batch, now, out)
        return out.items

    def _send_batch(self, peer: Peer, batch: PacketBatch, now: float, out: _Out) -> None:
        if peer.endpoint is None:
            n = _wgbatch.set_status_where(batch, DropReason.OK, DropReason.NO_ROUTE)
            self._count(DropReason.NO_ROUTE, n, "no_endpoint")
            return
        kp = peer.current
        if kp is None or not kp.can_send(now):
            packets = batch.packets(alive_only=True)
            if not packets:
                return
            _wgbatch.set_status_where(batch, DropReason.OK, DropReason.NO_SESSION)
            self._count(DropReason.QUEUE_FULL, peer.stage(packets), "staged_overflow")
            self._initiate(peer, now, out, retry=False)
            return
        before = _wgbatch.status_snapshot(batch)
        kp.send_counter = kp.send.seal(batch, kp.remote_index, kp.send_counter, self.mtu)
        for reason, n in _wgbatch.new_drops(batch, before):
            self._count(_REASONS[reason], n, "seal")
        n, nbytes = _wgbatch.tally_sealed(batch)
        if not n:
            return
        out.data(peer.id, peer.endpoint, batch)
        self._note_sent(peer, n, nbytes, now, out)

    def _note_sent(self, peer: Peer, n: int, nbytes: int, now: float, out: _Out) -> None:
        # Data sealed on the current session went out: counters, timers, rekey by age/count.
        peer.tx_packets += n
        peer.tx_bytes += nbytes
        self._timers_data_sent(peer, now)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer, now)
        if peer.current is not None:
            self._keep_key_fresh_sending(peer, peer.current, now, out)

    def account_express(
        self, now: float, tally: list[tuple[int, int, int, int, int, int, Endpoint | None, bool]]
    ) -> list[Transmit]:
        """The bookkeeping of what the established-session path (``_express``) sent and
        received since the last call: exactly what ``send`` / ``receive`` do after sealing
        or opening (counters, timers, roaming, rekeying), from its per-peer tally."""
        out = _Out(self.mtu)
        for peer_id, tx_n, tx_bytes, rx_data, rx_keepalives, rx_bytes, src, rx_last in tally:
            peer = self.peers.get(peer_id)
            if peer is None:
                continue
            # The timer hooks in the order the last events happened: a reply received after
            # our data cancels the new-handshake timer that the data armed, and vice versa.
            received = rx_data or rx_keepalives
            if tx_n and rx_last:
                self._note_sent(peer, tx_n, tx_bytes, now, out)
            if received:
                self._note_received(peer, rx_data, rx_keepalives, rx_bytes, src, now, out)
            if tx_n and not rx_last:
                self._note_sent(peer, tx_n, tx_bytes, now, out)
        return out.items

    def _send_keepalive(self, peer: Peer, now: float, out: _Out) -> None:
        kp = peer.current
        if peer.endpoint is None:
            self.events["keepalive_no_endpoint"] += 1
            return
        if kp is None or not kp.can_send(now):
            if not peer.staged:
                peer.stage([b""])  # goes out as a keepalive once the session is up
            self._initiate(peer, now, out, retry=False)
            return
        msg = kp.send.seal_one(kp.remote_index, kp.send_counter, b"", self.mtu)
        kp.send_counter += 1
        self._emit(peer, msg, now, out)
        peer.tx_packets += 1
        self._keep_key_fresh_sending(peer, kp, now, out)

    def _emit(self, peer: Peer, message: bytes, now: float, out: _Out) -> None:
        """Queue an authenticated control/keepalive message to the peer's endpoint."""
        assert peer.endpoint is not None
        out.control(peer.id, peer.endpoint, message)
        peer.tx_bytes += len(message)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer, now)

    def _flush_staged(self, peer: Peer, now: float, out: _Out) -> None:
        kp = peer.current
        if not peer.staged or kp is None or peer.endpoint is None:
            return
        packets = list(peer.staged)
        peer.staged.clear()
        keepalives = [p for p in packets if not p]
        data = [p for p in packets if p]
        if data:
            batch = PacketBatch.from_packets(data, mtu=max(self.mtu, max(map(len, data))))
            self._send_batch(peer, batch, now, out)
        elif keepalives:
            self._send_keepalive(peer, now, out)

    def _keep_key_fresh_sending(self, peer: Peer, kp: Keypair, now: float, out: _Out) -> None:
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and kp.age(now) > REKEY_AFTER_TIME
        ):
            self._initiate(peer, now, out, retry=False)

    # ------------------------------------------------------------------ handshake: initiator

    def _initiate(self, peer: Peer, now: float, out: _Out, *, retry: bool) -> None:
        """Send a handshake initiation (wireguard-go SendHandshakeInitiation)."""
        if not retry:
            peer.attempt_start = now  # new outbound demand restarts REKEY_ATTEMPT_TIME
        if (
            peer.last_sent_initiation is not None
            and now - peer.last_sent_initiation < REKEY_TIMEOUT
            and not retry
        ):
            # At most one initiation per REKEY_TIMEOUT unless retransmitting; make sure one
            # follows when that time is up, or staged packets could wait for new demand.
            if "retransmit" not in peer.timers:
                at = peer.last_sent_initiation + REKEY_TIMEOUT
                self._mod_timer(peer, "retransmit", at, REKEY_TIMEOUT / 64)
            return
        nxt = peer.next
        if not retry and nxt is not None and now - nxt.created < REKEY_TIMEOUT:
            # We just answered the peer's initiation; its confirmation is due. Do not start
            # a competing handshake, but retry if the confirmation never comes.
            if "retransmit" not in peer.timers:
                self._mod_timer(peer, "retransmit", nxt.created + REKEY_TIMEOUT, REKEY_TIMEOUT / 64)
            return
        if peer.endpoint is None:
            self.events["initiation_no_endpoint"] += 1
            return
        if peer.pending is not None:
            self.index_table.free(peer.pending.local_index)
        else:
            peer.pending_since = now
        if peer.attempt_start is None:
            peer.attempt_start = now
        local_index = self.index_table.new_index(peer, None)
        body, state = create_message_initiation(
            self.private_key.x25519(),
            self.public_key.raw,
            peer.noise_cache,
            peer.public_key.x25519(),
            peer.static_static,
            self._tai64n.now(),
        )
        pending = PendingInitiation(local_index, state, now)
        self.index_table.set_owner(local_index, peer, pending)
        peer.pending = pending
        peer.last_sent_initiation = now
        peer.handshake_initiations += 1
        msg = peer.cookie.with_macs(_INIT_HEADER.pack(MESSAGE_INITIATION, local_index) + body, now)
        self._emit(peer, msg, now, out)
        self.events["initiation_sent"] += 1
        # timersHandshakeInitiated: retransmit after REKEY_TIMEOUT + jitter, but check the
        # give-up deadline no later than when it falls due.
        deadline = peer.attempt_start + REKEY_ATTEMPT_TIME
        at = now + REKEY_TIMEOUT + self._rng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX)
        self._mod_timer(peer, "retransmit", min(at, deadline), 0.0)

    def _consume_response(
        self, msg: memoryview, src: Endpoint, now: float, out: _Out
    ) -> DropReason:
        resp = MessageResponse.unpack(msg)
        if resp is None:
            return self._drop_cause(DropReason.BAD_TYPE, "bad_response")
        entry = self.index_table.lookup(resp.receiver)
        if entry is None or not isinstance(entry[1], PendingInitiation):
            return self._drop_cause(DropReason.UNKNOWN_RECEIVER, "response_unknown_index")
        peer, pending = entry
        try:
            send_key, recv_key = consume_message_response(
                pending.state, self.private_key.x25519(), resp.noise_body, peer.psk.secret_bytes()
            )
        except NoiseError:
            # The pending handshake survives a forged response (reference issue #334).
            return self._drop_cause(DropReason.BAD_TAG, "response_auth")
        kp = Keypair.derive(send_key, recv_key, pending.local_index, resp.sender, now, True)
        self.index_table.set_owner(pending.local_index, peer, kp)
        peer.pending = None
        peer.pending_since = None
        self._install_initiator_keypair(peer, kp)
        self._roam(peer, src)
        peer.rx_bytes += len(msg)
        self.events["handshake_completed_initiator"] += 1
        self._timers_any_authenticated_packet_received(peer, now)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_session_derived(peer, now)
        self._timers_handshake_complete(peer, now)
        # Flush what waited; with nothing to send, one keepalive confirms the session.
        if peer.staged:
            self._flush_staged(peer, now, out)
        else:
            self._send_keepalive(peer, now, out)
        return DropReason.HANDSHAKE

    def _install_initiator_keypair(self, peer: Peer, kp: Keypair) -> None:
        # As wireguard-go: an unconfirmed "next" becomes "previous" (it may still carry the
        # peer's traffic if both sides answered each other), otherwise "current" does.
        old_prev, old_cur, old_next = peer.previous, peer.current, peer.next
        if old_next is not None:
            peer.previous = old_next
            peer.next = None
            self._free(old_cur)
        else:
            peer.previous = old_cur
        self._free(old_prev)
        peer.current = kp
        self.epoch += 1

    # ------------------------------------------------------------------ handshake: responder

    def _static_static(self, remote_static: bytes) -> bytes | None:
        peer = self._by_key.get(remote_static)
        return None if peer is None else peer.static_static

    def _consume_initiation(
        self, msg: memoryview, src: Endpoint, now: float, out: _Out
    ) -> DropReason:
        # classify() vouched for type and length; re-check them as MessageInitiation.unpack
        # would, without building the message object.
        if len(msg) != MESSAGE_INITIATION_SIZE or msg[:4] != _INIT_TYPE_WORD:
            return self._drop_cause(DropReason.BAD_TYPE, "bad_initiation")
        sender, noise_body = _INIT_FIELDS.unpack_from(msg)
        try:
            st = consume_message_initiation(
                self.private_key.x25519(),
                self._responder_cache,
                noise_body,
                self._static_static,
            )
        except NoiseError:
            return self._drop_cause(DropReason.BAD_TAG, "initiation_auth")
        peer = self._by_key[st.remote_static]
        timestamp = st.payload
        if peer.last_timestamp is not None and timestamp <= peer.last_timestamp:
            return self._drop_cause(DropReason.STALE, "initiation_stale_timestamp")
        if (
            peer.last_initiation_consumed is not None
            and now - peer.last_initiation_consumed < HANDSHAKE_INITIATION_RATE
        ):
            return self._drop_cause(DropReason.RATE_LIMITED, "initiation_flood")
        peer.last_timestamp = timestamp
        peer.last_initiation_consumed = now
        self._roam(peer, src)
        peer.rx_bytes += len(msg)
        self._timers_any_authenticated_packet_received(peer, now)
        self._timers_any_authenticated_packet_traversal(peer, now)
        if (
            peer.pending is not None
            and peer.pending_since is not None
            and now - peer.pending_since < REKEY_TIMEOUT
            and self.public_key.raw > peer.public_key.raw
        ):
            # Simultaneous initiation, and ours wins: the peer will answer ours.
            self.events["simultaneous_initiation_won"] += 1
            return DropReason.HANDSHAKE
        local_index = self.index_table.new_index(peer, None)
        body, send_key, recv_key = create_message_response(
            st, peer.psk.secret_bytes(), remote_static_key=peer.public_key.x25519()
        )
        kp = Keypair.derive(send_key, recv_key, local_index, sender, now, False)
        self.index_table.set_owner(local_index, peer, kp)
        self._free(peer.next)
        peer.next = kp
        msg_out = peer.cookie.with_macs(
            _RESP_HEADER.pack(MESSAGE_RESPONSE, local_index, sender) + body, now
        )
        self._emit(peer, msg_out, now, out)
        self.events["response_sent"] += 1
        self._timers_session_derived(peer, now)  # also schedules the keypairs' expiry
        return DropReason.HANDSHAKE

    def _confirm_next(self, peer: Peer, now: float, out: _Out) -> None:
        """Key confirmation: the first transport message on "next" decrypted."""
        kp = peer.next
        assert kp is not None
        self._free(peer.previous)
        peer.previous = peer.current
        peer.current = kp
        peer.next = None
        self.epoch += 1
        self.events["handshake_completed_responder"] += 1
        self._timers_handshake_complete(peer, now)
        self._flush_staged(peer, now, out)

    def _consume_cookie_reply(self, msg: memoryview, now: float) -> DropReason:
        reply = MessageCookieReply.unpack(msg)
        if reply is None:
            return self._drop_cause(DropReason.BAD_TYPE, "bad_cookie_reply")
        entry = self.index_table.lookup(reply.receiver)
        if entry is None:
            return self._drop_cause(DropReason.UNKNOWN_RECEIVER, "cookie_unknown_index")
        peer = entry[0]
        if not peer.cookie.consume_reply(reply, now):
            return self._drop_cause(DropReason.BAD_TAG, "cookie_reply_auth")
        # No roaming and no timers: a cookie reply authenticates nothing about the peer.
        self.events["cookie_received"] += 1
        return DropReason.HANDSHAKE

    # ------------------------------------------------------------------ receive

    def receive(self, now: float, batch: PacketBatch) -> list[Transmit]:
        """Process UDP payloads (slot endpoints = their sources); see the module docstring."""
        out = _Out(self.mtu)
        before, handshakes, transports = _wgbatch.classify_batch(batch)
        touched: dict[int, Peer] = {}
        for r in receiver_indices(batch) if transports else ():
            entry = self.index_table.lookup(r)
            if entry is None or not isinstance(entry[1], Keypair):
                continue
            peer, kp = entry
            if not kp.can_receive(now):
                _wgbatch.mark_receiver(batch, r, DropReason.EXPIRED)
                continue
            if kp.receive.open(batch, kp.window, r, peer.id):
                touched[peer.id] = peer
                if kp is peer.next:
                    self._confirm_next(peer, now, out)
        for peer in touched.values():
            self._received_transport(peer, batch, now, out)
        for i in handshakes:
            batch.set_status(i, self._handshake_message(batch, i, now, out))
        if transports:  # handshake slots are never left alive
            _wgbatch.mark_unclaimed(batch, DropReason.UNKNOWN_RECEIVER)
        # Every slot that went from alive to a drop reason counts once (C: no per-reason
        # Python loop for the usual one-message batch).
        for reason, n in _wgbatch.new_drops(batch, before):
            self.drops[_REASONS[reason]] += n
        return out.items

    def _received_transport(self, peer: Peer, batch: PacketBatch, now: float, out: _Out) -> None:
        data, keepalives, nbytes, last = _wgbatch.tally(batch, peer.id)
        if last < 0:
            return
        self._note_received(peer, data, keepalives, nbytes, batch.endpoint(last), now, out)

    def _note_received(
        self,
        peer: Peer,
        data: int,
        keepalives: int,
        nbytes: int,
        src: Endpoint | None,
        now: float,
        out: _Out,
    ) -> None:
        peer.rx_packets += data + keepalives
        peer.rx_bytes += nbytes
        if src is not None:
            self._roam(peer, src)
        self._timers_any_authenticated_packet_received(peer, now)
        self._timers_any_authenticated_packet_traversal(peer, now)
        if data:
            self._timers_data_received(peer, now)
        kp = peer.current
        # Rekey on receive (initiator only), once, so the new session is up before the
        # responder's copy of this one expires.
        if (
            kp is not None
            and kp.is_initiator
            and kp.age(now) > REKEY_ON_RECEIVE_TIME
            and not peer.sent_last_minute_handshake
        ):
            peer.sent_last_minute_handshake = True
            self._initiate(peer, now, out, retry=False)

    def _handshake_message(self, batch: PacketBatch, i: int, now: float, out: _Out) -> DropReason:
        msg = batch[i]
        kind = msg[0]
        src = batch.endpoint(i)
        if kind == MESSAGE_COOKIE_REPLY:
            return self._consume_cookie_reply(msg, now)
        under_load = self.load_monitor.observe(now)
        if not self.cookie_checker.check_mac1(msg):
            return self._drop_cause(DropReason.BAD_MAC, "invalid_mac1")
        if under_load:
            src_b = source_bytes(src)
            if not self.cookie_checker.check_mac2(msg, src_b, now):
                sender = struct.unpack_from("<I", msg, 4)[0]
                reply = self.cookie_checker.create_reply(msg, sender, src_b, now)
                out.control(None, src, reply)
                self.events["cookie_reply_sent"] += 1
                return self._drop_cause(DropReason.UNDER_LOAD, "under_load_no_mac2")
            if not self.rate_limiter.allow(src_b[:-2], now):
                return self._drop_cause(DropReason.RATE_LIMITED, "rate_limited")
        if kind == MESSAGE_INITIATION:
            return self._consume_initiation(msg, src, now, out)
        assert kind == MESSAGE_RESPONSE
        return self._consume_response(msg, src, now, out)

    def _roam(self, peer: Peer, src: Endpoint) -> None:
        if src != peer.endpoint and src[1] != 0:
            if peer.endpoint is not None:
                self.events["roamed"] += 1
            peer.endpoint = src
            self.epoch += 1

    # ------------------------------------------------------------------ timers

    def dispatch_events(self, now: float) -> list[Transmit]:
        """Run every timer whose window has started."""
        out = _Out(self.mtu)
        for event in self.scheduler.dispatch(now):
            peer, name, _ = event
            h = peer.timers.get(name)
            # Skip events that a handler earlier in this dispatch cancelled or re-armed
            # (they were already out of the scheduler, so cancel() could not reach them).
            if peer.removed or h is None or h.event is not event:
                continue
            del peer.timers[name]
            getattr(self, "_expired_" + name)(peer, now, out)
        return out.items

    def _mod_timer(self, peer: Peer, name: str, at: float, slack: float) -> None:
        timers = peer.timers
        self._timer_serial += 1
        timers[name] = self.scheduler.rearm(
            timers.get(name), at, at + slack, (peer, name, self._timer_serial)
        )

    def _arm_by(self, peer: Peer, name: str, at: float, slack: float) -> None:
        """Make ``name`` fire by ``at``: a timer already armed for an earlier time stays
        (its handler then finds the deadline not reached and re-arms). Every handshake
        pushes the session timers later; this saves re-sorting them each time, at the cost
        of one early wake-up per timer cycle."""
        h = peer.timers.get(name)
        if h is None or not h.pending or h.start > at:
            self._mod_timer(peer, name, at, slack)

    def _del_timer(self, peer: Peer, name: str) -> None:
        h = peer.timers.pop(name, None)
        if h is not None:
            h.cancel()

    def _timer_pending(self, peer: Peer, name: str) -> bool:
        return name in peer.timers

    # Hooks, named after the event (wireguard-go timers.go).

    def _timers_data_sent(self, peer: Peer, now: float) -> None:
        if not self._timer_pending(peer, "new_handshake"):
            delay = (
                KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._rng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX)
            )
            self._mod_timer(peer, "new_handshake", now + delay, delay / 64)

    def _timers_data_received(self, peer: Peer, now: float) -> None:
        if not self._timer_pending(peer, "passive_keepalive"):
            self._mod_timer(
                peer, "passive_keepalive", now + KEEPALIVE_TIMEOUT, KEEPALIVE_TIMEOUT / 64
            )

    def _timers_any_authenticated_packet_sent(self, peer: Peer, now: float) -> None:
        self._del_timer(peer, "passive_keepalive")

    def _timers_any_authenticated_packet_received(self, peer: Peer, now: float) -> None:
        self._del_timer(peer, "new_handshake")

    def _timers_any_authenticated_packet_traversal(self, peer: Peer, now: float) -> None:
        ka = peer.persistent_keepalive
        if ka:
            self._mod_timer(peer, "persistent_keepalive", now + ka, min(1.0, ka / 64))

    def _timers_session_derived(self, peer: Peer, now: float) -> None:
        peer.zero_key_at = now + ZERO_KEY_MATERIAL_TIME
        self._arm_by(peer, "zero_key_material", peer.zero_key_at, ZERO_KEY_MATERIAL_TIME / 64)
        self._schedule_expiry(peer)

    def _timers_handshake_complete(self, peer: Peer, now: float) -> None:
        self._del_timer(peer, "retransmit")
        if peer.pending is not None:  # the peer's session won; ours is moot
            self.index_table.free(peer.pending.local_index)
            peer.pending = None
            peer.pending_since = None
        peer.attempt_start = None
        peer.sent_last_minute_handshake = False
        peer.last_handshake = self._wall()

    def _schedule_expiry(self, peer: Peer) -> None:
        first = None  # creation time of the oldest keypair (runs once per handshake)
        for kp in (peer.current, peer.previous, peer.next):
            if kp is not None and (first is None or kp.created < first):
                first = kp.created
        if first is not None:
            # _expired_expire re-checks every keypair, so a wake-up before this is harmless.
            self._arm_by(peer, "expire", first + REJECT_AFTER_TIME, 1.0)
        else:
            self._del_timer(peer, "expire")

    # Handlers, named after what expired.

    def _expired_retransmit(self, peer: Peer, now: float, out: _Out) -> None:
        start = peer.attempt_start
        if start is None:
            return
        if now - start >= REKEY_ATTEMPT_TIME:
            # Give up: drop the staged packets; try again only on new demand.
            dropped = len(peer.staged)
            peer.staged.clear()
            self._count(DropReason.NO_SESSION, dropped, "handshake_gave_up")
            if peer.pending is not None:
                self.index_table.free(peer.pending.local_index)
            peer.pending = None
            peer.pending_since = None
            peer.attempt_start = None
            self._del_timer(peer, "passive_keepalive")
            if not self._timer_pending(peer, "zero_key_material"):
                peer.zero_key_at = now + ZERO_KEY_MATERIAL_TIME
                self._mod_timer(
                    peer, "zero_key_material", peer.zero_key_at, ZERO_KEY_MATERIAL_TIME / 64
                )
            return
        self.events["initiation_retransmit"] += 1
        self._initiate(peer, now, out, retry=True)

    def _expired_passive_keepalive(self, peer: Peer, now: float, out: _Out) -> None:
        kp = peer.current
        if kp is not None and kp.can_send(now):
            self._send_keepalive(peer, now, out)

    def _expired_new_handshake(self, peer: Peer, now: float, out: _Out) -> None:
        self.events["handshake_on_silence"] += 1
        self._initiate(peer, now, out, retry=False)

    def _expired_persistent_keepalive(self, peer: Peer, now: float, out: _Out) -> None:
        if peer.persistent_keepalive:
            self._send_keepalive(peer, now, out)

    def _expired_zero_key_material(self, peer: Peer, now: float, out: _Out) -> None:
        at = peer.zero_key_at
        if at is not None and now < at:  # armed for an older session (see _arm_by)
            self._mod_timer(peer, "zero_key_material", at, ZERO_KEY_MATERIAL_TIME / 64)
            return
        self.events["key_material_wiped"] += 1
        self._wipe(peer)

    def _expired_expire(self, peer: Peer, now: float, out: _Out) -> None:
        for slot in ("previous", "next", "current"):
            kp = getattr(peer, slot)
            if kp is not None and kp.expired(now):
                self._free(kp)
                setattr(peer, slot, None)
                self.epoch += 1
        self._schedule_expiry(peer)

    # ------------------------------------------------------------------ helpers

    def _free(self, kp: Keypair | None) -> None:
        if kp is not None:
            self.index_table.free(kp.local_index)

    def _wipe(self, peer: Peer) -> None:
        """Forget all key material of the peer (sessions and handshake)."""
        for kp in peer.keypairs():
            self._free(kp)
        peer.current = peer.previous = peer.next = None
        self.epoch += 1
        if peer.pending is not None:
            self.index_table.free(peer.pending.local_index)
        peer.pending = None
        peer.pending_since = None
        peer.attempt_start = None
        peer.last_sent_initiation = None
        peer.zero_key_at = None
        for name in (
            "retransmit",
            "passive_keepalive",
            "new_handshake",
            "expire",
            "zero_key_material",
        ):
            self._del_timer(peer, name)

    def _count(self, reason: DropReason, n: int, cause: str) -> None:
        if n:
            self.drops[reason] += n
            self.events[cause] += n

    def _drop_cause(self, reason: DropReason, cause: str) -> DropReason:
        # The slot's status is counted into ``drops`` by receive(); only the cause here.
        self.events[cause] += 1
        return reason
