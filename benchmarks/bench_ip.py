"""IP/UDP header kernels and overlay sockets, each against a baseline in the same run.

Groups (compare within a group; N = 128 packets per round):
  ip-push-64 / ip-push-1400: ``push_udp_each`` (UDP + IPv4 headers and checksums) over a
                  batch of N payloads | ``ip_model.udp`` per payload (baseline)
  ip-parse-64 / ip-parse-1400: ``parse_udp`` + ``datagrams()`` (what the demultiplexer
                  runs: validation, checksums, payload bytes + source per datagram)
                  | ``ip_model.parse_udp`` per packet (baseline)
  sockets-64:     N ``sendto`` then N ``recvfrom`` of 64-byte datagrams between two overlay
                  sockets through a ThreadedDataPlane with a loopback core | the same with
                  two kernel UDP sockets on 127.0.0.1 (baseline: what an application
                  would otherwise use in-process)
  sockets-wg-64:  the same between two real DataPlane cores (WireGuard seal/open, routing,
                  source filter) joined by a MemoryWire | kernel UDP sockets (baseline)

packets/s = N / mean (and / median) round time, stored in each result's ``extra_info``.

Run: python -m pytest benchmarks/bench_ip.py --benchmark-only
"""

from __future__ import annotations

import os
import socket

import pytest

from dataplane._batch import PacketBatch
from dataplane.driver import ThreadedDataPlane
from dataplane.netstack import OverlayNetwork, _ip
from dataplane.results import Output
from dataplane.transport import ip_model as model

N = 128
SRC, DST = "100.64.0.1", "100.64.0.2"
HEADROOM = 16 + _ip.IPV6_HEADER


def record(benchmark) -> None:
    benchmark.extra_info["packets"] = N
    if benchmark.stats is not None:
        stats = benchmark.stats.stats
        benchmark.extra_info["packets_per_s"] = round(N / stats.mean)
        # The machine is shared: the median is the steadier figure.
        benchmark.extra_info["packets_per_s_median"] = round(N / stats.median)


@pytest.mark.parametrize("size", [64, 1400 - 28])
def test_push_dataplane(benchmark, size):
    benchmark.group = f"ip-push-{size}"
    payloads = [os.urandom(size) for _ in range(N)]
    batch = PacketBatch.from_packets(payloads, headroom=HEADROOM)
    addrs = (_ip.pack_address(SRC) + _ip.pack_address(DST)) * N
    ports = memoryview(bytearray(4 * N)).cast("H")
    for i in range(N):
        ports[2 * i], ports[2 * i + 1] = 40000 + i, 53

    def setup():
        for i in range(N):
            batch.set_bounds(i, HEADROOM, size)
        return (batch, addrs, ports), {}

    benchmark.pedantic(_ip.push_udp_each, setup=setup, rounds=2000, warmup_rounds=20)
    assert bytes(batch[5]) == model.udp(SRC, DST, 40005, 53, payloads[5])
    record(benchmark)


@pytest.mark.parametrize("size", [64, 1400 - 28])
def test_push_model(benchmark, size):
    benchmark.group = f"ip-push-{size}"
    payloads = [os.urandom(size) for _ in range(N)]
    out = benchmark(lambda: [model.udp(SRC, DST, 40000 + i, 53, p) for i, p in enumerate(payloads)])
    assert len(out) == N
    record(benchmark)


@pytest.mark.parametrize("size", [64, 1400 - 28])
def test_parse_dataplane(benchmark, size):
    benchmark.group = f"ip-parse-{size}"
    pkts = [model.udp(SRC, DST, 40000 + i, 53, os.urandom(size)) for i in range(N)]
    batch = PacketBatch.from_packets(pkts)
    result = _ip.UdpParse(N)

    def step():
        return _ip.parse_udp(batch, result).datagrams()

    got = benchmark(step)
    assert len(got) == N and got[3][2] == pkts[3][28:]
    record(benchmark)


