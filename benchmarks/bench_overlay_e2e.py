"""End-to-end overlay socket throughput between two processes over loopback UDP.

Two node processes (``tests/_node_proc.py``: DataPlane + ThreadedDataPlane + UdpTransport
+ OverlayNetwork each, one WireGuard session between them). The sender's ``blast`` loop
calls ``OverlaySocket.sendto`` N times back to back with numbered payloads; the receiver's
sink thread calls ``recvfrom`` and counts. Baseline, measured in the same run: two
``--plain`` processes running the same loops on kernel UDP sockets (``socket.sendto`` /
``socket.recvfrom``), no data plane.

Groups: overlay-e2e-<size> (64 and 1200 byte payloads), each with ``overlay`` and
``kernel-udp``. One round = one blast of N datagrams; its time runs from the sender's first
``sendto`` to the receiver's last delivery (both ``time.monotonic``, one clock for all
processes). ``extra_info`` carries datagrams/s, payload Mb/s and the loss of the last round;
with ``-s`` a summary line per case is printed. Rounds and N are fixed, and every wait is
bounded (a blast stops after 20 s, the drain after 1 s without progress).

Run: python -m pytest benchmarks/bench_overlay_e2e.py --benchmark-only -s
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dataplane.wireguard.keys import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _node_proc import NodeProcess  # noqa: E402

ADDR_A, ADDR_B = "10.66.0.1", "10.66.0.2"
SINK = 9
N = 20_000
SINK_QUEUE = 8192  # datagrams; about what the baseline's 8 MiB SO_RCVBUF holds at 64 B
ROUNDS = 3
SIZES = [64, 1200]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlay-e2e")
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    started: list[NodeProcess] = []
    try:
        recv = NodeProcess(
            ["--key", key_a.to_base64(), "--addr", ADDR_A,
             "--peer-key", key_b.public_key.to_base64(), "--peer-allowed", f"{ADDR_B}/32",
             "--sink-queue", str(SINK_QUEUE)],
            tmp / "receiver.log",
        )  # fmt: skip
        started.append(recv)
        send = NodeProcess(
            ["--key", key_b.to_base64(), "--addr", ADDR_B,
             "--peer-key", key_a.public_key.to_base64(), "--peer-allowed", f"{ADDR_A}/32",
             "--peer-endpoint", f"127.0.0.1:{recv.port}"],
            tmp / "sender.log",
        )  # fmt: skip
        started.append(send)
        assert send.cmd(f"reach {ADDR_A} 7 10", timeout=20)["ok"]  # handshake done
        plain_recv = NodeProcess(["--plain"], tmp / "plain-receiver.log")
        started.append(plain_recv)
        plain_send = NodeProcess(["--plain"], tmp / "plain-sender.log")
        started.append(plain_send)
        yield {
            "overlay": (send, recv, f"{ADDR_A} {SINK}"),
            "kernel-udp": (plain_send, plain_recv, f"127.0.0.1 {plain_recv.port}"),
        }
        # Where lost datagrams went (the loss is also in each case's extra_info).
        for name, node in (("sender", send), ("receiver", recv)):
            st = node.cmd("stats")
            counters = {
                **st["core_drops"],
                **st["device_drops"],
                **{f"overlay.{k}": v for k, v in st["overlay_drops"].items()},
                **{f"udp.{k}": v for k, v in st["udp_errors"].items()},
                "driver.queue_full": st["driver_queue_full"],
                "driver.input_full": st["driver_input_full"],
                "kernel.rcvbuf_full": _kernel_drops(st["port"]),
            }
            print(f"\n{name} drops: {({k: v for k, v in counters.items() if v}) or 'none'}")
    finally:
        for n in started:
            n.close()


def _kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped at the full receive buffer of our UDP socket on port."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    return 0


def blast_once(sender: NodeProcess, receiver: NodeProcess, target: str, size: int) -> dict:
    receiver.cmd("sinkreset")
    r = sender.cmd(f"blast {target} {N} {size}", timeout=60)
    count, stalled_since = -1, time.monotonic()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        got = receiver.cmd("sink")
        if got["count"] >= r["sent"]:
            break
        if got["count"] != count:
            count, stalled_since = got["count"], time.monotonic()
        elif time.monotonic() - stalled_since > 1.0:
            break
        time.sleep(0.02)
    elapsed = (got["last"] or r["t1"]) - r["t0"]
    return {"sent": r["sent"], "received": got["count"], "bytes": got["bytes"], "s": elapsed}


@pytest.mark.parametrize("impl", ["overlay", "kernel-udp"])
@pytest.mark.parametrize("size", SIZES)
def test_e2e_throughput(benchmark, nodes, impl, size):
    benchmark.group = f"overlay-e2e-{size}"
    sender, receiver, target = nodes[impl]
    blast_once(sender, receiver, target, size)  # warm-up
    results: list[dict] = []

    def run():
        results.append(blast_once(sender, receiver, target, size))
        return results[-1]

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    best = max(results, key=lambda x: x["received"] / x["s"])
    rate = best["received"] / best["s"]
    mbps = best["bytes"] * 8 / best["s"] / 1e6
    loss = 1 - sum(x["received"] for x in results) / sum(x["sent"] for x in results)
    benchmark.extra_info.update(
        datagrams_per_s=round(rate), payload_mbps=round(mbps, 1), loss=round(loss, 4)
    )
    print(f"\n{impl:>10} {size:5d} B: {rate:10,.0f} datagrams/s {mbps:8.1f} Mb/s "
          f"loss {loss:.2%} (best of {ROUNDS} x {N})")  # fmt: skip
    assert best["received"] > 0
