"""Simulated-time tests of the WireGuard device: every rule of wireguard-complete.md.

Two (or more) ``Device`` objects are joined by an in-memory network with zero latency and
optional loss; time only moves when the test says so (``Sim.run_until``), by jumping to the
next timer deadline. No sleeping, no sockets.
"""

from __future__ import annotations

import random
import struct

import pytest

from dataplane._batch import DropReason, PacketBatch
from dataplane.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_TIME,
)
from dataplane.wireguard.device import ConfigError, Device
from dataplane.wireguard.keys import PresharedKey, PrivateKey, clamp

A_EP = ("10.0.0.1", 51820)
B_EP = ("10.0.0.2", 51820)
WALL0 = 1_700_000_000.0


def det_key(rng: random.Random) -> PrivateKey:
    return PrivateKey(clamp(rng.randbytes(32)))


def payload(tag: str, n: int = 48) -> bytes:
    """A test packet; a multiple of 16 so padding leaves it unchanged."""
    return tag.encode().ljust(n, b".")


class Node:
    def __init__(self, name: str, sim: Sim, key: PrivateKey, ep, **kw) -> None:
        self.name = name
        self.key = key
        self.ep = ep  # where others reach it
        self.src = ep  # the source address its datagrams appear to come from
        self.dev = Device(key, wall_clock=lambda: WALL0 + sim.now, rng=random.Random(name), **kw)
        self.delivered: list[tuple[float, int, bytes]] = []


class Sim:
    def __init__(
        self,
        seed: int = 1,
        psk: PresharedKey | None = None,
        ka_a=None,
        ka_b=None,
        keys: tuple[PrivateKey, PrivateKey] | None = None,
        **kw,
    ) -> None:
        self.now = 0.0
        rng = random.Random(seed)
        ka, kb = keys or (det_key(rng), det_key(rng))
        self.a = Node("a", self, ka, A_EP, **kw)
        self.b = Node("b", self, kb, B_EP, **kw)
        self.nodes = {"a": self.a, "b": self.b}
        self.a.dev.add_peer(1, kb.public_key, psk=psk, endpoint=B_EP, persistent_keepalive=ka_a)
        self.b.dev.add_peer(1, ka.public_key, psk=psk, endpoint=A_EP, persistent_keepalive=ka_b)
        self.wire: list[tuple[Node, tuple, bytes]] = []
        self.log: list[tuple[float, str, str, int, bytes]] = []  # time, src, dst, type, bytes
        self.lose = lambda src, dst, data: False

    def node_at(self, ep) -> Node | None:
        for n in self.nodes.values():
            if n.ep == ep:
                return n
        return None

    def enqueue(self, src: Node, transmits) -> None:
        for t in transmits:
            dst = self.node_at(t.endpoint)
            for pkt in t.batch.packets(alive_only=True):
                self.log.append((self.now, src.name, dst.name if dst else "?", pkt[0], pkt))
                if dst is not None and not self.lose(src.name, dst.name, pkt):
                    self.wire.append((dst, src.src, pkt))

    def send(self, node: Node, packets, peer: int = 1):
        batch = PacketBatch.from_packets(packets)
        self.enqueue(node, node.dev.send(self.now, {peer: batch}))
        return batch

    def inject(self, node: Node, src, packets):
        """Deliver raw datagrams to ``node`` as if from ``src``; returns the batch."""
        batch = PacketBatch.from_packets(packets)
        batch.fill_endpoint(src)
        self.enqueue(node, node.dev.receive(self.now, batch))
        self._collect(node, batch)
        return batch

    def _collect(self, node: Node, batch: PacketBatch) -> None:
        for i in batch.alive():
            node.delivered.append((self.now, batch.peer(i), bytes(batch[i])))

    def deliver(self) -> None:
        for _ in range(100):
            if not self.wire:
                return
            wire, self.wire = self.wire, []
            for node in self.nodes.values():
                items = [(src, pkt) for dst, src, pkt in wire if dst is node]
                if not items:
                    continue
                batch = PacketBatch(capacity=len(items))
                for i, (src, pkt) in enumerate(items):
                    batch.append(pkt)
                    batch.set_endpoint(i, src)
                self.enqueue(node, node.dev.receive(self.now, batch))
                self._collect(node, batch)
        raise AssertionError("message storm: the network did not settle")

    def run_until(self, t: float) -> None:
        for _ in range(100_000):
            self.deliver()
            nxt = [r.end for n in self.nodes.values() if (r := n.dev.next_event()) is not None]
            if not nxt or min(nxt) > t:
                break
            self.now = max(self.now, min(nxt))
            for n in self.nodes.values():
                self.enqueue(n, n.dev.dispatch_events(self.now))
        self.now = max(self.now, t)
        self.deliver()

    def types(self, src=None, since=0.0):
        return [ty for (t, s, _, ty, _) in self.log if (src is None or s == src) and t >= since]

    def times(self, src, ty, since=0.0):
        return [t for (t, s, _, y, _) in self.log if s == src and y == ty and t >= since]

    def established(self) -> None:
        """Handshake at t=now with A as initiator, and one data packet each way."""
        self.send(self.a, [payload("hello")])
        self.deliver()
        self.send(self.b, [payload("hi back")])
        self.deliver()
        assert [d[2] for d in self.b.delivered] == [payload("hello")]
        assert [d[2] for d in self.a.delivered] == [payload("hi back")]


