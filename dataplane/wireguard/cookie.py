"""mac1/mac2, cookie replies and handshake rate limiting (whitepaper §5.4.4, §5.4.7, §6).

Theory of operation:

* Every handshake message ends in mac1 and mac2. mac1 = MAC(HASH("mac1----" || receiver's
  static public key), message up to mac1) proves the sender knows whom it talks to; it is
  checked before any expensive Diffie-Hellman. mac2 = MAC(cookie, message up to mac2) or
  zero when the sender holds no fresh cookie.
* A responder *under load* (``LoadMonitor``) answers a message with a valid mac1 but no
  valid mac2 with a Cookie Reply instead of processing it. The cookie is
  MAC(rotating secret, source IP || source port), so it proves the sender owns its source
  address; the secret changes every COOKIE_REFRESH_TIME. The reply encrypts the cookie with
  XChaCha20-Poly1305 under HASH("cookie--" || responder static public), a random 24-byte
  nonce, and the triggering message's mac1 as associated data, so only the real sender can
  read it. Under load, a per-source-IP token bucket (``RateLimiter``) also limits the
  handshake messages that do carry a valid mac2.
* The initiator (``CookieGenerator``, one per peer) keeps the last mac1 it sent; a Cookie
  Reply that decrypts with it is stored for COOKIE_REFRESH_TIME on the caller's clock and
  used for mac2 on the following messages.

``CookieChecker`` is the responder's half (one per device, keyed with our own public key).
All times are the caller's monotonic ``now``; randomness comes from an injectable source.
XChaCha20-Poly1305 comes from ``dataplane._crypto`` (C); the pure-Python HChaCha20 here is
the reference it is tested against.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ._noise import check_mac1 as _check_mac1
from ._noise import mac as _mac
from .constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REFRESH_TIME,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
    RATE_LIMIT_BURST,
    RATE_LIMIT_MAX_SOURCES,
    RATE_LIMIT_PACKETS_PER_SECOND,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_THRESHOLD,
)
from .messages import MessageCookieReply, mac1_offset, mac2_offset
from .noise import HASH, MAC

__all__ = [
    "hchacha20",
    "xchacha20poly1305_seal",
    "xchacha20poly1305_open",
    "py_xchacha20poly1305_seal",
    "py_xchacha20poly1305_open",
    "CookieChecker",
    "CookieGenerator",
    "RateLimiter",
    "LoadMonitor",
]

_ZERO_MAC = bytes(MAC_SIZE)
_MASK = 0xFFFFFFFF


def _quarter(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[a] = (x[a] + x[b]) & _MASK
    x[d] ^= x[a]
    x[d] = ((x[d] << 16) | (x[d] >> 16)) & _MASK
    x[c] = (x[c] + x[d]) & _MASK
    x[b] ^= x[c]
    x[b] = ((x[b] << 12) | (x[b] >> 20)) & _MASK
    x[a] = (x[a] + x[b]) & _MASK
    x[d] ^= x[a]
    x[d] = ((x[d] << 8) | (x[d] >> 24)) & _MASK
    x[c] = (x[c] + x[d]) & _MASK
    x[b] ^= x[c]
    x[b] = ((x[b] << 7) | (x[b] >> 25)) & _MASK


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): a 32-byte subkey from key and 16-byte nonce."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError(
            f"hchacha20 needs a 32-byte key and 16-byte nonce, got {len(key)} and {len(nonce16)}"
        )
    x = [
        0x61707865,
        0x3320646E,
        0x79622D32,
        0x6B206574,
        *struct.unpack("<8I", key),
        *struct.unpack("<4I", nonce16),
    ]
    for _ in range(10):
        _quarter(x, 0, 4, 8, 12)
        _quarter(x, 1, 5, 9, 13)
        _quarter(x, 2, 6, 10, 14)
        _quarter(x, 3, 7, 11, 15)
        _quarter(x, 0, 5, 10, 15)
        _quarter(x, 1, 6, 11, 12)
        _quarter(x, 2, 7, 8, 13)
        _quarter(x, 3, 4, 9, 14)
    return struct.pack("<8I", *x[0:4], *x[12:16])


def py_xchacha20poly1305_seal(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b""
) -> bytes:
    sub = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\x00" * 4 + nonce[16:], plaintext, aad)


def py_xchacha20poly1305_open(
    key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b""
) -> bytes | None:
    sub = hchacha20(key, nonce[:16])
    try:
        return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce[16:], ciphertext, aad)
    except InvalidTag:
        return None


try:  # the C one-shots of the batch crypto module, when built (~100x faster HChaCha20)
    from dataplane._crypto import xchacha20poly1305_open, xchacha20poly1305_seal
except ImportError:  # pragma: no cover - the extension is part of every build
    xchacha20poly1305_seal = py_xchacha20poly1305_seal
    xchacha20poly1305_open = py_xchacha20poly1305_open


def source_bytes(endpoint: tuple[str, int]) -> bytes:
    """The bytes a cookie binds: packed IP then port (big-endian), as wireguard-go does."""
    import ipaddress

    host, port = endpoint
    return ipaddress.ip_address(host).packed + struct.pack(">H", port)


class CookieChecker:
    """Responder side: checks mac1/mac2 of messages sent to us and makes cookie replies."""

    def __init__(
        self, local_public: bytes, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._random = random_bytes
        self.mac1_key = HASH(LABEL_MAC1, local_public)
        self.cookie_key = HASH(LABEL_COOKIE, local_public)
        self._secret = random_bytes(32)
        self._secret_set: float | None = None  # set on first use, on the caller's clock

    def check_mac1(self, msg: bytes | bytearray | memoryview) -> bool:
        # mac1 sits at mac1_offset(len(msg)); one C call, compared in constant time.
        return _check_mac1(self.mac1_key, msg)

    def _cookie(self, src: bytes, now: float, refresh: bool) -> bytes | None:
        if self._secret_set is None or now - self._secret_set >= COOKIE_REFRESH_TIME:
            if not refresh:
                return None  # no secret younger than the refresh time: no cookie is valid
            self._secret = self._random(32)
            self._secret_set = now
        return MAC(self._secret, src)

    def check_mac2(self, msg: bytes | bytearray | memoryview, src: bytes, now: float) -> bool:
        cookie = self._cookie(src, now, refresh=False)
        if cookie is None:
            return False
        off = mac2_offset(len(msg))
        return hmac.compare_digest(MAC(cookie, msg[:off]), bytes(msg[off : off + MAC_SIZE]))

    def create_reply(
        self, msg: bytes | bytearray | memoryview, receiver: int, src: bytes, now: float
    ) -> bytes:
        """A Cookie Reply to ``msg`` (whose sender index is ``receiver``)."""
        cookie = self._cookie(src, now, refresh=True)
        assert cookie is not None
        off = mac1_offset(len(msg))
        mac1 = bytes(msg[off : off + MAC_SIZE])
        nonce = self._random(COOKIE_NONCE_SIZE)
        sealed = xchacha20poly1305_seal(self.cookie_key, nonce, cookie, mac1)
        return MessageCookieReply(receiver, nonce, sealed).pack()


class CookieGenerator:
    """Initiator side, one per peer: writes mac1/mac2 and consumes cookie replies."""

    def __init__(self, remote_public: bytes) -> None:
        self.mac1_key = HASH(LABEL_MAC1, remote_public)
        self.cookie_key = HASH(LABEL_COOKIE, remote_public)
        self.cookie: bytes | None = None
        self.cookie_set = 0.0
        self.last_mac1: bytes | None = None

    def has_fresh_cookie(self, now: float) -> bool:
        return self.cookie is not None and now - self.cookie_set < COOKIE_REFRESH_TIME

    def with_macs(self, prefix: bytes, now: float) -> bytes:
        """``prefix`` (a handshake message up to mac1) followed by its mac1 and mac2."""
        mac1 = _mac(self.mac1_key, prefix)
        self.last_mac1 = mac1
        msg = prefix + mac1
        if self.cookie is not None and now - self.cookie_set < COOKIE_REFRESH_TIME:
            return msg + _mac(self.cookie, msg)
        return msg + _ZERO_MAC

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Fill in the last 32 bytes of a handshake message in place."""
        n = len(msg)
        off1, off2 = mac1_offset(n), mac2_offset(n)
        mac1 = MAC(self.mac1_key, msg[:off1])
        msg[off1:off2] = mac1
        self.last_mac1 = mac1
        if self.has_fresh_cookie(now):
            assert self.cookie is not None
            msg[off2:] = MAC(self.cookie, msg[:off2])
        else:
            msg[off2:] = _ZERO_MAC

    def consume_reply(self, reply: MessageCookieReply, now: float) -> bool:
        """Store the cookie if the reply answers our last message. False: ignored."""
        if self.last_mac1 is None:
            return False
        cookie = xchacha20poly1305_open(
            self.cookie_key, reply.nonce, reply.encrypted_cookie, self.last_mac1
        )
        if cookie is None:
            return False
        self.cookie = cookie
        self.cookie_set = now
        return True


