"""TCP's rules, one test each (smoltcp style), on the sans-I/O ``TcpStack``.

Most tests play the remote TCP by hand: ``tcp_sim.Peer`` drives one stack with segments
built by ``tcp_model`` and parses (strictly: checksums, option syntax) every segment the
stack sends, and ``tcp_sim.Remote`` keeps the hand-played side's sequence numbers. Each
test states the segments it expects, field by field, with the rule's RFC section in its
docstring. Tests that need two real TCPs (simultaneous open, transfers under loss, path
MTU discovery, many connections) use ``tcp_sim.Net``. Everything runs in simulated time.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tcp_model as m
from tcp_model import ACK, FIN, PSH, RST, SYN
from tcp_sim import A6, B6, A, B, Impairment, Net, Peer, Remote, addr, transfer

from dataplane.netstack.tcp import MSL, State, TcpLimits

V4V6 = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
PORT = 80
MOD = 1 << 32


# -- helpers ------------------------------------------------------------------------------


def peer(v6: bool = False, **kwargs) -> Peer:
    return Peer(A6, B6, **kwargs) if v6 else Peer(A, B, **kwargs)


def server(v6: bool = False, *, limits=None, mtu=1420, backlog=8, **remote):
    """The stack listening on PORT, the test's TCP connected to it: (peer, remote, conn)."""
    p = peer(v6, limits=limits, mtu=mtu)
    listener = p.stack.listen(None, PORT, backlog)
    r = Remote(p, PORT, **remote)
    r.open()
    conn = p.stack.accept(listener)
    assert conn is not None and conn.state == State.ESTABLISHED
    return p, r, conn


def client(v6: bool = False, *, limits=None, mtu=1420, options=None, synack=None, **remote):
    """The stack connected (actively) to the test's TCP: (peer, remote, conn)."""
    p = peer(v6, limits=limits, mtu=mtu)
    conn = p.stack.connect((p.them16, PORT), p.now, **(options or {}))
    r = Remote(p, 0, **remote)
    r.answer(**(synack or {}))
    assert conn.state == State.ESTABLISHED
    return p, r, conn


def read(p: Peer, conn, n: int = 1 << 20) -> bytes:
    buf = bytearray(n)
    k = p.stack.recv_into(conn, buf, p.now)
    return bytes(buf[:k])


def send(p: Peer, r: Remote, conn, data: bytes):
    """The application writes ``data``; the segments that went out (the test notes them)."""
    assert p.stack.send(conn, data, p.now) == len(data)
    return r.take(r.mine(p.out()))


def data_segs(segs):
    return [s for s in segs if s.payload]


def is_ack(s, seq: int, ack: int) -> bool:
    """A pure ACK <SEQ=seq><ACK=ack><CTL=ACK>."""
    return s.only(ACK) and not s.payload and s.seq == seq and s.ack == ack


def wrap(x: int) -> int:
    return x % MOD


def connected_pair(net: Net, a: str, b: str, port: int = PORT):
    sa, sb = net.stack(a), net.stack(b)
    listener = sb.listen(None, port, 16)
    c = sa.connect(addr(b, port), net.now)
    assert net.run(30, until=lambda: bool(listener.accept_queue))
    return c, sb.accept(listener)


# -- three-way handshake and options (RFC 9293 §3.5, §3.7.1; RFC 7323; RFC 2018) ----------


@V4V6
def test_syn_offers_mss_of_the_mtu_and_every_option(v6):
    """RFC 9293 §3.7.1 / RFC 6691: the SYN's MSS is the MTU less the IP and TCP headers
    (1420 - 40 = 1380 over IPv4, 1420 - 60 = 1360 over IPv6); RFC 7323 §2.2, §3.2 and
    RFC 2018 §2: window scale, timestamps (TSecr 0) and SACK-permitted are offered; the
    SYN's window is never scaled."""
    p = peer(v6)
    conn = p.stack.connect((p.them16, PORT), p.now)
    (syn,) = p.out()
    assert syn.only(SYN) and syn.dport == PORT and syn.ack == 0 and not syn.payload
    assert syn.seq == conn.tcb.iss
    assert syn.mss == (1360 if v6 else 1380)
    assert syn.ws == 9  # 16 MiB of receive buffer at most: 16 MiB >> 9 = 32 KiB <= 65535
    assert syn.sack_perm and syn.ts is not None and syn.ts[1] == 0
    assert syn.wnd == min(65535, conn.tcb.rcv_wnd)
    assert conn.state == State.SYN_SENT


@V4V6
@pytest.mark.parametrize("mtu", [1280, 9000])
def test_syn_mss_follows_the_mtu(v6, mtu):
    """RFC 9293 §3.7.1: MSS = MTU - IP header - 20."""
    p = peer(v6, mtu=mtu)
    p.stack.connect((p.them16, PORT), p.now)
    (syn,) = p.out()
    assert syn.mss == mtu - (60 if v6 else 40)


@pytest.mark.parametrize("ws", [None, 7])
@pytest.mark.parametrize("ts", [False, True])
@pytest.mark.parametrize("sack", [False, True])
def test_syn_ack_answers_only_the_options_the_syn_offered(ws, ts, sack):
    """RFC 7323 §2.2: window scaling only if both SYNs carry it; §3.2: timestamps only if
    the SYN had them; RFC 2018 §2: SACK-permitted only if the SYN had it."""
    p = peer()
    p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT, ws=ws, ts=ts, sack=sack)
    sa = r.open()
    assert sa.has(SYN | ACK) and sa.ack == r.isn + 1
    assert sa.mss == 1380
    assert (sa.ws is not None) == (ws is not None)
    assert (sa.ts is not None) == ts
    assert sa.sack_perm == sack
    if ts:
        assert sa.ts[1] == 7000  # TSecr echoes the SYN's TSval (RFC 7323 §4.3)
    (conn,) = p.stack.conns.values()
    info = conn.tcb.counters()
    assert info["timestamps"] == ts and info["sack"] == sack
    assert (info["snd_wscale"] is not None) == (ws is not None)
    # Later segments carry timestamps exactly when negotiated (RFC 7323 §3.2).
    replies = r.push(b"hello")
    assert replies and all((s.ts is not None) == ts for s in replies)


@V4V6
def test_syn_without_options_gets_default_mss_and_no_scaling(v6):
    """RFC 9293 §3.7.1: without an MSS option the send MSS is 536 (IPv4) or 1220 (IPv6,
    RFC 8200 §5); RFC 7323 §2.2: no window scale option in the SYN means no scaling in
    either direction, and the SYN-ACK must carry no window scale, timestamp or SACK option."""
    p = peer(v6)
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT, mss=None, ws=None, sack=False, ts=False, wnd=1000)
    sa = r.open()
    assert sa.mss == (1360 if v6 else 1380)
    assert sa.ws is None and sa.ts is None and not sa.sack_perm
    conn = p.stack.accept(listener)
    assert conn.tcb.mss == (1220 if v6 else 536)
    assert conn.tcb.snd_wnd == 1000  # the final ACK's window, unscaled
    sent = data_segs(send(p, r, conn, bytes(3000)))
    assert sum(len(s.payload) for s in sent) <= 1000
    assert all(len(s.payload) <= conn.tcb.mss for s in sent)
    # Our windows are unscaled too: the field is the free receive space, at most 65535.
    (ack,) = r.push(b"x" * 100)
    assert ack.wnd == min(65535, conn.tcb.rcv_wnd)


@pytest.mark.parametrize("peer_mss,expect", [(9000, 1380 - 12), (1000, 1000 - 12), (1380, 1368)])
def test_send_mss_is_the_smaller_of_peer_mss_and_our_mtu(peer_mss, expect):
    """RFC 9293 §3.7.1 / RFC 6691: segments are at most the peer's MSS, and at most what
    our MTU carries; with timestamps each segment also loses 12 bytes of payload to the
    option (RFC 7323 §3.2 / reference tcp.md)."""
    p, r, conn = server(mss=peer_mss)
    assert conn.tcb.mss == expect
    sent = data_segs(send(p, r, conn, bytes(5 * expect)))
    assert [len(s.payload) for s in sent] == [expect] * 5


def test_window_scale_applies_after_the_syn_only_passive():
    """RFC 7323 §2.2: the SYN's window is not scaled; every later window is shifted by the
    peer's scale."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT, ws=7, wnd=1000)
    syn = r.seg(SYN, ack=0, **r.syn_options())
    r.seq += 1
    (sa,) = r.send(syn)
    (conn,) = p.stack.conns.values()
    assert conn.tcb.snd_wnd == 1000
    r.rcv_nxt = sa.seq + 1
    r.ack(wnd=10)
    assert p.stack.accept(listener) is conn
    assert conn.tcb.snd_wnd == 10 << 7


def test_syn_ack_window_is_not_scaled_active():
    """RFC 7323 §2.2: "The window field in a segment where the SYN bit is set (i.e., a
    <SYN> or <SYN,ACK>) MUST NOT be scaled." After our SYN is answered by a SYN-ACK with
    window 2000 and scale 7, the send window is 2000 bytes, and no more than that goes out
    before the peer's next ACK."""
    p = peer()
    conn = p.stack.connect((p.them16, PORT), p.now)
    r = Remote(p, 0, ws=7, wnd=2000)
    r.answer()
    assert conn.state == State.ESTABLISHED
    sent = data_segs(send(p, r, conn, bytes(20000)))
    assert sum(len(s.payload) for s in sent) <= 2000
    assert conn.tcb.snd_wnd == 2000


