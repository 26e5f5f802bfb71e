"""Our userspace TCP against the Linux kernel's TCP, through WireGuard (wireguard-go).

Topology (namespaces this module creates and deletes; nothing in the root namespace):

    ns "dptw<N>": wireguard-go on TUN dptw<N> (10.99.2.1/24, fd99:2::1/64), UDP
                  10.98.2.1:51820; the kernel's TCP behind it, driven by
                  ``tests/_node_proc.py --kernel`` (the same TCP jobs on ``socket``),
                  ``curl`` and ``python3 -m http.server``
         | veth0 (here) -- veth1 (there), 10.98.2.0/24; ``tc netem`` goes on these,
         | or, on a kernel without sch_netem, a ``UdpImpair`` relay in U (netns.py) that
         | each WireGuard flow is steered through for the impaired tests
    ns "dptu<N>": our node, ``tests/_node_proc.py`` (DataPlane + ThreadedDataPlane +
                  UdpTransport on 10.98.2.2:51821 + OverlayNetwork 10.99.2.2, fd99:2::2,
                  whose TCP is under test), run with ``ip netns exec``; for the baseline
                  of the long-fat-path test only, also wireguard-go on TUN dptu<N>
                  (10.99.2.3, fd99:2::3, UDP 51822) with a kernel TCP node behind it

Every transfer is random data (1 MiB chunks, each starting with its index) whose SHA-256
the sender computes as it sends and the receiver as it reads; they must agree. Shown:
100 MB both ways over IPv4 and IPv6, HTTP (curl from our server, http.client from
``http.server``), TLS both ways, half-close both ways, RST on a closed port both ways;
``slow``: 20 MB under netem loss/reordering/duplication, and one stream each way over a
100 ms RTT path against kernel <-> kernel over the same path (``RATIO`` lines).
Throughputs are printed (``-s``), never asserted.

The losses seen on the clean path are wireguard-go's: its UDP socket keeps the default
receive buffer and drops bursts (``UdpRcvbufErrors`` in W), and the kernel's TUN queue
(500 packets) overflows towards it (TX ``dropped`` of the TUN).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _node_proc import NodeProcess
from netns import (
    TAG,
    Impairment,
    Namespaces,
    UdpImpair,
    WireguardGo,
    build_udp_impair,
    in_ns,
    netem,
    netem_supported,
    popen_in,
    require,
    ss,
    stop,
    veth,
    wait_for,
)

from dataplane.wireguard.keys import PresharedKey, PrivateKey

pytestmark = pytest.mark.privileged

WG4, US4, BASE4 = "10.99.2.1", "10.99.2.2", "10.99.2.3"
WG6, US6, BASE6 = "fd99:2::1", "fd99:2::2", "fd99:2::3"
WG_UNDERLAY, US_UNDERLAY = ("10.98.2.1", 51820), ("10.98.2.2", 51821)
BASE_LISTEN = 51822  # the baseline's wireguard-go in U
WG_VETH, US_VETH = "veth0", "veth1"
FAMILIES = {"ipv4": (WG4, US4), "ipv6": (WG6, US6)}
MB = 1_000_000
BIG = 100 * MB
IMPAIRED = 20 * MB
LFN_SECONDS = 5.0  # of sending per stream
NETEM_MIX = Impairment(delay=0.02, loss=0.01, reorder=0.005, duplicate=0.001)
LONG_FAT = Impairment(delay=0.05)  # on both ends: 100 ms RTT
RELAY_PORT = 52820  # UdpImpair's sockets in U, two a flow


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.ns_wg, self.ns_us = f"dptw{TAG}", f"dptu{TAG}"
        self.tmp = tmp
        self.wg_key, self.our_key, self.base_key = (PrivateKey.generate() for _ in range(3))
        self.psk = PresharedKey.generate()
        self.namespaces = Namespaces()
        self.wg = WireguardGo(self.ns_wg, self.ns_wg, tmp)
        self.base_wg: WireguardGo | None = None
        self.node: NodeProcess | None = None  # ours, in U
        self.kernel: NodeProcess | None = None  # kernel TCP jobs, in W
        self.base: NodeProcess | None = None  # kernel TCP jobs behind wireguard-go, in U
        self.servers: list[subprocess.Popen] = []
        self._ports = itertools.count(5000)
        self.has_netem: bool | None = None

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
        self.node = NodeProcess(
            [
                "--key", self.our_key.to_base64(),
                "--bind", f"{US_UNDERLAY[0]}:{US_UNDERLAY[1]}",
                "--addr", US4, "--addr", US6,
                "--peer-key", self.wg_key.public_key.to_base64(),
                "--peer-allowed", f"{WG4}/32,{WG6}/128",
                "--peer-endpoint", f"{WG_UNDERLAY[0]}:{WG_UNDERLAY[1]}",
                "--psk", self.psk.to_base64(),
            ],
            self.tmp / "node.log",
            prefix=("ip", "netns", "exec", self.ns_us),
        )  # fmt: skip
        self.kernel = NodeProcess(
            ["--kernel"], self.tmp / "kernel.log", prefix=("ip", "netns", "exec", self.ns_wg)
        )
        assert self.node.cmd(f"ping {WG4} 10")["ok"], self.diagnose()  # the handshake
        assert self.node.cmd(f"ping {WG6} 5")["ok"], self.diagnose()

    def baseline(self) -> NodeProcess:
        """Kernel TCP behind a second wireguard-go in U (started on first use), over the
        same veth as our node: the reference for our stack on the same path."""
        if self.base is not None:
            return self.base
        self.base_wg = WireguardGo(self.ns_us, self.ns_us, self.tmp)
        self.base_wg.start()
        self.base_wg.configure(
            self.base_key,
            BASE_LISTEN,
            self.wg_key.public_key,
            allowed_ips=[f"{WG4}/32", f"{WG6}/128"],
            endpoint=WG_UNDERLAY,
        )
        self.base_wg.up(f"{BASE4}/24", f"{BASE6}/64")
        self.wg.set_peer(
            self.base_key.public_key,
            allowed_ips=[f"{BASE4}/32", f"{BASE6}/128"],
            endpoint=(US_UNDERLAY[0], BASE_LISTEN),
        )
        self.base = NodeProcess(
            ["--kernel"], self.tmp / "base.log", prefix=("ip", "netns", "exec", self.ns_us)
        )
        # the handshake, and the path: W's kernel answers a SYN to a closed port with RST
        r = self.base.cmd(f"tcpconnect addr={WG4} port={self.port()} timeout=10", timeout=20)
        assert r.get("exc") == "ConnectionRefusedError", f"baseline path: {r}"
        return self.base

    @contextlib.contextmanager
    def impaired(self, w: Impairment | None, u: Impairment | None):
        """The underlay impaired for the block: ``w`` on what W sends (netem on W's veth),
        ``u`` on what U sends (netem on U's veth). Without ``sch_netem`` in the kernel, a
        ``UdpImpair`` relay in U does it for each WireGuard flow (ours and, once started,
        the baseline's): both ends' endpoints move to the relay for the block and back
        after it. Yields how ("tc netem" or "udp_impair relay")."""
        if self.has_netem is None:
            self.has_netem = netem_supported(self.ns_wg)
        if self.has_netem:
            links = [(self.ns_wg, WG_VETH, w), (self.ns_us, US_VETH, u)]
            with contextlib.ExitStack() as stack:
                for ns, dev, imp in links:
                    if imp is not None:
                        stack.enter_context(netem([(ns, dev)], *imp.netem()))
                yield "tc netem"
            return
        require("impairment without sch_netem", "gcc", tun=False)
        exe = build_udp_impair(self.tmp)
        host = US_UNDERLAY[0]
        flows = [(self.our_key, US_UNDERLAY[1])]
        if self.base is not None:
            flows.append((self.base_key, BASE_LISTEN))
        relays: list[UdpImpair] = []
        try:
            for i, (key, port) in enumerate(flows):
                a, b = (host, RELAY_PORT + 2 * i), (host, RELAY_PORT + 2 * i + 1)
                relay = UdpImpair(self.ns_us, exe, a, WG_UNDERLAY, b, (host, port), seed=i + 1)
                relays.append(relay)
                relay.set("ab", w)
                relay.set("ba", u)
                self.wg.set_peer(key.public_key, endpoint=a)
                self._peer_endpoint(key, b)
            yield "udp_impair relay"
            for relay in relays:
                print(f"  udp_impair {relay.a}<->{relay.b}: {relay.stats()}")
        finally:
            for relay in relays:
                relay.stop()
            for key, port in flows:
                self.wg.set_peer(key.public_key, endpoint=(host, port))
                self._peer_endpoint(key, WG_UNDERLAY)

    def _peer_endpoint(self, key: PrivateKey, endpoint: tuple[str, int]) -> None:
        """Where the U-side flow of ``key`` (ours, or the baseline's) sends to W."""
        if key is self.our_key:
            assert self.node is not None
            self.node.cmd(f"endpoint {endpoint[0]}:{endpoint[1]}")
        else:
            assert self.base_wg is not None
            self.base_wg.set_peer(self.wg_key.public_key, endpoint=endpoint)

    def port(self) -> int:
        """A port no test used before (no TIME-WAIT or leftover listener to meet)."""
        return next(self._ports)

    def serve_http(self, addr: str, directory: Path) -> int:
        """``python3 -m http.server`` in W on ``addr``; returns its port once it listens."""
        port = self.port()
        proc = popen_in(
            self.ns_wg, sys.executable, "-m", "http.server", "--bind", addr,
            "--directory", str(directory), str(port),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.servers.append(proc)
        wait_for(lambda: f":{port} " in ss(self.ns_wg, "state", "listening"), 15, "http.server")
        return port

    def close(self) -> None:
        for node in (self.node, self.kernel, self.base):
            if node is not None:
                node.close()
        for proc in self.servers:
            stop(proc)
        if self.base_wg is not None:
            self.base_wg.stop()
        self.wg.stop()
        self.namespaces.close()

    def diagnose(self) -> str:
        parts = [f"ss in W:\n{ss(self.ns_wg)}", f"ss in U:\n{ss(self.ns_us)}"]
        if self.node is not None and self.node.proc.poll() is None:
            try:
                parts.append(f"our tcp_stats: {self.node.cmd('tcpstats', timeout=5)}")
                parts.append(f"our stats: {self.node.cmd('stats', timeout=5)}")
            except (OSError, RuntimeError, TimeoutError) as e:
                parts.append(f"our node does not answer: {e!r}")
            parts.append(f"node {self.node.log()}")
        elif self.node is not None:
            parts.append(f"our node exited {self.node.proc.poll()}: {self.node.log()}")
        if self.kernel is not None:
            parts.append(f"kernel node {self.kernel.log()}")
        parts.append(f"wireguard-go log: {self.wg.log_text(1500)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require("TCP interop", "ip", "wg", "wireguard-go", "tc", "ss")
    lab = Lab(tmp_path_factory.mktemp("tcp-interop"))
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate (its own CA) for every overlay address, and its key."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        from conftest import skip_or_fail

        skip_or_fail("TLS interop needs the cryptography package")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dataplane TCP interop")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in (WG4, US4, WG6, US6)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(d / "key.pem", 0o600)
    return d / "cert.pem", d / "key.pem"


# -- helpers ------------------------------------------------------------------------------------


def wait_job(lab: Lab, node: NodeProcess, job: int, timeout: float, what: str) -> dict:
    """The job's result; fails (with ``ss`` on both sides, taken while it is stuck) when
    it has not ended within ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        step = max(0.1, min(5.0, end - time.monotonic()))
        r = node.cmd(f"tcpwait job={job} timeout={step}", timeout=step + 15)
        if r["done"]:
            return r
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not done within {timeout} s\n{lab.diagnose()}")


def transfer(
    lab: Lab,
    src: NodeProcess,
    dst: NodeProcess,
    addr: str,
    what: str,
    *,
    size: int | None = None,
    seconds: float | None = None,
    close: str = "close",
    reply: int | None = None,
    timeout: float = 120,
    send_opts: str = "",
    sink_opts: str = "",
) -> tuple[dict, dict]:
    """One connection from ``src`` to ``dst``'s listener on ``addr``; ``size`` bytes (or
    ``seconds`` of sending) from ``src``; both results, checked to have the same SHA-256."""
    port = lab.port()
    amount = f"bytes={size}" if size is not None else f"seconds={seconds}"
    extra = f" reply={reply}" if reply is not None else ""
    sink = dst.cmd(
        f"tcp role=sink addr={addr} port={port} close={close} timeout={timeout}{extra} {sink_opts}"
    )
    send = src.cmd(
        f"tcp role=send addr={addr} port={port} {amount} close={close} timeout={timeout} "
        f"{send_opts}"
    )
    sent = wait_job(lab, src, send["job"], timeout, f"{what}: sender")
    assert not sent.get("failed"), f"{what}: sender: {sent}\n{lab.diagnose()}"
    got = wait_job(lab, dst, sink["job"], 30, f"{what}: receiver")
    assert not got.get("failed"), f"{what}: receiver: {got}\n{lab.diagnose()}"
    assert got["bytes"] == sent["sent"], f"{what}: sent {sent}, received {got}"
    assert got["sha256"] == sent["sha256"], f"{what}: sent {sent}, received {got}"
    if size is not None:
        assert sent["sent"] == size
    return sent, got


def udp_rcvbuf_errors(ns: str) -> int:
    """``Udp: RcvbufErrors`` of namespace ``ns``: datagrams dropped at a full socket buffer
    (in W: wireguard-go's, the loss the clean path has)."""
    lines = [ln.split() for ln in in_ns(ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [ln for ln in lines if ln and ln[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def mbit(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1e6 if seconds > 0 else float("inf")


def report(what: str, got: dict) -> float:
    rate = mbit(got["bytes"], got["seconds"])
    print(f"\nTHROUGHPUT {what}: {rate:.1f} Mbit/s ({got['bytes']} B in {got['seconds']:.2f} s)")
    return rate


def ours_info(sent: dict, got: dict) -> dict:
    """Our side's tcp_info() (sender or receiver, whichever is ours)."""
    return sent.get("info") or got.get("info") or {}


def short(info: dict) -> str:
    keys = ("cwnd", "ssthresh", "srtt", "rto", "retrans_segs", "fast_recoveries", "timeouts")
    keys += ("dup_segs", "ooo_segs", "snd_wnd", "rcv_wnd", "snd_wscale", "rcv_wscale", "sack")
    return " ".join(f"{k}={info[k]}" for k in keys if k in info)


def directions(lab: Lab):
    return {
        "ours-to-kernel": (lab.node, lab.kernel, 0),  # our client -> kernel server (W)
        "kernel-to-ours": (lab.kernel, lab.node, 1),  # kernel client -> our server (U)
    }


# -- 1. bulk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_100mb_transfer_verifies(lab, family, direction):
    src, dst, side = directions(lab)[direction]
    addr = FAMILIES[family][side]
    what = f"100 MB {direction} {family}"
    before = udp_rcvbuf_errors(lab.ns_wg)
    sent, got = transfer(lab, src, dst, addr, what, size=BIG, timeout=150)
    report(what, got)
    print(f"  UDP receive-buffer drops in W: {udp_rcvbuf_errors(lab.ns_wg) - before}")
    print(f"  ours: {short(ours_info(sent, got))}")


# -- 2. HTTP ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    data = os.urandom(5 * 1024 * 1024 + 12345)
    (d / "blob.bin").write_bytes(data)
    return d, hashlib.sha256(data).hexdigest(), len(data)


def url(addr: str, port: int, path: str) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}{path}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_curl_fetches_from_our_http_server(lab, www, family):
    require("HTTP interop", "curl")
    directory, digest, size = www
    addr = FAMILIES[family][1]
    port = lab.port()
    lab.node.cmd(f"tcp role=httpserve addr={addr} port={port} dir={directory}")
    out = lab.tmp / f"curl-{family}.bin"
    r = in_ns(
        lab.ns_wg, "curl", "-sS", "-g", "--max-time", "60", "-o", str(out),
        "-w", "%{http_code} %{speed_download}", url(addr, port, "/blob.bin"),
        check=False, timeout=90,
    )  # fmt: skip
    assert r.returncode == 0, (r.returncode, r.stderr, lab.diagnose())
    code, speed = r.stdout.split()
    assert code == "200"
    body = out.read_bytes()
    assert len(body) == size and hashlib.sha256(body).hexdigest() == digest
    print(f"\nTHROUGHPUT curl <- our http server {family}: {float(speed) * 8 / 1e6:.1f} Mbit/s")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_http_client_fetches_from_kernel_http_server(lab, www, family):
    directory, digest, size = www
    addr = FAMILIES[family][0]
    port = lab.serve_http(addr, directory)
    job = lab.node.cmd(f"tcp role=httpget addr={addr} port={port} path=/blob.bin")["job"]
    r = wait_job(lab, lab.node, job, 60, "http.client GET")
    assert not r.get("failed"), f"http.client GET over our TCP: {r}\n{lab.diagnose()}"
    assert r["status"] == 200 and r["bytes"] == size and r["sha256"] == digest, r
    print(f"\nTHROUGHPUT http.client <- kernel http.server {family}: ", end="")
    print(f"{mbit(r['bytes'], r['seconds']):.1f} Mbit/s")


# -- 3. TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_tls_both_ways(lab, cert, family, direction):
    """A TLS client sends 8 MB (framed: TLS has no half-close) to a TLS server, which
    answers the SHA-256 it read; ours on a real descriptor (``fd=True``) under ``ssl``."""
    certfile, keyfile = cert
    src, dst, side = directions(lab)[direction]
    addr = FAMILIES[family][side]
    sent, got = transfer(
        lab, src, dst, addr, f"TLS {direction} {family}", size=8 * MB, close="frame",
        send_opts=f"tls=client ca={certfile}", sink_opts=f"tls=server cert={certfile} "
        f"key={keyfile}", timeout=60,
    )  # fmt: skip
    assert sent["reply"] == {"bytes": 8 * MB, "sha256": sent["sha256"]}
    report(f"TLS {direction} {family}", got)


# -- 4. half-close ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_half_close(lab, family, direction):
    """The client sends, ``shutdown(SHUT_WR)``; the server reads to EOF, then replies (a
    line with what it read and 1 MB more) on the half-closed connection, then closes; the
    client reads the reply to EOF."""
    src, dst, side = directions(lab)[direction]
    addr = FAMILIES[family][side]
    sent, got = transfer(
        lab, src, dst, addr, f"half-close {direction} {family}", size=4 * MB, close="half",
        reply=MB, timeout=60,
    )  # fmt: skip
    assert sent["reply"] == {"bytes": 4 * MB, "sha256": sent["sha256"]}, sent
    assert sent["reply_bytes"] == MB and sent["reply_sha256"] == got["reply_sha256"]


# -- 5. RST on a closed port --------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_connect_to_closed_port_is_refused(lab, family):
    wg_addr, our_addr = FAMILIES[family]
    port = lab.port()  # nobody listens there
    r = lab.node.cmd(f"tcpconnect addr={wg_addr} port={port} timeout=10", timeout=20)
    assert not r["ok"] and r["exc"] == "ConnectionRefusedError", (r, lab.diagnose())
    assert r["elapsed"] < 3, r  # the kernel's RST, not a timeout after SYN retries
    r = lab.kernel.cmd(f"tcpconnect addr={our_addr} port={port} timeout=10", timeout=20)
    assert not r["ok"] and r["exc"] == "ConnectionRefusedError", (r, lab.diagnose())
    assert r["errno"] == 111 and r["elapsed"] < 3, r  # ECONNREFUSED
    # and both sides still talk afterwards
    assert lab.node.cmd(f"ping {wg_addr} 5")["ok"]


# -- 6. impaired path ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["w-veth", "both-veths"])
@pytest.mark.parametrize("direction", ["ours-to-kernel", "kernel-to-ours"])
def test_transfer_under_netem(lab, direction, where):
    """20 MB under delay 20ms loss 1% reorder 0.5% duplicate 0.1% on W's veth (what the
    kernel sends; our sender then meets only lossy ACKs), and on both veths (both ways)."""
    src, dst, side = directions(lab)[direction]
    addr = FAMILIES["ipv4"][side]
    what = f"20 MB netem({where}) {direction}"
    with lab.impaired(NETEM_MIX, NETEM_MIX if where == "both-veths" else None) as how:
        print(f"\n{what} via {how}")
        before = udp_rcvbuf_errors(lab.ns_wg)
        sent, got = transfer(lab, src, dst, addr, what, size=IMPAIRED, timeout=120)
        drops = udp_rcvbuf_errors(lab.ns_wg) - before
    report(what, got)
    print(f"  UDP receive-buffer drops in W (besides netem's): {drops}")
    print(f"  ours: {short(ours_info(sent, got))}")


# -- 7. long fat path ---------------------------------------------------------------------------


@pytest.mark.slow
def test_long_fat_path_against_kernel_baseline(lab):
    """One stream each way over a 100 ms RTT path (delay 50ms on both veth ends, no loss),
    ``LFN_SECONDS`` of sending each: kernel <-> ours, and the baseline kernel <-> kernel
    over the same veth (a second wireguard-go in U), every kernel sender on CUBIC like
    ours; then the kernel senders on this machine's default congestion control, for
    reference. Only completion and the hashes are asserted; the ratios are printed."""
    base = lab.baseline()
    default_cc = in_ns(lab.ns_wg, "sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout
    default_cc = default_cc.strip()
    rates = {}
    with lab.impaired(LONG_FAT, LONG_FAT) as how:
        print(f"\nlong fat path (RTT 100 ms) via {how}")
        cases = [
            ("ours->kernel", lab.node, lab.kernel, WG4, ""),
            ("kernelU->kernelW", base, lab.kernel, WG4, "cc=cubic"),
            ("kernel->ours", lab.kernel, lab.node, US4, "cc=cubic"),
            ("kernelW->kernelU", lab.kernel, base, BASE4, "cc=cubic"),
        ]
        if default_cc != "cubic":
            cases += [
                (f"kernelU->kernelW[{default_cc}]", base, lab.kernel, WG4, ""),
                (f"kernel[{default_cc}]->ours", lab.kernel, lab.node, US4, ""),
                (f"kernelW[{default_cc}]->kernelU", lab.kernel, base, BASE4, ""),
            ]
        for name, src, dst, addr, opts in cases:
            before = udp_rcvbuf_errors(lab.ns_wg), udp_rcvbuf_errors(lab.ns_us)
            sent, got = transfer(
                lab, src, dst, addr, f"LFN {name}", seconds=LFN_SECONDS, send_opts=opts
            )
            rates[name] = report(f"100ms-RTT {name}", got)
            drops = (
                udp_rcvbuf_errors(lab.ns_wg) - before[0],
                udp_rcvbuf_errors(lab.ns_us) - before[1],
            )
            print(f"  UDP receive-buffer drops: W {drops[0]}, U {drops[1]}")
            if info := ours_info(sent, got):
                print(f"  ours: {short(info)}")
    pairs = [("ours->kernel", "kernelU->kernelW"), ("kernel->ours", "kernelW->kernelU")]
    if default_cc != "cubic":
        pairs.append(
            (f"kernel[{default_cc}]->ours", f"kernelW[{default_cc}]->kernelU"),
        )
    for ours, kernel in pairs:
        print(
            f"RATIO 100ms-RTT {ours} / {kernel}: {rates[ours] / rates[kernel]:.2f} "
            f"({rates[ours]:.1f} / {rates[kernel]:.1f} Mbit/s)"
        )
