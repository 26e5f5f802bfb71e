"""UDP GRO on receive: coalesced runs are cut back into the datagrams that were sent.

Loopback keeps a GSO send whole up to a GRO-enabled socket, so a batch sent with
``send_batch`` (one GSO message per run of equal sizes) arrives as one or a few coalesced
messages; ``recv_batch`` must hand back exactly the datagrams, in order, with their
source endpoint, however small the receiving batch is.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from dataplane._batch import PacketBatch
from dataplane.transport.udp import UdpSocket


def payloads(sizes: list[int], tag: int = 0) -> list[bytes]:
    return [bytes([tag, i % 256]) + os.urandom(n - 2) for i, n in enumerate(sizes)]


def receive_all(sock: UdpSocket, want: int, capacity: int, mtu: int = 1500) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + 5
    while len(got) < want and time.monotonic() < end:
        batch = sock.recv_batch(PacketBatch(capacity, mtu=mtu), timeout=0.2)
        got += batch.packets()
        for i in range(len(batch)):
            assert batch.endpoint(i)[1] != 0
    return got


@pytest.fixture
def pair():
    rx = UdpSocket(("127.0.0.1", 0))
    tx = UdpSocket(("127.0.0.1", 0))
    yield rx, tx
    rx.close()
    tx.close()


def test_gro_is_on_where_the_kernel_has_it(pair):
    rx, _ = pair
    assert rx.io.gro


@pytest.mark.parametrize("capacity", [128, 7, 1])
def test_a_gso_run_comes_back_datagram_by_datagram(pair, capacity):
    rx, tx = pair
    sent = payloads([1452] * 40 + [600])
    tx.send_batch(PacketBatch.from_packets(sent, mtu=1500), rx.address)
    got = receive_all(rx, len(sent), capacity)
    assert got == sent
    assert rx.io.rx_coalesced >= 1  # it really arrived coalesced
    assert rx.io.rx_packets == len(sent)


def test_runs_of_different_sizes_and_senders_keep_their_order_and_sources(pair):
    rx, tx = pair
    other = UdpSocket(("127.0.0.1", 0))
    try:
        first = payloads([1000] * 20 + [1200] * 10 + [64] * 5, tag=1)
        second = payloads([1452] * 12, tag=2)
        tx.send_batch(PacketBatch.from_packets(first, mtu=1500), rx.address)
        other.send_batch(PacketBatch.from_packets(second, mtu=1500), rx.address)
        got: list[tuple[bytes, tuple[str, int]]] = []
        end = time.monotonic() + 5
        while len(got) < len(first) + len(second) and time.monotonic() < end:
            batch = rx.recv_batch(PacketBatch(16, mtu=1500), timeout=0.2)
            got += [(batch.packets()[i], batch.endpoint(i)) for i in range(len(batch))]
        assert [p for p, ep in got if ep[1] == tx.address[1]] == first
        assert [p for p, ep in got if ep[1] == other.address[1]] == second
    finally:
        other.close()


def test_a_datagram_larger_than_the_slot_is_kept_truncated_and_marked(pair):
    rx, _ = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        plain.sendto(b"x" * 3000, rx.address)
    batch = PacketBatch(4, mtu=1000)
    end = time.monotonic() + 5
    while not len(batch) and time.monotonic() < end:
        rx.recv_batch(batch, timeout=0.2)
    assert len(batch) == 1 and batch.status_of(0).name == "TOO_BIG"
    assert rx.io.rx_truncated == 1


def test_without_gro_the_same_datagrams_arrive(pair):
    _, tx = pair
    plain = UdpSocket(("127.0.0.1", 0), gro=False)
    try:
        assert not plain.io.gro
        sent = payloads([1452] * 30)
        tx.send_batch(PacketBatch.from_packets(sent, mtu=1500), plain.address)
        assert receive_all(plain, len(sent), 128) == sent
        assert plain.io.rx_coalesced == 0
    finally:
        plain.close()


@pytest.mark.parametrize("bind", ["::1", "::"])
def test_ipv6_and_dual_stack_sockets_cut_runs_too(bind):
    rx = UdpSocket((bind, 0))
    tx = UdpSocket(("::1", 0))
    try:
        sent = payloads([1400] * 25)
        tx.send_batch(PacketBatch.from_packets(sent, mtu=1500), ("::1", rx.address[1]))
        assert receive_all(rx, len(sent), 10) == sent
        assert rx.io.gro and rx.io.rx_coalesced >= 1
    finally:
        rx.close()
        tx.close()
