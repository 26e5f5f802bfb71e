"""End to end: two ThreadedDataPlanes in one process over the in-memory wire.

Groups (compare within a group):
  e2e-<size>:  50 batches of 128 IP packets from A's overlay to B's overlay (route, seal,
               driver queues, wire thread, classify, open, unpad, source filter, route,
               deliver) | the raw EVP seal+open loop over the same bytes (no data plane)
  wakeup:      one packet through two idle drivers, overlay to overlay | one item through a
               plain queue.Queue between two threads (the cost of waking a thread at all)

Run: python -m pytest benchmarks/bench_e2e.py --benchmark-only
"""

from __future__ import annotations

import ipaddress
import queue
import struct
import threading
import time

import pytest

from dataplane._batch import PacketBatch
from dataplane._crypto import _raw_evp_loop
from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.transport.memory import MemoryOverlay, MemoryWire
from dataplane.wireguard.keys import PrivateKey

A, B = "10.2.0.1", "10.2.0.2"
N = 128
BATCHES = 50
KEY = bytes(range(32))


def udp_packet(size: int) -> bytes:
    payload = bytes(size - 28)
    s, d = ipaddress.ip_address(A).packed, ipaddress.ip_address(B).packed
    udp = struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s, d) + udp


class Pair:
    def __init__(self) -> None:
        ka, kb = PrivateKey.generate(), PrivateKey.generate()
        self.a = ThreadedDataPlane(DataPlane(ka), queue_depth=4096, name="bench-a")
        self.b = ThreadedDataPlane(DataPlane(kb), queue_depth=4096, name="bench-b")
        self.wire = MemoryWire(self.a, self.b)
        self.oa = MemoryOverlay(self.a)
        self.ob = MemoryOverlay(self.b)
        with self.a.locked() as core:
            core.set_addresses([A], overlay=self.oa.id)
            core.add_peer(
                kb.public_key,
                allowed_ips=[f"{B}/32"],
                endpoint=self.wire.endpoint_b,
                underlay=self.wire.id_a,
            )
        with self.b.locked() as core:
            core.set_addresses([B], overlay=self.ob.id)
            core.add_peer(
                ka.public_key,
                allowed_ips=[f"{A}/32"],
                endpoint=self.wire.endpoint_a,
                underlay=self.wire.id_b,
            )
        self.a.start()
        self.b.start()
        self.transfer([udp_packet(100)])  # handshake out of the way

    def transfer(self, packets: list[bytes], batches: int = 1) -> int:
        want = len(packets) * batches
        for _ in range(batches):
            assert self.oa.send(PacketBatch.from_packets(packets))
        got = 0
        deadline = time.monotonic() + 30
        while got < want and time.monotonic() < deadline:
            batch = self.ob.receive(timeout=1)
            if batch is not None:
                got += len(batch.alive())
        return got

    def close(self) -> None:
        self.wire.close()
        self.a.close()
        self.b.close()


@pytest.fixture(scope="module")
def pair():
    p = Pair()
    yield p
    p.close()


@pytest.mark.parametrize("size", [1420, 64])
def test_e2e_dataplane(benchmark, pair, size):
    benchmark.group = f"e2e-{size}"
    benchmark.extra_info["packets"] = N * BATCHES
    benchmark.extra_info["bytes"] = N * BATCHES * size
    packets = [udp_packet(size)] * N
    got = benchmark.pedantic(pair.transfer, args=(packets, BATCHES), rounds=8, warmup_rounds=1)
    assert got == N * BATCHES


@pytest.mark.parametrize("size", [1420, 64])
def test_e2e_raw_seal_open_loop(benchmark, size):
    benchmark.group = f"e2e-{size}"
    benchmark.extra_info["packets"] = N * BATCHES
    benchmark.extra_info["bytes"] = N * BATCHES * size
    buf = bytearray(N * size)
    tags = bytearray(N * 16)

    def run() -> int:
        ok = 0
        for _ in range(BATCHES):
            _raw_evp_loop(KEY, buf, N, size, True, tags)
            ok += _raw_evp_loop(KEY, buf, N, size, False, tags)
        return ok

    assert benchmark.pedantic(run, rounds=8, warmup_rounds=1) == N * BATCHES


def test_wakeup_dataplane(benchmark, pair):
    benchmark.group = "wakeup"
    packet = [udp_packet(100)]

    def one() -> int:
        time.sleep(0.002)  # let both drivers go idle (in SELECT) first; not measured below
        t0 = time.perf_counter()
        got = pair.transfer(packet)
        one.samples.append(time.perf_counter() - t0)
        return got

    one.samples = []  # type: ignore[attr-defined]
    benchmark.pedantic(one, rounds=300, warmup_rounds=5)
    s = sorted(one.samples)  # type: ignore[attr-defined]
    benchmark.extra_info["p50_us"] = round(s[len(s) // 2] * 1e6, 1)
    benchmark.extra_info["p99_us"] = round(s[int(len(s) * 0.99)] * 1e6, 1)


def test_wakeup_plain_queue(benchmark):
    benchmark.group = "wakeup"
    inq: queue.Queue = queue.Queue()
    outq: queue.Queue = queue.Queue()

    def relay() -> None:
        while (item := inq.get()) is not None:
            outq.put(item)

    t = threading.Thread(target=relay, name="bench-relay")
    t.start()
    samples = []

    def one() -> None:
        time.sleep(0.002)
        t0 = time.perf_counter()
        inq.put(b"x")
        outq.get()
        samples.append(time.perf_counter() - t0)

    try:
        benchmark.pedantic(one, rounds=300, warmup_rounds=5)
    finally:
        inq.put(None)
        t.join()
    samples.sort()
    benchmark.extra_info["p50_us"] = round(samples[len(samples) // 2] * 1e6, 1)
    benchmark.extra_info["p99_us"] = round(samples[int(len(samples) * 0.99)] * 1e6, 1)
