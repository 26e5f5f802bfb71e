"""LPM table: batch lookup vs pytricia (a C patricia trie) per-call lookups, same run.

Datasets (random, seeded): ``v4-100k`` and ``v4-1M`` IPv4 prefixes with a BGP-like length
mix (mostly /24, /16../23, some /8../15 and /25../32), ``v6-100k`` IPv6 prefixes under
2000::/3 (mostly /48, plus /29../64 and /128). Duplicates collapse, so the tables hold
slightly fewer prefixes than the names say. Queries: 64Ki addresses, half inside a
random stored prefix, half uniform random; both implementations must agree on them.

Groups (compare within a group, lookups per call in ``extra_info``):
  build-<ds>:  LpmTable.insert loop | pytricia insert loop (same key objects)
  lookup-<ds>: LpmTable.lookup_batch over PacketBatches of 1024 packets (dst address)
               | LpmTable.lookup_packed over packed addresses | LpmTable.lookup per call
               | pytricia.get per call (its fastest key form: int for IPv4, packed
               bytes for IPv6)
Memory (malloc'd bytes still held after building, and LpmTable's own count of its C
heap) is in ``extra_info`` of the build benchmarks and in the summary.

Run:      python -m pytest benchmarks/bench_lpm.py --benchmark-only
Summary:  python benchmarks/bench_lpm.py      (build time, memory, lookup rates, ratio)
"""

from __future__ import annotations

import array
import ctypes
import functools
import gc
import os
import random
import struct
import sys
import time
from dataclasses import dataclass

import pytest

from dataplane._batch import PacketBatch
from dataplane.routing._lpm import LpmTable

pytricia = pytest.importorskip("pytricia")

DATASETS = {"v4-100k": (4, 100_000), "v4-1M": (4, 1_000_000), "v6-100k": (6, 100_000)}
NQUERY = 1 << 16
BATCH = 1024