def test_window_scale_above_14_is_taken_as_14():
    """RFC 7323 §2.3: a shift count above 14 is used as 14 (and logged)."""
    p, r, conn = server(ws=20)
    r.ack(wnd=3)
    assert conn.tcb.snd_wnd == 3 << 14


def test_our_window_field_is_scaled_by_our_shift():
    """RFC 7323 §2.3: after the SYN, the window field is the window right-shifted by the
    scale we sent in our SYN (9 here)."""
    p, r, conn = server()
    shift = r.syn_ack.ws
    (ack,) = r.push(b"x" * 500)
    assert abs((ack.wnd << shift) - conn.tcb.rcv_wnd) < (1 << shift)
    assert r.syn_ack.wnd == min(65535, conn.tcb.rcv_wnd + 500)  # the SYN-ACK's: unscaled


def test_timestamps_echo_the_latest_in_order_tsval():
    """RFC 7323 §4.3: TSecr is TS.Recent, the TSval of the last segment that advanced the
    left window edge; our TSval is a clock that moves forward (§5.4, in ms here)."""
    p, r, conn = server()
    r.tsval = 50_000
    (a1,) = r.push(b"a")
    assert a1.ts[1] == 50_000
    p.now += 0.250
    r.tsval = 60_000
    (a2,) = r.push(b"b")
    assert a2.ts[1] == 60_000
    assert wrap(a2.ts[0] - a1.ts[0]) == 250


def test_retransmitted_syn_ack_is_acknowledged_again():
    """RFC 9293 §3.10.7.4 (first check): the peer's SYN-ACK again (our ACK of it was
    lost) is old, so it is answered by <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>; nothing else
    changes."""
    p, r, conn = client()
    sa = r.seg(SYN | ACK, seq=r.isn, **r.syn_options())
    (ack,) = r.send(sa)
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.state == State.ESTABLISHED


def test_data_with_the_final_ack_establishes_and_is_accepted():
    """RFC 9293 §3.10.7.4: in SYN-RECEIVED an acceptable ACK enters ESTABLISHED "and
    continue processing": data on the same segment is accepted."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    (sa,) = r.send(r.seg(SYN, ack=0, **r.syn_options()))
    r.seq += 1
    r.rcv_nxt = sa.seq + 1
    (ack,) = r.push(b"GET / HTTP/1.0\r\n\r\n")
    conn = p.stack.accept(listener)
    assert conn.state == State.ESTABLISHED and ack.ack == r.seq
    assert read(p, conn) == b"GET / HTTP/1.0\r\n\r\n"


def test_unacceptable_ack_in_syn_received_gets_rst():
    """RFC 9293 §3.10.7.4 (fifth check, SYN-RECEIVED): an ACK outside SND.UNA < SEG.ACK
    =< SND.NXT is answered by <SEQ=SEG.ACK><CTL=RST>; the embryonic connection stays."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    (sa,) = r.send(r.seg(SYN, ack=0, **r.syn_options()))
    r.seq += 1
    bad = wrap(sa.seq + 1000)
    (rst,) = r.ack(bad)
    assert rst.only(RST) and rst.seq == bad
    assert len(listener.syn_queue) == 1 and not listener.accept_queue
    r.ack(sa.seq + 1)
    assert len(listener.accept_queue) == 1


# -- SYN and SYN-ACK retransmission (RFC 9293 §3.8.1, RFC 6298 §5) -----------------------


def test_syn_ack_retransmitted_when_the_final_ack_is_lost():
    """RFC 6298 §2.1/§5.5: our SYN-ACK is retransmitted after the initial RTO of 1 s with
    exponential backoff, synack_retries (5) times; then the embryonic connection is
    dropped without an RST (as Linux), and a late ACK for it is answered by an RST
    (RFC 9293 §3.10.7.2: <SEQ=SEG.ACK><CTL=RST>)."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    syn = r.seg(SYN, ack=0, **r.syn_options())
    t0 = p.now
    (sa,) = r.send(syn)
    sent = p.advance(100)
    times = [round(t - t0, 3) for t, s in sent]
    assert times == [1, 3, 7, 15, 31]
    for _, s in sent:
        assert s.has(SYN | ACK) and s.seq == sa.seq and s.ack == sa.ack
    assert not p.stack.conns and not listener.syn_queue
    assert not any(s.flags & RST for _, s in sent)
    r.seq += 1
    r.rcv_nxt = sa.seq + 1
    (rst,) = r.ack()
    assert rst.only(RST) and rst.seq == sa.seq + 1


def test_retransmitted_syn_gets_the_syn_ack_again():
    """RFC 9293 §3.10.7.4 / Linux: the peer's SYN again (our SYN-ACK was lost) is
    answered by our SYN-ACK again, same ISN; the connection stays SYN-RECEIVED."""
    p = peer()
    p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    syn = r.seg(SYN, ack=0, **r.syn_options())
    (sa1,) = r.send(syn)
    p.now += 0.5
    (sa2,) = r.send(syn)
    assert sa2.has(SYN | ACK) and (sa2.seq, sa2.ack) == (sa1.seq, sa1.ack)
    (conn,) = p.stack.conns.values()
    assert conn.state == State.SYN_RECEIVED


def test_syn_retransmitted_with_backoff_then_etimedout():
    """RFC 6298 §5.5 and RFC 1122 §4.2.3.5: the SYN goes again at 1, 3, 7 s (RTO 1 s,
    doubled each time); after syn_retries retransmissions the connect fails with
    ETIMEDOUT, and no RST is sent for a connection that never synchronized."""
    p = peer(limits=TcpLimits(syn_retries=3))
    conn = p.stack.connect((p.them16, PORT), p.now)
    t0 = p.now
    (syn,) = p.out()
    sent = p.advance(100)
    assert [round(t - t0, 3) for t, _ in sent] == [1, 3, 7]
    assert all(s.only(SYN) and s.seq == syn.seq and s.mss == syn.mss for _, s in sent)
    assert conn.state == State.CLOSED and conn.error == errno.ETIMEDOUT
    assert not p.stack.conns


def test_simultaneous_open():
    """RFC 9293 §3.5 figure 8: both ends send a SYN; each answers the other's with a
    SYN-ACK (SYN-RECEIVED), and both reach ESTABLISHED and can exchange data."""
    net = Net(A, B)
    sa, sb = net.stack(A), net.stack(B)
    ca = sa.connect(addr(B, 6000), net.now, local=addr(A, 5000))
    cb = sb.connect(addr(A, 5000), net.now, local=addr(B, 6000))
    assert net.run(10, until=lambda: ca.state == cb.state == State.ESTABLISHED)
    assert ca.tcb.irs == cb.tcb.iss and cb.tcb.irs == ca.tcb.iss
    assert transfer(net, ca, cb, b"left" * 5000) == b"left" * 5000
    assert transfer(net, cb, ca, b"right" * 5000) == b"right" * 5000


def test_simultaneous_open_by_hand():
    """RFC 9293 §3.5: a SYN (no ACK) in SYN-SENT moves to SYN-RECEIVED and is answered by
    <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>; the peer's ACK of our SYN then establishes."""
    p = peer()
    conn = p.stack.connect((p.them16, PORT), p.now, local=(p.us16, 5555))
    (syn,) = p.out()
    r = Remote(p, 5555, PORT)
    r.ts_recent = syn.ts[0]
    (sa,) = r.push(b"", flags=SYN, ack=0, **r.syn_options())
    assert conn.state == State.SYN_RECEIVED
    assert sa.has(SYN | ACK) and sa.seq == syn.seq and sa.ack == r.isn + 1
    r.rcv_nxt = syn.seq + 1
    r.send(r.seg(SYN | ACK, seq=r.isn, **r.syn_options()))  # ours crossed: theirs again
    r.ack()
    assert conn.state == State.ESTABLISHED
    assert r.push(b"data") and read(p, conn) == b"data"


def test_close_in_syn_received_does_not_crash():
    """RFC 9293 §3.10.4 (CLOSE in SYN-RECEIVED): the FIN may go, but our SYN is still
    unacknowledged, so what the retransmission timer resends is the SYN-ACK (or the FIN),
    never data taken from the send buffer before the first data byte. Run in a child
    process: the stack must neither crash nor emit payload that was never written."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import tcp_model as m
        from tcp_sim import Peer, Remote
        p = Peer()
        conn = p.stack.connect((p.them16, 80), p.now, local=(p.us16, 5555))
        p.out()
        r = Remote(p, 5555, 80)
        r.push(b"", flags=m.SYN, ack=0, mss=1460, ws=7, sack_perm=True)  # simultaneous open
        p.stack.close(conn, p.now)
        p.out()
        sent = p.advance(10)
        print(json.dumps([[s.flags, len(s.payload), s.seq - conn.tcb.iss] for _, s in sent]))
        """
    )
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"child died: rc={run.returncode} {run.stderr[-500:]}"
    sent = json.loads(run.stdout)
    assert sent, "nothing retransmitted in 10 s"
    for flags, plen, _ in sent:
        assert plen == 0
        if flags & SYN:
            assert flags & ACK


# -- no connection: RST (RFC 9293 §3.10.7.1) ---------------------------------------------


