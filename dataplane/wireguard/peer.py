"""Per-peer state: configuration, handshake progress, keypairs, staging queue, counters.

Theory of operation: a ``Peer`` is plain state; the rules that change it live in
``device.py`` (send, receive, handshakes, timers) so that one file reads as the protocol.
The staging queue holds plaintext packets while the peer has no usable session: bounded at
MAX_STAGED_PACKETS, dropping the *oldest* packets on overflow (the newest data is the most
useful once the tunnel comes up), flushed in order on confirmation and cleared when the
handshake attempt gives up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .keypair import Keypair
from .keys import PresharedKey, PublicKey
from .noise import InitiatorState, PeerNoiseCache

__all__ = ["Peer", "PeerStats", "PendingInitiation"]

Endpoint = tuple[str, int]


@dataclass(eq=False, slots=True)
class PendingInitiation:
    """Our initiation in flight: its receiver index and the Noise state to finish it."""

    local_index: int
    state: InitiatorState
    sent: float


@dataclass(frozen=True)
class PeerStats:
    """A snapshot of a peer's counters (what ``wg show`` reports, and a little more).

    ``tx_packets``/``rx_packets`` count transport messages (keepalives included);
    ``tx_bytes``/``rx_bytes`` count every authenticated message on the wire (handshakes
    included), as wireguard-go does.
    """

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    last_handshake: float | None  # wall-clock seconds of the last completed handshake
    endpoint: Endpoint | None
    handshake_initiations: int
    staged: int
    staged_dropped: int
    has_session: bool


class Peer:
    def __init__(
        self,
        peer_id: int,
        public_key: PublicKey,
        psk: PresharedKey,
        persistent_keepalive: float | None,
        endpoint: Endpoint | None,
    ) -> None:
        self.id = peer_id
        self.public_key = public_key
        self.psk = psk
        self.persistent_keepalive = persistent_keepalive
        self.endpoint = endpoint
        self.removed = False
        # Set by the device from the keys: mac1/cookie state, Noise constants, DH(s, S).
        self.cookie: CookieGenerator = CookieGenerator(public_key.raw)
        self.noise_cache: PeerNoiseCache = PeerNoiseCache(public_key.raw)
        self.static_static = b""
        # Responder replay protection.
        self.last_timestamp: bytes | None = None
        self.last_initiation_consumed: float | None = None
        # When the newest session's key material is to be wiped (its timer may be armed
        # earlier, for an older session, and then re-arms itself).
        self.zero_key_at: float | None = None
        # Initiator progress.
        self.pending: PendingInitiation | None = None
        self.pending_since: float | None = None  # first initiation of the pending chain
        self.attempt_start: float | None = None  # REKEY_ATTEMPT_TIME counts from here
        self.last_sent_initiation: float | None = None
        self.sent_last_minute_handshake = False
        # Sessions.
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque()
        self.timers: dict[str, Any] = {}  # timer name -> scheduler Handle
        # Counters.
        self.rx_bytes = self.tx_bytes = 0
        self.rx_packets = self.tx_packets = 0
        self.last_handshake: float | None = None
        self.handshake_initiations = 0
        self.staged_dropped = 0

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]

    def stage(self, packets: list[bytes]) -> int:
        """Queue plaintexts; returns how many old ones were dropped to stay bounded."""
        if len(packets) > MAX_STAGED_PACKETS:
            dropped = len(packets) - MAX_STAGED_PACKETS
            packets = packets[dropped:]
        else:
            dropped = 0
        self.staged.extend(packets)
        while len(self.staged) > MAX_STAGED_PACKETS:
            self.staged.popleft()
            dropped += 1
        self.staged_dropped += dropped
        return dropped

    def stats(self) -> PeerStats:
        return PeerStats(
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
            self.last_handshake,
            self.endpoint,
            self.handshake_initiations,
            len(self.staged),
            self.staged_dropped,
            self.current is not None,
        )

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.public_key.to_base64()} endpoint={self.endpoint}>"
