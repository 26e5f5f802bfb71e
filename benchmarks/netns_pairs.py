"""Throughput and RTT of a tunnel between two network namespaces, for three pairings.

    sudo python3 benchmarks/netns_pairs.py [--seconds 4] [--pairs ours-ours,ours-go,go-go]

Each pairing gets two fresh namespaces joined by a veth (10.98.0.1/2), a tunnel with inner
addresses 10.99.0.1/2 (MTU 1420), then: ``--pings`` pings at 50 ms (RTT median and mean of
the per-ping times ``ping`` prints, needs iputils), and iperf3 TCP single stream for
``--seconds`` in each direction. "ours" is
``python -m dataplane up FILE`` (a wg-quick file), "go" is wireguard-go configured with
``wg``. Everything runs on this machine's CPUs, shared by both ends: compare the rows of
one run, not runs on different machines. Not collected by pytest (not a ``bench_`` file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataplane.wireguard.keys import PrivateKey  # noqa: E402

SOCK_DIR = "/var/run/wireguard"
MTU = 1420


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def wait_socket(name: str, proc: subprocess.Popen, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not os.path.exists(f"{SOCK_DIR}/{name}.sock"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not come up")
        time.sleep(0.05)


def start_ours(ns: str, name: str, tmp: Path, i: int, keys: list[PrivateKey]) -> subprocess.Popen:
    o = 1 - i
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys[i].to_base64()}\nListenPort = {51820 + i}\n"
        f"Address = 10.99.0.{i + 1}/24\nMTU = {MTU}\n[Peer]\n"
        f"PublicKey = {keys[o].public_key.to_base64()}\nAllowedIPs = 10.99.0.{o + 1}/32\n"
        f"Endpoint = 10.98.0.{o + 1}:{51820 + o}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane", "up", "-f", str(conf)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_socket(name, proc)
    return proc


def start_go(ns: str, name: str, tmp: Path, i: int, keys: list[PrivateKey]) -> subprocess.Popen:
    o = 1 - i
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "wireguard-go", "-f", name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    wait_socket(name, proc)
    key = tmp / f"{name}.key"
    key.write_text(keys[i].to_base64() + "\n")
    os.chmod(key, 0o600)
    sh("wg", "set", name, "private-key", str(key), "listen-port", str(51820 + i),
       "peer", keys[o].public_key.to_base64(), "allowed-ips", f"10.99.0.{o + 1}/32",
       "endpoint", f"10.98.0.{o + 1}:{51820 + o}")  # fmt: skip
    sh("ip", "-n", ns, "addr", "add", f"10.99.0.{i + 1}/24", "dev", name)
    sh("ip", "-n", ns, "link", "set", name, "mtu", str(MTU), "up")
    return proc


def iperf(ns_server: str, ns_client: str, seconds: int, reverse: bool) -> float:
    srv = subprocess.Popen(
        ["ip", "netns", "exec", ns_server, "iperf3", "-s", "-1", "-B", "10.99.0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        r = sh("ip", "netns", "exec", ns_client, "iperf3", "-c", "10.99.0.2", "-t", str(seconds),
               "-J", *(["-R"] if reverse else []), timeout=seconds + 30)  # fmt: skip
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(5)


def ping_times(ns: str, target: str, count: int) -> list[float]:
    """Per-ping RTTs in ms, from ``ping``'s ``time=`` fields (lost pings are missing)."""
    r = sh("ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.05", target,
           timeout=60 + count)  # fmt: skip
    return [
        float(w[5:])
        for line in r.stdout.splitlines()
        for w in line.split()
        if w.startswith("time=")
    ]


def measure(pair: str, seconds: int, pings: int) -> dict[str, float | str]:
    tag = os.getpid() % 10000
    ns = [f"dpbA{tag}", f"dpbB{tag}"]
    names = [f"dpbx{tag}", f"dpby{tag}"]
    keys = [PrivateKey.generate(), PrivateKey.generate()]
    kinds = pair.split("-")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
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
            for i, kind in enumerate(kinds):
                start = start_ours if kind == "ours" else start_go
                procs.append(start(ns[i], names[i], tmp, i, keys))
            sh("ip", "netns", "exec", ns[0], "ping", "-c", "3", "-W", "3", "10.99.0.2")
            rtts = ping_times(ns[0], "10.99.0.2", pings)
            return {
                "pair": pair,
                "rtt_ms": statistics.median(rtts),
                "rtt_mean_ms": statistics.fmean(rtts),
                "lost": pings - len(rtts),
                "a_to_b_gbps": iperf(ns[1], ns[0], seconds, False),
                "b_to_a_gbps": iperf(ns[1], ns[0], seconds, True),
            }
        finally:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--pairs", default="ours-ours,ours-go,go-go")
    ap.add_argument("--pings", type=int, default=100)
    args = ap.parse_args()
    print(
        f"{'pair (A-B)':<12} {'RTT median':>10} {'mean ms':>8} {'lost':>4} "
        f"{'A->B Gb/s':>10} {'B->A Gb/s':>10}"
    )
    for pair in args.pairs.split(","):
        m = measure(pair, args.seconds, args.pings)
        print(
            f"{pair:<12} {m['rtt_ms']:>10.3f} {m['rtt_mean_ms']:>8.3f} {m['lost']:>4} "
            f"{m['a_to_b_gbps']:>10.3f} {m['b_to_a_gbps']:>10.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
