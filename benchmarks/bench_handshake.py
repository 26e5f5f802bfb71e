"""Handshakes per second on one core, against the cost of their X25519 work alone.

Baselines (same run): ``x25519_responder`` does exactly the responder's public-key work of
one handshake with ``cryptography`` (one ephemeral key generation and three DH; the
static-static DH is precomputed per peer, as wireguard-go does), ``x25519_both`` the work of
both sides. Measured: ``responder`` is Device.receive of one fresh initiation up to the
response leaving (mac1, Noise, index, keypair, timers, output batch); ``full`` is one whole
handshake between two Devices (initiation, response, confirmation keepalive).
``responder_noise`` is the cryptographic core of the same work (mac1 check, Noise consume
and respond, keypair derivation) without the device's bookkeeping.
Target (issue 3): responder <= 1.5 x x25519_responder.

Run: python3 -m pytest benchmarks/bench_handshake.py --benchmark-only -q
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dataplane._batch import DropReason, PacketBatch
from dataplane.wireguard.device import Device
from dataplane.wireguard.keys import PrivateKey

A_EP, B_EP = ("10.0.0.1", 51820), ("10.0.0.2", 51820)
ROUNDS = 200


def _x25519_side(static: X25519PrivateKey, peer_static: bytes, peer_ephemeral: bytes) -> None:
    e = X25519PrivateKey.generate()
    e.public_key().public_bytes_raw()
    static.exchange(X25519PublicKey.from_public_bytes(peer_ephemeral))
    e.exchange(X25519PublicKey.from_public_bytes(peer_ephemeral))
    e.exchange(X25519PublicKey.from_public_bytes(peer_static))


@pytest.fixture(scope="module")
def keys():
    def pub() -> bytes:
        return X25519PrivateKey.generate().public_key().public_bytes_raw()

    return X25519PrivateKey.generate(), pub(), pub()


@pytest.mark.benchmark(group="handshake-responder")
def test_x25519_responder(benchmark, keys):
    static, peer_static, peer_eph = keys
    benchmark(_x25519_side, static, peer_static, peer_eph)


@pytest.mark.benchmark(group="handshake-full")
def test_x25519_both(benchmark, keys):
    static, peer_static, peer_eph = keys

    def both():
        _x25519_side(static, peer_static, peer_eph)
        _x25519_side(static, peer_static, peer_eph)

    benchmark(both)


class Pair:
    def __init__(self) -> None:
        self.now = 0.0
        ka, kb = PrivateKey.generate(), PrivateKey.generate()
        self.a = Device(ka, wall_clock=lambda: 1.7e9)
        self.b = Device(kb, wall_clock=lambda: 1.7e9)
        self.a.add_peer(1, kb.public_key, endpoint=B_EP)
        self.b.add_peer(1, ka.public_key, endpoint=A_EP)

    @staticmethod
    def wire(transmits, src) -> PacketBatch:
        pkts = [p for t in transmits for p in t.batch.packets(alive_only=True)]
        batch = PacketBatch.from_packets(pkts, mtu=160)
        batch.fill_endpoint(src)
        return batch

    def initiation(self) -> PacketBatch:
        # Past REJECT_AFTER_TIME, so A's session is unusable and sending starts a handshake.
        self.now += 200.0
        return self.wire(self.a.send(self.now, {1: PacketBatch.from_packets([b"x" * 64])}), A_EP)

    def handshake(self) -> None:
        initiation = self.initiation()  # advances self.now
        response = self.wire(self.b.receive(self.now, initiation), B_EP)
        confirm = self.wire(self.a.receive(self.now, response), A_EP)
        self.b.receive(self.now, confirm)
        assert confirm.status_of(0) == DropReason.OK  # the staged packet confirmed it


@pytest.mark.benchmark(group="handshake-responder")
def test_responder(benchmark):
    pair = Pair()

    def setup():
        return (pair.initiation(),), {}

    def respond(batch):
        return pair.b.receive(pair.now, batch)

    benchmark.pedantic(respond, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    assert pair.b.events["response_sent"] == ROUNDS + 5


@pytest.mark.benchmark(group="handshake-responder")
def test_responder_noise(benchmark):
    from dataplane.wireguard import noise
    from dataplane.wireguard.keypair import Keypair
    from dataplane.wireguard.messages import MessageInitiation

    pair = Pair()
    b = pair.b
    priv = b.private_key.x25519()
    psk = bytes(32)

    def setup():
        return (bytes(pair.initiation()[0]),), {}

    def respond(msg):
        assert b.cookie_checker.check_mac1(msg)
        init = MessageInitiation.unpack(msg)
        st = noise.consume_message_initiation(
            priv, b._responder_cache, init.noise_body, b._static_static
        )
        body, send, recv = noise.create_message_response(st, psk)
        return body, Keypair.derive(send, recv, 1, init.sender, 0.0, False)

    benchmark.pedantic(respond, setup=setup, rounds=ROUNDS, warmup_rounds=5)


@pytest.mark.benchmark(group="handshake-full")
def test_full(benchmark):
    pair = Pair()
    benchmark.pedantic(pair.handshake, rounds=ROUNDS, warmup_rounds=5)
    assert pair.b.events["handshake_completed_responder"] == ROUNDS + 5
    benchmark.extra_info["handshakes_per_second"] = 1.0 / benchmark.stats.stats.mean
