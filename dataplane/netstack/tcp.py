"""TCP's connection state machine (RFC 9293), sans-I/O: the stack of the in-process overlay.

Theory of operation. ``TcpStack`` owns every connection of one ``OverlayNetwork``. It
never touches a socket, a thread or a clock: the caller hands it batches of IP packets
(``input``), asks it for due timers (``timers``), makes user calls (``connect``,
``listen``, ``close``, ...) with ``now``, and drains what it wants sent
(``take_output``) and which connections have news for their waiters (``take_changed``).

The work splits between this file and ``_tcp.pyx`` by trip count. Per segment and per
byte, everything is C: parsing, checksums, the 4-tuple lookup, and for the common segment
of a transfer (ACK, maybe PSH, in window, in a synchronized state) the whole of RFC 9293
§3.10.7 by header prediction. Every other segment comes here, in order, and runs the
checks of §3.10.7 in the RFC's order (``_segment_arrives``): CLOSED and LISTEN
(§3.10.7.1-2), SYN-SENT (§3.10.7.3), and the rest (§3.10.7.4: PAWS, sequence number,
RST with RFC 5961's challenge ACK, SYN, ACK, text, FIN). The ACK and text steps call the
same C functions as the fast path (``Tcb.ack`` / ``Tcb.text``), so each rule is written
once. State changes are data: ``TRANSITIONS`` maps (state, event) to the next state;
only what the RFC attaches to a transition (TIME-WAIT's timer, the accept queue, the
errors a user sees) is code, in ``_enter``.

Bounded everything: connections (``max_connections``, the C table), each listener's SYN
queue (embryonic connections; the oldest is dropped when it is full, counted) and accept
queue (a SYN beyond it is dropped, counted, as Linux does), TIME-WAIT connections (the
oldest is closed early beyond ``max_time_wait``), buffers (per connection, in C), and
challenge ACKs (RFC 5961 §7: a budget per second). Network input never raises: every
segment dropped here is counted by reason in ``drops``.

Initial sequence numbers follow RFC 6528 (a keyed BLAKE2s of the 4-tuple plus a 4 µs
clock), timestamps start at a random offset per connection (RFC 7323 §5.4), and ephemeral
ports are chosen at random (RFC 6056 §3.3.1).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import heapq
import logging
import os
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataplane._batch import DEFAULT_HEADROOM, DEFAULT_TAILROOM, PacketBatch
from dataplane.netstack import _tcp
from dataplane.netstack._tcp import (
    ACK,
    ACK_RESULT_OK,
    ACK_RESULT_TOO_NEW,
    EVENT_FIN,
    EVENT_FIN_ACKED,
    EVENT_OUTPUT,
    EVENT_READABLE,
    EVENT_SYN_ACKED,
    EVENT_WRITABLE,
    FIN,
    RST,
    SYN,
    TIMER_TIMEDOUT,
    TIMER_USER,
    Demux,
    Segments,
    Tcb,
    build_reset,
)

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """RFC 9293 §3.3.2 (values shared with ``_tcp.pxd``)."""

    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


class Event(enum.Enum):
    """What moves a connection from one state to another (RFC 9293 figure 5)."""

    SYN_ACK = "our SYN acknowledged by the peer's SYN-ACK"
    SIMULTANEOUS_SYN = "a SYN without ACK while ours is outstanding"
    SYN_ACKED = "the ACK of our SYN-ACK"
    CLOSE = "the application closed its sending side"
    FIN = "the peer's FIN, in order"
    FIN_ACKED = "our FIN acknowledged"
    TIMEOUT = "2 MSL passed in TIME-WAIT (or FIN-WAIT-2's orphan timeout)"


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.SYN_SENT, E.SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.SIMULTANEOUS_SYN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, E.SYN_ACKED): S.ESTABLISHED,
    (S.SYN_RECEIVED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.FIN_ACKED): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.FIN): S.CLOSING,
    (S.FIN_WAIT_2, E.FIN): S.TIME_WAIT,
    (S.FIN_WAIT_2, E.TIMEOUT): S.CLOSED,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.CLOSING, E.FIN_ACKED): S.TIME_WAIT,
    (S.LAST_ACK, E.FIN_ACKED): S.CLOSED,
    (S.TIME_WAIT, E.TIMEOUT): S.CLOSED,
}
"""The state diagram of RFC 9293 §3.3.2, less LISTEN (a listener is not a connection here:
each SYN makes a new connection in SYN-RECEIVED) and less RST and ABORT, which close from
any state (``_close``)."""

SYNCHRONIZED = frozenset(
    {
        S.ESTABLISHED,
        S.FIN_WAIT_1,
        S.FIN_WAIT_2,
        S.CLOSE_WAIT,
        S.CLOSING,
        S.LAST_ACK,
        S.TIME_WAIT,
    }
)
TEXT_STATES = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
"""States in which the peer's data is accepted (§3.10.7.4, seventh check)."""

MSL = 30.0
"""Maximum segment lifetime: TIME-WAIT lasts 2 MSL = 60 s, as on Linux."""

FIN_WAIT_2_TIMEOUT = 60.0
"""How long an orphaned FIN-WAIT-2 waits for the peer's FIN (Linux tcp_fin_timeout)."""

CHALLENGE_ACKS_PER_SECOND = 1000
"""RFC 5961 §7: a stack-wide budget of challenge ACKs (Linux tcp_challenge_ack_limit)."""

OUT_BATCH = 64


