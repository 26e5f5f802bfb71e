"""``dataplane demo``: two WireGuard nodes in one process, talking over loopback UDP.

Each node is a ``DataPlane`` driven by a ``ThreadedDataPlane``, with a ``UdpTransport``
on 127.0.0.1 as underlay and an in-process overlay network whose UDP sockets the demo's
application threads use. No root, no TUN. The demo measures, and prints:

* handshake time: first datagram sent until its echo came back (includes the handshake);
* round-trip latency through both data planes (p50/p99 of small echo requests);
* one-way throughput of a stream of datagrams for the rest of the time;
* TCP through the same tunnel (our own netstack at both ends): connection setup time,
  request/response round trips, and one stream for ``--tcp-seconds`` whose bytes are
  checked with SHA-256 at both ends;
* every drop counter that is not zero.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass

from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.netstack import OverlayNetwork
from dataplane.transport.udp import UdpTransport
from dataplane.wireguard.keys import PrivateKey

DESCRIPTION = "run two nodes in this process over loopback UDP and measure them (no root)"
log = logging.getLogger(__name__)

ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
ECHO_PORT, SINK_PORT = 7, 9
TCP_ECHO_PORT, TCP_SINK_PORT = 7, 9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=4.0, help="seconds of traffic (default 4)")
    p.add_argument("--size", type=int, default=1200, help="datagram payload bytes (default 1200)")
    p.add_argument("--pings", type=int, default=300, help="round trips to time (default 300)")
    p.add_argument(
        "--tcp-seconds", type=float, default=2.0, help="seconds of the TCP stream (default 2)"
    )


@dataclass
class Node:
    name: str
    core: DataPlane
    driver: ThreadedDataPlane
    udp: UdpTransport
    net: OverlayNetwork

    def close(self) -> None:
        self.net.close()
        self.udp.close()
        self.driver.close()


def make_node(name: str, key: PrivateKey, address: str) -> Node:
    core = DataPlane(key)
    driver = ThreadedDataPlane(core, name=f"demo-{name}").start()
    udp = UdpTransport(driver, ("127.0.0.1", 0))
    net = OverlayNetwork(driver, [address], name=f"demo-{name}-overlay")
    with driver.locked() as c:
        c.set_addresses([address], overlay=net.id)
    return Node(name, core, driver, udp, net)


def connect(a: Node, b: Node, key_a: PrivateKey, key_b: PrivateKey) -> None:
    with a.driver.locked() as core:
        core.add_peer(
            key_b.public_key,
            allowed_ips=[f"{ADDR_B}/32"],
            endpoint=b.udp.address,
            underlay=a.udp.id,
        )
    with b.driver.locked() as core:
        core.add_peer(
            key_a.public_key,
            allowed_ips=[f"{ADDR_A}/32"],
            endpoint=a.udp.address,
            underlay=b.udp.id,
        )


def _validate(args: argparse.Namespace) -> None:
    from dataplane.cli import UsageError

    if not 0 < args.duration <= 3600:
        raise UsageError(f"--duration must be in (0, 3600] seconds, got {args.duration}")
    if not 1 <= args.size <= 1392:
        raise UsageError(f"--size must be 1..1392 bytes (MTU 1420 minus IPv4/UDP), got {args.size}")
    if not 1 <= args.pings <= 100_000:
        raise UsageError(f"--pings must be 1..100000, got {args.pings}")
    if not 0 <= args.tcp_seconds <= 3600:
        raise UsageError(f"--tcp-seconds must be in [0, 3600], got {args.tcp_seconds}")


def main(args: argparse.Namespace) -> int:
    _validate(args)
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    a = make_node("a", key_a, ADDR_A)
    b = make_node("b", key_b, ADDR_B)
    stop = threading.Event()
    try:
        connect(a, b, key_a, key_b)
        echo = b.net.udp_socket(ECHO_PORT)
        sink = b.net.udp_socket(SINK_PORT)
        received = {"packets": 0, "bytes": 0}

        def echo_loop() -> None:
            while not stop.is_set():
                try:
                    data, src = echo.recvfrom(timeout=0.2)
                except TimeoutError:
                    continue
                echo.sendto(data, src)

        def sink_loop() -> None:
            while not stop.is_set():
                try:
                    data, _ = sink.recvfrom(timeout=0.2)
                except TimeoutError:
                    continue
                received["packets"] += 1
                received["bytes"] += len(data)

        threads = [
            threading.Thread(target=f, name=f"demo-{f.__name__}") for f in (echo_loop, sink_loop)
        ]
        for t in threads:
            t.start()
        client = a.net.udp_socket()

        # 1. Handshake: the first datagram waits for the session, its echo proves it.
        t0 = time.perf_counter()
        client.sendto(b"hello", (ADDR_B, ECHO_PORT))
        client.recvfrom(timeout=10)
        handshake_ms = (time.perf_counter() - t0) * 1000
        print(f"handshake + first round trip: {handshake_ms:.1f} ms")

        # 2. Latency.
        rtts = []
        for i in range(args.pings):
            t1 = time.perf_counter()
            client.sendto(i.to_bytes(4, "big"), (ADDR_B, ECHO_PORT))
            client.recvfrom(timeout=2)
            rtts.append((time.perf_counter() - t1) * 1e6)
        rtts.sort()
        p50 = statistics.median(rtts)
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        print(f"round trip over {len(rtts)} pings: p50 {p50:.0f} µs, p99 {p99:.0f} µs")

        # 3. Throughput, with a progress line.
        payload = bytes(args.size)
        sent = 0
        start = time.perf_counter()
        next_report = start + 0.5
        end = start + args.duration
        while (now := time.perf_counter()) < end:
            for _ in range(64):
                client.sendto(payload, (ADDR_B, SINK_PORT))
            sent += 64
            if now >= next_report:
                next_report += 0.5
                elapsed = now - start
                mbps = received["bytes"] * 8 / elapsed / 1e6
                print(
                    f"\r  {elapsed:4.1f}s  sent {sent:8d}  received {received['packets']:8d}"
                    f"  {mbps:8.1f} Mb/s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        time.sleep(0.3)  # let the tail arrive
        elapsed = time.perf_counter() - start
        print(file=sys.stderr)
        rate = received["packets"] / elapsed
        print(
            f"throughput: {received['packets']} of {sent} datagrams of {args.size} B in "
            f"{elapsed:.1f} s = {rate:,.0f} packets/s, "
            f"{received['bytes'] * 8 / elapsed / 1e6:.1f} Mb/s of payload"
        )
        stop.set()
        for t in threads:
            t.join(2)
        if args.tcp_seconds > 0:
            _tcp(a, b, args.pings, args.tcp_seconds)
        _print_drops(a, b)
        return 0
    finally:
        stop.set()
        b.close()
        a.close()


def _tcp(a: Node, b: Node, pings: int, seconds: float) -> None:
    """TCP over the tunnel: setup, request/response, and a verified stream."""
    results: dict[str, tuple[int, str]] = {}
    with (
        b.net.create_server(("", TCP_ECHO_PORT)) as echo_srv,
        b.net.create_server(("", TCP_SINK_PORT)) as sink_srv,
    ):

        def echo() -> None:
            conn, _ = echo_srv.accept(timeout=10)
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

        def sink() -> None:
            conn, _ = sink_srv.accept(timeout=10)
            digest = hashlib.sha256()
            total = 0
            buf = bytearray(1 << 20)
            with conn:
                while n := conn.recv_into(buf):
                    digest.update(memoryview(buf)[:n])
                    total += n
                results["sink"] = (total, digest.hexdigest())
                conn.sendall(b"done")

        threads = [threading.Thread(target=f, name=f"demo-tcp-{f.__name__}") for f in (echo, sink)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        conn = a.net.create_connection((ADDR_B, TCP_ECHO_PORT), timeout=10)
        setup_ms = (time.perf_counter() - t0) * 1000
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        with conn:
            for i in range(pings):
                msg = i.to_bytes(4, "big") * 16
                t1 = time.perf_counter()
                conn.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += conn.recv(len(msg) - len(got))
                rtts.append((time.perf_counter() - t1) * 1e6)
        rtts.sort()
        print(
            f"TCP: connect {setup_ms:.2f} ms; request/response over {len(rtts)} round trips: "
            f"p50 {statistics.median(rtts):.0f} µs, "
            f"p99 {rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]:.0f} µs"
        )
        chunk = bytes(range(256)) * 1024
        digest = hashlib.sha256()
        sent = 0
        with a.net.create_connection((ADDR_B, TCP_SINK_PORT), timeout=10) as stream:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                stream.sendall(chunk)
                digest.update(chunk)
                sent += len(chunk)
            stream.shutdown(socket.SHUT_WR)  # the sink reads to the end, then answers
            stream.recv(16)
            elapsed = time.perf_counter() - start
            info = stream.tcp_info()
        for t in threads:
            t.join(10)
        total, hexdigest = results.get("sink", (0, ""))
        verdict = "verified" if (total, hexdigest) == (sent, digest.hexdigest()) else "MISMATCH"
        print(
            f"TCP stream: {sent / 1e6:.0f} MB in {elapsed:.1f} s = "
            f"{sent * 8 / elapsed / 1e9:.2f} Gb/s, SHA-256 {verdict}; "
            f"srtt {info['srtt'] * 1000:.2f} ms, cwnd {info['cwnd'] // 1024} KiB, "
            f"{info['retrans_segs']} segments retransmitted"
        )


def _print_drops(*nodes: Node) -> None:
    any_drop = False
    for n in nodes:
        st = n.core.stats()
        counters = {
            **{f"core.{k}": v for k, v in st.drops.items()},
            **{f"wireguard.{k}": v for k, v in st.device_drops.items()},
            "driver.queue_full": n.driver.stats.dropped_queue_full_packets,
            "driver.input_full": n.driver.input_dropped_packets,
            **{f"udp.{k}": v for k, v in n.udp.socket.errors.items()},
            "udp.truncated": n.udp.socket.io.rx_truncated,
            **{f"overlay.{k}": v for k, v in n.net.drops.items()},
            **{f"tcp.{k}": v for k, v in n.net.tcp_stats()["drops"].items()},
        }
        nonzero = {k: v for k, v in counters.items() if v}
        if nonzero:
            any_drop = True
            print(
                f"drops at node {n.name}: "
                + ", ".join(f"{k}={v}" for k, v in sorted(nonzero.items()))
            )
    if not any_drop:
        print("drops: none")
