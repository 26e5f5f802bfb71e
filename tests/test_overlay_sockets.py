"""In-process overlay sockets end to end through a ThreadedDataPlane with fake cores."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time

import pytest

from dataplane._batch import DropReason, PacketBatch
from dataplane.driver import ThreadedDataPlane
from dataplane.netstack import EPHEMERAL_PORTS, OverlayNetwork
from dataplane.results import Output
from dataplane.transport import ip_model as model
from dataplane.transport.memory import MemoryOverlay

A4, A6 = "100.64.0.1", "fd7a:115c:a1e0::1"
PEER4, PEER6 = "100.64.0.9", "fd7a:115c:a1e0::9"


class LoopbackCore:
    """Every overlay packet is delivered straight back to the transport that sent it."""

    def next_event(self):
        return None

    def process_outbound(self, now, overlay_id, batch):
        out = Output()
        out.deliver(overlay_id, batch)
        return out

    def process_inbound(self, now, underlay_id, batch):
        return Output()

    def process_events(self, now):
        return Output()


class RouterCore(LoopbackCore):
    """Overlay packets go to the overlay transport owning their destination address, else
    to ``default`` (a tap standing in for the peers)."""

    def __init__(self) -> None:
        self.routes: dict[str, int] = {}
        self.default: int | None = None

    def process_outbound(self, now, overlay_id, batch):
        per_target: dict[int, list[bytes]] = {}
        for i in batch.alive():
            pkt = bytes(batch[i])
            raw = pkt[16:20] if pkt[0] >> 4 == 4 else pkt[24:40]
            target = self.routes.get(str(ipaddress.ip_address(raw)), self.default)
            if target is not None:
                per_target.setdefault(target, []).append(pkt)
        out = Output()
        for target, pkts in per_target.items():
            out.deliver(target, PacketBatch.from_packets(pkts, headroom=16))
        return out


@pytest.fixture
def loop():
    driver = ThreadedDataPlane(LoopbackCore(), max_idle_sleep=0.5).start()
    net = OverlayNetwork(driver, [A4, A6])
    try:
        yield net
    finally:
        net.close()
        driver.close()
    driver.raise_if_failed()


@pytest.fixture
def routed():
    """(net, tap): our network plus a tap for the peers' side of the overlay."""
    core = RouterCore()
    driver = ThreadedDataPlane(core, max_idle_sleep=0.5).start()
    net = OverlayNetwork(driver, [A4, A6])
    tap = MemoryOverlay(driver)
    core.routes = {A4: net.id, A6: net.id}
    core.default = tap.id
    try:
        yield net, tap
    finally:
        net.close()
        tap.close()
        driver.close()
    driver.raise_if_failed()


# -- datagrams end to end -----------------------------------------------------------------


@pytest.mark.parametrize("addr", [A4, A6])
def test_two_sockets_exchange_datagrams(loop, addr):
    with loop.udp_socket(4000) as server, loop.udp_socket() as client:
        cport = client.getsockname()[1]
        assert EPHEMERAL_PORTS[0] <= cport <= EPHEMERAL_PORTS[1]
        for k in range(5):
            assert client.sendto(b"request %d" % k, (addr, 4000)) == len(b"request %d" % k)
            data, src = server.recvfrom(timeout=2)
            assert data == b"request %d" % k
            assert src == (addr, cport)
            server.sendto(data.upper(), src)
            assert client.recvfrom(timeout=2) == (data.upper(), (addr, 4000))
        assert client.sent == 5 and server.sent == 5 and server.received == 5
    assert loop.counters["rx_datagrams"] == 10
    assert not loop.drops


def test_socket_sends_exact_model_packets_and_receives_from_peers(routed):
    net, tap = routed
    with net.udp_socket(5353) as s:
        s.sendto(b"to-peer-4", (PEER4, 53))
        s.sendto(b"to-peer-6", (PEER6, 53))
        got = tap.collect(2)
        assert sorted(got) == sorted(
            [
                model.udp(A4, PEER4, 5353, 53, b"to-peer-4"),
                model.udp(A6, PEER6, 5353, 53, b"to-peer-6"),
            ]
        )
        for pkt in got:
            assert model.parse_udp(pkt).verdict == "ok"

        tap.send(
            [
                model.udp(PEER4, A4, 53, 5353, b"answer-4"),
                model.udp(PEER6, A6, 54, 5353, b"answer-6"),
            ]
        )
        assert s.recvfrom(timeout=2) == (b"answer-4", (PEER4, 53))
        assert s.recvfrom(timeout=2) == (b"answer-6", (PEER6, 54))


