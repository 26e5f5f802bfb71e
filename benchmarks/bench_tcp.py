"""TCP over the in-process overlay between two processes, against kernel TCP on loopback.

The benchmark process runs one node (DataPlane + ThreadedDataPlane + UdpTransport on
127.0.0.1 + OverlayNetwork 10.77.0.1); ``tcp_node.py overlay`` runs the other in a second
process, one WireGuard session between them over loopback UDP. The baseline, measured in the
same run, is the same client code on kernel sockets against ``tcp_node.py kernel`` (plain
TCP on 127.0.0.1, no WireGuard, no encryption: what the machine's own stack does).

Groups (the ratio to the kernel figure is the number to watch; this VM's absolute figures
move ±30 % from day to day):

* ``tcp-stream``: one connection, STREAM bytes client → server, timed from the first
  ``sendall`` to the server's byte count coming back. Cases: ``overlay`` (TcpSocket),
  ``overlay-fd`` (the same through a real descriptor, ``TcpSocket.socket()``), ``kernel``.
* ``tcp-rr``: RR_COUNT request/response transactions of 1 KiB on one connection.
* ``tcp-setup``: SETUP_COUNT connections opened and closed one after the other.
* ``tcp-idle``: IDLE_COUNT idle connections opened at once; ``extra_info`` has the growth
  of this process's RSS per connection (our side holds them all) once they are up.

Run: python -m pytest benchmarks/bench_tcp.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane import DataPlane, PrivateKey, ThreadedDataPlane
from dataplane.netstack import OverlayNetwork
from dataplane.transport.udp import UdpTransport

HERE = Path(__file__).resolve().parent
NODE = HERE / "tcp_node.py"
CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
STREAM = 200 << 20
RR_COUNT = 2000
SETUP_COUNT = 200
IDLE_COUNT = 1000
MSG = 1024


class Server:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.close()
            raise RuntimeError(f"tcp_node.py {' '.join(args)} did not start")
        self.info = json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Overlay:
    """Our node in this process, peered with a tcp_node.py overlay server."""

    def __init__(self) -> None:
        key, server_key = PrivateKey.generate(), PrivateKey.generate()
        self.driver = ThreadedDataPlane(DataPlane(key), name="bench").start()
        self.udp = UdpTransport(self.driver, ("127.0.0.1", 0))
        self.net = OverlayNetwork(self.driver, [CLIENT], name="bench")
        port = self.udp.socket.sock.getsockname()[1]
        self.server = Server(
            "overlay",
            "--key",
            server_key.to_base64(),
            "--peer-key",
            key.public_key.to_base64(),
            "--peer-port",
            str(port),
        )
        with self.driver.locked() as core:
            core.set_addresses([CLIENT], overlay=self.net.id)
            core.add_peer(
                server_key.public_key,
                allowed_ips=[SERVER + "/32"],
                endpoint=("127.0.0.1", self.server.info["udp"]),
                underlay=self.udp.id,
            )
        self.address = (SERVER, self.server.info["port"])

    def connect(self, fd: bool = False) -> socket.socket:
        return self.net.create_connection(self.address, timeout=30, fd=fd)

    def close(self) -> None:
        self.server.close()
        self.net.close()
        self.udp.close()
        self.driver.close()


class Kernel:
    def __init__(self) -> None:
        self.server = Server("kernel")
        self.address = ("127.0.0.1", self.server.info["port"])

    def connect(self, fd: bool = False) -> socket.socket:
        return socket.create_connection(self.address, timeout=30)

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def sides():
    overlay, kernel = Overlay(), Kernel()
    try:
        # The first connection also does the WireGuard handshake: not part of any round.
        s = overlay.connect()
        s.sendall(b"C")
        s.close()
        yield {"overlay": overlay, "overlay-fd": overlay, "kernel": kernel}
    finally:
        overlay.close()
        kernel.close()


def _stream(side, fd: bool) -> float:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    s = side.connect(fd)
    t0 = time.perf_counter()
    s.sendall(b"S")
    sent = 0
    while sent < STREAM:
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    reply = s.recv(64)
    dt = time.perf_counter() - t0
    s.close()
    assert int(reply) == STREAM
    return dt


@pytest.mark.parametrize("case", ["overlay", "overlay-fd", "kernel"])
def test_stream(benchmark, sides, case):
    side = sides[case]
    times: list[float] = []
    benchmark.group = "tcp-stream"
    benchmark.pedantic(lambda: times.append(_stream(side, case == "overlay-fd")), rounds=3)
    best = min(times)
    benchmark.extra_info["gbit_per_s"] = round(STREAM * 8 / best / 1e9, 3)
    print(f"\ntcp-stream {case}: {STREAM * 8 / best / 1e9:.2f} Gb/s (best of {len(times)})")


def _rr(side) -> float:
    s = side.connect()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"E")
    msg = b"x" * MSG
    buf = bytearray(MSG)
    view = memoryview(buf)
    t0 = time.perf_counter()
    for _ in range(RR_COUNT):
        s.sendall(msg)
        got = 0
        while got < MSG:
            n = s.recv_into(view[got:])
            assert n, "server closed"
            got += n
    dt = time.perf_counter() - t0
    s.close()
    return dt


@pytest.mark.parametrize("case", ["overlay", "kernel"])
def test_request_response(benchmark, sides, case):
    side = sides[case]
    times: list[float] = []
    benchmark.group = "tcp-rr"
    benchmark.pedantic(lambda: times.append(_rr(side)), rounds=3)
    best = min(times)
    benchmark.extra_info["transactions_per_s"] = round(RR_COUNT / best)
    print(f"\ntcp-rr {case}: {RR_COUNT / best:.0f} transactions/s of {MSG} B")


def _setup(side) -> float:
    t0 = time.perf_counter()
    for _ in range(SETUP_COUNT):
        s = side.connect()
        s.sendall(b"C")
        s.recv(1)  # the server's close
        s.close()
    return time.perf_counter() - t0


@pytest.mark.parametrize("case", ["overlay", "kernel"])
def test_connection_setup(benchmark, sides, case):
    side = sides[case]
    times: list[float] = []
    benchmark.group = "tcp-setup"
    benchmark.pedantic(lambda: times.append(_setup(side)), rounds=3)
    best = min(times)
    benchmark.extra_info["connections_per_s"] = round(SETUP_COUNT / best)
    print(f"\ntcp-setup {case}: {SETUP_COUNT / best:.0f} connections/s")


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_idle_connections(benchmark, sides):
    side = sides["overlay"]
    benchmark.group = "tcp-idle"
    held: list[socket.socket] = []

    def open_all() -> None:
        for s in held:
            s.close()
        held.clear()
        for _ in range(IDLE_COUNT):
            s = side.connect()
            s.sendall(b"I")
            held.append(s)

    before = _rss()
    benchmark.pedantic(open_all, rounds=1)
    time.sleep(0.5)  # let the last ACKs land
    grown = _rss() - before
    stats = side.net.tcp_stats()
    benchmark.extra_info["rss_bytes_per_connection"] = grown // IDLE_COUNT
    print(
        f"\ntcp-idle: {IDLE_COUNT} connections, RSS +{grown / 1e6:.1f} MB "
        f"({grown // IDLE_COUNT} B each), {stats['connections']} in the stack"
    )
    for s in held:
        s.close()