def peer(node: Node):
    return node.dev.peers[1]


# --- handshake and data ------------------------------------------------------------------------


@pytest.mark.parametrize("use_psk", [False, True])
def test_handshake_and_data_both_ways(use_psk):
    sim = Sim(psk=PresharedKey.generate() if use_psk else None)
    batch = sim.send(sim.a, [payload("one"), payload("two")])
    # No session yet: the packets are staged and only an initiation goes out.
    assert [batch.status_of(i) for i in range(2)] == [DropReason.NO_SESSION] * 2
    assert sim.types() == [1]
    sim.send(sim.a, [payload("three")])  # second send: staged, no second initiation
    assert sim.types() == [1]
    sim.deliver()
    assert sim.types() == [1, 2, 4, 4, 4]  # response, then the staged data, in order
    assert [d[2] for d in sim.b.delivered] == [payload("one"), payload("two"), payload("three")]
    assert all(d[1] == 1 for d in sim.b.delivered)
    sim.send(sim.b, [payload("back")])
    sim.deliver()
    assert [d[2] for d in sim.a.delivered] == [payload("back")]
    sa, sb = sim.a.dev.peer_stats(1), sim.b.dev.peer_stats(1)
    assert sa.last_handshake == WALL0 and sb.last_handshake == WALL0
    assert sa.tx_packets == sb.rx_packets == 3 and sb.tx_packets == sa.rx_packets == 1
    assert sa.tx_bytes == sb.rx_bytes > 3 * 80 and sa.rx_bytes == sb.tx_bytes
    assert sa.endpoint == B_EP and sb.endpoint == A_EP
    assert sa.handshake_initiations == 1 and sb.handshake_initiations == 0
    assert sum(sim.a.dev.drops.values()) == sum(sim.b.dev.drops.values()) == 0


def test_padding_is_capped_at_mtu_and_plaintext_padded_to_16():
    sim = Sim()
    sim.established()
    sim.send(sim.a, [b"x" * 5, b"y" * 1419, b"z" * 1420])
    sim.deliver()
    got = [d[2] for d in sim.b.delivered[1:]]
    assert got == [b"x" * 5 + bytes(11), b"y" * 1419 + b"\0", b"z" * 1420]


def test_responder_never_sends_data_first():
    sim = Sim()
    # A's first data after the handshake is lost, so B holds an unconfirmed "next" session.
    sim.lose = lambda s, d, pkt: s == "a" and pkt[0] == 4
    sim.send(sim.a, [payload("lost")])
    sim.deliver()
    assert peer(sim.b).next is not None and peer(sim.b).current is None
    batch = sim.send(sim.b, [payload("from b")])
    assert batch.status_of(0) == DropReason.NO_SESSION
    assert 4 not in sim.types("b") and sim.types("b").count(1) == 0  # no data, no initiation
    sim.lose = lambda s, d, pkt: False
    sim.send(sim.a, [payload("second")])
    sim.deliver()
    # Confirmation: B now uses the session and flushes what it staged.
    assert [d[2] for d in sim.a.delivered] == [payload("from b")]
    assert peer(sim.b).current is not None and peer(sim.b).next is None
    first_b_data = sim.times("b", 4)[0]
    assert first_b_data >= sim.times("a", 4)[0]


# --- rekeying ----------------------------------------------------------------------------------