@pytest.mark.parametrize(("peer", "ours"), [(PEER4, A4), (PEER6, A6)])
def test_ping_from_a_peer_gets_the_model_reply(routed, peer, ours):
    net, tap = routed
    request = model.echo(peer, ours, 0x1234, 7, b"abcdefgh" * 7)
    tap.send([request])
    (reply,) = tap.collect(1)
    assert reply == model.echo_reply(request, {ours})
    assert reply == model.echo(ours, peer, 0x1234, 7, b"abcdefgh" * 7, reply=True)
    assert net.counters["echo_requests_answered"] == 1
    # A ping to an address that is not ours is not answered (and not UDP: counted).
    net.demux(
        PacketBatch.from_packets(
            [model.echo(peer, "100.64.0.77" if ours == A4 else "fd00::77", 1, 1)]
        )
    )
    assert tap.collect(1, timeout=0.3) == []
    assert net.counters["echo_requests_answered"] == 1
    assert net.drops == {"not_udp": 1}


@pytest.mark.parametrize("addr", [A4, A6])
def test_ping_our_own_address_through_the_data_plane(loop, addr):
    rtt = loop.ping(addr, data=b"x" * 32, timeout=2)
    assert 0 < rtt < 2
    assert loop.counters["echo_requests_answered"] == 1
    assert loop.counters["echo_replies_received"] == 1
    assert not loop.drops


def test_ping_without_answer_times_out(routed):
    net, tap = routed
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        net.ping(PEER4, timeout=0.2)
    assert time.monotonic() - t0 < 1.5
    (req,) = tap.collect(1)
    assert model.echo_reply(req, {PEER4}) is not None  # it was a valid echo request


def test_peer_ping_reply_is_matched(routed):
    net, tap = routed
    results = []
    t = threading.Thread(target=lambda: results.append(net.ping(PEER6, timeout=2)), name="pinger")
    t.start()
    (req,) = tap.collect(1)
    tap.send([model.echo_reply(req, {PEER6})])
    t.join(5)
    assert len(results) == 1 and results[0] > 0


# -- drops are counted by reason ------------------------------------------------------------


def test_drops_by_reason(loop):
    with loop.udp_socket(7000, recv_queue=2) as s:
        good = model.udp(PEER4, A4, 1, 7000, b"ok")
        bad_sum = good[:-1] + bytes([good[-1] ^ 1])
        frag = (lambda seg: model.ip_header(PEER4, A4, 17, len(seg), flags_frag=0x2000) + seg)(
            good[20:]
        )
        tcp = model.ip_header(PEER4, A4, 6, 20) + bytes(20)
        loop.demux(
            PacketBatch.from_packets(
                [
                    good,
                    good,
                    good,  # queue holds 2: one dropped
                    model.udp(PEER4, A4, 1, 7001, b"nobody"),  # no socket on the port
                    model.udp(PEER4, "100.64.0.50", 1, 7000, b"x"),  # not our address
                    bad_sum,
                    frag,
                    tcp,
                    good[:25],
                    b"\x00garbage",
                ]
            )
        )
        assert loop.drops == {
            "socket_queue_full": 1,
            "no_socket": 1,
            "not_our_address": 1,
            "bad_checksum": 1,
            "fragment": 1,
            "truncated": 1,
            "bad_header": 1,
        }
        # The TCP segment (a header of zeros) is the TCP stack's to judge and count.
        assert loop.tcp_stats()["drops"] == {"bad_header": 1}
        assert s.dropped == 1 and s.pending() == 2
        assert s.recvfrom(timeout=0) == (b"ok", (PEER4, 1))
        # Slots the core already dropped are counted as such and never delivered.
        b = PacketBatch.from_packets([good])
        b.set_status(0, DropReason.PACKET_FILTER)
        loop.demux(b)
        assert loop.drops["dropped_before"] == 1
        loop.demux([b"\x45"])  # a plain list of packets works too
        assert loop.drops["truncated"] == 2


