"""Packet filter: Tailscale ``FilterRule`` JSON with the Go client's semantics, plus return traffic.

Theory of operation. The control plane sends a list of FilterRule objects. ``parse_rules``
validates them (raising ``FilterError`` naming the rule index and field) into ``NetworkRule``
values whose IP sets are closed intervals of integers; ``compile_rules`` turns those into the
C tables of ``_packet.CompiledRules`` (sorted elementary address segments → rule bitsets /
DstPorts runs, see ``_packet.pyx``). ``PacketFilter.update`` compiles first and swaps second,
so a bad update raises and leaves the previous filter in force. ``apply_map_update`` keeps
the control plane's named rulesets (legacy ``PacketFilter`` as ``"base"``, ``PacketFilters``
with ``"*": null`` clearing all) and enforces their union.

Parsing follows Go's ``MatchesFromFilterRules`` where the Rust reference is laxer: a CIDR with
host bits set, a range ``a-b`` with ``a > b`` or mixed families, a zoned address, ``cap:`` in
``DstPorts``, non-empty ``SrcBits``/``Bits`` are errors; ``IPProto`` absent/null/``[]`` means
ICMP, ICMPv6, TCP, UDP, and numbers outside 0..255 are accepted but never match; a rule with
``CapGrant`` and neither ``DstPorts`` nor ``IPProto`` grants application capabilities and is
ignored here; ``CapGrant`` next to ``DstPorts`` keeps the network part (Go; Rust rejects it);
a rule without ``DstPorts`` never matches. Unknown fields are ignored.

Inbound verdict for each alive slot (``check_inbound``), following Go ``wgengine/filter``
(``RunIn``/``pre``) except where marked *ours*:

1. Empty packet (keepalive): passes. Malformed IP header → ``ST_BAD_IP``: version not 4/6;
   IPv4 shorter than 20 B, IHL < 5, IHL or total length beyond the bytes present; IPv6
   shorter than 40 B or payload length beyond the bytes present; a transport header shorter
   than TCP 20, UDP 8, SCTP 12, ICMP 8 bytes. Bytes after the IP total length (padding) are
   ignored. IPv6 extension headers Hop-by-Hop, Routing, Destination Options, AH and Fragment
   are walked (at most 8, each bounds-checked; more, or one running past the payload, is
   ``ST_BAD_IP``); ESP, No-Next-Header and unknown headers are "other protocols" (step 6).
   (*ours*: Go does not walk IPv6 extension headers and drops such packets as unknown.)
2. Multicast destination, or link-local unicast other than 169.254.169.254 → dropped.
3. Non-first fragment (IPv4 offset ≠ 0, IPv6 Fragment header offset ≠ 0) → passes, since
   the first fragment carried the transport header and was filtered — unless it starts in
   the first 80 bytes (offset < 10 blocks), where it could overwrite the ports or TCP flags
   (RFC 1858 overlapping-fragment evasion, Go ``minFragBlks``) → dropped. A first fragment
   too short for its transport header is ``ST_BAD_IP`` (step 1).
4. TCP: anything but a bare SYN (SYN set, ACK clear) passes; a SYN needs a matching rule.
5. UDP/SCTP: passes if it is a reply to a flow we started, else needs a matching rule.
   ICMP (v4 in IPv4, v6 in IPv6): an echo reply passes if we sent the echo request (*ours*:
   Go passes every echo reply); an error (v4 3/11/12, v6 1-4) passes if the quoted packet
   is a TCP/UDP/SCTP/echo flow we started and was sent from the address the error is
   delivered to (*ours*: Go passes every error). Any other ICMP message — and replies or
   errors not related to our flows — passes if some rule admits the source and covers the
   destination IP, whatever its protocols and ports (Go ``matchIPsOnly``: "if any port is
   open to an IP, allow ICMP to it"; *ours*: a ``cap:`` source counts only together with
   that rule's destinations).
6. Other protocols (including TSMP, *ours*: we have no TSMP handler to consume it) pass if a
   rule lists the protocol and covers the destination IP with the full port range 0-65535.

A rule matches when the protocol is in its ``IPProto``, the source is in one of its
``SrcIPs`` or one of its ``cap:`` names is in the filter's capability set, and one of its
``DstPorts`` entries covers the destination IP and port. All rules are considered (allow-only,
default deny). Whether the destination is one of our addresses is the inbound router's job.

Flows (``record_outbound``): each alive, well-formed outbound TCP/UDP/SCTP packet or ICMP
echo request records the reply's 5-tuple (for ICMP: the echo identifier) with expiry
``now + flow_timeout``; TCP flows exist only so that ICMP errors about our connections (e.g.
"packet too big") come back. The table keeps at most ``max_flows`` flows (default 4096;
Go keeps 512); when full, the least recently refreshed flow is evicted. Default
``flow_timeout`` is 120 s (Linux conntrack's UDP stream timeout). Only outbound
packets refresh a flow; inbound lookups never change the table. ``now`` is monotonic
seconds and must not go backwards. The outbound pass never drops anything.
"""