@dataclass
class TcpLimits:
    """Bounds and defaults of one stack (the sysctls of a kernel)."""

    max_connections: int = 65536
    max_time_wait: int = 4096
    syn_queue: int = 1024
    """Embryonic connections per listener; beyond it the oldest is dropped."""
    rcvbuf: int = 131072
    """Initial receive buffer (and window) of a connection."""
    rcvbuf_max: int = 16 << 20
    """Autotuning limit of the receive buffer (Linux's tcp_rmem max is 6 MiB by default;
    16 MiB keeps one stream at full speed on a 100 ms path)."""
    sndbuf_max: int = 16 << 20
    rto_min: float = 0.2
    syn_retries: int = 6
    synack_retries: int = 5
    max_retries: int = 15
    congestion_control: str = "cubic"
    hystart: bool = False
    """HyStart++ (RFC 9406, without its conservative phase): end slow start when the
    round trip grows. Off by default: a userspace stack's RTT samples carry scheduling
    jitter, which ended slow start falsely in 4 of 8 runs here (cwnd stuck at 1-3 MB,
    0.4-0.5 Gb/s instead of 2.5-4.1); pacing is what keeps windows out of shallow queues."""
    timestamps: bool = True
    sack: bool = True
    window_scaling: bool = True


class Connection:
    """One TCP connection's Python half: its ``Tcb`` (all sequence state, buffers,
    timers) plus what the state machine and the application need besides."""

    __slots__ = (
        "_fin_handled",
        "accepted",
        "error",
        "generation",
        "listener",
        "local",
        "owner",
        "passive",
        "remote",
        "scheduled",
        "shut_rd",
        "shut_wr",
        "soft_error",
        "stack",
        "tcb",
        "user_closed",
    )

    def __init__(self, stack: TcpStack, local: tuple[bytes, int], remote: tuple[bytes, int]):
        self.stack = stack
        self.tcb = Tcb()
        self.local = local
        self.remote = remote
        self.listener: Listener | None = None
        self.passive = False
        self.accepted = False
        self.error: int = 0  # errno the application sees (ECONNRESET, ...), 0 if none
        self.soft_error: int = 0  # ICMP soft error, reported if the connection times out
        self.scheduled = 0.0  # deadline of the timer-heap entry that is current
        self.generation = 0
        self.user_closed = False  # close(): no more reads or writes by the application
        self.shut_wr = False
        self.shut_rd = False
        self.owner: Any = None  # the socket object of the I/O layer
        self._fin_handled = False

    @property
    def state(self) -> State:
        return State(self.tcb.state)

    @property
    def id(self) -> int:
        return int(self.tcb.id)

    def __repr__(self) -> str:
        return (
            f"<Connection {_text(self.local)} -> {_text(self.remote)} {self.state.name}"
            f"{' error=' + str(self.error) if self.error else ''}>"
        )


class Listener:
    """A passive open: a port (on one address or all) with its SYN and accept queues."""

    def __init__(self, stack: TcpStack, address: bytes | None, port: int, backlog: int):
        self.stack = stack
        self.address = address
        self.port = port
        self.backlog = backlog
        self.syn_queue: OrderedDict[int, Connection] = OrderedDict()
        self.accept_queue: deque[Connection] = deque()
        self.closed = False
        self.owner: Any = None

    def __repr__(self) -> str:
        where = _text((self.address, self.port)) if self.address else f"*:{self.port}"
        return f"<Listener {where} backlog={self.backlog} pending={len(self.accept_queue)}>"