def test_rekey_by_age_on_send_after_120s_initiator_only():
    sim = Sim()
    sim.established()
    sim.now = 119.0
    sim.send(sim.a, [payload("119")])
    assert sim.types("a", since=119.0) == [4]
    sim.deliver()
    sim.now = 121.0
    old = peer(sim.a).current
    sim.send(sim.a, [payload("121")])
    assert sim.types("a", since=121.0) == [4, 1]  # data on the old session, then initiation
    sim.deliver()
    assert [d[2] for d in sim.b.delivered][-2:] == [payload("119"), payload("121")]
    assert peer(sim.a).current is not old and peer(sim.a).previous is old
    assert sim.types("b", since=121.0) == [2]
    # Confirmation keepalive from A makes it current at B too.
    assert peer(sim.b).current.remote_index == peer(sim.a).current.local_index


def test_responder_does_not_rekey_by_age_on_send():
    sim = Sim()
    sim.established()
    sim.now = 125.0
    sim.send(sim.b, [payload("125")])
    assert sim.types("b", since=125.0) == [4]


def test_rekey_on_receive_after_165s():
    sim = Sim()
    sim.established()
    sim.run_until(150.0)  # B's passive keepalive at ~10 s; then silence
    sim.send(sim.b, [payload("150")])
    assert sim.types("a", since=150.0) == []  # 150 < 165: A receives without rekeying
    sim2 = Sim()
    sim2.established()
    sim2.run_until(166.0)
    start = len(sim2.log)
    sim2.send(sim2.b, [payload("166")])
    sim2.deliver()
    new = [(s, ty) for (_, s, _, ty, _) in sim2.log[start:]]
    assert new[:3] == [("b", 4), ("a", 1), ("b", 2)]
    assert sim2.a.delivered[-1][2] == payload("166")


def test_rekey_by_message_count():
    sim = Sim()
    sim.established()
    from dataplane.wireguard.constants import REKEY_AFTER_MESSAGES

    peer(sim.a).current.send_counter = REKEY_AFTER_MESSAGES + 1
    sim.now = 6.0  # past REKEY_TIMEOUT since the first initiation
    sim.send(sim.a, [payload("many")])
    assert sim.types("a", since=6.0) == [4, 1]


def test_counter_limit_makes_session_unusable_not_fatal():
    from dataplane.wireguard.constants import REJECT_AFTER_MESSAGES

    sim = Sim()
    sim.established()
    peer(sim.a).current.send_counter = REJECT_AFTER_MESSAGES
    sim.now = 6.0
    batch = sim.send(sim.a, [payload("over")])
    assert batch.status_of(0) == DropReason.NO_SESSION  # staged for a new session
    sim.deliver()
    assert sim.b.delivered[-1][2] == payload("over")


def test_session_unusable_soon_after_a_handshake_still_gets_a_new_one():
    from dataplane.wireguard.constants import REJECT_AFTER_MESSAGES

    sim = Sim()
    sim.established()
    peer(sim.a).current.send_counter = REJECT_AFTER_MESSAGES
    sim.now = 1.0
    batch = sim.send(sim.a, [payload("waits")])
    assert batch.status_of(0) == DropReason.NO_SESSION
    assert sim.types("a", since=1.0) == []  # within REKEY_TIMEOUT of the last initiation
    sim.run_until(6.0)
    assert sim.times("a", 1, since=1.0) and sim.times("a", 1, since=1.0)[0] >= REKEY_TIMEOUT
    assert sim.b.delivered[-1][2] == payload("waits")


# --- retransmission and give-up ----------------------------------------------------------------


def test_retries_with_jitter_and_give_up_at_90s_dropping_staged():
    sim = Sim()
    sim.lose = lambda s, d, pkt: True
    sim.send(sim.a, [payload("p1"), payload("p2")])
    sim.run_until(120.0)
    inits = [(t, pkt) for (t, s, _, ty, pkt) in sim.log if s == "a" and ty == 1]
    times = [t for t, _ in inits]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.01 for g in gaps)
    assert len(set(round(g, 6) for g in gaps)) > 1  # jitter
    assert times[-1] < REKEY_ATTEMPT_TIME
    assert 15 <= len(times) <= 18
    ephemerals = {pkt[8:40] for _, pkt in inits}
    assert len(ephemerals) == len(inits)  # every retry has a fresh ephemeral key
    p = peer(sim.a)
    assert p.pending is None and not p.staged
    assert sim.a.dev.drops[DropReason.NO_SESSION] == 2
    assert sim.a.dev.events["handshake_gave_up"] == 2
    assert len(sim.a.dev.index_table) == 0
    # New outbound data starts a new attempt, which completes; the old packets are gone.
    sim.lose = lambda s, d, pkt: False
    sim.send(sim.a, [payload("p3")])
    sim.deliver()
    assert [d[2] for d in sim.b.delivered] == [payload("p3")]


