# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""The per-segment half of our TCP: segments, byte rings, ACK and data processing, output.

Theory of operation. TCP is split along the rule "Python per connection event, C per
segment" (DESIGN.md). ``tcp.py`` holds the connection state machine: RFC 9293's states,
the segment-arrival checks of §3.10.7 in their order for every segment that is not plain
data or ACK, the user calls, the timers' consequences. This module does everything whose
trip count is "segments" or "bytes", without the GIL, over whole PacketBatches:

* **Parsing** (``Segments.parse``): IP layer (``_inet.locate_l4``), TCP header, checksum
  over the pseudo-header, options (MSS, window scale, SACK-permitted, SACK, timestamps;
  RFC 9293 §3.2, RFC 7323, RFC 2018). A malformed segment gets a verdict and is counted,
  never raised.
* **Demultiplexing** (``Demux``): an open-addressing table from the 4-tuple to the TCB.
* **Header prediction** (``Demux.input``): a segment for a synchronized connection with
  only ACK (and PSH) set, in window, passing PAWS, acknowledging nothing we have not sent,
  is the common case of a transfer, and for it §3.10.7 reduces to "update ts_recent,
  process the ACK, process the text". Those three steps are the functions ``_ts_update``,
  ``_ack`` and ``_text`` below, and the Python slow path calls the *same* functions for
  the segments it handles (``Tcb.ack`` / ``Tcb.text``): each rule is written once.
  Everything else (SYN, FIN, RST, URG, out-of-window, PAWS failures, other states, no
  connection) is left for Python, in order: once one segment of a connection goes to the
  slow path, the rest of that connection's segments in the batch follow it there.
* **ACK processing** (``_ack``): send window update (§3.10.7.4), release of acknowledged
  bytes, RTT sampling (RFC 6298; timestamps per RFC 7323 appendix G, Karn's algorithm
  without them), the SACK scoreboard (RFC 2018), duplicate ACKs, loss detection and
  recovery (RFC 6675 with RFC 6582's RecoveryPoint; NewReno's dup-ACK accounting for peers
  without SACK; retransmissions found lost when later sends are SACKed), and congestion
  control (CUBIC per RFC 9438, or NewReno per RFC 5681; HyStart++ per RFC 9406 on request).
* **Text** (``_text``): in-order bytes go into the receive ring, out-of-order bytes into
  the ring at their offset with a range recorded (no second copy when the hole fills);
  SACK blocks to report (RFC 2018 §4); delayed ACKs (every second full segment, 40 ms
  timer, quick ACKs at the start; RFC 1122 §4.2.3.2, RFC 5681 §4.2).
