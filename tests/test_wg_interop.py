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

import ctypes
import ipaddress
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest
from conftest import skip_or_fail

from dataplane._batch import PacketBatch
from dataplane.wireguard.device import Device
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey

pytestmark = pytest.mark.privileged

WG_ADDR4, US_ADDR4 = "10.99.0.1", "10.99.0.2"
WG_ADDR6, US_ADDR6 = "fd99::1", "fd99::2"
WG_UNDERLAY = ("10.98.0.1", 51820)
US_UNDERLAY = ("10.98.0.2", 51821)
CLONE_NEWNET = 0x40000000

PINGER = r"""
import os, select, socket, struct, sys, time
family, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
v6 = family == "6"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
ok = 0
for seq in range(count):
    body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + b"interop-%d" % seq
    if not v6:
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s.sendto(body, (target, 0))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        if not select.select([s], [], [], end - time.monotonic())[0]: break
        data, _ = s.recvfrom(2048)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            ok += 1
            break
    time.sleep(interval)
print(ok)
sys.exit(0 if ok == count else 1)
"""


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, data: bytes, reply: bool = False) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
        icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, s.packed, d.packed
        )
        return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + icmp
    icmp = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + data
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _csum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 64, s.packed, d.packed) + icmp


def parse_icmp(pkt: bytes):
    """(src, dst, type, ident, seq, data) of an ICMP/ICMPv6 echo packet, else None."""
    if len(pkt) >= 28 and pkt[0] >> 4 == 4 and pkt[9] == 1:
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack("!H", pkt[2:4])[0]
        icmp = pkt[ihl:total]
        src, dst = str(ipaddress.ip_address(pkt[12:16])), str(ipaddress.ip_address(pkt[16:20]))
    elif len(pkt) >= 48 and pkt[0] >> 4 == 6 and pkt[6] == 58:
        plen = struct.unpack("!H", pkt[4:6])[0]
        icmp = pkt[40 : 40 + plen]
        src, dst = str(ipaddress.ip_address(pkt[8:24])), str(ipaddress.ip_address(pkt[24:40]))
    else:
        return None
    ty, _, _, ident, seq = struct.unpack("!BBHHH", icmp[:8])
    return src, dst, ty, ident, seq, icmp[8:]


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