def test_retry_after_lost_response_completes():
    sim = Sim()
    lost = []
    sim.lose = lambda s, d, pkt: pkt[0] == 2 and not lost and not lost.append(1)
    sim.send(sim.a, [payload("x")])
    sim.run_until(6.0)
    assert [d[2] for d in sim.b.delivered] == [payload("x")]
    assert sim.types("a").count(1) == 2


# --- keepalives --------------------------------------------------------------------------------


def test_passive_keepalive_without_ping_pong():
    sim = Sim()
    sim.send(sim.a, [payload("only")])
    sim.run_until(170.0)
    a_msgs = [(t, ty) for (t, s, _, ty, _) in sim.log if s == "a"]
    b_msgs = [(t, ty) for (t, s, _, ty, _) in sim.log if s == "b"]
    assert [ty for _, ty in a_msgs] == [1, 4]  # initiation, the data
    assert [ty for _, ty in b_msgs] == [2, 4]  # response, one keepalive
    t_keepalive = b_msgs[1][0]
    assert KEEPALIVE_TIMEOUT <= t_keepalive <= KEEPALIVE_TIMEOUT + 0.2
    ka = [pkt for (_, s, _, ty, pkt) in sim.log if s == "b" and ty == 4][0]
    assert len(ka) == 32
    assert sim.a.delivered == []  # keepalives are consumed


def test_sending_suppresses_passive_keepalive():
    sim = Sim()
    sim.established()  # B received data at 0 and replied at 0
    sim.run_until(30.0)
    assert sim.types("b", since=0.5) == []


def test_handshake_after_15s_of_one_way_silence():
    sim = Sim()
    sim.established()
    sim.now = 2.0
    sim.lose = lambda s, d, pkt: s == "b"  # B -> A is broken
    sim.send(sim.a, [payload("are you there")])
    sim.run_until(30.0)
    inits = sim.times("a", 1, since=2.0)
    assert inits
    delay = inits[0] - 2.0
    assert KEEPALIVE_TIMEOUT + REKEY_TIMEOUT <= delay <= 15.0 + REKEY_TIMEOUT_JITTER_MAX + 0.3


def test_persistent_keepalive_cadence():
    sim = Sim(ka_a=25)
    sim.run_until(0.0)
    assert sim.types("a")[:2] == [1, 4] and sim.types("b") == [2]  # keepalive brings it up
    sim.run_until(110.0)
    ka_times = sim.times("a", 4, since=1.0)
    assert len(ka_times) == 4
    gaps = [b - a for a, b in zip([0.0] + ka_times, ka_times, strict=False)]
    assert all(25.0 <= g <= 25.0 + 0.5 for g in gaps)
    assert sim.types("b", since=1.0) == []  # receiving keepalives arms nothing
    # Traffic postpones it: A sends data at 110, next keepalive 25 s after that.
    sim.send(sim.a, [payload("data")])
    sim.run_until(140.0)
    assert all(t >= 135.0 for t in sim.times("a", 4, since=110.5))


def test_persistent_keepalive_can_be_turned_off():
    sim = Sim(ka_a=10)
    sim.run_until(15.0)
    sim.a.dev.update_peer(1, persistent_keepalive=None)
    n = len(sim.types("a"))
    sim.run_until(100.0)
    assert len(sim.types("a")) == n


# --- expiry and wipe ---------------------------------------------------------------------------


def test_sessions_expire_at_180s():
    sim = Sim()
    sim.established()
    sim.run_until(100.0)
    sim.send(sim.b, [payload("100")])  # A answers with a passive keepalive at 110 (< 120)
    sim.run_until(179.0)
    assert peer(sim.b).current is not None
    sim.run_until(181.0)
    start = len(sim.log)
    batch = sim.send(sim.b, [payload("181")])
    assert batch.status_of(0) == DropReason.NO_SESSION
    assert [entry[3] for entry in sim.log[start:]] == [1]  # a new handshake, no data
    sim.deliver()
    assert sim.a.delivered[-1][2] == payload("181")


