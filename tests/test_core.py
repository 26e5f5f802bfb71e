"""The synchronous DataPlane core: two cores joined in memory, in simulated time."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
from icmp_ping import checksum

from dataplane._batch import DropReason, PacketBatch
from dataplane.core import PEER_EXPIRATION, ConfigError, DataPlane
from dataplane.filter.packet import FilterError
from dataplane.results import Output
from dataplane.wireguard.keys import PresharedKey, PrivateKey

EP_A = ("192.0.2.1", 51820)
EP_B = ("192.0.2.2", 51820)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if s.version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s.packed, d.packed
        )
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + udp
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, s.packed, d.packed)
    return hdr + udp


class Pair:
    """Two cores whose underlay outputs are fed to each other (nothing lost unless asked)."""

    def __init__(self, psk: bool = False, v6: bool = False, keepalive: float | None = None):
        self.ka, self.kb = PrivateKey.generate(), PrivateKey.generate()
        self.wall = 1_700_000_000.0
        self.a = DataPlane(self.ka, wall_clock=lambda: self.wall)
        self.b = DataPlane(self.kb, wall_clock=lambda: self.wall)
        shared = PresharedKey.generate() if psk else None
        self.addr_a = "fd00::1" if v6 else "10.0.0.1"
        self.addr_b = "fd00::2" if v6 else "10.0.0.2"
        plen = 128 if v6 else 32
        self.pa = self.a.add_peer(
            self.kb.public_key,
            allowed_ips=[f"{self.addr_b}/{plen}"],
            psk=shared,
            endpoint=EP_B,
            persistent_keepalive=keepalive,
        )
        self.pb = self.b.add_peer(
            self.ka.public_key, allowed_ips=[f"{self.addr_a}/{plen}"], psk=shared, endpoint=EP_A
        )
        self.a.set_addresses([self.addr_a])
        self.b.set_addresses([self.addr_b])
        # packets each node delivered to its own overlay transport 0
        self.delivered: dict[str, list[bytes]] = {"a": [], "b": []}
        self.datagrams = 0

    def node(self, name: str) -> DataPlane:
        return self.a if name == "a" else self.b

    def deliver(self, src: str, out: Output, now: float) -> None:
        """Carry src's datagrams to the other node (and its replies back), to a fixpoint."""
        pending = [(src, out)]
        while pending:
            frm, o = pending.pop(0)
            for oid, batches in o.to_overlay.items():
                assert oid == 0
                for b in batches:
                    self.delivered[frm] += b.packets(alive_only=True)
            to = "b" if frm == "a" else "a"
            for (_uid, endpoint), batches in o.to_underlay.items():
                assert endpoint == (EP_B if to == "b" else EP_A)
                for b in batches:
                    wire = b.packets(alive_only=True)
                    self.datagrams += len(wire)
                    rx = PacketBatch.from_packets(wire)
                    rx.fill_endpoint(EP_A if frm == "a" else EP_B)
                    pending.append((to, self.node(to).process_inbound(now, 0, rx)))

    def send(self, src: str, packets: list[bytes], now: float) -> None:
        batch = PacketBatch.from_packets(packets)
        self.deliver(src, self.node(src).process_outbound(now, 0, batch), now)

    def tick(self, now: float) -> None:
        for name in ("a", "b"):
            self.deliver(name, self.node(name).process_events(now), now)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("psk", [False, True])
def test_first_packet_triggers_handshake_then_flows_both_ways(v6, psk):
    p = Pair(psk=psk, v6=v6)
    pkt = udp_packet(p.addr_a, p.addr_b, 1000, 2000, b"hello")
    p.send("a", [pkt], now=1.0)
    # staged during the handshake, flushed on confirmation, delivered at b's overlay
    assert p.delivered["b"] == [pkt]
    back = udp_packet(p.addr_b, p.addr_a, 2000, 1000, b"world" * 50)
    p.send("b", [back, back], now=1.1)
    assert p.delivered["a"] == [back, back]
    assert p.a.stats().peers[p.pa].has_session and p.b.stats().peers[p.pb].has_session


def test_loopback_to_own_address_never_leaves():
    p = Pair()
    pkt = udp_packet(p.addr_a, p.addr_a, 1, 2, b"self")
    out = p.a.process_outbound(1.0, 0, PacketBatch.from_packets([pkt]))
    assert not out.to_underlay
    assert [b.packets() for b in out.to_overlay[0]] == [[pkt]]
    assert p.a.loopback_packets == 1


