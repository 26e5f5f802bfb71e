"""Batched UDP underlay: recvmmsg/sendmmsg into and out of PacketBatch slots (loopback only)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from netns import has_ipv6_loopback

from dataplane._batch import DropReason, PacketBatch
from dataplane.driver import ThreadedDataPlane
from dataplane.results import Output
from dataplane.transport.udp import UdpSocket, UdpTransport


def recv_all(sock: UdpSocket, want: int, timeout: float = 2.0) -> PacketBatch:
    batch = PacketBatch(max(want, 1))
    deadline = time.monotonic() + timeout
    while len(batch) < want and time.monotonic() < deadline:
        sock.recv_batch(batch, timeout=0.2)
    return batch


def test_batch_round_trip_ipv4_with_source_endpoints():
    with UdpSocket(("127.0.0.1", 0)) as a, UdpSocket(("127.0.0.1", 0)) as b:
        payloads = [os.urandom(n) for n in (0, 1, 64, 500, 1452)]
        sent = a.send_batch(PacketBatch.from_packets(payloads), b.address)
        assert sent == len(payloads)
        got = recv_all(b, len(payloads))
        assert got.packets() == payloads
        assert {got.endpoint(i) for i in range(len(got))} == {a.address}
        assert a.io.tx_packets == 5 and b.io.rx_packets == 5
        assert b.io.rx_bytes == sum(map(len, payloads))


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_and_dual_stack():
    with (
        UdpSocket(("::", 0)) as dual,
        UdpSocket(("::1", 0)) as v6,
        UdpSocket(("127.0.0.1", 0)) as v4,
    ):
        port = dual.address[1]
        v6.sendto(b"six", ("::1", port))
        v4.sendto(b"four", ("127.0.0.1", port))
        got = recv_all(dual, 2)
        by_payload = {bytes(got[i]): got.endpoint(i) for i in range(len(got))}
        assert by_payload[b"six"] == ("::1", v6.address[1])
        # IPv4 peers of a dual-stack socket appear as plain IPv4 endpoints.
        assert by_payload[b"four"] == ("127.0.0.1", v4.address[1])
        # ... and replies to those endpoints go out over the same dual-stack socket.
        reply = PacketBatch.from_packets([b"r4", b"r6"])
        reply.set_endpoint(0, by_payload[b"four"])
        reply.set_endpoint(1, by_payload[b"six"])
        assert dual.send_batch(reply) == 2
        assert recv_all(v4, 1).packets() == [b"r4"]
        assert recv_all(v6, 1).packets() == [b"r6"]


def test_per_slot_endpoints_and_dropped_slots_skipped():
    with UdpSocket() as a, UdpSocket() as b, UdpSocket() as c:
        batch = PacketBatch.from_packets([b"to-b", b"dropped", b"to-c"])
        batch.set_endpoint(0, b.address)
        batch.set_endpoint(2, c.address)
        batch.set_status(1, DropReason.NO_ROUTE)
        assert a.send_batch(batch) == 2
        assert recv_all(b, 1).packets() == [b"to-b"]
        assert recv_all(c, 1).packets() == [b"to-c"]


def test_oversized_datagram_is_marked_not_overflowed():
    with UdpSocket() as a, UdpSocket() as b:
        small = PacketBatch(capacity=2, mtu=64, headroom=16, tailroom=0)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            raw.sendto(b"x" * 1000, b.address)
        finally:
            raw.close()
        b.recv_batch(small, timeout=2)
        assert len(small) == 1
        assert small.status_of(0) == DropReason.TOO_BIG
        assert len(small[0]) == small.max_packet
        assert b.io.rx_truncated == 1
        del a


def test_errors_are_counted_not_raised():
    with UdpSocket(("127.0.0.1", 0)) as v4:
        with pytest.raises(ValueError, match="IPv4-only"):
            v4.send_batch(PacketBatch.from_packets([b"x"]), ("::1", 9))
        # A per-slot IPv6 destination on an IPv4 socket fails for that datagram only.
        batch = PacketBatch.from_packets([b"bad", b"good"])
        batch.set_endpoint(0, ("::1", 9))
        batch.set_endpoint(1, v4.address)
        assert v4.send_batch(batch) == 1
        assert sum(v4.errors.values()) == 1
        assert recv_all(v4, 1).packets() == [b"good"]


def test_bad_bind_address_is_a_clear_error():
    with pytest.raises(ValueError, match="IP address"):
        UdpSocket(("not-an-ip", 0))


def test_wake_unblocks_a_receiver_promptly_once():
    with UdpSocket() as s:
        results = []
        t = threading.Thread(
            target=lambda: results.append(len(s.recv_batch(timeout=30))), name="rx"
        )
        t.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        s.wake()
        t.join(5)
        assert not t.is_alive() and results == [0]
        assert time.monotonic() - t0 < 2
        # The wake-up was consumed: the next receive waits for its own timeout.
        t0 = time.monotonic()
        assert len(s.recv_batch(timeout=0.1)) == 0
        assert time.monotonic() - t0 >= 0.09


class Reflector:
    """Core for the driver test: inbound datagrams are sent straight back to their source."""

    def __init__(self, underlay_id: int = 0) -> None:
        self.underlay_id = underlay_id

    def next_event(self):
        return None

    def process_inbound(self, now, underlay_id, batch):
        out = Output()
        for i in range(len(batch)):
            single = PacketBatch.from_packets([batch[i]])
            out.send(underlay_id, batch.endpoint(i), single)
        return out

    def process_outbound(self, now, overlay_id, batch):
        return Output()

    def process_events(self, now):
        return Output()


def test_udp_transport_under_the_driver_and_clean_close():
    driver = ThreadedDataPlane(Reflector(), max_idle_sleep=0.5)
    try:
        driver.start()
        transport = UdpTransport(driver, ("127.0.0.1", 0))
        with UdpSocket() as client:
            client.send_batch(PacketBatch.from_packets([b"ping-1", b"ping-2"]), transport.address)
            got = recv_all(client, 2)
            assert sorted(got.packets()) == [b"ping-1", b"ping-2"]
        t0 = time.monotonic()
        transport.close()
        assert time.monotonic() - t0 < 3
        assert transport.socket.closed
    finally:
        driver.close()
    driver.raise_if_failed()


@pytest.mark.parametrize("gso", [True, False])
def test_single_destination_send_with_and_without_gso(gso):
    # Runs of equal sizes, short tails, empty and dropped slots, more than one GSO message.
    sizes = [64] * 70 + [100, 50] + [1452] * 40 + [0, 7, 7, 7] + [300] * 20
    payloads = [os.urandom(n) for n in sizes]
    with UdpSocket() as a, UdpSocket() as b:
        a.io.gso = gso
        batch = PacketBatch.from_packets(payloads)
        batch.set_status(5, DropReason.NO_ROUTE)
        batch.set_status(100, DropReason.NO_ROUTE)
        want = [p for i, p in enumerate(payloads) if i not in (5, 100)]
        assert a.send_batch(batch, b.address) == len(want)
        got = PacketBatch(len(want))
        deadline = time.monotonic() + 3
        while len(got) < len(want) and time.monotonic() < deadline:
            b.recv_batch(got, timeout=0.2)
        assert got.packets() == want
        assert a.io.tx_bytes == sum(map(len, want))
        assert a.io.gso == gso  # the kernel here accepts UDP_SEGMENT


def test_one_thread_receives_while_another_sends_on_the_same_socket():
    # Regression: receive and send used to share their mmsghdr arrays and crashed.
    with UdpSocket() as s, UdpSocket() as peer:
        total = 40 * 64
        got = []

        def receive():
            deadline = time.monotonic() + 5
            while sum(got) < total and time.monotonic() < deadline:
                got.append(len(s.recv_batch(timeout=0.1)))

        t = threading.Thread(target=receive, name="rx-same-socket")
        t.start()
        batch = PacketBatch.from_packets([b"x" * 100] * 64)
        for _ in range(40):
            peer.send_batch(batch, s.address)  # s receives ...
            s.send_batch(batch, peer.address)  # ... while also sending
            drain_batch = PacketBatch(128)
            peer.recv_batch(drain_batch, timeout=0)
        t.join(10)
        assert not t.is_alive()
        assert sum(got) == total
