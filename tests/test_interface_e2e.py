"""End to end: ``dataplane up`` in one namespace, wireguard-go in another, real kernel traffic.

Topology (namespaces and everything in them created here and deleted at the end, also
when a test fails; nothing in the root namespace except the UAPI sockets, whose directory
is machine-wide):

    ns "dpe2g<N>": wireguard-go on TUN dpgo<N> (10.99.0.1/24, fd99::1/64), UDP 10.98.0.1:51820
         | veth 10.98.0.0/24
    ns "dpe2u<N>": `python -m dataplane up dpus<N>.conf` -> TUN dpus<N> (10.99.0.2/24,
                   fd99::2/64), UDP :51821, UAPI /var/run/wireguard/dpus<N>.sock

The kernel of each namespace produces and consumes the traffic (ping, iperf3), so every
packet crosses our TUN transport, our core and our UDP transport. The tests run in file
order on one lab: ping, iperf3, counters through ``wg``/``dataplane show``, then down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail
from icmp_ping import ping_cmd
from netns import (
    REPO,
    SOCK_DIR,
    TAG,
    Namespaces,
    WireguardGo,
    in_ns,
    ip,
    popen_in,
    remove_stale_socket,
    require,
    run,
    secret_file,
    stop,
    veth,
    wait_for,
)

from dataplane.wireguard.keys import PresharedKey, PrivateKey

pytestmark = pytest.mark.privileged

NS_GO, NS_US = f"dpe2g{TAG}", f"dpe2u{TAG}"
IF_GO, IF_US = f"dpgo{TAG}", f"dpus{TAG}"
GO_UNDERLAY, US_UNDERLAY = ("10.98.0.1", 51820), ("10.98.0.2", 51821)
GO4, US4, GO6, US6 = "10.99.0.1", "10.99.0.2", "fd99::1", "fd99::2"
IPERF_SECONDS = 3
# wg-quick's default. A full-size packet is padded only up to the MTU, so its datagram
# (16 + 1420 + 16 bytes) is not a multiple of 16: the ping at full size below checks that
# such packets get through whole in both directions.
MTU = 1420


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.go_key, self.us_key = PrivateKey.generate(), PrivateKey.generate()
        self.psk = PresharedKey.generate()
        self.namespaces = Namespaces()
        self.go = WireguardGo(NS_GO, IF_GO, tmp)
        self.us: subprocess.Popen | None = None
        self.us_log = tmp / "dataplane.log"
        self.conf = tmp / f"{IF_US}.conf"
        self.results: dict[str, float] = {}

    def setup(self) -> None:
        self.namespaces.add(NS_GO)
        self.namespaces.add(NS_US)
        veth(NS_GO, NS_US, f"{GO_UNDERLAY[0]}/24", f"{US_UNDERLAY[0]}/24")
        self.start_wireguard_go()
        self.conf.write_text(
            "# our side, written like a wg-quick file\n"
            "[Interface]\n"
            f"PrivateKey = {self.us_key.to_base64()}\n"
            f"ListenPort = {US_UNDERLAY[1]}\n"
            f"Address = {US4}/24, {US6}/64\n"
            f"MTU = {MTU}\n"
            "\n[Peer]\n"
            f"PublicKey = {self.go_key.public_key.to_base64()}\n"
            f"PresharedKey = {self.psk.to_base64()}\n"
            f"AllowedIPs = {GO4}/32, {GO6}/128\n"
            f"Endpoint = {GO_UNDERLAY[0]}:{GO_UNDERLAY[1]}\n"
        )
        os.chmod(self.conf, 0o600)
        self.us = self.start_us()

    def start_wireguard_go(self, us_port: int = US_UNDERLAY[1]) -> None:
        self.go.start()
        self.go.configure(
            self.go_key,
            GO_UNDERLAY[1],
            self.us_key.public_key,
            psk=self.psk,
            allowed_ips=[f"{US4}/32", f"{US6}/128"],
            endpoint=(US_UNDERLAY[0], us_port),
        )
        self.go.up(f"{GO4}/24", f"{GO6}/64", mtu=MTU)

    def start_us(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.us_log, "a") as log:  # the child keeps its own descriptor
            proc = popen_in(
                NS_US, sys.executable, "-m", "dataplane", "up", "-f", "-v", str(self.conf),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
            )  # fmt: skip
        wait_for(lambda: os.path.exists(f"{SOCK_DIR}/{IF_US}.sock"), 15, "dataplane up", proc)
        return proc

    def close(self) -> None:
        stop(self.us)
        self.go.stop()
        self.namespaces.close()
        remove_stale_socket(IF_US)  # only if `dataplane up` was SIGKILLed

    def logs(self) -> str:
        return (
            "--- dataplane ---\n"
            + self.us_log.read_text(errors="replace")[-3000:]
            + "\n--- wireguard-go ---\n"
            + self.go.log_text(1500)
        )


def dump(name: str) -> list[list[str]]:
    out = run("wg", "show", name, "dump").stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require("end-to-end interface test", "ip", "wg", "wireguard-go")
    lab = Lab(tmp_path_factory.mktemp("e2e"))
    try:
        lab.setup()
        yield lab
    except BaseException:
        print(lab.logs())
        raise
    finally:
        lab.close()


def ping(lab: Lab, ns: str, target: str, count: int = 3) -> None:
    r = run(*ping_cmd(ns, target, count), check=False)
    assert r.returncode == 0, r.stdout + r.stderr + lab.logs()


def test_ping_both_ways_ipv4_and_ipv6(lab):
    # First from us: the kernel's packet waits in our per-peer staging during the handshake.
    ping(lab, NS_US, GO4)
    ping(lab, NS_GO, US4)
    ping(lab, NS_US, GO6)
    ping(lab, NS_GO, US6)
    # Packets of the full interface MTU, not fragmented, both ways (the reply is as large).
    r = run(*ping_cmd(NS_US, GO4, 2, size=MTU - 28, df=True), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_iperf3_tcp_transfer_completes(lab):
    if shutil.which("iperf3") is None:
        skip_or_fail("iperf3 is not installed")
    server = popen_in(NS_GO, "iperf3", "-s", "-1", "-B", GO4, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.3)
        r = in_ns(NS_US, "iperf3", "-c", GO4, "-t", str(IPERF_SECONDS), "-J", "--connect-timeout",
                  "3000", check=False, timeout=IPERF_SECONDS + 15)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr + lab.logs()
        result = json.loads(r.stdout)
        received = result["end"]["sum_received"]
        assert received["bytes"] > 1_000_000
        lab.results["iperf_bytes"] = received["bytes"]
        lab.results["gbps"] = received["bits_per_second"] / 1e9
        print(f"\niperf3 TCP dataplane -> wireguard-go: {lab.results['gbps']:.3f} Gb/s")
    finally:
        stop(server)


def test_wg_show_through_our_socket_has_handshake_and_counters(lab):
    theirs = dump(IF_GO)  # read first: everything they counted, we had counted too
    ours = dump(IF_US)
    assert len(ours) == 2 and len(theirs) == 2
    iface, peer = ours
    assert iface[0] == lab.us_key.to_base64() and iface[2] == str(US_UNDERLAY[1])
    pub, psk, endpoint, allowed, handshake, rx, tx, keepalive = peer
    assert pub == lab.go_key.public_key.to_base64() and psk == lab.psk.to_base64()
    assert endpoint == f"{GO_UNDERLAY[0]}:{GO_UNDERLAY[1]}"
    assert set(allowed.split(",")) == {f"{GO4}/32", f"{GO6}/128"}
    assert 0 < time.time() - int(handshake) < 120
    rx, tx = int(rx), int(tx)
    go_rx, go_tx = int(theirs[1][5]), int(theirs[1][6])
    # Byte counters count sealed transport data on both sides. wireguard-go can only have
    # decrypted what we sent (it loses some of a TCP burst in its 212 KB socket buffer,
    # so not all of it), and we received what it sent (the ACK direction hardly loses).
    assert 0 < go_rx <= tx, (go_rx, tx)
    assert 0.9 * go_tx <= rx <= go_tx + 2048, (rx, go_tx)
    print(f"\nours tx {tx} / wireguard-go rx {go_rx}; ours rx {rx} / wireguard-go tx {go_tx}")
    # Every payload byte iperf3 received crossed the tunnel in a sealed packet.
    assert go_rx > lab.results.get("iperf_bytes", 0)
    text = run(sys.executable, "-m", "dataplane", "show", IF_US).stdout
    assert f"interface: {IF_US}" in text and f"peer: {pub}" in text
    assert "seconds ago" in text and "received" in text and f"{GO4}/32" in text


def test_listen_port_change_through_wg_moves_the_socket(lab):
    # A busy port is refused (EADDRINUSE through wg) and the socket stays where it was.
    holder = popen_in(
        NS_US, sys.executable, "-c",
        "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('0.0.0.0', 51823)); print('bound', flush=True); time.sleep(20)",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        r = run("wg", "set", IF_US, "listen-port", "51823", check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
        assert dump(IF_US)[0][2] == str(US_UNDERLAY[1])
    finally:
        stop(holder)
    run("wg", "set", IF_US, "listen-port", "51822")
    assert dump(IF_US)[0][2] == "51822"
    # Our packets now leave from the new port; wireguard-go roams to it and answers there.
    ping(lab, NS_US, GO4)
    ping(lab, NS_GO, US6)
    assert dump(IF_GO)[1][2] == f"{US_UNDERLAY[0]}:51822"


def test_private_key_change_through_wg_keeps_the_interface_working(lab):
    new_key = PrivateKey.generate()
    run("wg", "set", IF_US, "private-key", secret_file(lab.tmp / "us-new.key", new_key))
    assert dump(IF_US)[0][1] == new_key.public_key.to_base64()
    lab.go.remove_peer(lab.us_key.public_key)
    lab.go.set_peer(new_key.public_key, lab.psk, [f"{US4}/32", f"{US6}/128"],
                    (US_UNDERLAY[0], 51822))  # fmt: skip
    # The rebuilt core still delivers to the TUN and sends through the same UDP socket.
    ping(lab, NS_GO, US4)
    ping(lab, NS_US, GO6)
    lab.us_key = new_key


def test_roaming_and_restarted_wireguard_go(lab):
    # wireguard-go moves to another port: its next authenticated packet moves our endpoint.
    lab.go.set("listen-port", "51830")
    ping(lab, NS_GO, US4)
    assert dump(IF_US)[1][2] == f"{GO_UNDERLAY[0]}:51830"
    ping(lab, NS_US, GO4)
    # Killed and restarted (same key, fresh state, back on its first port): its new
    # handshake replaces our stale session and traffic flows both ways again.
    lab.go.stop()
    ip(NS_GO, "link", "del", IF_GO, check=False)
    lab.start_wireguard_go(us_port=51822)
    ping(lab, NS_GO, US4)
    ping(lab, NS_US, GO6)
    assert dump(IF_US)[1][2] == f"{GO_UNDERLAY[0]}:{GO_UNDERLAY[1]}"


def test_down_removes_interface_and_socket(lab):
    r = in_ns(NS_US, sys.executable, "-m", "dataplane", "down", IF_US, check=False)
    assert r.returncode == 0, r.stderr
    assert lab.us is not None
    assert lab.us.wait(10) == 0, lab.logs()
    assert not os.path.exists(f"{SOCK_DIR}/{IF_US}.sock")
    assert IF_US not in run("ip", "-n", NS_US, "link", "show").stdout
    log = lab.us_log.read_text()
    assert "Traceback" not in log and "UAPI socket deleted" in log


def dataplane(*args: str, ns: str | None = None, user: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dataplane", *args]
    if user:
        cmd = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", *cmd]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return run(*cmd, check=False, timeout=30)


def one_line_error(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dataplane: ") and text in lines[0], lines


def test_up_errors_are_one_line_without_traceback(lab):
    one_line_error(dataplane("up", str(lab.tmp / "missing.conf")), 2, "cannot read")
    bad = lab.tmp / "bad0.conf"
    bad.write_text("[Interface]\nPrivateKey = not-a-key\n")
    one_line_error(dataplane("up", str(bad)), 2, "bad0.conf:2: PrivateKey")
    # The name is taken by a non-TUN interface in that namespace.
    run("ip", "-n", NS_US, "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
    taken = lab.tmp / "taken0.conf"
    taken.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate().to_base64()}\n")
    one_line_error(dataplane("up", str(taken), ns=NS_US), 1, "not a TUN device")
    assert not os.path.exists(f"{SOCK_DIR}/taken0.sock")
    # Root without CAP_NET_ADMIN (dropped from the bounding set, so exec keeps it off):
    # the same refusal as for an ordinary user, without another user's Python setup.
    nobody = lab.tmp / "dpnocap.conf"
    nobody.write_text(taken.read_text())
    one_line_error(dataplane("up", str(nobody), ns=NS_US, user=True), 1, "run as root")
    one_line_error(dataplane("down", "dpnothere"), 1, "is not up")


def test_sigterm_tears_down_cleanly(lab):
    # After `down` above, the file (with the key set through wg since) comes up again and
    # stops on SIGTERM.
    text = lab.conf.read_text().splitlines()
    text = [f"PrivateKey = {lab.us_key.to_base64()}" if t.startswith("PrivateKey") else t
            for t in text]  # fmt: skip
    lab.conf.write_text("\n".join(text) + "\n")
    proc = lab.start_us()
    lab.us = proc
    ping(lab, NS_US, GO4, count=2)
    proc.terminate()
    assert proc.wait(10) == 0, lab.logs()
    assert not os.path.exists(f"{SOCK_DIR}/{IF_US}.sock")
    assert IF_US not in run("ip", "-n", NS_US, "link", "show").stdout
    log = lab.us_log.read_text()
    assert "signal SIGTERM" in log and "Traceback" not in log and "failed" not in log


def iperf(server_ns: str, client_ns: str, target: str, seconds: int) -> dict:
    server = popen_in(server_ns, "iperf3", "-s", "-1", "-B", target, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.3)
        r = in_ns(client_ns, "iperf3", "-c", target, "-t", str(seconds), "-J",
                  "--connect-timeout", "3000", check=False, timeout=seconds + 15)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        return json.loads(r.stdout)["end"]["sum_received"]
    finally:
        stop(server)


def test_both_ends_ours(tmp_path):
    """Two `dataplane up` instances in two namespaces carry ping (v4, v6) and iperf3."""
    require("end-to-end interface test", "ip", "iperf3")
    ns = (f"dpe2a{TAG}", f"dpe2b{TAG}")
    names = (f"dpa{TAG}", f"dpb{TAG}")
    keys = (PrivateKey.generate(), PrivateKey.generate())
    procs: list[subprocess.Popen] = []
    with open(tmp_path / "ours.log", "w") as log, Namespaces(*ns):
        try:
            veth(ns[0], ns[1], "10.98.0.1/24", "10.98.0.2/24")
            for i, n in enumerate(ns):
                other = 1 - i
                conf = tmp_path / f"{names[i]}.conf"
                conf.write_text(
                    f"[Interface]\nPrivateKey = {keys[i].to_base64()}\nListenPort = {51820 + i}\n"
                    f"Address = 10.99.0.{i + 1}/24, fd99::{i + 1}/64\nMTU = {MTU}\n"
                    f"[Peer]\nPublicKey = {keys[other].public_key.to_base64()}\n"
                    f"AllowedIPs = 10.99.0.{other + 1}/32, fd99::{other + 1}/128\n"
                    f"Endpoint = 10.98.0.{other + 1}:{51820 + other}\n"
                )
                procs.append(
                    popen_in(n, sys.executable, "-m", "dataplane", "up", "-f", str(conf),
                             stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
                )  # fmt: skip
                sock = f"{SOCK_DIR}/{names[i]}.sock"
                wait_for(lambda p=sock: os.path.exists(p), 15, "dataplane up", procs[-1])
            for src, dst in ((0, "10.99.0.2"), (1, "10.99.0.1"), (0, "fd99::2"), (1, "fd99::1")):
                r = run(*ping_cmd(ns[src], dst), check=False)
                assert r.returncode == 0, r.stdout + (tmp_path / "ours.log").read_text()
            got = iperf(ns[1], ns[0], "10.99.0.2", IPERF_SECONDS)
            assert got["bytes"] > 1_000_000
            print(f"\niperf3 TCP dataplane -> dataplane: {got['bits_per_second'] / 1e9:.3f} Gb/s")
            for p in procs:
                p.terminate()
            for p in procs:
                assert p.wait(10) == 0
            assert "Traceback" not in (tmp_path / "ours.log").read_text()
        finally:
            for p in procs:
                stop(p)