def test_no_route_and_hole_are_counted():
    p = Pair()
    p.a.update_peer(p.pa, allowed_ips=["10.0.0.0/24"])
    p.a.set_routes(drop=["10.0.0.128/25"])
    batch = PacketBatch.from_packets(
        [
            udp_packet("10.0.0.1", "10.9.9.9", 1, 2, b"x"),  # no route
            udp_packet("10.0.0.1", "10.0.0.200", 1, 2, b"x"),  # hole
            b"\x45garbage",  # not an IP packet
        ]
    )
    out = p.a.process_outbound(1.0, 0, batch)
    assert not out.to_underlay and not out.to_overlay
    assert p.a.drops[DropReason.NO_ROUTE] == 1
    assert p.a.drops[DropReason.ROUTE_DROP] == 1
    assert p.a.drops[DropReason.BAD_IP] == 1


def test_source_filter_drops_spoofed_inner_source():
    p = Pair()
    good = udp_packet(p.addr_a, p.addr_b, 1, 2, b"ok")
    p.send("a", [good], 1.0)
    # b only accepts 10.0.0.1 from a; a (which routes 10.0.0.0/24 to b) sends from .7
    p.a.update_peer(p.pa, allowed_ips=["10.0.0.0/24"])
    spoof = udp_packet("10.0.0.7", p.addr_b, 1, 2, b"spoof")
    p.send("a", [spoof], 1.1)
    assert p.delivered["b"] == [good]
    assert p.b.drops[DropReason.SOURCE_FILTER] == 1


def test_packet_filter_default_deny_and_return_traffic():
    p = Pair()
    p.b.set_filter(
        json.dumps(
            [
                {
                    "SrcIPs": ["10.0.0.1"],
                    "DstPorts": [{"IP": "*", "Ports": {"First": 53, "Last": 53}}],
                }
            ]
        )
    )
    allowed = udp_packet(p.addr_a, p.addr_b, 5000, 53, b"query")
    denied = udp_packet(p.addr_a, p.addr_b, 5000, 54, b"nope")
    p.send("a", [allowed, denied], 1.0)
    assert p.delivered["b"] == [allowed]
    assert p.b.drops[DropReason.PACKET_FILTER] == 1
    # b starts a flow to a:7000; a's reply from port 7000 comes back in although no rule
    # allows it.
    p.send("b", [udp_packet(p.addr_b, p.addr_a, 6000, 7000, b"out")], 1.2)
    reply = udp_packet(p.addr_a, p.addr_b, 7000, 6000, b"reply")
    p.send("a", [reply], 1.3)
    assert p.delivered["b"] == [allowed, reply]
    with pytest.raises(FilterError):
        p.b.set_filter('[{"SrcIPs": ["not-an-ip"]}]')
    p.send("a", [allowed], 1.4)  # the previous rules are still in force
    assert p.delivered["b"][-1] == allowed


def test_disco_and_stun_are_handed_to_the_control_plane():
    p = Pair()
    disco = b"TS\xf0\x9f\x92\xac" + bytes(32) + bytes(24) + b"payload"
    stun = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, bytes(12))
    batch = PacketBatch.from_packets([disco, stun, b"junk-junk-junk-junk-junk"])
    batch.fill_endpoint(("198.51.100.7", 41641))
    out = p.a.process_inbound(1.0, 3, batch)
    assert out.disco == [(3, ("198.51.100.7", 41641), disco)]
    assert out.stun == [(3, ("198.51.100.7", 41641), stun)]
    assert p.a.drops[DropReason.UNCLASSIFIED] == 1


def test_timers_drive_keepalive_and_next_event():
    p = Pair(keepalive=25)
    assert p.a.next_event() is not None
    p.tick(0.0)  # persistent keepalive fires at once and brings the session up
    assert p.a.stats().peers[p.pa].has_session
    sent = p.datagrams
    for t in range(1, 60):
        p.tick(float(t))
    # a sends a keepalive every 25 s; nothing else is needed to keep the pair alive
    assert 2 <= p.datagrams - sent <= 6