@V4V6
@pytest.mark.parametrize(
    "flags,payload,extra", [(SYN, b"", 1), (SYN, b"0123456789", 11), (SYN | FIN, b"", 2)]
)
def test_rst_to_syn_on_a_closed_port(v6, flags, payload, extra):
    """RFC 9293 §3.10.7.1: a segment without ACK to a closed port is answered by
    <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> (SEG.LEN counting SYN and FIN)."""
    p = peer(v6)
    seg = p.seg(40000, 81, seq=0xFFFFFFF0, flags=flags, payload=payload, mss=1460)
    (rst,) = p.send(seg)
    assert rst.only(RST | ACK)
    assert (rst.src, rst.dst, rst.sport, rst.dport) == (p.us, p.them, 81, 40000)
    assert rst.seq == 0 and rst.ack == wrap(0xFFFFFFF0 + extra)
    assert not rst.payload
    assert p.stack.counters["rst_sent_closed_port"] == 1


@V4V6
def test_rst_to_ack_on_a_closed_port(v6):
    """RFC 9293 §3.10.7.1: a segment with ACK to a closed port gets <SEQ=SEG.ACK><CTL=RST>."""
    p = peer(v6)
    (rst,) = p.send(p.seg(40000, 81, seq=5, ack=123456789, flags=ACK, payload=b"x"))
    assert rst.only(RST) and rst.seq == 123456789 and rst.ack == 0


def test_rst_to_a_closed_port_is_not_answered():
    """RFC 9293 §3.10.7.1: "An incoming segment containing a RST is discarded"."""
    p = peer()
    assert p.send(p.seg(40000, 81, seq=5, ack=6, flags=RST | ACK)) == []
    assert p.stack.drops["rst_no_connection"] == 1


@V4V6
def test_connect_to_a_closed_port_is_refused(v6):
    """RFC 9293 §3.10.7.3: an RST acknowledging our SYN in SYN-SENT: "the user should be
    signalled 'error: connection reset'": connect fails with ECONNREFUSED."""
    a, b = (A6, B6) if v6 else (A, B)
    net = Net(a, b)
    conn = net.stack(a).connect(addr(b, 81), net.now)
    assert net.run(5, until=lambda: conn.state == State.CLOSED)
    assert conn.error == errno.ECONNREFUSED
    assert net.now < 1000.1  # one round trip, no retries


# -- SYN-SENT (RFC 9293 §3.10.7.3, RFC 5961 §3) ------------------------------------------


def syn_sent():
    p = peer()
    conn = p.stack.connect((p.them16, PORT), p.now)
    (syn,) = p.out()
    return p, conn, syn


def test_rst_in_syn_sent_without_ack_is_ignored():
    """RFC 9293 §3.10.7.3: in SYN-SENT an RST is acceptable only with an ACK of our SYN;
    "if the ACK bit is off, drop the segment"."""
    p, conn, syn = syn_sent()
    assert p.send(p.seg(PORT, syn.sport, seq=777, flags=RST)) == []
    assert conn.state == State.SYN_SENT and conn.error == 0
    assert p.stack.drops["syn_sent_rst_without_ack"] == 1


@pytest.mark.parametrize("delta", [0, 2, -100])
def test_rst_in_syn_sent_with_unacceptable_ack_is_ignored(delta):
    """RFC 9293 §3.10.7.3: an ACK with SEG.ACK =< ISS or SEG.ACK > SND.NXT is not
    acceptable; with RST set the segment is dropped silently."""
    p, conn, syn = syn_sent()
    got = p.send(p.seg(PORT, syn.sport, seq=777, ack=wrap(syn.seq + delta), flags=RST | ACK))
    assert got == [] and conn.state == State.SYN_SENT


def test_unacceptable_ack_in_syn_sent_gets_rst():
    """RFC 9293 §3.10.7.3: an unacceptable ACK without RST: <SEQ=SEG.ACK><CTL=RST>, and
    the connection stays in SYN-SENT."""
    p, conn, syn = syn_sent()
    (rst,) = p.send(p.seg(PORT, syn.sport, seq=777, ack=wrap(syn.seq + 5), flags=SYN | ACK))
    assert rst.only(RST) and rst.seq == wrap(syn.seq + 5)
    assert conn.state == State.SYN_SENT


def test_rst_ack_in_syn_sent_refuses():
    """RFC 9293 §3.10.7.3: an RST with an acceptable ACK: "error: connection reset",
    enter CLOSED (ECONNREFUSED); nothing is sent."""
    p, conn, syn = syn_sent()
    assert p.send(p.seg(PORT, syn.sport, seq=0, ack=wrap(syn.seq + 1), flags=RST | ACK)) == []
    assert conn.state == State.CLOSED and conn.error == errno.ECONNREFUSED
    assert not p.stack.conns


def test_syn_ack_with_data_and_fin_in_syn_sent():
    """RFC 9293 §3.10.7.3: data on the SYN-ACK is queued, and a FIN on it moves the new
    connection to CLOSE-WAIT; the ACK covers SYN, data and FIN."""
    p, conn, syn = syn_sent()
    r = Remote(p, syn.sport, PORT)
    r.ts_recent = syn.ts[0]
    r.rcv_nxt = syn.seq + 1
    (ack,) = r.push(b"early", flags=SYN | ACK | FIN, **r.syn_options())
    assert conn.state == State.CLOSE_WAIT
    assert is_ack(ack, syn.seq + 1, r.isn + 1 + 5 + 1)
    assert read(p, conn) == b"early"


# -- RFC 5961: blind reset, SYN and data injection ----------------------------------------


def test_rst_in_window_but_not_exact_gets_challenge_ack():
    """RFC 5961 §3.2: an RST whose sequence number is in the window but not RCV.NXT gets a
    challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and is dropped."""
    p, r, conn = server()
    (ack,) = r.send(r.seg(RST, seq=r.seq + 1000))
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.state == State.ESTABLISHED
    assert p.stack.drops["rst_challenged"] == 1
    assert p.stack.counters["challenge_acks"] == 1


@pytest.mark.parametrize("flags", [RST, RST | ACK])
def test_rst_with_exact_sequence_resets(flags):
    """RFC 5961 §3.2 / RFC 9293 §3.10.7.4: an RST at exactly RCV.NXT resets: the
    connection enters CLOSED with ECONNRESET and nothing is sent."""
    p, r, conn = server()
    assert r.send(r.seg(flags, seq=r.seq)) == []
    assert conn.state == State.CLOSED and conn.error == errno.ECONNRESET
    assert not p.stack.conns


def test_rst_out_of_window_is_dropped_silently():
    """RFC 9293 §3.10.7.4 / RFC 5961 §3.2: an RST outside the window is dropped without
    an ACK (an ACK would help a blind attacker)."""
    p, r, conn = server()
    assert r.send(r.seg(RST, seq=r.seq + (1 << 30))) == []
    assert r.send(r.seg(RST, seq=r.seq - 1)) == []
    assert conn.state == State.ESTABLISHED


@pytest.mark.parametrize("offset", [0, 100, 1 << 30])
@pytest.mark.parametrize("flags", [SYN, SYN | ACK])
def test_syn_in_established_gets_challenge_ack(offset, flags):
    """RFC 5961 §4.2 / RFC 9293 §3.10.7.4 (fourth check): a SYN in a synchronized state,
    whatever its sequence number, is answered by an ACK and dropped; the connection is
    not reset."""
    p, r, conn = server()
    (ack,) = r.send(r.seg(flags, seq=r.seq + offset, **r.syn_options()))
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.state == State.ESTABLISHED
    assert r.push(b"still fine") and read(p, conn) == b"still fine"


def test_challenge_acks_are_rate_limited():
    """RFC 5961 §7: challenge ACKs have a budget (1000 per second, stack-wide, as Linux's
    tcp_challenge_ack_limit); the rest are counted, and the budget renews each second."""
    p, r, conn = server()
    rsts = [r.seg(RST, seq=r.seq + 1 + k) for k in range(1100)]
    replies = r.send(*rsts)
    assert len(replies) == 1000 and all(is_ack(a, conn.tcb.snd_nxt, r.seq) for a in replies)
    assert p.stack.drops["challenge_ack_limited"] == 100
    p.now += 1.0
    assert len(r.send(r.seg(RST, seq=r.seq + 5))) == 1
    assert conn.state == State.ESTABLISHED


def test_a_dead_connections_segments_never_reach_its_successor_in_the_batch():
    """RFC 9293 §3.10.7.1 and §3.4: a segment belongs to the connection of its 4-tuple.
    In one batch: an exact RST kills connection X, a SYN from another port makes a new
    connection Y, then a segment of X's 4-tuple follows (carrying numbers that would
    suit Y). X is gone, so that segment must get an RST from the closed port; Y must stay
    in SYN-RECEIVED with nothing to read."""
    p, r, conn = server()
    p.stack._isn = lambda local, remote, now: 5_000_000
    y = Remote(p, PORT, 40001, isn=777)
    rst = r.seg(RST, seq=r.seq)
    syn = y.seg(SYN, ack=0, **y.syn_options())
    stray = r.seg(ACK | PSH, b"INJECTED", seq=778, ack=5_000_001, ts=(y.tsval + 1, 0))
    out = p.send(rst, syn, stray)
    assert conn.state == State.CLOSED
    (new,) = p.stack.conns.values()
    assert new.remote[1] == 40001
    assert new.state == State.SYN_RECEIVED and new.tcb.readable == 0
    to_x = [s for s in out if s.dport == 40000]
    assert len(to_x) == 1 and to_x[0].only(RST) and to_x[0].seq == 5_000_001
    assert [s.flag_text for s in out if s.dport == 40001] == ["S."]


