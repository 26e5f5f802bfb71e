"""A UDP relay that impairs what it carries, as ``tc netem`` would on the path.

This machine's kernel has no ``sch_netem`` (``tc qdisc add ... netem`` answers "Specified
qdisc kind is unknown"), so delay, loss, reordering and duplication for the TCP tests are
applied to the WireGuard underlay by this relay instead: one end's endpoint for its peer
is the relay's ``--listen`` address, the relay forwards to ``--target`` and back, each
direction with the same seeded impairments. Everything inside the tunnel (our TCP, the
kernel's TCP) sees them exactly as it would see netem on a veth, and a baseline through the
same relay sees the same.

Semantics follow netem: every datagram is delayed by ``--delay-ms`` (per direction, so the
round trip gains twice that); with probability ``--loss`` it is dropped; with probability
``--duplicate`` it is sent twice; with probability ``--reorder`` it skips the delay (it
overtakes those queued before it, netem's ``reorder``). ``--rate-mbit`` limits each
direction to that rate (a bottleneck with a ``--queue`` of datagrams, tail drop).

    python3 tests/udp_relay.py --listen 10.98.2.1:61820 --target 127.0.0.1:51820 \\
        --delay-ms 20 --loss 0.01 --reorder 0.005 --duplicate 0.001

It prints one JSON line when ready, then runs until stdin closes, and prints its counts.
Batched I/O (recvmmsg / sendmmsg through ``dataplane.transport.udp``) keeps it out of the
way at a few hundred thousand datagrams per second.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane._batch import PacketBatch  # noqa: E402
from dataplane.transport.udp import UdpSocket  # noqa: E402

SLOT = 1500 + 64


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Direction:
    """One way through the relay: receive on ``rx``, send from ``tx`` to ``dst()``."""

    def __init__(self, name, rx, tx, dst, args, seed) -> None:
        self.name = name
        self.rx = rx
        self.tx = tx
        self.dst = dst
        self.args = args
        self.rng = random.Random(seed)
        self.cond = threading.Condition()
        self.fifo: deque[tuple[float, bytes]] = deque()
        self.early: list[tuple[float, int, bytes]] = []  # reordered: sent without delay
        self.seq = 0
        self.link_free = 0.0
        self.stop = False
        self.counts = {"in": 0, "out": 0, "lost": 0, "duplicated": 0, "reordered": 0,
                       "queue_full": 0}  # fmt: skip

    def receive_loop(self, on_source=None) -> None:
        batch = PacketBatch(128, mtu=SLOT, headroom=0, tailroom=0)
        a = self.args
        delay = a.delay_ms / 1000.0
        while not self.stop:
            batch.clear()
            self.rx.recv_batch(batch, timeout=0.2)
            n = len(batch)
            if not n:
                continue
            if on_source is not None:
                on_source(batch.endpoint(n - 1))
            now = time.monotonic()
            rng = self.rng
            with self.cond:
                for i in range(n):
                    pkt = bytes(batch[i])
                    self.counts["in"] += 1
                    if a.loss and rng.random() < a.loss:
                        self.counts["lost"] += 1
                        continue
                    copies = 2 if a.duplicate and rng.random() < a.duplicate else 1
                    if copies == 2:
                        self.counts["duplicated"] += 1
                    for _ in range(copies):
                        when = now + delay
                        if a.rate_mbit:
                            start = max(now, self.link_free)
                            if start - now > a.queue * SLOT * 8 / (a.rate_mbit * 1e6):
                                self.counts["queue_full"] += 1
                                continue
                            self.link_free = start + len(pkt) * 8 / (a.rate_mbit * 1e6)
                            when = self.link_free + delay
                        if a.reorder and rng.random() < a.reorder:
                            self.counts["reordered"] += 1
                            self.seq += 1
                            heapq.heappush(self.early, (when - delay, self.seq, pkt))
                        else:
                            self.fifo.append((when, pkt))
                self.cond.notify()

    def send_loop(self) -> None:
        out = PacketBatch(128, mtu=SLOT, headroom=0, tailroom=0)
        while not self.stop:
            with self.cond:
                now = time.monotonic()
                due = []
                while self.early and self.early[0][0] <= now and len(due) < 128:
                    due.append(heapq.heappop(self.early)[2])
                while self.fifo and self.fifo[0][0] <= now and len(due) < 128:
                    due.append(self.fifo.popleft()[1])
                if not due:
                    heads = [
                        t
                        for t in (
                            self.fifo[0][0] if self.fifo else None,
                            self.early[0][0] if self.early else None,
                        )
                        if t
                    ]
                    wait = max(0.0, min(heads) - now) if heads else 0.2
                    self.cond.wait(min(wait, 0.2))
                    continue
            dst = self.dst()
            if dst is None:
                continue
            out.clear()
            for pkt in due:
                out.append(pkt)
            self.counts["out"] += self.tx.send_batch(out, dst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT the near end sends to")
    ap.add_argument("--target", required=True, help="HOST:PORT of the far end")
    ap.add_argument(
        "--via", help="HOST:PORT the far end sees us at (its endpoint for the near end)"
    )
    ap.add_argument("--near", help="HOST:PORT of the near end (default: learnt)")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--duplicate", type=float, default=0.0)
    ap.add_argument("--rate-mbit", type=float, default=0.0)
    ap.add_argument("--queue", type=int, default=10_000, help="datagrams (with --rate-mbit)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    listen, target = _endpoint(args.listen), _endpoint(args.target)
    near = UdpSocket(listen, gro=False)
    via = (
        _endpoint(args.via)
        if args.via
        else (
            "127.0.0.1" if target[0].startswith("127.") else listen[0],
            0,
        )
    )
    far = UdpSocket(via, gro=False)
    client: list[tuple[str, int] | None] = [_endpoint(args.near) if args.near else None]

    def learn(ep) -> None:
        if not args.near:
            client[0] = ep  # the near end is wherever its datagrams come from

    fwd = Direction("forward", near, far, lambda: target, args, args.seed)
    back = Direction("back", far, near, lambda: client[0], args, args.seed + 1)
    threads = [
        threading.Thread(target=fwd.receive_loop, args=(learn,), daemon=True),
        threading.Thread(target=fwd.send_loop, daemon=True),
        threading.Thread(target=back.receive_loop, daemon=True),
        threading.Thread(target=back.send_loop, daemon=True),
    ]
    for t in threads:
        t.start()
    print(json.dumps({"ready": True, "listen": near.address, "via": far.address}), flush=True)
    sys.stdin.read()
    for d in (fwd, back):
        d.stop = True
        with d.cond:
            d.cond.notify()
    near.wake()
    far.wake()
    for t in threads:
        t.join(2)
    print(json.dumps({"forward": fwd.counts, "back": back.counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
