"""Two ThreadedDataPlanes joined by an in-memory wire: real threads, real timers."""

from __future__ import annotations

import ipaddress
import struct
import threading
import time

import pytest
from icmp_ping import checksum

from dataplane._batch import PacketBatch
from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.transport.memory import MemoryOverlay, MemoryWire
from dataplane.wireguard.keys import PrivateKey

A4, B4, C4 = "10.1.0.1", "10.1.0.2", "10.1.0.3"
A6, B6 = "fd01::1", "fd01::2"


def icmp_echo(src: str, dst: str, ident: int, seq: int, reply: bool = False) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    data = b"ping-payload-%d" % seq
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, s.packed, d.packed
        )
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + icmp
    icmp = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + data
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, s.packed, d.packed) + icmp


def answer_echo(packet: bytes) -> bytes:
    """What a host's stack does with an echo request: swap addresses, make it a reply."""
    version = packet[0] >> 4
    if version == 4:
        src, dst = (
            str(ipaddress.IPv4Address(packet[12:16])),
            str(ipaddress.IPv4Address(packet[16:20])),
        )
        ident, seq = struct.unpack_from("!HH", packet, 24)
    else:
        src, dst = (
            str(ipaddress.IPv6Address(packet[8:24])),
            str(ipaddress.IPv6Address(packet[24:40])),
        )
        ident, seq = struct.unpack_from("!HH", packet, 44)
    return icmp_echo(dst, src, ident, seq, reply=True)


def collect(overlay: MemoryOverlay, want: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = overlay.receive(timeout=0.1)
        if batch is not None:
            got += batch.packets(alive_only=True)
    return got


class Node:
    def __init__(self, name: str, addresses: list[str]) -> None:
        self.key = PrivateKey.generate()
        self.core = DataPlane(self.key)
        self.driver = ThreadedDataPlane(self.core, name=name)
        self.overlay = MemoryOverlay(self.driver)
        self.core.set_addresses(addresses, overlay=self.overlay.id)

    def close(self) -> None:
        self.driver.close()
        self.driver.raise_if_failed()


@pytest.fixture
def pair():
    a = Node("node-a", [A4, A6])
    b = Node("node-b", [B4, B6])
    wire = MemoryWire(a.driver, b.driver)
    with a.driver.locked() as core:
        core.add_peer(
            b.key.public_key,
            allowed_ips=[f"{B4}/32", f"{B6}/128"],
            endpoint=wire.endpoint_b,
            underlay=wire.id_a,
        )
    with b.driver.locked() as core:
        core.add_peer(
            a.key.public_key,
            allowed_ips=[f"{A4}/32", f"{A6}/128"],
            endpoint=wire.endpoint_a,
            underlay=wire.id_b,
        )
    a.driver.start()
    b.driver.start()
    yield a, b, wire
    wire.close()
    a.close()
    b.close()


def ping(src: Node, dst: Node, src_addr: str, dst_addr: str, seq: int) -> None:
    request = icmp_echo(src_addr, dst_addr, 0x4242, seq)
    assert src.overlay.send([request])
    assert collect(dst.overlay, 1) == [request]
    assert dst.overlay.send([answer_echo(request)])
    assert collect(src.overlay, 1) == [answer_echo(request)]


def test_ping_both_ways_ipv4_and_ipv6(pair):
    a, b, wire = pair
    ping(a, b, A4, B4, 1)
    ping(b, a, B4, A4, 2)
    ping(a, b, A6, B6, 3)
    ping(b, a, B6, A6, 4)
    assert wire.a_to_b.stats.packets >= 3  # initiation, keepalive/data, data...
    assert a.core.stats().peers[0].has_session


def test_third_peer_added_and_removed_while_traffic_flows(pair):
    a, b, wire = pair
    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        seq = 0
        while not stop.is_set() and seq < 5000:
            seq += 1
            if a.overlay.send([icmp_echo(A4, B4, 7, seq)]):
                sent[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=traffic, name="traffic")
    t.start()
    try:
        c = PrivateKey.generate()
        for _ in range(20):
            with a.driver.locked() as core:
                pid = core.add_peer(
                    c.public_key,
                    allowed_ips=[f"{C4}/32"],
                    endpoint=("192.0.2.3", 51820),
                    underlay=wire.id_a,
                )
            time.sleep(0.01)
            with a.driver.locked() as core:
                core.remove_peer(pid)
    finally:
        stop.set()
        t.join(5)
    got = collect(b.overlay, sent[0], timeout=5)
    # The first packets wait for the handshake (staged, none lost); the rest flow.
    assert len(got) == sent[0]


def test_transports_added_and_removed_while_run_blocks(pair):
    a, b, wire = pair
    time.sleep(0.05)  # a's run() is waiting in SELECT
    extra = [MemoryOverlay(a.driver) for _ in range(3)]
    a.driver.remove_overlay_transport(extra[1].id)
    # the data plane keeps working for the original transport
    ping(a, b, A4, B4, 9)
    with a.driver.locked() as core:
        core.set_addresses([A4, A6], overlay=extra[2].id)
    request = icmp_echo(B4, A4, 1, 1)
    b.overlay.send([request])
    assert collect(extra[2], 1) == [request]
    a.driver.remove_overlay_transport(extra[2].id)
    b.overlay.send([icmp_echo(B4, A4, 1, 2)])
    deadline = time.monotonic() + 3
    while a.driver.stats.dropped_no_transport_packets < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.driver.stats.dropped_no_transport_packets == 1


def test_timers_alone_drive_keepalives_and_handshake_retries():
    a = Node("timer-a", [A4])
    b = Node("timer-b", [B4])
    wire = MemoryWire(a.driver, b.driver)
    try:
        ghost = PrivateKey.generate()
        with a.driver.locked() as core:
            core.add_peer(
                b.key.public_key,
                allowed_ips=[f"{B4}/32"],
                endpoint=wire.endpoint_b,
                underlay=wire.id_a,
                persistent_keepalive=1,
            )
            # A peer nobody answers for: only the retransmit timer makes it try again.
            ghost_id = core.add_peer(
                ghost.public_key,
                allowed_ips=[f"{C4}/32"],
                endpoint=wire.endpoint_b,
                underlay=wire.id_a,
                persistent_keepalive=1,
            )
        with b.driver.locked() as core:
            core.add_peer(
                a.key.public_key,
                allowed_ips=[f"{A4}/32"],
                endpoint=wire.endpoint_a,
                underlay=wire.id_b,
            )
        a.driver.start()
        b.driver.start()
        time.sleep(6.0)  # no application traffic at all
        stats = a.core.stats().peers
        assert stats[0].has_session
        assert stats[0].tx_packets >= 4  # persistent keepalives, one a second
        assert stats[ghost_id].handshake_initiations >= 2  # first try + a retry after ~5 s
        assert not stats[ghost_id].has_session
    finally:
        wire.close()
        a.close()
        b.close()


def udp4(src: str, dst: str, seq: int, size: int = 64) -> bytes:
    payload = seq.to_bytes(8, "big") + bytes(max(0, size - 36))
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s.packed, d.packed)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp


