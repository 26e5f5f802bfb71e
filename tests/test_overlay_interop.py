"""Overlay sockets against a real peer: our full node (process) and wireguard-go.

Topology (namespaces this test creates and deletes; nothing in the root namespace):

    ns "dpow<N>": wireguard-go on TUN dpow<N> (10.99.1.1/24, fd99:1::1/64),
                  UDP 10.98.1.1:51820; a UDP echo server on the kernel side ([::]:7)
         | veth 10.98.1.0/24
    ns "dpou<N>": our node, ``tests/_node_proc.py`` (DataPlane + ThreadedDataPlane +
                  UdpTransport on 10.98.1.2:51821 + OverlayNetwork with 10.99.1.2 and
                  fd99:1::2), run with ``ip netns exec``

Shown: the kernel behind wireguard-go answers our ``net.ping`` (ICMP and ICMPv6), its UDP
echo server answers our overlay socket (IPv4 and IPv6), and datagrams a kernel socket
sends to our overlay address reach our overlay socket. Everything with a pre-shared key.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from _node_proc import NodeProcess
from conftest import skip_or_fail

from dataplane.wireguard.keys import PresharedKey, PrivateKey

pytestmark = pytest.mark.privileged

WG4, US4 = "10.99.1.1", "10.99.1.2"
WG6, US6 = "fd99:1::1", "fd99:1::2"
WG_UNDERLAY, US_UNDERLAY = ("10.98.1.1", 51820), ("10.98.1.2", 51821)
ECHO, SINK = 7, 9

ECHO_SERVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, src = s.recvfrom(2048)
    except TimeoutError:
        continue
    s.sendto(data, src)
"""

SENDER = r"""
import socket, struct, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(struct.pack("!Q", i) + b"from-the-kernel", (host, port))
    time.sleep(0.002)
"""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


class Lab:
    def __init__(self, tmp_path) -> None:
        tag = os.getpid() % 100000
        self.ns_wg, self.ns_us, self.ifname = f"dpow{tag}", f"dpou{tag}", f"dpow{tag}"
        self.tmp = tmp_path
        self.wg_key, self.our_key = PrivateKey.generate(), PrivateKey.generate()
        self.psk = PresharedKey.generate()
        self.wg: subprocess.Popen | None = None
        self.echo: subprocess.Popen | None = None
        self.node: NodeProcess | None = None
        self._log = open(tmp_path / "wireguard-go.log", "w")

    def up(self) -> None:
        for ns in (self.ns_wg, self.ns_us):
            run("ip", "netns", "del", ns, check=False)  # left over by a killed run
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.ns_wg, "link", "add", "veth0", "type", "veth",
            "peer", "name", "veth1", "netns", self.ns_us)  # fmt: skip
        run("ip", "-n", self.ns_wg, "addr", "add", f"{WG_UNDERLAY[0]}/24", "dev", "veth0")
        run("ip", "-n", self.ns_us, "addr", "add", f"{US_UNDERLAY[0]}/24", "dev", "veth1")
        run("ip", "-n", self.ns_wg, "link", "set", "veth0", "up")
        run("ip", "-n", self.ns_us, "link", "set", "veth1", "up")
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        self.wg = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_wg, "wireguard-go", "-f", self.ifname],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        sock_path = f"/var/run/wireguard/{self.ifname}.sock"
        for _ in range(100):
            if os.path.exists(sock_path):
                break
            if self.wg.poll() is not None:
                raise RuntimeError(f"wireguard-go exited: {self.wg.returncode}")
            time.sleep(0.05)
        else:
            raise RuntimeError("wireguard-go did not create its UAPI socket")
        key_file, psk_file = self.tmp / "wg.key", self.tmp / "psk"
        key_file.write_text(self.wg_key.to_base64() + "\n")
        psk_file.write_text(self.psk.to_base64() + "\n")
        os.chmod(key_file, 0o600)
        os.chmod(psk_file, 0o600)
        run("ip", "netns", "exec", self.ns_wg, "wg", "set", self.ifname,
            "private-key", str(key_file), "listen-port", str(WG_UNDERLAY[1]),
            "peer", self.our_key.public_key.to_base64(), "preshared-key", str(psk_file),
            "allowed-ips", f"{US4}/32,{US6}/128",
            "endpoint", f"{US_UNDERLAY[0]}:{US_UNDERLAY[1]}")  # fmt: skip
        run("ip", "-n", self.ns_wg, "addr", "add", f"{WG4}/24", "dev", self.ifname)
        run("ip", "-n", self.ns_wg, "addr", "add", f"{WG6}/64", "dev", self.ifname, "nodad")
        run("ip", "-n", self.ns_wg, "link", "set", self.ifname, "mtu", "1420", "up")

        self.echo = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_wg, sys.executable, "-c", ECHO_SERVER,
             str(ECHO), "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.echo.stdout is not None
        if not select.select([self.echo.stdout], [], [], 20)[0]:
            raise RuntimeError("echo server did not start within 20 s")
        line = self.echo.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"echo server did not start: {line!r}")

        self.node = self.start_node(US_UNDERLAY[1])

    def start_node(self, port: int) -> NodeProcess:
        return NodeProcess(
            [
                "--key", self.our_key.to_base64(),
                "--bind", f"{US_UNDERLAY[0]}:{port}",
                "--addr", US4, "--addr", US6,
                "--peer-key", self.wg_key.public_key.to_base64(),
                "--peer-allowed", f"{WG4}/24,{WG6}/64",
                "--peer-endpoint", f"{WG_UNDERLAY[0]}:{WG_UNDERLAY[1]}",
                "--psk", self.psk.to_base64(),
                "--echo-port", str(ECHO), "--sink-port", str(SINK),
            ],
            self.tmp / f"node-{port}.log",
            prefix=("ip", "netns", "exec", self.ns_us),
        )  # fmt: skip

    def send_from_kernel(self, host: str, n: int) -> None:
        run(
            "ip", "netns", "exec", self.ns_wg, sys.executable, "-c", SENDER, host, str(SINK), str(n)
        )

    def dump(self) -> list[list[str]]:
        out = run("ip", "netns", "exec", self.ns_wg, "wg", "show", self.ifname, "dump").stdout
        return [line.split("\t") for line in out.splitlines()]

    def close(self) -> None:
        if self.node is not None:
            self.node.close()
        for p in (self.echo, self.wg):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)
        if self.echo is not None and self.echo.stdout is not None:
            self.echo.stdout.close()
        for ns in (self.ns_wg, self.ns_us):
            run("ip", "netns", "del", ns, check=False)
        self._log.close()

    def diagnose(self) -> str:
        log = (self.tmp / "wireguard-go.log").read_text(errors="replace")[-2000:]
        node = self.node.log() if self.node is not None else ""
        return f"wireguard-go log: {log}\nnode {node}"


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


