"""X25519 keys and pre-shared keys in the text form of ``wg genkey`` / ``wg pubkey``.

Theory of operation: each key wraps its 32 raw bytes. The text form is standard base64 of
those bytes (44 characters with one ``=``), exactly what the ``wg`` tool prints and reads.
``PrivateKey`` keeps the ``cryptography`` key object next to the bytes so that the handshake
does not re-parse the scalar for every Diffie-Hellman. Secret keys never appear in ``repr``
or ``str``: a private key shows its public half, a pre-shared key shows nothing.
Equality of secrets is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .constants import KEY_SIZE

__all__ = ["PrivateKey", "PublicKey", "PresharedKey", "KeyError_"]


class KeyError_(ValueError):
    """A key could not be parsed (wrong length or not base64). Never carries the key text."""


def _raw32(value: bytes | bytearray | memoryview, kind: str) -> bytes:
    raw = bytes(value)
    if len(raw) != KEY_SIZE:
        raise KeyError_(f"{kind} must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def _decode(text: str, kind: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{kind} is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise KeyError_(f"{kind} must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def clamp(raw: bytes) -> bytes:
    """Clamp an X25519 scalar as ``wg genkey`` does (RFC 7748 §5)."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class PublicKey:
    """A peer's static (or ephemeral) X25519 public key."""

    __slots__ = ("raw", "_obj")

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        self.raw = _raw32(raw, "public key")
        self._obj: X25519PublicKey | None = None

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        return cls(_decode(text, "public key"))

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def x25519(self) -> X25519PublicKey:
        if self._obj is None:
            self._obj = X25519PublicKey.from_public_bytes(self.raw)
        return self._obj

    def __bytes__(self) -> bytes:
        return self.raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.raw == other.raw

    def __lt__(self, other: PublicKey) -> bool:
        return self.raw < other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"

    __str__ = to_base64


class PrivateKey:
    """A static X25519 private key. ``repr`` shows only the public key."""

    __slots__ = ("_raw", "_obj", "public_key")

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        self._raw = _raw32(raw, "private key")
        # cryptography clamps internally, so unclamped scalars (test vectors) work too.
        self._obj = X25519PrivateKey.from_private_bytes(self._raw)
        self.public_key = PublicKey(self._obj.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh clamped key, as ``wg genkey`` makes."""
        return cls(clamp(os.urandom(KEY_SIZE)))

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(_decode(text, "private key"))

    def to_base64(self) -> str:
        """The secret in ``wg genkey`` form; only for writing configuration."""
        return base64.b64encode(self._raw).decode("ascii")

    def secret_bytes(self) -> bytes:
        return self._raw

    def x25519(self) -> X25519PrivateKey:
        return self._obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public_key.to_base64()!r})"

    __str__ = __repr__


class PresharedKey:
    """The optional symmetric key mixed into the handshake (``wg genpsk``)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        self._raw = _raw32(raw, "preshared key")

    @classmethod
    def zero(cls) -> PresharedKey:
        """The key used when none is configured (32 zero bytes)."""
        return cls(bytes(KEY_SIZE))

    @classmethod
    def generate(cls) -> PresharedKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> PresharedKey:
        return cls(_decode(text, "preshared key"))

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def secret_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PresharedKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(PresharedKey)

    def __repr__(self) -> str:
        return "PresharedKey(<hidden>)"

    __str__ = __repr__
