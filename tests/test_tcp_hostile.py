"""Hostile input to the sans-I/O TCP: random bytes, broken headers, every flag and number.

Each example builds a fresh world (``tcp_sim.Net``: stack B listening on port 80 with an
established connection from A) and feeds B one batch of hostile packets. Invariants:
``TcpStack.input`` never raises; every packet the C parser refuses is refused for the
reason ``tcp_model`` gives and counted once under that reason in ``stack.drops`` (and a
valid segment for an address not ours under "not_our_address"); every
TCP slot leaves the batch consumed or dropped; every segment the stack sends in reply is
well formed (the model parses it strictly); and the established connection afterwards
still carries data both ways, byte for byte. Separately, ``Demux.input``'s parse of
random valid segments is compared field by field with the model's.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass

import tcp_model as m
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tcp_model import ACK, RST, SYN, Seg
from tcp_sim import A6, B6, A, B, Net, addr, transfer

from dataplane._batch import DropReason, PacketBatch
from dataplane.netstack import _tcp
from dataplane.netstack._ip import pack_address
from dataplane.netstack.tcp import State, TcpStack

PORT = 80
MOD = 1 << 32
FUZZ = settings(
    max_examples=int(os.environ.get("TCP_FUZZ_EXAMPLES", "150")),  # more for a long hunt
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the world ------------------------------------------------------------------------------


@dataclass
class World:
    net: Net
    a: str
    b: str
    client: object  # Connection on A
    server: object  # Connection on B
    listener: object

    @property
    def stack(self) -> TcpStack:
        return self.net.stack(self.b)

    @property
    def cport(self) -> int:
        return self.client.local[1]


def world(v6: bool) -> World:
    a, b = (A6, B6) if v6 else (A, B)
    net = Net(a, b)
    sa, sb = net.stack(a), net.stack(b)
    listener = sb.listen(None, PORT, 64)
    client = sa.connect(addr(b, PORT), net.now)
    assert net.run(5, until=lambda: bool(listener.accept_queue))
    server = sb.accept(listener)
    assert transfer(net, client, server, b"warm-up" * 100) == b"warm-up" * 100
    return World(net, a, b, client, server, listener)


def c_verdicts(packets: list[bytes]) -> list[str]:
    """What the C parser says of each packet, on a demux with no connections."""
    batch = PacketBatch.from_packets(packets, mtu=65000)
    segs = _tcp.Segments(max(1, len(packets)))
    _tcp.Demux(16, 0).input(batch, segs, 0.0)
    names = [_tcp.VERDICT_NAMES[segs.verdict(i)] for i in range(len(packets))]
    return ["ok" if n == "slow" else n for n in names]


def feed(w: World, packets: list[bytes]) -> None:
    """Hostile packets into B, with every invariant of the module docstring checked."""
    stack = w.stack
    model = [m.tcp_verdict(p) for p in packets]
    assert c_verdicts(packets) == model
    drops_before = Counter(stack.drops)
    seg_in = stack.counters["segments_in"]
    batch = PacketBatch.from_packets(packets, mtu=65000)
    others = stack.input(batch, w.net.now)
    assert others == model.count("not_tcp")
    tcp_slots = [i for i, v in enumerate(model) if v not in ("not_tcp", "skipped")]
    assert stack.counters["segments_in"] - seg_in == len(tcp_slots)
    for i in tcp_slots:
        assert batch.status_of(i) != DropReason.OK
    grew = Counter(stack.drops)
    grew.subtract(drops_before)
    refused = Counter(v for v in model if v not in ("ok", "not_tcp", "skipped"))
    for name in _tcp.VERDICT_NAMES:
        assert grew[name] == refused[name], name
    # A valid segment for an address that is not ours matches no connection: counted.
    ours = {m.ipaddress.ip_address(w.b)}
    stray = sum(
        1
        for p, v in zip(packets, model, strict=True)
        if v == "ok" and m.ipaddress.ip_address(m.parse(p).dst) not in ours
    )
    assert grew["not_our_address"] == stray
    w.net.flush()
    for pkt in w.net.sent:
        m.parse(pkt)  # everything sent is well formed (raises otherwise)


def still_works(w: World) -> None:
    """The established connection carries data both ways afterwards."""
    assert w.client.state == w.server.state == State.ESTABLISHED
    up = bytes(k % 241 for k in range(40_000))
    down = bytes(k % 239 for k in range(40_000))
    assert transfer(w.net, w.client, w.server, up, 120) == up
    assert transfer(w.net, w.server, w.client, down, 120) == down
    for pkt in w.net.sent:
        m.parse(pkt)


def fix_checksum(pkt: bytes) -> bytes:
    """Recompute the TCP checksum of an IP packet whose IP layer is valid (so mutated
    headers reach the TCP checks behind the checksum)."""
    v6 = pkt[0] >> 4 == 6
    off = 40 if v6 else (pkt[0] & 15) * 4
    end = 40 + struct.unpack_from("!H", pkt, 4)[0] if v6 else struct.unpack_from("!H", pkt, 2)[0]
    if end - off < 18:
        return pkt
    src = m.ipaddress.ip_address(pkt[8:24] if v6 else pkt[12:16])
    dst = m.ipaddress.ip_address(pkt[24:40] if v6 else pkt[16:20])
    l4 = bytearray(pkt[off:end])
    l4[16:18] = b"\x00\x00"
    c = m.checksum(m.pseudo_header(str(src), str(dst), len(l4)) + bytes(l4))
    l4[16:18] = struct.pack("!H", c)
    return pkt[:off] + bytes(l4) + pkt[end:]


# -- strategies ---------------------------------------------------------------------------

u32 = st.integers(0, MOD - 1)
port = st.integers(0, 65535)


@st.composite
def raw_options(draw) -> bytes:
    """Option lists of any shape: EOL/NOP, lengths 0 and 1, overlong, truncated, known
    kinds with wrong lengths, unknown kinds."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 19, 30, 34, 254, 255]))
        shape = draw(st.sampled_from(["bare", "zero", "one", "right", "any", "long"]))
        if shape == "bare":
            out += bytes([kind])
            continue
        right = {2: 4, 3: 3, 4: 2, 5: 10, 8: 10}.get(kind, 2 + draw(st.integers(0, 6)))
        ln = {
            "zero": 0,
            "one": 1,
            "right": right,
            "any": draw(st.integers(2, 40)),
            "long": draw(st.integers(41, 255)),
        }[shape]
        body = draw(st.binary(min_size=0, max_size=max(0, min(ln - 2, 38))))
        out += bytes([kind, ln]) + body
    return out[:40]