class TcpStack:
    """All TCP connections of a set of overlay addresses; see the module docstring."""

    def __init__(
        self,
        addresses: Iterable[bytes],
        *,
        mtu: int = 1420,
        limits: TcpLimits | None = None,
        secret: bytes | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.addresses = frozenset(addresses)
        self.mtu = mtu
        self.limits = limits or TcpLimits()
        self._secret = secret if secret is not None else os.urandom(32)
        self._rng = rng or random.Random(os.urandom(16))
        self.demux = Demux(self.limits.max_connections, self._rng.getrandbits(64))
        self.conns: dict[int, Connection] = {}
        self.listeners: dict[tuple[bytes | None, int], Listener] = {}
        self.time_wait: OrderedDict[int, Connection] = OrderedDict()
        self._segs = Segments(256)
        self._heap: list[tuple[float, int, int, int]] = []
        self._heap_seq = 0
        self._out: list[PacketBatch] = []
        self._changed: set[Any] = set()
        self.tx_room = 1 << 30
        """Data segments the I/O layer lets the stack queue now (its "TCP small queues":
        a sender must not fill local queues with its whole congestion window)."""
        self._throttled: dict[int, Connection] = {}
        self._challenge_budget = CHALLENGE_ACKS_PER_SECOND
        self._challenge_second = -1
        self._generation = 0
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    # -- what the I/O layer drains ----------------------------------------------------------

    def take_output(self) -> list[PacketBatch]:
        """Batches of IP packets to send, in order; cleared."""
        out = [b for b in self._out if len(b)]
        self._out = []
        return out

    def take_changed(self) -> set[Any]:
        """Connections and listeners whose waiters may proceed (data, space, accept,
        established, closed, error); cleared."""
        changed, self._changed = self._changed, set()
        return changed

    def next_deadline(self) -> float | None:
        """When ``timers`` next has something to do (monotonic seconds), or None."""
        heap = self._heap
        while heap:
            when, _, cid, gen = heap[0]
            conn = self.conns.get(cid)
            if conn is None or conn.generation != gen or conn.scheduled != when:
                heapq.heappop(heap)  # stale entry
                continue
            return when
        return None

    # -- input ------------------------------------------------------------------------------

    def input(self, batch: PacketBatch, now: float) -> int:
        """Handle the TCP segments of a batch of IP packets addressed to our addresses.

        They get the batch status CONSUMED (or a drop reason); packets of other protocols
        are left alive for their handlers. Returns how many of those there are."""
        segs = self._segs
        if len(batch) > segs.capacity:
            segs = self._segs = Segments(max(len(batch), 2 * segs.capacity))
        touched = self.demux.input(batch, segs, now)
        counts = segs.verdict_counts()
        for v, c in enumerate(counts):
            if c and v not in (_tcp.FAST, _tcp.SLOW, _tcp.SKIPPED, _tcp.NOT_TCP):
                self.drops[_tcp.VERDICT_NAMES[v]] += c
        others = counts[_tcp.NOT_TCP]
        self.counters["segments_in"] += len(batch) - counts[_tcp.SKIPPED] - others
        self.counters["fast_path"] += counts[_tcp.FAST]
        for i in segs.slow():
            try:
                self._segment_arrives(segs, i, now)
            except Exception:
                # A bug of ours, not the peer's: the segment is dropped and counted, and
                # the stack (every other connection) carries on. Logged once, loudly.
                self.drops["internal_error"] += 1
                if self.drops["internal_error"] == 1:
                    log.exception("TCP: a segment raised; dropped (drops['internal_error'])")
        for cid in touched:
            conn = self.conns.get(cid)
            if conn is not None:
                self._after_input(conn, now)
        return int(others)

    def _after_input(self, conn: Connection, now: float) -> None:
        """Act on what C raised for a connection, then send what it wants sent."""
        self._events(conn, now)
        self._transmit(conn, now)

    def _events(self, conn: Connection, now: float) -> None:
        """The state machine's side of what the C half raised (EVENT_* bits)."""
        tcb = conn.tcb
        ev = tcb.take_events()
        if ev & EVENT_FIN_ACKED:
            self._fin_acked(conn, now)
        if tcb.id < 0:
            return  # closed meanwhile
        if ev & EVENT_FIN:
            self._fin_in_order(conn, now)
        if ev & (EVENT_READABLE | EVENT_WRITABLE | EVENT_SYN_ACKED):
            self._changed.add(conn)

    def _segment_arrives(self, segs: Segments, i: int, now: float) -> None:
        """RFC 9293 §3.10.7 for one segment the fast path left to us."""
        cid = segs.conn(i)
        conn = self.conns.get(cid) if cid >= 0 else None
        src, sport, dst, dport = segs.addresses(i)
        if conn is None or conn.remote != (src, sport) or conn.local != (dst, dport):
            # What the batch was matched against when it came in may be stale: an earlier
            # segment of this batch can have made the connection (a SYN twice), or closed
            # it and its id gone to another. Look the 4-tuple up again.
            found = self.demux.lookup(dst, dport, src, sport)
            conn = self.conns.get(found.id) if found is not None else None
        if conn is None:
            if dst not in self.addresses:
                self.drops["not_our_address"] += 1
                return
            listener = self.listeners.get((dst, dport)) or self.listeners.get((None, dport))
            if listener is None or listener.closed:
                self._closed_arrives(segs, i)
            else:
                self._listen_arrives(listener, segs, i, now)
            return
        if conn.tcb.state == S.SYN_SENT:
            self._syn_sent_arrives(conn, segs, i, now)
        else:
            self._synchronized_arrives(conn, segs, i, now)
        if conn.tcb.id >= 0:
            self._schedule(conn)

    def _closed_arrives(self, segs: Segments, i: int) -> None:
        """§3.10.7.1: no connection. An RST is dropped; anything else is answered by one."""
        seq, ack, flags, _, ln = segs.fields(i)
        if flags & RST:
            self.drops["rst_no_connection"] += 1
            return
        self.counters["rst_sent_closed_port"] += 1
        if flags & ACK:
            self._reply_reset(segs, i, ack, 0, RST)
        else:
            seg_len = ln + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            self._reply_reset(segs, i, 0, (seq + seg_len) & 0xFFFFFFFF, RST | ACK)

    def _listen_arrives(self, listener: Listener, segs: Segments, i: int, now: float) -> None:
        """§3.10.7.2: a segment for a listener."""
        seq, ack, flags, _, _ = segs.fields(i)
        if flags & RST:
            self.drops["rst_to_listener"] += 1
            return
        if flags & ACK:
            # No such embryonic connection (expired, dropped from a full SYN queue, or
            # forged): RST, as Linux does without SYN cookies.
            self.counters["rst_sent_listener_ack"] += 1
            self._reply_reset(segs, i, ack, 0, RST)
            return
        if not flags & SYN:
            self.drops["no_syn_to_listener"] += 1
            return
        if len(listener.accept_queue) >= listener.backlog:
            self.drops["listen_overflow"] += 1  # the peer retries its SYN
            return
        if len(listener.syn_queue) >= self.limits.syn_queue:
            _, oldest = listener.syn_queue.popitem(last=False)
            self.drops["syn_queue_overflow"] += 1
            self._close(oldest, now, 0, reset=False)
        src, sport, dst, dport = segs.addresses(i)
        try:
            conn = self._new_connection((dst, dport), (src, sport), now)
        except OverflowError:
            self.drops["connection_table_full"] += 1
            return
        except KeyError:  # the 4-tuple is taken (cannot happen after the lookup above)
            self.drops["connection_exists"] += 1
            return
        conn.passive = True
        conn.listener = listener
        listener.syn_queue[conn.id] = conn
        tcb = conn.tcb
        tcb.negotiate(segs, i)
        tcb.set_option("syn_retries", self.limits.synack_retries)
        tcb.state = S.SYN_RECEIVED
        tcb.send_syn()
        self.counters["passive_opens"] += 1
        self._transmit(conn, now)
        self._schedule(conn)

    def _syn_sent_arrives(self, conn: Connection, segs: Segments, i: int, now: float) -> None:
        """§3.10.7.3 (with RFC 5961 §3.2 for the RST)."""
        tcb = conn.tcb
        seq, ack, flags, _, _ = segs.fields(i)
        ack_ok = False
        if flags & ACK:
            if not _seq_lt(tcb.iss, ack) or _seq_lt(tcb.snd_nxt, ack):
                if not flags & RST:
                    self._reply_reset(segs, i, ack, 0, RST)
                self.drops["syn_sent_bad_ack"] += 1
                return
            ack_ok = True
        if flags & RST:
            if ack_ok:
                self.counters["connection_refused"] += 1
                self._close(conn, now, errno.ECONNREFUSED, reset=False)
            else:
                self.drops["syn_sent_rst_without_ack"] += 1
            return
        if not flags & SYN:
            self.drops["syn_sent_no_syn"] += 1
            return
        tcb.negotiate(segs, i)
        if ack_ok:
            tcb.ack(segs, i, now)
            tcb.take_events()
            self._move(conn, E.SYN_ACK, now)
            tcb.text(segs, i, now)
            tcb.ack_now()
            self._events(conn, now)
        else:
            # Simultaneous open (§3.5): SYN-RECEIVED, and our SYN goes again with an ACK.
            self._move(conn, E.SIMULTANEOUS_SYN, now)
            tcb.send_syn()
        self._changed.add(conn)
        self._transmit(conn, now)

    def _synchronized_arrives(self, conn: Connection, segs: Segments, i: int, now: float) -> None:
        """§3.10.7.4: SYN-RECEIVED and the synchronized states, checks in order."""
        tcb = conn.tcb
        seq, ack, flags, _, ln = segs.fields(i)
        state = State(tcb.state)
        if flags & SYN and not flags & ACK:
            if state == S.SYN_RECEIVED and seq == tcb.irs:
                tcb.send_syn()  # our SYN-ACK was lost: the peer sent its SYN again
                self.counters["syn_retransmitted_by_peer"] += 1
                self._transmit(conn, now)
                return
            if state == S.TIME_WAIT and self._time_wait_reusable(conn, segs, i):
                # RFC 6191 / RFC 1122 §4.2.2.13: a new incarnation may end TIME-WAIT.
                self.counters["time_wait_reused"] += 1
                self._close(conn, now, 0, reset=False)
                self._segment_arrives(segs, i, now)
                return
        # RFC 7323 §5.3: PAWS.
        if tcb.paws_reject(segs, i, now):
            if not flags & RST:
                tcb.ack_now()
                self._transmit(conn, now)
            self.drops["paws"] += 1
            return
        # First: the sequence number.
        if not tcb.acceptable(segs, i):
            if not flags & RST:
                tcb.duplicate(segs, i)  # an ACK, with D-SACK for old bytes
                if state == S.TIME_WAIT and flags & FIN:
                    # The peer's FIN again (our ACK was lost): ACK it and restart the
                    # 2 MSL timeout (§3.10.7.4, TIME-WAIT under the eighth check).
                    tcb.user_at = now + 2 * MSL
                    self.counters["time_wait_fin_again"] += 1
                self._transmit(conn, now)
            self.drops["out_of_window"] += 1
            return
        # Second: RST (RFC 5961 §3.2: only the exact sequence number resets).
        if flags & RST:
            if seq != tcb.rcv_nxt:
                self._challenge_ack(conn, now)
                self.drops["rst_challenged"] += 1
                return
            self.counters["rst_received"] += 1
            if state == S.SYN_RECEIVED and conn.passive:
                self._close(conn, now, 0, reset=False)  # back to LISTEN, silently
            elif state == S.SYN_RECEIVED:
                self._close(conn, now, errno.ECONNREFUSED, reset=False)
            elif state in (S.CLOSING, S.LAST_ACK, S.TIME_WAIT):
                self._close(conn, now, 0, reset=False)
            else:
                self._close(conn, now, errno.ECONNRESET, reset=False)
            return
        # Fourth: SYN in a synchronized state (RFC 5961 §4).
        if flags & SYN:
            self._challenge_ack(conn, now)
            self.drops["syn_challenged"] += 1
            return
        # Fifth: the ACK field.
        if not flags & ACK:
            self.drops["no_ack"] += 1
            return
        if state == S.SYN_RECEIVED:
            if not (_seq_lt(tcb.snd_una, ack) and not _seq_lt(tcb.snd_nxt, ack)):
                self._reply_reset(segs, i, ack, 0, RST)
                self.drops["syn_received_bad_ack"] += 1
                return
            listener = conn.listener
            if (
                conn.passive
                and listener is not None
                and (len(listener.accept_queue) >= listener.backlog)
            ):
                # The accept queue is full: drop the ACK and stay in SYN-RECEIVED, as
                # Linux does (tcp_abort_on_overflow=0); our SYN-ACK retransmission, or
                # the peer's next segment, completes the handshake once there is room.
                self.drops["accept_queue_full"] += 1
                return
            tcb.ack(segs, i, now)
            tcb.take_events()
            self._move(conn, E.SYN_ACKED, now)
            if tcb.id < 0:
                return
        else:
            result = tcb.ack(segs, i, now)
            if result != ACK_RESULT_OK:
                self.drops["ack_too_new" if result == ACK_RESULT_TOO_NEW else "ack_too_old"] += 1
                self._transmit(conn, now)
                return
            self._events(conn, now)
            if tcb.id < 0:
                return
        state = State(tcb.state)
        tcb.ts_update(segs, i, now)
        # Sixth: URG is not supported; urgent data is delivered inline (RFC 6093 §5).
        # Seventh and eighth: the text and the FIN.
        if state in TEXT_STATES:
            tcb.text(segs, i, now)
        elif flags & FIN or ln:
            # CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: a retransmitted FIN (or data the
            # peer sent again); acknowledge it, and TIME-WAIT starts its 2 MSL again.
            tcb.ack_now()
            if state == S.TIME_WAIT:
                tcb.user_at = now + 2 * MSL
        self._events(conn, now)
        if tcb.id >= 0:
            self._transmit(conn, now)

    def _fin_in_order(self, conn: Connection, now: float) -> None:
        if conn._fin_handled:
            return
        conn._fin_handled = True
        self.counters["fin_received"] += 1
        self._changed.add(conn)  # readers see the end of the stream
        self._move(conn, E.FIN, now)

    def _fin_acked(self, conn: Connection, now: float) -> None:
        if conn.tcb.state in (S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
            self._move(conn, E.FIN_ACKED, now)

    # -- transitions --------------------------------------------------------------------------

    def _move(self, conn: Connection, event: Event, now: float) -> None:
        state = State(conn.tcb.state)
        new = TRANSITIONS.get((state, event))
        if new is None:
            return  # the event means nothing in this state (e.g. FIN twice)
        conn.tcb.state = new
        self._enter(conn, new, now)

    def _enter(self, conn: Connection, new: State, now: float) -> None:
        """What the RFC attaches to entering a state."""
        tcb = conn.tcb
        self._changed.add(conn)
        if new == S.ESTABLISHED:
            self.counters["established"] += 1
            tcb.start_keepalive(now)
            if conn.shut_wr and not tcb.fin_queued:
                # CLOSE came in SYN-RECEIVED: now the FIN can follow (§3.10.4).
                tcb.queue_fin()
                self._move(conn, E.CLOSE, now)
            if conn.listener is not None and conn.passive:
                listener = conn.listener
                listener.syn_queue.pop(conn.id, None)
                if listener.closed or len(listener.accept_queue) >= listener.backlog:
                    self.drops["accept_queue_full"] += 1
                    self._close(conn, now, 0, reset=True)
                    return
                listener.accept_queue.append(conn)
                self._changed.add(listener)
        elif new == S.FIN_WAIT_2:
            if conn.user_closed:
                tcb.user_at = now + FIN_WAIT_2_TIMEOUT
        elif new == S.TIME_WAIT:
            if conn.owner is None:
                tcb.free_buffers()  # else the application may still read what arrived
            tcb.user_at = now + 2 * MSL
            self.time_wait[conn.id] = conn
            if len(self.time_wait) > self.limits.max_time_wait:
                _, oldest = self.time_wait.popitem(last=False)
                self.drops["time_wait_overflow"] += 1
                self._close(oldest, now, 0, reset=False)
        elif new == S.CLOSED:
            self._close(conn, now, 0, reset=False)

    def _close(self, conn: Connection, now: float, error: int, *, reset: bool) -> None:
        """Delete the TCB (RFC 9293 "enter CLOSED"); an RST first if ``reset``."""
        tcb = conn.tcb
        if tcb.id < 0:
            return
        if reset and tcb.state in SYNCHRONIZED | {S.SYN_RECEIVED}:
            batch = self._batch()
            if not tcb.emit(batch, tcb.snd_nxt, RST | ACK, now):
                self._new_batch()
                tcb.emit(self._out[-1], tcb.snd_nxt, RST | ACK, now)
            self.counters["rst_sent"] += 1
        if error and not conn.error:
            conn.error = error
        tcb.state = S.CLOSED
        if conn.listener is not None:
            conn.listener.syn_queue.pop(tcb.id, None)
        self.time_wait.pop(tcb.id, None)
        self.conns.pop(tcb.id, None)
        self.demux.remove(tcb)
        if conn.owner is None:
            tcb.free_buffers()  # else the application may still read what arrived
        conn.generation = -1
        self._changed.add(conn)
        if conn.listener is not None and conn in conn.listener.accept_queue and error:
            self._changed.add(conn.listener)

    # -- user calls (RFC 9293 §3.10.1-6) -----------------------------------------------------

    def connect(
        self,
        remote: tuple[bytes, int],
        now: float,
        local: tuple[bytes | None, int] | None = None,
        **options: Any,
    ) -> Connection:
        """Active OPEN: a connection in SYN-SENT with its SYN on its way. ``local`` is
        the (address, port) to use; its port 0 (or no ``local``) picks an ephemeral one.
        Raises ``OSError`` subclasses the socket module would."""
        raddr, rport = remote
        if local is None or local[0] is None:
            laddr = self._source_for(raddr)
        else:
            laddr = local[0]
            if laddr not in self.addresses:
                raise OSError(errno.EADDRNOTAVAIL, f"{_addr_text(laddr)} is not one of ours")
        if _is_v4(laddr) != _is_v4(raddr):
            raise OSError(errno.EAFNOSUPPORT, "address families differ")
        lport = local[1] if local else 0
        if not lport:
            lport = self._ephemeral(laddr, raddr, rport)
        else:
            old = self.demux.lookup(laddr, lport, raddr, rport)
            if old is not None:
                conn_old = self.conns.get(old.id)
                if conn_old is not None and conn_old.tcb.state == S.TIME_WAIT:
                    self._close(conn_old, now, 0, reset=False)  # reuse (tcp_tw_reuse)
                else:
                    raise OSError(errno.EADDRINUSE, "4-tuple in use")
        try:
            conn = self._new_connection((laddr, lport), (raddr, rport), now)
        except OverflowError:
            raise OSError(errno.EAGAIN, "too many TCP connections") from None
        for name, value in options.items():
            conn.tcb.set_option(name, value)
        conn.tcb.set_option("syn_retries", self.limits.syn_retries)
        conn.tcb.state = S.SYN_SENT
        conn.tcb.send_syn()
        self.counters["active_opens"] += 1
        self._transmit(conn, now)
        self._schedule(conn)
        return conn

    def listen(self, address: bytes | None, port: int, backlog: int) -> Listener:
        """Passive OPEN on ``port`` of ``address`` (None: all of ours)."""
        if address is not None and address not in self.addresses:
            raise OSError(errno.EADDRNOTAVAIL, f"{_addr_text(address)} is not one of ours")
        if not 0 < port <= 0xFFFF:
            raise OverflowError(f"port must be 1-65535, got {port}")
        if (address, port) in self.listeners or (
            (None, port) in self.listeners
            or (address is None and any(p == port for _, p in self.listeners))
        ):
            raise OSError(errno.EADDRINUSE, f"port {port} already has a listener")
        listener = Listener(self, address, port, max(1, backlog))
        self.listeners[(address, port)] = listener
        return listener

    def ephemeral_listen_port(self, address: bytes | None) -> int:
        lo, hi = EPHEMERAL_PORTS
        for _ in range(4 * (hi - lo)):
            port = self._rng.randint(lo, hi)
            if not any(p == port for _, p in self.listeners):
                return port
        raise OSError(errno.EADDRINUSE, "no free ephemeral port")

    def close_listener(self, listener: Listener, now: float) -> None:
        """Stop listening; embryonic and unaccepted connections are reset (as Linux)."""
        if listener.closed:
            return
        listener.closed = True
        self.listeners.pop((listener.address, listener.port), None)
        for conn in list(listener.syn_queue.values()) + list(listener.accept_queue):
            if not conn.accepted:
                self._close(conn, now, errno.ECONNRESET, reset=True)
        listener.syn_queue.clear()
        listener.accept_queue.clear()
        self._changed.add(listener)

    def abort_all(self, now: float) -> None:
        """Reset every connection (ECONNABORTED for their owners) and close every
        listener: the stack is going away."""
        for listener in list(self.listeners.values()):
            self.close_listener(listener, now)
        for conn in list(self.conns.values()):
            self._close(conn, now, errno.ECONNABORTED, reset=conn.tcb.state in SYNCHRONIZED)

    def accept(self, listener: Listener) -> Connection | None:
        """The oldest connection of the accept queue, or None. It may have been closed
        or reset since it was established: the application learns that on reading, as
        from a kernel."""
        if not listener.accept_queue:
            return None
        conn = listener.accept_queue.popleft()
        conn.accepted = True
        return conn

    def send(self, conn: Connection, data: Any, now: float) -> int:
        """Queue what fits of ``data``; returns the bytes taken (0: buffer full)."""
        taken = conn.tcb.write(data)
        if taken:
            self._transmit(conn, now)
            self._schedule(conn)
        return int(taken)

    def recv_into(self, conn: Connection, buffer: Any, now: float, peek: bool = False) -> int:
        """Copy in-order bytes into ``buffer``; returns the count (0: none buffered)."""
        n = conn.tcb.read_into(buffer, now, peek)
        if n and not peek and conn.tcb.take_events() & EVENT_OUTPUT:
            self._transmit(conn, now)  # a window update
            self._schedule(conn)
        return int(n)

    def shutdown(self, conn: Connection, now: float, read: bool, write: bool) -> None:
        """SHUT_RD / SHUT_WR / both (the CLOSE call is SHUT_WR, §3.10.4)."""
        if read and not conn.shut_rd:
            conn.shut_rd = True
            conn.tcb.shut_rd()
            self._changed.add(conn)
        if write and not conn.shut_wr:
            conn.shut_wr = True
            state = conn.tcb.state
            if state == S.SYN_SENT:
                self._close(conn, now, 0, reset=False)
                return
            if state == S.SYN_RECEIVED and not conn.tcb.syn_acked:
                return  # §3.10.4: queued until ESTABLISHED (_enter sends the FIN then)
            if state in (S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT):
                conn.tcb.queue_fin()
                self._move(conn, E.CLOSE, now)
                self._transmit(conn, now)
                self._schedule(conn)

    def close(self, conn: Connection, now: float, *, abort: bool = False) -> None:
        """The application is done with the connection (``socket.close``).

        Unread data, or ``abort`` (SO_LINGER with a zero timeout), resets the connection
        (RFC 9293 §3.10.4 and RFC 1122 §4.2.2.13, as Linux does); otherwise the FIN goes
        after what is buffered and the stack finishes the close on its own."""
        conn.user_closed = True
        conn.owner = None
        state = conn.tcb.state
        if conn.tcb.id < 0:
            conn.tcb.free_buffers()
            return
        if abort or (conn.tcb.readable and state in SYNCHRONIZED | {S.SYN_RECEIVED}):
            self.counters["closed_with_reset"] += 1
            self._close(conn, now, 0, reset=state != S.TIME_WAIT)
            return
        if state == S.SYN_SENT:
            self._close(conn, now, 0, reset=False)
            return
        self.shutdown(conn, now, read=True, write=True)
        if conn.tcb.state == S.FIN_WAIT_2:
            conn.tcb.user_at = now + FIN_WAIT_2_TIMEOUT
            self._schedule(conn)

    # -- timers -----------------------------------------------------------------------------

    def timers(self, now: float) -> None:
        """Run every timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, cid, gen = heapq.heappop(heap)
            conn = self.conns.get(cid)
            if conn is None or conn.generation != gen or conn.scheduled != when:
                continue
            conn.scheduled = 0.0
            tcb = conn.tcb
            due = tcb.deadline()
            if due and due <= now:
                fired = tcb.on_timer(self._batch(), now)
                self._on_fired(conn, fired, now)
                if tcb.id < 0:
                    continue
                self._after_input(conn, now)
            if tcb.id >= 0:
                self._schedule(conn)

    def _on_fired(self, conn: Connection, fired: int, now: float) -> None:
        tcb = conn.tcb
        if self._out and self._out[-1].room == 0:
            self._new_batch()
        if fired & TIMER_TIMEDOUT:
            self.counters["timed_out"] += 1
            error = conn.soft_error or errno.ETIMEDOUT
            self._close(conn, now, error, reset=tcb.state in SYNCHRONIZED)
            return
        if fired & TIMER_USER:
            state = tcb.state
            if state == S.TIME_WAIT:
                self._move(conn, E.TIMEOUT, now)
            elif state == S.FIN_WAIT_2:
                self.counters["fin_wait_2_timeout"] += 1
                self._move(conn, E.TIMEOUT, now)

    def reschedule(self, conn: Connection) -> None:
        """After changing a connection's timers from outside (an option)."""
        self._schedule(conn)

    def _schedule(self, conn: Connection) -> None:
        """Keep one heap entry at the connection's earliest deadline. A later deadline
        needs no new entry: the old one fires early, finds nothing due and moves on."""
        due = conn.tcb.deadline()
        if not due or (conn.scheduled and conn.scheduled <= due):
            return
        conn.scheduled = due
        self._heap_seq += 1
        heapq.heappush(self._heap, (due, self._heap_seq, conn.id, conn.generation))

    # -- ICMP errors (RFC 1122 §4.2.3.9, RFC 5927, RFC 1191, RFC 8201) --------------------

    def icmp_error(
        self,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        seq: int,
        kind: str,
        mtu: int,
        now: float,
    ) -> None:
        """An ICMP error about a segment we sent from ``local`` to ``remote`` carrying
        ``seq``. ``kind``: "port" / "protocol" (hard), "host" / "net" / "admin" (soft,
        hard for a connection still in SYN-SENT), "too_big" (with ``mtu``)."""
        found = self.demux.lookup(local[0], local[1], remote[0], remote[1])
        conn = self.conns.get(found.id) if found is not None else None
        if conn is None:
            self.drops["icmp_no_connection"] += 1
            return
        tcb = conn.tcb
        # RFC 5927 §4.1: the quoted sequence number must be one we have outstanding.
        if not (
            not _seq_lt(seq, tcb.snd_una)
            and (_seq_lt(seq, tcb.snd_nxt) or seq == tcb.snd_una == tcb.snd_nxt)
        ):
            self.drops["icmp_out_of_window"] += 1
            return
        self.counters[f"icmp_{kind}"] += 1
        if kind == "too_big":
            if tcb.set_pmtu(mtu):
                self._transmit(conn, now)
                self._schedule(conn)
            return
        error = _ICMP_ERRNO.get(kind, errno.EHOSTUNREACH)
        if kind in ("port", "protocol") or tcb.state in (S.SYN_SENT, S.SYN_RECEIVED):
            self._close(conn, now, error, reset=False)
        else:
            conn.soft_error = error

    # -- plumbing ---------------------------------------------------------------------------

    def _transmit(self, conn: Connection, now: float) -> None:
        tcb = conn.tcb
        if tcb.id < 0:
            return
        batch = self._batch()
        while True:
            self.tx_room -= tcb.output(batch, now, max(self.tx_room, 0))
            if batch.room:
                break
            batch = self._new_batch()
        if tcb.throttled:
            self._throttled[tcb.id] = conn
        self._schedule(conn)  # output and input arm timers (delayed ACK, RTO, persist)

    @property
    def throttled(self) -> bool:
        """Some connection has data it held back for want of ``tx_room``."""
        return bool(self._throttled)

    def resume(self, now: float, room: int) -> None:
        """The local queues drained to ``room`` segments: the connections held back send
        on, oldest first."""
        self.tx_room = room
        while self._throttled and self.tx_room > 0:
            cid = next(iter(self._throttled))
            conn = self._throttled.pop(cid)
            if conn.tcb.id >= 0:
                self._transmit(conn, now)
                self._schedule(conn)

    def _batch(self) -> PacketBatch:
        if self._out and self._out[-1].room:
            return self._out[-1]
        return self._new_batch()

    def _new_batch(self) -> PacketBatch:
        batch = PacketBatch(
            OUT_BATCH, mtu=self.mtu, headroom=DEFAULT_HEADROOM, tailroom=DEFAULT_TAILROOM
        )
        self._out.append(batch)
        return batch

    def _reply_reset(self, segs: Segments, i: int, seq: int, ack: int, flags: int) -> None:
        src, sport, dst, dport = segs.addresses(i)
        batch = self._batch()
        if not build_reset(batch, dst, dport, src, sport, seq, ack, flags):
            build_reset(self._new_batch(), dst, dport, src, sport, seq, ack, flags)

    def _challenge_ack(self, conn: Connection, now: float) -> None:
        second = int(now)
        if second != self._challenge_second:
            self._challenge_second = second
            self._challenge_budget = CHALLENGE_ACKS_PER_SECOND
        if self._challenge_budget <= 0:
            self.drops["challenge_ack_limited"] += 1
            return
        self._challenge_budget -= 1
        self.counters["challenge_acks"] += 1
        conn.tcb.ack_now()
        self._transmit(conn, now)

    def _time_wait_reusable(self, conn: Connection, segs: Segments, i: int) -> bool:
        """RFC 6191 §2: a SYN ends TIME-WAIT if it cannot belong to the old incarnation:
        with timestamps, a TSval newer than the last one (or equal and a higher sequence
        number); without, a sequence number above RCV.NXT (RFC 1122 §4.2.2.13)."""
        seq = segs.fields(i)[0]
        ts = segs.options(i)[3]
        recent = conn.tcb.ts_recent
        if ts is not None and recent is not None:
            if _seq_lt(recent, ts[0]):
                return True
            return ts[0] == recent and _seq_lt(conn.tcb.rcv_nxt, seq)
        return _seq_lt(conn.tcb.rcv_nxt, seq)

    def _new_connection(
        self, local: tuple[bytes, int], remote: tuple[bytes, int], now: float
    ) -> Connection:
        conn = Connection(self, local, remote)
        lim = self.limits
        conn.tcb.setup(
            local[0],
            local[1],
            remote[0],
            remote[1],
            self._isn(local, remote, now),
            self._rng.getrandbits(32),
            self.mtu,
            lim.rcvbuf,
            lim.rcvbuf_max,
            lim.sndbuf_max,
            lim.timestamps,
            lim.sack,
            lim.window_scaling,
        )
        conn.tcb.set_option("cc", lim.congestion_control)
        conn.tcb.set_option("hystart", lim.hystart)
        conn.tcb.set_option("rto_min", lim.rto_min)
        conn.tcb.set_option("max_retries", lim.max_retries)
        self.demux.add(conn.tcb)  # OverflowError when the table is full
        self._generation += 1
        conn.generation = self._generation
        self.conns[conn.id] = conn
        return conn

    def _isn(self, local: tuple[bytes, int], remote: tuple[bytes, int], now: float) -> int:
        """RFC 6528 §3: ISN = M + F(4-tuple, secret), M a 4-microsecond clock."""
        key = local[0] + local[1].to_bytes(2, "big") + remote[0] + remote[1].to_bytes(2, "big")
        f = hashlib.blake2s(key, key=self._secret, digest_size=4).digest()
        return (int(now * 250_000) + int.from_bytes(f, "big")) & 0xFFFFFFFF

    def _source_for(self, remote: bytes) -> bytes:
        v4 = _is_v4(remote)
        for a in sorted(self.addresses):
            if _is_v4(a) == v4:
                return a
        raise OSError(errno.ENETUNREACH, f"no IPv{4 if v4 else 6} overlay address to connect from")

    def _ephemeral(self, laddr: bytes, raddr: bytes, rport: int) -> int:
        lo, hi = EPHEMERAL_PORTS
        span = hi - lo + 1
        start = self._rng.randrange(span)
        listening = {p for _, p in self.listeners}
        for k in range(span):
            port = lo + (start + k) % span
            if port in listening:
                continue
            if self.demux.lookup(laddr, port, raddr, rport) is None:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port")

    def stats(self) -> dict[str, Any]:
        """Stack-wide counters, drops by reason, and gauges."""
        states = Counter(State(c.tcb.state).name for c in self.conns.values())
        return {
            "counters": dict(self.counters),
            "drops": dict(self.drops),
            "demux": self.demux.counts(),
            "connections": len(self.conns),
            "states": dict(states),
            "listeners": len(self.listeners),
        }


EPHEMERAL_PORTS = (32768, 60999)
"""Linux's default ``ip_local_port_range``."""


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _is_v4(a16: bytes) -> bool:
    return a16[:12] == _MAPPED


def _addr_text(a16: bytes) -> str:
    from dataplane.netstack._ip import unpack_address

    return str(unpack_address(a16))


def _text(endpoint: tuple[bytes | None, int]) -> str:
    a, port = endpoint
    if a is None:
        return f"*:{port}"
    t = _addr_text(a)
    return f"[{t}]:{port}" if ":" in t else f"{t}:{port}"


_ICMP_ERRNO = {
    "port": errno.ECONNREFUSED,
    "protocol": errno.ENOPROTOOPT,
    "host": errno.EHOSTUNREACH,
    "net": errno.ENETUNREACH,
    "admin": errno.EHOSTUNREACH,
}
