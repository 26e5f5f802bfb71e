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