from __future__ import annotations

import array
import ipaddress
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataplane.filter._packet import CompiledRules, FilterCore

ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58
SCTP = 132
#: Protocols of a rule whose ``IPProto`` is absent, null or empty (Go and Rust agree).
DEFAULT_PROTOS = frozenset({ICMP, ICMPV6, TCP, UDP})
DEFAULT_MAX_FLOWS = 4096
DEFAULT_FLOW_TIMEOUT = 120.0
#: Name under which the legacy ``MapResponse.PacketFilter`` list is kept (tailcfg).
BASE_RULESET = "base"
#: ``PacketFilters`` key whose ``null`` value clears every ruleset first (tailcfg).
CLEAR_ALL_KEY = "*"

_V4_MAX = (1 << 32) - 1
_V6_MAX = (1 << 128) - 1
_MASK64 = (1 << 64) - 1

__all__ = [
    "BASE_RULESET",
    "CLEAR_ALL_KEY",
    "DEFAULT_FLOW_TIMEOUT",
    "DEFAULT_MAX_FLOWS",
    "DEFAULT_PROTOS",
    "AddrRange",
    "DstMatch",
    "FilterError",
    "NetworkRule",
    "PacketFilter",
    "compile_rules",
    "parse_rules",
]


class FilterError(ValueError):
    """A FilterRule list the filter cannot use; ``ruleset`` (a ``PacketFilters`` name, if
    any), ``rule`` (index) and ``field`` locate the problem."""

    def __init__(
        self,
        message: str,
        rule: int | None = None,
        field: str | None = None,
        ruleset: str | None = None,
    ):
        self.message = message
        self.rule = rule
        self.field = field
        self.ruleset = ruleset
        where = []
        if ruleset is not None:
            where.append(f"ruleset {ruleset!r}")
        if rule is not None:
            where.append(f"rule {rule}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class AddrRange:
    """Closed interval of addresses of one family, as integers."""

    version: int
    first: int
    last: int

    def contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return addr.version == self.version and self.first <= int(addr) <= self.last


@dataclass(frozen=True)
class DstMatch:
    """One ``DstPorts`` entry: an IP set and an inclusive port range."""

    ranges: tuple[AddrRange, ...]
    first_port: int
    last_port: int


@dataclass(frozen=True)
class NetworkRule:
    """A FilterRule with ``DstPorts`` (or ``IPProto``); ``CapGrant``-only rules are skipped."""

    srcs: tuple[AddrRange, ...]
    caps: tuple[str, ...]
    protos: frozenset[int]
    dsts: tuple[DstMatch, ...]


_WILDCARD = (AddrRange(4, 0, _V4_MAX), AddrRange(6, 0, _V6_MAX))


def _parse_addr(text: str, rule: int, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise FilterError(f"zoned address {text!r} not allowed", rule, field)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise FilterError(f"invalid IP address {text!r}", rule, field) from None


def parse_ip_set(text: Any, rule: int, field: str) -> tuple[AddrRange, ...]:
    """``*``, ``a-b`` (same family, a <= b), CIDR (no host bits, as Go) or a bare address."""
    if not isinstance(text, str):
        raise FilterError(f"must be a string, got {type(text).__name__}", rule, field)
    text = text.strip()
    if text == "*":
        return _WILDCARD
    if "-" in text:
        a_text, _, b_text = text.partition("-")
        a = _parse_addr(a_text.strip(), rule, field)
        b = _parse_addr(b_text.strip(), rule, field)
        if a.version != b.version:
            raise FilterError(f"range {text!r} mixes IPv4 and IPv6", rule, field)
        if int(a) > int(b):
            raise FilterError(f"range {text!r} ends before it starts", rule, field)
        return (AddrRange(a.version, int(a), int(b)),)
    if "/" in text:
        if "%" in text:
            raise FilterError(f"zoned prefix {text!r} not allowed", rule, field)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise FilterError(f"invalid CIDR prefix {text!r}", rule, field) from None
        if int(net.network_address) != int(ipaddress.ip_interface(text).ip):
            raise FilterError(f"prefix {text!r} has host bits set", rule, field)
        return (AddrRange(net.version, int(net.network_address), int(net.broadcast_address)),)
    a = _parse_addr(text, rule, field)
    return (AddrRange(a.version, int(a), int(a)),)


def _int(value: Any, lo: int, hi: int, rule: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilterError(f"must be an integer, got {value!r}", rule, field)
    if not lo <= value <= hi:
        raise FilterError(f"must be in {lo}..{hi}, got {value}", rule, field)
    return value


def _list(obj: dict[str, Any], key: str, rule: int, *, required: bool) -> list[Any] | None:
    if key not in obj or obj[key] is None:
        if required:
            raise FilterError("is required", rule, key)
        return None
    value = obj[key]
    if not isinstance(value, list):
        raise FilterError(f"must be a list, got {type(value).__name__}", rule, key)
    return value


def _parse_rule(obj: Any, i: int) -> NetworkRule | None:
    if not isinstance(obj, dict):
        raise FilterError(f"must be an object, got {type(obj).__name__}", i)
    for legacy in ("SrcBits", "Bits"):
        if obj.get(legacy):
            # Go's MatchesFromFilterRules rejects these long-unused fields.
            raise FilterError("is no longer supported", i, legacy)
    src_list = _list(obj, "SrcIPs", i, required=True)
    assert src_list is not None
    srcs: list[AddrRange] = []
    caps: list[str] = []
    for j, s in enumerate(src_list):
        field = f"SrcIPs[{j}]"
        if isinstance(s, str) and s.startswith("cap:"):
            if len(s) == 4:
                raise FilterError("empty capability name", i, field)
            caps.append(s[4:])
        else:
            srcs.extend(parse_ip_set(s, i, field))
    proto_list = _list(obj, "IPProto", i, required=False)
    dst_list = _list(obj, "DstPorts", i, required=False)
    if "CapGrant" in obj and obj["CapGrant"] is not None:
        if not isinstance(obj["CapGrant"], list):
            raise FilterError("must be a list", i, "CapGrant")
        if dst_list is None and proto_list is None:
            return None  # application capability grant: not the packet filter's business
    protos: set[int] = set()
    for j, p in enumerate(proto_list or ()):
        if isinstance(p, bool) or not isinstance(p, int):
            raise FilterError(f"must be an integer, got {p!r}", i, f"IPProto[{j}]")
        if 0 <= p <= 255:
            protos.add(p)
        # Values outside 0..255 are Tailscale-reserved: kept by the control plane, never
        # matching a real packet (Go drops them).
    if not proto_list:
        protos = set(DEFAULT_PROTOS)
    dsts: list[DstMatch] = []
    for j, d in enumerate(dst_list or ()):
        field = f"DstPorts[{j}]"
        if not isinstance(d, dict):
            raise FilterError(f"must be an object, got {type(d).__name__}", i, field)
        if "IP" not in d:
            raise FilterError("is required", i, f"{field}.IP")
        if isinstance(d["IP"], str) and d["IP"].startswith("cap:"):
            raise FilterError("cap: names are only allowed in SrcIPs", i, f"{field}.IP")
        ranges = parse_ip_set(d["IP"], i, f"{field}.IP")
        ports = d.get("Ports")
        if not isinstance(ports, dict):
            raise FilterError("must be an object with First and Last", i, f"{field}.Ports")
        first = _int(ports.get("First"), 0, 65535, i, f"{field}.Ports.First")
        last = _int(ports.get("Last"), 0, 65535, i, f"{field}.Ports.Last")
        if first > last:
            raise FilterError(f"First {first} > Last {last}", i, f"{field}.Ports")
        dsts.append(DstMatch(ranges, first, last))
    return NetworkRule(tuple(srcs), tuple(caps), frozenset(protos), tuple(dsts))


def parse_rules(data: str | bytes | bytearray | Iterable[Any]) -> list[NetworkRule]:
    """Validate FilterRule JSON (text or already decoded) into network rules.

    ``CapGrant``-only rules are dropped (they grant application capabilities); a rule with
    both ``CapGrant`` and ``DstPorts`` keeps its network part, as in Go.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise FilterError(f"invalid JSON: {e}") from None
    if isinstance(data, dict) or not isinstance(data, Iterable) or isinstance(data, str):
        raise FilterError(f"a FilterRule list is required, got {type(data).__name__}")
    rules = []
    for i, obj in enumerate(data):
        rule = _parse_rule(obj, i)
        if rule is not None:
            rules.append(rule)
    return rules


# ----------------------------------------------------------------------------- compilation


def _sweep(intervals: list[tuple[int, int, int]], top: int) -> list[tuple[int, frozenset[int]]]:
    """Elementary segments of [0, top]: (start, ids of the intervals covering it), merged."""
    starts: dict[int, list[int]] = defaultdict(list)
    ends: dict[int, list[int]] = defaultdict(list)
    for first, last, ident in intervals:
        starts[first].append(ident)
        if last < top:
            ends[last + 1].append(ident)
    active: dict[int, int] = defaultdict(int)
    out: list[tuple[int, frozenset[int]]] = []
    for point in sorted({0, *starts, *ends}):
        for ident in ends.get(point, ()):
            active[ident] -= 1
            if active[ident] == 0:
                del active[ident]
        for ident in starts.get(point, ()):
            active[ident] += 1
        ids = frozenset(active)
        if not out or out[-1][1] != ids:
            out.append((point, ids))
    return out


def _split(points: Iterable[int]) -> tuple[array.array, array.array]:
    hi = array.array("Q")
    lo = array.array("Q")
    for p in points:
        hi.append(p >> 64)
        lo.append(p & _MASK64)
    return hi, lo


def compile_rules(rules: Iterable[NetworkRule], caps: Iterable[str] = ()) -> CompiledRules:
    """Build the C tables for ``rules``; ``caps`` are the capability names that ``cap:``
    sources are checked against (the caller's node capabilities)."""
    cap_set = frozenset(caps)
    live = [r for r in rules if r.dsts]  # a rule without DstPorts never matches
    nrules = len(live)
    nwords = max(1, (nrules + 63) // 64)
    proto_bits = array.array("Q", [0] * (256 * nwords))
    for rid, r in enumerate(live):
        for p in r.protos:
            proto_bits[p * nwords + (rid >> 6)] |= 1 << (rid & 63)
    # Destination entries, deduplicated: (rule, first port, last port).
    entry_ids: dict[tuple[int, int, int], int] = {}
    dst_intervals: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
    src_intervals: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
    for rid, r in enumerate(live):
        if cap_set.intersection(r.caps):
            for w in _WILDCARD:
                src_intervals[w.version].append((w.first, w.last, rid))
        for s in r.srcs:
            src_intervals[s.version].append((s.first, s.last, rid))
        for d in r.dsts:
            eid = entry_ids.setdefault((rid, d.first_port, d.last_port), len(entry_ids))
            for rg in d.ranges:
                dst_intervals[rg.version].append((rg.first, rg.last, eid))
    entries = sorted(entry_ids.items(), key=lambda kv: kv[1])
    # Bitset pool with the empty set first; identical sets are shared.
    bits = array.array("Q", [0] * nwords)
    set_ids: dict[frozenset[int], int] = {frozenset(): 0}
    # Runs of entry ids per destination segment; identical runs are shared.
    run_ids: dict[tuple[int, ...], tuple[int, int]] = {(): (0, 0)}
    flat: list[int] = []

    def intern(ids: frozenset[int]) -> int:
        sid = set_ids.get(ids)
        if sid is None:
            sid = set_ids[ids] = len(set_ids)
            words = [0] * nwords
            for rid in ids:
                words[rid >> 6] |= 1 << (rid & 63)
            bits.extend(words)
        return sid

    entry_of = [e for e, _ in entries]
    fams = []
    for version, top in ((4, _V4_MAX), (6, _V6_MAX)):
        src_segs = _sweep(src_intervals[version], top)
        src_set = array.array("I", (intern(ids) for _, ids in src_segs))
        dst_segs = _sweep(dst_intervals[version], top)
        dst_off = array.array("I")
        dst_len = array.array("I")
        dst_set = array.array("I")
        for _, eids in dst_segs:
            # Sorted by (rule, ports): the C side binary-searches a run for a rule.
            run = tuple(sorted(eids, key=entry_of.__getitem__))
            where = run_ids.get(run)
            if where is None:
                where = run_ids[run] = (len(flat), len(run))
                flat.extend(run)
            dst_off.append(where[0])
            dst_len.append(where[1])
            dst_set.append(intern(frozenset(entry_of[e][0] for e in run)))
        src_hi, src_lo = _split(p for p, _ in src_segs)
        dst_hi, dst_lo = _split(p for p, _ in dst_segs)
        fams.append((src_hi, src_lo, src_set, dst_hi, dst_lo, dst_off, dst_len, dst_set))
    ent_rule = array.array("I", (entry_of[e][0] for e in flat))
    ent_first = array.array("H", (entry_of[e][1] for e in flat))
    ent_last = array.array("H", (entry_of[e][2] for e in flat))
    return CompiledRules(nrules, nwords, proto_bits, bits, ent_rule, ent_first, ent_last, *fams)


# ----------------------------------------------------------------------------- the filter


def _decode(data: Any, what: str) -> Any:
    if isinstance(data, (str, bytes, bytearray)):
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise FilterError(f"invalid JSON in {what}: {e}") from None
    return data


def _in_ruleset(name: str, data: Any) -> list[NetworkRule]:
    try:
        return parse_rules(data)
    except FilterError as e:
        raise FilterError(e.message, e.rule, e.field, name) from None


class PacketFilter:
    """Compiled FilterRules plus the table of flows we started.

    ``rules`` is FilterRule JSON text or the decoded list (default: none, deny all), kept
    as ruleset ``"base"``; ``caps`` the node capabilities ``cap:`` sources are tested
    against (default none). The effective rules are the union of all rulesets.

    Not thread-safe: the caller serialises calls (the data plane's core lock). The batch
    loops release the GIL but only touch the batch and this filter's tables.
    """

    def __init__(
        self,
        rules: str | bytes | Iterable[Any] = (),
        *,
        caps: Iterable[str] = (),
        max_flows: int = DEFAULT_MAX_FLOWS,
        flow_timeout: float = DEFAULT_FLOW_TIMEOUT,
    ) -> None:
        parsed = parse_rules(rules)
        cap_set = frozenset(caps)
        compiled = compile_rules(parsed, cap_set)
        seed = int.from_bytes(os.urandom(8), "little")
        self._core = FilterCore(max_flows, flow_timeout, seed, compiled)
        self._rulesets: dict[str, tuple[NetworkRule, ...]] = {BASE_RULESET: tuple(parsed)}
        self._rules = tuple(parsed)
        self._caps = cap_set

    @property
    def rules(self) -> tuple[NetworkRule, ...]:
        """The network rules in force (all rulesets, in name order)."""
        return self._rules

    @property
    def rulesets(self) -> dict[str, tuple[NetworkRule, ...]]:
        return dict(self._rulesets)

    def _install(self, rulesets: dict[str, tuple[NetworkRule, ...]], caps: frozenset[str]) -> None:
        rules = tuple(r for name in sorted(rulesets) for r in rulesets[name])
        compiled = compile_rules(rules, caps)
        self._core.set_rules(compiled)  # the swap: nothing changed before this line
        self._rulesets = rulesets
        self._rules = rules
        self._caps = caps

    @property
    def caps(self) -> frozenset[str]:
        return self._caps

    @property
    def max_flows(self) -> int:
        return int(self._core.max_flows)

    @property
    def flow_timeout(self) -> float:
        return float(self._core.flow_timeout)

    def update(
        self, rules: str | bytes | Iterable[Any], *, caps: Iterable[str] | None = None
    ) -> None:
        """Replace all rulesets by ``rules`` (as ``"base"``) and, if given, the
        capabilities; flows are kept.

        Raises ``FilterError`` without changing anything when ``rules`` is invalid.
        """
        parsed = parse_rules(rules)
        cap_set = self._caps if caps is None else frozenset(caps)
        self._install({BASE_RULESET: tuple(parsed)}, cap_set)

    def apply_map_update(self, packet_filter: Any = None, packet_filters: Any = None) -> None:
        """Apply a MapResponse's ``PacketFilter`` and ``PacketFilters`` (tailcfg semantics).

        ``packet_filter`` (legacy, JSON text or list): None leaves ``"base"`` unchanged,
        a list (even empty) replaces it. ``packet_filters`` (JSON object text or dict):
        ``"*": null`` first clears every ruleset, including ``"base"`` and this message's
        ``packet_filter``; then each other name is removed by ``null`` or ``[]`` and set by
        a non-empty list. Everything is validated before anything changes; a
        ``FilterError`` names the ruleset, rule and field.
        """
        rulesets = dict(self._rulesets)
        named = _decode(packet_filters, "PacketFilters")
        if named is None:
            named = {}
        if not isinstance(named, dict):
            raise FilterError(f"PacketFilters must be an object, got {type(named).__name__}")
        clear = CLEAR_ALL_KEY in named and named[CLEAR_ALL_KEY] is None
        if clear:
            rulesets.clear()
        elif packet_filter is not None:
            legacy = _decode(packet_filter, "PacketFilter")
            rulesets[BASE_RULESET] = tuple(_in_ruleset(BASE_RULESET, legacy))
        for name, value in named.items():
            if not isinstance(name, str):
                raise FilterError(f"PacketFilters key {name!r} is not a string")
            if name == CLEAR_ALL_KEY and value is None:
                continue
            if value is None or value == []:
                rulesets.pop(name, None)
            else:
                rulesets[name] = tuple(_in_ruleset(name, value))
        self._install(rulesets, self._caps)

    def set_caps(self, caps: Iterable[str]) -> None:
        """Change the node capabilities ``cap:`` sources are tested against."""
        self._install(self._rulesets, frozenset(caps))

    def check_inbound(self, batch: Any, now: float) -> int:
        """Filter decrypted inbound packets; returns how many alive slots were dropped."""
        return int(self._core.check_inbound(batch, now))

    def record_outbound(self, batch: Any, now: float) -> int:
        """Record the flows of outbound packets; returns how many flows were refreshed."""
        return int(self._core.record_outbound(batch, now))

    def flow_count(self, now: float) -> int:
        return int(self._core.flow_count(now))

    def flows(self, now: float) -> list[tuple[int, int, int, int, int, int]]:
        """Live flows, least recently refreshed first, as (IP version, protocol, remote
        address, remote port or ICMP id, local address, local port)."""
        return list(self._core.flows(now))

    def clear_flows(self) -> None:
        self._core.clear_flows()