def test_hostile_batches_never_raise(loop):
    import random

    rng = random.Random(1)
    with loop.udp_socket(9) as s:
        seed = model.udp(PEER6, A6, 1, 9, b"payload")
        pkts = []
        for _ in range(500):
            m = bytearray(seed if rng.random() < 0.7 else rng.randbytes(rng.randrange(80)))
            for _ in range(rng.randrange(3)):
                if m:
                    m[rng.randrange(len(m))] = rng.randrange(256)
            pkts.append(bytes(m[: rng.randrange(len(m) + 1)] if rng.random() < 0.2 else m))
        loop.demux(PacketBatch.from_packets(pkts))
        expected = sum(
            1 for p in pkts if (r := model.parse_udp(p)).verdict == "ok" and r.dst == (A6, 9)
        )
        assert s.pending() == expected
        assert loop.counters["rx_datagrams"] == expected


# -- socket API -----------------------------------------------------------------------------


def test_bind_conflicts_and_release(loop):
    a = loop.udp_socket(6000)
    with pytest.raises(OSError) as e:
        loop.udp_socket(6000)
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        loop.udp_socket(6000, A4)  # a wildcard binding covers every address
    assert e.value.errno == errno.EADDRINUSE
    a.close()
    b = loop.udp_socket(6000, A4)
    c = loop.udp_socket(6000, A6)  # distinct specific addresses share a port
    with pytest.raises(OSError) as e:
        loop.udp_socket(6000)
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        loop.udp_socket(1, "100.64.0.200")
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OverflowError):
        loop.udp_socket(70000)
    assert b.getsockname() == (A4, 6000) and c.getsockname() == (A6, 6000)
    ports = {loop.udp_socket().getsockname()[1] for _ in range(50)}
    assert len(ports) == 50