@pytest.mark.parametrize("size", [64, 1400 - 28])
def test_parse_model(benchmark, size):
    benchmark.group = f"ip-parse-{size}"
    pkts = [model.udp(SRC, DST, 40000 + i, 53, os.urandom(size)) for i in range(N)]
    got = benchmark(lambda: [model.parse_udp(p) for p in pkts])
    assert all(r.verdict == "ok" for r in got)
    record(benchmark)


class LoopbackCore:
    def next_event(self):
        return None

    def process_outbound(self, now, overlay_id, batch):
        out = Output()
        out.deliver(overlay_id, batch)
        return out

    def process_inbound(self, now, underlay_id, batch):
        return Output()

    def process_events(self, now):
        return Output()


def test_sockets_overlay(benchmark):
    benchmark.group = "sockets-64"
    driver = ThreadedDataPlane(LoopbackCore(), max_idle_sleep=0.5).start()
    net = OverlayNetwork(driver, [SRC])
    rx, tx = net.udp_socket(9000, recv_queue=4 * N), net.udp_socket()
    data = os.urandom(64)
    dest = (SRC, 9000)

    def step():
        for _ in range(N):
            tx.sendto(data, dest)
        for _ in range(N):
            rx.recvfrom(timeout=5)

    try:
        benchmark(step)
        assert not net.drops, net.drops
        benchmark.extra_info["driver_batches_per_round"] = round(
            driver.stats.outbound_batches / max(1, net.counters["tx_packets"] // N)
        )
    finally:
        net.close()
        driver.close()
    record(benchmark)


def test_sockets_wireguard(benchmark):
    from dataplane.core import DataPlane
    from dataplane.transport.memory import MemoryWire
    from dataplane.wireguard.keys import PrivateKey

    benchmark.group = "sockets-wg-64"
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    a = ThreadedDataPlane(DataPlane(ka), max_idle_sleep=0.5, name="a").start()
    b = ThreadedDataPlane(DataPlane(kb), max_idle_sleep=0.5, name="b").start()
    ep_a, ep_b = ("192.0.2.1", 51820), ("192.0.2.2", 51820)
    wire = MemoryWire(a, b, ep_a, ep_b)
    net_a, net_b = OverlayNetwork(a, [SRC]), OverlayNetwork(b, [DST])
    with a.locked() as core:
        core.add_peer(kb.public_key, allowed_ips=[f"{DST}/32"], endpoint=ep_b, underlay=wire.id_a)
        core.set_addresses([SRC], overlay=net_a.id)
    with b.locked() as core:
        core.add_peer(ka.public_key, allowed_ips=[f"{SRC}/32"], endpoint=ep_a, underlay=wire.id_b)
        core.set_addresses([DST], overlay=net_b.id)
    rx, tx = net_b.udp_socket(9000, recv_queue=4 * N), net_a.udp_socket()
    data = os.urandom(64)
    dest = (DST, 9000)
    tx.sendto(b"handshake", dest)
    rx.recvfrom(timeout=5)

    def step():
        for _ in range(N):
            tx.sendto(data, dest)
        for _ in range(N):
            rx.recvfrom(timeout=5)

    try:
        benchmark(step)
        assert not net_a.drops and not net_b.drops
    finally:
        for closeable in (net_a, net_b, wire, a, b):
            closeable.close()
    record(benchmark)


@pytest.mark.parametrize("group", ["sockets-64", "sockets-wg-64"])
def test_sockets_kernel(benchmark, group):
    benchmark.group = group
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.settimeout(5)
    dest = rx.getsockname()
    data = os.urandom(64)

    def step():
        for _ in range(N):
            tx.sendto(data, dest)
        for _ in range(N):
            rx.recvfrom(2048)

    try:
        benchmark(step)
    finally:
        rx.close()
        tx.close()
    record(benchmark)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "--benchmark-only", "-q"]))
