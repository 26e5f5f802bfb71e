"""Interop with a real peer: wireguard-go in a network namespace, our Device on a UDP socket.

Topology (everything in namespaces this test creates and deletes; nothing in the root
namespace):

    ns "dpwg<N>": wireguard-go on TUN dpwg<N> (10.99.0.1/24, fd99::1/64), UDP 10.98.0.1:51820
         | veth 10.98.0.0/24
    ns "dpus<N>": our UDP socket 10.98.0.2:51821 (the test process enters the namespace only
                  to create the socket), our Device with inner addresses 10.99.0.2, fd99::2

Our side has no TUN: the test builds ICMP echo requests and answers echo requests itself,
so ICMP goes through wireguard-go's kernel TUN (the kernel answers our echoes, and a raw-
socket pinger inside wireguard-go's namespace sends echoes to us), in both directions,
over IPv4 and IPv6 inner addresses, with a pre-shared key.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time

import pytest
from icmp_ping import echo_packet, parse_echo, ping_cmd
from netns import TAG, Namespaces, WireguardGo, inside, lab_up, require, veth

from dataplane._batch import PacketBatch
from dataplane.wireguard.device import Device
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey

pytestmark = pytest.mark.privileged

WG_ADDR4, US_ADDR4 = "10.99.0.1", "10.99.0.2"
WG_ADDR6, US_ADDR6 = "fd99::1", "fd99::2"
WG_UNDERLAY = ("10.98.0.1", 51820)
US_UNDERLAY = ("10.98.0.2", 51821)


class Lab:
    """Namespaces, veth, wireguard-go and our socket; ``close`` removes all of it."""

    def __init__(self, tmp_path) -> None:
        self.ns_wg, self.ns_us, self.ifname = f"dpwg{TAG}", f"dpus{TAG}", f"dpwg{TAG}"
        self.namespaces = Namespaces()
        self.wg = WireguardGo(self.ns_wg, self.ifname, tmp_path, verbose=True)
        self.sock: socket.socket | None = None
        self.wg_key = PrivateKey.generate()
        self.psk = PresharedKey.generate()

    def up(self) -> None:
        self.namespaces.add(self.ns_wg)
        self.namespaces.add(self.ns_us)
        veth(self.ns_wg, self.ns_us, f"{WG_UNDERLAY[0]}/24", f"{US_UNDERLAY[0]}/24")
        self.wg.start()
        self.wg.configure(self.wg_key, WG_UNDERLAY[1])
        self.wg.up(f"{WG_ADDR4}/24", f"{WG_ADDR6}/64")
        with inside(self.ns_us):  # the socket stays in that namespace
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(US_UNDERLAY)
            self.sock.setblocking(False)

    def set_peer(self, pub: PublicKey) -> None:
        self.wg.set_peer(pub, self.psk, [f"{US_ADDR4}/32", f"{US_ADDR6}/128"], US_UNDERLAY)

    def remove_peer(self, pub: PublicKey) -> None:
        self.wg.remove_peer(pub)

    def dump(self) -> list[list[str]]:
        return self.wg.dump()

    def pinger(self, target: str, count: int, interval: float = 0.2) -> subprocess.Popen:
        return subprocess.Popen(
            ping_cmd(self.ns_wg, target, count, interval=interval),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.wg.stop()
        self.namespaces.close()

    def log_text(self) -> str:
        return self.wg.log_text()


class Us:
    """Our endpoint: a Device driven by a poll loop on the UDP socket."""

    PEER = 7

    def __init__(self, lab: Lab, key: PrivateKey | None = None) -> None:
        self.lab = lab
        self.key = key or PrivateKey.generate()
        self.dev = Device(self.key, wall_clock=time.time)
        self.dev.add_peer(self.PEER, lab.wg_key.public_key, psk=lab.psk, endpoint=WG_UNDERLAY)
        self.replies: list[tuple] = []
        self.answered = 0

    def transmit(self, transmits) -> None:
        assert self.lab.sock is not None
        for t in transmits:
            for pkt in t.batch.packets(alive_only=True):
                self.lab.sock.sendto(pkt, t.endpoint)

    def send_ip(self, packets: list[bytes]) -> None:
        batch = PacketBatch.from_packets(packets)
        self.transmit(self.dev.send(time.monotonic(), {self.PEER: batch}))

    def pump(self, seconds: float, until=lambda: False) -> None:
        sock = self.lab.sock
        assert sock is not None
        end = time.monotonic() + seconds
        while not until():
            now = time.monotonic()
            if now >= end:
                return
            self.transmit(self.dev.dispatch_events(now))
            rng = self.dev.next_event()
            wait = min(0.05, end - now)
            if rng is not None:
                wait = max(0.0, min(wait, rng.end - now))
            if not select.select([sock], [], [], wait)[0]:
                continue
            batch = PacketBatch(capacity=64)
            while batch.room:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                i = batch.append(data)
                batch.set_endpoint(i, addr[:2])
            self.transmit(self.dev.receive(time.monotonic(), batch))
            answers = []
            for i in batch.alive():
                assert batch.peer(i) == self.PEER
                info = parse_echo(bytes(batch[i]))
                if info is None:
                    continue
                src, dst, ty, ident, seq, data = info
                if ty in (8, 128):  # echo request from wireguard-go's side: answer it
                    answers.append(echo_packet(dst, src, seq, data, reply=True, ident=ident))
                elif ty in (0, 129):
                    self.replies.append(info)
            if answers:
                self.answered += len(answers)
                self.send_ip(answers)

    def ping(self, family: int, seq: int, timeout: float = 10.0) -> bool:
        src, dst = (US_ADDR4, WG_ADDR4) if family == 4 else (US_ADDR6, WG_ADDR6)
        data = b"dataplane-%d" % seq
        self.send_ip([echo_packet(src, dst, seq, data, ident=0x4242)])
        want = (dst, src, 0 if family == 4 else 129, 0x4242, seq, data)
        self.pump(timeout, until=lambda: want in self.replies)
        return want in self.replies

    def ping_from_wg(
        self, family: int, count: int = 2, timeout: float = 20.0, interval: float = 0.2
    ) -> bool:
        target = US_ADDR4 if family == 4 else US_ADDR6
        proc = self.lab.pinger(target, count, interval)
        try:
            self.pump(timeout, until=lambda: proc.poll() is not None)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        return proc.returncode == 0


@pytest.fixture
def lab(tmp_path):
    require("interop", "ip", "wg", "wireguard-go")
    with lab_up(Lab(tmp_path)) as lab:
        yield lab


def _diagnose(lab: Lab, us: Us) -> str:
    return (
        f"our events: {dict(us.dev.events)}\nour drops: {dict(us.dev.drops)}\n"
        f"wireguard-go log:\n{lab.log_text()[-3000:]}"
    )


def test_interop_handshakes_both_directions_icmp_v4_v6_with_psk(lab):
    us = Us(lab)
    lab.set_peer(us.key.public_key)
    # 1. We initiate: our echo requests make the handshake, the kernel behind
    #    wireguard-go's TUN answers them.
    assert us.ping(4, 1), _diagnose(lab, us)
    assert us.dev.events["handshake_completed_initiator"] == 1
    assert us.ping(6, 2), _diagnose(lab, us)
    # Echo requests from wireguard-go's side over the same session.
    assert us.ping_from_wg(4), _diagnose(lab, us)
    assert us.ping_from_wg(6), _diagnose(lab, us)
    stats = us.dev.peer_stats(us.PEER)
    assert stats.endpoint == WG_UNDERLAY and stats.last_handshake is not None
    assert stats.rx_packets >= 6 and stats.tx_packets >= 6
    dump = lab.dump()
    peer_line = [row for row in dump if row[0] == us.key.public_key.to_base64()][0]
    assert peer_line[1] == lab.psk.to_base64()
    assert int(peer_line[4]) > 0  # latest handshake
    assert int(peer_line[5]) > 0 and int(peer_line[6]) > 0  # rx/tx bytes

    # 2. It initiates: fresh state on both sides, and the first packet comes from its side.
    lab.remove_peer(us.key.public_key)
    us2 = Us(lab)
    us.lab.set_peer(us2.key.public_key)
    assert us2.ping_from_wg(4), _diagnose(lab, us2)
    assert us2.dev.events["response_sent"] >= 1
    assert us2.dev.events["handshake_completed_responder"] >= 1
    assert us2.dev.events["initiation_sent"] == 0
    assert us2.ping_from_wg(6), _diagnose(lab, us2)
    assert us2.ping(4, 3) and us2.ping(6, 4), _diagnose(lab, us2)


@pytest.mark.slow
def test_interop_traffic_continues_across_rekey(lab):
    us = Us(lab)
    lab.set_peer(us.key.public_key)
    assert us.ping(4, 0), _diagnose(lab, us)
    start = time.monotonic()
    seq, lost = 1, 0
    while time.monotonic() - start < 135.0:
        ok = us.ping(4 if seq % 2 else 6, seq, timeout=3.0)
        lost += not ok
        seq += 1
        us.pump(2.0)
    assert us.dev.events["handshake_completed_initiator"] >= 2, _diagnose(lab, us)
    assert lost == 0, f"{lost} of {seq} echoes lost\n" + _diagnose(lab, us)
    assert us.ping_from_wg(4, count=3), _diagnose(lab, us)


@pytest.mark.slow
def test_interop_responder_side_rekey_initiated_by_wireguard_go(lab):
    """wireguard-go initiates and, after 120 s, rekeys; we answer as responder throughout."""
    us = Us(lab)
    lab.set_peer(us.key.public_key)
    assert us.ping_from_wg(4, count=66, interval=2.0, timeout=250.0), _diagnose(lab, us)
    assert us.dev.events["handshake_completed_responder"] >= 2, _diagnose(lab, us)
    assert us.dev.events["initiation_sent"] == 0
    assert us.answered >= 66