def test_specific_binding_receives_only_its_address(loop):
    with loop.udp_socket(6100, A6) as six, loop.udp_socket() as tx:
        tx.sendto(b"v4", (A4, 6100))
        tx.sendto(b"v6", (A6, 6100))
        assert six.recvfrom(timeout=2) == (b"v6", (A6, tx.getsockname()[1]))
        deadline = time.monotonic() + 2
        while not loop.drops["no_socket"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.drops["no_socket"] == 1
        with pytest.raises(OSError) as e:
            six.sendto(b"x", (A4, 1))
        assert e.value.errno == errno.EAFNOSUPPORT


def test_send_errors(loop):
    with loop.udp_socket() as s:
        assert loop.max_payload_v4 == 1420 - 28 and loop.max_payload_v6 == 1420 - 48
        s.sendto(bytes(loop.max_payload_v4), (A4, 9))
        with pytest.raises(ValueError, match="1393 bytes exceeds the 1392 bytes .*IPv4"):
            s.sendto(bytes(loop.max_payload_v4 + 1), (A4, 9))
        with pytest.raises(ValueError, match="1373 bytes exceeds the 1372 bytes .*IPv6"):
            s.sendto(bytes(loop.max_payload_v6 + 1), (A6, 9))
        with pytest.raises(ValueError, match="not an IP address"):
            s.sendto(b"x", ("example.com", 9))
        with pytest.raises(TypeError):
            s.sendto(b"x", "100.64.0.1:9")
        with pytest.raises(TypeError):
            s.sendto("text", (A4, 9))
        with pytest.raises(OSError) as e:
            s.sendto(b"x", (A4, 0))
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        s.sendto(b"x", (A4, 9))
    assert e.value.errno == errno.EBADF


def test_family_without_an_address_is_unreachable():
    driver = ThreadedDataPlane(LoopbackCore(), max_idle_sleep=0.5)
    with OverlayNetwork(driver, ["100.64.0.5/10"]) as net:
        assert net.addresses == ["100.64.0.5"]
        with net.udp_socket() as s:
            assert s.getsockname()[0] == "0.0.0.0"
            with pytest.raises(OSError) as e:
                s.sendto(b"x", (A6, 9))
            assert e.value.errno == errno.ENETUNREACH
    driver.close()


def test_constructor_validation():
    driver = ThreadedDataPlane(LoopbackCore(), max_idle_sleep=0.5)
    try:
        for bad, msg in (
            ([], "at least one"),
            (["nope"], "not an overlay IP"),
            (["224.0.0.1"], "unicast"),
            ([A4, A4], "twice"),
        ):
            with pytest.raises(ValueError, match=msg):
                OverlayNetwork(driver, bad)
        with pytest.raises(ValueError, match="IPv6 minimum"):
            OverlayNetwork(driver, [A6], mtu=1000)
        with pytest.raises(ValueError, match="out of range"):
            OverlayNetwork(driver, [A4], mtu=40)
    finally:
        driver.close()


def test_recvfrom_timeouts_and_close_wakes_receivers(loop):
    s = loop.udp_socket()
    t0 = time.monotonic()
    with pytest.raises(socket.timeout):
        s.recvfrom(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 1.5
    s.settimeout(0.05)
    assert s.gettimeout() == 0.05
    with pytest.raises(TimeoutError):
        s.recv()
    s.settimeout(None)
    errors = []

    def blocked():
        try:
            s.recvfrom()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=blocked, name="blocked-recv")
    t.start()
    time.sleep(0.05)
    s.close()
    t.join(2)
    assert not t.is_alive()
    assert errors and errors[0].errno == errno.EBADF
    s.close()  # idempotent


def test_concurrent_senders_share_batches_without_loss(loop):
    n_threads, per_thread = 4, 400
    with loop.udp_socket(8000, recv_queue=n_threads * per_thread) as rx:
        senders = [loop.udp_socket() for _ in range(n_threads)]

        def send(sock):
            for k in range(per_thread):
                sock.sendto(b"%d" % k, (A4, 8000))

        threads = [
            threading.Thread(target=send, args=(s,), name=f"tx{k}") for k, s in enumerate(senders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got: dict[int, list[int]] = {}
        for _ in range(n_threads * per_thread):
            data, (_, port) = rx.recvfrom(timeout=5)
            got.setdefault(port, []).append(int(data))
        # Every datagram arrived, each sender's in its order.
        assert sorted(got) == sorted(s.getsockname()[1] for s in senders)
        assert all(v == list(range(per_thread)) for v in got.values())
        assert not loop.drops
        for s in senders:
            s.close()
    assert loop.counters["tx_packets"] == n_threads * per_thread
    # Fewer driver batches than datagrams: concurrent sends were coalesced.
    assert loop._driver.stats.outbound_batches < n_threads * per_thread


def test_close_stops_threads_and_refuses_use():
    driver = ThreadedDataPlane(LoopbackCore(), max_idle_sleep=0.5).start()
    net = OverlayNetwork(driver, [A4], name="ov")
    names = {t.name for t in threading.enumerate()}
    assert {f"ov{net.id}-demux", f"ov{net.id}-send"} <= names
    s = net.udp_socket(1234)
    net.close()
    assert s.closed and net.closed
    names = {t.name for t in threading.enumerate()}
    assert f"ov{net.id}-demux" not in names and f"ov{net.id}-send" not in names
    with pytest.raises(OSError):
        net.udp_socket()
    net.close()
    driver.close()


def test_connected_socket_sends_to_and_hears_only_its_peer(loop):
    with loop.udp_socket(4100) as server, loop.udp_socket() as client, loop.udp_socket() as other:
        with pytest.raises(OSError) as e:
            client.send(b"nowhere")
        assert e.value.errno == errno.EDESTADDRREQ
        with pytest.raises(OSError) as e:
            client.getpeername()
        assert e.value.errno == errno.ENOTCONN
        client.connect(("fd7a:115c:a1e0:0::1", 4100))  # normalised like any address
        assert client.getpeername() == (A6, 4100)
        client.send(b"hello")
        data, src = server.recvfrom(timeout=2)
        assert (data, src) == (b"hello", (A6, client.getsockname()[1]))
        other.sendto(b"stranger", src)  # same address, wrong port: filtered
        server.sendto(b"reply", src)
        assert client.recvfrom(timeout=2) == (b"reply", (A6, 4100))
        assert loop.drops == {"not_connected_peer": 1}
        with pytest.raises(OSError):
            client.connect((A6, 0))
