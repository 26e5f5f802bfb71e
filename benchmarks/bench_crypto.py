"""Seal/open throughput of the batch transform against its baselines, in the same run.

Groups (compare within a group):
  seal-<size>: dataplane ``SendKey.seal`` | raw EVP loop (no data-plane work) |
               per-packet Python loop over ``cryptography``'s ChaCha20Poly1305
  open-<size>: the same for ``ReceiveKey.open`` (replay window + status + in place)
  threads-1420: one thread vs two threads sealing and opening distinct batches with
                distinct keys

Run: python -m pytest benchmarks/bench_crypto.py --benchmark-only
"""

from __future__ import annotations

import os
import struct
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dataplane._batch import PacketBatch
from dataplane._crypto import ReceiveKey, ReplayWindow, SendKey, _raw_evp_loop

N = 128
SIZES = [1420, 64]
KEY = bytes(range(32))


def fresh_batch(size: int) -> PacketBatch:
    return PacketBatch.from_packets([bytes(size)] * N, capacity=N)


def refill(batch: PacketBatch, size: int) -> None:
    batch.clear()
    batch.extend([bytes(size)] * N)


@pytest.mark.parametrize("size", SIZES)
def test_seal_dataplane(benchmark, size):
    benchmark.group = f"seal-{size}"
    benchmark.extra_info["bytes"] = N * size
    key = SendKey(KEY)
    batch = fresh_batch(size)

    def setup():
        refill(batch, size)
        return (batch, 1, 0), {}

    assert benchmark.pedantic(key.seal, setup=setup, rounds=300, warmup_rounds=10) == N


@pytest.mark.parametrize("size", SIZES)
def test_seal_raw_evp_loop(benchmark, size):
    benchmark.group = f"seal-{size}"
    benchmark.extra_info["bytes"] = N * size
    buf = bytearray(N * size)
    tags = bytearray(N * 16)

    def setup():
        return (KEY, buf, N, size, True, tags), {}

    assert benchmark.pedantic(_raw_evp_loop, setup=setup, rounds=300, warmup_rounds=10) == N


@pytest.mark.parametrize("size", SIZES)
def test_seal_cryptography_per_packet(benchmark, size):
    benchmark.group = f"seal-{size}"
    benchmark.extra_info["bytes"] = N * size
    aead = ChaCha20Poly1305(KEY)
    pkts = [bytes(size)] * N
    nonces = [b"\x00" * 4 + struct.pack("<Q", i) for i in range(N)]

    def run():
        return [aead.encrypt(nonces[i], pkts[i], None) for i in range(N)]

    assert len(benchmark(run)) == N


def sealed_wire(size: int) -> list[bytes]:
    b = fresh_batch(size)
    SendKey(KEY).seal(b, 1, 0)
    return b.packets()


@pytest.mark.parametrize("size", SIZES)
def test_open_dataplane(benchmark, size):
    benchmark.group = f"open-{size}"
    benchmark.extra_info["bytes"] = N * size
    wire = sealed_wire(size)
    key = ReceiveKey(KEY)
    batch = PacketBatch(capacity=N)

    def setup():
        batch.clear()
        batch.extend(wire)
        return (batch, ReplayWindow(), 1), {}

    result = benchmark.pedantic(key.open, setup=setup, rounds=300, warmup_rounds=10)
    assert result == N


@pytest.mark.parametrize("size", SIZES)
def test_open_raw_evp_loop(benchmark, size):
    benchmark.group = f"open-{size}"
    benchmark.extra_info["bytes"] = N * size
    plain = bytes(N * size)
    buf = bytearray(plain)
    tags = bytearray(N * 16)
    _raw_evp_loop(KEY, buf, N, size, True, tags)
    sealed = bytes(buf)

    def setup():
        buf[:] = sealed
        return (KEY, buf, N, size, False, tags), {}

    result = benchmark.pedantic(_raw_evp_loop, setup=setup, rounds=300, warmup_rounds=10)
    assert result == N


@pytest.mark.parametrize("size", SIZES)
def test_open_cryptography_per_packet(benchmark, size):
    benchmark.group = f"open-{size}"
    benchmark.extra_info["bytes"] = N * size
    aead = ChaCha20Poly1305(KEY)
    wire = sealed_wire(size)

    def run():
        return [aead.decrypt(b"\x00" * 4 + w[8:16], w[16:], None) for w in wire]

    assert len(benchmark(run)) == N


ROUNDS_PER_THREAD = 400


def seal_rounds(key_bytes: bytes) -> None:
    # Seal and open the same batch in turn: open() restores the plaintext bounds, so each
    # round is two GIL-free calls with no Python work per packet in between.
    send, receive = SendKey(key_bytes), ReceiveKey(key_bytes)
    window = ReplayWindow()
    batch = fresh_batch(1420)
    for r in range(ROUNDS_PER_THREAD):
        send.seal(batch, 1, r * N)
        assert receive.open(batch, window, 1) == N


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_seal(benchmark, threads):
    """Same work per thread (seal + open of 400 batches); with perfect scaling on two cores,
    2 threads take as long as 1."""
    benchmark.group = "threads-1420"
    benchmark.extra_info["bytes"] = 2 * threads * ROUNDS_PER_THREAD * N * 1420
    keys = [os.urandom(32) for _ in range(threads)]

    def run():
        ts = [
            threading.Thread(target=seal_rounds, args=(k,), name=f"bench-seal-{i}")
            for i, k in enumerate(keys)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    benchmark.pedantic(run, rounds=15, warmup_rounds=2)