@st.composite
def option_fields(draw) -> dict:
    f = {}
    if draw(st.booleans()):
        f["mss"] = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        f["ws"] = draw(st.integers(0, 255))
    f["sack_perm"] = draw(st.booleans())
    if draw(st.booleans()):
        f["ts"] = (draw(u32), draw(u32))
    f["sack"] = draw(st.lists(st.tuples(u32, u32), max_size=4))
    return f


def addresses(v6: bool):
    if v6:
        srcs = ["fd00::1", "fd00::9", "ff02::1", "::", "fe80::1"]
        dsts = ["fd00::2", "fd00::77"]
    else:
        srcs = ["10.0.0.1", "10.0.0.9", "224.0.0.1", "0.0.0.0", "255.255.255.255"]
        dsts = ["10.0.0.2", "10.0.0.77"]
    return st.sampled_from(srcs), st.sampled_from(dsts)


@st.composite
def hostile_segment(draw, v6: bool, cport: int):
    """One hostile packet: any flags, numbers, options; perhaps a bad checksum, a data
    offset past the end or a truncation; perhaps on the real connection's 4-tuple."""
    srcs, dsts = addresses(v6)
    on_conn = draw(st.booleans())
    if on_conn:
        src, dst, sport, dport = (A6 if v6 else A), (B6 if v6 else B), cport, PORT
    else:
        src, dst = draw(srcs), draw(dsts)
        sport = draw(st.one_of(st.just(cport), port))
        dport = draw(st.one_of(st.just(PORT), port))
    seg = Seg(
        src,
        dst,
        sport,
        dport,
        seq=draw(u32),
        ack=draw(u32),
        flags=draw(st.integers(0, 255)),
        wnd=draw(st.integers(0, 65535)),
        payload=draw(st.binary(max_size=64)),
        urg=draw(st.integers(0, 65535)),
    )
    if draw(st.booleans()):
        seg.raw_options = draw(raw_options())
    else:
        for k, v in draw(option_fields()).items():
            setattr(seg, k, v)
        if len(m.encode_options(seg)) > 40:
            seg.sack = seg.sack[:1]
            seg.mss = None
        if len(m.encode_options(seg)) > 40:
            seg.sack = []
    doff = draw(st.one_of(st.none(), st.integers(0, 15)))
    pkt = m.build(seg, doff=doff, bad_checksum=draw(st.booleans()))
    if doff is not None and draw(st.booleans()):
        pkt = fix_checksum(pkt)
    cut = draw(st.one_of(st.none(), st.integers(0, len(pkt))))
    if cut is not None:
        pkt = pkt[:cut]
    return pkt, on_conn


