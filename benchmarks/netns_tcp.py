"""One TCP stream between our in-process stack and the kernel's TCP behind ``dataplane up``.

    sudo python3 benchmarks/netns_tcp.py [--seconds 5] [--delay-ms 0]

Two namespaces joined by a veth (10.98.0.1/2). In B, ``python -m dataplane up`` (inner
address 10.99.0.2, MTU 1420) with the kernel's TCP behind it. In A, for the case
measured: our node in one process (DataPlane + ThreadedDataPlane + UdpTransport on the
veth + OverlayNetwork 10.99.0.1, the TCP of ``dataplane/netstack``). For the baseline, in
the same run: A runs ``dataplane up`` too and the same Python loops use kernel sockets, so
both sides are kernel TCP through two of our interfaces. Each direction streams for
``--seconds`` (a sender loop of ``sendall`` of 1 MiB, a receiver loop of ``recv_into``;
the bytes are counted at the receiver). ``--delay-ms`` (RTT = 2 x delay), ``--loss``,
``--reorder`` and ``--duplicate`` impair both directions of the WireGuard underlay
through ``tests/netns.py``'s ``UdpImpair`` relay in B (netem's semantics; this kernel has
no netem), the same for both cases. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "tests"))
from netns import Impairment, UdpImpair, build_udp_impair  # noqa: E402

from dataplane.wireguard.keys import PrivateKey  # noqa: E402

SOCK_DIR = "/var/run/wireguard"
MTU = 1420
PORT = 5301
CHUNK = 1 << 20
RELAY_PORT = 61821
ENDPOINTS = ["10.98.0.1:51820", "10.98.0.2:51821"]


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


# -- the roles, run inside a namespace ---------------------------------------------------


def _open_overlay(args):
    from dataplane import DataPlane, PublicKey, ThreadedDataPlane
    from dataplane.netstack import OverlayNetwork
    from dataplane.transport.udp import UdpTransport

    key = PrivateKey.from_base64(args.key)
    driver = ThreadedDataPlane(DataPlane(key), name="ours").start()
    udp = UdpTransport(driver, ("10.98.0.1", 51820))
    net = OverlayNetwork(driver, ["10.99.0.1"], name="ours")
    with driver.locked() as core:
        core.set_addresses(["10.99.0.1"], overlay=net.id)
        core.add_peer(
            PublicKey.from_base64(args.peer_key),
            allowed_ips=["10.99.0.2/32"],
            endpoint=("10.98.0.2", RELAY_PORT if args.relay else 51821),
            underlay=udp.id,
        )
    return net, (net, udp, driver)


def role(args) -> None:
    closers: tuple = ()
    if args.role.startswith("overlay"):
        net, closers = _open_overlay(args)
        connect = lambda: net.create_connection((args.target, PORT), timeout=20)  # noqa: E731
        listen = lambda: net.create_server(("", PORT))  # noqa: E731
    else:
        connect = lambda: socket.create_connection((args.target, PORT), timeout=20)  # noqa: E731
        listen = lambda: socket.create_server(("0.0.0.0", PORT))  # noqa: E731
    if args.role.endswith("send"):
        for _ in range(100):  # the far side may still be coming up
            try:
                conn = connect()
                break
            except OSError:
                time.sleep(0.1)
        chunk = bytes(range(256)) * (CHUNK // 256)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            conn.sendall(chunk)
        # Wait for the receiver's close before leaving: our stack lives in this process,
        # so exiting with data in flight would reset the connection.
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(60)
        conn.recv(1)
        if os.environ.get("NETNS_TCP_DEBUG") and hasattr(conn, "tcp_info"):
            print(json.dumps(conn.tcp_info()), file=sys.stderr, flush=True)
        conn.close()
        print(json.dumps({"sent": True}), flush=True)
    else:
        lst = listen()
        print(json.dumps({"listening": True}), flush=True)
        conn, _ = lst.accept()
        buf = bytearray(CHUNK)
        total = 0
        t0 = time.monotonic()
        while n := conn.recv_into(buf):
            total += n
        dt = time.monotonic() - t0
        extra = {}
        if os.environ.get("NETNS_TCP_DEBUG") and hasattr(conn, "tcp_info"):
            extra = {"info": conn.tcp_info(), "stack": net.tcp_stats()}
        print(json.dumps({"bytes": total, "seconds": dt, **extra}), flush=True)
        if extra:
            print(json.dumps(extra), file=sys.stderr, flush=True)
        conn.close()
    for c in closers:
        c.close()


# -- the controller ------------------------------------------------------------------------


def start_up(ns: str, name: str, tmp: Path, i: int, keys: list[PrivateKey]) -> subprocess.Popen:
    o = 1 - i
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys[i].to_base64()}\nListenPort = {51820 + i}\n"
        f"Address = 10.99.0.{i + 1}/24\nMTU = {MTU}\n[Peer]\n"
        f"PublicKey = {keys[o].public_key.to_base64()}\nAllowedIPs = 10.99.0.{o + 1}/32\n"
        f"Endpoint = {ENDPOINTS[o]}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane", "up", "-f", str(conf)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    end = time.monotonic() + 15
    while not os.path.exists(f"{SOCK_DIR}/{name}.sock"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not come up")
        time.sleep(0.05)
    return proc


def run_role(
    ns: str, role_name: str, seconds: float, keys: list[PrivateKey], target: str
) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, __file__, "--role", role_name,
         "--seconds", str(seconds), "--key", keys[0].to_base64(),
         "--peer-key", keys[1].public_key.to_base64(), "--target", target,
         *(["--relay"] if RELAYED else [])],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def stream(ns_a: str, ns_b: str, a_kind: str, a_sends: bool, seconds: float, keys) -> float:
    """Gb/s of one stream between A (``a_kind``: overlay | kernel) and B (kernel)."""
    if a_sends:
        sink = run_role(ns_b, "kernel-sink", seconds, keys, "")
        assert json.loads(sink.stdout.readline()).get("listening")
        src = run_role(ns_a, f"{a_kind}-send", seconds, keys, "10.99.0.2")
    else:
        sink = run_role(ns_a, f"{a_kind}-sink", seconds, keys, "")
        assert json.loads(sink.stdout.readline()).get("listening")
        src = run_role(ns_b, "kernel-send", seconds, keys, "10.99.0.1")
    try:
        result = json.loads(sink.stdout.readline())
        src.wait(seconds + 30)
        return result["bytes"] * 8 / result["seconds"] / 1e9
    finally:
        for p in (sink, src):
            if p.poll() is None:
                p.kill()
            p.wait(5)


RELAYED = False


def start_relay(ns: str, args, tmp: Path) -> UdpImpair:
    """The impairment relay in B, in front of B's WireGuard port, both ways impaired."""
    relay = UdpImpair(
        ns,
        build_udp_impair(tmp),
        ("10.98.0.2", RELAY_PORT),
        ("10.98.0.1", 51820),
        ("127.0.0.1", RELAY_PORT + 1),
        ("127.0.0.1", 51821),
    )
    imp = Impairment(
        delay=args.delay_ms / 1000,
        loss=args.loss,
        reorder=args.reorder,
        duplicate=args.duplicate,
    )
    relay.set("ab", imp)
    relay.set("ba", imp)
    return relay