def test_ack_of_unsent_data_is_acked_and_dropped():
    """RFC 9293 §3.10.7.4 (fifth check): "If the ACK acks something not yet sent
    (SEG.ACK > SND.NXT), then send an ACK, drop the segment, and return" — its data too."""
    p, r, conn = server()
    nxt = conn.tcb.snd_nxt
    (ack,) = r.send(r.seg(ACK | PSH, b"forged", ack=wrap(nxt + 100)))
    assert is_ack(ack, nxt, r.seq)
    assert conn.tcb.readable == 0 and conn.tcb.rcv_nxt == r.seq
    assert p.stack.drops["ack_too_new"] == 1


def test_ack_too_old_is_acked_and_dropped():
    """RFC 5961 §5.2: an ACK below SND.UNA - MAX.SND.WND is answered by an ACK and the
    segment (with its data) is dropped."""
    p, r, conn = server()
    una = conn.tcb.snd_una
    (ack,) = r.send(r.seg(ACK | PSH, b"forged", ack=wrap(una - (1 << 30))))
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.tcb.readable == 0
    assert p.stack.drops["ack_too_old"] == 1


@pytest.mark.parametrize("where", ["beyond", "old"])
def test_out_of_window_segment_gets_an_ack(where):
    """RFC 9293 §3.10.7.4 (first check): an unacceptable segment is answered by
    <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and dropped (a wholly old one too: it tells
    the peer where we are)."""
    p, r, conn = server()
    r.push(b"abc")
    read(p, conn)
    seq = wrap(r.seq + conn.tcb.rcv_wnd + 1000) if where == "beyond" else wrap(r.seq - 3)
    (ack,) = r.send(r.seg(ACK, b"abc" if where == "old" else b"zzz", seq=seq))
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.tcb.readable == 0 and conn.tcb.rcv_nxt == r.seq


def test_data_beyond_the_window_is_trimmed():
    """RFC 9293 §3.10.7.4 (seventh check): only the part of a segment inside the
    receive window is accepted; the ACK says how far."""
    p, r, conn = server(limits=TcpLimits(rcvbuf=4096, rcvbuf_max=4096), ws=None)
    wnd = conn.tcb.rcv_wnd
    replies = r.send(r.seg(ACK | PSH, bytes(range(256)) * 20))  # 5120 > 4096
    assert replies and replies[-1].ack == wrap(r.seq + wnd)
    assert conn.tcb.readable == wnd


def test_paws_rejects_an_old_tsval():
    """RFC 7323 §5.3 R1: a segment whose TSval is older than TS.Recent is dropped, and
    answered by an ACK; its data is not accepted."""
    p, r, conn = server()
    r.tsval = 90_000
    r.push(b"new")
    read(p, conn)
    (ack,) = r.send(r.seg(ACK | PSH, b"old", ts=(89_000, r.ts_recent)))
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)
    assert conn.tcb.readable == 0 and conn.tcb.rcv_nxt == r.seq
    assert p.stack.drops["paws"] == 1


def test_paws_does_not_apply_to_rst():
    """RFC 7323 §5.3 / Linux: an RST is not subject to PAWS (it is checked by sequence
    number only); an exact one with an old TSval still resets."""
    p, r, conn = server()
    r.tsval = 90_000
    r.push(b"new")
    assert r.send(r.seg(RST, seq=r.seq, ts=(1, 0))) == []
    assert conn.state == State.CLOSED and conn.error == errno.ECONNRESET


# -- closing (RFC 9293 §3.6, §3.10.4, §3.10.7.4 eighth check) -----------------------------


def test_half_close_fin_wait_2_keeps_receiving():
    """RFC 9293 §3.6 case 1 and §3.10.7.4: after our FIN is acknowledged we are in
    FIN-WAIT-2 and still accept data; the peer's FIN then moves us to TIME-WAIT, and is
    acknowledged (RCV.NXT past the FIN)."""
    p, r, conn = client()
    p.stack.shutdown(conn, p.now, read=False, write=True)
    (fin,) = r.take(r.mine(p.out()))
    assert fin.only(FIN | ACK) and fin.seq == conn.tcb.iss + 1 and fin.ack == r.seq
    assert conn.state == State.FIN_WAIT_1
    assert r.ack() == []
    assert conn.state == State.FIN_WAIT_2
    replies = r.push(b"more data")
    assert replies and replies[-1].ack == r.seq
    assert read(p, conn) == b"more data"
    (ack,) = r.fin()
    assert is_ack(ack, fin.seq + 1, r.seq) and ack.ack == r.seq
    assert conn.state == State.TIME_WAIT


def test_close_with_unread_data_sends_rst():
    """RFC 1122 §4.2.2.13 / RFC 2525 §2.17: closing with received data unread resets the
    connection: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=RST,ACK> (no FIN), CLOSED at once."""
    p, r, conn = server()
    r.push(b"never read")
    p.stack.close(conn, p.now)
    (rst,) = r.mine(p.out())
    assert rst.only(RST | ACK) and rst.seq == conn.tcb.snd_nxt and rst.ack == r.seq
    assert conn.state == State.CLOSED and not p.stack.conns


def test_abort_sends_rst_and_forgets_the_connection():
    """RFC 9293 §3.10.5 (ABORT): an RST <SEQ=SND.NXT> is sent, the TCB deleted; a
    segment arriving afterwards is answered as for a closed port."""
    p, r, conn = server()
    send(p, r, conn, b"unacked")
    nxt = conn.tcb.snd_nxt
    p.stack.close(conn, p.now, abort=True)
    (rst,) = r.mine(p.out())
    assert rst.has(RST) and rst.seq == nxt
    assert conn.state == State.CLOSED and not p.stack.conns
    assert p.advance(30) == []  # no retransmission of the unacked data
    (rst2,) = r.ack()
    assert rst2.only(RST) and rst2.seq == r.rcv_nxt


def test_simultaneous_close_goes_through_closing():
    """RFC 9293 §3.6 figure 13: both FINs cross: FIN-WAIT-1 receiving a FIN that does not
    acknowledge ours goes to CLOSING (and acknowledges it); the ACK of our FIN then moves
    to TIME-WAIT."""
    p, r, conn = client()
    p.stack.shutdown(conn, p.now, read=False, write=True)
    (fin,) = r.mine(p.out())
    (ack,) = r.fin()  # crosses ours: acknowledges only our SYN
    assert conn.state == State.CLOSING
    assert is_ack(ack, fin.seq + 1, r.seq)
    r.ack(fin.seq + 1)
    assert conn.state == State.TIME_WAIT


def test_last_ack():
    """RFC 9293 §3.6 case 2: the peer's FIN first (CLOSE-WAIT, acknowledged); our CLOSE
    sends our FIN (LAST-ACK); its ACK deletes the TCB."""
    p, r, conn = server()
    (ack,) = r.fin()
    assert conn.state == State.CLOSE_WAIT and ack.ack == r.seq
    assert read(p, conn) == b""
    p.stack.close(conn, p.now)
    (fin,) = r.take(r.mine(p.out()))
    assert fin.only(FIN | ACK) and fin.ack == r.seq
    assert conn.state == State.LAST_ACK
    assert r.ack() == []
    assert conn.state == State.CLOSED and conn.error == 0 and not p.stack.conns


def test_last_ack_retransmits_the_fin():
    """RFC 9293 §3.10.7.4 / RFC 6298: an unacknowledged FIN is retransmitted at the RTO."""
    p, r, conn = server()
    r.fin()
    p.stack.close(conn, p.now)
    (fin,) = r.mine(p.out())
    t, again = p.until(lambda s: bool(s.flags & FIN), limit=10)
    assert again.only(FIN | ACK) and again.seq == fin.seq
    r.ack(fin.end)
    assert conn.state == State.CLOSED


def time_wait():
    """A client connection that closed first and is in TIME-WAIT."""
    p, r, conn = client()
    p.stack.close(conn, p.now)
    (fin,) = r.take(r.mine(p.out()))
    r.ack()
    assert conn.state == State.FIN_WAIT_2
    fin_seq = r.seq
    r.fin()
    assert conn.state == State.TIME_WAIT
    return p, r, conn, fin_seq


def test_time_wait_lasts_two_msl():
    """RFC 9293 §3.10.7.4 / §3.4.2: TIME-WAIT holds the connection for 2 MSL (60 s here,
    as Linux), then deletes the TCB."""
    p, r, conn, _ = time_wait()
    assert 2 * MSL == 60
    p.advance(59.9)
    assert conn.state == State.TIME_WAIT
    p.advance(0.2)
    assert conn.state == State.CLOSED and not p.stack.conns


def test_time_wait_acks_a_retransmitted_fin_and_restarts_2msl():
    """RFC 9293 §3.10.7.4 (eighth check, TIME-WAIT): "The only thing that can arrive in
    this state is a retransmission of the remote FIN. Acknowledge it, and restart the 2 MSL
    timeout." (Linux's tcp_timewait_state_process does both.)"""
    p, r, conn, fin_seq = time_wait()
    p.advance(30)
    (ack,) = r.send(r.seg(FIN | ACK, seq=fin_seq))
    assert is_ack(ack, conn.tcb.snd_nxt, wrap(fin_seq + 1))
    p.advance(59)
    assert conn.state == State.TIME_WAIT, "the retransmitted FIN did not restart 2 MSL"
    p.advance(1.1)
    assert conn.state == State.CLOSED


