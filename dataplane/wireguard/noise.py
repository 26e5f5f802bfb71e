"""Noise_IKpsk2 (and plain IK) for WireGuard's handshake (whitepaper §5.4.2-§5.4.4).

Theory of operation: both roles keep a chaining key ``ck`` and a hash ``h``. Every public
value is mixed into ``h``; every Diffie-Hellman result is fed through the HKDF ``KDF_n``
into ``ck`` and yields a one-shot ChaCha20-Poly1305 key (nonce 0, aad ``h``), so each AEAD
key encrypts exactly one thing. The initiator's message carries ``e, es, s, ss`` plus an
encrypted payload (the TAI64N timestamp); the responder's message carries ``e, ee, se, psk``
and an encrypted empty payload that confirms all of it. ``split`` derives the two transport
keys. Plain IK (no psk, ``e`` only hashed) is kept because the reference's test vectors
cover it and it costs three branches.

Python owns this path on purpose: it runs once per handshake, and its cost is dominated by
the four X25519 operations (``cryptography``/OpenSSL). Per-peer constants are precomputed
(``PeerNoiseCache``: the initial ``h``/``ck`` for the responder's key and the static-static
DH), as wireguard-go does.

Errors: ``consume_*`` raise ``NoiseError`` for anything the network can send (bad tag,
all-zero DH result, unknown static key); nothing else escapes for bad input. The all-zero
check rejects low-order public keys (whitepaper §5.4.2 and RFC 7748 §6.1).

Names follow the whitepaper: ``create_message_initiation`` / ``consume_message_initiation``,
``create_message_response`` / ``consume_message_response``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import _noise
from .constants import AEAD_TAG_SIZE, CONSTRUCTION, IDENTIFIER, KEY_SIZE, TIMESTAMP_SIZE

__all__ = [
    "NoiseError",
    "Pattern",
    "IKPSK2",
    "IK",
    "HASH",
    "MAC",
    "HMAC",
    "KDF1",
    "KDF2",
    "KDF3",
    "DH",
    "public_key",
    "InitiatorState",
    "ResponderState",
    "PeerNoiseCache",
    "create_message_initiation",
    "consume_message_initiation",
    "create_message_response",
    "consume_message_response",
]

_ZERO_NONCE = bytes(12)
_ZERO32 = bytes(32)


class NoiseError(ValueError):
    """A handshake message failed authentication or carried an unusable key."""


@dataclass(frozen=True)
class Pattern:
    name: bytes
    psk: bool  # IKpsk2 when true: e also keys ck, and the psk is mixed before the last seal


IKPSK2 = Pattern(CONSTRUCTION, True)
IK = Pattern(b"Noise_IK_25519_ChaChaPoly_BLAKE2s", False)


def HASH(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


_hash2 = _noise.hash2  # HASH(a, b), the MixHash of every step, in one C call
_kdf = _noise.kdf


def MAC(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (mac1, mac2, cookies), in C."""
    return _noise.mac(key, data)


def HMAC(key: bytes, data: bytes) -> bytes:
    """RFC 2104 HMAC over BLAKE2s-256 (in C: a handshake runs about twenty of these)."""
    return _noise.hmac_blake2s(key, data)


# KDF_n (whitepaper §5.4): HKDF with HMAC-BLAKE2s, empty info, one C call each
# (``_noise.kdf``; tests check it against HKDF built from the stdlib's HMAC).


def KDF1(key: bytes, data: bytes) -> bytes:
    return _kdf(1, key, data)[0]


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = _kdf(2, key, data)
    return a, b


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = _kdf(3, key, data)
    return a, b, c


def DH(private: X25519PrivateKey, public: bytes | X25519PublicKey) -> bytes:
    """X25519, refusing the all-zero result of a low-order point. ``public`` may be a key
    object already (parsed once: see ``public_key``)."""
    try:
        # A concrete type test: isinstance against the ABC costs more than a DH's bookkeeping.
        if isinstance(public, (bytes, bytearray, memoryview)):
            public = X25519PublicKey.from_public_bytes(public)
        shared = private.exchange(public)
    except ValueError:  # OpenSSL itself refuses an all-zero result
        raise NoiseError("all-zero X25519 result (low-order public key)") from None
    if hmac.compare_digest(shared, _ZERO32):
        raise NoiseError("all-zero X25519 result (low-order public key)")
    return shared


