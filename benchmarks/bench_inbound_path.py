"""The inbound per-packet path without crypto, on 64-byte packets (issue target: 5 M/s).

One round = one batch of 128 datagrams through: classify (WireGuard data) -> [decryption
stood in for by moving the offset past the header, as open() does] -> unpad -> source
filter (AllowedIPs of 1000 peers) -> packet filter (sample ACL) -> inbound route. The
baseline in the same run is the same pipeline written per packet in Python
(``dataplane.ident`` model + ``ipaddress`` + the filter model).

Run: python -m pytest benchmarks/bench_inbound_path.py --benchmark-only
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from dataplane import _ident
from dataplane._batch import PacketBatch
from dataplane.filter.packet import PacketFilter
from dataplane.filter.source import SourceFilter
from dataplane.ident import classify_datagram, unpad_packet
from dataplane.routing.overlay import InboundRouter, build_inbound_table

N = 128
PEERS = 1000
OURS = "100.64.0.1"
RULES = [
    {"SrcIPs": ["100.64.0.0/10"], "DstPorts": [{"IP": OURS, "Ports": {"First": 1, "Last": 1024}}]},
    {"SrcIPs": ["100.64.3.0/24"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]},
]


def peer_addr(i: int) -> str:
    return str(ipaddress.IPv4Address("100.64.0.0") + 16 + i)


def inner(i: int) -> bytes:
    src = ipaddress.ip_address(peer_addr(i % PEERS)).packed
    dst = ipaddress.ip_address(OURS).packed
    payload = bytes(64 - 28)
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst) + udp


def datagram(i: int) -> bytes:
    plain = inner(i) + bytes(-64 % 16)  # padded like a sender would
    return struct.pack("<BxxxIQ", 4, 1, i) + plain + bytes(16)  # header, "ciphertext", tag


@pytest.fixture(scope="module")
def stages():
    src = SourceFilter({i: [f"{peer_addr(i)}/32"] for i in range(PEERS)})
    pf = PacketFilter(RULES)
    router = InboundRouter(build_inbound_table({f"{OURS}/32": 0}))
    return src, pf, router


def fresh_batch() -> PacketBatch:
    return PacketBatch.from_packets([datagram(i) for i in range(N)])


def test_inbound_path_batch(benchmark, stages):
    benchmark.group = "inbound-path-64"
    benchmark.extra_info["packets"] = N
    src, pf, router = stages
    wire = [datagram(i) for i in range(N)]
    batch = PacketBatch(N)
    peers = [i % PEERS for i in range(N)]
    out = bytearray(4 * N)

    def setup():
        batch.clear()
        batch.extend(wire)
        return (), {}

    def _run_stages(b: PacketBatch) -> int:
        _ident.unpad(b)
        src.apply(b)
        pf.check_inbound(b, 1.0)
        _, routed = router.route(b, memoryview(out).cast("i"))
        return routed

    # Timed: unpad, source filter, packet filter, route. Classification is timed on its own
    # below (it must run before the decryption stand-in, which is per-packet Python and so
    # runs in setup); the path's cost is the sum of the two.
    def setup_decrypted():
        setup()
        _ident.classify(batch)
        for i in range(N):
            batch.set_bounds(i, batch.offset(i) + 16, len(batch[i]) - 32)
        pv = batch.peer_ids
        for i in range(N):
            pv[i] = peers[i]
        return (batch,), {}

    routed = benchmark.pedantic(_run_stages, setup=setup_decrypted, rounds=2000, warmup_rounds=20)
    assert routed == N


def test_classify_batch(benchmark):
    benchmark.group = "inbound-path-64"
    wire = [datagram(i) for i in range(N)]
    batch = PacketBatch(N)

    def setup():
        batch.clear()
        batch.extend(wire)
        return (batch,), {}

    kinds = benchmark.pedantic(_ident.classify, setup=setup, rounds=2000, warmup_rounds=20)
    assert bytes(kinds) == bytes([4]) * N


def test_inbound_path_python_per_packet(benchmark, stages):
    benchmark.group = "inbound-path-64"
    wire = [datagram(i) for i in range(N)]
    owners = {ipaddress.ip_network(f"{peer_addr(i)}/32"): i for i in range(PEERS)}
    ours = ipaddress.ip_address(OURS)
    allowed_src = ipaddress.ip_network("100.64.0.0/10")

    def run() -> int:
        routed = 0
        for i, d in enumerate(wire):
            if classify_datagram(d).kind != 4:
                continue
            plain = d[16:-16]
            status, n = unpad_packet(plain)
            if status:
                continue
            pkt = plain[:n]
            s = ipaddress.ip_address(pkt[12:16])
            owner = next((p for net, p in owners.items() if s in net), None)
            if owner != i % PEERS:
                continue
            dport = struct.unpack_from("!H", pkt, 22)[0]
            if not (s in allowed_src and 1 <= dport <= 1024):
                continue
            if ipaddress.ip_address(pkt[16:20]) == ours:
                routed += 1
        return routed

    assert benchmark.pedantic(run, rounds=3, warmup_rounds=1) == N