def test_time_wait_is_bounded():
    """Implementation limit (Linux tcp_max_tw_buckets): beyond max_time_wait TIME-WAIT
    connections the oldest is closed early, and counted."""
    p = peer(limits=TcpLimits(max_time_wait=2))
    conns = []
    for k in range(3):
        conn = p.stack.connect((p.them16, PORT), p.now)
        r = Remote(p, 0, isn=1000 * k)
        r.answer()
        p.stack.close(conn, p.now)
        r.take(r.mine(p.out()))
        r.ack()
        r.fin()
        conns.append(conn)
        p.now += 1
    assert [c.state for c in conns] == [State.CLOSED, State.TIME_WAIT, State.TIME_WAIT]
    assert p.stack.drops["time_wait_overflow"] == 1
    assert len(p.stack.time_wait) == 2


def server_time_wait(**remote):
    """The stack as server, having closed first: TIME-WAIT on its side."""
    p, r, conn = server(**remote)
    p.stack.close(conn, p.now)
    r.take(r.mine(p.out()))
    r.ack()
    r.fin()
    assert conn.state == State.TIME_WAIT
    p.now += 1
    return p, r, conn


@pytest.mark.parametrize("ts", [False, True])
def test_new_syn_reuses_a_time_wait_tuple(ts):
    """RFC 6191 §2 / RFC 1122 §4.2.2.13: a SYN for a 4-tuple in TIME-WAIT whose sequence
    number is above RCV.NXT (or, with timestamps, whose TSval is newer) ends TIME-WAIT and
    starts a new incarnation: SYN-ACK, SYN-RECEIVED."""
    p, r, old = server_time_wait(ts=ts)
    r.tsval += 1000
    new_isn = wrap(r.seq + 100_000)
    (sa,) = r.send(r.seg(SYN, seq=new_isn, ack=0, **r.syn_options()))
    assert sa.has(SYN | ACK) and sa.ack == wrap(new_isn + 1)
    assert old.state == State.CLOSED
    (new,) = p.stack.conns.values()
    assert new.state == State.SYN_RECEIVED and new is not old
    assert p.stack.counters["time_wait_reused"] == 1


def test_time_wait_refuses_a_syn_with_old_timestamp_and_sequence():
    """RFC 6191 §2: with timestamps on the old incarnation, a SYN may end TIME-WAIT only if
    its TSval is greater than TS.Recent (or equal with a higher sequence number);
    otherwise it is silently dropped and TIME-WAIT stays. (RFC 1122 §4.2.2.13 without
    timestamps: only a sequence number above RCV.NXT.) Here the SYN has both an old TSval
    and an old sequence number: an old duplicate, or a forgery."""
    p, r, old = server_time_wait(ts=True)
    syn = r.seg(SYN, seq=wrap(r.seq - 100), ack=0, ts=(r.tsval - 500, 0), **r.syn_options())
    replies = r.send(syn)
    assert not any(s.flags & SYN for s in replies)
    assert old.state == State.TIME_WAIT
    assert list(p.stack.conns.values()) == [old]


def test_connect_reuses_a_time_wait_tuple():
    """tcp_tw_reuse: an active open to the same 4-tuple as one of our TIME-WAIT
    connections replaces it (our new ISN is above the old sequence space)."""
    p, r, old, _ = time_wait()
    conn = p.stack.connect((p.them16, PORT), p.now, local=(p.us16, old.local[1]))
    assert old.state == State.CLOSED
    (syn,) = p.out()
    assert syn.only(SYN) and syn.sport == old.local[1] and conn.state == State.SYN_SENT


def test_fin_wait_2_orphan_timeout():
    """Linux tcp_fin_timeout (RFC 9293 §3.10.4 leaves FIN-WAIT-2 unbounded): a connection
    the application closed waits 60 s in FIN-WAIT-2 for the peer's FIN, then is deleted
    (counted); a later segment from the peer gets an RST."""
    p, r, conn = client()
    p.stack.close(conn, p.now)
    r.take(r.mine(p.out()))
    r.ack()
    assert conn.state == State.FIN_WAIT_2
    p.advance(59.9)
    assert conn.state == State.FIN_WAIT_2
    p.advance(0.2)
    assert conn.state == State.CLOSED and not p.stack.conns
    assert p.stack.counters["fin_wait_2_timeout"] == 1
    (rst,) = r.push(b"late")
    assert rst.has(RST)


def test_fin_wait_2_after_shutdown_waits_for_the_peer():
    """RFC 9293 §3.6: a half-closed connection (shutdown, not close) stays in FIN-WAIT-2
    as long as the peer keeps it open: no orphan timeout applies."""
    p, r, conn = client()
    p.stack.shutdown(conn, p.now, read=False, write=True)
    r.take(r.mine(p.out()))
    r.ack()
    p.advance(300)
    assert conn.state == State.FIN_WAIT_2
    r.push(b"late but fine")
    assert read(p, conn) == b"late but fine"


def test_fin_beyond_a_hole_waits_for_the_hole():
    """RFC 9293 §3.10.7.4 (eighth check): a FIN takes effect only once everything
    before it has arrived; meanwhile it is answered with a duplicate ACK."""
    p, r, conn = server()
    base = r.seq
    (dup,) = r.send(r.seg(ACK | FIN, b"tail", seq=base + 4))
    assert is_ack(dup, conn.tcb.snd_nxt, base)
    assert conn.state == State.ESTABLISHED
    replies = r.send(r.seg(ACK, b"head", seq=base))
    assert replies[-1].ack == wrap(base + 9)
    assert conn.state == State.CLOSE_WAIT
    assert read(p, conn) == b"headtail"


def test_rst_in_syn_received_returns_to_listen():
    """RFC 9293 §3.10.7.4 (second check): an RST in SYN-RECEIVED of a passive open
    deletes the embryonic connection silently; the listener keeps listening."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    (sa,) = r.send(r.seg(SYN, ack=0, **r.syn_options()))
    r.seq += 1
    assert r.send(r.seg(RST, seq=r.seq)) == []
    assert not p.stack.conns and not listener.syn_queue and not listener.accept_queue
    r2 = Remote(p, PORT, 40001)
    r2.open()
    assert p.stack.accept(listener) is not None


def test_close_listener_resets_unaccepted_connections():
    """As Linux: closing a listener resets the connections it has not handed out yet."""
    p = peer()
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT)
    r.open()
    p.stack.close_listener(listener, p.now)
    (rst,) = r.mine(p.out())
    assert rst.has(RST) and rst.ack == r.seq
    assert not p.stack.conns


# -- flow control: windows, persist, Nagle, delayed ACKs (RFC 9293 §3.8) ------------------


def test_zero_window_persist_probes_back_off_and_resume():
    """RFC 9293 §3.8.6.1 / RFC 1122 §4.2.2.17: with the peer's window closed and data
    waiting, we probe after an RTO, the probe being Linux's <SEQ=SND.UNA-1><CTL=ACK>
    (which consumes no sequence space), each interval doubling; a window update resumes
    the transfer with the waiting bytes."""
    p, r, conn = server()
    data = bytes(range(256)) * 40  # 10240 bytes: 7 full segments and a partial one
    first = data_segs(send(p, r, conn, data))
    sent = sum(len(s.payload) for s in first)
    r.ack(wnd=0)
    una = conn.tcb.snd_una
    assert conn.tcb.unsent == len(data) - sent
    t0 = p.now
    probes = []
    for _ in range(5):
        t, probe = p.until(lambda s: True, limit=120)
        probes.append(t - t0)
        assert probe.only(ACK) and probe.seq == wrap(una - 1) and not probe.payload
        r.ack(wnd=0)
    gaps = [b - a for a, b in zip([0.0, *probes], probes, strict=False)]
    for a, b in zip(gaps, gaps[1:], strict=False):
        assert b == pytest.approx(2 * a, rel=0.01)
    more = data_segs(r.take(r.ack(wnd=1000)))
    assert more and more[0].seq == una
    r.ack(wnd=1000)
    rest = b"".join(s.payload for s in first + more + data_segs(r.take(r.mine(p.out()))))
    while len(rest) < len(data):
        got = data_segs(r.take(r.ack(wnd=1000)))
        assert got
        rest += b"".join(s.payload for s in got)
    assert rest == data


def test_zero_window_probes_answered_keep_the_connection_open():
    """RFC 1122 §4.2.2.17: "A TCP MAY keep its offered receive window closed
    indefinitely. As long as the receiving TCP continues to send acknowledgments in
    response to the probe segments, the sending TCP MUST allow the connection to stay
    open." (Linux resets its probe count on every ACK.) An hour of answered probes."""
    p, r, conn = server()
    send(p, r, conn, bytes(10000))
    r.ack(wnd=0)
    end = p.now + 3600
    probes = 0
    while p.now < end:
        got = p.until(lambda s: True, limit=end - p.now)
        if got is None:
            break
        _, s = got
        assert not s.flags & RST, f"connection reset after {probes} answered probes"
        probes += 1
        r.ack(wnd=0)
    assert conn.state == State.ESTABLISHED and conn.error == 0
    assert probes > 15


