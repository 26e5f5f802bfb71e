"""Our userspace TCP against the Linux kernel's TCP behind ``dataplane up`` (our TUN path).

Topology (namespaces this module creates and deletes):

    ns "dpxw<N>": ``python -m dataplane up -f`` on TUN dpxw<N> (10.99.3.1/24,
                  fd99:3::1/64, UDP 10.98.3.1:51820), the kernel's TCP behind it driven by
                  ``tests/_node_proc.py --kernel``
         | veth 10.98.3.0/24
    ns "dpxu<N>": our in-process node (``tests/_node_proc.py``, OverlayNetwork 10.99.3.2,
                  fd99:3::2), whose TCP is under test

The same jobs as ``test_tcp_interop.py`` (against wireguard-go): 100 MB each way over
IPv4 and IPv6, SHA-256 checked at both ends, and a refused connection each way; here the
peer's WireGuard is ours, with its established-session path and TUN offloads.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _node_proc import NodeProcess
from netns import TAG, Namespaces, popen_in, require, ss, stop, veth, wait_for
from test_tcp_interop import report, transfer

from dataplane.wireguard.keys import PrivateKey

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parent.parent
UP4, US4, UP6, US6 = "10.99.3.1", "10.99.3.2", "fd99:3::1", "fd99:3::2"
UP_UNDERLAY, US_UNDERLAY = ("10.98.3.1", 51820), ("10.98.3.2", 51821)
FAMILIES = {"ipv4": (UP4, US4), "ipv6": (UP6, US6)}
BIG = 100_000_000


class UpLab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns_up, self.ns_us = f"dpxw{TAG}", f"dpxu{TAG}"
        self.ifname = f"dpxw{TAG}"
        self.up_key, self.our_key = PrivateKey.generate(), PrivateKey.generate()
        self.namespaces = Namespaces()
        self.daemon: subprocess.Popen | None = None
        self.node: NodeProcess | None = None
        self.kernel: NodeProcess | None = None
        self._ports = itertools.count(6000)

    def up(self) -> None:
        self.namespaces.add(self.ns_up)
        self.namespaces.add(self.ns_us)
        veth(self.ns_up, self.ns_us, f"{UP_UNDERLAY[0]}/24", f"{US_UNDERLAY[0]}/24")
        conf = self.tmp / f"{self.ifname}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {self.up_key.to_base64()}\n"
            f"ListenPort = {UP_UNDERLAY[1]}\nAddress = {UP4}/24, {UP6}/64\nMTU = 1420\n"
            f"[Peer]\nPublicKey = {self.our_key.public_key.to_base64()}\n"
            f"AllowedIPs = {US4}/32, {US6}/128\nEndpoint = {US_UNDERLAY[0]}:{US_UNDERLAY[1]}\n"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.tmp / "up.log", "a") as log:
            self.daemon = popen_in(
                self.ns_up, sys.executable, "-m", "dataplane", "up", "-f", str(conf),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
            )  # fmt: skip
        sock = f"/var/run/wireguard/{self.ifname}.sock"
        wait_for(lambda: os.path.exists(sock), 15, "dataplane up", self.daemon)
        self.node = NodeProcess(
            [
                "--key", self.our_key.to_base64(),
                "--bind", f"{US_UNDERLAY[0]}:{US_UNDERLAY[1]}",
                "--addr", US4, "--addr", US6,
                "--peer-key", self.up_key.public_key.to_base64(),
                "--peer-allowed", f"{UP4}/32,{UP6}/128",
                "--peer-endpoint", f"{UP_UNDERLAY[0]}:{UP_UNDERLAY[1]}",
            ],
            self.tmp / "node.log",
            prefix=("ip", "netns", "exec", self.ns_us),
        )  # fmt: skip
        self.kernel = NodeProcess(
            ["--kernel"], self.tmp / "kernel.log", prefix=("ip", "netns", "exec", self.ns_up)
        )
        assert self.node.cmd(f"ping {UP4} 10")["ok"], self.diagnose()
        assert self.node.cmd(f"ping {UP6} 5")["ok"], self.diagnose()

    def port(self) -> int:
        return next(self._ports)

    def diagnose(self) -> str:
        parts = [f"ss behind dataplane up:\n{ss(self.ns_up)}", f"ss in U:\n{ss(self.ns_us)}"]
        if self.node is not None:
            parts.append(f"node {self.node.log()}")
        log = self.tmp / "up.log"
        if log.exists():
            parts.append("dataplane up: " + log.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def close(self) -> None:
        for node in (self.node, self.kernel):
            if node is not None:
                node.close()
        stop(self.daemon)
        self.namespaces.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require("TCP interop behind dataplane up", "ip")
    lab = UpLab(tmp_path_factory.mktemp("tcp-interop-up"))
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_100mb_transfer_verifies_behind_dataplane_up(lab, family, direction):
    up_addr, our_addr = FAMILIES[family]
    if direction == "ours-to-kernel":
        src, dst, addr = lab.node, lab.kernel, up_addr
    else:
        src, dst, addr = lab.kernel, lab.node, our_addr
    what = f"100 MB {direction} {family} behind dataplane up"
    _, got = transfer(lab, src, dst, addr, what, size=BIG, timeout=150)
    report(what, got)


@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_closed_port_refuses_behind_dataplane_up(lab, direction):
    src, addr = (lab.node, UP4) if direction == "ours-to-kernel" else (lab.kernel, US4)
    r = src.cmd(f"tcpconnect addr={addr} port={lab.port()} timeout=10", timeout=20)
    assert r.get("exc") == "ConnectionRefusedError", f"{r}\n{lab.diagnose()}"


FLOOD_SCRIPT = r"""
import random, socket, sys, time
sys.path.insert(0, sys.argv[4])
import tcp_model as m
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
rng = random.Random(5)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
end = time.monotonic() + 60
while sent < count and time.monotonic() < end:
    pkt = m.build(m.Seg(src, dst, rng.randrange(1024, 65536), port, seq=rng.getrandbits(32),
                        flags=m.SYN, mss=1380, sack_perm=True, ts=(rng.getrandbits(32), 0), ws=7))
    try:
        s.sendto(pkt, (dst, 0))
        sent += 1
    except (BlockingIOError, OSError):
        time.sleep(0.001)
    if sent % 200 == 0:
        time.sleep(0.002)  # the TUN queue holds 500 packets