class RateLimiter:
    """Per-source-IP token bucket (20 messages/s, burst 5), with a bounded table.

    Buckets idle for more than a second are full again and are collected; when the table is
    full of active sources, new sources are refused (counted by the caller) rather than
    letting an attacker grow the table or evict honest buckets.
    """

    def __init__(
        self,
        rate: float = RATE_LIMIT_PACKETS_PER_SECOND,
        burst: int = RATE_LIMIT_BURST,
        max_sources: int = RATE_LIMIT_MAX_SOURCES,
    ) -> None:
        self.cost = 1.0 / rate
        self.max_tokens = self.cost * burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()  # ip -> [tokens, last]

    def __len__(self) -> int:
        return len(self._buckets)

    def _collect(self, now: float) -> None:
        while self._buckets:
            ip, (_, last) = next(iter(self._buckets.items()))
            if now - last <= 1.0:
                break
            del self._buckets[ip]

    def allow(self, ip: bytes, now: float) -> bool:
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= self.max_sources:
                self._collect(now)
                if len(self._buckets) >= self.max_sources:
                    return False
            self._buckets[ip] = [self.max_tokens - self.cost, now]
            return True
        self._buckets.move_to_end(ip)
        tokens = min(self.max_tokens, b[0] + max(0.0, now - b[1]))
        b[1] = now
        # A small epsilon keeps exact-rate senders from losing to float rounding.
        if tokens >= self.cost - 1e-9:
            b[0] = tokens - self.cost
            return True
        b[0] = tokens
        return False


class LoadMonitor:
    """Estimates the handshake backlog and says when the responder is under load.

    wireguard-go is under load while its handshake queue holds >= 1/8 of its capacity, and
    for 1 s after. We process handshakes synchronously, so the backlog is modelled as a
    leaky bucket: each handshake message adds one, and it drains at ``threshold`` messages
    per second (what we are willing to spend on handshakes). Under load = level >= threshold,
    or it was within the last UNDER_LOAD_AFTER_TIME.
    """

    def __init__(self, threshold: int = UNDER_LOAD_THRESHOLD) -> None:
        self.threshold = threshold
        self.level = 0.0
        self._last = None  # type: float | None
        self._until = float("-inf")

    def observe(self, now: float) -> bool:
        """Account one handshake message at ``now``; whether we are under load."""
        last = self._last
        if last is not None and now > last:  # drain; a clock standing still drains nothing
            level = self.level - (now - last) * self.threshold
            self.level = level if level > 0.0 else 0.0
        self._last = now
        self.level += 1.0
        if self.level >= self.threshold:
            self._until = now + UNDER_LOAD_AFTER_TIME
        return now < self._until or self.level >= self.threshold

    def under_load(self, now: float) -> bool:
        return now < self._until