def test_receiver_window_closes_and_reopens():
    """RFC 9293 §3.8.6: a receiver that stops reading closes its window (advertises 0)
    once its buffer is full; reading reopens it with a window update and the transfer
    completes (two real stacks)."""
    net = Net(A, B, limits=TcpLimits(rcvbuf=16384, rcvbuf_max=16384))
    c, s = connected_pair(net, A, B)
    data = bytes(k % 251 for k in range(200_000))
    sa, sb = net.stack(A), net.stack(B)
    sent = sa.send(c, data, net.now)
    net.run(5)
    assert s.tcb.readable == 16384 and s.tcb.rcv_wnd == 0
    b_to_a = [m.parse(pkt) for pkt in net.sent if m.parse(pkt).src == B]
    assert b_to_a[-1].wnd == 0
    got = bytearray()
    buf = bytearray(1 << 16)
    end = net.now + 60
    while len(got) < len(data) and net.now < end:
        while sent < len(data) and (n := sa.send(c, data[sent:], net.now)):
            sent += n
        while n := sb.recv_into(s, buf, net.now):
            got += buf[:n]
        if not net.step():
            break
    assert bytes(got) == data


def test_nagle_holds_a_small_segment_while_data_is_unacked():
    """RFC 9293 §3.7.4 (Nagle): a sub-MSS segment is not sent while data is unacknowledged;
    the ACK releases it."""
    p, r, conn = server()
    (first,) = data_segs(send(p, r, conn, b"a" * 100))
    assert data_segs(send(p, r, conn, b"b" * 100)) == []
    (second,) = data_segs(r.take(r.ack()))
    assert second.payload == b"b" * 100 and second.seq == first.end


def test_nodelay_sends_small_segments_at_once():
    """TCP_NODELAY (RFC 9293 §3.7.4 lets the application disable Nagle)."""
    p, r, conn = server()
    conn.tcb.set_option("nodelay", True)
    (first,) = data_segs(send(p, r, conn, b"a" * 100))
    (second,) = data_segs(send(p, r, conn, b"b" * 100))
    assert second.seq == first.end


def test_delayed_ack_fires_at_40ms():
    """RFC 1122 §4.2.3.2 / RFC 9293 §3.8.6.3 (an ACK may be delayed, by less than 0.5 s):
    once the quick-ACK phase of the connection start is over (16 segments, as Linux), a
    lone small segment is acknowledged by the delayed-ACK timer 40 ms later (Linux's
    minimum), even when no other timer of the connection is armed."""
    p, r, conn = server()
    p.advance(5)  # every timer of the handshake is behind us
    for _ in range(16):
        assert r.push(b"q")  # quick ACKs
    assert r.push(b"lone") == []
    sent = p.advance(0.039)
    assert sent == []
    sent = p.advance(0.002)
    assert len(sent) == 1
    t, ack = sent[0]
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)


def test_every_second_full_segment_is_acked_at_once():
    """RFC 5681 §4.2 / RFC 1122 §4.2.3.2: an ACK at least for every second full-sized
    segment."""
    p, r, conn = server()
    for _ in range(16):
        r.push(b"q")
    mss = conn.tcb.mss
    assert r.push(b"x" * mss) == []
    (ack,) = r.push(b"y" * mss)
    assert is_ack(ack, conn.tcb.snd_nxt, r.seq)


def test_out_of_order_data_gets_an_immediate_ack_with_sack():
    """RFC 5681 §4.2: an out-of-order segment is acknowledged at once (a duplicate ACK);
    RFC 2018 §4: with SACK, the ACK's first block is the one holding the newest segment.
    Filling the hole is acknowledged at once, and the SACK option goes."""
    p, r, conn = server()
    for _ in range(16):
        r.push(b"q")
    read(p, conn)
    base = r.seq
    (d1,) = r.send(r.seg(ACK, b"C" * 100, seq=base + 200))
    assert is_ack(d1, conn.tcb.snd_nxt, base) and d1.sack == [(base + 200, base + 300)]
    (d2,) = r.send(r.seg(ACK, b"E" * 100, seq=base + 400))
    assert d2.sack == [(base + 400, base + 500), (base + 200, base + 300)]
    (d3,) = r.send(r.seg(ACK, b"B" * 100, seq=base + 100))
    assert d3.ack == base and d3.sack[0] == (base + 100, base + 300)
    (full,) = r.send(r.seg(ACK, b"A" * 100, seq=base))
    assert full.ack == base + 300 and full.sack == [(base + 400, base + 500)]
    assert read(p, conn) == b"A" * 100 + b"B" * 100 + b"C" * 100


def test_window_update_only_from_a_newer_segment():
    """RFC 9293 §3.10.7.4 (fifth check): the send window is taken from a segment only if
    SND.WL1 < SEG.SEQ, or SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK: a reordered ACK
    older than the last window update does not change the window."""
    p, r, conn = server()
    send(p, r, conn, bytes(3000))
    r.ack(r.rcv_nxt, wnd=8)  # 8 << 7 = 1024 bytes
    assert conn.tcb.snd_wnd == 1024
    r.send(r.seg(ACK, ack=wrap(r.rcv_nxt - 1000), wnd=60000))  # the reordered, older ACK
    assert conn.tcb.snd_wnd == 1024


def test_partly_old_segment_is_trimmed():
    """RFC 9293 §3.10.7.4: a segment starting before RCV.NXT and ending after it is
    trimmed: only its new bytes are accepted."""
    p, r, conn = server()
    r.push(b"01234")
    base = r.seq
    r.send(r.seg(ACK | PSH, b"3456789", seq=base - 2))
    assert read(p, conn) == b"0123456789"
    assert conn.tcb.rcv_nxt == wrap(base + 5)


def test_urgent_data_is_delivered_inline():
    """RFC 6093 §5 / RFC 9293 §3.8.5: urgent data is delivered inline, in sequence, like
    any other byte (the urgent pointer is not acted on)."""
    p, r, conn = server()
    r.push(b"abc")
    r.push(b"URGENT", flags=ACK | PSH | m.URG, urg=6)
    r.push(b"def")
    assert read(p, conn) == b"abcURGENTdef"


def test_data_after_the_peers_fin_is_ignored():
    """RFC 9293 §3.10.7.4 (seventh check, CLOSE-WAIT): text after the peer's FIN "should
    not occur"; it is ignored (and acknowledged)."""
    p, r, conn = server()
    r.fin(b"end")
    assert conn.state == State.CLOSE_WAIT
    replies = r.send(r.seg(ACK | PSH, b"more?"))
    assert replies and all(a.ack == r.seq for a in replies)
    assert read(p, conn) == b"end"


def test_zero_window_receiver_answers_probes():
    """RFC 9293 §3.8.6.1: a receiver with a zero window must still acknowledge: a probe
    with one byte at RCV.NXT (the RFC's) or an empty one at RCV.NXT-1 (Linux's) gets an ACK
    with the current (zero) window, and the byte is not accepted."""
    p, r, conn = server(limits=TcpLimits(rcvbuf=4096, rcvbuf_max=4096), ws=None)
    while conn.tcb.rcv_wnd:
        r.push(b"z" * min(1000, conn.tcb.rcv_wnd))
    assert conn.tcb.readable == 4096
    (a1,) = r.send(r.seg(ACK, b"?", seq=r.seq))
    (a2,) = r.send(r.seg(ACK, seq=wrap(r.seq - 1)))
    for a in (a1, a2):
        assert is_ack(a, conn.tcb.snd_nxt, r.seq) and a.wnd == 0
    assert conn.tcb.readable == 4096
    # Reading opens the window with an update.
    read(p, conn)
    (update,) = r.mine(p.out())
    assert update.only(ACK) and update.wnd > 0 and update.ack == r.seq


def test_fin_rides_on_the_last_data_segment():
    """RFC 9293 §3.10.4: CLOSE queues the FIN after the buffered data; it goes on the
    segment carrying the last bytes (Nagle does not hold data back once the FIN is
    queued)."""
    p, r, conn = server()
    send(p, r, conn, b"first")
    assert p.stack.send(conn, b"last", p.now) == 4
    assert r.mine(p.out()) == []  # Nagle: "first" is unacknowledged
    p.stack.shutdown(conn, p.now, read=False, write=True)
    (seg,) = r.mine(p.out())
    assert seg.has(FIN | ACK) and seg.payload == b"last"


def test_delayed_ack_echoes_the_earliest_unacknowledged_tsval():
    """RFC 7323 §4.3 (2): with delayed ACKs, TS.Recent is taken only from a segment at
    Last.ACK.sent, so an ACK covering two segments echoes the TSval of the first."""
    p, r, conn = server()
    for _ in range(16):
        r.push(b"q")
    mss = conn.tcb.mss
    r.tsval = 100_000
    assert r.push(b"x" * mss) == []
    (ack,) = r.push(b"y" * mss)
    assert ack.ts[1] == 100_000


def test_shutdown_read_discards_but_acknowledges():
    """SHUT_RD (as Linux): bytes arriving afterwards are acknowledged and dropped, so the
    peer is not stalled; the application reads nothing."""
    p, r, conn = server()
    p.stack.shutdown(conn, p.now, read=True, write=False)
    replies = r.push(b"x" * 3000)
    assert replies and replies[-1].ack == r.seq
    assert read(p, conn) == b""


# -- keepalive (RFC 1122 §4.2.3.6) --------------------------------------------------------

KEEP = {"keepalive": True, "keep_idle": 10.0, "keep_intvl": 2.0, "keep_cnt": 3}