def test_active_peers_set_changes_only_on_membership_change_and_is_collected():
    p = Pair()
    assert p.a.active_peers == frozenset()
    p.send("a", [udp_packet(p.addr_a, p.addr_b, 1, 2, b"x")], 1.0)
    first = p.a.active_peers
    assert first == {p.pa}
    p.send("a", [udp_packet(p.addr_a, p.addr_b, 1, 2, b"y")], 2.0)
    assert p.a.active_peers is first  # same object: membership unchanged
    t = 2.0
    while t < 2.0 + PEER_EXPIRATION + 20:
        t += 1
        p.tick(t)
    assert p.a.active_peers == frozenset()


def test_remove_peer_drops_its_routes():
    p = Pair()
    p.a.remove_peer(p.pa)
    p.a.process_outbound(
        1.0, 0, PacketBatch.from_packets([udp_packet(p.addr_a, p.addr_b, 1, 2, b"x")])
    )
    assert p.a.drops[DropReason.NO_ROUTE] == 1
    with pytest.raises(ConfigError):
        p.a.remove_peer(p.pa)
    with pytest.raises(ConfigError):
        p.a.add_peer(p.kb.public_key, allowed_ips=["bogus"])


def test_full_mtu_packets_cross():
    # Regression: 1420-byte packets are not padded (MTU cap), so their datagrams are not a
    # multiple of 16 long; classification used to refuse them.
    p = Pair()
    big = udp_packet(p.addr_a, p.addr_b, 1, 2, bytes(1420 - 28))
    p.send("a", [big, big], 1.0)
    assert p.delivered["b"] == [big, big]


def test_removing_a_peer_counts_its_staged_packets():
    p = Pair()
    lost = [udp_packet(p.addr_a, p.addr_b, 1, 2, b"%d" % i) for i in range(3)]
    out = p.a.process_outbound(1.0, 0, PacketBatch.from_packets(lost))  # staged, handshake sent
    assert out.to_underlay  # the initiation
    p.a.remove_peer(p.pa)
    assert p.a.stats().device_drops == {"NO_SESSION": 3}


def test_configure_rebuilds_once_and_peer_config_reads_back():
    p = Pair()
    rebuilds = []
    real = p.a._rebuild

    def counting() -> None:
        rebuilds.append(p.a._deferring)
        real()

    p.a._rebuild = counting  # type: ignore[method-assign]
    keys = [PrivateKey.generate().public_key for _ in range(20)]
    with p.a.configure() as core:
        ids = [
            core.add_peer(k, allowed_ips=[f"10.5.{i}.0/24"], endpoint=("192.0.2.9", 1000 + i))
            for i, k in enumerate(keys)
        ]
    assert len([r for r in rebuilds if r == 0]) == 1
    cfg = p.a.peer_config(ids[3])
    assert cfg.public_key == keys[3] and cfg.endpoint == ("192.0.2.9", 1003)
    assert [str(n) for n in cfg.allowed_ips] == ["10.5.3.0/24"] and cfg.psk is None
    assert p.a.peer_id_of(keys[3]) == ids[3]
    # the single rebuild made all 20 routes live
    out = p.a.process_outbound(
        1.0, 0, PacketBatch.from_packets([udp_packet("10.0.0.1", "10.5.7.9", 1, 2, b"x")])
    )
    assert list(out.to_underlay) == [(0, ("192.0.2.9", 1007))]


def test_private_key_change_keeps_peers_and_drops_sessions():
    p = Pair()
    p.send("a", [udp_packet(p.addr_a, p.addr_b, 1, 2, b"x")], 1.0)
    assert p.a.stats().peers[p.pa].has_session
    new = PrivateKey.generate()
    p.a.set_private_key(new)
    assert p.a.public_key == new.public_key and p.a.private_key == new
    assert not p.a.stats().peers[p.pa].has_session
    assert p.a.peer_ids() == [p.pa]


def test_group_and_distinct():
    from dataplane._group import distinct, group

    b = PacketBatch.from_packets([b"a", b"bb", b"ccc", b"dddd", b"e"])
    for i, peer in enumerate([3, 1, 3, -1, 1]):
        b.set_peer(i, peer)
    b.set_status(4, DropReason.NO_ROUTE)
    assert distinct(b) == [3, 1]
    g = group(b)
    assert {k: v.packets() for k, v in g.items()} == {3: [b"a", b"ccc"], 1: [b"bb"]}
    assert g[3].offset(1) == b.offset(2)  # same headroom, so headers still fit in front
    solo = PacketBatch.from_packets([b"x", b"y"])
    solo.fill_peer(7)
    assert group(solo)[7] is solo  # one key, all alive: no copy