@pytest.mark.slow
def test_stress_producers_and_updates_account_for_every_packet():
    a = Node("stress-a", [A4])
    b = Node("stress-b", [B4])
    wire = MemoryWire(a.driver, b.driver)
    with a.driver.locked() as core:
        core.add_peer(
            b.key.public_key, allowed_ips=[f"{B4}/32"], endpoint=wire.endpoint_b, underlay=wire.id_a
        )
    with b.driver.locked() as core:
        core.add_peer(
            a.key.public_key, allowed_ips=[f"{A4}/32"], endpoint=wire.endpoint_a, underlay=wire.id_b
        )
    stop = threading.Event()
    sent = [0] * 3
    refused = [0] * 3
    delivered = [0]

    def producer(k: int) -> None:
        seq = 0
        while not stop.is_set():
            batch = PacketBatch.from_packets([udp4(A4, B4, seq + i) for i in range(32)])
            seq += 32
            if a.overlay.send(batch):
                sent[k] += 32
            else:
                refused[k] += 32
            time.sleep(0.0005 * k)

    def consumer() -> None:
        while not stop.is_set() or len(b.overlay.handle.outgoing):
            batch = b.overlay.receive(timeout=0.05)
            if batch is not None:
                delivered[0] += len(batch.alive())

    def mutator() -> None:
        c = PrivateKey.generate()
        n = 0
        while not stop.is_set():
            n += 1
            with a.driver.locked() as core:
                pid = core.add_peer(
                    c.public_key,
                    allowed_ips=[f"{C4}/32"],
                    endpoint=("192.0.2.3", 51820),
                    underlay=wire.id_a,
                )
                if n % 4 == 0:
                    core.set_routes(drop=[f"{B4}/32"])  # a hole: packets to B drop for a while
            time.sleep(0.02)
            with a.driver.locked() as core:
                core.remove_peer(pid)
                core.set_routes(drop=[])
            time.sleep(0.02)

    threads = [threading.Thread(target=producer, args=(k,), name=f"producer-{k}") for k in range(3)]
    threads += [
        threading.Thread(target=consumer, name="consumer"),
        threading.Thread(target=mutator, name="mutator"),
    ]
    a.driver.start()
    b.driver.start()
    try:
        for t in threads:
            t.start()
        time.sleep(10.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"

    def dropped() -> dict[str, int]:
        d: dict[str, int] = {}
        for name, node in (("a", a), ("b", b)):
            st = node.core.stats()
            for k, v in st.drops.items():
                d[f"{name}.core.{k}"] = v
            for k, v in st.device_drops.items():
                d[f"{name}.device.{k}"] = v
            d[f"{name}.driver.queue_full"] = node.driver.stats.dropped_queue_full_packets
            d[f"{name}.driver.no_transport"] = node.driver.stats.dropped_no_transport_packets
        d["wire.a2b.input_full"] = wire.a_to_b.stats.dropped_input_full
        return {k: v for k, v in d.items() if v}

    # Let what is in flight land; then every packet the data plane accepted is delivered or
    # counted as dropped, and every one it refused was counted at its input queue.
    total_sent = sum(sent)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        accounted = delivered[0] + sum(dropped().values())
        if accounted >= total_sent:
            break
        batch = b.overlay.receive(timeout=0.05)
        if batch is not None:
            delivered[0] += len(batch.alive())
    drops = dropped()
    try:
        assert total_sent > 10_000
        assert delivered[0] > 0 and drops.get("a.core.ROUTE_DROP", 0) > 0
        assert total_sent == delivered[0] + sum(drops.values()), (total_sent, delivered, drops)
        # Refused at the producer side: the input queue said no, and the driver counted it.
        assert a.driver.input_dropped_packets == sum(refused)
    finally:
        wire.close()
        a.close()
        b.close()
