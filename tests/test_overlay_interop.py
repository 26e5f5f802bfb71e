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

import select
import subprocess
import sys
import time

import pytest
from _node_proc import NodeProcess
from netns import TAG, Namespaces, WireguardGo, in_ns, lab_up, popen_in, require, stop, veth

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


class Lab:
    def __init__(self, tmp_path) -> None:
        self.ns_wg, self.ns_us, self.ifname = f"dpow{TAG}", f"dpou{TAG}", f"dpow{TAG}"
        self.tmp = tmp_path
        self.wg_key, self.our_key = PrivateKey.generate(), PrivateKey.generate()
        self.psk = PresharedKey.generate()
        self.namespaces = Namespaces()
        self.wg = WireguardGo(self.ns_wg, self.ifname, tmp_path)
        self.echo: subprocess.Popen | None = None
        self.node: NodeProcess | None = None

    def up(self) -> None:
        self.namespaces.add(self.ns_wg)
        self.namespaces.add(self.ns_us)
        veth(self.ns_wg, self.ns_us, f"{WG_UNDERLAY[0]}/24", f"{US_UNDERLAY[0]}/24")
        self.wg.start()
        self.wg.configure(
            self.wg_key,
            WG_UNDERLAY[1],
            self.our_key.public_key,
            psk=self.psk,
            allowed_ips=[f"{US4}/32", f"{US6}/128"],
            endpoint=US_UNDERLAY,
        )
        self.wg.up(f"{WG4}/24", f"{WG6}/64")

        self.echo = popen_in(
            self.ns_wg, sys.executable, "-c", ECHO_SERVER, str(ECHO), "120",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
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
        in_ns(self.ns_wg, sys.executable, "-c", SENDER, host, str(SINK), str(n))

    def dump(self) -> list[list[str]]:
        return self.wg.dump()

    def close(self) -> None:
        if self.node is not None:
            self.node.close()
        stop(self.echo)
        if self.echo is not None and self.echo.stdout is not None:
            self.echo.stdout.close()
        self.wg.stop()
        self.namespaces.close()

    def diagnose(self) -> str:
        log = self.wg.log_text(2000)
        node = self.node.log() if self.node is not None else ""
        return f"wireguard-go log: {log}\nnode {node}"


@pytest.fixture
def lab(tmp_path):
    require("interop", "ip", "wg", "wireguard-go")
    with lab_up(Lab(tmp_path)) as lab:
        yield lab


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