def public_key(raw: bytes) -> X25519PublicKey:
    """Parse a received X25519 public key once for all the DHs that use it: OpenSSL 3 builds
    a key object through its provider, which costs a tenth of a DH each time."""
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise NoiseError("malformed X25519 public key") from None


def _seal(key: bytes, h: bytes, plaintext: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, h)


def _open(key: bytes, h: bytes, ciphertext: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, h)
    except InvalidTag:
        raise NoiseError("handshake AEAD authentication failed") from None


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


class PeerNoiseCache:
    """Per-(local key, peer key) constants: initial chain for the responder's static key and
    the static-static DH. Build one per peer (and one for the local key as responder)."""

    __slots__ = ("pattern", "prologue", "h0", "ck0")

    def __init__(
        self, responder_static: bytes, *, pattern: Pattern = IKPSK2, prologue: bytes = IDENTIFIER
    ) -> None:
        ck = HASH(pattern.name)
        h = HASH(ck, prologue)
        self.pattern = pattern
        self.prologue = prologue
        self.ck0 = ck
        self.h0 = HASH(h, responder_static)


@dataclass(slots=True)
class InitiatorState:
    """What the initiator keeps between its initiation and the response."""

    h: bytes
    ck: bytes
    ephemeral: X25519PrivateKey
    pattern: Pattern


@dataclass(slots=True)
class ResponderState:
    """What the responder learned from an initiation."""

    h: bytes
    ck: bytes
    remote_ephemeral: X25519PublicKey  # parsed once for both DHs that use it (es, ee)
    remote_static: bytes
    payload: bytes
    pattern: Pattern


def create_message_initiation(
    local_static: X25519PrivateKey,
    local_static_public: bytes,
    cache: PeerNoiseCache,
    remote_static: bytes | X25519PublicKey,
    static_static: bytes,
    payload: bytes,
    ephemeral: X25519PrivateKey | None = None,
) -> tuple[bytes, InitiatorState]:
    """Noise body ``e || enc(s) || enc(payload)`` and the state to finish with.

    ``static_static`` is DH(local static, remote static), precomputed by the caller;
    ``remote_static`` may be a key object the caller keeps per peer.
    """
    pattern = cache.pattern
    if ephemeral is None:
        ephemeral = X25519PrivateKey.generate()
    e_pub = _public(ephemeral)
    h = _hash2(cache.h0, e_pub)
    ck = KDF1(cache.ck0, e_pub) if pattern.psk else cache.ck0
    ck, k = KDF2(ck, DH(ephemeral, remote_static))
    enc_static = _seal(k, h, local_static_public)
    h = _hash2(h, enc_static)
    if hmac.compare_digest(static_static, _ZERO32):
        raise NoiseError("all-zero static-static X25519 result")
    ck, k = KDF2(ck, static_static)
    enc_payload = _seal(k, h, payload)
    h = _hash2(h, enc_payload)
    return e_pub + enc_static + enc_payload, InitiatorState(h, ck, ephemeral, pattern)


