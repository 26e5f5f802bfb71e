# cython: language_level=3
"""C-level view of dataplane.netstack._tcp: the transmission control block and its segments.

Shared by ``_tcp.pyx`` (which implements everything) and by any Cython module that later
wants to run TCP input or output inside its own nogil loop. Sequence numbers are
``uint32_t`` compared modulo 2**32 (RFC 9293 §3.4); times are monotonic seconds
(``double``) except the RFC 7323 timestamp clock, which counts milliseconds.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from dataplane._batch cimport PacketBatch


# RFC 9293 §3.3.2 states. Keep in sync with tcp.State.
cdef enum:
    S_CLOSED = 0
    S_LISTEN = 1
    S_SYN_SENT = 2
    S_SYN_RECEIVED = 3
    S_ESTABLISHED = 4
    S_FIN_WAIT_1 = 5
    S_FIN_WAIT_2 = 6
    S_CLOSE_WAIT = 7
    S_CLOSING = 8
    S_LAST_ACK = 9
    S_TIME_WAIT = 10

# Control bits (RFC 9293 §3.1).
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PSH = 0x08
    TH_ACK = 0x10
    TH_URG = 0x20

cdef enum:
    MAX_OOO = 32            # out-of-order ranges held by a receiver
    MAX_SACKED = 64         # SACKed ranges held by a sender's scoreboard
    MAX_SACK_BLOCKS = 4     # blocks one segment can carry (RFC 2018 §3)
    MAX_UNREPORTED = 16     # new out-of-order ranges remembered until an ACK reports them
    MAX_ACK_POINTS = 8      # ACKs owed within one input batch (every second segment)


# One parsed segment (``Segments`` holds an array of them, one per batch slot).
ctypedef struct seg_t:
    uint8_t verdict         # SV_* (_tcp.pyx)
    uint8_t flags           # TH_*
    uint8_t v4
    uint8_t has_ts
    uint8_t has_mss
    uint8_t has_ws
    uint8_t sack_perm
    uint8_t ws
    uint8_t nsack
    uint16_t sport
    uint16_t dport
    uint16_t wnd            # the raw window field
    uint16_t mss
    uint32_t seq
    uint32_t ack
    uint32_t tsval
    uint32_t tsecr
    uint32_t payload        # offset of the payload within the IP packet
    uint32_t len            # payload length (SYN and FIN not counted)
    uint32_t sack[8]        # (left, right) edges of up to 4 SACK blocks
    uint8_t addrs[32]       # source then destination, 16 bytes each
    int32_t conn            # id of the connection it was matched to, -1 if none


# The transmission control block (RFC 9293 §3.3.1) plus what a modern TCP keeps.
ctypedef struct tcb_t:
    int32_t id              # index of the owning Tcb in the stack (for Python)
    uint8_t state           # S_*
    uint32_t flags          # F_* (_tcp.pyx)
    uint32_t events         # EV_* raised for the Python side since it last looked
    uint8_t laddr[16]
    uint8_t raddr[16]
    uint16_t lport
    uint16_t rport
    uint32_t batch_stamp    # batch number of the last input batch that matched it
    uint8_t slow_stamp_set  # a slow segment of the current batch was queued for Python
    uint32_t flight_before  # snd_nxt - snd_una before the ACK being processed

    # send sequence space (§3.3.1)
    uint32_t iss
    uint32_t snd_una
    uint32_t snd_nxt
    uint32_t snd_max        # highest sequence number sent + 1
    uint32_t snd_wnd        # peer's window, scaled
    uint32_t snd_wl1
    uint32_t snd_wl2
    uint32_t max_sndwnd
    uint8_t snd_wscale      # shift the peer applies (from its SYN)
    uint32_t fin_seq        # sequence number of our FIN once queued

    # receive sequence space
    uint32_t irs
    uint32_t rcv_nxt
    uint32_t rcv_adv        # right edge of the window last advertised
    uint8_t rcv_wscale      # shift we apply (offered in our SYN)
    uint32_t rfin_seq       # the peer's FIN, once seen (out of order: F_RFIN_PENDING)
    uint32_t last_ack_sent

    # options
    uint16_t mss            # send MSS: payload bytes per segment, options excluded
    uint16_t peer_mss       # the MSS option the peer sent
    uint16_t adv_mss        # the MSS option we send
    uint16_t rcv_mss        # estimate of the peer's segment size (delayed ACK)
    uint32_t ts_recent      # RFC 7323 §4.3
    double ts_recent_time
    uint32_t ts_offset      # added to our millisecond clock (RFC 7323 §5.4)
    uint32_t ts_last        # the last TSval sent: never go back (threads pass own `now`)
    uint32_t pmtu

    # round trip and retransmission timeout (RFC 6298, RFC 7323 appendix G)
    double srtt
    double rttvar
    double rto
    double rto_min
    double rtt_time         # when rtt_seq was sent (Karn's algorithm without timestamps)
    uint32_t rtt_seq
    double rcv_rtt          # receiver's estimate from echoed timestamps (autotuning)
    uint32_t retries        # consecutive timeouts without progress
    uint32_t max_retries
    uint32_t syn_retries

    # congestion control (RFC 5681, RFC 6582, RFC 6675) and CUBIC (RFC 9438)
    uint32_t cwnd
    uint32_t ssthresh
    uint32_t bytes_acked    # appropriate byte counting in congestion avoidance
    uint32_t recover        # RecoveryPoint
    uint32_t high_rxt       # HighRxt
    uint32_t rto_point      # everything unSACKed below it counts as lost (after RTO)
    uint32_t dupacks
    uint32_t prior_cwnd
    double last_send        # last time data was sent (slow start after idle)
    double cubic_epoch      # start of the current CUBIC epoch, 0 when none
    double cubic_k
    double cubic_wmax       # in segments
    double cubic_west       # TCP-friendly estimate, in segments
    uint8_t cc              # CC_* (_tcp.pyx)
    uint32_t hs_round_end   # HyStart++ (RFC 9406): the round ends when this is acked
    double hs_cur_min       # the round's smallest RTT sample, 0 before the first
    double hs_last_min      # the previous round's
    uint32_t hs_samples
    uint32_t rtx_mark       # SND.NXT when the oldest retransmission in flight went out
    uint64_t lost_retrans   # retransmissions found lost (a later send was SACKed)

    # SACK scoreboard: disjoint, sorted ranges above snd_una the peer has SACKed
    uint32_t n_sacked
    uint32_t sacked_l[MAX_SACKED]
    uint32_t sacked_r[MAX_SACKED]

    # send buffer: bytes [sb_seq, sb_seq + sb_len) at ring index sb_head
    uint8_t* sb_buf
    uint32_t sb_cap
    uint32_t sb_head
    uint32_t sb_len
    uint32_t sb_seq
    uint32_t sb_max         # autotuning limit
    uint32_t sb_user        # SO_SNDBUF, 0 = autotune

    # receive buffer: rb_len in-order bytes at rb_head, then out-of-order data at its
    # offset from rcv_nxt
    uint8_t* rb_buf
    uint32_t rb_cap
    uint32_t rb_head
    uint32_t rb_len
    uint32_t rb_max
    uint32_t rb_user        # SO_RCVBUF, 0 = autotune
    uint32_t rcvq_copied    # bytes the application read since rcvq_time
    double rcvq_time
    uint32_t n_ooo
    uint32_t ooo_l[MAX_OOO]
    uint32_t ooo_r[MAX_OOO]
    uint32_t n_recent       # SACK blocks to report, most recent first (RFC 2018 §4)
    uint32_t recent_l[MAX_SACK_BLOCKS]
    uint32_t recent_r[MAX_SACK_BLOCKS]
    uint32_t dsack_l        # a duplicate to report in the next ACK (RFC 2883), if dsack_r
    uint32_t dsack_r
    uint8_t has_dsack
    uint32_t n_unrep        # out-of-order ranges (by a left edge) no ACK has reported yet
    uint32_t unrep[MAX_UNREPORTED]
    uint32_t unacked        # bytes received since our last ACK
    uint32_t n_ackpts       # RCV.NXT values an ACK is owed for, within the current batch
    uint32_t ackpts[MAX_ACK_POINTS]
    uint32_t quickacks      # segments still to be ACKed at once (start of connection)

    # timers: absolute deadlines, 0 when not armed
    double rto_at
    double delack_at
    double persist_at
    double keep_at
    double user_at          # TIME-WAIT, FIN-WAIT-2 and linger, set by Python
    double pace_at          # pacing: output resumes then
    double pace_next        # pacing: when the next segment is due
    double last_rcv         # last segment received (keepalive)
    uint32_t probes         # unanswered zero-window or keepalive probes
    uint32_t persist_shift  # persist timer backoff: doubles per probe until the window opens
    double keep_idle
    double keep_intvl
    uint32_t keep_cnt

    # counters
    uint64_t segs_in
    uint64_t segs_out
    uint64_t bytes_in       # payload bytes accepted in order
    uint64_t bytes_out      # payload bytes sent for the first time
    uint64_t retrans_segs
    uint64_t retrans_bytes
    uint64_t fast_recoveries
    uint64_t hystart_exits
    uint64_t timeouts
    uint64_t dup_segs       # data segments wholly duplicate
    uint64_t ooo_segs
    uint64_t ooo_dropped    # out-of-order data without a range to hold it
    uint64_t window_drops   # payload bytes beyond the window
    uint64_t dsacks_sent    # duplicates reported with D-SACK (RFC 2883)
