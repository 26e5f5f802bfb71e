"""Classification + padding removal throughput against the pure-Python model, in one run.

Groups (compare within a group; each round handles one batch of N = 128 packets):
  ident-64:        ``classify`` of 128 naked 64-byte WireGuard data datagrams + ``unpad``
                   of 128 64-byte decrypted IPv4 plaintexts (49-byte packet + zero padding)
                   | the same through ``classify_datagram`` / ``unpad_packet`` (baseline)
  classify-mix-64: ``classify`` of a mixed batch (data, handshakes, disco, STUN, 16 Geneve)
                   (72-byte Geneve), offsets restored between rounds | the model (baseline)

packets/s = N / mean (and / median) round time, stored in each result's ``extra_info``.

Run: python -m pytest benchmarks/bench_ident.py --benchmark-only
"""

from __future__ import annotations

import os
import struct

import pytest

from dataplane._batch import PacketBatch
from dataplane.ident import (
    DISCO_MAGIC,
    GENEVE_PROTO_WIREGUARD,
    Kind,
    classify,
    classify_datagram,
    unpad,
    unpad_packet,
)

N = 128


def wg_data(size: int = 64) -> bytes:
    return b"\x04\0\0\0" + os.urandom(size - 4)


def plaintext_v4(size: int = 64, ip_len: int = 49) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        ip_len,
        1,
        0,
        64,
        17,
        0,
        bytes([100, 64, 0, 1]),
        bytes([100, 64, 0, 2]),
    )
    return hdr + os.urandom(ip_len - 20) + bytes(size - ip_len)


def mixed() -> list[bytes]:
    geneve = b"\x00\x00" + GENEVE_PROTO_WIREGUARD.to_bytes(2, "big") + b"\x00\x00\x07\x00"
    kinds = [
        b"\x01\0\0\0" + os.urandom(144),
        b"\x02\0\0\0" + os.urandom(88),
        DISCO_MAGIC + os.urandom(58),
        struct.pack("!HHI", 0x0101, 12, 0x2112A442) + os.urandom(24),
        os.urandom(64),
    ]
    out = [wg_data() for _ in range(N - 16 - len(kinds))]
    out += [geneve + wg_data() for _ in range(16)] + kinds
    return out


def record(benchmark) -> None:
    benchmark.extra_info["packets"] = N
    if benchmark.stats is not None:
        stats = benchmark.stats.stats
        benchmark.extra_info["packets_per_s"] = round(N / stats.mean)
        # The machine is shared: the median is the steadier figure.
        benchmark.extra_info["packets_per_s_median"] = round(N / stats.median)


def test_ident_dataplane(benchmark):
    benchmark.group = "ident-64"
    datagrams = PacketBatch.from_packets([wg_data() for _ in range(N)])
    plaintexts = PacketBatch.from_packets([plaintext_v4() for _ in range(N)])
    kinds = bytearray(N)

    # Idempotent on these inputs (naked datagrams stay put, trimmed plaintexts stay
    # trimmed), so rounds need no reset and run back to back.
    def step():
        classify(datagrams, kinds)
        return unpad(plaintexts)

    assert benchmark(step) == N
    assert set(kinds) == {Kind.WG_DATA}
    assert set(plaintexts.length_array) == {49}
    record(benchmark)


def test_ident_model(benchmark):
    benchmark.group = "ident-64"
    datagrams = [wg_data() for _ in range(N)]
    plaintexts = [plaintext_v4() for _ in range(N)]

    def step():
        kinds = [classify_datagram(d).kind for d in datagrams]
        lengths = [unpad_packet(p)[1] for p in plaintexts]
        return kinds, lengths

    kinds, lengths = benchmark(step)
    assert set(kinds) == {Kind.WG_DATA} and set(lengths) == {49}
    record(benchmark)


def test_classify_mix_dataplane(benchmark):
    benchmark.group = "classify-mix-64"
    packets = mixed()
    batch = PacketBatch.from_packets(packets)
    kinds = bytearray(N)
    headroom = batch.headroom

    def setup():
        for i in range(N - 21, N - 5):
            batch.set_bounds(i, headroom, len(packets[i]))
        return (batch, kinds), {}

    benchmark.pedantic(classify, setup=setup, rounds=2000, warmup_rounds=20)
    assert list(batch.statuses).count(0) == N - 1
    assert kinds.count(Kind.WG_DATA | 0x80) == 16
    record(benchmark)


def test_classify_mix_model(benchmark):
    benchmark.group = "classify-mix-64"
    packets = mixed()
    verdicts = benchmark(lambda: [classify_datagram(d) for d in packets])
    assert sum(v.status == 0 for v in verdicts) == N - 1
    record(benchmark)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "--benchmark-only", "-q"]))
