"""UDP underlay: batched recvmmsg/sendmmsg vs one socket call per datagram (loopback).

Groups: udp-recv-<size> and udp-send-<size>, each with the dataplane batch path and the
per-packet ``socket.recvfrom`` / ``socket.sendto`` baseline, 128 datagrams per round. The
sender uses GSO, so a GRO-enabled receiver gets the round coalesced; ``recv_batched_nogro``
is the batched receive without GRO, and the per-packet baseline reads a plain socket
(which the kernel hands datagrams one by one).

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


def _recv_batched(benchmark, a: UdpSocket, b: UdpSocket, size: int) -> None:
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
def test_recv_batched(benchmark, pair, size):
    benchmark.group = f"udp-recv-{size}"
    a, b = pair
    assert b.io.gro
    _recv_batched(benchmark, a, b, size)


@pytest.mark.parametrize("size", SIZES)
def test_recv_batched_nogro(benchmark, pair, size):
    benchmark.group = f"udp-recv-{size}"
    a, _ = pair
    b = UdpSocket(("127.0.0.1", 0), gro=False)
    try:
        _recv_batched(benchmark, a, b, size)
    finally:
        b.close()


@pytest.mark.parametrize("size", SIZES)
def test_recv_per_packet(benchmark, pair, size):
    benchmark.group = f"udp-recv-{size}"
    a, _ = pair
    payload = PacketBatch.from_packets([bytes(size)] * N)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    raw.bind(("127.0.0.1", 0))
    raw.settimeout(1)
    dst = raw.getsockname()

    def setup():
        a.send_batch(payload, dst)
        return (), {}

    def run():
        return [raw.recvfrom(2048) for _ in range(N)]

    try:
        assert len(benchmark.pedantic(run, setup=setup, rounds=300, warmup_rounds=5)) == N
    finally:
        raw.close()


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
