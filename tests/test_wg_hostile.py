"""Hostile input: random bytes, truncations and mutations of valid messages into receive().

Invariants for every batch: receive() never raises; every slot ends alive (authenticated
plaintext for a known peer), consumed (HANDSHAKE / KEEPALIVE) or dropped with a reason; and
the device's drop counters grow by exactly the number of dropped slots, per reason.
"""

from __future__ import annotations

import ast
import pathlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wg_device import A_EP, B_EP, Sim, payload

from dataplane._batch import DropReason, PacketBatch

CONSUMED = {DropReason.OK, DropReason.HANDSHAKE, DropReason.KEEPALIVE}


def _capture() -> tuple[Sim, dict[int, list[bytes]]]:
    """A live pair and real messages of each type from its exchange (cookie replies too)."""
    sim = Sim()
    sim.b.dev.load_monitor.threshold = 1
    sim.send(sim.a, [payload("hello")])
    sim.run_until(6.0)
    sim.send(sim.b, [payload("back")])
    sim.deliver()
    sim.send(sim.a, [b"", payload("more")])
    sim.deliver()
    sim.b.dev.load_monitor.threshold = 1 << 30
    by_type: dict[int, list[bytes]] = {}
    for *_, ty, pkt in sim.log:
        by_type.setdefault(ty, []).append(pkt)
    assert set(by_type) == {1, 2, 3, 4}
    return sim, by_type


SIM, VALID = _capture()


def _fresh_pair() -> Sim:
    return _capture()[0]


def _fresh_data(n: int) -> bytes:
    """A new, never-delivered transport message from A on its current session."""
    kp = SIM.a.dev.peers[1].current
    msg = kp.send.seal_one(kp.remote_index, kp.send_counter, payload(str(n), 16 * (n % 4)))
    kp.send_counter += 1
    return msg


def check_receive(sim: Sim, packets: list[bytes], endpoints) -> PacketBatch:
    dev = sim.b.dev
    batch = PacketBatch(capacity=max(1, len(packets)))
    for i, p in enumerate(packets):
        batch.append(p)
        batch.set_endpoint(i, endpoints[i % len(endpoints)])
    before = Counter(dev.drops)
    dev.receive(sim.now, batch)
    statuses = [batch.status_of(i) for i in range(len(packets))]
    dropped = Counter(s for s in statuses if s not in CONSUMED)
    grown = Counter(dev.drops)
    grown.subtract(before)
    assert +grown == dropped
    for i, s in enumerate(statuses):
        if s == DropReason.OK:
            assert batch.peer(i) == 1
        else:
            assert batch.peer(i) in (-1, 1)
    return batch


endpoint_st = st.tuples(
    st.sampled_from(["10.0.0.1", "203.0.113.5", "2001:db8::7", "::ffff:10.0.0.1"]),
    st.integers(0, 65535),
)


def _mutate(msg: bytes, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(msg)
    for pos, val in flips:
        b[pos % len(b)] ^= val or 1
    return bytes(b)


mutated_st = st.builds(
    _mutate,
    st.sampled_from([m for ms in VALID.values() for m in ms]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)

wg_shaped_st = st.builds(
    lambda t, body: bytes([t, 0, 0, 0]) + body, st.integers(0, 6), st.binary(max_size=160)
)

packet_st = st.one_of(
    st.binary(max_size=200),
    wg_shaped_st,
    mutated_st,
    st.sampled_from([m for ms in VALID.values() for m in ms]),
    st.integers(0, 1000).map(_fresh_data),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packet_st, min_size=1, max_size=12), st.lists(endpoint_st, min_size=1, max_size=3))
def test_receive_never_raises_and_counts_every_drop(packets, endpoints):
    SIM.now += 0.013
    check_receive(SIM, packets, endpoints)
    SIM.a.dev.dispatch_events(SIM.now)
    SIM.b.dev.dispatch_events(SIM.now)


@pytest.mark.parametrize("ty", [1, 2, 3, 4])
def test_truncations_at_every_offset_are_dropped(ty):
    sim = _fresh_pair()
    for msg in VALID[ty][:2]:
        packets = [msg[:n] for n in range(len(msg))]
        batch = check_receive(sim, packets, [A_EP])
        for n in range(len(msg)):
            s = batch.status_of(n)
            assert s not in CONSUMED, (ty, n, s)
            if n < 4:
                assert s == DropReason.TOO_SHORT
        extended = check_receive(sim, [msg + b"\0"], [A_EP])
        if ty != 4:
            assert extended.status_of(0) == DropReason.TOO_BIG


@pytest.mark.parametrize("ty", [1, 2, 3, 4])
def test_every_single_bit_flip_of_a_valid_message_is_rejected(ty):
    """Flip each bit of one valid message: only mac2 (unchecked when not under load) may
    change without the message being refused."""
    sim = _fresh_pair()
    msg = VALID[ty][0]
    packets = []
    for pos in range(len(msg)):
        for bit in (0, 7):
            b = bytearray(msg)
            b[pos] ^= 1 << bit
            packets.append((pos, bytes(b)))
    batch = check_receive(sim, [p for _, p in packets], [A_EP])
    for i, (pos, _) in enumerate(packets):
        s = batch.status_of(i)
        in_mac2 = ty in (1, 2) and pos >= len(msg) - 16
        if not in_mac2:
            assert s not in (DropReason.OK, DropReason.KEEPALIVE), (pos, s)
            if ty != 1:
                assert s != DropReason.HANDSHAKE, (pos, s)


def test_valid_messages_out_of_context_are_dropped_not_raised():
    sim = _fresh_pair()
    everything = [m for ms in VALID.values() for m in ms] * 2
    check_receive(sim, everything, [A_EP, B_EP, ("198.51.100.1", 1)])


def test_receive_ignores_slots_already_dropped_or_claimed():
    sim = _fresh_pair()
    batch = PacketBatch.from_packets([b"\x01" + bytes(147), b"garbage"])
    batch.set_status(0, DropReason.UNCLASSIFIED)
    batch.set_peer(1, 5)
    batch.fill_endpoint(A_EP)
    before = Counter(sim.b.dev.drops)
    sim.b.dev.receive(sim.now, batch)
    assert batch.status_of(0) == DropReason.UNCLASSIFIED and batch.status_of(1) == DropReason.OK
    assert sim.b.dev.drops == before


FORBIDDEN = {
    "threading",
    "time",
    "socket",
    "asyncio",
    "select",
    "dataplane.driver",
    "dataplane.transport",
}


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *pathlib.Path(__file__)
            .resolve()
            .parent.parent.joinpath("dataplane", "wireguard")
            .glob("*.py"),
            pathlib.Path(__file__).resolve().parent.parent / "dataplane" / "timers.py",
        ]
    ),
    ids=lambda p: p.name,
)
def test_layering_no_io_no_clock_imports(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    bad = {n for n in names if n in FORBIDDEN or any(n.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {bad}"
