"""Many TCP connections through one in-process server, and what idle ones cost.

Two real nodes over the in-memory WireGuard wire (``overlay_pair``). 1,000 concurrent
connections to one listener each carry a request and its answer; once they are idle the
stack has no timer armed for any of them (no delayed ACK, retransmission or keepalive is
due), so the netstack thread sleeps: its wake-ups over a quiet second do not grow with
the number of connections.
"""

from __future__ import annotations

import threading
import time

import pytest
from overlay_pair import B4, OverlayPair

N = 1000


@pytest.fixture
def pair():
    p = OverlayPair()
    yield p
    p.close()


def _quiet_wakeups(net, seconds: float) -> int:
    before = net.wakeups
    time.sleep(seconds)
    return net.wakeups - before


def test_a_thousand_concurrent_connections_then_idle_costs_nothing(pair):
    server = pair.net_b.create_server(("", 8000), backlog=N)
    accepted = []

    def accept_all() -> None:
        for _ in range(N):
            conn, _ = server.accept(timeout=30)
            accepted.append(conn)

    acceptor = threading.Thread(target=accept_all, name="acceptor")
    acceptor.start()
    clients = [pair.net_a.create_connection((B4, 8000), timeout=30) for _ in range(N)]
    acceptor.join(60)
    assert len(accepted) == N
    try:
        for i, c in enumerate(clients):
            c.sendall(b"request %d" % i)
        for s in accepted:
            s.settimeout(10)
            data = s.recv(64)
            s.sendall(b"answer:" + data)
        for c in clients:
            c.settimeout(10)
            assert c.recv(64).startswith(b"answer:request ")
        stats_a, stats_b = pair.net_a.tcp_stats(), pair.net_b.tcp_stats()
        assert stats_a["states"] == {"ESTABLISHED": N}
        assert stats_b["states"] == {"ESTABLISHED": N}
        # On a loaded machine a SYN-ACK or segment may be retransmitted before its ACK
        # arrived; its duplicate is "out_of_window" (acknowledged, dropped). Nothing else.
        assert set(stats_a["drops"]) <= {"out_of_window"}
        assert set(stats_b["drops"]) <= {"out_of_window"}
        # Let the delayed ACKs go out; then nothing is due on either side.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            pair.net_a._stack.next_deadline() or pair.net_b._stack.next_deadline()
        ):
            time.sleep(0.05)
        assert pair.net_a._stack.next_deadline() is None
        assert pair.net_b._stack.next_deadline() is None
        # A quiet second: the netstack threads barely wake (the WireGuard keepalive
        # timers of the data plane are not theirs), whatever the number of connections.
        assert _quiet_wakeups(pair.net_a, 1.0) <= 3
        assert _quiet_wakeups(pair.net_b, 1.0) <= 3
    finally:
        for s in clients + accepted:
            s.close()
        server.close()