def test_expired_session_does_not_receive():
    sim = Sim()
    sim.established()
    kp = peer(sim.b).current
    late = kp.send.seal_one(kp.remote_index, kp.send_counter, payload("late"))
    kp.send_counter += 1
    sim.now = 180.5  # no dispatch yet: the keypair is still in the table but too old
    batch = sim.inject(sim.a, B_EP, [late])
    assert batch.status_of(0) in (DropReason.EXPIRED, DropReason.UNKNOWN_RECEIVER)
    assert sim.a.dev.drops[batch.status_of(0)] == 1


def test_key_material_wiped_after_540s():
    sim = Sim()
    sim.established()
    sim.run_until(ZERO_KEY_MATERIAL_TIME - 1)
    assert sim.a.dev.events["key_material_wiped"] == 0
    sim.run_until(ZERO_KEY_MATERIAL_TIME + ZERO_KEY_MATERIAL_TIME / 64 + 0.1)
    for node in (sim.a, sim.b):
        p = peer(node)
        assert node.dev.events["key_material_wiped"] == 1
        assert p.current is p.previous is p.next is p.pending is None
        assert len(node.dev.index_table) == 0
    assert sim.types(since=1.0) == [4]  # only B's passive keepalive in all that time


# --- initiation replay and flood ---------------------------------------------------------------


def _capture_initiations(sim: Sim, until: float = 0.0) -> list[bytes]:
    """A's initiations (first + retransmissions up to ``until``), none delivered."""
    sim.lose = lambda s, d, pkt: True
    sim.send(sim.a, [payload("x")])
    sim.run_until(until)
    sim.lose = lambda s, d, pkt: False
    return [pkt for (_, s, _, ty, pkt) in sim.log if s == "a" and ty == 1]


def _capture_initiation(sim: Sim) -> bytes:
    return _capture_initiations(sim)[-1]


def test_replayed_initiation_is_dropped():
    sim = Sim()
    init = _capture_initiation(sim)
    b1 = sim.inject(sim.b, A_EP, [init])
    assert b1.status_of(0) == DropReason.HANDSHAKE
    nxt = peer(sim.b).next
    sim.now = 1.0
    b2 = sim.inject(sim.b, ("203.0.113.9", 4444), [init])  # replayed by an attacker
    assert b2.status_of(0) == DropReason.STALE
    assert peer(sim.b).next is nxt  # state untouched
    assert peer(sim.b).endpoint == A_EP  # and no roaming to the attacker
    assert sim.b.dev.drops[DropReason.STALE] == 1
    assert sim.b.dev.events["initiation_stale_timestamp"] == 1
    assert sim.types("b").count(2) == 1


def test_stale_initiation_after_a_newer_one_is_dropped():
    sim = Sim()
    old, new = _capture_initiations(sim, until=6.0)
    assert new != old
    assert sim.inject(sim.b, A_EP, [new]).status_of(0) == DropReason.HANDSHAKE
    assert sim.inject(sim.b, A_EP, [old]).status_of(0) == DropReason.STALE


def test_initiations_faster_than_20ms_per_peer_are_dropped():
    sim = Sim()
    i1, i2 = _capture_initiations(sim, until=6.0)
    sim.now = 10.0
    assert sim.inject(sim.b, A_EP, [i1]).status_of(0) == DropReason.HANDSHAKE
    sim.now = 10.01
    assert sim.inject(sim.b, A_EP, [i2]).status_of(0) == DropReason.RATE_LIMITED
    assert sim.b.dev.events["initiation_flood"] == 1
    sim.now = 10.05  # the flood check did not consume the timestamp: i2 is still fresh
    assert sim.inject(sim.b, A_EP, [i2]).status_of(0) == DropReason.HANDSHAKE


