"""Wire formats of the four WireGuard messages (whitepaper §5.4), built and parsed exactly.

Theory of operation: every message starts with a 32-bit little-endian type word, i.e. one
type byte followed by three reserved bytes that must be zero (wireguard-go reads the whole
word, so a message with non-zero reserved bytes is of no known type and is dropped).
Handshake messages (types 1-3) have one exact length each; a transport message (type 4)
is at least its 16-byte header plus the 16-byte tag.

Parsing is total: ``*.unpack(data)`` and ``message_type(data)`` return ``None`` for any
bytes-like input that is not a well-formed message of that kind and never raise for input
content. The only exception they can raise is ``TypeError`` when ``data`` is not bytes-like
(a programming error, not network input).

mac1/mac2 sit at the end of handshake initiations and responses; ``mac1_offset`` and
``mac2_offset`` tell the cookie module which prefix each MAC covers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
)

__all__ = [
    "MessageInitiation",
    "MessageResponse",
    "MessageCookieReply",
    "TransportHeader",
    "message_type",
    "mac1_offset",
    "mac2_offset",
]

_EXACT = {
    MESSAGE_INITIATION: MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE: MESSAGE_RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
}

# type word | sender | ephemeral | static(32+16) | timestamp(12+16) | mac1 | mac2
_INIT = struct.Struct("<II32s48s28s16s16s")
# type word | sender | receiver | ephemeral | empty(0+16) | mac1 | mac2
_RESP = struct.Struct("<III32s16s16s16s")
# type word | receiver | nonce | encrypted cookie (16+16)
_COOKIE = struct.Struct("<II24s32s")
# type word | receiver | counter
_TRANSPORT = struct.Struct("<IIQ")

assert _INIT.size == MESSAGE_INITIATION_SIZE
assert _RESP.size == MESSAGE_RESPONSE_SIZE
assert _COOKIE.size == MESSAGE_COOKIE_REPLY_SIZE
assert _TRANSPORT.size == MESSAGE_TRANSPORT_HEADER_SIZE


def message_type(data: bytes | bytearray | memoryview) -> int | None:
    """Type (1-4) of a well-formed message, or None (unknown type, bad reserved bytes, length)."""
    n = len(data)
    if n < 4:
        return None
    t = data[0]
    if data[1] or data[2] or data[3]:
        return None
    if t == MESSAGE_TRANSPORT:
        return t if n >= MESSAGE_TRANSPORT_MIN_SIZE else None
    exact = _EXACT.get(t)
    return t if exact == n else None


def mac1_offset(size: int) -> int:
    """mac1 covers the message up to here (it sits 32 bytes before the end)."""
    return size - 32


def mac2_offset(size: int) -> int:
    """mac2 covers the message up to here (the last 16 bytes)."""
    return size - 16


@dataclass(frozen=True, slots=True)
class MessageInitiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _INIT.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> MessageInitiation | None:
        if len(data) != MESSAGE_INITIATION_SIZE or message_type(data) != MESSAGE_INITIATION:
            return None
        _, *fields = _INIT.unpack(data)
        return cls(*fields)

    @property
    def noise_body(self) -> bytes:
        """The 108 Noise bytes: ephemeral, encrypted static, encrypted timestamp."""
        return self.ephemeral + self.encrypted_static + self.encrypted_timestamp


@dataclass(frozen=True, slots=True)
class MessageResponse:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _RESP.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> MessageResponse | None:
        if len(data) != MESSAGE_RESPONSE_SIZE or message_type(data) != MESSAGE_RESPONSE:
            return None
        _, *fields = _RESP.unpack(data)
        return cls(*fields)

    @property
    def noise_body(self) -> bytes:
        return self.ephemeral + self.encrypted_nothing


@dataclass(frozen=True, slots=True)
class MessageCookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return _COOKIE.pack(MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> MessageCookieReply | None:
        if len(data) != MESSAGE_COOKIE_REPLY_SIZE or message_type(data) != MESSAGE_COOKIE_REPLY:
            return None
        _, *fields = _COOKIE.unpack(data)
        return cls(*fields)


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The 16-byte header of a transport message (the per-packet path never builds this;
    ``dataplane._crypto`` reads and writes headers in place. It serves tests and tools)."""

    receiver: int
    counter: int

    def pack(self) -> bytes:
        return _TRANSPORT.pack(MESSAGE_TRANSPORT, self.receiver, self.counter)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> TransportHeader | None:
        if message_type(data) != MESSAGE_TRANSPORT:
            return None
        _, receiver, counter = _TRANSPORT.unpack_from(data)
        return cls(receiver, counter)