def measure(seconds: float, args) -> dict[str, float]:
    global RELAYED
    RELAYED = bool(args.delay_ms or args.loss or args.reorder or args.duplicate)
    if RELAYED:
        # Both ways through the relay: A sends to its near side, B to its far side.
        ENDPOINTS[1] = f"10.98.0.2:{RELAY_PORT}"
        ENDPOINTS[0] = f"127.0.0.1:{RELAY_PORT + 1}"
    tag = os.getpid() % 10000
    ns = [f"dptA{tag}", f"dptB{tag}"]
    names = [f"dpta{tag}", f"dptb{tag}"]
    keys = [PrivateKey.generate(), PrivateKey.generate()]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        procs: list[subprocess.Popen] = []
        relay: UdpImpair | None = None
        try:
            for n in ns:
                sh("ip", "netns", "del", n, check=False)
                sh("ip", "netns", "add", n)
                sh("ip", "-n", n, "link", "set", "lo", "up")
            sh("ip", "-n", ns[0], "link", "add", "veth0", "type", "veth",
               "peer", "name", "veth1", "netns", ns[1])  # fmt: skip
            for i, n in enumerate(ns):
                sh("ip", "-n", n, "addr", "add", f"10.98.0.{i + 1}/24", "dev", f"veth{i}")
                sh("ip", "-n", n, "link", "set", f"veth{i}", "up")
            procs.append(start_up(ns[1], names[1], tmp, 1, keys))
            if RELAYED:
                relay = start_relay(ns[1], args, tmp)
            # Ours: the in-process stack in A (its UDP socket is on the veth).
            out["ours_a_to_b"] = stream(ns[0], ns[1], "overlay", True, seconds, keys)
            out["ours_b_to_a"] = stream(ns[0], ns[1], "overlay", False, seconds, keys)
            # Baseline: kernel TCP in A behind a second `dataplane up`.
            procs.append(start_up(ns[0], names[0], tmp, 0, keys))
            out["kernel_a_to_b"] = stream(ns[0], ns[1], "kernel", True, seconds, keys)
            out["kernel_b_to_a"] = stream(ns[0], ns[1], "kernel", False, seconds, keys)
        finally:
            if relay is not None:
                relay.stop()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
            for n in ns:
                sh("ip", "netns", "del", n, check=False)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--reorder", type=float, default=0)
    ap.add_argument("--duplicate", type=float, default=0)
    ap.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--role")
    ap.add_argument("--key")
    ap.add_argument("--peer-key")
    ap.add_argument("--target")
    args = ap.parse_args()
    if args.role:
        role(args)
        return 0
    m = measure(args.seconds, args)
    rtt = (
        f" (relay: RTT +{2 * args.delay_ms:g} ms, loss {args.loss:g}, reorder {args.reorder:g},"
        f" duplicate {args.duplicate:g})"
        if RELAYED
        else ""
    )
    print(f"one TCP stream, {args.seconds:g} s per direction{rtt}:")
    for d, label in (("a_to_b", "ours -> kernel"), ("b_to_a", "kernel -> ours")):
        ours, base = m[f"ours_{d}"], m[f"kernel_{d}"]
        print(
            f"  {label:<15} {ours:6.2f} Gb/s   kernel<->kernel via two `dataplane up` "
            f"{base:6.2f} Gb/s   ratio {ours / base:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
