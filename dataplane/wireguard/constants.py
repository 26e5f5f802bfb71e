"""WireGuard protocol constants, named as in the whitepaper (§5, §6.1).

Theory of operation: the first block holds values fixed by the protocol; every peer on the
wire must agree on them. The second block holds limits of this implementation (queue sizes,
rate limits); they are ours to tune and are kept apart so that nobody mistakes one for the
other. Times are seconds (floats) on the caller's monotonic clock.
"""

from __future__ import annotations

# --- Protocol (whitepaper §5.4, §6.1) -------------------------------------------------------

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333  # uniform extra delay per retransmission
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0  # validity of a received cookie, and the secret's rotation period
# All key material of a peer is wiped after this long without a new session (3 x REJECT).
ZERO_KEY_MATERIAL_TIME = 3 * REJECT_AFTER_TIME
# The initiator re-keys when it *receives* on a session this old, so that the new session is
# ready before the responder's copy of the old one expires.
REKEY_ON_RECEIVE_TIME = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# Message types (first byte; the three reserved bytes after it must be zero).
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16
MESSAGE_TRANSPORT_MIN_SIZE = MESSAGE_TRANSPORT_HEADER_SIZE + 16  # header + tag (keepalive)
MESSAGE_KEEPALIVE_SIZE = MESSAGE_TRANSPORT_MIN_SIZE

KEY_SIZE = 32
MAC_SIZE = 16
COOKIE_SIZE = 16
COOKIE_NONCE_SIZE = 24
TIMESTAMP_SIZE = 12
AEAD_TAG_SIZE = 16

# --- Implementation limits (ours; wireguard-go values where they exist) ----------------------

MAX_STAGED_PACKETS = 128  # per peer, while no session exists; drop-oldest
HANDSHAKE_INITIATION_RATE = 0.020  # at most one accepted initiation per peer per 20 ms
# Under-load detection: a responder is under load while its handshake backlog is at least
# this many messages (wireguard-go: 1/8 of its 1024-entry queue), and for 1 s after.
UNDER_LOAD_QUEUE_SIZE = 1024
UNDER_LOAD_THRESHOLD = UNDER_LOAD_QUEUE_SIZE // 8
UNDER_LOAD_AFTER_TIME = 1.0
# Per-source-IP token bucket for handshake messages under load.
RATE_LIMIT_PACKETS_PER_SECOND = 20
RATE_LIMIT_BURST = 5
RATE_LIMIT_MAX_SOURCES = 65536  # table bound; stale buckets are collected first
DEFAULT_MTU = 1420