def test_initiation_flood_under_load_is_rate_limited_per_source():
    sim = Sim()
    sim.b.dev.load_monitor.threshold = 4
    rng = random.Random(5)
    # Many distinct (fresh) initiations from one source: build them with other devices'
    # keys B does not know, so all carry valid mac1 but fail later.
    others = [Device(det_key(rng), wall_clock=lambda: WALL0) for _ in range(40)]
    msgs = []
    for d in others:
        d.add_peer(1, sim.b.key.public_key, endpoint=B_EP)
        tx = d.send(0.0, {1: PacketBatch.from_packets([b"x"])})
        msgs += tx[0].batch.packets(alive_only=True)
    batch = sim.inject(sim.b, ("198.51.100.7", 9999), msgs)
    statuses = [batch.status_of(i) for i in range(len(msgs))]
    # Under load and without mac2, B answers with cookie replies instead of doing DH.
    assert statuses.count(DropReason.UNDER_LOAD) >= 36
    assert sim.b.dev.events["cookie_reply_sent"] >= 36
    replies = [pkt for (_, s, d, ty, pkt) in sim.log if s == "b" and ty == 3]
    assert len(replies) == sim.b.dev.events["cookie_reply_sent"]


def test_rate_limit_applies_to_messages_with_valid_mac2():
    sim = Sim()
    sim.b.dev.load_monitor.threshold = 1
    sim.send(sim.a, [payload("x")])
    sim.deliver()  # cookie reply comes back to A
    assert sim.a.dev.events["cookie_received"] == 1
    sim.b.dev.rate_limiter.max_tokens = 0.0  # exhaust the bucket for everyone new
    sim.b.dev.rate_limiter.cost = 1.0
    sim.b.dev.rate_limiter._buckets[bytes([10, 0, 0, 1])] = [0.0, 0.0]
    sim.run_until(6.0)  # retry with mac2: valid, but the source has no tokens
    assert sim.b.dev.events["rate_limited"] >= 1
    assert peer(sim.b).next is None and sim.b.delivered == []


# --- cookies end to end ------------------------------------------------------------------------


def test_cookie_path_end_to_end():
    sim = Sim()
    sim.b.dev.load_monitor.threshold = 1  # B is permanently under load
    sim.send(sim.a, [payload("through the cookie")])
    sim.deliver()
    assert sim.types() == [1, 3]  # B answered with a cookie reply, not a response
    assert peer(sim.a).cookie.cookie is not None
    assert sim.b.dev.events["under_load_no_mac2"] == 1
    sim.run_until(6.0)  # A's retransmission carries mac2 and is processed
    assert sim.types()[2:5] == [1, 2, 4]
    assert [d[2] for d in sim.b.delivered] == [payload("through the cookie")]
    init2 = [pkt for (_, s, _, ty, pkt) in sim.log if s == "a" and ty == 1][1]
    assert init2[-16:] != bytes(16)


def test_cookie_reply_never_roams():
    sim = Sim()
    sim.b.dev.load_monitor.threshold = 1
    sim.lose = lambda s, d, pkt: pkt[0] == 3
    sim.send(sim.a, [payload("x")])
    sim.deliver()
    reply = [pkt for (_, s, _, ty, pkt) in sim.log if ty == 3][0]
    batch = sim.inject(sim.a, ("192.0.2.99", 7), [reply])
    assert batch.status_of(0) == DropReason.HANDSHAKE
    assert peer(sim.a).cookie.cookie is not None
    assert peer(sim.a).endpoint == B_EP


# --- simultaneous initiation -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_simultaneous_initiation_converges_to_one_session_pair(seed):
    sim = Sim(seed=seed)
    sim.send(sim.a, [payload("from a")])
    sim.send(sim.b, [payload("from b")])
    assert sim.types() == [1, 1]
    sim.deliver()
    assert sim.types().count(2) == 1  # exactly one side answered
    pa, pb = peer(sim.a), peer(sim.b)
    assert pa.current is not None and pb.current is not None
    assert pa.current.local_index == pb.current.remote_index
    assert pb.current.local_index == pa.current.remote_index
    assert pa.pending is pb.pending is None and pa.next is pb.next is None
    assert [d[2] for d in sim.a.delivered] == [payload("from b")]
    assert [d[2] for d in sim.b.delivered] == [payload("from a")]
    sim.run_until(60.0)  # and it stays that way: no further handshakes
    assert sim.types().count(1) == 2
    sim.send(sim.a, [payload("later")])
    sim.send(sim.b, [payload("later b")])
    sim.deliver()
    assert sim.b.delivered[-1][2] == payload("later")
    assert sim.a.delivered[-1][2] == payload("later b")


