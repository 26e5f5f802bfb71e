"""TUN overlay: batched GIL-free writes and burst reads vs one os.write/os.read per packet.

Group ``tun-echo-<size>``: 64 ICMP echo requests written into a TUN in a namespace of
its own, and the kernel's 64 echo replies read back; the dataplane path
(``TunDevice.write_batch`` / ``read_batch``) against the per-packet baseline (``os.write`` of
each packet, then ``select`` + ``os.read`` of each reply) on the same device. Both include
the kernel's ICMP work, which is the same for both. Needs root (skipped otherwise).

Run: python -m pytest benchmarks/bench_tun.py --benchmark-only
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import subprocess

import pytest

from dataplane._batch import PacketBatch
from dataplane.transport.ip_model import checksum
from dataplane.transport.tun import TunDevice

N = 64
SIZES = [64, 1400]
NS = f"dpbtun{os.getpid() % 100000}"
CLONE_NEWNET = 0x40000000


def echo_request(seq: int, size: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, seq) + b"x" * (size - 28)
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0,
        bytes([10, 96, 0, 2]), bytes([10, 96, 0, 1]),
    )  # fmt: skip
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + icmp


@contextlib.contextmanager
def inside(ns: str):
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        try:
            yield
        finally:
            libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


@pytest.fixture(scope="module")
def tun():
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        with inside(NS):
            dev = TunDevice("dpbench0", mtu=1420)
            dev.add_addresses(["10.96.0.1/24"])
            dev.set_up()
        yield dev
        dev.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def drain(dev: TunDevice) -> None:
    while len(dev.read_batch(timeout=0)):
        pass


def batched_round(dev: TunDevice, batch: PacketBatch) -> int:
    dev.write_batch(batch)
    got = 0
    for _ in range(1000):
        got += len(dev.read_batch(PacketBatch(N, mtu=1420), timeout=1.0))
        if got >= N:
            break
    return got


def plain_round(fd: int, packets: list[bytes], vnet_hdr: bool) -> int:
    # With IFF_VNET_HDR (the device's default: TUN offloads) every write and read carries a
    # 10-byte virtio_net_hdr; all zeros means "a plain packet".
    head = bytes(10) if vnet_hdr else b""
    for p in packets:
        os.write(fd, head + p)
    got = 0
    for _ in range(1000):
        if not select.select([fd], [], [], 1.0)[0]:
            break
        while got < N:
            try:
                os.read(fd, 65536 + 10)
            except BlockingIOError:
                break
            got += 1
        if got >= N:
            break
    return got


@pytest.mark.parametrize("size", SIZES)
def test_echo_batched(benchmark, tun, size):
    benchmark.group = f"tun-echo-{size}"
    batch = PacketBatch.from_packets([echo_request(i, size) for i in range(N)], mtu=1420)
    drain(tun)
    assert benchmark(batched_round, tun, batch) >= N


@pytest.mark.parametrize("size", SIZES)
def test_echo_per_packet_baseline(benchmark, tun, size):
    benchmark.group = f"tun-echo-{size}"
    packets = [echo_request(i, size) for i in range(N)]
    drain(tun)
    assert benchmark(plain_round, tun.fd, packets, tun.io.vnet_hdr) >= N