* **Output** (``_output``): SYN / SYN-ACK with options, retransmissions chosen by
  RFC 6675's NextSeg, new data within min(cwnd, send window) with Nagle (RFC 9293
  §3.7.4) and sender SWS avoidance, paced at 2x / 1.2x cwnd/srtt (Linux's gains), FIN,
  pure ACKs (every second segment of a batch, D-SACK for duplicates per RFC 2883) and
  window updates with receiver SWS avoidance (§3.8.6.2.2); zero-window probes and
  keepalives. Segments are built in place
  in PacketBatch slots (room in front for the WireGuard header), checksummed.
* **Timers** (``_on_timer``): retransmission timeout with exponential backoff, delayed
  ACK, persist, keepalive; each connection keeps absolute deadlines and the stack sleeps
  to the earliest (``Tcb.deadline``), so an idle connection causes no wake-ups.

Deviations from the RFCs, as Linux does them (``reference/tcp.md``): the minimum RTO is
200 ms (RFC 6298 says 1 s), slow start counts every acknowledged byte (RFC 3465's L is
unbounded, so stretch ACKs from a GRO receiver grow cwnd as much as per-segment ones), and
the zero-window probe is an ACK one below SND.UNA, which the peer answers without the probe
consuming sequence space.

Memory is bounded by construction: rings grow only to ``sb_max`` / ``rb_max`` (autotuning,
or the user's SO_SNDBUF / SO_RCVBUF), out-of-order data and SACK information live in fixed
arrays, and what does not fit is dropped and counted.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.math cimport cbrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from dataplane._batch cimport (
    PacketBatch,
    ST_BAD_CHECKSUM,
    ST_BAD_IP,
    ST_CONSUMED,
    ST_OK,
    ST_TOO_SHORT,
)
from dataplane.netstack._inet cimport (
    PROTO_TCP,
    V_OK,
    be16,
    be32,
    build_ip,
    csum_add,
    csum_fold,
    is_unicast,
    is_v4,
    ip_addresses,
    l4_pseudo,
    locate_l4,
    put16,
    put32,
)

# -- constants ------------------------------------------------------------------------------

# Verdicts of Segments.parse / Demux.input, one per slot. The first seven are _inet's.
cdef enum:
    SV_OK = 0               # parsed, not yet classified
    SV_SKIPPED = 1          # already dropped before this stage
    SV_TRUNCATED = 2
    SV_BAD_HEADER = 3
    SV_NOT_TCP = 4          # not valid IP carrying TCP: left untouched for others
    SV_FRAGMENT = 5
    SV_BAD_CHECKSUM = 6
    SV_BAD_OPTIONS = 7      # an option runs past the header or has an impossible length
    SV_BAD_ADDRESS = 8      # a source that is not unicast, or a port 0
    SV_FAST = 9             # handled here (header prediction): nothing left to do
    SV_SLOW = 10            # for the Python state machine, in slot order
    SV_N = 11

VERDICT_NAMES = ("ok", "skipped", "truncated", "bad_header", "not_tcp", "fragment",
                 "bad_checksum", "bad_options", "bad_address", "fast", "slow")
FAST = SV_FAST
SLOW = SV_SLOW
NOT_TCP = SV_NOT_TCP
SKIPPED = SV_SKIPPED

# Flags of a TCB (tcb_t.flags).
cdef enum:
    F_ACK_NOW = 1 << 0      # send an ACK at the next output
    F_SEND_SYN = 1 << 1     # (re)transmit our SYN or SYN-ACK at the next output
    F_FIN_QUEUED = 1 << 2   # the application closed its side: FIN after the data
    F_RFIN = 1 << 3         # the peer's FIN is in order: rcv_nxt is past it
    F_RFIN_PENDING = 1 << 4  # the peer's FIN was seen beyond a hole
    F_NODELAY = 1 << 5      # TCP_NODELAY: no Nagle
    F_KEEPALIVE = 1 << 6    # SO_KEEPALIVE
    F_TS = 1 << 7           # timestamps negotiated (RFC 7323 §3.2)
    F_SACK = 1 << 8         # SACK negotiated (RFC 2018 §2)
    F_WS = 1 << 9           # window scaling negotiated (RFC 7323 §2.2)
    F_RECOVERY = 1 << 10    # in fast recovery
    F_LOSS = 1 << 11        # recovering from a retransmission timeout
    F_RTT_TIMING = 1 << 12  # rtt_seq is being timed (no timestamps)
    F_SYN_ACKED = 1 << 13   # our SYN is acknowledged: data sequence space begins
    F_OFFER_TS = 1 << 14    # options to put on our SYN / allowed on our SYN-ACK
    F_OFFER_SACK = 1 << 15
    F_OFFER_WS = 1 << 16
    F_SHUT_RD = 1 << 17     # the application will not read: data is discarded
    F_RETX_NOW = 1 << 18    # retransmit the first lost segment whatever cwnd says
    F_THROTTLED = 1 << 19   # the last output stopped at its budget with more to send
    F_CWND_LIMITED = 1 << 20  # the last output stopped at cwnd with data to send
    F_HYSTART = 1 << 21     # HyStart++ may end slow start on rising delay

# Events for the Python side (tcb_t.events), cleared by it.
cdef enum:
    EV_READABLE = 1 << 0    # in-order bytes (or the FIN) arrived
    EV_WRITABLE = 1 << 1    # send buffer space was released
    EV_FIN = 1 << 2         # the peer's FIN is now in order: move the state
    EV_FIN_ACKED = 1 << 3   # our FIN is acknowledged: move the state
    EV_TIMEDOUT = 1 << 4    # retransmissions or keepalives exhausted: abort
    EV_OUTPUT = 1 << 5      # something to send (ACK, window update, more data)
    EV_SYN_ACKED = 1 << 6   # our SYN is acknowledged

# What ``_on_timer`` did.
cdef enum:
    T_RTO = 1 << 0
    T_DELACK = 1 << 1
    T_PERSIST = 1 << 2
    T_KEEPALIVE = 1 << 3
    T_USER = 1 << 4
    T_TIMEDOUT = 1 << 5
    T_PACE = 1 << 6

# Results of _ack.
cdef enum:
    ACK_OK = 0              # processed (new data acknowledged, or a duplicate)
    ACK_TOO_NEW = 1         # acknowledges something not yet sent: ACK back, drop
    ACK_TOO_OLD = 2         # older than the send window allows (RFC 5961 §5.2)

cdef enum:
    CC_NEWRENO = 0
    CC_CUBIC = 1

cdef enum:
    OPT_EOL = 0             # option kinds (RFC 9293 §3.2, RFC 7323, RFC 2018)
    OPT_NOP = 1
    OPT_MSS = 2
    OPT_WS = 3
    OPT_SACK_PERM = 4
    OPT_SACK = 5
    OPT_TS = 8

    TCP_HEADER = 20
    DUPTHRESH = 3           # RFC 5681 §3.2, RFC 6675 §2
    MAX_WSCALE = 14         # RFC 7323 §2.3
    DELACK_SEGMENTS = 2     # ACK at least every second full-sized segment
    QUICKACKS = 16          # segments ACKed at once at the start (Linux's quick-ACK mode)

cdef double DELACK_TIME = 0.040          # Linux's minimum delayed-ACK time
cdef double RTO_INITIAL = 1.0            # RFC 6298 §2.1
cdef double RTO_MAX = 120.0              # Linux TCP_RTO_MAX
cdef double PERSIST_MAX = 60.0
cdef double CUBIC_C = 0.4                # RFC 9438 §5
cdef double CUBIC_BETA = 0.7
cdef double TS_RECENT_VALID = 24.0 * 86400.0   # RFC 7323 §5.5: 24 days
cdef double PACE_BURST = 0.001           # pacing lets this much run ahead of the clock
cdef double PACE_SS_GAIN = 2.0           # Linux: 200 % of cwnd/srtt in slow start,
cdef double PACE_CA_GAIN = 1.2           # 120 % after

STATE_NAMES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED",
               "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")

# Python names of the C constants tcp.py needs.
FIN = TH_FIN
SYN = TH_SYN
RST = TH_RST
PSH = TH_PSH
ACK = TH_ACK
URG = TH_URG
EVENT_READABLE = EV_READABLE
EVENT_WRITABLE = EV_WRITABLE
EVENT_FIN = EV_FIN
EVENT_FIN_ACKED = EV_FIN_ACKED
EVENT_TIMEDOUT = EV_TIMEDOUT
EVENT_OUTPUT = EV_OUTPUT
EVENT_SYN_ACKED = EV_SYN_ACKED
TIMER_RTO = T_RTO
TIMER_DELACK = T_DELACK
TIMER_PERSIST = T_PERSIST
TIMER_KEEPALIVE = T_KEEPALIVE
TIMER_USER = T_USER
TIMER_TIMEDOUT = T_TIMEDOUT
ACK_RESULT_OK = ACK_OK
ACK_RESULT_TOO_NEW = ACK_TOO_NEW
ACK_RESULT_TOO_OLD = ACK_TOO_OLD


# -- sequence arithmetic (RFC 9293 §3.4: modulo 2**32) --------------------------------------

cdef inline bint lt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef inline bint le(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) <= 0


cdef inline bint gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0


cdef inline bint ge(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) >= 0


cdef inline uint32_t smax(uint32_t a, uint32_t b) noexcept nogil:
    return b if lt(a, b) else a


cdef inline uint32_t smin(uint32_t a, uint32_t b) noexcept nogil:
    return a if lt(a, b) else b


cdef inline uint32_t umin(uint32_t a, uint32_t b) noexcept nogil:
    return a if a < b else b


cdef inline uint32_t umax(uint32_t a, uint32_t b) noexcept nogil:
    return a if a > b else b


cdef inline uint32_t ts_clock(tcb_t* t, double now) noexcept nogil:
    # Our RFC 7323 timestamp clock: milliseconds, offset per connection (§5.4).
    return <uint32_t>(<uint64_t>(now * 1000.0)) + t.ts_offset


cdef inline uint32_t ts_value(tcb_t* t, double now) noexcept nogil:
    # TSval for a segment: the clock, never behind one already sent (callers on
    # different threads read their `now` before taking the stack's lock, so the values
    # can arrive out of order; a TSval going back would trip the peer's PAWS).
    cdef uint32_t v = ts_clock(t, now)
    if lt(v, t.ts_last):
        v = t.ts_last
    t.ts_last = v
    return v


# -- byte rings -----------------------------------------------------------------------------

cdef inline void ring_put(uint8_t* buf, uint32_t cap, uint32_t pos, const uint8_t* src,
                          uint32_t n) noexcept nogil:
    # Copy n bytes to ring index pos (mod cap), wrapping once at most (n <= cap).
    pos = pos % cap
    cdef uint32_t first = umin(n, cap - pos)
    memcpy(buf + pos, src, first)
    if n > first:
        memcpy(buf, src + first, n - first)


cdef inline void ring_get(const uint8_t* buf, uint32_t cap, uint32_t pos, uint8_t* dst,
                          uint32_t n) noexcept nogil:
    pos = pos % cap
    cdef uint32_t first = umin(n, cap - pos)
    memcpy(dst, buf + pos, first)
    if n > first:
        memcpy(dst + first, buf, n - first)


cdef bint ring_resize(uint8_t** buf, uint32_t* cap, uint32_t* head, uint32_t used,
                      uint32_t new_cap) noexcept nogil:
    # Move the ``used`` bytes at ``head`` into a new ring of new_cap bytes, starting at 0.
    # Out-of-order receive data is part of ``used`` (the caller passes the whole span).
    cdef uint8_t* nb = <uint8_t*>malloc(new_cap)
    if nb == NULL:
        return False
    if buf[0] != NULL:
        if used:
            ring_get(buf[0], cap[0], head[0], nb, used)
        free(buf[0])
    buf[0] = nb
    cap[0] = new_cap
    head[0] = 0
    return True


cdef inline uint32_t round_up_pow2(uint32_t v) noexcept nogil:
    cdef uint32_t r = 4096
    while r < v and r < 0x80000000U:
        r <<= 1
    return r


# -- parsing --------------------------------------------------------------------------------

cdef uint8_t parse_segment(const uint8_t* p, uint32_t n, seg_t* s) noexcept nogil:
    """Validate p[0:n] as an IP packet carrying a TCP segment; fill ``s``."""
    cdef bint v4 = False
    cdef uint32_t off = 0, end = 0, l4len, doff, i, ln, k
    cdef uint8_t proto = 0
    cdef uint8_t v = locate_l4(p, n, &v4, &off, &end, &proto)
    cdef const uint8_t* th
    cdef uint8_t kind
    s.conn = -1
    if v != V_OK or proto != PROTO_TCP:
        # Not a valid IP packet carrying TCP: whoever handles the rest (the overlay's IP
        # and UDP layer) judges and counts it.
        return SV_NOT_TCP
    l4len = end - off
    if l4len < TCP_HEADER:
        return SV_TRUNCATED
    th = p + off
    doff = (th[12] >> 4) * 4
    if doff < TCP_HEADER or doff > l4len:
        return SV_BAD_HEADER
    ip_addresses(p, v4, s.addrs)
    if csum_fold(csum_add(th, l4len, l4_pseudo(s.addrs, s.addrs + 16, l4len, PROTO_TCP))) \
            != 0xFFFF:
        return SV_BAD_CHECKSUM
    s.v4 = v4
    s.sport = be16(th)
    s.dport = be16(th + 2)
    s.seq = be32(th + 4)
    s.ack = be32(th + 8)
    s.flags = th[13] & 0x3F
    s.wnd = be16(th + 14)
    s.payload = off + doff
    s.len = l4len - doff
    s.has_ts = 0
    s.has_mss = 0
    s.has_ws = 0
    s.sack_perm = 0
    s.nsack = 0
    s.ws = 0
    s.mss = 0
    s.tsval = 0
    s.tsecr = 0
    if s.sport == 0 or s.dport == 0 or not is_unicast(s.addrs):
        return SV_BAD_ADDRESS
    i = TCP_HEADER
    while i < doff:
        kind = th[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= doff:
            return SV_BAD_OPTIONS
        ln = th[i + 1]
        if ln < 2 or i + ln > doff:
            return SV_BAD_OPTIONS
        # An option of a known kind with the wrong length is ignored, as Linux does.
        if kind == OPT_MSS and ln == 4:
            s.has_mss = 1
            s.mss = be16(th + i + 2)
        elif kind == OPT_WS and ln == 3:
            s.has_ws = 1
            s.ws = th[i + 2] if th[i + 2] <= MAX_WSCALE else MAX_WSCALE  # RFC 7323 §2.3
        elif kind == OPT_SACK_PERM and ln == 2:
            s.sack_perm = 1
        elif kind == OPT_SACK and ln >= 10 and (ln - 2) % 8 == 0:
            k = 0
            while k < (ln - 2) // 8 and k < MAX_SACK_BLOCKS:
                s.sack[2 * k] = be32(th + i + 2 + 8 * k)
                s.sack[2 * k + 1] = be32(th + i + 6 + 8 * k)
                k += 1
            s.nsack = <uint8_t>k
        elif kind == OPT_TS and ln == 10:
            s.has_ts = 1
            s.tsval = be32(th + i + 2)
            s.tsecr = be32(th + i + 6)
        i += ln
    return SV_OK


# -- round trip time and retransmission timeout (RFC 6298) ----------------------------------

cdef void _rtt_sample(tcb_t* t, double r) noexcept nogil:
    cdef double alpha = 0.125, beta = 0.25, samples
    if r < 0:
        return
    if t.srtt == 0:
        t.srtt = r
        t.rttvar = r / 2
    else:
        # RFC 7323 appendix G: with a sample per ACK, scale the gains by the samples
        # expected per round trip so RTTVAR does not collapse.
        if t.flags & F_TS and t.mss:
            samples = (t.snd_nxt - t.snd_una) / (2.0 * t.mss)
            if samples > 1:
                alpha /= samples
                beta /= samples
        t.rttvar = (1 - beta) * t.rttvar + beta * (t.srtt - r if t.srtt > r else r - t.srtt)
        t.srtt = (1 - alpha) * t.srtt + alpha * r
    t.rto = t.srtt + (4 * t.rttvar if 4 * t.rttvar > 0.001 else 0.001)
    if t.rto < t.rto_min:
        t.rto = t.rto_min
    if t.rto > RTO_MAX:
        t.rto = RTO_MAX


cdef inline double _backed_off_rto(tcb_t* t) noexcept nogil:
    cdef double r = t.rto
    cdef uint32_t _k
    for _k in range(t.retries):
        r *= 2
        if r >= RTO_MAX:
            return RTO_MAX
    return r


# -- the SACK scoreboard (RFC 2018 §5, RFC 6675 §4) -----------------------------------------

cdef void _sacked_insert(tcb_t* t, uint32_t lo, uint32_t hi) noexcept nogil:
    # Merge [lo, hi) into the sorted, disjoint ranges.
    cdef uint32_t i = 0, j, k, n = t.n_sacked
    while i < n and lt(t.sacked_r[i], lo):
        i += 1
    j = i
    while j < n and le(t.sacked_l[j], hi):
        lo = smin(lo, t.sacked_l[j])
        hi = smax(hi, t.sacked_r[j])
        j += 1
    if j > i:
        # ranges i..j-1 merge into one at i
        t.sacked_l[i] = lo
        t.sacked_r[i] = hi
        k = j - i - 1
        if k:
            memmove_ranges(t.sacked_l, t.sacked_r, i + 1, j, n)
            t.n_sacked = n - k
        return
    if n == MAX_SACKED:
        return                          # no room: forget it (conservative: resent)
    memmove_ranges(t.sacked_l, t.sacked_r, i + 1, i, n)
    t.sacked_l[i] = lo
    t.sacked_r[i] = hi
    t.n_sacked = n + 1


cdef inline void memmove_ranges(uint32_t* ls, uint32_t* rs, uint32_t dst, uint32_t src,
                                uint32_t n) noexcept nogil:
    # Move entries [src, n) to start at dst (either direction).
    cdef int64_t k
    if dst < src:
        for k in range(n - src):
            ls[dst + k] = ls[src + k]
            rs[dst + k] = rs[src + k]
    elif dst > src:
        k = <int64_t>n - src - 1
        while k >= 0:
            ls[dst + k] = ls[src + k]
            rs[dst + k] = rs[src + k]
            k -= 1


cdef void _sacked_trim(tcb_t* t) noexcept nogil:
    # Drop what snd_una passed.
    cdef uint32_t i = 0, n = t.n_sacked
    while i < n and le(t.sacked_r[i], t.snd_una):
        i += 1
    if i:
        memmove_ranges(t.sacked_l, t.sacked_r, 0, i, n)
        n -= i
        t.n_sacked = n
    if n and lt(t.sacked_l[0], t.snd_una):
        t.sacked_l[0] = t.snd_una


cdef inline uint32_t _hole_start(tcb_t* t, uint32_t k) noexcept nogil:
    return t.snd_una if k == 0 else t.sacked_r[k - 1]


cdef inline uint32_t _hole_end(tcb_t* t, uint32_t k) noexcept nogil:
    return t.snd_nxt if k == t.n_sacked else t.sacked_l[k]


cdef bint _hole_lost(tcb_t* t, uint32_t k) noexcept nogil:
    """RFC 6675 IsLost for the bytes of hole k (below SACKed range k)."""
    cdef uint32_t above = t.n_sacked - k, bytes_above = 0, j
    if t.flags & F_LOSS and lt(_hole_start(t, k), t.rto_point):
        return True
    if above >= DUPTHRESH:
        return True
    for j in range(k, t.n_sacked):
        bytes_above += t.sacked_r[j] - t.sacked_l[j]
    return bytes_above > (DUPTHRESH - 1) * t.mss


cdef uint32_t _pipe(tcb_t* t) noexcept nogil:
    """RFC 6675 SetPipe: bytes believed in flight."""
    cdef uint32_t k, a, b, p = 0, dup
    if not (t.flags & F_SACK):
        # Without SACK: what was sent, less what the duplicate ACKs say left the network
        # (RFC 5681 §3.2's window inflation), or after a timeout only what was resent.
        p = t.snd_nxt - t.snd_una
        if t.flags & F_LOSS:
            p = (t.high_rxt - t.snd_una if gt(t.high_rxt, t.snd_una) else 0) + \
                (t.snd_nxt - t.rto_point if gt(t.snd_nxt, t.rto_point) else 0)
        elif t.flags & F_RECOVERY:
            dup = t.dupacks * t.mss
            p = p - dup if p > dup else 0
        return p
    if t.n_sacked == 0 and not (t.flags & (F_RECOVERY | F_LOSS)):
        return t.snd_nxt - t.snd_una
    for k in range(t.n_sacked + 1):
        a = _hole_start(t, k)
        b = _hole_end(t, k)
        if not lt(a, b):
            continue
        if not _hole_lost(t, k):
            p += b - a
        if lt(a, t.high_rxt):
            p += smin(b, t.high_rxt) - a
    return p


cdef bint _next_retransmit(tcb_t* t, uint32_t* seq, uint32_t* ln) noexcept nogil:
    """RFC 6675 NextSeg rule 1: the lowest lost, unSACKed byte above HighRxt."""
    cdef uint32_t k, a, b
    if not (t.flags & F_SACK):
        # NewReno (RFC 6582): the segment at snd_una, once per (partial) ACK; after a
        # timeout everything below the recovery point, in order.
        a = smax(t.snd_una, t.high_rxt)
        if t.flags & F_LOSS:
            b = smin(t.rto_point, t.snd_nxt)
        elif t.flags & F_RECOVERY:
            b = smin(t.snd_una + t.mss, t.snd_nxt)
        else:
            return False
        if not lt(a, b):
            return False
        seq[0] = a
        ln[0] = umin(b - a, t.mss)
        return True
    for k in range(t.n_sacked + 1):
        a = smax(_hole_start(t, k), t.high_rxt)
        b = _hole_end(t, k)
        if not lt(a, b):
            continue
        if _hole_lost(t, k):
            seq[0] = a
            ln[0] = umin(b - a, t.mss)
            return True
    return False


# -- congestion control ---------------------------------------------------------------------

cdef inline uint32_t _initial_window(tcb_t* t) noexcept nogil:
    # RFC 6928: min(10 * MSS, max(2 * MSS, 14600)).
    return umin(10 * t.mss, umax(2 * t.mss, 14600))


cdef void _cc_on_ack(tcb_t* t, uint32_t acked, double now) noexcept nogil:
    cdef double cw, target, tt, inc
    if t.flags & F_RECOVERY or acked == 0:
        return                          # fast recovery: cwnd stays at ssthresh
    # Grow only a window that is used (RFC 7661 §4.3, Linux's tcp_is_cwnd_limited):
    # an application- or receiver-limited sender would otherwise inflate cwnd for ever.
    if not (t.flags & F_CWND_LIMITED) and 2 * t.flight_before < t.cwnd:
        return
    if t.cwnd < t.ssthresh:
        t.cwnd += acked                 # slow start (Linux: every byte acknowledged counts)
        if t.cwnd <= t.ssthresh:
            return
        acked = t.cwnd - t.ssthresh     # the rest counts in congestion avoidance
        t.cwnd = t.ssthresh
    if t.cc == CC_CUBIC and t.mss:
        cw = <double>t.cwnd / t.mss
        if t.cubic_epoch == 0:
            t.cubic_epoch = now
            if cw < t.cubic_wmax:
                t.cubic_k = cbrt((t.cubic_wmax - cw) / CUBIC_C)
            else:
                t.cubic_k = 0
                t.cubic_wmax = cw
            t.cubic_west = cw
        tt = now - t.cubic_epoch + t.srtt
        target = CUBIC_C * (tt - t.cubic_k) * (tt - t.cubic_k) * (tt - t.cubic_k) \
            + t.cubic_wmax
        if target > 1.5 * cw:
            target = 1.5 * cw
        # The Reno-friendly estimate (RFC 9438 §4.3), alpha = 3 (1 - beta) / (1 + beta).
        t.cubic_west += 3.0 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA) * (<double>acked / t.mss) / cw
        if t.cubic_west > target:
            target = t.cubic_west
        if target > cw:
            inc = (target - cw) * acked / cw
            t.bytes_acked += <uint32_t>inc
            if t.bytes_acked >= 1:
                t.cwnd += t.bytes_acked
                t.bytes_acked = 0
        return
    # NewReno congestion avoidance: one MSS per cwnd of acknowledged bytes.
    t.bytes_acked += acked
    if t.bytes_acked >= t.cwnd:
        t.bytes_acked -= t.cwnd
        t.cwnd += t.mss


cdef void _cc_on_loss(tcb_t* t, uint32_t flight, double now) noexcept nogil:
    # A congestion event (fast retransmit or timeout): the new ssthresh.
    cdef double cw
    if t.cc == CC_CUBIC and t.mss:
        cw = <double>t.cwnd / t.mss
        # Fast convergence (RFC 9438 §4.7).
        if cw < t.cubic_wmax:
            t.cubic_wmax = cw * (1 + CUBIC_BETA) / 2
        else:
            t.cubic_wmax = cw
        t.cubic_epoch = 0
        t.ssthresh = umax(<uint32_t>(t.cwnd * CUBIC_BETA), 2 * t.mss)
    else:
        t.ssthresh = umax(flight / 2, 2 * t.mss)
    t.bytes_acked = 0
    t.prior_cwnd = t.cwnd


cdef void _hystart(tcb_t* t, double rtt, uint32_t ack) noexcept nogil:
    """HyStart++ (RFC 9406 §4.2), without its conservative phase: leave slow start when
    a round's smallest RTT grew by eta over the last round's, before the burst that
    would overflow a queue."""
    cdef double eta
    if t.cwnd >= t.ssthresh or t.flags & (F_RECOVERY | F_LOSS) or not (t.flags & F_HYSTART):
        return
    if t.hs_cur_min == 0 or rtt < t.hs_cur_min:
        t.hs_cur_min = rtt
    t.hs_samples += 1
    if t.hs_last_min > 0 and t.hs_samples >= 8 and t.cwnd >= 16 * <uint32_t>t.mss:
        eta = t.hs_last_min / 8
        eta = 0.004 if eta < 0.004 else (0.016 if eta > 0.016 else eta)
        if t.hs_cur_min >= t.hs_last_min + eta:
            t.ssthresh = t.cwnd            # the delay says the queue is filling
            t.hystart_exits += 1
            return
    if ge(ack, t.hs_round_end):            # a round ends: start the next
        t.hs_last_min = t.hs_cur_min
        t.hs_cur_min = 0
        t.hs_samples = 0
        t.hs_round_end = t.snd_nxt


cdef void _lost_retransmit(tcb_t* t) noexcept nogil:
    """A retransmission is lost if data sent after it has been SACKed while its hole is
    still open (Linux's lost-retransmit detection before RACK): send the holes again
    instead of waiting for the retransmission timeout."""
    if not (t.flags & (F_RECOVERY | F_LOSS)) or not gt(t.high_rxt, t.snd_una):
        return
    if t.n_sacked and gt(t.sacked_r[t.n_sacked - 1], t.rtx_mark) and \
            gt(t.rtx_mark, t.snd_una) and (t.n_sacked == 0 or lt(t.snd_una, t.sacked_l[0])):
        t.lost_retrans += 1
        t.high_rxt = t.snd_una
        t.rtx_mark = t.snd_una
        t.events |= EV_OUTPUT


cdef void _enter_recovery(tcb_t* t, double now) noexcept nogil:
    # RFC 6675 §5 step 4 / RFC 6582 §3.2 step 2.
    _cc_on_loss(t, t.snd_nxt - t.snd_una, now)
    t.cwnd = t.ssthresh
    t.recover = t.snd_nxt
    t.high_rxt = t.snd_una
    t.flags |= F_RECOVERY | F_RETX_NOW
    t.fast_recoveries += 1


# -- ACK processing (RFC 9293 §3.10.7.4, fifth check) ---------------------------------------

cdef void _ts_update(tcb_t* t, seg_t* s, double now) noexcept nogil:
    # RFC 7323 §4.3: remember TSval of a segment covering the last ACK we sent.
    if s.has_ts and le(s.seq, t.last_ack_sent) and ge(s.tsval, t.ts_recent):
        t.ts_recent = s.tsval
        t.ts_recent_time = now


cdef bint paws_reject(tcb_t* t, seg_t* s, double now) noexcept nogil:
    """RFC 7323 §5.3 R1: TSval older than ts_recent (while ts_recent is valid)."""
    if not (t.flags & F_TS) or not s.has_ts or (s.flags & TH_RST):
        return False
    if lt(s.tsval, t.ts_recent):
        if now - t.ts_recent_time > TS_RECENT_VALID:
            t.ts_recent = s.tsval      # §5.5: an idle connection's ts_recent expires
            return False
        return True
    return False


cdef bint seq_acceptable(tcb_t* t, seg_t* s) noexcept nogil:
    """RFC 9293 §3.10.7.4's acceptability test (the four cases), SYN and FIN counted."""
    cdef uint32_t ln = s.len + (1 if s.flags & TH_SYN else 0) + (1 if s.flags & TH_FIN else 0)
    cdef uint32_t wnd = _rcv_space(t)
    cdef uint32_t edge = t.rcv_nxt + wnd
    if ln == 0:
        if wnd == 0:
            return s.seq == t.rcv_nxt
        return le(t.rcv_nxt, s.seq) and lt(s.seq, edge)
    if wnd == 0:
        return False
    return ((le(t.rcv_nxt, s.seq) and lt(s.seq, edge))
            or (le(t.rcv_nxt, s.seq + ln - 1) and lt(s.seq + ln - 1, edge)))


cdef void _sack_received(tcb_t* t, seg_t* s) noexcept nogil:
    cdef uint32_t k, lo, hi
    for k in range(s.nsack):
        lo = s.sack[2 * k]
        hi = s.sack[2 * k + 1]
        # Only blocks within what is outstanding (a D-SACK below snd_una, or garbage, is
        # ignored; RFC 2883 duplicates do not change the scoreboard).
        if not lt(lo, hi) or le(hi, t.snd_una) or gt(hi, t.snd_nxt) or lt(lo, t.snd_una):
            continue
        _sacked_insert(t, lo, hi)


cdef uint8_t _ack(tcb_t* t, seg_t* s, double now) noexcept nogil:
    """Process SEG.ACK for a synchronized connection. The caller checked the ACK bit."""
    cdef uint32_t ack = s.ack
    cdef uint32_t acked, released, wnd
    cdef double rtt
    cdef bint dup
    if gt(ack, t.snd_nxt):
        t.flags |= F_ACK_NOW
        return ACK_TOO_NEW
    t.probes = 0                        # any ACK answers a zero-window or keepalive probe
    if lt(ack, t.snd_una - t.max_sndwnd):
        t.flags |= F_ACK_NOW
        return ACK_TOO_OLD
    wnd = <uint32_t>s.wnd << t.snd_wscale
    # Duplicate ACK per RFC 5681 §2 (before the window is updated).
    dup = (ack == t.snd_una and s.len == 0 and not (s.flags & (TH_SYN | TH_FIN))
           and wnd == t.snd_wnd and t.snd_una != t.snd_nxt)
    # Send window update (§3.10.7.4): from a newer segment, or the same with a newer ACK.
    # A SYN's window is unscaled and was taken by negotiate (RFC 7323 §2.2).
    if not (s.flags & TH_SYN) and (
            lt(t.snd_wl1, s.seq) or (t.snd_wl1 == s.seq and le(t.snd_wl2, ack))):
        if wnd > t.snd_wnd:
            t.events |= EV_OUTPUT
        t.snd_wnd = wnd
        t.snd_wl1 = s.seq
        t.snd_wl2 = ack
        if wnd > t.max_sndwnd:
            t.max_sndwnd = wnd
        if wnd:
            t.persist_at = 0
            t.persist_shift = 0
    if t.flags & F_SACK and s.nsack:
        _sack_received(t, s)
        _lost_retransmit(t)
    if gt(ack, t.snd_una):
        acked = ack - t.snd_una
        t.flight_before = t.snd_nxt - t.snd_una
        t.snd_una = ack
        t.probes = 0
        t.retries = 0
        if t.flags & F_RECOVERY:
            if not (t.flags & F_SACK) and lt(ack, t.recover):
                t.flags |= F_RETX_NOW   # NewReno partial ACK (RFC 6582 §3.2 step 5)
        else:
            t.dupacks = 0
        if not (t.flags & F_SYN_ACKED) and gt(ack, t.iss):
            t.flags |= F_SYN_ACKED
            t.events |= EV_SYN_ACKED
            acked -= 1
        # Release acknowledged bytes of the send ring.
        if gt(ack, t.sb_seq):
            released = umin(ack - t.sb_seq, t.sb_len)
            if released:
                t.sb_head = (t.sb_head + released) % t.sb_cap if t.sb_cap else 0
                t.sb_len -= released
                t.sb_seq += released
                t.events |= EV_WRITABLE | EV_OUTPUT
        if t.flags & F_FIN_QUEUED and gt(ack, t.fin_seq):
            t.events |= EV_FIN_ACKED
            if acked:
                acked -= 1
        # RTT: timestamps (any ACK of new data; RFC 7323 §4.1) or the timed segment.
        rtt = -1
        if t.flags & F_TS and s.has_ts and s.tsecr:
            rtt = <double>(<int32_t>(ts_clock(t, now) - s.tsecr)) / 1000.0
        elif t.flags & F_RTT_TIMING and gt(ack, t.rtt_seq):
            rtt = now - t.rtt_time
            t.flags &= ~F_RTT_TIMING
        if rtt >= 0:
            _rtt_sample(t, rtt)
            _hystart(t, rtt, ack)
        if lt(t.high_rxt, t.snd_una):
            t.high_rxt = t.snd_una
        _sacked_trim(t)
        if t.flags & (F_RECOVERY | F_LOSS) and ge(ack, t.recover):
            # Full acknowledgment: recovery ends (RFC 6582 §3.2 step 3).
            if t.flags & F_RECOVERY:
                t.cwnd = t.ssthresh
            t.flags &= ~(F_RECOVERY | F_LOSS | F_RETX_NOW)
            t.dupacks = 0
        _cc_on_ack(t, acked, now)
        # RFC 6298 §5.2 / 5.3: stop the timer when all is acknowledged, else restart it.
        if t.snd_una == t.snd_nxt:
            t.rto_at = 0
        else:
            t.rto_at = now + t.rto
        t.events |= EV_OUTPUT
    elif dup:
        t.dupacks += 1
        t.events |= EV_OUTPUT
    # Loss detection: three duplicate ACKs, or the SACK scoreboard says the first hole is
    # lost (RFC 6675 §5 step 4); once per window (RecoveryPoint, RFC 6582 §4.1).
    if (not (t.flags & (F_RECOVERY | F_LOSS)) and t.snd_una != t.snd_nxt
            and ge(t.snd_una, t.recover)
            and (t.dupacks >= DUPTHRESH or (t.n_sacked and _hole_lost(t, 0)))):
        _enter_recovery(t, now)
        t.events |= EV_OUTPUT
    return ACK_OK


# -- text (RFC 9293 §3.10.7.4, seventh check) -----------------------------------------------

cdef inline uint32_t _rcv_space(tcb_t* t) noexcept nogil:
    # Receive window in bytes: what the ring can still hold beyond rcv_nxt, never less
    # than what we already advertised (the right edge does not move left).
    cdef uint32_t space = t.rb_cap - t.rb_len
    if lt(t.rcv_nxt + space, t.rcv_adv):
        return t.rcv_adv - t.rcv_nxt
    return space


cdef void _recent_block(tcb_t* t, uint32_t lo, uint32_t hi) noexcept nogil:
    # RFC 2018 §4: the block holding the newest segment first, then earlier ones.
    cdef uint32_t i, n = 0
    cdef uint32_t ls[MAX_SACK_BLOCKS]
    cdef uint32_t rs[MAX_SACK_BLOCKS]
    ls[0] = lo
    rs[0] = hi
    n = 1
    for i in range(t.n_recent):
        if n == MAX_SACK_BLOCKS:
            break
        if le(t.recent_r[i], lo) or ge(t.recent_l[i], hi):
            ls[n] = t.recent_l[i]
            rs[n] = t.recent_r[i]
            n += 1
    for i in range(n):
        t.recent_l[i] = ls[i]
        t.recent_r[i] = rs[i]
    t.n_recent = n


cdef void _recent_trim(tcb_t* t) noexcept nogil:
    cdef uint32_t i, n = 0
    for i in range(t.n_recent):
        if gt(t.recent_r[i], t.rcv_nxt):
            t.recent_l[n] = smax(t.recent_l[i], t.rcv_nxt)
            t.recent_r[n] = t.recent_r[i]
            n += 1
    t.n_recent = n


cdef uint32_t _ooo_insert(tcb_t* t, uint32_t lo, uint32_t hi) noexcept nogil:
    # Merge [lo, hi) into the out-of-order ranges; returns the index of the merged range,
    # or MAX_OOO when there is no room for a new one.
    cdef uint32_t i = 0, j, k, n = t.n_ooo
    while i < n and lt(t.ooo_r[i], lo):
        i += 1
    j = i
    while j < n and le(t.ooo_l[j], hi):
        lo = smin(lo, t.ooo_l[j])
        hi = smax(hi, t.ooo_r[j])
        j += 1
    if j > i:
        t.ooo_l[i] = lo
        t.ooo_r[i] = hi
        k = j - i - 1
        if k:
            memmove_ranges(t.ooo_l, t.ooo_r, i + 1, j, n)
            t.n_ooo = n - k
        return i
    if n == MAX_OOO:
        return MAX_OOO
    memmove_ranges(t.ooo_l, t.ooo_r, i + 1, i, n)
    t.ooo_l[i] = lo
    t.ooo_r[i] = hi
    t.n_ooo = n + 1
    return i


cdef inline void _unreported(tcb_t* t, uint32_t left) noexcept nogil:
    # Remember a changed out-of-order range until an ACK reports it: the receiver ACKs
    # once per batch, and a batch can open more ranges than one ACK's SACK option holds;
    # a range never reported looks lost to the sender, which would resend it.
    cdef uint32_t i
    for i in range(t.n_unrep):
        if t.unrep[i] == left:
            return
    if t.n_unrep < MAX_UNREPORTED:
        t.unrep[t.n_unrep] = left
        t.n_unrep += 1


cdef inline void _duplicate(tcb_t* t, uint32_t lo, uint32_t hi) noexcept nogil:
    # Data we had already: ACK at once, and if SACK is on say which bytes came twice
    # (D-SACK, RFC 2883 §4), so the sender learns its retransmission was spurious (Linux
    # widens its reordering window on it).
    t.flags |= F_ACK_NOW
    t.events |= EV_OUTPUT
    if t.flags & F_SACK:
        t.dsack_l = lo
        t.dsack_r = hi
        t.has_dsack = 1


cdef uint32_t _sack_fill(tcb_t* t, uint32_t* ls, uint32_t* rs, uint32_t most) noexcept nogil:
    """The SACK blocks of the next ACK: a D-SACK block first (RFC 2883 §4), the newest
    range (RFC 2018 §4), then ranges not yet reported, then the other recent ones."""
    cdef uint32_t n = 0, i, j, k, e
    cdef bint dup
    if t.has_dsack:
        t.has_dsack = 0
        t.dsacks_sent += 1
        ls[0] = t.dsack_l
        rs[0] = t.dsack_r
        n = 1
    if t.n_recent and gt(t.recent_r[0], t.rcv_nxt) and n < most:
        ls[n] = t.recent_l[0]
        rs[n] = t.recent_r[0]
        n += 1
    i = 0
    while i < t.n_unrep and n < most:
        e = t.unrep[i]
        # drop the entry; report the range that holds its edge now
        t.n_unrep -= 1
        t.unrep[i] = t.unrep[t.n_unrep]
        for k in range(t.n_ooo):
            if le(t.ooo_l[k], e) and lt(e, t.ooo_r[k]):
                dup = False
                for j in range(n):
                    if ls[j] == t.ooo_l[k]:
                        dup = True
                if not dup:
                    ls[n] = t.ooo_l[k]
                    rs[n] = t.ooo_r[k]
                    n += 1
                break
    for i in range(1, t.n_recent):
        if n >= most:
            break
        if le(t.recent_r[i], t.rcv_nxt):
            continue
        dup = False
        for j in range(n):
            if ls[j] == t.recent_l[i]:
                dup = True
        if not dup:
            ls[n] = t.recent_l[i]
            rs[n] = t.recent_r[i]
            n += 1
    return n


cdef bint _rb_ensure(tcb_t* t) noexcept nogil:
    if t.rb_buf != NULL:
        return True
    t.rb_buf = <uint8_t*>malloc(t.rb_cap)
    t.rb_head = 0
    return t.rb_buf != NULL


cdef void _fin_check(tcb_t* t) noexcept nogil:
    # The peer's FIN takes effect once every byte before it is in (RFC 9293 §3.10.7.4,
    # eighth check): rcv_nxt steps over it and the state machine is told.
    if t.flags & F_RFIN_PENDING and t.rcv_nxt == t.rfin_seq:
        t.flags = (t.flags & ~F_RFIN_PENDING) | F_RFIN | F_ACK_NOW
        t.rcv_nxt += 1
        t.events |= EV_FIN | EV_READABLE | EV_OUTPUT


cdef void _text(tcb_t* t, seg_t* s, const uint8_t* payload, double now) noexcept nogil:
    """Accept the segment's payload (already known to be acceptable) into the ring."""
    cdef uint32_t seq = s.seq, n = s.len, cut, space, at, k, end
    cdef bint filled_hole = False
    if s.flags & TH_SYN:
        seq += 1                        # data on a SYN starts after it
    if n == 0:
        return
    if lt(seq, t.rcv_nxt):
        cut = t.rcv_nxt - seq
        if cut >= n:
            t.dup_segs += 1
            _duplicate(t, seq, seq + n)
            return
        payload += cut
        n -= cut
        seq = t.rcv_nxt
    if t.flags & (F_RFIN | F_SHUT_RD):
        # Nothing follows a FIN; after SHUT_RD the bytes are acknowledged and dropped
        # (Linux keeps ACKing them too, so the peer is not stalled).
        if t.flags & F_SHUT_RD and seq == t.rcv_nxt:
            t.rcv_nxt += n
            t.flags |= F_ACK_NOW
            t.events |= EV_OUTPUT
        return
    space = t.rb_cap - t.rb_len
    at = seq - t.rcv_nxt
    if at >= space:
        t.window_drops += n
        t.flags |= F_ACK_NOW
        t.events |= EV_OUTPUT
        return
    if n > space - at:
        t.window_drops += n - (space - at)
        n = space - at
    if not _rb_ensure(t):
        t.window_drops += n
        return
    if at == 0:
        ring_put(t.rb_buf, t.rb_cap, t.rb_head + t.rb_len, payload, n)
        t.rb_len += n
        t.rcv_nxt += n
        t.bytes_in += n
        # Out-of-order data that is now contiguous joins the in-order bytes.
        while t.n_ooo and le(t.ooo_l[0], t.rcv_nxt):
            filled_hole = True
            if gt(t.ooo_r[0], t.rcv_nxt):
                end = t.ooo_r[0] - t.rcv_nxt
                t.rb_len += end
                t.bytes_in += end
                t.rcv_nxt = t.ooo_r[0]
            memmove_ranges(t.ooo_l, t.ooo_r, 0, 1, t.n_ooo)
            t.n_ooo -= 1
        if filled_hole:
            _recent_trim(t)
        t.events |= EV_READABLE
        t.unacked += n
        if n > t.rcv_mss:
            t.rcv_mss = <uint16_t>umin(n, 0xFFFF)
        if filled_hole or t.n_ooo:
            t.flags |= F_ACK_NOW        # RFC 5681 §4.2: ACK at once when a hole fills
        elif t.quickacks or t.unacked >= DELACK_SEGMENTS * <uint32_t>t.rcv_mss:
            # Every second full-sized segment (RFC 5681 §4.2), every one at the start
            # (quick ACKs). A batch brings many segments at once: the ACK points are
            # kept, and output sends them in order before its final ACK (up to
            # MAX_ACK_POINTS per batch: more would be stretch ACKs, as a GRO receiver's).
            t.flags |= F_ACK_NOW
            if t.quickacks:
                t.quickacks -= 1
            if t.n_ackpts < MAX_ACK_POINTS:
                t.ackpts[t.n_ackpts] = t.rcv_nxt
                t.n_ackpts += 1
                t.unacked = 0
        elif t.delack_at == 0:
            t.delack_at = now + DELACK_TIME
        _fin_check(t)
    else:
        for k in range(t.n_ooo):
            if le(t.ooo_l[k], seq) and le(seq + n, t.ooo_r[k]):
                t.dup_segs += 1         # all of it is held already
                _duplicate(t, seq, seq + n)
                t.events |= EV_OUTPUT
                return
        k = _ooo_insert(t, seq, seq + n)
        if k == MAX_OOO:
            t.ooo_dropped += 1
        else:
            ring_put(t.rb_buf, t.rb_cap, t.rb_head + t.rb_len + at, payload, n)
            t.ooo_segs += 1
            _recent_block(t, t.ooo_l[k], t.ooo_r[k])
            _unreported(t, t.ooo_l[k])
        t.flags |= F_ACK_NOW            # RFC 5681 §4.2: a duplicate ACK at once
    t.events |= EV_OUTPUT


# -- output ---------------------------------------------------------------------------------

cdef inline uint16_t _window_field(tcb_t* t, bint syn) noexcept nogil:
    """The window to advertise, with receiver SWS avoidance (RFC 9293 §3.8.6.2.2)."""
    cdef uint32_t space = t.rb_cap - t.rb_len
    cdef uint32_t edge = t.rcv_nxt + space
    cdef uint32_t threshold = umin(t.rb_cap // 2, t.adv_mss)
    cdef uint32_t wnd, field
    cdef uint32_t unit = 1U << t.rcv_wscale
    if syn:
        field = umin(space, 0xFFFF)     # never scaled (RFC 7323 §2.2)
        t.rcv_adv = t.rcv_nxt + field
        return <uint16_t>field
    if lt(edge, t.rcv_adv + threshold):
        edge = t.rcv_adv                # too small an increase to announce
        if lt(edge, t.rcv_nxt):
            edge = t.rcv_nxt
    wnd = edge - t.rcv_nxt
    field = wnd >> t.rcv_wscale
    if lt(t.rcv_nxt + (field << t.rcv_wscale), t.rcv_adv):
        field = (wnd + unit - 1) >> t.rcv_wscale   # do not move the edge left
    if field > 0xFFFF:
        field = 0xFFFF
    if gt(t.rcv_nxt + (field << t.rcv_wscale), t.rcv_adv):
        t.rcv_adv = t.rcv_nxt + (field << t.rcv_wscale)
    return <uint16_t>field


cdef bint _emit(tcb_t* t, PacketBatch b, uint32_t seq, uint32_t plen, uint8_t flags,
                double now) noexcept nogil:
    """Build one segment into the next slot of ``b``; False when there is no slot."""
    cdef Py_ssize_t i = b.count
    cdef uint32_t hl, optlen = 0, total, nblocks = 0, k, o, l4len
    cdef uint32_t bl[MAX_SACK_BLOCKS]
    cdef uint32_t br[MAX_SACK_BLOCKS]
    cdef uint8_t* p
    cdef uint8_t* th
    cdef bint syn = (flags & TH_SYN) != 0
    if i >= b.capacity:
        return False
    hl = 20 if is_v4(t.laddr) else 40
    if syn:
        optlen = 4                                      # MSS
        if t.flags & F_OFFER_TS or t.flags & F_OFFER_SACK:
            optlen += 12 if t.flags & F_OFFER_TS else 4
        if t.flags & F_OFFER_WS:
            optlen += 4
    else:
        if t.flags & F_TS:
            optlen = 12
        if flags & TH_ACK and t.flags & F_SACK and (t.n_ooo or t.has_dsack) and not (
                flags & TH_RST):
            nblocks = _sack_fill(t, bl, br, 3 if t.flags & F_TS else 4)
            if nblocks:
                optlen += 4 + 8 * nblocks
    l4len = TCP_HEADER + optlen + plen
    total = hl + l4len
    if b.headroom + total + b.tailroom > b.slot_size:
        return False
    p = b.slot_ptr(i) + b.headroom
    build_ip(p, t.laddr, t.raddr, PROTO_TCP, l4len)
    th = p + hl
    put16(th, t.lport)
    put16(th + 2, t.rport)
    put32(th + 4, seq)
    put32(th + 8, t.rcv_nxt if flags & TH_ACK else 0)
    th[12] = <uint8_t>(((TCP_HEADER + optlen) // 4) << 4)
    th[13] = flags
    put16(th + 14, _window_field(t, syn) if not (flags & TH_RST) else 0)
    put16(th + 16, 0)
    put16(th + 18, 0)
    o = TCP_HEADER
    if syn:
        th[o] = OPT_MSS
        th[o + 1] = 4
        put16(th + o + 2, t.adv_mss)
        o += 4
        if t.flags & F_OFFER_SACK and t.flags & F_OFFER_TS:
            th[o] = OPT_SACK_PERM
            th[o + 1] = 2
            o += 2
        elif t.flags & F_OFFER_SACK:
            th[o] = OPT_NOP
            th[o + 1] = OPT_NOP
            th[o + 2] = OPT_SACK_PERM
            th[o + 3] = 2
            o += 4
        elif t.flags & F_OFFER_TS:
            th[o] = OPT_NOP
            th[o + 1] = OPT_NOP
            o += 2
        if t.flags & F_OFFER_TS:
            th[o] = OPT_TS
            th[o + 1] = 10
            put32(th + o + 2, ts_value(t, now))
            put32(th + o + 6, t.ts_recent if flags & TH_ACK else 0)
            o += 10
        if t.flags & F_OFFER_WS:
            th[o] = OPT_NOP
            th[o + 1] = OPT_WS
            th[o + 2] = 3
            th[o + 3] = t.rcv_wscale
            o += 4
    else:
        if t.flags & F_TS:
            th[o] = OPT_NOP
            th[o + 1] = OPT_NOP
            th[o + 2] = OPT_TS
            th[o + 3] = 10
            put32(th + o + 4, ts_value(t, now))
            put32(th + o + 8, t.ts_recent)
            o += 12
        if nblocks:
            th[o] = OPT_NOP
            th[o + 1] = OPT_NOP
            th[o + 2] = OPT_SACK
            th[o + 3] = <uint8_t>(2 + 8 * nblocks)
            o += 4
            for k in range(nblocks):
                put32(th + o, bl[k])
                put32(th + o + 4, br[k])
                o += 8
    if plen:
        if t.sb_buf == NULL or lt(seq, t.sb_seq) or gt(seq + plen, t.sb_seq + t.sb_len):
            return False                # never: output only asks for buffered bytes
        ring_get(t.sb_buf, t.sb_cap, t.sb_head + (seq - t.sb_seq), th + o, plen)
    csum_store_tcp(th, l4len, t.laddr, t.raddr)
    b.offsets[i] = <uint32_t>b.headroom
    b.lengths[i] = total
    b.status[i] = ST_OK
    b.peers[i] = -1
    b.count = i + 1
    t.segs_out += 1
    if flags & TH_ACK:
        t.last_ack_sent = t.rcv_nxt
        t.unacked = 0
        t.delack_at = 0
        t.flags &= ~F_ACK_NOW
        t.n_ackpts = 0                  # this ACK covers every point owed before it
    return True


cdef inline void csum_store_tcp(uint8_t* th, uint32_t l4len, const uint8_t* src,
                                const uint8_t* dst) noexcept nogil:
    cdef uint16_t c = <uint16_t>~csum_fold(csum_add(th, l4len,
                                                    l4_pseudo(src, dst, l4len, PROTO_TCP)))
    memcpy(th + 16, &c, 2)


cdef inline bint _can_send_data(tcb_t* t) noexcept nogil:
    return (t.state == S_ESTABLISHED or t.state == S_CLOSE_WAIT or t.state == S_FIN_WAIT_1
            or t.state == S_CLOSING or t.state == S_LAST_ACK)


cdef Py_ssize_t _ack_points(tcb_t* t, PacketBatch b, double now) noexcept nogil:
    # The ACKs owed for points before RCV.NXT (see _text), oldest first; the caller's
    # final ACK (or data) acknowledges RCV.NXT itself, and so stands for the last point.
    cdef Py_ssize_t built = 0
    cdef uint32_t k, nxt = t.rcv_nxt, n = t.n_ackpts, keep = t.flags & F_ACK_NOW
    t.n_ackpts = 0
    for k in range(n - 1 if n else 0):
        if not lt(t.ackpts[k], nxt):
            continue
        t.rcv_nxt = t.ackpts[k]
        if _emit(t, b, t.snd_nxt, 0, TH_ACK, now):
            built += 1
    t.rcv_nxt = nxt
    t.flags |= keep
    return built


cdef inline void _paced(tcb_t* t, uint32_t size, double now) noexcept nogil:
    # Pacing (as Linux's internal pacing): segments leave at gain x cwnd / srtt instead
    # of in line-rate bursts of a whole window, which a shallow queue on the path (a
    # wireguard-go peer's UDP socket) would drop. No RTT estimate yet: no pacing.
    cdef double rate
    if t.srtt <= 0 or t.cwnd == 0:
        return
    rate = t.cwnd / t.srtt * (PACE_SS_GAIN if t.cwnd < t.ssthresh else PACE_CA_GAIN)
    if t.pace_next < now:
        t.pace_next = now
    t.pace_next += size / rate


cdef inline uint32_t _sb_limit(tcb_t* t) noexcept nogil:
    # The send buffer the application may fill: SO_SNDBUF, or autotuned to four
    # congestion windows (at least 256 KiB) up to sb_max, as Linux's tcp_sndbuf_expand.
    if t.sb_user:
        return t.sb_user
    return umin(t.sb_max, umax(4 * t.cwnd, 262144))


cdef Py_ssize_t _output(tcb_t* t, PacketBatch b, double now, Py_ssize_t budget) noexcept nogil:
    """Append what the connection should send now to ``b``; returns segments built."""
    cdef Py_ssize_t built = 0
    cdef uint32_t seq = 0, ln = 0, data_end, pipe, wnd_end, avail
    # ``budget`` bounds data segments; SYNs and pure ACKs always go.
    cdef uint8_t fl
    cdef bint retx, fin, forced
    if t.state == S_CLOSED or t.state == S_LISTEN:
        return 0
    if t.flags & F_SEND_SYN:
        if not _emit(t, b, t.iss, 0, TH_SYN | (TH_ACK if t.state == S_SYN_RECEIVED else 0), now):
            return 0
        t.flags &= ~F_SEND_SYN
        if t.snd_nxt == t.iss:
            t.snd_nxt = t.iss + 1
            t.snd_max = t.snd_nxt
        if t.rto_at == 0:
            t.rto_at = now + _backed_off_rto(t)
        if t.retries == 0 and not (t.flags & F_RTT_TIMING):
            t.flags |= F_RTT_TIMING
            t.rtt_seq = t.iss
            t.rtt_time = now
        return 1
    if t.state == S_SYN_SENT:
        return 0
    built += _ack_points(t, b, now)
    data_end = t.sb_seq + t.sb_len
    while _can_send_data(t) and built < budget:
        retx = False
        forced = False
        if t.flags & (F_RECOVERY | F_LOSS) and _next_retransmit(t, &seq, &ln):
            retx = True
            forced = (t.flags & F_RETX_NOW) != 0
        else:
            # New data (NextSeg rule 2), or the FIN once the data is all sent.
            seq = t.snd_nxt
            if t.flags & F_FIN_QUEUED and ge(seq, t.fin_seq):
                if seq != t.fin_seq:
                    break                   # the FIN is out already
                ln = 0
            else:
                if lt(seq, t.sb_seq) or ge(seq, data_end):
                    break
                avail = data_end - seq
                wnd_end = t.snd_una + t.snd_wnd
                if ge(seq, wnd_end):
                    break                   # window closed (the persist timer below)
                ln = umin(umin(avail, t.mss), wnd_end - seq)
                if ln < t.mss and t.snd_nxt != t.snd_una:
                    if ln < avail:
                        break               # sender SWS avoidance (RFC 9293 §3.8.6.2.1)
                    if not (t.flags & F_NODELAY) and not (t.flags & F_FIN_QUEUED):
                        break               # Nagle (RFC 9293 §3.7.4)
                if t.snd_nxt == t.snd_una and t.last_send and now - t.last_send > t.rto \
                        and t.cwnd > _initial_window(t):
                    t.cwnd = _initial_window(t)   # slow start after idle (RFC 5681 §4.1)
        pipe = _pipe(t)
        if not forced and pipe and pipe + (ln if ln else 1) > t.cwnd:
            t.flags |= F_CWND_LIMITED
            break
        t.flags &= ~F_CWND_LIMITED
        if not forced and pipe and t.pace_next > now + PACE_BURST:
            t.pace_at = t.pace_next     # the pacing timer sends the rest
            break
        # The FIN rides on the segment that reaches it.
        fin = t.flags & F_FIN_QUEUED and seq + ln >= t.fin_seq and ge(t.fin_seq, seq) \
            and (not retx or gt(t.snd_nxt, t.fin_seq))
        if fin:
            ln = t.fin_seq - seq
        fl = TH_ACK | (TH_FIN if fin else 0)
        if ln and seq + ln == data_end:
            fl |= TH_PSH
        if not _emit(t, b, seq, ln, fl, now):
            break
        built += 1
        t.last_send = now
        _paced(t, ln + 52, now)
        if retx:
            t.flags &= ~F_RETX_NOW
            if t.rtx_mark == t.snd_una or not gt(t.high_rxt, t.snd_una):
                t.rtx_mark = t.snd_nxt      # the first retransmission of this pass
            t.high_rxt = seq + ln + (1 if fin else 0)
            t.retrans_segs += 1
            t.retrans_bytes += ln
            if t.flags & F_RTT_TIMING and lt(t.rtt_seq, seq + ln):
                t.flags &= ~F_RTT_TIMING    # Karn: no sample from a retransmission
        else:
            if not (t.flags & (F_RTT_TIMING | F_TS)):
                t.flags |= F_RTT_TIMING
                t.rtt_seq = seq
                t.rtt_time = now
            t.snd_nxt = seq + ln + (1 if fin else 0)
            t.snd_max = t.snd_nxt
            t.bytes_out += ln
        if t.rto_at == 0:
            t.rto_at = now + _backed_off_rto(t)
    # Zero window with data waiting and nothing in flight: probe (the persist timer).
    if (_can_send_data(t) and t.snd_wnd == 0 and t.snd_una == t.snd_nxt
            and lt(t.snd_nxt, data_end) and t.persist_at == 0):
        t.persist_at = now + _persist_interval(t)
        t.rto_at = 0
    # The budget (the I/O layer's limit on segments queued locally) held data back.
    if built >= budget and _can_send_data(t):
        t.flags |= F_THROTTLED
    else:
        t.flags &= ~F_THROTTLED
    if t.flags & F_ACK_NOW:             # ACKs are never held back
        if _emit(t, b, t.snd_nxt, 0, TH_ACK, now):
            built += 1
    # Out-of-order ranges the ACKs so far did not report get ACKs of their own (what a
    # receiver ACKing every segment would have said).
    cdef int extra = 0
    while t.n_unrep and t.n_ooo and t.flags & F_SACK and extra < 8 and built:
        if not _emit(t, b, t.snd_nxt, 0, TH_ACK, now):
            break
        built += 1
        extra += 1
    if not t.n_ooo:
        t.n_unrep = 0
    return built


cdef inline double _persist_interval(tcb_t* t) noexcept nogil:
    cdef double r = t.rto
    cdef uint32_t _k
    for _k in range(t.persist_shift):
        r *= 2
        if r >= PERSIST_MAX:
            return PERSIST_MAX
    return r


# -- timers ---------------------------------------------------------------------------------

cdef inline double _deadline(tcb_t* t) noexcept nogil:
    cdef double d = 0
    if t.rto_at and (d == 0 or t.rto_at < d):
        d = t.rto_at
    if t.delack_at and (d == 0 or t.delack_at < d):
        d = t.delack_at
    if t.persist_at and (d == 0 or t.persist_at < d):
        d = t.persist_at
    if t.keep_at and (d == 0 or t.keep_at < d):
        d = t.keep_at
    if t.user_at and (d == 0 or t.user_at < d):
        d = t.user_at
    if t.pace_at and (d == 0 or t.pace_at < d):
        d = t.pace_at
    return d


cdef uint32_t _on_timer(tcb_t* t, PacketBatch b, double now) noexcept nogil:
    """Run whatever is due; segments it must send go to ``b``."""
    cdef uint32_t fired = 0, limit
    if t.rto_at and t.rto_at <= now:
        t.rto_at = 0
        fired |= T_RTO
        t.retries += 1
        t.timeouts += 1
        limit = t.syn_retries if (t.state == S_SYN_SENT or t.state == S_SYN_RECEIVED) \
            else t.max_retries
        if t.retries > limit:
            t.events |= EV_TIMEDOUT
            return fired | T_TIMEDOUT
        if t.state == S_SYN_SENT or t.state == S_SYN_RECEIVED:
            t.flags |= F_SEND_SYN
            t.flags &= ~F_RTT_TIMING
        elif t.snd_una != t.snd_nxt:
            # RFC 6298 §5.5-5.7 and RFC 5681 §3.1 (first timeout only for ssthresh).
            if t.retries == 1:
                _cc_on_loss(t, _pipe(t), now)
            t.cwnd = t.mss                  # the loss window
            t.flags &= ~(F_RECOVERY | F_RTT_TIMING | F_RETX_NOW)
            t.flags |= F_LOSS
            t.recover = t.snd_nxt
            t.rto_point = t.snd_nxt
            t.high_rxt = t.snd_una
            t.dupacks = 0
            if t.retries > 1:
                # After repeated timeouts the peer may have reneged: forget SACKs (RFC
                # 2018 §8 allows it; Linux clears the scoreboard on timeout too).
                t.n_sacked = 0
        t.rto_at = now + _backed_off_rto(t)
        _output(t, b, now, 1 if t.state == S_SYN_SENT or t.state == S_SYN_RECEIVED else 2)
    if t.delack_at and t.delack_at <= now:
        t.delack_at = 0
        fired |= T_DELACK
        t.flags |= F_ACK_NOW
        _output(t, b, now, 1)
    if t.persist_at and t.persist_at <= now:
        t.persist_at = 0
        fired |= T_PERSIST
        if t.snd_wnd == 0 and lt(t.snd_nxt, t.sb_seq + t.sb_len):
            t.probes += 1
            t.persist_shift += 1
            if t.probes > t.max_retries:
                t.events |= EV_TIMEDOUT
                return fired | T_TIMEDOUT
            _emit(t, b, t.snd_una - 1, 0, TH_ACK, now)
            t.persist_at = now + _persist_interval(t)
    if t.keep_at and t.keep_at <= now:
        t.keep_at = 0
        if t.flags & F_KEEPALIVE and (t.state == S_ESTABLISHED or t.state == S_CLOSE_WAIT):
            if now - t.last_rcv < t.keep_idle:
                t.keep_at = t.last_rcv + t.keep_idle      # traffic since: sleep again
                t.probes = 0
            else:
                fired |= T_KEEPALIVE
                if t.probes >= t.keep_cnt:
                    t.events |= EV_TIMEDOUT
                    return fired | T_TIMEDOUT
                t.probes += 1
                _emit(t, b, t.snd_una - 1, 0, TH_ACK, now)    # RFC 1122 §4.2.3.6
                t.keep_at = now + t.keep_intvl
    if t.user_at and t.user_at <= now:
        t.user_at = 0
        fired |= T_USER
    if t.pace_at and t.pace_at <= now:
        t.pace_at = 0
        fired |= T_PACE
        t.events |= EV_OUTPUT           # the caller's output sends what pacing held
    return fired


# -- the demultiplexer and header prediction ------------------------------------------------

cdef inline uint64_t _mix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t _hash4(uint64_t seed, const uint8_t* local, uint16_t lport,
                            const uint8_t* remote, uint16_t rport) noexcept nogil:
    cdef uint64_t w[4]
    cdef uint64_t h = seed ^ ((<uint64_t>lport << 16) | rport)
    cdef int k
    memcpy(w, remote, 16)
    memcpy(&w[2], local, 16)
    for k in range(4):
        h = _mix(h ^ w[k])
    return h


cdef inline bint _fast_path_ok(tcb_t* t, seg_t* s, double now) noexcept nogil:
    """Header prediction: is §3.10.7 for this segment just ts, ACK and text?"""
    if (s.flags & (TH_SYN | TH_FIN | TH_RST | TH_URG | TH_ACK)) != TH_ACK:
        return False
    if t.state == S_ESTABLISHED or t.state == S_FIN_WAIT_2:
        pass
    elif t.state == S_FIN_WAIT_1:
        if gt(s.ack, t.fin_seq):
            return False                # acknowledges our FIN: a state change
    elif t.state == S_CLOSE_WAIT or t.state == S_CLOSING or t.state == S_LAST_ACK:
        if s.len or (t.flags & F_FIN_QUEUED and gt(s.ack, t.fin_seq)):
            return False                # no text in these states; or our FIN is acked
    else:
        return False
    if t.flags & F_TS:
        if not s.has_ts or lt(s.tsval, t.ts_recent):
            return False                # RFC 7323 §3.2 / §5.3: Python decides
    if gt(s.ack, t.snd_nxt) or lt(s.ack, t.snd_una - t.max_sndwnd):
        return False
    return seq_acceptable(t, s)


cdef class Segments:
    """Per-slot results of ``Demux.input`` (or ``parse``), reused across batches."""

    cdef seg_t* segs
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t count
    cdef PacketBatch _batch

    def __cinit__(self, Py_ssize_t capacity=128):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.segs = <seg_t*>calloc(capacity, sizeof(seg_t))
        if self.segs == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.count = 0

    def __dealloc__(self):
        free(self.segs)

    cdef int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.count:
            raise IndexError(f"segment {i} out of range for {self.count}")
        return 0

    def verdict(self, Py_ssize_t i):
        self._check(i)
        return self.segs[i].verdict

    def verdict_counts(self):
        """Slots per verdict, indexed by verdict value."""
        counts = [0] * SV_N
        cdef Py_ssize_t i
        for i in range(self.count):
            counts[self.segs[i].verdict] += 1
        return counts

    def slow(self):
        """Indexes of the slots left for the Python state machine, in order."""
        cdef Py_ssize_t i
        return [i for i in range(self.count) if self.segs[i].verdict == SV_SLOW]

    def conn(self, Py_ssize_t i):
        """Id of the connection slot ``i`` was matched to, or -1."""
        self._check(i)
        return self.segs[i].conn

    def fields(self, Py_ssize_t i):
        """``(seq, ack, flags, wnd, len)`` of slot ``i``."""
        self._check(i)
        cdef seg_t* s = &self.segs[i]
        return (s.seq, s.ack, s.flags, s.wnd, s.len)

    def options(self, Py_ssize_t i):
        """``(mss or None, wscale or None, sack_permitted, (tsval, tsecr) or None,
        sack blocks)`` of slot ``i``."""
        self._check(i)
        cdef seg_t* s = &self.segs[i]
        cdef int k
        return (s.mss if s.has_mss else None, s.ws if s.has_ws else None, bool(s.sack_perm),
                (s.tsval, s.tsecr) if s.has_ts else None,
                [(s.sack[2 * k], s.sack[2 * k + 1]) for k in range(s.nsack)])

    def addresses(self, Py_ssize_t i):
        """``(src16, sport, dst16, dport)`` of slot ``i``, addresses packed."""
        self._check(i)
        cdef seg_t* s = &self.segs[i]
        return (PyBytes_FromStringAndSize(<char*>s.addrs, 16), s.sport,
                PyBytes_FromStringAndSize(<char*>s.addrs + 16, 16), s.dport)

    def payload(self, Py_ssize_t i):
        """The payload bytes of slot ``i`` (a copy)."""
        self._check(i)
        cdef seg_t* s = &self.segs[i]
        cdef PacketBatch b = self._batch
        if b is None or i >= b.count:
            raise ValueError("the batch changed after input; parse it again")
        cdef Py_ssize_t start = i * b.slot_size + b.offsets[i] + s.payload
        if start + s.len > (i + 1) * b.slot_size:
            raise ValueError("the batch changed after input; parse it again")
        return PyBytes_FromStringAndSize(<char*>&b.slab[start], s.len)

    cdef const uint8_t* _payload_ptr(self, Py_ssize_t i) noexcept:
        cdef PacketBatch b = self._batch
        return &b.slab[i * b.slot_size + b.offsets[i] + self.segs[i].payload]


cdef class Tcb:
    """One connection's C state; the Python ``Connection`` of tcp.py owns it."""

    cdef tcb_t* t

    def __cinit__(self):
        self.t = <tcb_t*>calloc(1, sizeof(tcb_t))
        if self.t == NULL:
            raise MemoryError()
        self.t.id = -1
        self.t.rto = RTO_INITIAL
        self.t.rto_min = 0.2
        self.t.max_retries = 15
        self.t.syn_retries = 6
        self.t.keep_idle = 7200.0
        self.t.keep_intvl = 75.0
        self.t.keep_cnt = 9
        self.t.cc = CC_CUBIC
        self.t.ssthresh = 0xFFFFFFFF
        self.t.quickacks = QUICKACKS

    def __dealloc__(self):
        if self.t != NULL:
            free(self.t.sb_buf)
            free(self.t.rb_buf)
            free(self.t)

    def setup(self, bytes local, int lport, bytes remote, int rport, uint32_t iss,
              uint32_t ts_offset, uint32_t mtu, uint32_t rcvbuf, uint32_t rcvbuf_max,
              uint32_t sndbuf_max, bint offer_ts=True, bint offer_sack=True,
              bint offer_ws=True):
        """Set addresses, ISS and buffers before the first segment (CLOSED state)."""
        cdef tcb_t* t = self.t
        cdef uint8_t ws = 0
        if len(local) != 16 or len(remote) != 16:
            raise ValueError("addresses must be 16 bytes")
        if is_v4(<const uint8_t*><char*>local) != is_v4(<const uint8_t*><char*>remote):
            raise ValueError("local and remote addresses differ in family")
        if not 0 < lport <= 0xFFFF or not 0 < rport <= 0xFFFF:
            raise ValueError("ports must be 1-65535")
        if rcvbuf < 4096 or rcvbuf_max < rcvbuf or sndbuf_max < 4096:
            raise ValueError("buffers must be at least 4096 bytes, rcvbuf <= rcvbuf_max")
        memcpy(t.laddr, <char*>local, 16)
        memcpy(t.raddr, <char*>remote, 16)
        t.lport = lport
        t.rport = rport
        t.iss = iss
        t.snd_una = iss
        t.snd_nxt = iss
        t.snd_max = iss
        t.sb_seq = iss + 1
        t.recover = iss
        t.high_rxt = iss
        t.ts_offset = ts_offset
        t.ts_last = ts_offset
        t.pmtu = mtu
        hl = 20 if is_v4(t.laddr) else 40
        if mtu < hl + TCP_HEADER + 64:
            raise ValueError(f"mtu {mtu} too small for TCP")
        t.adv_mss = <uint16_t>umin(mtu - hl - TCP_HEADER, 0xFFFF)
        t.mss = 536 if is_v4(t.laddr) else 1220   # RFC 9293 §3.7.1 defaults until known
        if t.mss > t.adv_mss:
            t.mss = t.adv_mss
        t.rcv_mss = t.mss
        t.rb_cap = rcvbuf
        t.rb_max = rcvbuf_max
        t.sb_max = sndbuf_max
        t.sb_cap = 0
        while ws < MAX_WSCALE and (rcvbuf_max >> ws) > 0xFFFF:
            ws += 1
        t.rcv_wscale = ws
        t.flags &= ~(F_OFFER_TS | F_OFFER_SACK | F_OFFER_WS)
        if offer_ts:
            t.flags |= F_OFFER_TS
        if offer_sack:
            t.flags |= F_OFFER_SACK
        if offer_ws:
            t.flags |= F_OFFER_WS
        else:
            t.rcv_wscale = 0

    def negotiate(self, Segments segs, Py_ssize_t i):
        """Take the options of the peer's SYN in slot ``i`` (RFC 7323 §2.2/§3.2, RFC 2018
        §2): what both offered is on, the rest off; sets irs and the MSS."""
        segs._check(i)
        cdef tcb_t* t = self.t
        cdef seg_t* s = &segs.segs[i]
        cdef uint16_t peer_mss
        t.irs = s.seq
        t.rcv_nxt = s.seq + 1
        t.rcv_adv = t.rcv_nxt
        t.last_ack_sent = t.rcv_nxt
        t.snd_wl1 = s.seq
        t.snd_wl2 = s.ack
        if s.has_ws and t.flags & F_OFFER_WS:
            t.flags |= F_WS
            t.snd_wscale = s.ws
        else:
            t.flags &= ~(F_WS | F_OFFER_WS)
            t.snd_wscale = 0
            t.rcv_wscale = 0
        if s.has_ts and t.flags & F_OFFER_TS:
            t.flags |= F_TS
            t.ts_recent = s.tsval
        else:
            t.flags &= ~(F_TS | F_OFFER_TS)
        if s.sack_perm and t.flags & F_OFFER_SACK:
            t.flags |= F_SACK
        else:
            t.flags &= ~(F_SACK | F_OFFER_SACK)
        peer_mss = s.mss if s.has_mss else (536 if is_v4(t.laddr) else 1220)
        t.peer_mss = peer_mss
        self._set_mss(peer_mss)
        t.snd_wnd = s.wnd                 # a SYN's window is never scaled
        t.max_sndwnd = t.snd_wnd
        t.last_rcv = 0

    cdef void _set_mss(self, uint32_t peer_mss) noexcept:
        cdef tcb_t* t = self.t
        cdef uint32_t hl = 20 if is_v4(t.laddr) else 40
        cdef uint32_t m = umin(peer_mss, t.pmtu - hl - TCP_HEADER)
        if t.flags & F_TS:
            m -= 12
        if m < 64:
            m = 64
        t.mss = <uint16_t>m
        t.rcv_mss = <uint16_t>umin(m, t.adv_mss)
        t.cwnd = _initial_window(t)

    def set_pmtu(self, uint32_t mtu):
        """Lower the path MTU (ICMP Fragmentation Needed / Packet Too Big; RFC 1191, 8201);
        returns True when the MSS went down (the caller retransmits)."""
        cdef tcb_t* t = self.t
        cdef uint32_t hl = 20 if is_v4(t.laddr) else 40
        cdef uint16_t old = t.mss
        if mtu < (576 if hl == 20 else 1280):
            mtu = 576 if hl == 20 else 1280
        if mtu >= t.pmtu:
            return False
        t.pmtu = mtu
        cdef uint32_t cw = t.cwnd
        self._set_mss(t.peer_mss if t.peer_mss else t.mss)
        t.cwnd = cw
        if t.mss < old:
            # Everything in flight was too big: send it again in smaller segments.
            t.high_rxt = t.snd_una
            t.rto_point = t.snd_nxt
            t.recover = t.snd_nxt
            t.flags |= F_LOSS
            return True
        return False

    # -- segment processing (the slow path calls these for the segments it handles) -----

    def paws_reject(self, Segments segs, Py_ssize_t i, double now):
        segs._check(i)
        return paws_reject(self.t, &segs.segs[i], now)

    def acceptable(self, Segments segs, Py_ssize_t i):
        segs._check(i)
        return seq_acceptable(self.t, &segs.segs[i])

    def ts_update(self, Segments segs, Py_ssize_t i, double now):
        segs._check(i)
        _ts_update(self.t, &segs.segs[i], now)

    def ack(self, Segments segs, Py_ssize_t i, double now):
        """Process the ACK field; returns ACK_RESULT_*."""
        segs._check(i)
        return _ack(self.t, &segs.segs[i], now)

    def text(self, Segments segs, Py_ssize_t i, double now):
        """Process the payload (and note a FIN) of an acceptable segment."""
        segs._check(i)
        cdef seg_t* s = &segs.segs[i]
        cdef tcb_t* t = self.t
        t.last_rcv = now
        if s.len:
            _text(t, s, segs._payload_ptr(i), now)
        if s.flags & TH_FIN and not (t.flags & (F_RFIN | F_RFIN_PENDING)):
            t.rfin_seq = s.seq + s.len + (1 if s.flags & TH_SYN else 0)
            t.flags |= F_RFIN_PENDING
            if gt(t.rfin_seq, t.rcv_nxt):
                t.flags |= F_ACK_NOW      # a FIN beyond a hole: duplicate ACK
                t.events |= EV_OUTPUT
            _fin_check(t)

    def output(self, PacketBatch batch not None, double now, Py_ssize_t budget=1 << 30):
        """Append the segments to send now to ``batch``; returns how many."""
        cdef Py_ssize_t r
        if batch.first_bad_bounds() >= 0:
            raise ValueError("batch has a slot out of bounds")
        with nogil:
            r = _output(self.t, batch, now, budget)
        return r

    def on_timer(self, PacketBatch batch not None, double now):
        """Run the due timers (segments they send go to ``batch``); returns TIMER_* bits."""
        return _on_timer(self.t, batch, now)

    def emit(self, PacketBatch batch not None, uint32_t seq, int flags, double now):
        """Build one segment without payload (RST, challenge ACK); False if no room."""
        return _emit(self.t, batch, seq, 0, <uint8_t>flags, now)

    # -- the application side ---------------------------------------------------------

    def write(self, data):
        """Copy what fits of ``data`` into the send buffer; returns the bytes taken."""
        cdef const uint8_t[::1] v = memoryview(data).cast("B")
        cdef Py_ssize_t n = v.shape[0]
        cdef tcb_t* t = self.t
        cdef uint32_t limit = _sb_limit(t), take, need, want
        if n == 0 or t.sb_len >= limit:
            return 0
        take = <uint32_t>min(n, limit - t.sb_len)
        need = t.sb_len + take
        if t.sb_cap < need:
            want = umin(umax(round_up_pow2(need), umin(2 * t.sb_cap, limit)), limit)
            if not ring_resize(&t.sb_buf, &t.sb_cap, &t.sb_head, t.sb_len, umax(want, need)):
                raise MemoryError()
        with nogil:
            ring_put(t.sb_buf, t.sb_cap, t.sb_head + t.sb_len, &v[0], take)
        t.sb_len += take
        return take

    def send_space(self):
        """Bytes ``write`` would take now."""
        cdef tcb_t* t = self.t
        cdef uint32_t limit = _sb_limit(t)
        return limit - t.sb_len if limit > t.sb_len else 0

    def read_into(self, buffer, double now, bint peek=False):
        """Copy in-order bytes into ``buffer``; returns the count. Grows the receive
        buffer when the application keeps up (autotuning, as Linux's DRS)."""
        cdef uint8_t[::1] v = memoryview(buffer).cast("B")
        cdef tcb_t* t = self.t
        cdef uint32_t n = <uint32_t>min(v.shape[0], t.rb_len)
        if n == 0:
            return 0
        with nogil:
            ring_get(t.rb_buf, t.rb_cap, t.rb_head, &v[0], n)
        if peek:
            return n
        t.rb_head = (t.rb_head + n) % t.rb_cap
        t.rb_len -= n
        self._after_read(n, now)
        return n

    def read(self, Py_ssize_t n, double now, bint peek=False):
        """Up to ``n`` in-order bytes as bytes (empty when none are buffered)."""
        cdef tcb_t* t = self.t
        cdef uint32_t k = <uint32_t>min(n, t.rb_len)
        if k == 0:
            return b""
        out = bytearray(k)
        self.read_into(out, now, peek)
        return bytes(out)

    cdef void _after_read(self, uint32_t n, double now) noexcept:
        cdef tcb_t* t = self.t
        cdef uint32_t space, target, used
        cdef double rtt
        t.rcvq_copied += n
        rtt = t.rcv_rtt if t.rcv_rtt > 0 else t.srtt
        if t.rb_user == 0 and rtt > 0 and now - t.rcvq_time >= rtt:
            # Dynamic right-sizing: a window of twice what the application read in the
            # last round trip, doubled again so the sender's slow start is not capped.
            target = umin(4 * t.rcvq_copied, t.rb_max)
            if target > t.rb_cap:
                target = umin(round_up_pow2(target), t.rb_max)
                used = t.rb_len
                if t.n_ooo:
                    used = t.rb_len + (t.ooo_r[t.n_ooo - 1] - t.rcv_nxt)
                if t.rb_buf == NULL:
                    t.rb_cap = target
                elif ring_resize(&t.rb_buf, &t.rb_cap, &t.rb_head, used, target):
                    pass
            t.rcvq_copied = 0
            t.rcvq_time = now
        # A window update once the window opens by enough (receiver SWS avoidance).
        space = t.rb_cap - t.rb_len
        if gt(t.rcv_nxt + space, t.rcv_adv + umax(umin(t.rb_cap // 2, 2 * <uint32_t>t.adv_mss),
                                                  1)) \
                and t.state != S_CLOSED and t.state != S_LISTEN and t.state != S_SYN_SENT:
            # Only when the advertised window is small against the buffer (Linux's
            # __tcp_cleanup_rbuf: the window would at least double).
            if (t.rcv_adv - t.rcv_nxt) <= space // 2:
                t.flags |= F_ACK_NOW
                t.events |= EV_OUTPUT

    def take_events(self):
        """The EVENT_* bits raised since the last call, cleared."""
        cdef uint32_t e = self.t.events
        self.t.events = 0
        return e

    def deadline(self):
        """The earliest armed timer (monotonic seconds), or 0 when none is."""
        return _deadline(self.t)

    def queue_fin(self):
        """The application closed its sending side: FIN goes after the buffered data."""
        cdef tcb_t* t = self.t
        if not (t.flags & F_FIN_QUEUED):
            t.flags |= F_FIN_QUEUED
            t.fin_seq = t.sb_seq + t.sb_len
            t.events |= EV_OUTPUT

    def free_buffers(self):
        """Release both rings (TIME-WAIT and closed connections keep no data)."""
        cdef tcb_t* t = self.t
        free(t.sb_buf)
        free(t.rb_buf)
        t.sb_buf = NULL
        t.rb_buf = NULL
        t.sb_cap = 0
        t.sb_len = 0
        t.rb_len = 0
        t.n_ooo = 0
        t.n_sacked = 0

    def counters(self):
        """Per-connection counters and estimates (like ``ss -ti``), as a dict."""
        cdef tcb_t* t = self.t
        return {
            "segs_in": t.segs_in, "segs_out": t.segs_out,
            "bytes_received": t.bytes_in, "bytes_sent": t.bytes_out,
            "bytes_acked": <uint32_t>(t.snd_una - t.iss - 1) if t.flags & F_SYN_ACKED else 0,
            "retrans_segs": t.retrans_segs, "retrans_bytes": t.retrans_bytes,
            "fast_recoveries": t.fast_recoveries, "timeouts": t.timeouts,
            "lost_retransmits": t.lost_retrans, "hystart_exits": t.hystart_exits,
            "dup_segs": t.dup_segs, "ooo_segs": t.ooo_segs, "ooo_dropped": t.ooo_dropped,
            "dsacks_sent": t.dsacks_sent,
            "window_drops": t.window_drops,
            "srtt": t.srtt, "rttvar": t.rttvar, "rto": t.rto, "rcv_rtt": t.rcv_rtt,
            "cwnd": t.cwnd, "ssthresh": t.ssthresh, "mss": t.mss, "pmtu": t.pmtu,
            "snd_wnd": t.snd_wnd, "rcv_wnd": _rcv_space(t),
            "snd_wscale": t.snd_wscale if t.flags & F_WS else None,
            "rcv_wscale": t.rcv_wscale if t.flags & F_WS else None,
            "timestamps": bool(t.flags & F_TS), "sack": bool(t.flags & F_SACK),
            "sndbuf": t.sb_cap, "rcvbuf": t.rb_cap, "unacked": t.snd_nxt - t.snd_una,
            "sacked_ranges": t.n_sacked, "ooo_ranges": t.n_ooo,
            "congestion_control": "cubic" if t.cc == CC_CUBIC else "newreno",
        }

    # -- fields the state machine reads and writes ------------------------------------

    @property
    def id(self):
        return self.t.id

    @id.setter
    def id(self, int v):
        self.t.id = v

    @property
    def state(self):
        return self.t.state

    @state.setter
    def state(self, int v):
        if not S_CLOSED <= v <= S_TIME_WAIT:
            raise ValueError(f"no TCP state {v}")
        self.t.state = <uint8_t>v

    @property
    def iss(self):
        return self.t.iss

    @property
    def irs(self):
        return self.t.irs

    @property
    def snd_una(self):
        return self.t.snd_una

    @property
    def snd_nxt(self):
        return self.t.snd_nxt

    @property
    def snd_wnd(self):
        return self.t.snd_wnd

    @property
    def rcv_nxt(self):
        return self.t.rcv_nxt

    @property
    def rcv_wnd(self):
        return _rcv_space(self.t)

    @property
    def mss(self):
        return self.t.mss

    @property
    def readable(self):
        """In-order bytes waiting for the application."""
        return self.t.rb_len

    @property
    def unsent(self):
        """Bytes in the send buffer not yet sent once."""
        cdef tcb_t* t = self.t
        cdef uint32_t end = t.sb_seq + t.sb_len
        return end - t.snd_nxt if lt(t.snd_nxt, end) else 0

    @property
    def buffered(self):
        """Bytes in the send buffer (sent and unacknowledged, or unsent)."""
        return self.t.sb_len

    @property
    def throttled(self):
        """The last ``output`` stopped at its budget with more to send."""
        return bool(self.t.flags & F_THROTTLED)

    @property
    def fin_received(self):
        return bool(self.t.flags & F_RFIN)

    @property
    def fin_queued(self):
        return bool(self.t.flags & F_FIN_QUEUED)

    @property
    def fin_acked(self):
        cdef tcb_t* t = self.t
        return bool(t.flags & F_FIN_QUEUED) and gt(t.snd_una, t.fin_seq)

    @property
    def all_acked(self):
        return self.t.snd_una == self.t.snd_nxt

    @property
    def user_at(self):
        return self.t.user_at

    @user_at.setter
    def user_at(self, double v):
        self.t.user_at = v

    @property
    def rto(self):
        return self.t.rto

    @property
    def ts_recent(self):
        """The peer's last TSval we took (RFC 7323 §4.3), None without timestamps."""
        return self.t.ts_recent if self.t.flags & F_TS else None

    @property
    def syn_acked(self):
        return bool(self.t.flags & F_SYN_ACKED)

    def send_syn(self):
        """Have the next output (re)send our SYN (SYN-SENT) or SYN-ACK (SYN-RECEIVED)."""
        self.t.flags |= F_SEND_SYN

    def ack_now(self):
        self.t.flags |= F_ACK_NOW

    def duplicate(self, Segments segs, Py_ssize_t i):
        """An unacceptable segment whose bytes are all below RCV.NXT: ACK it, with a
        D-SACK block for them (RFC 2883 §4)."""
        segs._check(i)
        cdef seg_t* s = &segs.segs[i]
        cdef tcb_t* t = self.t
        if s.len and lt(s.seq, t.rcv_nxt) and le(s.seq + s.len, t.rcv_nxt):
            t.dup_segs += 1
            _duplicate(t, s.seq, s.seq + s.len)
        else:
            t.flags |= F_ACK_NOW

    def shut_rd(self):
        """SHUT_RD: buffered and future bytes are discarded (still acknowledged)."""
        cdef tcb_t* t = self.t
        t.flags |= F_SHUT_RD
        t.rb_head = 0
        t.rb_len = 0
        t.n_ooo = 0

    def start_keepalive(self, double now):
        cdef tcb_t* t = self.t
        if t.flags & F_KEEPALIVE:
            t.keep_at = (t.last_rcv if t.last_rcv else now) + t.keep_idle
        else:
            t.keep_at = 0

    def set_option(self, str name, value):
        """TCP_NODELAY, SO_KEEPALIVE, keepalive times, SO_SNDBUF / SO_RCVBUF (bytes; 0
        = autotune), congestion control ("cubic" / "newreno"), rto_min, retries."""
        cdef tcb_t* t = self.t
        if name == "nodelay":
            t.flags = (t.flags | F_NODELAY) if value else (t.flags & ~F_NODELAY)
        elif name == "keepalive":
            t.flags = (t.flags | F_KEEPALIVE) if value else (t.flags & ~F_KEEPALIVE)
        elif name == "keep_idle":
            t.keep_idle = float(value)
        elif name == "keep_intvl":
            t.keep_intvl = float(value)
        elif name == "keep_cnt":
            t.keep_cnt = int(value)
        elif name == "sndbuf":
            t.sb_user = int(value)
        elif name == "rcvbuf":
            v = int(value)
            t.rb_user = v
            if v and t.rb_buf == NULL and t.state <= S_SYN_RECEIVED:
                t.rb_cap = v
                t.rb_max = max(t.rb_max, v)
        elif name == "cc":
            t.cc = CC_CUBIC if value == "cubic" else CC_NEWRENO
        elif name == "hystart":
            t.flags = (t.flags | F_HYSTART) if value else (t.flags & ~F_HYSTART)
        elif name == "rto_min":
            t.rto_min = float(value)
        elif name == "max_retries":
            t.max_retries = int(value)
        elif name == "syn_retries":
            t.syn_retries = int(value)
        else:
            raise ValueError(f"unknown TCP option {name!r}")

    def get_option(self, str name):
        cdef tcb_t* t = self.t
        if name == "nodelay":
            return bool(t.flags & F_NODELAY)
        if name == "keepalive":
            return bool(t.flags & F_KEEPALIVE)
        if name == "keep_idle":
            return t.keep_idle
        if name == "keep_intvl":
            return t.keep_intvl
        if name == "keep_cnt":
            return t.keep_cnt
        if name == "sndbuf":
            return _sb_limit(t)
        if name == "rcvbuf":
            return t.rb_user if t.rb_user else t.rb_cap
        if name == "cc":
            return "cubic" if t.cc == CC_CUBIC else "newreno"
        if name == "hystart":
            return bool(t.flags & F_HYSTART)
        raise ValueError(f"unknown TCP option {name!r}")


cdef class Demux:
    """4-tuple -> TCB, and the batch entry point with header prediction."""

    cdef uint64_t seed
    cdef uint32_t mask              # table size - 1 (a power of two)
    cdef int32_t* slots             # connection id per table slot, -1 empty
    cdef tcb_t** conns              # by connection id
    cdef readonly Py_ssize_t max_conns
    cdef readonly Py_ssize_t count
    cdef uint32_t batch_no
    cdef object _tcbs               # keeps the Tcb objects alive
    cdef uint64_t _counts[SV_N]

    def __cinit__(self, Py_ssize_t max_conns=65536, uint64_t seed=0):
        if max_conns <= 0 or max_conns > (1 << 24):
            raise ValueError(f"max_conns must be 1..{1 << 24}, got {max_conns}")
        cdef uint32_t size = 16
        while size < 2 * max_conns:
            size <<= 1
        self.slots = <int32_t*>malloc(size * sizeof(int32_t))
        self.conns = <tcb_t**>calloc(max_conns, sizeof(tcb_t*))
        if self.slots == NULL or self.conns == NULL:
            raise MemoryError()
        memset(self.slots, 0xFF, size * sizeof(int32_t))
        self.mask = size - 1
        self.max_conns = max_conns
        self.seed = _mix(seed ^ 0x9E3779B97F4A7C15ULL)
        self.count = 0
        self._tcbs = {}

    def __dealloc__(self):
        free(self.slots)
        free(self.conns)

    cdef int32_t _find(self, const uint8_t* local, uint16_t lport, const uint8_t* remote,
                       uint16_t rport) noexcept nogil:
        cdef uint32_t i = <uint32_t>_hash4(self.seed, local, lport, remote, rport) & self.mask
        cdef int32_t c
        cdef tcb_t* t
        while True:
            c = self.slots[i]
            if c < 0:
                return -1
            t = self.conns[c]
            if (t.lport == lport and t.rport == rport and memcmp(t.raddr, remote, 16) == 0
                    and memcmp(t.laddr, local, 16) == 0):
                return c
            i = (i + 1) & self.mask

    def add(self, Tcb tcb not None):
        """Enter ``tcb`` (addresses set) under a free id; returns the id. Raises
        ``OverflowError`` when the table holds ``max_conns`` connections,
        ``KeyError`` when the 4-tuple is taken."""
        cdef tcb_t* t = tcb.t
        cdef int32_t cid
        cdef uint32_t i
        if self._find(t.laddr, t.lport, t.raddr, t.rport) >= 0:
            raise KeyError("4-tuple in use")
        if self.count >= self.max_conns:
            raise OverflowError("connection table full")
        cid = 0
        while self.conns[cid] != NULL:
            cid += 1
        i = <uint32_t>_hash4(self.seed, t.laddr, t.lport, t.raddr, t.rport) & self.mask
        while self.slots[i] >= 0:
            i = (i + 1) & self.mask
        self.slots[i] = cid
        self.conns[cid] = t
        t.id = cid
        self.count += 1
        self._tcbs[cid] = tcb
        return cid

    def remove(self, Tcb tcb not None):
        cdef tcb_t* t = tcb.t
        cdef int32_t cid = self._find(t.laddr, t.lport, t.raddr, t.rport)
        cdef uint32_t i, j, home
        cdef tcb_t* o
        if cid < 0 or self.conns[cid] != t:
            return
        i = <uint32_t>_hash4(self.seed, t.laddr, t.lport, t.raddr, t.rport) & self.mask
        while self.slots[i] != cid:
            i = (i + 1) & self.mask
        # Backward-shift deletion (linear probing without tombstones): entries after the
        # hole that may sit in it move up, so every probe still ends at an empty slot.
        # Tombstones would pile up under connection churn (a SYN flood makes and ends
        # thousands) until no slot is empty and a lookup never ends.
        self.slots[i] = -1
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.slots[j] < 0:
                break
            o = self.conns[self.slots[j]]
            home = <uint32_t>_hash4(self.seed, o.laddr, o.lport, o.raddr, o.rport) & self.mask
            # Move it unless its home lies cyclically in (i, j].
            if ((j - home) & self.mask) >= ((j - i) & self.mask):
                self.slots[i] = self.slots[j]
                self.slots[j] = -1
                i = j
        self.conns[cid] = NULL
        self.count -= 1
        del self._tcbs[cid]
        t.id = -1

    def lookup(self, bytes local, int lport, bytes remote, int rport):
        """The Tcb for a 4-tuple, or None."""
        if len(local) != 16 or len(remote) != 16:
            raise ValueError("addresses must be 16 bytes")
        cdef int32_t c = self._find(<const uint8_t*><char*>local, <uint16_t>lport,
                                    <const uint8_t*><char*>remote, <uint16_t>rport)
        return None if c < 0 else self._tcbs[c]

    def get(self, int cid):
        return self._tcbs.get(cid)

    def input(self, PacketBatch batch not None, Segments segs not None, double now):
        """Parse every alive slot, match it to its connection and run header prediction.

        Returns the ids of the connections touched (in first-seen order); slots with
        verdict SLOW are for the state machine, in order. TCP slots get the batch status
        ST_CONSUMED (or a drop status); other protocols' slots are left alive."""
        cdef Py_ssize_t n = batch.count, i
        cdef uint8_t v
        cdef seg_t* s
        cdef tcb_t* t
        cdef int32_t c
        cdef uint32_t stamp
        cdef uint8_t* slab
        cdef Py_ssize_t size = batch.slot_size
        cdef int32_t* touched
        cdef Py_ssize_t n_touched = 0
        if n > segs.capacity:
            raise ValueError(f"Segments holds {segs.capacity}, the batch {n}")
        if batch.first_bad_bounds() >= 0:
            raise ValueError("batch has a slot out of bounds")
        segs.count = n
        segs._batch = batch
        if n == 0:
            return []
        touched = <int32_t*>malloc(n * sizeof(int32_t))
        if touched == NULL:
            raise MemoryError()
        self.batch_no += 1
        stamp = self.batch_no
        slab = &batch.slab[0]
        # Reads the batch, writes its statuses, `segs` and the TCBs of this table; the
        # caller holds the stack lock, so nothing else touches them.
        with nogil:
            for i in range(n):
                s = &segs.segs[i]
                if batch.status[i] != ST_OK:
                    s.verdict = SV_SKIPPED
                    s.conn = -1
                    continue
                v = parse_segment(slab + i * size + batch.offsets[i], batch.lengths[i], s)
                if v == SV_NOT_TCP:
                    s.verdict = v               # someone else's (UDP, ICMP): untouched
                    continue
                if v != SV_OK:
                    s.verdict = v
                    batch.status[i] = (ST_BAD_CHECKSUM if v == SV_BAD_CHECKSUM else
                                       ST_TOO_SHORT if v == SV_TRUNCATED else ST_BAD_IP)
                    self._counts[v] += 1
                    continue
                c = self._find(s.addrs + 16, s.dport, s.addrs, s.sport)
                s.conn = c
                if c < 0:
                    s.verdict = SV_SLOW
                    self._counts[SV_SLOW] += 1
                    batch.status[i] = ST_CONSUMED
                    continue
                t = self.conns[c]
                if t.batch_stamp != stamp:
                    t.batch_stamp = stamp
                    t.slow_stamp_set = 0
                    touched[n_touched] = c
                    n_touched += 1
                t.segs_in += 1
                if not t.slow_stamp_set and _fast_path_ok(t, s, now):
                    t.last_rcv = now
                    _ts_update(t, s, now)
                    if s.has_ts and s.tsecr and s.len:
                        _rcv_rtt_sample(t, s, now)
                    _ack(t, s, now)
                    if s.len:
                        _text(t, s, slab + i * size + batch.offsets[i] + s.payload, now)
                    s.verdict = SV_FAST
                    self._counts[SV_FAST] += 1
                else:
                    t.slow_stamp_set = 1
                    s.verdict = SV_SLOW
                    self._counts[SV_SLOW] += 1
                batch.status[i] = ST_CONSUMED   # TCP's now (its payload stays readable)
        out = [touched[i] for i in range(n_touched)]
        free(touched)
        return out

    def counts(self):
        """Slots seen per verdict since creation, by name."""
        return {VERDICT_NAMES[v]: self._counts[v] for v in range(SV_N) if self._counts[v]}


cdef inline void _rcv_rtt_sample(tcb_t* t, seg_t* s, double now) noexcept nogil:
    # The receiver's RTT from an echoed timestamp (Linux tcp_rcv_rtt_measure_ts): the
    # minimum-leaning moving estimate that sizes the receive window.
    cdef double r = <double>(<int32_t>(ts_clock(t, now) - s.tsecr)) / 1000.0
    if r < 0 or r > 60:
        return
    if r < 0.001:
        r = 0.001
    if t.rcv_rtt == 0 or r < t.rcv_rtt:
        t.rcv_rtt = r
    else:
        t.rcv_rtt = 0.875 * t.rcv_rtt + 0.125 * r


def build_reset(PacketBatch batch not None, bytes src, int sport, bytes dst, int dport,
                uint32_t seq, uint32_t ack, int flags):
    """Append a segment without a connection (an RST answering a segment, RFC 9293
    §3.10.7.1) to ``batch``: addresses packed, ``flags`` TH bits. False when full."""
    cdef Tcb tmp = Tcb()
    cdef tcb_t* t = tmp.t
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("addresses must be 16 bytes")
    memcpy(t.laddr, <char*>src, 16)
    memcpy(t.raddr, <char*>dst, 16)
    t.lport = sport
    t.rport = dport
    t.rcv_nxt = ack
    t.state = S_CLOSED
    return _emit(t, batch, seq, 0, <uint8_t>flags, 0.0)