def test_overlay_socket_round_trips_with_wireguard_go(lab):
    node = lab.node
    assert node is not None
    # The kernel behind wireguard-go answers our ICMP echo (the first one waits for the
    # handshake we initiate).
    first = node.cmd(f"ping {WG4} 10")
    assert first["ok"], lab.diagnose()
    assert node.cmd(f"ping {WG6} 5")["ok"], lab.diagnose()
    # Its UDP echo server answers our overlay socket, over both inner families.
    for addr in (WG4, WG6):
        r = node.cmd(f"reach {addr} {ECHO} 10", timeout=20)
        assert r["ok"], (r, lab.diagnose())
    # A kernel socket's datagrams reach our overlay socket.
    lab.send_from_kernel(US4, 50)
    lab.send_from_kernel(US6, 50)
    end = time.monotonic() + 5
    while (got := node.cmd("sink"))["count"] < 100 and time.monotonic() < end:
        time.sleep(0.05)
    assert got["count"] == 100 and got["distinct"] == 50, (got, lab.diagnose())

    st = node.cmd("stats")
    assert st["peer"]["has_session"] and st["peer"]["handshake_initiations"] == 1
    assert st["peer"]["endpoint"] == list(WG_UNDERLAY)
    assert not st["device_drops"] and not st["core_drops"] and not st["errors"]
    # wireguard-go agrees: a handshake with us, from our endpoint, with traffic both ways.
    peer = lab.dump()[1]
    assert peer[0] == lab.our_key.public_key.to_base64()
    assert peer[2] == f"{US_UNDERLAY[0]}:{US_UNDERLAY[1]}"
    assert int(peer[4]) > 0 and int(peer[5]) > 0 and int(peer[6]) > 0


def test_restart_and_roaming_against_wireguard_go(lab):
    """wireguard-go accepts a new handshake from our restarted node (same key, SIGKILLed
    before), and follows our node to a new UDP port without a handshake."""
    node = lab.node
    assert node is not None
    assert node.cmd(f"ping {WG4} 10")["ok"], lab.diagnose()
    node.kill()
    lab.node = node = lab.start_node(US_UNDERLAY[1])
    assert node.cmd(f"reach {WG4} {ECHO} 10", timeout=20)["ok"], lab.diagnose()
    assert node.cmd("stats")["peer"]["handshake_initiations"] == 1
    handshake = lab.dump()[1][4]

    new_port = node.cmd(f"rebind {US_UNDERLAY[0]}:{US_UNDERLAY[1] + 1}")["port"]
    assert new_port == US_UNDERLAY[1] + 1
    assert node.cmd(f"reach {WG6} {ECHO} 10", timeout=20)["ok"], lab.diagnose()
    peer = lab.dump()[1]
    assert peer[2] == f"{US_UNDERLAY[0]}:{new_port}"  # wireguard-go roamed with us
    assert peer[4] == handshake  # same session
    lab.send_from_kernel(US4, 20)  # and its kernel side reaches us at the new port
    end = time.monotonic() + 5
    while (got := node.cmd("sink"))["distinct"] < 20 and time.monotonic() < end:
        time.sleep(0.05)
    assert got["distinct"] == 20, (got, lab.diagnose())
    assert node.cmd("stats")["peer"]["handshake_initiations"] == 1
