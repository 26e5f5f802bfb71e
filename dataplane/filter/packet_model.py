"""A straightforward pure-Python model of the packet filter, one packet at a time.

It states the semantics documented in ``dataplane.filter.packet`` directly — ``ipaddress``
objects, ``struct``-free slicing, a linear scan over the rules and an ``OrderedDict`` as the
LRU flow table — so that tests can check the compiled filter against it and benchmarks can
use it as the baseline. It shares only the JSON parser with the compiled filter.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataplane._batch import DropReason
from dataplane.filter.packet import (
    DEFAULT_FLOW_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    ICMP,
    ICMPV6,
    SCTP,
    TCP,
    UDP,
    NetworkRule,
    parse_rules,
)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
FlowKey = tuple[int, int, int, int, int, int]

_EXT_HEADERS = {0, 43, 44, 51, 60}
_MIN_L4 = {TCP: 20, UDP: 8, SCTP: 12}


@dataclass
class Parsed:
    version: int
    proto: int
    src: IPAddr
    dst: IPAddr
    l4: bytes
    nonfirst_fragment: bool
    fragment_offset: int = 0  # in 8-byte blocks


def parse_ip(pkt: bytes, embedded: bool = False) -> Parsed | None:
    """The IP header of ``pkt``, or None if it is malformed (see packet.py, step 1)."""
    if len(pkt) == 0:
        return None
    version = pkt[0] >> 4
    if version == 4:
        if len(pkt) < 20:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        total = int.from_bytes(pkt[2:4], "big")
        if ihl < 20 or ihl > len(pkt) or total < ihl:
            return None
        if total > len(pkt):
            if not embedded:
                return None
            total = len(pkt)
        offset = int.from_bytes(pkt[6:8], "big") & 0x1FFF
        return Parsed(
            4,
            pkt[9],
            ipaddress.IPv4Address(pkt[12:16]),
            ipaddress.IPv4Address(pkt[16:20]),
            pkt[ihl:total],
            offset != 0,
            offset,
        )
    if version == 6:
        if len(pkt) < 40:
            return None
        total = 40 + int.from_bytes(pkt[4:6], "big")
        if total > len(pkt):
            if not embedded:
                return None
            total = len(pkt)
        src = ipaddress.IPv6Address(pkt[8:24])
        dst = ipaddress.IPv6Address(pkt[24:40])
        nh, pos, seen, offset = pkt[6], 40, 0, 0
        while nh in _EXT_HEADERS:
            seen += 1
            if seen > 8 or pos + 8 > total:
                return None
            if nh == 44:
                size = 8
                offset = int.from_bytes(pkt[pos + 2 : pos + 4], "big") >> 3
            elif nh == 51:
                size = (pkt[pos + 1] + 2) * 4
            else:
                size = (pkt[pos + 1] + 1) * 8
            if pos + size > total:
                return None
            nh = pkt[pos]
            pos += size
            if offset:
                break
        return Parsed(6, nh, src, dst, pkt[pos:total], offset != 0, offset)
    return None


def _icmp_proto(version: int) -> int:
    return ICMP if version == 4 else ICMPV6


def _min_l4(p: Parsed) -> int:
    if p.proto == _icmp_proto(p.version):
        return 8
    return _MIN_L4.get(p.proto, 0)


def _port(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 2], "big")


class PacketFilterModel:
    """Same constructor and batch methods as ``PacketFilter``, evaluated in Python."""

    def __init__(
        self,
        rules: str | bytes | Iterable[Any] = (),
        *,
        caps: Iterable[str] = (),
        max_flows: int = DEFAULT_MAX_FLOWS,
        flow_timeout: float = DEFAULT_FLOW_TIMEOUT,
    ) -> None:
        self.rules: list[NetworkRule] = parse_rules(rules)
        self.caps = frozenset(caps)
        self.max_flows = max_flows
        self.flow_timeout = flow_timeout
        self.table: OrderedDict[FlowKey, float] = OrderedDict()

    def update(
        self, rules: str | bytes | Iterable[Any], *, caps: Iterable[str] | None = None
    ) -> None:
        self.rules = parse_rules(rules)
        if caps is not None:
            self.caps = frozenset(caps)

    # --- flows ---------------------------------------------------------------------

    def _record(self, key: FlowKey, now: float) -> None:
        if key in self.table:
            self.table[key] = now + self.flow_timeout
            self.table.move_to_end(key)
            return
        while self.table and next(iter(self.table.values())) <= now:
            self.table.popitem(last=False)
        if len(self.table) >= self.max_flows:
            self.table.popitem(last=False)
        self.table[key] = now + self.flow_timeout

    def _known(self, key: FlowKey, now: float) -> bool:
        return self.table.get(key, float("-inf")) > now

    def flows(self, now: float) -> list[FlowKey]:
        return [k for k, exp in self.table.items() if exp > now]

    def flow_count(self, now: float) -> int:
        return len(self.flows(now))

    def record(self, pkt: bytes, now: float) -> bool:
        """Outbound: remember the flow this packet starts or continues."""
        p = parse_ip(pkt)
        if p is None or p.nonfirst_fragment or len(p.l4) < _min_l4(p):
            return False
        if p.proto in (TCP, UDP, SCTP):
            key = (p.version, p.proto, int(p.dst), _port(p.l4, 2), int(p.src), _port(p.l4, 0))
        elif p.proto == _icmp_proto(p.version) and p.l4[0] == (8 if p.version == 4 else 128):
            key = (p.version, p.proto, int(p.dst), _port(p.l4, 4), int(p.src), 0)
        else:
            return False
        self._record(key, now)
        return True

    # --- rules ---------------------------------------------------------------------

    def _src_ok(self, rule: NetworkRule, src: IPAddr) -> bool:
        return any(s.contains(src) for s in rule.srcs) or bool(self.caps.intersection(rule.caps))

    def matches(self, p: Parsed, port: int, mode: str) -> bool:
        """mode: "port" (proto + port), "ips" (IPs only), "allports" (proto + 0-65535)."""
        for rule in self.rules:
            if not self._src_ok(rule, p.src):
                continue
            for d in rule.dsts:
                if not any(rg.contains(p.dst) for rg in d.ranges):
                    continue
                if mode == "ips":
                    return True
                if p.proto not in rule.protos:
                    continue
                if mode == "port" and d.first_port <= port <= d.last_port:
                    return True
                if mode == "allports" and d.first_port == 0 and d.last_port == 65535:
                    return True
        return False

    def _error_related(self, p: Parsed, now: float) -> bool:
        inner = parse_ip(p.l4[8:], embedded=True)
        if inner is None or inner.version != p.version or inner.nonfirst_fragment:
            return False
        if inner.src != p.dst:
            return False
        if inner.proto in (TCP, UDP, SCTP):
            if len(inner.l4) < 4:
                return False
            return self._known(
                (
                    inner.version,
                    inner.proto,
                    int(inner.dst),
                    _port(inner.l4, 2),
                    int(inner.src),
                    _port(inner.l4, 0),
                ),
                now,
            )
        if inner.proto == _icmp_proto(inner.version):
            if len(inner.l4) < 8 or inner.l4[0] != (8 if inner.version == 4 else 128):
                return False
            return self._known(
                (inner.version, inner.proto, int(inner.dst), _port(inner.l4, 4), int(inner.src), 0),
                now,
            )
        return False

    def verdict(self, pkt: bytes, now: float) -> DropReason:
        """Inbound: the status this packet gets."""
        if len(pkt) == 0:
            return DropReason.OK
        p = parse_ip(pkt)
        if p is None:
            return DropReason.BAD_IP
        if p.dst.is_multicast or (
            p.dst.is_link_local and p.dst != ipaddress.IPv4Address("169.254.169.254")
        ):
            return DropReason.PACKET_FILTER
        if p.nonfirst_fragment:
            # RFC 1858: no later fragment may overlap the first 80 bytes (Go minFragBlks).
            return DropReason.OK if p.fragment_offset >= 10 else DropReason.PACKET_FILTER
        if len(p.l4) < _min_l4(p):
            return DropReason.BAD_IP
        allowed: bool
        if p.proto == TCP:
            syn, ack = p.l4[13] & 0x02, p.l4[13] & 0x10
            allowed = not (syn and not ack) or self.matches(p, _port(p.l4, 2), "port")
        elif p.proto in (UDP, SCTP):
            key = (p.version, p.proto, int(p.src), _port(p.l4, 0), int(p.dst), _port(p.l4, 2))
            allowed = self._known(key, now) or self.matches(p, _port(p.l4, 2), "port")
        elif p.proto == _icmp_proto(p.version):
            kind = p.l4[0]
            errors = {3, 11, 12} if p.version == 4 else {1, 2, 3, 4}
            reply = 0 if p.version == 4 else 129
            related = False
            if kind == reply:
                related = self._known(
                    (p.version, p.proto, int(p.src), _port(p.l4, 4), int(p.dst), 0), now
                )
            elif kind in errors:
                related = self._error_related(p, now)
            allowed = related or self.matches(p, 0, "ips")
        else:
            allowed = self.matches(p, 0, "allports")
        return DropReason.OK if allowed else DropReason.PACKET_FILTER

    # --- batch interface (for benchmarks) ---------------------------------------------

    def check_inbound(self, batch: Any, now: float) -> int:
        dropped = 0
        for i in range(len(batch)):
            if batch.status_of(i) != DropReason.OK:
                continue
            st = self.verdict(bytes(batch[i]), now)
            if st != DropReason.OK:
                batch.set_status(i, st)
                dropped += 1
        return dropped

    def record_outbound(self, batch: Any, now: float) -> int:
        return sum(
            self.record(bytes(batch[i]), now)
            for i in range(len(batch))
            if batch.status_of(i) == DropReason.OK
        )