def test_keepalive_probes_then_etimedout():
    """RFC 1122 §4.2.3.6: after keep_idle without traffic, a probe <SEQ=SND.UNA-1>
    <CTL=ACK> (no data); keep_cnt probes unanswered, keep_intvl apart, abort the
    connection (ETIMEDOUT, and an RST as Linux sends)."""
    p, r, conn = client(options=KEEP)
    t0 = p.now
    sent = p.advance(60)
    probes = [(round(t - t0, 3), s) for t, s in sent if not s.flags & RST]
    assert [t for t, _ in probes] == [10, 12, 14]
    for _, s in probes:
        assert s.only(ACK) and s.seq == wrap(conn.tcb.snd_una - 1) and not s.payload
    rsts = [(round(t - t0, 3), s) for t, s in sent if s.flags & RST]
    assert [t for t, _ in rsts] == [16]
    assert conn.state == State.CLOSED and conn.error == errno.ETIMEDOUT


def test_keepalive_reply_resets_the_probes():
    """RFC 1122 §4.2.3.6: a reply to a probe shows the peer alive; probing starts over
    after another keep_idle. Ten minutes of answered probes do not abort."""
    p, r, conn = client(options=KEEP)
    end = p.now + 600
    n = 0
    while True:
        got = p.until(lambda s: True, limit=end - p.now)
        if got is None:
            break
        t, s = got
        assert not s.flags & RST
        n += 1
        p.now += 0.01
        r.ack()
    assert conn.state == State.ESTABLISHED and n >= 50


def test_keepalive_answered_probes_never_abort_with_a_long_interval():
    """RFC 1122 §4.2.3.6 and Linux's TCP_KEEPCNT (probes *unanswered* before dropping):
    a peer that answers every probe keeps the connection, also when keep_intvl is longer
    than keep_idle (Linux resets its probe count on every ACK)."""
    p, r, conn = client(options={**KEEP, "keep_idle": 10.0, "keep_intvl": 30.0})
    end = p.now + 600
    while True:
        got = p.until(lambda s: True, limit=end - p.now)
        if got is None:
            break
        _, s = got
        assert not s.flags & RST, "aborted although every probe was answered"
        p.now += 0.01
        r.ack()
    assert conn.state == State.ESTABLISHED


def test_keepalive_is_off_by_default():
    """RFC 1122 §4.2.3.6: keepalives MUST default to off."""
    p, r, conn = client()
    assert p.advance(3 * 3600) == []
    assert conn.state == State.ESTABLISHED


# -- retransmission and loss recovery (RFC 6298, RFC 5681, RFC 6675, RFC 6928) ------------


def test_initial_window_is_ten_segments():
    """RFC 6928: IW = min(10 * MSS, max(2 * MSS, 14600)) bytes (10 segments at our MSS)."""
    p, r, conn = server()
    sent = data_segs(send(p, r, conn, bytes(100_000)))
    assert len(sent) == 10 and all(len(s.payload) == conn.tcb.mss for s in sent)


def test_rto_retransmits_the_last_segment_with_backoff():
    """RFC 6298 §5: with the last segment lost (no dup ACKs possible), the RTO fires and
    the earliest unacknowledged segment goes again, the timer doubling each time (§5.5);
    an ACK of new data resets the backoff (§5.3 with the RTO recomputed)."""
    p, r, conn = server()
    rto = conn.tcb.rto
    assert rto == pytest.approx(0.2)  # RTT ~0 s from the handshake: the 200 ms floor
    (seg,) = data_segs(send(p, r, conn, b"the last segment"))
    t0 = p.now
    sent = p.advance(3.05)
    times = [round(t - t0, 3) for t, _ in sent]
    assert times == [0.2, 0.6, 1.4, 3.0]
    for _, s in sent:
        assert s.seq == seg.seq and s.payload == seg.payload
    assert conn.tcb.counters()["retrans_segs"] == 4
    r.mine([s for _, s in sent])  # the last retransmission arrived: its TSval is echoed
    r.ack()
    t1 = p.now
    (seg2,) = data_segs(send(p, r, conn, b"next"))
    (t, again), *_ = p.advance(5)
    assert again.seq == seg2.seq and t - t1 == pytest.approx(conn.tcb.rto, abs=0.01)
    assert conn.tcb.rto < 0.5


def test_rto_armed_by_a_window_update_fires_on_time():
    """RFC 6298 §5.1: "Every time a packet containing data is sent (including a
    retransmission), if the timer is not running, start it running so that it will
    expire after RTO seconds." After a zero-window period, the data a window update lets
    out is retransmitted one RTO later if it is lost, not when the persist timer's backed
    off deadline (tens of seconds) comes."""
    p, r, conn = server()
    send(p, r, conn, bytes(20000))
    r.ack(wnd=0)
    for _ in range(7):  # the persist interval backs off to 25.6 s
        p.until(lambda s: True, limit=120)
        r.ack(wnd=0)
    t1 = p.now
    assert data_segs(r.ack(wnd=1000))  # the window opens: data goes, and is lost
    rto = conn.tcb.rto
    t, again = p.until(lambda s: bool(s.payload), limit=120)
    assert t - t1 == pytest.approx(rto, abs=0.01), f"retransmitted after {t - t1:.1f} s"


def test_retransmissions_exhausted_abort_with_etimedout():
    """RFC 9293 §3.8.3 / RFC 1122 §4.2.3.5 (R2): after max_retries timeouts the
    connection is aborted: ETIMEDOUT, RST."""
    p, r, conn = server(limits=TcpLimits(max_retries=4))
    send(p, r, conn, b"nobody hears")
    sent = p.advance(60)
    assert len([s for _, s in sent if s.payload]) == 4
    assert sent[-1][1].has(RST)
    assert conn.state == State.CLOSED and conn.error == errno.ETIMEDOUT