class Lab:
    """Namespaces, veth, wireguard-go and our socket; ``close`` removes all of it."""

    def __init__(self, tmp_path) -> None:
        tag = os.getpid() % 100000
        self.ns_wg, self.ns_us, self.ifname = f"dpwg{tag}", f"dpus{tag}", f"dpwg{tag}"
        self.tmp = tmp_path
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.wg_key = PrivateKey.generate()
        self.psk = PresharedKey.generate()
        self._log = open(tmp_path / "wireguard-go.log", "w")

    def up(self) -> None:
        for ns in (self.ns_wg, self.ns_us):
            run("ip", "netns", "del", ns, check=False)  # left over by a killed run (pid reuse)
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run(
            "ip",
            "-n",
            self.ns_wg,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            self.ns_us,
        )
        run("ip", "-n", self.ns_wg, "addr", "add", "10.98.0.1/24", "dev", "veth0")
        run("ip", "-n", self.ns_us, "addr", "add", "10.98.0.2/24", "dev", "veth1")
        run("ip", "-n", self.ns_wg, "link", "set", "veth0", "up")
        run("ip", "-n", self.ns_us, "link", "set", "veth1", "up")
        env = dict(
            os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="verbose"
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_wg, "wireguard-go", "-f", self.ifname],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        sock_path = f"/var/run/wireguard/{self.ifname}.sock"
        for _ in range(100):
            if os.path.exists(sock_path):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"wireguard-go exited: {self.proc.returncode}")
            time.sleep(0.05)
        else:
            raise RuntimeError("wireguard-go did not create its UAPI socket")
        key_file = self.tmp / "wg.key"
        key_file.write_text(self.wg_key.to_base64() + "\n")
        os.chmod(key_file, 0o600)
        run(
            "ip",
            "netns",
            "exec",
            self.ns_wg,
            "wg",
            "set",
            self.ifname,
            "private-key",
            str(key_file),
            "listen-port",
            str(WG_UNDERLAY[1]),
        )
        run("ip", "-n", self.ns_wg, "addr", "add", "10.99.0.1/24", "dev", self.ifname)
        run("ip", "-n", self.ns_wg, "addr", "add", "fd99::1/64", "dev", self.ifname, "nodad")
        run("ip", "-n", self.ns_wg, "link", "set", self.ifname, "mtu", "1420", "up")
        self.sock = self._socket_in(self.ns_us)

    def set_peer(self, pub: PublicKey) -> None:
        psk_file = self.tmp / "psk"
        psk_file.write_text(self.psk.to_base64() + "\n")
        os.chmod(psk_file, 0o600)
        run(
            "ip",
            "netns",
            "exec",
            self.ns_wg,
            "wg",
            "set",
            self.ifname,
            "peer",
            pub.to_base64(),
            "preshared-key",
            str(psk_file),
            "allowed-ips",
            "10.99.0.2/32,fd99::2/128",
            "endpoint",
            f"{US_UNDERLAY[0]}:{US_UNDERLAY[1]}",
        )

    def remove_peer(self, pub: PublicKey) -> None:
        run(
            "ip",
            "netns",
            "exec",
            self.ns_wg,
            "wg",
            "set",
            self.ifname,
            "peer",
            pub.to_base64(),
            "remove",
        )

    def dump(self) -> list[list[str]]:
        out = run("ip", "netns", "exec", self.ns_wg, "wg", "show", self.ifname, "dump").stdout
        return [line.split("\t") for line in out.splitlines()]

    def _socket_in(self, ns: str) -> socket.socket:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace failed")
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(US_UNDERLAY)
                s.setblocking(False)
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)
        return s

    def pinger(
        self, family: str, target: str, count: int, interval: float = 0.2
    ) -> subprocess.Popen:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns_wg,
                sys.executable,
                "-c",
                PINGER,
                family,
                target,
                str(count),
                str(interval),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for ns in (self.ns_wg, self.ns_us):
            run("ip", "netns", "del", ns, check=False)
        self._log.close()

    def log_text(self) -> str:
        return (self.tmp / "wireguard-go.log").read_text(errors="replace")


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
                info = parse_icmp(bytes(batch[i]))
                if info is None:
                    continue
                src, dst, ty, ident, seq, data = info
                if ty in (8, 128):  # echo request from wireguard-go's side: answer it
                    answers.append(icmp_echo(dst, src, ident, seq, data, reply=True))
                elif ty in (0, 129):
                    self.replies.append(info)
            if answers:
                self.answered += len(answers)
                self.send_ip(answers)

    def ping(self, family: int, seq: int, timeout: float = 10.0) -> bool:
        src, dst = (US_ADDR4, WG_ADDR4) if family == 4 else (US_ADDR6, WG_ADDR6)
        data = b"dataplane-%d" % seq
        self.send_ip([icmp_echo(src, dst, 0x4242, seq, data)])
        want = (dst, src, 0 if family == 4 else 129, 0x4242, seq, data)
        self.pump(timeout, until=lambda: want in self.replies)
        return want in self.replies

    def ping_from_wg(
        self, family: int, count: int = 2, timeout: float = 20.0, interval: float = 0.2
    ) -> bool:
        target = US_ADDR4 if family == 4 else US_ADDR6
        proc = self.lab.pinger(str(family), target, count, interval)
        try:
            self.pump(timeout, until=lambda: proc.poll() is not None)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        return proc.returncode == 0


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("interop needs root (network namespaces, TUN)")
    for tool in ("wireguard-go", "wg", "ip"):
        if shutil.which(tool) is None:
            skip_or_fail(f"interop needs {tool} (apt-get install wireguard-go wireguard-tools)")
    if not os.path.exists("/dev/net/tun"):
        skip_or_fail("interop needs /dev/net/tun")
    lab = Lab(tmp_path)
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


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