def test_simultaneous_initiation_late_crossing_stays_working():
    """After REKEY_TIMEOUT both sides answer (no arbitration), and traffic still flows."""
    sim = Sim()
    sim.lose = lambda s, d, pkt: True
    sim.send(sim.a, [payload("a")])
    sim.now = 5.2
    sim.send(sim.b, [payload("b")])
    sim.lose = lambda s, d, pkt: False
    sim.run_until(7.0)
    sim.run_until(40.0)
    sim.send(sim.a, [payload("a2")])
    sim.send(sim.b, [payload("b2")])
    sim.deliver()
    assert payload("a2") in [d[2] for d in sim.b.delivered]
    assert payload("b2") in [d[2] for d in sim.a.delivered]
    assert payload("a") in [d[2] for d in sim.b.delivered]
    assert payload("b") in [d[2] for d in sim.a.delivered]


# --- configuration changes ---------------------------------------------------------------------


def test_peer_key_change_rebuilds_handshake_and_mac1():
    sim = Sim()
    sim.established()
    rng = random.Random(99)
    new_b = det_key(rng)
    # B's owner replaces B by a device with a new key at the same address.
    sim.b = Node("b", sim, new_b, B_EP)
    sim.nodes["b"] = sim.b
    sim.b.dev.add_peer(1, sim.a.key.public_key, endpoint=A_EP)
    sim.now = 10.0
    # A still talks to the old key: its data is not understood by the new B.
    sim.send(sim.a, [payload("to old key")])
    sim.deliver()
    assert sim.b.delivered == [] and sim.b.dev.drops[DropReason.UNKNOWN_RECEIVER] == 1
    sim.a.dev.update_peer(1, public_key=new_b.public_key)
    pa = peer(sim.a)
    assert pa.current is pa.previous is pa.next is pa.pending is None
    assert len(sim.a.dev.index_table) == 0
    sim.now = 11.0
    sim.send(sim.a, [payload("to new key")])
    sim.deliver()
    assert [d[2] for d in sim.b.delivered] == [payload("to new key")]
    assert sim.b.dev.events["invalid_mac1"] == 0


def test_own_private_key_change_drops_sessions_and_rehandshakes():
    sim = Sim()
    sim.established()
    new_a = det_key(random.Random(1234))
    with pytest.raises(ConfigError, match="belongs to peer 1"):
        sim.a.dev.set_private_key(sim.b.key)
    sim.a.dev.set_private_key(new_a)
    pa = peer(sim.a)
    assert pa.current is pa.previous is pa.next is None
    assert len(sim.a.dev.index_table) == 0
    sim.b.dev.update_peer(1, public_key=new_a.public_key)
    sim.now = 10.0
    sim.send(sim.a, [payload("new identity")])
    sim.deliver()
    assert sim.b.delivered[-1][2] == payload("new identity")
    sim.send(sim.b, [payload("welcome")])
    sim.deliver()
    assert sim.a.delivered[-1][2] == payload("welcome")


def test_initiation_with_mac1_for_old_key_is_dropped():
    sim = Sim()
    init = _capture_initiation(sim)
    other = Device(det_key(random.Random(7)), wall_clock=lambda: WALL0)
    other.add_peer(1, sim.a.key.public_key)
    batch = PacketBatch.from_packets([init])
    batch.fill_endpoint(A_EP)
    other.receive(0.0, batch)
    assert batch.status_of(0) == DropReason.BAD_MAC
    assert other.events["invalid_mac1"] == 1


def test_psk_change_requires_both_sides():
    sim = Sim()
    sim.established()
    psk = PresharedKey.generate()
    sim.a.dev.update_peer(1, psk=psk)
    sim.now = 2.0
    sim.send(sim.a, [payload("psk mismatch")])
    sim.deliver()
    assert sim.a.dev.events["response_auth"] == 1  # B answered with the old (zero) psk
    sim.b.dev.update_peer(1, psk=psk)
    sim.run_until(8.0)
    assert sim.b.delivered[-1][2] == payload("psk mismatch")


def test_remove_peer_cancels_everything():
    sim = Sim(ka_a=5)
    sim.established()
    sim.send(sim.a, [payload("x")])
    sim.a.dev.remove_peer(1)
    assert len(sim.a.dev.scheduler) == 0 and len(sim.a.dev.index_table) == 0
    assert sim.a.dev.dispatch_events(1000.0) == []
    batch = PacketBatch.from_packets([b"x"])
    assert sim.a.dev.send(1.0, {1: batch}) == [] and batch.status_of(0) == DropReason.NO_ROUTE


