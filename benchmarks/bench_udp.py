"""UDP underlay: batched recvmmsg/sendmmsg vs one socket call per datagram (loopback).

Groups: udp-recv-<size> and udp-send-<size>, each with the dataplane batch path and the
per-packet ``socket.recvfrom`` / ``socket.sendto`` baseline, 128 datagrams per round.

Run: python -m pytest benchmarks/bench_udp.py --benchmark-only
"""

from __future__ import annotations

import socket

import pytest

from dataplane._batch import PacketBatch
from dataplane.transport.udp import UdpSocket

N = 128
SIZES = [64, 1420]


@pytest.fixture
def pair():
    a = UdpSocket(("127.0.0.1", 0))
    b = UdpSocket(("127.0.0.1", 0))
    yield a, b
    a.close()
    b.close()


def drain(sock: UdpSocket) -> None:
    batch = PacketBatch(N)
    while True:
        batch.clear()
        if not len(sock.recv_batch(batch, timeout=0)):
            return


@pytest.mark.parametrize("size", SIZES)
def test_recv_batched(benchmark, pair, size):
    benchmark.group = f"udp-recv-{size}"
    a, b = pair
    payload = PacketBatch.from_packets([bytes(size)] * N)
    batch = PacketBatch(N)

    def setup():
        a.send_batch(payload, b.address)
        batch.clear()
        return (), {}

    def run():
        while len(batch) < N:
            b.recv_batch(batch, timeout=1)
        return len(batch)

    assert benchmark.pedantic(run, setup=setup, rounds=300, warmup_rounds=5) == N


@pytest.mark.parametrize("size", SIZES)
def test_recv_per_packet(benchmark, pair, size):
    benchmark.group = f"udp-recv-{size}"
    a, b = pair
    payload = PacketBatch.from_packets([bytes(size)] * N)
    raw = b.sock
    raw.settimeout(1)

    def setup():
        a.send_batch(payload, b.address)
        return (), {}

    def run():
        return [raw.recvfrom(2048) for _ in range(N)]

    assert len(benchmark.pedantic(run, setup=setup, rounds=300, warmup_rounds=5)) == N


@pytest.mark.parametrize("size", SIZES)
def test_send_batched(benchmark, pair, size):
    benchmark.group = f"udp-send-{size}"
    a, b = pair
    payload = PacketBatch.from_packets([bytes(size)] * N)

    def setup():
        drain(b)
        return (payload, b.address), {}

    assert benchmark.pedantic(a.send_batch, setup=setup, rounds=300, warmup_rounds=5) == N


@pytest.mark.parametrize("size", SIZES)
def test_send_per_packet(benchmark, pair, size):
    benchmark.group = f"udp-send-{size}"
    a, b = pair
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    data = bytes(size)
    dst = b.address

    def setup():
        drain(b)
        return (), {}

    def run():
        for _ in range(N):
            raw.sendto(data, dst)
        return N

    try:
        assert benchmark.pedantic(run, setup=setup, rounds=300, warmup_rounds=5) == N
    finally:
        raw.close()
