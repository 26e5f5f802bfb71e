"""A SYN flood through WireGuard against an in-process listener.

The peer (node A of ``overlay_pair``) sends 20,000 SYNs from 20,000 (address, port)
pairs of a /24 it is allowed to use but nobody answers for: a spoofed flood, so no RST
ever frees an embryonic connection. Meanwhile an established connection carries a
transfer. Shown: the transfer completes and verifies, the listener's SYN queue never
holds more than its bound (the oldest is dropped, counted), the stack's connection count
and this process's memory stay bounded, and every SYN is accounted for.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import tcp_model as m
from overlay_pair import B4, OverlayPair

from dataplane._batch import PacketBatch
from dataplane.netstack.tcp import TcpLimits

FLOOD = 20_000
SYN_QUEUE = 256
SPOOFED = "100.64.1."


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_syn_flood_leaves_established_connections_working_and_memory_bounded():
    pair = OverlayPair(tcp_limits=TcpLimits(syn_queue=SYN_QUEUE))
    try:
        with pair.b.locked() as core:
            peer = core.peer_ids()[0]
            core.update_peer(peer, allowed_ips=[*core.allowed_ips(peer), SPOOFED + "0/24"])
        listener = pair.net_b.create_server(("", 80), backlog=64)
        client = pair.net_a.create_connection((B4, 80), timeout=10)
        server, _ = listener.accept(timeout=10)
        payload = os.urandom(4 << 20)
        got = hashlib.sha256()
        received = [0]

        def sink() -> None:
            server.settimeout(60)
            while data := server.recv(1 << 16):
                got.update(data)
                received[0] += len(data)

        t = threading.Thread(target=sink, name="sink")
        t.start()
        rss_before = _rss()
        rng = random.Random(7)
        sent = 0
        flood_sent = 0
        port = pair.net_a.handle.incoming
        while flood_sent < FLOOD or sent < len(payload):
            if flood_sent < FLOOD:
                syns = [
                    m.build(
                        m.Seg(
                            SPOOFED + str(rng.randrange(1, 255)),
                            B4,
                            rng.randrange(1024, 65536),
                            80,
                            seq=rng.getrandbits(32),
                            flags=m.SYN,
                            mss=1380,
                            sack_perm=True,
                            ts=(rng.getrandbits(32), 0),
                            ws=7,
                        )
                    )
                    for _ in range(128)
                ]
                port.wait_below(4, 5)
                port.submit(PacketBatch.from_packets(syns))
                flood_sent += len(syns)
            if sent < len(payload):
                client.sendall(payload[sent : sent + (1 << 16)])
                sent += 1 << 16
        client.shutdown(1)
        t.join(60)
        assert received[0] == len(payload)
        assert got.digest() == hashlib.sha256(payload).digest()
        time.sleep(0.2)
        stats = pair.net_b.tcp_stats()
        counters, drops = stats["counters"], stats["drops"]
        lst = pair.net_b._stack.listeners[(None, 80)]
        assert len(lst.syn_queue) <= SYN_QUEUE
        assert stats["connections"] <= SYN_QUEUE + 2
        # Every SYN that reached the stack made an embryonic connection, and all but the
        # queue's worth were pushed out again, counted.
        assert counters["passive_opens"] >= FLOOD * 0.9
        assert drops["syn_queue_overflow"] >= counters["passive_opens"] - SYN_QUEUE - 1
        grown = _rss() - rss_before
        print(
            f"\nSYN flood: {FLOOD} SYNs, RSS +{grown / 1e6:.1f} MB, {stats['connections']} "
            f"connections left, drops {drops}"
        )
        assert grown < 64 << 20
        server.close()
        client.close()
        listener.close()
    finally:
        pair.close()