def test_fast_retransmit_after_three_duplicate_acks_without_sack():
    """RFC 5681 §3.2: the third duplicate ACK retransmits the segment at SND.UNA at once
    (not waiting for the RTO), with ssthresh = max(FlightSize / 2, 2 * MSS) (NewReno) and
    cwnd = ssthresh (RFC 6582)."""
    p, r, conn = server(sack=False, limits=TcpLimits(congestion_control="newreno"))
    segs = data_segs(send(p, r, conn, bytes(14 * conn.tcb.mss)))
    assert len(segs) == 10
    p.now += 0.01
    r.ack(segs[1].seq)  # the first arrived, the second is lost
    flight = conn.tcb.snd_nxt - conn.tcb.snd_una
    replies = [data_segs(r.ack(segs[1].seq)) for _ in range(3)]
    assert replies[0] == [] and replies[1] == []
    (rx,) = replies[2]
    assert rx.seq == segs[1].seq and rx.payload == segs[1].payload
    info = conn.tcb.counters()
    assert info["fast_recoveries"] == 1
    assert info["ssthresh"] == max(flight // 2, 2 * conn.tcb.mss)
    nxt = conn.tcb.snd_nxt
    r.ack(nxt)
    assert conn.tcb.snd_una == nxt and conn.tcb.counters()["fast_recoveries"] == 1


def test_sack_recovery_retransmits_only_the_holes():
    """RFC 6675: with SACK, loss is detected from the scoreboard (three segments SACKed
    above a hole) and NextSeg retransmits the lowest lost, unSACKed data: each hole once,
    nothing the peer already holds."""
    p, r, conn = server()
    segs = data_segs(send(p, r, conn, bytes(10 * conn.tcb.mss)))
    assert len(segs) == 10
    p.now += 0.01
    # Segments 1 and 4 lost; the rest arrive, the receiver SACKs as they come.
    base = segs[1].seq
    got = []
    blocks = [(segs[2].seq, segs[4].seq)]
    got += r.ack(base, sack=blocks)
    for k in range(5, 10):
        blocks = [(segs[5].seq, segs[k].end), (segs[2].seq, segs[4].seq)]
        got += r.ack(base, sack=blocks)
    got += [s for _, s in p.advance(0.005)]  # pacing spaces the retransmissions
    rx = [s for s in data_segs(got) if s.seq in {x.seq for x in segs}]
    assert [s.seq for s in rx] == [segs[1].seq, segs[4].seq]
    assert all(s.payload == segs[[x.seq for x in segs].index(s.seq)].payload for s in rx)
    assert conn.tcb.counters()["fast_recoveries"] == 1
    r.ack(conn.tcb.snd_nxt)
    assert conn.tcb.all_acked


# -- sequence numbers wrapping (RFC 9293 §3.4) --------------------------------------------


@V4V6
def test_sequence_numbers_wrap_during_a_transfer(v6):
    """RFC 9293 §3.4: all sequence arithmetic is modulo 2**32; with both ISNs 256 below
    the top, a megabyte each way under loss and reordering crosses the wrap intact."""
    a, b = (A6, B6) if v6 else (A, B)
    net = Net(a, b, impairment=Impairment(delay=0.01, loss=0.01, reorder=0.01), seed=3)
    for stack in set(net.stacks.values()):
        stack._isn = lambda local, remote, now: 0xFFFFFF00
    c, s = connected_pair(net, a, b)
    assert c.tcb.iss == s.tcb.iss == 0xFFFFFF00
    data = bytes(k * 13 % 256 for k in range(1 << 20))
    assert transfer(net, c, s, data, 300) == data
    assert transfer(net, s, c, data[::-1], 300) == data[::-1]
    assert c.tcb.snd_nxt < 0x80000000 and s.tcb.snd_nxt < 0x80000000  # wrapped


def test_sequence_numbers_wrap_by_hand():
    """RFC 9293 §3.4: segments straddling 2**32 carry wrapped sequence numbers, and an
    ACK with a wrapped number acknowledges them."""
    p = peer()
    p.stack._isn = lambda local, remote, now: 0xFFFFFF00
    listener = p.stack.listen(None, PORT, 8)
    r = Remote(p, PORT, isn=0xFFFFFFF0)
    r.open()
    conn = p.stack.accept(listener)
    segs = data_segs(send(p, r, conn, bytes(3000)))
    assert segs[0].seq == 0xFFFFFF01 and segs[1].seq == wrap(0xFFFFFF01 + segs[0].seg_len)
    r.take(r.ack())  # the ACK also releases the Nagle-held tail
    r.ack()
    assert conn.tcb.snd_una == wrap(0xFFFFFF01 + 3000) and conn.tcb.buffered == 0
    r.push(b"z" * 100)  # crosses 2**32 in the other direction
    assert read(p, conn) == b"z" * 100 and conn.tcb.rcv_nxt == wrap(0xFFFFFFF1 + 100)


# -- listener queues ----------------------------------------------------------------------


def test_listen_backlog_full_drops_the_syn():
    """Linux behaviour (no SYN cookies): a SYN while the accept queue is full is dropped
    (the peer retries), and counted; once the application accepts, a retried SYN gets in."""
    p = peer()
    listener = p.stack.listen(None, PORT, 1)
    Remote(p, PORT, 40000).open()
    r2 = Remote(p, PORT, 40001)
    syn = r2.seg(SYN, ack=0, **r2.syn_options())
    assert r2.send(syn) == []
    assert p.stack.drops["listen_overflow"] == 1
    assert p.stack.accept(listener) is not None
    (sa,) = r2.send(syn)
    assert sa.has(SYN | ACK)


def test_syn_queue_full_drops_the_oldest_embryonic_connection():
    """Implementation limit: beyond syn_queue embryonic connections per listener, the
    oldest is dropped and counted; its final ACK then finds no connection (RST)."""
    p = peer(limits=TcpLimits(syn_queue=2))
    listener = p.stack.listen(None, PORT, 8)
    remotes = [Remote(p, PORT, 40000 + k) for k in range(3)]
    synacks = []
    for r in remotes:
        (sa,) = r.send(r.seg(SYN, ack=0, **r.syn_options()))
        r.seq += 1
        r.rcv_nxt = sa.seq + 1
        synacks.append(sa)
    assert p.stack.drops["syn_queue_overflow"] == 1
    assert len(listener.syn_queue) == 2
    (rst,) = remotes[0].ack()
    assert rst.only(RST) and rst.seq == synacks[0].seq + 1
    for r in remotes[1:]:
        assert r.ack() == []
    assert len(listener.accept_queue) == 2


def test_accept_queue_full_when_handshake_completes_drops_the_ack():
    """As Linux by default (tcp_abort_on_overflow=0): a handshake completing while the
    accept queue is full loses its ACK (counted) and stays in SYN-RECEIVED; once the
    application accepts, the peer's next segment completes it."""
    p = peer()
    listener = p.stack.listen(None, PORT, 1)
    r1, r2 = Remote(p, PORT, 40000), Remote(p, PORT, 40001)
    (sa2,) = r2.send(r2.seg(SYN, ack=0, **r2.syn_options()))
    r2.seq += 1
    r2.rcv_nxt = sa2.seq + 1
    r1.open()
    assert r2.ack() == []  # dropped, nothing said
    assert p.stack.drops["accept_queue_full"] == 1
    assert len(listener.accept_queue) == 1
    embryo = next(c for c in p.stack.conns.values() if c.remote[1] == 40001)
    assert embryo.state == State.SYN_RECEIVED
    assert p.stack.accept(listener) is not None  # room again
    r2.ack()
    assert embryo.state == State.ESTABLISHED
    assert list(listener.accept_queue) == [embryo]


def test_two_hundred_connections_through_one_listener():
    """One listener, 200 concurrent connections from ephemeral ports (RFC 6056), each
    carrying its own bytes, all closed cleanly."""
    net = Net(A, B, impairment=Impairment(delay=0.002))
    sa, sb = net.stack(A), net.stack(B)
    listener = sb.listen(None, PORT, 256)
    clients = [sa.connect(addr(B, PORT), net.now) for _ in range(200)]
    assert len({c.local[1] for c in clients}) == 200
    assert net.run(10, until=lambda: len(listener.accept_queue) == 200)
    servers = {}
    while (s := sb.accept(listener)) is not None:
        servers[s.remote[1]] = s
    for k, c in enumerate(clients):
        assert sa.send(c, f"client {k} ".encode() * 50, net.now)
        sa.close(c, net.now)
    net.run(10, until=lambda: all(s.state == State.CLOSE_WAIT for s in servers.values()))
    buf = bytearray(1 << 16)
    for k, c in enumerate(clients):
        s = servers[c.local[1]]
        n = sb.recv_into(s, buf, net.now)
        assert bytes(buf[:n]) == f"client {k} ".encode() * 50
        sb.close(s, net.now)
    assert net.run(10, until=lambda: not sb.conns)
    assert all(c.state == State.TIME_WAIT for c in clients)


# -- ICMP (RFC 1122 §4.2.3.9, RFC 5927, RFC 1191, RFC 8201) --------------------------------


@V4V6
def test_icmp_port_unreachable_aborts_a_connect(v6):
    """RFC 1122 §4.2.3.9: Destination Unreachable (port) is a hard error: the connection
    in SYN-SENT is aborted with ECONNREFUSED; nothing more is sent."""
    p = peer(v6)
    conn = p.stack.connect((p.them16, PORT), p.now)
    (syn,) = p.out()
    p.stack.icmp_error(conn.local, conn.remote, syn.seq, "port", 0, p.now)
    assert conn.state == State.CLOSED and conn.error == errno.ECONNREFUSED
    assert p.advance(10) == []


@V4V6
def test_icmp_too_big_lowers_the_mss_and_the_data_arrives(v6):
    """RFC 1191 / RFC 8201: a path MTU below ours (ICMP Fragmentation Needed / Packet Too
    Big for each oversized segment) lowers the MSS to fit, what was in flight is resent in
    smaller segments, and the whole transfer arrives."""
    a, b = (A6, B6) if v6 else (A, B)
    path_mtu = 1300 if v6 else 1000
    net = Net(a, b, impairment=Impairment(delay=0.01, path_mtu=path_mtu))
    c, s = connected_pair(net, a, b)
    data = bytes(k % 253 for k in range(300_000))
    assert transfer(net, c, s, data, 60) == data
    assert net.too_big > 0
    assert c.tcb.mss == path_mtu - (60 if v6 else 40) - 12
    assert all(len(pkt) <= path_mtu for pkt in net.sent[-20:])


def test_icmp_too_big_by_hand():
    """RFC 1191 §6.4 / RFC 5927 §4.1: "too big" quoting an outstanding sequence number
    lowers the MSS and retransmits at once in segments that fit."""
    p, r, conn = server()
    segs = data_segs(send(p, r, conn, bytes(3 * conn.tcb.mss)))
    p.stack.icmp_error(conn.local, conn.remote, segs[0].seq, "too_big", 1000, p.now)
    assert conn.tcb.mss == 1000 - 40 - 12
    rx = r.mine(p.out())
    assert rx and rx[0].seq == segs[0].seq
    assert all(len(m.build(s)) <= 1000 for s in rx)


def test_icmp_too_big_never_lowers_ipv6_below_1280():
    """RFC 8201 §4: a node MUST NOT reduce its estimate of the path MTU below the IPv6
    minimum link MTU of 1280 octets."""
    p, r, conn = server(v6=True)
    segs = data_segs(send(p, r, conn, bytes(3 * conn.tcb.mss)))
    p.stack.icmp_error(conn.local, conn.remote, segs[0].seq, "too_big", 600, p.now)
    assert conn.tcb.mss == 1280 - 60 - 12
    assert all(len(m.build(s)) <= 1280 for s in r.mine(p.out()))


@pytest.mark.parametrize("kind", ["too_big", "port", "host"])
def test_icmp_with_an_out_of_window_sequence_is_ignored(kind):
    """RFC 5927 §4.1: an ICMP error whose quoted sequence number is not one we have
    outstanding (SND.UNA =< SEQ < SND.NXT) is ignored (and counted): it is stale or
    forged."""
    p, r, conn = server()
    send(p, r, conn, bytes(1000))
    mss = conn.tcb.mss
    for seq in (conn.tcb.snd_nxt + 10, conn.tcb.snd_una - 10):
        p.stack.icmp_error(conn.local, conn.remote, wrap(seq), kind, 600, p.now)
    assert p.stack.drops["icmp_out_of_window"] == 2
    assert conn.state == State.ESTABLISHED and conn.error == 0 and conn.tcb.mss == mss


def test_icmp_soft_error_is_reported_when_the_connection_times_out():
    """RFC 1122 §4.2.3.9: host unreachable is a soft error for a synchronized connection:
    it does not abort, but it is the error reported if retransmissions then run out
    (EHOSTUNREACH instead of ETIMEDOUT)."""
    p, r, conn = server(limits=TcpLimits(max_retries=3))
    (seg,) = data_segs(send(p, r, conn, b"lost"))
    p.stack.icmp_error(conn.local, conn.remote, seg.seq, "host", 0, p.now)
    assert conn.state == State.ESTABLISHED
    p.advance(60)
    assert conn.state == State.CLOSED and conn.error == errno.EHOSTUNREACH
