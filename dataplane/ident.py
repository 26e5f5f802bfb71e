"""Classification of inbound underlay datagrams: WireGuard, disco, STUN, Geneve-wrapped.

The per-packet work is in :mod:`dataplane._ident` (Cython, one ``nogil`` loop per batch);
this module re-exports it with a :class:`Kind` enum and holds the executable
specification, ``classify_datagram`` / ``unpad_packet``: one datagram at a time in plain
Python, written for reading rather than speed. Tests check the Cython loops against it
and the benchmark uses it as the baseline.

Typical inbound use::

    kinds = classify(batch)                       # drops unknown datagrams, strips Geneve
    disco = consume(batch, kinds, {Kind.DISCO}, DropReason.DISCO)
    stun = consume(batch, kinds, {Kind.STUN}, DropReason.STUN)
    ...                                           # WireGuard on the rest, then:
    unpad(plaintexts)
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from dataplane._batch import DropReason
from dataplane._ident import (
    BASE_MASK,
    COUNT_GENEVE,
    DISCO_MAGIC,
    GENEVE,
    GENEVE_CONTROL,
    GENEVE_PROTO_DISCO,
    GENEVE_PROTO_WIREGUARD,
    MIN_DATAGRAM,
    N_KINDS,
    classify,
    consume,
    kind_counts,
    unpad,
)

__all__ = [
    "BASE_MASK",
    "COUNT_GENEVE",
    "DISCO_MAGIC",
    "GENEVE",
    "GENEVE_CONTROL",
    "GENEVE_PROTO_DISCO",
    "GENEVE_PROTO_WIREGUARD",
    "MIN_DATAGRAM",
    "N_KINDS",
    "Kind",
    "Verdict",
    "classify",
    "classify_datagram",
    "consume",
    "kind_counts",
    "unpad",
    "unpad_packet",
]


class Kind(IntEnum):
    """Base kind of a classified datagram (``kind & BASE_MASK``)."""

    UNCLASSIFIED = 0
    WG_INITIATION = 1
    WG_RESPONSE = 2
    WG_COOKIE = 3
    WG_DATA = 4
    DISCO = 5
    STUN = 6


# WireGuard whitepaper §5.4: exact sizes of the handshake messages.
_WG_HANDSHAKE_LEN = {Kind.WG_INITIATION: 148, Kind.WG_RESPONSE: 92, Kind.WG_COOKIE: 64}
_WG_DATA_MIN = 32
# RFC 5389 §6 (magic cookie) and §18.2 (binding request, success and error response).
_STUN_COOKIE = bytes.fromhex("2112a442")
_STUN_BINDING_TYPES = {0x0001, 0x0101, 0x0111}
_STUN_HEADER = 20
_DISCO_HEADER = 62  # magic 6 + sender key 32 + nonce 24


class Verdict(NamedTuple):
    """What ``classify`` decides for one datagram.

    ``kind`` includes the GENEVE / GENEVE_CONTROL flags; ``header_len`` is the number of
    Geneve bytes stripped (0 when naked); ``vni`` is the Geneve VNI (0 when naked).
    """

    status: DropReason
    kind: int = 0
    header_len: int = 0
    vni: int = 0


def _payload_verdict(msg: bytes) -> Verdict:
    n = len(msg)
    if n < _STUN_HEADER:
        return Verdict(DropReason.TOO_SHORT)
    if msg[0] in _WG_HANDSHAKE_LEN or msg[0] == Kind.WG_DATA:
        if msg[1:4] == b"\0\0\0":
            kind = Kind(msg[0])
            if kind == Kind.WG_DATA:
                if n < _WG_DATA_MIN:
                    return Verdict(DropReason.TOO_SHORT)
                ok = True  # padding stops at the MTU: any length >= 32 is possible
            else:
                if n < _WG_HANDSHAKE_LEN[kind]:
                    return Verdict(DropReason.TOO_SHORT)
                ok = n == _WG_HANDSHAKE_LEN[kind]
            return Verdict(DropReason.OK, kind) if ok else Verdict(DropReason.UNCLASSIFIED)
    if msg[0] >> 6 == 0 and msg[4:8] == _STUN_COOKIE:
        if int.from_bytes(msg[0:2], "big") not in _STUN_BINDING_TYPES:
            return Verdict(DropReason.UNCLASSIFIED)
        body = int.from_bytes(msg[2:4], "big")
        if body % 4:
            return Verdict(DropReason.UNCLASSIFIED)
        if _STUN_HEADER + body > n:
            return Verdict(DropReason.TOO_SHORT)
        if _STUN_HEADER + body < n:
            return Verdict(DropReason.UNCLASSIFIED)
        return Verdict(DropReason.OK, Kind.STUN)
    if msg.startswith(DISCO_MAGIC):
        if n < _DISCO_HEADER:
            return Verdict(DropReason.TOO_SHORT)
        return Verdict(DropReason.OK, Kind.DISCO)
    return Verdict(DropReason.UNCLASSIFIED)


def classify_datagram(datagram: bytes | bytearray | memoryview) -> Verdict:
    """Classify one UDP payload (reference model of :func:`classify`)."""
    msg = bytes(datagram)
    if len(msg) >= 8:
        version, opt_len = msg[0] >> 6, msg[0] & 0x3F
        control, critical, reserved = msg[1] >> 7, (msg[1] >> 6) & 1, msg[1] & 0x3F
        proto = int.from_bytes(msg[2:4], "big")
        looks_geneve = version == 0 and reserved == 0 and msg[7] == 0
        if looks_geneve and proto in (GENEVE_PROTO_DISCO, GENEVE_PROTO_WIREGUARD):
            if critical:
                return Verdict(DropReason.UNCLASSIFIED)
            header_len = 8 + 4 * opt_len
            if header_len > len(msg):
                return Verdict(DropReason.TOO_SHORT)
            inner = _payload_verdict(msg[header_len:])
            if inner.status != DropReason.OK:
                return inner
            if proto == GENEVE_PROTO_DISCO:
                fits = inner.kind == Kind.DISCO
            else:
                fits = inner.kind in _WG_HANDSHAKE_LEN or inner.kind == Kind.WG_DATA
                fits = fits and not control
            if not fits:
                return Verdict(DropReason.UNCLASSIFIED)
            flags = GENEVE | (GENEVE_CONTROL if control else 0)
            vni = int.from_bytes(msg[4:7], "big")
            return Verdict(DropReason.OK, inner.kind | flags, header_len, vni)
    return _payload_verdict(msg)


def unpad_packet(plaintext: bytes | bytearray | memoryview) -> tuple[DropReason, int]:
    """``(status, ip_length)`` of one decrypted packet (reference model of :func:`unpad`)."""
    pkt = bytes(plaintext)
    if not pkt:
        return DropReason.KEEPALIVE, 0
    version = pkt[0] >> 4
    if version == 4 and len(pkt) >= 20:
        header_len = (pkt[0] & 0x0F) * 4
        total = int.from_bytes(pkt[2:4], "big")
        if header_len >= 20 and header_len <= total <= len(pkt):
            return DropReason.OK, total
    elif version == 6 and len(pkt) >= 40:
        total = 40 + int.from_bytes(pkt[4:6], "big")
        if total <= len(pkt):
            return DropReason.OK, total
    return DropReason.BAD_IP, 0
