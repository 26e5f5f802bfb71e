"""Bulk transfers between two sans-I/O TcpStacks in simulated time, under impairments.

Every transfer must arrive byte for byte and both ends must close cleanly (one side in
TIME-WAIT, the other CLOSED), whatever the loss, reordering and duplication, with and
without SACK and timestamps, over IPv4 and IPv6, with CUBIC and NewReno.
"""

from __future__ import annotations

import pytest
from tcp_sim import A6, B6, A, B, Impairment, Net, addr, transfer

from dataplane.netstack._ip import pack_address
from dataplane.netstack.tcp import State, TcpLimits

_A = pack_address(A)

CASES = {
    "clean": (Impairment(), {}),
    "loss-1%": (Impairment(delay=0.01, loss=0.01), {}),
    "netem-mix": (Impairment(delay=0.01, loss=0.01, reorder=0.005, duplicate=0.001), {}),
    "mix-no-sack": (
        Impairment(delay=0.01, loss=0.01, reorder=0.005, duplicate=0.001),
        {"sack": False},
    ),
    "mix-no-timestamps": (
        Impairment(delay=0.01, loss=0.01, reorder=0.005, duplicate=0.001),
        {"timestamps": False},
    ),
    "mix-no-window-scaling": (
        Impairment(delay=0.01, loss=0.01, reorder=0.005),
        {"window_scaling": False},
    ),
    "newreno": (Impairment(delay=0.01, loss=0.01), {"congestion_control": "newreno"}),
    "heavy-loss-ipv6": (Impairment(delay=0.02, loss=0.05, reorder=0.02), {"v6": True}),
    "bottleneck": (Impairment(delay=0.05, rate=12_500_000, loss=0.001), {}),
}


def connected_pair(net: Net, a: str, b: str, port: int = 80):
    sa, sb = net.stack(a), net.stack(b)
    listener = sb.listen(None, port, 16)
    client = sa.connect(addr(b, port), net.now)
    assert net.run(30, until=lambda: bool(listener.accept_queue))
    server = sb.accept(listener)
    assert client.state == server.state == State.ESTABLISHED
    return client, server


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_transfer_arrives_whole_and_closes(case, seed):
    imp, options = CASES[case]
    options = dict(options)
    v6 = options.pop("v6", False)
    a, b = (A6, B6) if v6 else (A, B)
    net = Net(a, b, impairment=imp, seed=seed, limits=TcpLimits(**options))
    client, server = connected_pair(net, a, b)
    data = bytes((i * 7 + seed) & 255 for i in range(1_500_000))
    assert transfer(net, client, server, data, seconds=600) == data
    sa, sb = net.stack(a), net.stack(b)
    sa.close(client, net.now)
    assert net.run(60, until=lambda: server.state == State.CLOSE_WAIT)
    sb.close(server, net.now)
    assert net.run(
        300, until=lambda: server.state == State.CLOSED and client.state == State.TIME_WAIT
    )
    # TIME-WAIT ends after 2 MSL and leaves nothing behind.
    net.idle(61)
    assert client.state == State.CLOSED
    assert not sa.conns and not sb.conns


def test_hystart_ends_slow_start_on_rising_delay():
    """RFC 9406: on a bottleneck whose queue grows, HyStart++ (when enabled) leaves slow
    start when a round's minimum RTT rises by eta, before the queue overflows."""
    imp = Impairment(delay=0.02, rate=2_500_000)  # 20 Mb/s, a deep queue
    for hystart in (False, True):
        net = Net(A, B, impairment=imp, limits=TcpLimits(hystart=hystart))
        client, server = connected_pair(net, A, B)
        data = bytes(3_000_000)
        assert transfer(net, client, server, data, seconds=120) == data
        info = client.tcb.counters()
        assert info["hystart_exits"] == (1 if hystart else 0)
        if hystart:
            assert info["ssthresh"] < 1 << 30  # slow start ended


def test_pacing_spreads_a_window_over_the_round_trip():
    """Segments leave at 2x (slow start) / 1.2x cwnd/srtt, not as one line-rate burst per
    ACK: on a 100 ms path, no millisecond carries more than a few percent of a window."""
    net = Net(A, B, impairment=Impairment(delay=0.05))
    client, server = connected_pair(net, A, B)
    sends: list[float] = []
    net.trace = lambda now, dst, pkt: sends.append(now) if len(pkt) > 200 and dst != _A else None
    data = bytes(8_000_000)
    assert transfer(net, client, server, data, seconds=120) == data
    window = client.tcb.counters()["cwnd"] // client.tcb.mss
    per_ms: dict[int, int] = {}
    for t in sends:
        per_ms[int(t * 1000)] = per_ms.get(int(t * 1000), 0) + 1
    assert window > 500
    assert max(per_ms.values()) < window // 10
