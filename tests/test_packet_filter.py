"""Packet filter: FilterRule parsing, Go semantics, return traffic, flow table, hostile input.

The compiled filter (``PacketFilter``) is checked against the pure-Python model
(``dataplane.filter.packet_model``) on random rule sets and random packet sequences.
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane._batch import DropReason, PacketBatch
from dataplane.filter import FilterError, PacketFilter
from dataplane.filter.packet import DEFAULT_PROTOS, parse_rules
from dataplane.filter.packet_model import PacketFilterModel

OK = DropReason.OK
PF = DropReason.PACKET_FILTER
BAD = DropReason.BAD_IP
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04

# --------------------------------------------------------------------------- packet builders


def ip4(src, dst, proto, payload, *, frag=0, options=b"", total=None):
    ihl = 5 + len(options) // 4
    tot = 4 * ihl + len(payload) if total is None else total
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        tot,
        0,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + options + payload


def ip6(src, dst, nh, payload, *, ext=(), plen=None):
    """``ext`` is a list of (header type, body) pairs walked before ``nh``."""
    chain = b""
    types = [t for t, _ in ext] + [nh]
    for (t, body), nxt in zip(ext, types[1:], strict=True):
        if t == 44:
            chain += bytes([nxt, 0]) + body
        elif t == 51:
            chain += bytes([nxt, (len(body) + 2) // 4 - 2]) + body
        else:
            chain += bytes([nxt, (len(body) + 2) // 8 - 1]) + body
    first = types[0]
    body = chain + payload
    n = len(body) if plen is None else plen
    return (
        struct.pack("!IHBB", 0x60000000, n, first, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + body
    )


def ip(src, dst, proto, payload, **kw):
    if ipaddress.ip_address(src).version == 4:
        return ip4(src, dst, proto, payload, **kw)
    return ip6(src, dst, proto, payload, **kw)


def tcp(sport, dport, flags=SYN):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)


def udp(sport, dport, data=b"x"):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def sctp(sport, dport):
    return struct.pack("!HHII", sport, dport, 0, 0)


def icmp(kind, code=0, ident=0, seq=0, data=b""):
    return struct.pack("!BBHHH", kind, code, 0, ident, seq) + data


def icmp_proto(addr):
    return 1 if ipaddress.ip_address(addr).version == 4 else 58


def echo_request(src, dst, ident):
    v4 = ipaddress.ip_address(src).version == 4
    return ip(src, dst, icmp_proto(src), icmp(8 if v4 else 128, ident=ident, seq=1))


def echo_reply(src, dst, ident):
    v4 = ipaddress.ip_address(src).version == 4
    return ip(src, dst, icmp_proto(src), icmp(0 if v4 else 129, ident=ident, seq=1))


def icmp_error(src, dst, quoted, kind=None, code=0, cut=None):
    """An ICMP error from ``src`` to ``dst`` quoting the first ``cut`` bytes of ``quoted``
    (default: the IP header and 8 bytes, the RFC 792 minimum)."""
    v4 = ipaddress.ip_address(src).version == 4
    if cut is None:
        cut = 28 if v4 else 48
    if kind is None:
        kind = 3 if v4 else 1
    return ip(src, dst, icmp_proto(src), icmp(kind, code) + quoted[:cut])


def verdicts(f, packets, now=0.0):
    b = PacketBatch.from_packets(packets)
    f.check_inbound(b, now)
    return [b.status_of(i) for i in range(len(b))]


def verdict(f, packet, now=0.0):
    return verdicts(f, [packet], now)[0]


def send(f, packets, now=0.0):
    return f.record_outbound(PacketBatch.from_packets(packets), now)


def rule(srcs, dsts, protos=None, **extra):
    r = {
        "SrcIPs": srcs,
        "DstPorts": [{"IP": ip_, "Ports": {"First": a, "Last": b}} for ip_, a, b in dsts],
    }
    if protos is not None:
        r["IPProto"] = protos
    r.update(extra)
    return r


ME4, PEER4, OTHER4 = "100.100.1.1", "100.64.1.1", "100.64.9.9"
ME6, PEER6, OTHER6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::64:1", "fd7a:115c:a1e0::99:1"
FAMILIES = [(ME4, PEER4, OTHER4), (ME6, PEER6, OTHER6)]
SSH_FROM_PEER = [rule([PEER4, PEER6], [("*", 22, 22)])]

# --------------------------------------------------------------------------- rule parsing


def test_parse_all_source_forms():
    rules = parse_rules(
        json.dumps(
            [
                rule(
                    [
                        "*",
                        "10.0.0.1",
                        "10.1.0.0/16",
                        "10.2.0.1-10.2.0.9",
                        "fd00::/8",
                        "::1",
                        "fd01::1-fd01::ff",
                        "cap:funnel",
                    ],
                    [("*", 1, 2), ("100.64.0.0/10", 3, 3), ("fd7a::1-fd7a::2", 4, 5)],
                )
            ]
        )
    )
    (r,) = rules
    assert r.caps == ("funnel",)
    assert r.protos == DEFAULT_PROTOS
    got = {(s.version, s.first, s.last) for s in r.srcs}
    assert (4, 0, 2**32 - 1) in got and (6, 0, 2**128 - 1) in got
    assert (4, int(ipaddress.ip_address("10.2.0.1")), int(ipaddress.ip_address("10.2.0.9"))) in got
    net = ipaddress.ip_network("10.1.0.0/16")
    assert (4, int(net.network_address), int(net.broadcast_address)) in got
    assert [(d.first_port, d.last_port) for d in r.dsts] == [(1, 2), (3, 3), (4, 5)]


def test_ipproto_defaults_and_reserved_values():
    for protos in (None, [], "absent"):
        r = rule(["*"], [("*", 0, 0)])
        if protos != "absent":
            r["IPProto"] = protos
        assert parse_rules([r])[0].protos == DEFAULT_PROTOS
    # Out-of-range values are kept by the control plane but never match a packet.
    assert parse_rules([rule(["*"], [("*", 0, 0)], [6, -1, 256])])[0].protos == {6}
    assert parse_rules([rule(["*"], [("*", 0, 0)], [300])])[0].protos == frozenset()


def test_capgrant_rules_are_not_packet_rules():
    grant = {"SrcIPs": ["*"], "CapGrant": [{"Dsts": ["100.64.0.0/10"], "Caps": ["x"]}]}
    assert parse_rules([grant]) == []
    both = dict(rule(["*"], [("*", 22, 22)]), CapGrant=[{"Dsts": ["*"]}])
    assert len(parse_rules([both])) == 1  # Go keeps the network part


@pytest.mark.parametrize(
    ("rules", "index", "field", "words"),
    [
        ([rule(["*"], [])], None, None, None),  # valid, sanity of the harness
        ([{"DstPorts": []}], 0, "SrcIPs", "required"),
        ([rule(["*"], []), rule(["1.2.3.4/8"], [])], 1, "SrcIPs[0]", "host bits"),
        ([rule(["*", "bogus"], [])], 0, "SrcIPs[1]", "invalid IP address"),
        ([rule(["1.2.3.4-::1"], [])], 0, "SrcIPs[0]", "mixes"),
        ([rule(["10.0.0.9-10.0.0.1"], [])], 0, "SrcIPs[0]", "ends before"),
        ([rule(["cap:"], [])], 0, "SrcIPs[0]", "empty capability"),
        ([rule([5], [])], 0, "SrcIPs[0]", "string"),
        ([rule(["fe80::1%eth0"], [])], 0, "SrcIPs[0]", "zoned"),
        ([rule(["*"], [("*", 5, 4)])], 0, "DstPorts[0].Ports", "First 5 > Last 4"),
        ([rule(["*"], [("*", 0, 70000)])], 0, "DstPorts[0].Ports.Last", "0..65535"),
        ([rule(["*"], [("*", 1, 1), ("cap:x", 1, 1)])], 0, "DstPorts[1].IP", "only allowed"),
        ([rule(["*"], [("fd00::/7x", 1, 1)])], 0, "DstPorts[0].IP", "invalid CIDR"),
        ([rule(["*"], [], ["tcp"])], 0, "IPProto[0]", "integer"),
        ([rule(["*"], [], [True])], 0, "IPProto[0]", "integer"),
        ([{"SrcIPs": "*", "DstPorts": []}], 0, "SrcIPs", "list"),
        ([{"SrcIPs": ["*"], "DstPorts": [{"IP": "*"}]}], 0, "DstPorts[0].Ports", "First"),
        (
            [{"SrcIPs": ["*"], "DstPorts": [{"Ports": {"First": 1, "Last": 1}}]}],
            0,
            "DstPorts[0].IP",
            "required",
        ),
        ([{"SrcIPs": ["*"], "DstPorts": [], "SrcBits": [32]}], 0, "SrcBits", "supported"),
        ([rule(["*"], []), rule(["*"], []), "x"], 2, None, "object"),
    ],
)
def test_rule_errors_name_rule_and_field(rules, index, field, words):
    if words is None:
        parse_rules(rules)
        return
    with pytest.raises(FilterError) as ei:
        parse_rules(rules)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.rule == index and err.field == field
    msg = str(err)
    assert f"rule {index}" in msg and words in msg
    if field is not None:
        assert field in msg


@pytest.mark.parametrize("text", ['[{"SrcIPs": ["*"]', '{"SrcIPs": []}', "42", b"\xff\xfe["])
def test_invalid_json_or_shape(text):
    with pytest.raises(FilterError) as ei:
        parse_rules(text)
    assert ei.value.rule is None


def test_bad_update_keeps_previous_filter():
    f = PacketFilter(SSH_FROM_PEER)
    syn = ip4(PEER4, ME4, 6, tcp(999, 22))
    assert verdict(f, syn) == OK
    with pytest.raises(FilterError, match="rule 1, field DstPorts\\[0\\].Ports.First"):
        f.update(
            [
                rule(["*"], [("*", 80, 80)]),
                {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": "x", "Last": 1}}]},
            ]
        )
    assert verdict(f, syn) == OK
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(999, 80))) == PF
    assert len(f.rules) == 1
    f.update("[]")  # an empty list blocks everything
    assert verdict(f, syn) == PF


def test_map_update_named_rulesets():
    ssh = [rule([PEER4], [("*", 22, 22)])]
    web = [rule([PEER4], [("*", 80, 80)])]
    dns = [rule([PEER4], [("*", 53, 53)], [17])]
    probes = [
        ip4(PEER4, ME4, 6, tcp(1, 22)),
        ip4(PEER4, ME4, 6, tcp(1, 80)),
        ip4(PEER4, ME4, 17, udp(1, 53)),
    ]
    f = PacketFilter()
    f.apply_map_update(json.dumps(ssh), {"web": web, "dns": json.dumps(dns)})
    assert verdicts(f, probes) == [OK, OK, OK]
    assert sorted(f.rulesets) == ["base", "dns", "web"]
    f.apply_map_update(None, '{"web": null, "dns": []}')  # null and [] both remove
    assert verdicts(f, probes) == [OK, PF, PF]
    f.apply_map_update(None, None)  # nothing: unchanged
    assert verdicts(f, probes) == [OK, PF, PF]
    f.apply_map_update([], {"web": web})  # empty legacy list is kept...
    assert verdicts(f, probes) == [PF, OK, PF]
    assert f.rulesets["base"] == ()
    # "*": null clears everything first, including this message's legacy PacketFilter.
    f.apply_map_update(ssh, {"*": None, "dns": dns})
    assert verdicts(f, probes) == [PF, PF, OK]
    assert sorted(f.rulesets) == ["dns"]
    f.apply_map_update(None, {"*": web})  # "*" with a value is a name
    assert verdicts(f, probes) == [PF, OK, OK]
    f.update(ssh)  # update replaces all rulesets
    assert verdicts(f, probes) == [OK, PF, PF]


def test_map_update_errors_name_the_ruleset_and_change_nothing():
    f = PacketFilter()
    f.apply_map_update(None, {"web": [rule([PEER4], [("*", 80, 80)])]})
    bad = [rule(["*"], [("*", 1, 1)]), rule(["*"], [("*", 1, 1)], ["udp"])]
    with pytest.raises(FilterError) as ei:
        f.apply_map_update(None, {"*": None, "ok": [rule(["*"], [("*", 1, 1)])], "bad": bad})
    e = ei.value
    assert (e.ruleset, e.rule, e.field) == ("bad", 1, "IPProto[0]")
    assert str(e).startswith("ruleset 'bad', rule 1, field IPProto[0]: ")
    with pytest.raises(FilterError, match="ruleset 'base', rule 0, field SrcIPs"):
        f.apply_map_update([{"DstPorts": []}], None)
    with pytest.raises(FilterError, match="PacketFilters must be an object"):
        f.apply_map_update(None, "[]")
    with pytest.raises(FilterError, match="invalid JSON in PacketFilter"):
        f.apply_map_update("[", None)
    with pytest.raises(FilterError, match="ruleset 'x'.*list is required"):
        f.apply_map_update(None, {"x": {"SrcIPs": []}})
    assert sorted(f.rulesets) == ["base", "web"]
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 80))) == OK
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 1))) == PF


# --------------------------------------------------------------------------- rule semantics


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_tcp_syn_needs_rule_non_syn_passes(me, peer, other):
    f = PacketFilter(SSH_FROM_PEER)
    assert verdict(f, ip(peer, me, 6, tcp(4000, 22, SYN))) == OK
    assert verdict(f, ip(peer, me, 6, tcp(4000, 23, SYN))) == PF
    assert verdict(f, ip(other, me, 6, tcp(4000, 22, SYN))) == PF
    # Go "tcp non-syn": anything but a bare SYN is return traffic or refused by the stack.
    for flags in (SYN | ACK, ACK, FIN | ACK, RST, 0):
        assert verdict(f, ip(other, me, 6, tcp(4000, 23, flags))) == OK


def test_default_deny_and_empty_filter():
    f = PacketFilter()
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 22))) == PF
    assert verdict(f, ip6(PEER6, ME6, 17, udp(1, 53))) == PF
    assert verdict(f, b"") == OK  # keepalive


def test_all_matching_rules_are_considered():
    # The BART filter gap: a wildcard rule must still apply when a more specific source
    # prefix of another rule also contains the packet's source.
    f = PacketFilter([rule(["*"], [("*", 22, 22)]), rule([PEER4 + "/32"], [("*", 80, 80)])])
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 22))) == OK
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 80))) == OK
    assert verdict(f, ip4(OTHER4, ME4, 6, tcp(1, 80))) == PF


def test_rule_components_do_not_mix_across_rules():
    f = PacketFilter(
        [
            rule([PEER4], [("100.100.1.1", 22, 22)], [6]),
            rule([OTHER4], [("100.100.1.2", 53, 53)], [17]),
        ]
    )
    assert verdict(f, ip4(PEER4, "100.100.1.1", 6, tcp(1, 22))) == OK
    assert verdict(f, ip4(PEER4, "100.100.1.2", 6, tcp(1, 53))) == PF
    assert verdict(f, ip4(OTHER4, "100.100.1.2", 6, tcp(1, 53))) == PF  # rule 2 is UDP only
    assert verdict(f, ip4(OTHER4, "100.100.1.2", 17, udp(1, 53))) == OK
    assert verdict(f, ip4(OTHER4, "100.100.1.1", 17, udp(1, 22))) == PF


def test_ranges_ports_and_protocols():
    f = PacketFilter(
        [
            rule(
                ["100.64.0.10-100.64.0.20", "fd7a::5-fd7a::6"],
                [("100.100.0.0/24", 1000, 2000), ("fd7a:115c:a1e0::/48", 1000, 2000)],
                [17],
            )
        ]
    )
    assert verdict(f, ip4("100.64.0.10", "100.100.0.7", 17, udp(1, 1000))) == OK
    assert verdict(f, ip4("100.64.0.20", "100.100.0.255", 17, udp(1, 2000))) == OK
    assert verdict(f, ip4("100.64.0.21", "100.100.0.7", 17, udp(1, 1500))) == PF
    assert verdict(f, ip4("100.64.0.9", "100.100.0.7", 17, udp(1, 1500))) == PF
    assert verdict(f, ip4("100.64.0.15", "100.100.1.7", 17, udp(1, 1500))) == PF
    assert verdict(f, ip4("100.64.0.15", "100.100.0.7", 17, udp(1, 2001))) == PF
    assert verdict(f, ip4("100.64.0.15", "100.100.0.7", 6, tcp(1, 1500))) == PF
    assert verdict(f, ip6("fd7a::6", ME6, 17, udp(1, 1234))) == OK
    assert verdict(f, ip6("fd7a::7", ME6, 17, udp(1, 1234))) == PF


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_icmp_allowed_when_any_port_is_open(me, peer, other):
    f = PacketFilter([rule([peer], [(me, 22, 22)], [6])])
    assert verdict(f, echo_request(peer, me, 7)) == OK  # Go matchIPsOnly
    assert verdict(f, echo_request(other, me, 7)) == PF
    assert verdict(f, echo_request(peer, other, 7)) == PF


def test_other_protocols_need_the_full_port_range():
    f = PacketFilter(
        [rule([PEER4, PEER6], [("*", 0, 65535)], [47]), rule([OTHER4], [("*", 0, 100)], [47])]
    )
    assert verdict(f, ip4(PEER4, ME4, 47, b"\0" * 8)) == OK
    assert verdict(f, ip6(PEER6, ME6, 47, b"\0" * 8)) == OK
    assert verdict(f, ip4(OTHER4, ME4, 47, b"\0" * 8)) == PF
    assert verdict(f, ip4(PEER4, ME4, 50, b"\0" * 8)) == PF  # protocol not listed
    assert verdict(f, ip4(PEER4, ME4, 99, b"\0" * 8)) == PF  # TSMP is not special here


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_cap_sources_use_the_callers_capabilities(me, peer, other):
    rules = [rule(["cap:ssh-anywhere"], [("*", 22, 22)])]
    f = PacketFilter(rules)
    syn = ip(other, me, 6, tcp(5, 22))
    assert verdict(f, syn) == PF
    f.set_caps({"ssh-anywhere"})
    assert verdict(f, syn) == OK
    assert verdict(f, ip(other, me, 6, tcp(5, 23))) == PF
    assert verdict(PacketFilter(rules, caps=["ssh-anywhere"]), syn) == OK
    f.update(rules, caps=())
    assert verdict(f, syn) == PF


def test_multicast_and_link_local_destinations_are_dropped():
    f = PacketFilter([rule(["*"], [("*", 0, 65535)], [6, 17, 1, 58])])
    assert verdict(f, ip4(PEER4, "224.0.0.251", 17, udp(5353, 5353))) == PF
    assert verdict(f, ip4(PEER4, "169.254.1.1", 17, udp(1, 2))) == PF
    assert verdict(f, ip4(PEER4, "169.254.169.254", 17, udp(1, 2))) == OK
    assert verdict(f, ip6(PEER6, "ff02::fb", 17, udp(5353, 5353))) == PF
    assert verdict(f, ip6(PEER6, "fe80::1", 17, udp(1, 2))) == PF
    assert verdict(f, ip4(PEER4, ME4, 17, udp(1, 2))) == OK


# --------------------------------------------------------------------------- return traffic


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_udp_return_traffic(me, peer, other):
    f = PacketFilter(SSH_FROM_PEER)
    reply = ip(other, me, 17, udp(53, 40000))
    assert verdict(f, reply) == PF
    assert send(f, [ip(me, other, 17, udp(40000, 53))], now=10.0) == 1
    assert verdict(f, reply, now=11.0) == OK
    # Only the exact reversed 5-tuple.
    assert verdict(f, ip(other, me, 17, udp(54, 40000)), now=11.0) == PF
    assert verdict(f, ip(other, me, 17, udp(53, 40001)), now=11.0) == PF
    assert verdict(f, ip(peer, me, 17, udp(53, 40000)), now=11.0) == PF
    assert verdict(f, ip(other, me, 6, tcp(53, 40000, SYN)), now=11.0) == PF
    assert verdict(f, ip(other, me, 132, sctp(53, 40000)), now=11.0) == PF
    send(f, [ip(me, other, 132, sctp(40000, 53))], now=11.0)
    assert verdict(f, ip(other, me, 132, sctp(53, 40000)), now=12.0) == OK


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_icmp_echo_return_traffic(me, peer, other):
    f = PacketFilter(SSH_FROM_PEER)
    assert verdict(f, echo_reply(other, me, 77)) == PF
    assert send(f, [echo_request(me, other, 77)], now=1.0) == 1
    assert verdict(f, echo_reply(other, me, 77), now=2.0) == OK
    assert verdict(f, echo_reply(other, me, 78), now=2.0) == PF
    assert verdict(f, echo_reply(peer, me, 77), now=2.0) == OK  # peer may ping us anyway
    assert verdict(f, echo_request(other, me, 77), now=2.0) == PF  # a request is not a reply
    # Echo replies we send do not open anything.
    assert send(f, [echo_reply(me, "100.64.3.3" if ":" not in me else "fd00::3", 5)]) == 0


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_tcp_return_traffic_and_inbound_syn(me, peer, other):
    f = PacketFilter(SSH_FROM_PEER)
    send(f, [ip(me, other, 6, tcp(40000, 443, SYN))])
    assert verdict(f, ip(other, me, 6, tcp(443, 40000, SYN | ACK))) == OK
    assert verdict(f, ip(other, me, 6, tcp(443, 40000, ACK))) == OK
    # A bare SYN is a new inbound connection: the ACL decides, not the flow table (as Go).
    assert verdict(f, ip(other, me, 6, tcp(443, 40000, SYN))) == PF


@pytest.mark.parametrize(("me", "peer", "other"), FAMILIES)
def test_icmp_errors_related_to_our_flows(me, peer, other):
    f = PacketFilter(SSH_FROM_PEER)
    router = "100.90.0.1" if ":" not in me else "fd7a:115c:a1e0::90:1"
    out_udp = ip(me, other, 17, udp(40000, 53))
    out_tcp = ip(me, other, 6, tcp(40001, 443, ACK))
    out_ping = echo_request(me, other, 9)
    v4 = ":" not in me
    too_big = 3 if v4 else 2
    errors = [
        icmp_error(router, me, out_udp),
        icmp_error(other, me, out_tcp, too_big, 4),
        icmp_error(router, me, out_ping, 11 if v4 else 3),
    ]
    assert verdicts(f, errors) == [PF, PF, PF]
    send(f, [out_udp, out_tcp, out_ping])
    assert verdicts(f, errors, now=1.0) == [OK, OK, OK]
    # The quoted header must be ours: other ports, another source, a mismatched family,
    # a quote too short for the ports, or a non-error type do not pass.
    bad = [
        icmp_error(router, me, ip(me, other, 17, udp(40000, 54))),
        icmp_error(router, me, ip(peer, other, 17, udp(40000, 53))),
        icmp_error(router, me, out_udp, cut=(20 if v4 else 40) + 3),
        icmp_error(router, me, out_udp, 5 if v4 else 137),  # redirect
        icmp_error(
            router,
            me,
            ip4("100.100.1.1", "1.1.1.1", 17, udp(40000, 53))
            if not v4
            else ip6(ME6, OTHER6, 17, udp(40000, 53)),
        ),
        icmp_error(router, me, b""),
    ]
    assert verdicts(f, bad, now=1.0) == [PF] * len(bad)
    # A quote truncated after the ports still matches (that is how errors usually look).
    assert verdict(f, icmp_error(router, me, out_udp, cut=(20 if v4 else 40) + 4), 1.0) == OK
    # Errors from a peer the ACL admits pass like any ICMP from it (Go matchIPsOnly).
    assert verdict(f, icmp_error(peer, me, b""), now=1.0) == OK


def test_flows_survive_rule_updates():
    f = PacketFilter(SSH_FROM_PEER)
    send(f, [ip4(ME4, OTHER4, 17, udp(1000, 53))])
    f.update([])
    assert verdict(f, ip4(OTHER4, ME4, 17, udp(53, 1000)), now=1.0) == OK


# --------------------------------------------------------------------------- flow table


def test_flow_expiry_is_refreshed_only_by_outbound():
    f = PacketFilter(flow_timeout=30.0)
    out = ip6(ME6, OTHER6, 17, udp(5000, 443))
    back = ip6(OTHER6, ME6, 17, udp(443, 5000))
    send(f, [out], now=100.0)
    assert verdict(f, back, now=129.9) == OK
    assert verdict(f, back, now=130.0) == PF  # expired exactly at now + timeout
    send(f, [out], now=130.0)
    assert verdict(f, back, now=150.0) == OK  # inbound hits do not refresh...
    assert verdict(f, back, now=160.0) == PF
    assert f.flow_count(160.0) == 0
    send(f, [out], now=161.0)
    send(f, [out], now=180.0)  # ...outbound does
    assert verdict(f, back, now=200.0) == OK
    assert f.flow_count(200.0) == 1
    f.clear_flows()
    assert verdict(f, back, now=200.0) == PF


def test_flow_table_bound_evicts_least_recently_refreshed():
    f = PacketFilter(max_flows=8, flow_timeout=1000.0)
    outs = [ip4(ME4, OTHER4, 17, udp(2000 + i, 53)) for i in range(20)]
    backs = [ip4(OTHER4, ME4, 17, udp(53, 2000 + i)) for i in range(20)]
    send(f, outs[:8], now=1.0)
    send(f, [outs[0]], now=2.0)  # refresh flow 0
    send(f, outs[8:10], now=3.0)  # evicts flows 1 and 2
    assert f.flow_count(3.0) == 8
    got = verdicts(f, backs[:10], now=4.0)
    assert got == [OK, PF, PF, OK, OK, OK, OK, OK, OK, OK]
    send(f, outs, now=5.0)
    assert f.flow_count(5.0) == 8
    assert verdicts(f, backs, now=6.0) == [PF] * 12 + [OK] * 8
    assert [fl[5] for fl in f.flows(6.0)] == list(range(2012, 2020))


def test_expired_flows_make_room_before_live_ones_are_evicted():
    f = PacketFilter(max_flows=4, flow_timeout=10.0)
    send(f, [ip4(ME4, OTHER4, 17, udp(1, 53)), ip4(ME4, OTHER4, 17, udp(2, 53))], now=0.0)
    send(f, [ip4(ME4, OTHER4, 17, udp(3, 53)), ip4(ME4, OTHER4, 17, udp(4, 53))], now=5.0)
    send(f, [ip4(ME4, OTHER4, 17, udp(5, 53)), ip4(ME4, OTHER4, 17, udp(6, 53))], now=11.0)
    assert sorted(fl[5] for fl in f.flows(11.0)) == [3, 4, 5, 6]


@pytest.mark.parametrize(
    "kwargs", [{"max_flows": 0}, {"flow_timeout": 0.0}, {"flow_timeout": float("nan")}]
)
def test_flow_table_parameters_are_validated(kwargs):
    with pytest.raises(ValueError):
        PacketFilter(**kwargs)


@pytest.mark.parametrize("now", [float("nan"), float("inf"), float("-inf")])
def test_now_must_be_finite(now):
    f = PacketFilter()
    b = PacketBatch.from_packets([ip4(ME4, OTHER4, 17, udp(1, 2))])
    for call in (f.check_inbound, f.record_outbound):
        with pytest.raises(ValueError, match="finite"):
            call(b, now)
    with pytest.raises(ValueError, match="finite"):
        f.flow_count(now)
    assert b.status_of(0) == OK and f.flow_count(0.0) == 0


def test_compiled_rules_reject_inconsistent_tables():
    import array

    from dataplane.filter._packet import CompiledRules

    def fam(src_set=0, dst_off=0, dst_len=0, dst_set=0, start=0):
        q = lambda *v: array.array("Q", v)  # noqa: E731
        i = lambda *v: array.array("I", v)  # noqa: E731
        return (q(0), q(start), i(src_set), q(0), q(0), i(dst_off), i(dst_len), i(dst_set))

    def build(**kw):
        v4 = fam(**kw)
        return CompiledRules(
            1, 1, array.array("Q", [0] * 256), array.array("Q", [0, 1]),
            array.array("I", [0]), array.array("H", [0]), array.array("H", [5]), v4, fam(),
        )  # fmt: skip

    build(src_set=1, dst_off=0, dst_len=1, dst_set=1)  # consistent
    for bad in ({"src_set": 2}, {"dst_off": 1, "dst_len": 1}, {"dst_set": 7}, {"start": 5}):
        with pytest.raises(ValueError):
            build(**bad)


# --------------------------------------------------------------------------- IP parsing


def test_ipv6_extension_headers_are_walked():
    f = PacketFilter(SSH_FROM_PEER)
    hbh = (0, b"\x01\x04\0\0\0\0")  # Hop-by-Hop with a PadN option, 8 bytes
    dst_opts = (60, b"\x01\x0c" + b"\0" * 12)
    routing = (43, b"\0\0\0\0\0\0")
    ah = (51, b"\0" * 10)  # AH: length in 4-octet units minus 2
    first_frag = (44, b"\0\x01\0\0\0\x07")  # offset 0, M set
    for ext in ([hbh], [hbh, dst_opts], [routing, ah], [first_frag], [hbh, routing, dst_opts]):
        assert verdict(f, ip6(PEER6, ME6, 6, tcp(1, 22), ext=ext)) == OK, ext
        assert verdict(f, ip6(PEER6, ME6, 6, tcp(1, 23), ext=ext)) == PF, ext
        assert verdict(f, ip6(OTHER6, ME6, 6, tcp(1, 23, ACK), ext=ext)) == OK, ext
    later_frag = (44, b"\x01\x01\0\0\0\x07")  # offset 32: no transport header follows
    assert verdict(f, ip6(OTHER6, ME6, 17, b"payload!", ext=[later_frag])) == OK
    overlapping = (44, b"\x00\x09\0\0\0\x07")  # offset 1 block: overlaps the TCP header
    assert verdict(f, ip6(OTHER6, ME6, 6, b"payload!", ext=[overlapping])) == PF
    assert verdict(f, ip6(OTHER6, ME6, 17, b"payload!", ext=[hbh] * 9)) == BAD  # too many
    assert verdict(f, ip6(OTHER6, ME6, 17, b"payload!", ext=[hbh] * 8)) == PF  # 8 is fine
    assert verdict(f, ip6(OTHER6, ME6, 17, b"short", ext=[hbh] * 8)) == BAD  # UDP cut
    truncated = ip6(PEER6, ME6, 6, tcp(1, 22), ext=[dst_opts])
    assert verdict(f, truncated[: 40 + 8]) == BAD


def test_ipv4_fragments_options_and_padding():
    f = PacketFilter(SSH_FROM_PEER)
    assert verdict(f, ip4(OTHER4, ME4, 17, b"tail-of-datagram", frag=100)) == OK
    assert verdict(f, ip4(OTHER4, ME4, 17, udp(1, 22), frag=0x2000)) == PF  # first fragment
    # RFC 1858 (as Go): a tiny first fragment cannot hide the ports or flags, and a later
    # fragment may not start inside the first 80 bytes, where it could rewrite them.
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 22)[:8], frag=0x2000)) == BAD
    assert verdict(f, ip4(OTHER4, ME4, 6, b"\0" * 8 + b"\0" * 5 + b"\x02", frag=1)) == PF
    assert verdict(f, ip4(OTHER4, ME4, 17, b"tail-of-datagram", frag=9)) == PF
    assert verdict(f, ip4(OTHER4, ME4, 17, b"tail-of-datagram", frag=10)) == OK
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 22), options=b"\x01\x01\x01\x00")) == OK
    padded = ip4(PEER4, ME4, 6, tcp(1, 22)) + b"\xff" * 16
    assert verdict(f, padded) == OK
    # The transport header is looked for inside the total length, not in padding.
    assert verdict(f, ip4(PEER4, ME4, 6, tcp(1, 22), total=30) + b"\0" * 30) == BAD


@pytest.mark.parametrize(
    "pkt",
    [
        b"\x45",
        b"\x45" + b"\0" * 18,
        b"\x60" + b"\0" * 38,
        b"\x00" * 40,
        b"\x75" + b"\0" * 40,
        ip4(PEER4, ME4, 6, tcp(1, 22), total=19),
        ip4(PEER4, ME4, 6, tcp(1, 22), total=100),
        b"\x44" + ip4(PEER4, ME4, 6, tcp(1, 22))[1:],
        b"\x4f" + ip4(PEER4, ME4, 6, tcp(1, 22))[1:],
        ip6(PEER6, ME6, 6, tcp(1, 22), plen=100),
        ip4(PEER4, ME4, 6, tcp(1, 22)[:19]),
        ip4(PEER4, ME4, 17, udp(1, 2)[:7]),
        ip4(PEER4, ME4, 1, icmp(8)[:7]),
        ip6(PEER6, ME6, 58, icmp(128)[:7]),
        ip6(PEER6, ME6, 132, sctp(1, 2)[:11]),
    ],
)
def test_malformed_packets_are_bad_ip(pkt):
    assert verdict(PacketFilter([rule(["*"], [("*", 0, 65535)])]), pkt) == BAD


def test_only_alive_slots_are_considered():
    f = PacketFilter()
    b = PacketBatch.from_packets([ip4(PEER4, ME4, 6, tcp(1, 22))] * 3 + [b"\x99"])
    b.set_status(1, DropReason.REPLAY)
    assert f.check_inbound(b, 0.0) == 3
    assert [b.status_of(i) for i in range(4)] == [PF, DropReason.REPLAY, PF, BAD]
    out = PacketBatch.from_packets([ip4(ME4, OTHER4, 17, udp(1, 2))] * 2)
    out.set_status(0, DropReason.NO_ROUTE)
    assert f.record_outbound(out, 0.0) == 1
    assert out.status_of(0) == DropReason.NO_ROUTE and out.status_of(1) == OK


# --------------------------------------------------------------------------- hostile input


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=32))
def test_random_bytes_only_produce_statuses(packets):
    f = PacketFilter([rule(["*"], [("*", 0, 65535)])])
    m = PacketFilterModel([rule(["*"], [("*", 0, 65535)])])
    send(f, packets)
    for p in packets:
        m.record(p, 0.0)
    b = PacketBatch.from_packets(packets)
    f.check_inbound(b, 0.0)
    for i, p in enumerate(packets):
        assert b.status_of(i) in (OK, PF, BAD)
        assert b.status_of(i) == m.verdict(p, 0.0)


def test_every_truncation_and_byte_flip_of_valid_packets():
    rng = random.Random(4)
    f = PacketFilter(SSH_FROM_PEER)
    m = PacketFilterModel(SSH_FROM_PEER)
    seeds = [
        ip4(PEER4, ME4, 6, tcp(1, 22)),
        ip6(PEER6, ME6, 17, udp(1, 2)),
        icmp_error("100.90.0.1", ME4, ip4(ME4, OTHER4, 17, udp(1, 2))),
        icmp_error("fd00::9", ME6, ip6(ME6, OTHER6, 17, udp(1, 2)), cut=60),
        ip6(PEER6, ME6, 6, tcp(1, 22), ext=[(0, b"\x01\x04\0\0\0\0"), (44, b"\0" * 6)]),
    ]
    for s in seeds:
        send(f, [s])
        m.record(s, 0.0)
    mutants = []
    for s in seeds:
        mutants += [s[:n] for n in range(len(s) + 1)]
        for _ in range(200):
            b = bytearray(s)
            b[rng.randrange(len(b))] = rng.randrange(256)
            mutants.append(bytes(b))
    for start in range(0, len(mutants), 128):
        chunk = mutants[start : start + 128]
        got = verdicts(f, chunk, now=1.0)
        assert got == [m.verdict(p, 1.0) for p in chunk]


# --------------------------------------------------------------------------- model agreement

V4_POOL = ["100.64.0.0", "100.64.1.0", "100.100.1.0", "10.0.0.0", "0.0.0.0"]
V6_POOL = ["fd7a:115c:a1e0::", "fd7a:115c:a1e0:0:0:0:64:0", "fd00::", "::"]
CAPS = ["cap-a", "cap-b"]


@st.composite
def addresses(draw, version=None):
    if version is None:
        version = draw(st.sampled_from([4, 6]))
    pool = V4_POOL if version == 4 else V6_POOL
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return cls(int(cls(draw(st.sampled_from(pool)))) + draw(st.integers(0, 300)))


@st.composite
def ip_sets(draw):
    kind = draw(st.sampled_from(["addr", "cidr", "range", "star"]))
    if kind == "star":
        return "*"
    a = draw(addresses())
    bits = 32 if a.version == 4 else 128
    if kind == "addr":
        return str(a)
    if kind == "cidr":
        plen = draw(st.sampled_from([0, 1, bits - 24, bits - 9, bits - 8, bits - 2, bits]))
        return str(ipaddress.ip_network(f"{a}/{plen}", strict=False))
    b = type(a)(int(a) + draw(st.integers(0, 200)))
    return f"{a}-{b}"


ports = st.integers(0, 65535) | st.sampled_from([0, 22, 53, 80, 443, 65535])


@st.composite
def port_ranges(draw):
    a = draw(ports)
    if draw(st.booleans()):
        return (0, 65535) if draw(st.booleans()) else (a, a)
    b = draw(ports)
    return (min(a, b), max(a, b))


@st.composite
def filter_rules(draw):
    srcs = draw(st.lists(ip_sets() | st.sampled_from([f"cap:{c}" for c in CAPS]), max_size=4))
    dsts = []
    for ip_set in draw(st.lists(ip_sets(), max_size=3)):
        first, last = draw(port_ranges())
        dsts.append({"IP": ip_set, "Ports": {"First": first, "Last": last}})
    r = {"SrcIPs": srcs, "DstPorts": dsts}
    protos = draw(
        st.none() | st.lists(st.sampled_from([1, 6, 17, 58, 132, 47, 99, 256]), max_size=3)
    )
    if protos is not None:
        r["IPProto"] = protos
    return r


@st.composite
def packets(draw, outbound=False):
    a = draw(addresses())
    b = draw(addresses(a.version))
    src, dst = (str(b), str(a)) if outbound else (str(a), str(b))
    proto = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "other", "wrong-icmp"]))
    sp, dp = draw(ports), draw(ports)
    if proto == "tcp":
        pkt = ip(src, dst, 6, tcp(sp, dp, draw(st.sampled_from([SYN, SYN | ACK, ACK, RST]))))
    elif proto == "udp":
        pkt = ip(src, dst, 17, udp(sp, dp))
    elif proto == "sctp":
        pkt = ip(src, dst, 132, sctp(sp, dp))
    elif proto == "icmp":
        v4 = a.version == 4
        kind = draw(st.sampled_from([0, 8, 3, 11, 5] if v4 else [129, 128, 1, 2, 3, 137]))
        ident = draw(st.integers(0, 3))
        body = b""
        if kind in (3, 11, 1, 2, 3) and draw(st.booleans()):
            q_src, q_dst = dst, str(draw(addresses(a.version)))
            qp = draw(st.sampled_from(["udp", "tcp", "ping"]))
            inner = (
                ip(q_src, q_dst, 17, udp(dp, sp))
                if qp == "udp"
                else ip(q_src, q_dst, 6, tcp(dp, sp))
                if qp == "tcp"
                else echo_request(q_src, q_dst, ident)
            )
            body = inner[: draw(st.integers(0, len(inner)))]
        pkt = ip(src, dst, 1 if v4 else 58, icmp(kind, 0, ident, 1, body))
    elif proto == "wrong-icmp":
        pkt = ip(src, dst, 58 if a.version == 4 else 1, icmp(8, 0, 1, 1))
    else:
        pkt = ip(src, dst, draw(st.sampled_from([47, 50, 99, 132])), b"\0" * 12)
    if draw(st.integers(0, 9)) == 0:
        pkt = pkt[: draw(st.integers(0, len(pkt)))]
    return pkt


@st.composite
def conversations(draw):
    """An outbound packet and inbound packets related to it: the reply, ICMP errors quoting
    it (whole, cut after the ports, cut inside the ports) and the reply from a stranger."""
    me = draw(addresses())
    peer = draw(addresses(me.version))
    stranger = draw(addresses(me.version))
    sp, dp = draw(ports), draw(ports)
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "ping"]))
    m, p = str(me), str(peer)
    if kind == "tcp":
        out, back = ip(m, p, 6, tcp(sp, dp, ACK)), ip(p, m, 6, tcp(dp, sp, SYN))
    elif kind == "udp":
        out, back = ip(m, p, 17, udp(sp, dp)), ip(p, m, 17, udp(dp, sp))
    elif kind == "sctp":
        out, back = ip(m, p, 132, sctp(sp, dp)), ip(p, m, 132, sctp(dp, sp))
    else:
        out, back = echo_request(m, p, sp), echo_reply(p, m, sp)
    hdr = 20 if me.version == 4 else 40
    inbound = [
        back,
        icmp_error(str(stranger), m, out, cut=len(out)),
        icmp_error(p, m, out, cut=hdr + 4),
        icmp_error(p, m, out, cut=hdr + 3),
        ip(str(stranger), m, *_reply_parts(kind, sp, dp)),
    ]
    return out, inbound


def _reply_parts(kind, sp, dp):
    if kind == "tcp":
        return 6, tcp(dp, sp, SYN)
    if kind == "udp":
        return 17, udp(dp, sp)
    if kind == "sctp":
        return 132, sctp(dp, sp)
    return 47, b"\0" * 8


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(filter_rules(), max_size=6),
    caps=st.sets(st.sampled_from(CAPS)),
    max_flows=st.integers(1, 6),
    steps=st.lists(
        st.tuples(
            st.floats(0, 20),
            st.lists(conversations(), max_size=8),
            st.lists(packets(), max_size=8),
            st.lists(packets(outbound=True), max_size=4),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_compiled_filter_agrees_with_model(rules, caps, max_flows, steps):
    f = PacketFilter(rules, caps=caps, max_flows=max_flows, flow_timeout=15.0)
    m = PacketFilterModel(rules, caps=caps, max_flows=max_flows, flow_timeout=15.0)
    now = 0.0
    for dt, convs, inbound, outbound in steps:
        now += dt
        outs = [c[0] for c in convs] + outbound
        if outs:
            assert send(f, outs, now) == sum(m.record(p, now) for p in outs)
        assert f.flows(now) == m.flows(now)
        probes = [q for c in convs for q in c[1]] + inbound
        for i in range(0, len(probes), 128):
            chunk = probes[i : i + 128]
            assert verdicts(f, chunk, now) == [m.verdict(p, now) for p in chunk]
        # Later steps probe replies to flows that may have expired or been evicted.
        later = [q for c in convs for q in c[1]]
        if later:
            assert verdicts(f, later, now + 14.9) == [m.verdict(p, now + 14.9) for p in later]


@settings(max_examples=60, deadline=None)
@given(
    rules=st.lists(filter_rules(), min_size=1, max_size=10),
    probes=st.lists(packets(), min_size=1, max_size=40),
)
def test_compiled_rules_agree_with_model_without_flows(rules, probes):
    f = PacketFilter(rules)
    m = PacketFilterModel(rules)
    assert verdicts(f, probes) == [m.verdict(p, 0.0) for p in probes]


@pytest.mark.parametrize("nrules", [63, 64, 65, 200])
def test_many_rules_agree_with_model(nrules):
    # Rule ids beyond 63 live in later bitset words.
    rng = random.Random(nrules)
    rules = []
    for i in range(nrules):
        base = 0x64400000 + 256 * i
        srcs = [str(ipaddress.IPv4Address(base + rng.randrange(256))) for _ in range(3)]
        srcs.append(f"fd7a:115c:a1e0::{i:x}:0/112")
        if i % 7 == 0:
            srcs.append(f"{ipaddress.IPv4Address(base)}-{ipaddress.IPv4Address(base + 300)}")
        port = rng.randrange(1, 1000)
        dsts = [
            (rng.choice(["*", ME4, "100.100.0.0/16", ME6]), port, port + rng.randrange(5)),
            ("*", 0, 65535) if i % 11 == 0 else (ME4, port, port),
        ]
        rules.append(rule(srcs, dsts, rng.choice([None, [6], [17], [6, 17, 47]])))
    f = PacketFilter(rules)
    m = PacketFilterModel(rules)
    probes = []
    for _ in range(2000):
        i = rng.randrange(nrules + 2)
        if rng.random() < 0.5:
            src = str(ipaddress.IPv4Address(0x64400000 + 256 * i + rng.randrange(256)))
            dst = rng.choice([ME4, "100.100.7.7", "100.99.0.1"])
        else:
            src = f"fd7a:115c:a1e0::{i:x}:{rng.randrange(65536):x}"
            dst = rng.choice([ME6, "fd7a:115c:a1e0::2"])
        port = rng.randrange(1, 1010)
        kind = rng.randrange(4)
        if kind == 0:
            probes.append(ip(src, dst, 6, tcp(1, port, SYN)))
        elif kind == 1:
            probes.append(ip(src, dst, 17, udp(1, port)))
        elif kind == 2:
            probes.append(echo_request(src, dst, 1))
        else:
            probes.append(ip(src, dst, 47, b"\0" * 8))
    got, want = [], []
    for start in range(0, len(probes), 128):
        chunk = probes[start : start + 128]
        got += verdicts(f, chunk)
        want += [m.verdict(p, 0.0) for p in chunk]
    assert got == want
    assert 0.05 < got.count(OK) / len(got) < 0.95


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(min_size=0, max_size=90)),
        min_size=1,
        max_size=32,
    )
)
def test_random_ip_like_bytes_agree_with_model(parts):
    packets = [bytes([b0]) + rest for b0, rest in parts]
    f = PacketFilter([rule(["*"], [("*", 0, 65535)])])
    m = PacketFilterModel([rule(["*"], [("*", 0, 65535)])])
    send(f, packets)
    for p in packets:
        m.record(p, 0.0)
    assert f.flows(0.0) == m.flows(0.0)
    assert verdicts(f, packets, 0.0) == [m.verdict(p, 0.0) for p in packets]


def test_replies_to_random_outbound_traffic_pass():
    rng = random.Random(7)
    f = PacketFilter(max_flows=10_000)
    outs, backs = [], []
    for _ in range(500):
        v = rng.choice([4, 6])
        me = ipaddress.ip_address(ME4 if v == 4 else ME6)
        peer = ipaddress.ip_address(
            int(ipaddress.ip_address(OTHER4 if v == 4 else OTHER6)) + rng.randrange(1000)
        )
        sp, dp = rng.randrange(65536), rng.randrange(65536)
        kind = rng.choice(["udp", "ping"])
        if kind == "udp":
            outs.append(ip(str(me), str(peer), 17, udp(sp, dp)))
            backs.append(ip(str(peer), str(me), 17, udp(dp, sp)))
        else:
            outs.append(echo_request(str(me), str(peer), sp))
            backs.append(echo_reply(str(peer), str(me), sp))
    for i in range(0, 500, 100):
        send(f, outs[i : i + 100], now=1.0)
    assert f.flow_count(1.0) == len(set(outs))
    for i in range(0, 500, 100):
        assert verdicts(f, backs[i : i + 100], now=2.0) == [OK] * 100