print(sent, flush=True)
"""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_syn_flood_from_the_namespace_leaves_a_transfer_working(lab):
    """20,000 SYNs from raw sockets behind ``dataplane up`` (random ports) at our
    listener while a 50 MB transfer runs to it: the transfer completes and verifies, the
    SYN queue stays bounded and every SYN is counted, and our node's memory stays
    bounded (the kernel answers our SYN-ACKs with RSTs, which end the embryonic ones)."""
    port = lab.port()
    before = lab.node.cmd("tcpstats")
    rss_before = _rss(lab.node.proc.pid)
    target = lab.port()  # a listener that stays up (no handshake it sees completes)
    lab.node.cmd(f"tcp role=sink addr={US4} port={target} close=close timeout=60")
    sink = lab.node.cmd(f"tcp role=sink addr={US4} port={port} close=close timeout=120")
    send = lab.kernel.cmd(
        f"tcp role=send addr={US4} port={port} bytes=50000000 close=close timeout=120"
    )
    flood = subprocess.run(
        ["ip", "netns", "exec", lab.ns_up, sys.executable, "-c", FLOOD_SCRIPT,
         UP4, US4, str(target), str(Path(__file__).resolve().parent), "20000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert flood.returncode == 0, flood.stderr
    assert int(flood.stdout) == 20000
    from test_tcp_interop import wait_job

    sent = wait_job(lab, lab.kernel, send["job"], 120, "transfer under a SYN flood: sender")
    got = wait_job(lab, lab.node, sink["job"], 60, "transfer under a SYN flood: receiver")
    assert not sent.get("failed") and not got.get("failed"), f"{sent} {got}"
    assert got["bytes"] == sent["sent"] == 50_000_000 and got["sha256"] == sent["sha256"]
    after = lab.node.cmd("tcpstats")
    opened = after["counters"].get("passive_opens", 0) - before["counters"].get("passive_opens", 0)
    grown = _rss(lab.node.proc.pid) - rss_before
    print(
        f"\nSYN flood from the namespace: {opened} embryonic connections made, "
        f"{after['connections']} connections left, RSS +{grown / 1e6:.1f} MB, "
        f"drops {after['drops']}, counters {after['counters']}"
    )

    def delta(group: str, key: str) -> int:
        return after[group].get(key, 0) - before[group].get(key, 0)

    # Most SYNs crossed the tunnel (the rest are lost at the TUN queue of a raw-socket
    # flood); each made an embryonic connection, and each of those is accounted for:
    # ended by the kernel's RST, pushed out of the full SYN queue (counted), or waiting.
    embryonic = after["states"].get("SYN_RECEIVED", 0)
    assert opened >= 10_000
    assert opened - 1 == (
        delta("counters", "rst_received") + delta("drops", "syn_queue_overflow") + embryonic
    )
    assert embryonic <= 1024 and after["connections"] <= 1024 + 2
    assert grown < 64 << 20