def test_configuration_errors_name_the_value():
    sim = Sim()
    dev = sim.a.dev
    with pytest.raises(ConfigError, match="already exists"):
        dev.add_peer(1, sim.b.key.public_key)
    with pytest.raises(ConfigError, match="already belongs to peer 1"):
        dev.add_peer(2, sim.b.key.public_key)
    with pytest.raises(ConfigError, match="own public key"):
        dev.add_peer(3, sim.a.key.public_key)
    with pytest.raises(ConfigError, match="-1"):
        dev.add_peer(-1, PrivateKey.generate().public_key)
    with pytest.raises(ConfigError, match="keepalive"):
        dev.add_peer(4, PrivateKey.generate().public_key, persistent_keepalive=-3)
    with pytest.raises(ConfigError, match="no peer with id 9"):
        dev.update_peer(9, endpoint=B_EP)
    from dataplane.wireguard.keys import PublicKey

    with pytest.raises(ConfigError, match="low-order"):
        dev.add_peer(5, PublicKey(bytes(32)))


# --- roaming -----------------------------------------------------------------------------------


def test_roaming_follows_authenticated_packets_only():
    sim = Sim()
    sim.established()
    new_src = ("192.0.2.50", 40000)
    sim.a.src = new_src  # A's NAT rebinds
    sim.a.ep = new_src
    sim.now = 1.0
    # Garbage and a replayed data packet from yet another address do not move B's endpoint.
    old_data = [pkt for (_, s, _, ty, pkt) in sim.log if s == "a" and ty == 4][0]
    b = sim.inject(sim.b, ("203.0.113.1", 1), [old_data, b"\x04\0\0\0" + bytes(40), b"junk"])
    assert [b.status_of(i) for i in range(3)] == [
        DropReason.REPLAY,
        DropReason.UNKNOWN_RECEIVER,
        DropReason.BAD_TYPE,
    ]
    assert peer(sim.b).endpoint == A_EP
    sim.send(sim.a, [payload("from new address")])
    sim.deliver()
    assert peer(sim.b).endpoint == new_src
    assert sim.b.dev.events["roamed"] == 1
    sim.send(sim.b, [payload("reply")])
    sim.deliver()
    assert sim.log[-1][2] == "a" and sim.a.delivered[-1][2] == payload("reply")


def test_handshake_roams_the_responder_side():
    sim = Sim()
    sim.b.dev.update_peer(1, endpoint=None)  # B does not know where A is
    sim.send(sim.a, [payload("x")])
    sim.deliver()
    assert peer(sim.b).endpoint == A_EP
    assert [d[2] for d in sim.b.delivered] == [payload("x")]


def test_unknown_peer_and_no_endpoint_are_counted():
    sim = Sim()
    sim.b.dev.update_peer(1, endpoint=None)
    batch = sim.send(sim.b, [payload("x")])
    assert batch.status_of(0) == DropReason.NO_ROUTE
    batch = sim.send(sim.b, [payload("y")], peer=77)
    assert batch.status_of(0) == DropReason.NO_ROUTE
    assert sim.b.dev.drops[DropReason.NO_ROUTE] == 2


def test_staging_queue_is_bounded_drop_oldest_and_flushed_in_order():
    sim = Sim()
    sim.lose = lambda s, d, pkt: True
    for k in range(3):
        sim.send(sim.a, [payload(f"p{k}-{i}") for i in range(60)])
    p = peer(sim.a)
    assert len(p.staged) == 128 and p.staged_dropped == 52
    assert sim.a.dev.drops[DropReason.QUEUE_FULL] == 52
    sim.lose = lambda s, d, pkt: False
    sim.run_until(6.0)
    got = [d[2] for d in sim.b.delivered]
    expect = [payload(f"p{k}-{i}") for k in range(3) for i in range(60)][52:]
    assert got == expect


def test_next_event_is_a_range_and_dispatch_early_is_harmless():
    sim = Sim()
    sim.lose = lambda s, d, pkt: True
    sim.send(sim.a, [payload("x")])
    rng = sim.a.dev.next_event()
    assert rng is not None and REKEY_TIMEOUT <= rng.start <= rng.end
    assert sim.a.dev.dispatch_events(1.0) == []
    assert sim.a.dev.next_event() == rng
    assert struct.unpack("<I", bytes(4))[0] == 0
