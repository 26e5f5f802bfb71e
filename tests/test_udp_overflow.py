"""Kernel receive-buffer drops are counted (SO_RXQ_OVFL), so no loss is silent (loopback only).

A ``UdpSocket`` with the smallest receive buffer is flooded from a plain socket without
reading. On loopback the sender's ``sendto`` runs the receive path to the socket's queue
synchronously, so the only place a datagram can be lost is that full queue: every datagram
is either delivered or counted. The kernel stamps each queued datagram with the drop count
as of its arrival, so drops after the last datagram that got in become visible with the next
one: the tests send a marker datagram once the socket is drained.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from netns import has_ipv6_loopback

from dataplane._batch import DropReason, PacketBatch
from dataplane.transport.udp import UdpSocket

FLOOD = 5000
MARKER = b"marker"


FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback"),
    ),
]


def flood(host: str, dst: tuple[str, int], first: int, count: int) -> None:
    """Send ``count`` numbered 8-byte datagrams without waiting for the reader."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as tx:
        for seq in range(first, first + count):
            tx.sendto(struct.pack("!Q", seq), dst)


def drain(sock: UdpSocket, limit: int, timeout: float = 5.0) -> list[bytes]:
    """Read until the socket stays empty for a short while (at most ``limit`` datagrams)."""
    got: list[bytes] = []
    batch = PacketBatch(sock.capacity)
    deadline = time.monotonic() + timeout
    while len(got) <= limit and time.monotonic() < deadline:
        batch.clear()
        sock.recv_batch(batch, timeout=0.05)
        if not len(batch):
            break
        got.extend(batch.packets())
    return got


def receive_marker(host: str, sock: UdpSocket) -> None:
    """Send one datagram to the drained socket and read it: it carries the final drop count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.sendto(MARKER, sock.address)
    assert drain(sock, 1) == [MARKER]


def small_socket(host: str) -> UdpSocket:
    # SO_RCVBUF 0 is raised by the kernel to its minimum (a few small datagrams).
    return UdpSocket((host, 0), buffer_bytes=0)


@pytest.mark.parametrize("host", FAMILIES)
def test_flood_is_delivered_or_counted(host):
    with small_socket(host) as rx:
        flood(host, rx.address, 0, FLOOD)
        got = drain(rx, FLOOD)
        seqs = [struct.unpack("!Q", p)[0] for p in got]
        assert len(set(seqs)) == len(seqs) and all(0 <= s < FLOOD for s in seqs)
        receive_marker(host, rx)

        assert rx.rx_kernel_dropped > 0
        assert len(got) + rx.rx_kernel_dropped == FLOOD
        assert rx.io.rx_kernel_dropped == rx.rx_kernel_dropped
        assert rx.io.rx_packets == len(got) + 1


def test_counts_arrive_with_later_datagrams_and_accumulate():
    # Rounds of flood-then-drain: the first datagram of each round finds the queue empty,
    # gets in, and carries every drop of the earlier rounds; so the counter, read before
    # any marker, is bracketed by what earlier rounds and all rounds have lost.
    host = "127.0.0.1"
    rounds, per_round = 20, 250
    with small_socket(host) as rx:
        sent = delivered = 0
        for _ in range(rounds):
            lost_before = sent - delivered
            flood(host, rx.address, sent, per_round)
            sent += per_round
            got = drain(rx, per_round)
            assert got
            delivered += len(got)
            assert lost_before <= rx.rx_kernel_dropped <= sent - delivered
        assert rx.rx_kernel_dropped >= (rounds - 1) * (per_round // 2)
        receive_marker(host, rx)
        assert delivered + rx.rx_kernel_dropped == sent


@pytest.mark.parametrize("host", FAMILIES)
def test_no_overflow_counts_nothing(host):
    # The default buffer (8 MiB asked, at least the system default granted) holds 200 tiny
    # datagrams with room to spare.
    with UdpSocket((host, 0)) as rx:
        flood(host, rx.address, 0, 200)
        got = drain(rx, 200)
        receive_marker(host, rx)
        assert len(got) == 200
        assert rx.rx_kernel_dropped == 0


def test_counter_is_read_alongside_truncation_and_endpoints():
    # The control buffers must not disturb the rest of what recv fills in.
    with (
        small_socket("127.0.0.1") as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        tx.bind(("127.0.0.1", 0))
        flood("127.0.0.1", rx.address, 0, FLOOD)
        drain(rx, FLOOD)
        tx.sendto(bytes(3000), rx.address)
        batch = PacketBatch(4)
        deadline = time.monotonic() + 2
        while not len(batch) and time.monotonic() < deadline:
            rx.recv_batch(batch, timeout=0.2)
        assert len(batch) == 1
        assert batch.status_of(0) == DropReason.TOO_BIG and rx.io.rx_truncated == 1
        assert batch.endpoint(0) == tx.getsockname()
        assert rx.rx_kernel_dropped > 0
