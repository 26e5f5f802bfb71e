"""Packet filter throughput against the pure-Python model, in one run.

Groups (compare within a group; each round handles one batch of N = 128 64-byte packets):
  filter-in-<rules>:  ``PacketFilter.check_inbound`` | ``PacketFilterModel.check_inbound``
                      (baseline). The batch mixes IPv4/IPv6 TCP SYNs (allowed and denied),
                      TCP ACKs, UDP to an allowed port, UDP replies to flows we started, denied
                      UDP and ICMP echo requests/replies. Statuses are reset inside the round.
  filter-out-<rules>: ``PacketFilter.record_outbound`` of 128 UDP/TCP/ICMP-echo packets |
                      ``PacketFilterModel.record_outbound`` (baseline).
Rule sets: ``sample`` is shaped like tailscale-rs' ``sample_filter.json`` (3 rules with
1064, 6 and 26 single-address sources plus the CGNAT/ULA prefixes); ``large`` has 200 rules
with 10 000 sources (addresses, CIDRs and ranges) and 600 DstPorts entries.

packets/s = N / mean (and / median) round time, stored in each result's ``extra_info``.

Run: python -m pytest benchmarks/bench_filter.py --benchmark-only
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from dataplane._batch import DropReason, PacketBatch
from dataplane.filter.packet import PacketFilter
from dataplane.filter.packet_model import PacketFilterModel

N = 128
SIZE = 64
ME4 = "100.100.1.1"
ME6 = "fd7a:115c:a1e0::1"


def _v4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(0x64400000 + rng.randrange(1 << 22)))  # 100.64/10


def _v6(rng: random.Random) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(ME6)) + rng.randrange(1 << 32)))


def sample_rules(rng: random.Random) -> list[dict]:
    def dports(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            port = rng.randrange(1, 65536)
            for dst in ("100.64.0.0/10", "fd7a:115c:a1e0::/48"):
                out.append({"IP": dst, "Ports": {"First": port, "Last": port}})
        return out

    rules = []
    for nsrc, nports in ((1064, 4), (6, 2), (26, 3)):
        srcs = [_v4(rng) if i % 2 else _v6(rng) for i in range(nsrc)]
        rules.append({"SrcIPs": srcs, "DstPorts": dports(nports)})
    rules[0]["SrcIPs"] += ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]
    rules[0]["DstPorts"] += [{"IP": "*", "Ports": {"First": 22, "Last": 22}}]
    return rules


def large_rules(rng: random.Random) -> list[dict]:
    rules = []
    for _ in range(200):
        srcs = []
        for _ in range(50):
            a = _v4(rng)
            kind = rng.randrange(3)
            if kind == 0:
                srcs.append(a)
            elif kind == 1:
                srcs.append(str(ipaddress.ip_network(f"{a}/{rng.randrange(16, 32)}", strict=False)))
            else:
                b = ipaddress.IPv4Address(a) + rng.randrange(1000)
                srcs.append(f"{a}-{b}")
        dsts = []
        for _ in range(3):
            first = rng.randrange(1, 60000)
            dsts.append(
                {
                    "IP": rng.choice(["*", "100.100.0.0/16", ME4, ME6]),
                    "Ports": {"First": first, "Last": first + rng.randrange(100)},
                }
            )
        rules.append(
            {"SrcIPs": srcs, "DstPorts": dsts, "IPProto": rng.choice([[6], [17], [6, 17], []])}
        )
    rules.append(
        {
            "SrcIPs": ["100.64.0.0/10", "fd7a:115c:a1e0::/48"],
            "DstPorts": [{"IP": "*", "Ports": {"First": 22, "Last": 22}}],
        }
    )
    return rules


def _ip(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        body = l4 + bytes(SIZE - 20 - len(l4))
        return (
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, SIZE, 0, 0, 64, proto, 0, a.packed, b.packed)
            + body
        )
    body = l4 + bytes(SIZE - 40 - len(l4))
    return struct.pack("!IHBB", 0x60000000, len(body), proto, 64) + a.packed + b.packed + body


def _tcp(sp: int, dp: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sp, dp, 1, 0, 0x50, flags, 65535, 0, 0)


def _udp(sp: int, dp: int) -> bytes:
    return struct.pack("!HHHH", sp, dp, 8, 0)


def _icmp(kind: int, ident: int) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, 1)


def traffic(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """(outbound packets, inbound packets) — the inbound mix described above."""
    outbound, inbound = [], []
    for i in range(N):
        v4 = i % 2 == 0
        me, peer = (ME4, _v4(rng)) if v4 else (ME6, _v6(rng))
        sp, dp = rng.randrange(1024, 65536), rng.randrange(1, 65536)
        kind = i % 8
        if kind in (0, 1):  # SYN to SSH (allowed) / elsewhere
            inbound.append(_ip(peer, me, 6, _tcp(sp, 22 if kind == 0 else dp, 0x02)))
            outbound.append(_ip(me, peer, 6, _tcp(dp, sp, 0x12)))
        elif kind == 2:  # established TCP
            inbound.append(_ip(peer, me, 6, _tcp(sp, dp, 0x10)))
            outbound.append(_ip(me, peer, 6, _tcp(dp, sp, 0x10)))
        elif kind in (3, 4):  # UDP reply to our flow
            outbound.append(_ip(me, peer, 17, _udp(dp, sp)))
            inbound.append(_ip(peer, me, 17, _udp(sp, dp)))
        elif kind == 5:  # unsolicited UDP
            inbound.append(_ip(peer, me, 17, _udp(sp, dp)))
            outbound.append(_ip(me, peer, 17, _udp(dp, sp + 1)))
        else:  # ping out, reply in / ping in
            req, rep = (8, 0) if v4 else (128, 129)
            outbound.append(_ip(me, peer, 1 if v4 else 58, _icmp(req, sp)))
            inbound.append(_ip(peer, me, 1 if v4 else 58, _icmp(rep if kind == 6 else req, sp)))
    assert all(len(p) == SIZE for p in inbound + outbound)
    return outbound, inbound


def _setup(name: str):
    rng = random.Random(2026)
    rules = sample_rules(rng) if name == "sample" else large_rules(rng)
    outbound, inbound = traffic(rng)
    compiled = PacketFilter(rules)
    model = PacketFilterModel(rules)
    for f in (compiled, model):
        f.record_outbound(PacketBatch.from_packets(outbound), 0.0)
    return compiled, model, outbound, inbound


def _report(benchmark) -> None:
    stats = benchmark.stats.stats
    benchmark.extra_info["packets_per_s_mean"] = round(N / stats.mean)
    benchmark.extra_info["packets_per_s_median"] = round(N / stats.median)


@pytest.mark.parametrize("rules", ["sample", "large"])
@pytest.mark.parametrize("impl", ["compiled", "model"])
def test_inbound(benchmark, rules, impl):
    compiled, model, _, inbound = _setup(rules)
    f = compiled if impl == "compiled" else model
    batch = PacketBatch.from_packets(inbound)
    statuses = batch.statuses
    zeros = bytes(N)
    # Sanity: both implementations agree and the mix has passes and drops.
    f.check_inbound(batch, 1.0)
    want = [model.verdict(p, 1.0) for p in inbound]
    assert [batch.status_of(i) for i in range(N)] == want
    assert 0 < want.count(DropReason.PACKET_FILTER) < N
    benchmark.group = f"filter-in-{rules}"

    def round_() -> int:
        statuses[:] = zeros
        return f.check_inbound(batch, 1.0)

    benchmark(round_)
    _report(benchmark)


@pytest.mark.parametrize("rules", ["sample"])
@pytest.mark.parametrize("impl", ["compiled", "model"])
def test_outbound(benchmark, rules, impl):
    compiled, model, outbound, _ = _setup(rules)
    f = compiled if impl == "compiled" else model
    batch = PacketBatch.from_packets(outbound)
    benchmark.group = f"filter-out-{rules}"
    now = [1.0]

    def round_() -> int:
        now[0] += 1e-6
        return f.record_outbound(batch, now[0])

    assert round_() == N
    benchmark(round_)
    _report(benchmark)