# Weighted length mixes (length, weight).
V4_LENS = [
    (8, 1),
    (12, 1),
    (14, 1),
    (16, 3),
    (18, 2),
    (19, 3),
    (20, 5),
    (21, 5),
    (22, 8),
    (23, 9),
    (24, 55),
    (26, 1),
    (28, 2),
    (30, 1),
    (32, 3),
]
V6_LENS = [
    (29, 2),
    (32, 6),
    (36, 3),
    (40, 4),
    (44, 5),
    (48, 50),
    (52, 3),
    (56, 10),
    (60, 2),
    (64, 12),
    (128, 3),
]


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not got back (glibc mallinfo2), else RSS.

    Measuring allocator usage rather than RSS keeps freed-and-reused memory (query and
    key generation) out of the figures; both tables and pytricia's Python value objects
    come from malloc (pymalloc arenas are mmap'd blocks counted in ``hblkhd``).
    """
    try:
        libc = ctypes.CDLL(None)
        f = libc.mallinfo2
        f.restype = _MallInfo2
        mi = f()
        return int(mi.uordblks + mi.hblkhd)
    except (AttributeError, OSError):
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Dataset:
    name: str
    family: int
    lpm_keys: list  # what LpmTable.insert gets
    tri_keys: list  # what pytricia gets: (key, plen) for insert(key, plen, value)
    tri_str: bool  # IPv4 prefixes go to both as "a.b.c.d/n" strings
    query_packed: bytes  # NQUERY packed addresses
    query_tri: list  # the same queries as pytricia keys
    query_lpm: list  # the same queries as LpmTable.lookup keys (packed bytes)
    batches: list  # PacketBatches of BATCH packets with the queries as dst


def _ipv4_packet(dst: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s", 0x45, 0, 20, 0, 0, 64, 17, 0, b"\x01\x01\x01\x01") + dst


def _ipv6_packet(dst: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, 0, 17, 64) + b"\x20\x01" + b"\x00" * 13 + b"\x01" + dst


@functools.cache
def dataset(name: str) -> Dataset:
    family, n = DATASETS[name]
    rng = random.Random(20260825 + n + family)
    bits = 32 if family == 4 else 128
    lens, weights = zip(*(V4_LENS if family == 4 else V6_LENS), strict=True)
    plens = rng.choices(lens, weights, k=n)
    prefixes = []
    for plen in plens:
        a = rng.getrandbits(bits)
        if family == 6:
            a = (a & ((1 << 125) - 1)) | (1 << 125)  # 2000::/3
        prefixes.append((a & (((1 << plen) - 1) << (bits - plen)), plen))
    queries = []
    for i in range(NQUERY):
        if i % 2:
            q = rng.getrandbits(bits)
        else:
            a, plen = prefixes[rng.randrange(n)]
            q = a | (rng.getrandbits(bits - plen) if plen < bits else 0)
        queries.append(q)
    width = bits // 8
    packed_q = [q.to_bytes(width, "big") for q in queries]
    if family == 4:
        strs = [f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{p}" for a, p in prefixes]
        lpm_keys, tri_keys, tri_str = strs, strs, True
        query_tri = queries  # ints: pytricia's fastest form
        pkts = [_ipv4_packet(q) for q in packed_q]
    else:
        lpm_keys = [(a.to_bytes(16, "big"), p) for a, p in prefixes]
        tri_keys, tri_str = lpm_keys, False
        query_tri = packed_q
        pkts = [_ipv6_packet(q) for q in packed_q]
    batches = [
        PacketBatch.from_packets(pkts[i : i + BATCH], capacity=BATCH, mtu=64)
        for i in range(0, NQUERY, BATCH)
    ]
    return Dataset(
        name, family, lpm_keys, tri_keys, tri_str, b"".join(packed_q), query_tri, packed_q, batches
    )


def build_lpm(ds: Dataset) -> LpmTable:
    t = LpmTable()
    ins = t.insert
    for i, k in enumerate(ds.lpm_keys):
        ins(k, i)
    return t


def build_pytricia(ds: Dataset):
    p = pytricia.PyTricia(32 if ds.family == 4 else 128)
    if ds.tri_str:
        for i, k in enumerate(ds.tri_keys):
            p[k] = i
    else:
        ins = p.insert
        for i, (k, plen) in enumerate(ds.tri_keys):
            ins(k, plen, i)
    return p


@dataclass
class Built:
    lpm: LpmTable
    tri: object
    lpm_build_s: float
    tri_build_s: float
    lpm_mem: int
    tri_mem: int


@functools.cache
def built(name: str) -> Built:
    ds = dataset(name)
    gc.collect()
    r0 = _heap_in_use()
    t0 = time.perf_counter()
    lpm = build_lpm(ds)
    t1 = time.perf_counter()
    r1 = _heap_in_use()
    tri = build_pytricia(ds)
    t2 = time.perf_counter()
    r2 = _heap_in_use()
    # Sanity: both answer every query the same way (insert order is the same, so
    # duplicate prefixes keep the same last value in both).
    out = array.array("i", bytes(4 * NQUERY))
    lpm.lookup_packed(ds.query_packed, ds.family, out)
    get = tri.get
    for i in range(0, NQUERY, 7):
        want = get(ds.query_tri[i])
        assert out[i] == (-1 if want is None else want), (name, i)
    return Built(lpm, tri, t1 - t0, t2 - t1, r1 - r0, r2 - r1)


# -- pytest-benchmark ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_build_lpm(benchmark, name):
    benchmark.group = f"build-{name}"
    ds = dataset(name)
    b = built(name)
    benchmark.extra_info.update(
        prefixes=len(b.lpm), c_heap_bytes=b.lpm.memory_bytes(), malloc_growth_bytes=b.lpm_mem
    )
    t = benchmark.pedantic(build_lpm, args=(ds,), rounds=1, iterations=1)
    assert len(t) == len(b.lpm)


@pytest.mark.parametrize("name", list(DATASETS))
def test_build_pytricia(benchmark, name):
    benchmark.group = f"build-{name}"
    ds = dataset(name)
    b = built(name)
    benchmark.extra_info.update(prefixes=len(b.tri), malloc_growth_bytes=b.tri_mem)
    p = benchmark.pedantic(build_pytricia, args=(ds,), rounds=1, iterations=1)
    assert len(p) == len(b.tri)


@pytest.mark.parametrize("name", list(DATASETS))
def test_lookup_lpm_batch(benchmark, name):
    benchmark.group = f"lookup-{name}"
    benchmark.extra_info["lookups_per_call"] = BATCH
    ds, b = dataset(name), built(name)
    out = array.array("i", bytes(4 * BATCH))
    it = iter(range(1 << 62))
    batches = ds.batches
    lookup = b.lpm.lookup_batch

    def one():
        return lookup(batches[next(it) % len(batches)], out)

    benchmark.pedantic(one, rounds=2000, warmup_rounds=64)


@pytest.mark.parametrize("name", list(DATASETS))
def test_lookup_lpm_packed(benchmark, name):
    benchmark.group = f"lookup-{name}"
    benchmark.extra_info["lookups_per_call"] = NQUERY
    ds, b = dataset(name), built(name)
    out = array.array("i", bytes(4 * NQUERY))
    benchmark.pedantic(
        b.lpm.lookup_packed, args=(ds.query_packed, ds.family, out), rounds=30, warmup_rounds=2
    )


@pytest.mark.parametrize("name", list(DATASETS))
def test_lookup_lpm_per_call(benchmark, name):
    benchmark.group = f"lookup-{name}"
    benchmark.extra_info["lookups_per_call"] = NQUERY
    ds, b = dataset(name), built(name)
    lookup = b.lpm.lookup
    keys = ds.query_lpm

    def run():
        for k in keys:
            lookup(k)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("name", list(DATASETS))
def test_lookup_pytricia_per_call(benchmark, name):
    benchmark.group = f"lookup-{name}"
    benchmark.extra_info["lookups_per_call"] = NQUERY
    ds, b = dataset(name), built(name)
    get = b.tri.get
    keys = ds.query_tri

    def run():
        for k in keys:
            get(k)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


# -- summary (python benchmarks/bench_lpm.py) ----------------------------------------------


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rates(name: str) -> dict[str, float]:
    """Million lookups per second of each way to look up the 64Ki queries."""
    ds, b = dataset(name), built(name)
    out = array.array("i", bytes(4 * NQUERY))
    # One writable int32 view per batch (slicing an array would copy it).
    mv = memoryview(out)
    views = [mv[i * BATCH : (i + 1) * BATCH] for i in range(len(ds.batches))]
    lk_batch, lk_packed, lk_one, tri_get = (
        b.lpm.lookup_batch,
        b.lpm.lookup_packed,
        b.lpm.lookup,
        b.tri.get,
    )

    def batch_views():
        for batch, v in zip(ds.batches, views, strict=True):
            lk_batch(batch, v)

    def packed():
        lk_packed(ds.query_packed, ds.family, out)

    def percall():
        for k in ds.query_lpm:
            lk_one(k)

    def tri():
        for k in ds.query_tri:
            tri_get(k)

    return {
        f.__name__: NQUERY / _best(f, r) / 1e6
        for f, r in ((batch_views, 7), (packed, 7), (percall, 3), (tri, 3))
    }


def summary(names: list[str]) -> None:
    print(
        f"{'dataset':9} {'prefixes':>9} | {'build s':>7} {'pytricia':>8} | "
        f"{'heap MB':>7} {'malloc':>6} {'pytricia':>8} | {'batch M/s':>9} {'packed':>7} "
        f"{'percall':>7} {'pytricia':>8} | {'batch/pytricia':>14}"
    )
    for name in names:
        b = built(name)
        rate = rates(name)
        print(
            f"{name:9} {len(b.lpm):>9} | {b.lpm_build_s:7.2f} {b.tri_build_s:8.2f} | "
            f"{b.lpm.memory_bytes() / 1e6:7.1f} {b.lpm_mem / 1e6:6.1f} {b.tri_mem / 1e6:8.1f} | "
            f"{rate['batch_views']:9.2f} {rate['packed']:7.2f} {rate['percall']:7.2f} "
            f"{rate['tri']:8.2f} | {rate['batch_views'] / rate['tri']:13.1f}x"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    summary(sys.argv[1:] or list(DATASETS))