def consume_message_initiation(
    local_static: X25519PrivateKey,
    cache: PeerNoiseCache,
    body: bytes,
    static_static: Callable[[bytes], bytes | None],
    payload_size: int = TIMESTAMP_SIZE,
) -> ResponderState:
    """Authenticate an initiation body. ``static_static(remote_static)`` returns the
    precomputed DH with that peer, or None when the key belongs to no peer."""
    pattern = cache.pattern
    enc_static_size = KEY_SIZE + AEAD_TAG_SIZE
    if len(body) != KEY_SIZE + enc_static_size + payload_size + AEAD_TAG_SIZE:
        raise NoiseError("initiation body has the wrong length")
    e_pub = body[:KEY_SIZE]
    e_key = public_key(e_pub)
    if pattern.psk:  # the usual case, WireGuard's: every symmetric step in one C call
        r = _noise.consume_initiation(
            cache.h0, cache.ck0, body, DH(local_static, e_key), static_static
        )
        if isinstance(r, str):
            raise NoiseError(r)
        remote_static, payload, h, ck = r
        return ResponderState(h, ck, e_key, remote_static, payload, pattern)
    enc_static = body[KEY_SIZE : KEY_SIZE + enc_static_size]
    enc_payload = body[KEY_SIZE + enc_static_size :]
    h = _hash2(cache.h0, e_pub)
    ck = KDF1(cache.ck0, e_pub) if pattern.psk else cache.ck0
    ck, k = KDF2(ck, DH(local_static, e_key))
    remote_static = _open(k, h, enc_static)
    h = _hash2(h, enc_static)
    ss = static_static(remote_static)
    if ss is None:
        raise NoiseError("initiation from an unknown static key")
    if hmac.compare_digest(ss, _ZERO32):
        raise NoiseError("all-zero static-static X25519 result")
    ck, k = KDF2(ck, ss)
    payload = _open(k, h, enc_payload)
    h = _hash2(h, enc_payload)
    return ResponderState(h, ck, e_key, remote_static, payload, pattern)


def _mix_ee_se(ck: bytes, ee: bytes, se: bytes, pattern: Pattern) -> tuple[bytes, bytes]:
    """MixKey(ee), MixKey(se). With a psk the key is replaced right after, so skip it."""
    if pattern.psk:
        return KDF1(KDF1(ck, ee), se), b""
    ck, _ = KDF2(ck, ee)
    return KDF2(ck, se)


def create_message_response(
    state: ResponderState,
    psk: bytes,
    ephemeral: X25519PrivateKey | None = None,
    remote_static_key: X25519PublicKey | None = None,
) -> tuple[bytes, bytes, bytes]:
    """Body ``e || enc(empty)`` plus (send key, receive key) of the responder.

    ``remote_static_key``: ``state.remote_static`` as a key object, if the caller keeps one.
    """
    pattern = state.pattern
    if ephemeral is None:
        ephemeral = X25519PrivateKey.generate()
    e_pub = _public(ephemeral)
    ee = DH(ephemeral, state.remote_ephemeral)
    se = DH(ephemeral, remote_static_key if remote_static_key is not None else state.remote_static)
    if pattern.psk:  # one C call for every symmetric step
        enc_nothing, t_send, t_recv = _noise.response(state.h, state.ck, e_pub, ee, se, psk)
        return e_pub + enc_nothing, t_send, t_recv
    h = _hash2(state.h, e_pub)
    ck, k = _mix_ee_se(state.ck, ee, se, pattern)  # plain IK: no psk step
    enc_nothing = _seal(k, h, b"")
    t_i2r, t_r2i = KDF2(ck, b"")
    return e_pub + enc_nothing, t_r2i, t_i2r


def consume_message_response(
    state: InitiatorState,
    local_static: X25519PrivateKey,
    body: bytes,
    psk: bytes,
) -> tuple[bytes, bytes]:
    """Authenticate a response body; (send key, receive key) of the initiator.

    ``state`` is not modified, so a forged response leaves the pending handshake intact.
    """
    pattern = state.pattern
    if len(body) != KEY_SIZE + AEAD_TAG_SIZE:
        raise NoiseError("response body has the wrong length")
    e_pub = body[:KEY_SIZE]
    enc_nothing = body[KEY_SIZE:]
    e_key = public_key(e_pub)
    h = _hash2(state.h, e_pub)
    ck = KDF1(state.ck, e_pub) if pattern.psk else state.ck
    ck, k = _mix_ee_se(ck, DH(state.ephemeral, e_key), DH(local_static, e_key), pattern)
    if pattern.psk:
        ck, t, k = KDF3(ck, psk)
        h = _hash2(h, t)
    _open(k, h, enc_nothing)
    t_i2r, t_r2i = KDF2(ck, b"")
    return t_i2r, t_r2i