def protect(w: World, pkt: bytes) -> bytes:
    """Keep a segment on the real connection's 4-tuple out of its receive window (a blind
    attacker does not know the sequence numbers; in-window forgeries have their own test)."""
    try:
        seg = m.parse(pkt)
    except m.Malformed:
        return pkt
    rcv_nxt = w.server.tcb.rcv_nxt
    if (seg.seq - rcv_nxt + (1 << 24)) % MOD < 1 << 25:
        seg.seq = (rcv_nxt + (1 << 31)) % MOD
        return m.build(seg)
    return pkt


# -- tests --------------------------------------------------------------------------------


@FUZZ
@given(st.booleans(), st.lists(st.binary(max_size=120), min_size=1, max_size=16))
def test_random_bytes(v6, packets):
    """Random bytes, which mostly fail the IP layer: nothing raises, each is counted."""
    w = world(v6)
    feed(w, packets)
    still_works(w)


@FUZZ
@given(st.booleans(), st.data())
def test_random_tcp_inside_valid_ip(v6, data):
    """Random bytes as the TCP part of a valid IP packet, checksum fixed or not: headers
    shorter than 20 bytes, data offsets 0-15, garbage options, any flags."""
    w = world(v6)
    src, dst = (A6, B6) if v6 else (A, B)
    packets = []
    for _ in range(data.draw(st.integers(1, 12))):
        l4 = data.draw(st.binary(max_size=100))
        pkt = m.ip_packet(src, dst, l4)
        if data.draw(st.booleans()):
            pkt = fix_checksum(pkt)
        packets.append(protect(w, pkt))
    feed(w, packets)
    still_works(w)


@FUZZ
@given(st.booleans(), st.data())
def test_hostile_segments(v6, data):
    """Every flag combination (SYN+FIN+RST+...), sequence and acknowledgment numbers
    anywhere, huge and zero windows, broken options, bad checksums, data offsets past the
    end, truncations; to the listener, to the connection's 4-tuple, to closed ports, from
    bad source addresses, to addresses not ours."""
    w = world(v6)
    packets = []
    for _ in range(data.draw(st.integers(1, 12))):
        pkt, on_conn = data.draw(hostile_segment(v6, w.cport))
        packets.append(protect(w, pkt) if on_conn else pkt)
    feed(w, packets)
    still_works(w)


@FUZZ
@given(st.booleans(), st.data())
def test_in_window_forgeries_do_not_break_the_connection(v6, data):
    """RFC 5961 §3-5 with sequence numbers the attacker guessed right (in the window):
    an RST not at RCV.NXT, a SYN, data whose ACK acknowledges unsent or ancient data, and
    data without ACK are all refused, and the stream stays intact."""
    w = world(v6)
    srv = w.server.tcb
    src, dst = (A6, B6) if v6 else (A, B)
    packets = []
    for _ in range(data.draw(st.integers(1, 10))):
        kind = data.draw(st.sampled_from(["rst", "syn", "ack_new", "ack_old", "no_ack"]))
        seq = (srv.rcv_nxt + data.draw(st.integers(1 if kind == "rst" else 0, 60_000))) % MOD
        flags, ack = ACK, srv.snd_nxt
        if kind == "rst":
            flags = RST | data.draw(st.sampled_from([0, ACK]))
        elif kind == "syn":
            flags = SYN | data.draw(st.sampled_from([0, ACK, m.FIN, m.PSH]))
        elif kind == "ack_new":
            ack = (srv.snd_nxt + data.draw(st.integers(1, 1 << 30))) % MOD
        elif kind == "ack_old":
            ack = (srv.snd_una - (1 << 30) - data.draw(st.integers(0, 1 << 29))) % MOD
        else:
            flags = data.draw(st.sampled_from([0, m.PSH, m.FIN, m.URG]))
        seg = Seg(
            src,
            dst,
            w.cport,
            PORT,
            seq=seq,
            ack=ack,
            flags=flags,
            wnd=data.draw(st.integers(0, 65535)),
            payload=b"EVIL" * data.draw(st.integers(0, 8)),
        )
        ts = w.client.tcb.counters()["timestamps"]
        if ts:
            seg.ts = ((1 << 31) + data.draw(st.integers(0, 1 << 30)), 0)
        packets.append(m.build(seg))
    feed(w, packets)
    assert w.server.tcb.readable == 0
    still_works(w)


@FUZZ
@given(
    st.booleans(),
    port.filter(bool),
    port.filter(bool),
    u32,
    u32,
    st.integers(0, 255),
    st.integers(0, 65535),
    st.binary(max_size=200),
    st.one_of(option_fields(), raw_options()),
)
def test_parse_matches_the_model(v6, sport, dport, seq, ack, flags, wnd, payload, opts):
    """``Demux.input`` (via a stack's demux) parses a valid segment as the model does:
    addresses, ports, sequence and acknowledgment numbers, flags, window, payload and every
    option (RFC 7323 §2.3: a shift above 14 is read as 14)."""
    src, dst = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.2")
    seg = Seg(src, dst, sport, dport, seq, ack, flags, wnd, payload)
    if isinstance(opts, bytes):
        seg.raw_options = opts
    else:
        for k, v in opts.items():
            setattr(seg, k, v)
        assume(len(m.encode_options(seg)) <= 40)
    pkt = m.build(seg)
    stack = TcpStack([pack_address(dst)], secret=b"k" * 32)
    batch = PacketBatch.from_packets([pkt], mtu=65000)
    segs = _tcp.Segments(4)
    stack.demux.input(batch, segs, 1.0)
    name = _tcp.VERDICT_NAMES[segs.verdict(0)]
    try:
        want = m.parse(pkt)
    except m.Malformed as e:
        assert e.layer == "tcp" and name == e.verdict
        return
    assert name == "slow"
    assert segs.addresses(0) == (pack_address(src), sport, pack_address(dst), dport)
    assert segs.fields(0) == (seq, ack, flags & 0x3F, wnd, len(payload))
    assert segs.payload(0) == payload
    mss, ws, sack_perm, ts, sack = segs.options(0)
    assert mss == want.mss
    assert ws == (None if want.ws is None else min(want.ws, m.MAX_WSCALE))
    assert sack_perm == want.sack_perm
    assert ts == want.ts
    assert sack == [tuple(b) for b in want.sack]


def test_connection_table_survives_churn():
    """The 4-tuple table (open addressing) under a SYN flood's churn: 50,000 connections
    made and ended at random in a table sized for 64; every lookup ends and agrees with
    a dict (deletion shifts entries back instead of leaving tombstones)."""
    import random as _random

    from dataplane.netstack._tcp import Demux, Tcb

    rng = _random.Random(3)
    table = Demux(64, 7)
    live: dict[tuple[bytes, int], Tcb] = {}
    local = b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])
    for _ in range(50_000):
        if live and (len(live) >= 64 or rng.random() < 0.5):
            key = rng.choice(list(live))
            table.remove(live.pop(key))
        else:
            remote = b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, rng.randrange(256), 2])
            key = (remote, rng.randrange(1024, 65536))
            if key in live:
                continue
            tcb = Tcb()
            tcb.setup(local, 80, key[0], key[1], 1, 0, 1420, 65536, 65536, 65536)
            table.add(tcb)
            live[key] = tcb
        probe = rng.choice(list(live)) if live and rng.random() < 0.8 else (local, 1)
        found = table.lookup(local, 80, probe[0], probe[1])
        assert found is live.get(probe)
    assert table.count == len(live)


def test_the_same_syn_twice_in_one_batch():
    """Two SYNs of one 4-tuple in a batch: the first makes the connection, the second is
    a retransmitted SYN for it (the SYN-ACK again), never a second connection and never
    an exception (the batch was matched before either made anything)."""
    from tcp_sim import Peer, Remote

    p = Peer()
    p.stack.listen(None, 80, 8)
    r = Remote(p, 80, 40000)
    syn = r.seg(m.SYN, ack=0, **r.syn_options())
    out = p.send(syn, syn)
    assert [s.flags & (m.SYN | m.ACK) for s in out] == [m.SYN | m.ACK, m.SYN | m.ACK]
    assert len(p.stack.conns) == 1
