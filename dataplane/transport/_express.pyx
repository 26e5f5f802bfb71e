# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""The established-session path: TUN -> seal -> UDP and UDP -> open -> TUN without Python.

Theory of operation. On an idle machine a batch's trip through the Python core costs
hundreds of microseconds of cold interpreter per direction, most of a ping's round trip.
``Express`` does the per-packet work of a configured interface with established sessions
without the GIL, on the transport's own thread, and stays in C from one burst to the next:

* ``pump_outbound`` (TUN reader): read a burst, route every packet by destination
  (the outbound router's frozen LPM table), and if *every* alive packet goes to a peer
  with a usable sending session, seal them (``_crypto.seal_batch``, the counter drawn
  from the session's ``SendKey``) and ``sendmmsg`` them to the peer's endpoint.
* ``pump_inbound`` (UDP receiver): receive a burst, and if *every* alive datagram is a
  transport message for a receiving session we hold, open them (replay window shared
  with the device), unpad, check the inner source against AllowedIPs, route by
  destination (inbound table) and write them to the TUN device. An authenticated
  datagram from a new address moves the peer's endpoint here at once (roaming).

All or nothing: a burst with anything else in it (a handshake, a packet for a peer
without a session, a loopback route, an unknown receiver index...) is returned untouched
to the caller for the Python core, so the slow path keeps every rule it has. Python stays
the owner of all state: it installs sessions, endpoints and tables (``install``), and
the bookkeeping of what went through here (counters, WireGuard timers, rekeying) is
drained by the core (``drain``) when the pump returns because it fell due, a few
milliseconds later, off the packets' critical path (``transport/bookkeeping.py``).

Locks (PyThread locks, taken without the GIL): ``state`` guards the tables, the per-peer
tallies and the sessions' counters, windows and cipher contexts; the core holds it around
every call into the device, so a session is never used by both paths at once. ``udp`` and
``tun`` guard the transmit objects, which ``set_udp`` / ``set_tun`` replace (a rebind
closes the old socket only after swapping). The I/O itself happens outside ``state``, and
no lock is ever held while waiting for another.
"""

from cpython.pythread cimport (
    PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock, PyThread_acquire_lock,
    PyThread_release_lock, WAIT_LOCK,
)
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset

from dataplane._batch cimport (
    PacketBatch, unpack_endpoint,
    ST_OK, ST_NO_ROUTE, ST_ROUTE_DROP, ST_SOURCE_FILTER, ST_BAD_IP,
    ST_KEEPALIVE, ST_MAX,
)
from dataplane._crypto cimport (
    ReceiveKey, ReplayWindow, SendKey, open_batch, replay_t, seal_batch,
)
from dataplane._ident cimport unpad_batch
from dataplane._libcrypto cimport EVP_CIPHER_CTX
from dataplane.routing._lpm cimport LpmTable, LPM_NONE
from dataplane.transport._sys cimport AF_INET6, sockaddr_in6
from dataplane.transport._tun cimport TunIO, TUN_ERRNO_SLOTS
from dataplane.transport._udp cimport BatchIO, UDP_ERRNO_SLOTS, endpoint_to_sockaddr


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef enum:
    MESSAGE_TRANSPORT_DATA = 4
    MIN_TRANSPORT = 32          # header + tag
    TRANSPORT_OVERHEAD = 32
    ACTION_SHIFT = 28           # routing/_route.pyx: value = kind << 28 | id
    ID_MASK = (1 << 28) - 1
    KIND_PEER = 0               # outbound: a peer; inbound: an overlay transport
    KIND_DROP = 2
    MAX_BATCH = 1024


cdef inline double monotonic() noexcept nogil:
    # Same clock as time.monotonic(), which the driver and the device's timestamps use.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


# One peer: its sending session (if usable) and what went through here since the last drain.
cdef struct peer_t:
    bint can_send
    EVP_CIPHER_CTX* send_ctx
    uint64_t* counter           # the SendKey's own counter
    uint64_t counter_limit      # seal nothing at or past this (the device rekeys first)
    uint32_t remote_index
    double send_until           # monotonic: the session is too old from here on
    sockaddr_in6 sa
    int salen
    uint64_t tx_packets, tx_bytes
    uint64_t rx_data, rx_keepalives, rx_bytes
    uint8_t rx_addr[16]         # source endpoint of the last authenticated datagram
    uint16_t rx_port
    double last_tx, last_rx     # monotonic: which came last decides the timer hooks' order
    bint touched


# One receiving session, in an open-addressing table keyed by our receiver index.
cdef struct recv_t:
    uint32_t index
    int32_t peer                # -1: empty slot
    EVP_CIPHER_CTX* ctx
    replay_t* window
    double until


cdef class Express:
    """The GIL-free path for established sessions of one TUN overlay and one UDP underlay."""

    cdef PyThread_type_lock state_lock, udp_lock, tun_lock
    cdef peer_t* peers
    cdef Py_ssize_t npeers
    cdef recv_t* recv
    cdef Py_ssize_t recv_mask
    cdef LpmTable out_table, in_table, src_table
    cdef readonly int overlay_id
    cdef readonly Py_ssize_t mtu
    cdef readonly bint enabled
    cdef BatchIO udp_tx
    cdef TunIO tun_tx
    cdef list keep              # the key/window objects whose C state the tables point to
    cdef bint dirty             # something to drain
    cdef uint64_t drops[ST_MAX]
    cdef unsigned long long udp_errs[UDP_ERRNO_SLOTS]
    cdef unsigned long long tun_errs[TUN_ERRNO_SLOTS]
    cdef readonly unsigned long long outbound_batches, inbound_batches
    cdef readonly unsigned long long outbound_declined, inbound_declined
    cdef unsigned long long delivered
    cdef int udp_fam            # address family of udp_tx's socket

    def __cinit__(self):
        self.state_lock = PyThread_allocate_lock()
        self.udp_lock = PyThread_allocate_lock()
        self.tun_lock = PyThread_allocate_lock()
        if self.state_lock == NULL or self.udp_lock == NULL or self.tun_lock == NULL:
            raise MemoryError()
        self.peers = NULL
        self.npeers = 0
        self.recv = NULL
        self.recv_mask = -1
        self.keep = []
        self.overlay_id = -1

    def __dealloc__(self):
        free(self.peers)
        free(self.recv)
        if self.state_lock != NULL:
            PyThread_free_lock(self.state_lock)
        if self.udp_lock != NULL:
            PyThread_free_lock(self.udp_lock)
        if self.tun_lock != NULL:
            PyThread_free_lock(self.tun_lock)

    # -- the state lock, for the core ---------------------------------------------------------

    def acquire(self):
        """Take the state lock (waiting without the GIL). Not re-entrant: the core counts."""
        with nogil:
            PyThread_acquire_lock(self.state_lock, WAIT_LOCK)

    def release(self):
        PyThread_release_lock(self.state_lock)

    def disable(self):
        """Decline every batch from now on (until the next ``install``): for teardown."""
        with nogil:
            PyThread_acquire_lock(self.state_lock, WAIT_LOCK)
        self.enabled = False
        PyThread_release_lock(self.state_lock)

    # -- transmit objects --------------------------------------------------------------------

    def set_udp(self, int fd, int family, unsigned int capacity=128):
        """Send from now on through ``fd`` (a rebind: call before closing the old one)."""
        io = BatchIO(fd, family, capacity) if fd >= 0 else None
        with nogil:
            PyThread_acquire_lock(self.udp_lock, WAIT_LOCK)
        self.udp_tx = io
        if fd >= 0:
            self.udp_fam = family
        PyThread_release_lock(self.udp_lock)

    def set_tun(self, int fd, bint vnet_hdr):
        """Write to the TUN device ``fd`` (-1: stop writing; call before closing it)."""
        io = TunIO(fd, -1, vnet_hdr) if fd >= 0 else None
        with nogil:
            PyThread_acquire_lock(self.tun_lock, WAIT_LOCK)
        self.tun_tx = io
        PyThread_release_lock(self.tun_lock)

    # -- configuration (the caller holds the state lock) ----------------------------------------

    def install(self, bint enabled, int overlay_id, Py_ssize_t mtu, LpmTable out_table,
                LpmTable in_table, LpmTable src_table, list senders, list receivers):
        """Replace every table. Called by the core with the state lock held.

        ``senders``: (peer, SendKey, remote index, send_until, counter_limit, addr16,
        port) of the peers that can send now. ``receivers``: (our index, peer,
        ReceiveKey, ReplayWindow, until). ``enabled`` False makes every batch decline.
        """
        cdef Py_ssize_t n = 0, i, size, slot
        cdef peer_t* p
        cdef recv_t* r
        cdef const uint8_t[::1] addr
        cdef SendKey sk
        cdef ReceiveKey rk
        cdef ReplayWindow w
        cdef uint32_t index
        for s in senders:
            n = max(n, <Py_ssize_t>s[0] + 1)
        for s in receivers:
            n = max(n, <Py_ssize_t>s[1] + 1)
        if n > self.npeers:
            p = <peer_t*>realloc(self.peers, n * sizeof(peer_t))
            if p == NULL:
                raise MemoryError()
            memset(p + self.npeers, 0, (n - self.npeers) * sizeof(peer_t))
            self.peers = p
            self.npeers = n
        for i in range(self.npeers):
            self.peers[i].can_send = False
        keep = []
        for peer, key, remote, until, limit, addr16, port in senders:
            sk = key
            addr = addr16
            p = &self.peers[<Py_ssize_t>peer]
            p.salen = endpoint_to_sockaddr(self.udp_family(), &addr[0], port, &p.sa)
            if p.salen == 0:
                continue
            p.can_send = True
            p.send_ctx = sk.ctx
            p.counter = &sk.counter
            p.counter_limit = limit
            p.remote_index = remote
            p.send_until = until
            keep.append(sk)
        size = 8
        while size < 2 * len(receivers) + 2:
            size *= 2
        r = <recv_t*>calloc(size, sizeof(recv_t))
        if r == NULL:
            raise MemoryError()
        for i in range(size):
            r[i].peer = -1
        for index, peer, key, window, until in receivers:
            rk = key
            w = window
            slot = index & (size - 1)
            while r[slot].peer >= 0:
                slot = (slot + 1) & (size - 1)
            r[slot].index = index
            r[slot].peer = peer
            r[slot].ctx = rk.ctx
            r[slot].window = &w.w
            r[slot].until = until
            keep.append(rk)
            keep.append(w)
        free(self.recv)
        self.recv = r
        self.recv_mask = size - 1
        self.out_table = out_table
        self.in_table = in_table
        self.src_table = src_table
        self.overlay_id = overlay_id
        self.mtu = mtu
        self.enabled = enabled and self.udp_tx is not None and self.tun_tx is not None
        self.keep = keep

    cdef int udp_family(self) noexcept nogil:
        return self.udp_fam if self.udp_fam else AF_INET6

    def drain(self):
        """What went through since the last call (the caller holds the state lock):
        ``(peers, drops, udp_errors, tun_errors, delivered)`` with ``peers`` a list of
        (peer, tx_packets, tx_bytes, rx_data, rx_keepalives, rx_bytes, source endpoint of
        the last datagram or None, whether it received after it last sent), the next
        three dicts reason/errno -> count, and the packets written to the TUN device.
        Resets the counts."""
        cdef Py_ssize_t i
        cdef peer_t* p
        peers = []
        if self.dirty:
            for i in range(self.npeers):
                p = &self.peers[i]
                if not p.touched:
                    continue
                ep = None
                if p.rx_data or p.rx_keepalives:
                    ep = unpack_endpoint(p.rx_addr, p.rx_port)
                peers.append((i, p.tx_packets, p.tx_bytes, p.rx_data, p.rx_keepalives,
                              p.rx_bytes, ep, p.last_rx > p.last_tx))
                p.tx_packets = p.tx_bytes = p.rx_data = p.rx_keepalives = p.rx_bytes = 0
                p.touched = False
        drops = {i: self.drops[i] for i in range(ST_MAX) if self.drops[i]}
        udp = {i: self.udp_errs[i] for i in range(UDP_ERRNO_SLOTS) if self.udp_errs[i]}
        tun = {i: self.tun_errs[i] for i in range(TUN_ERRNO_SLOTS) if self.tun_errs[i]}
        memset(self.drops, 0, sizeof(self.drops))
        memset(self.udp_errs, 0, sizeof(self.udp_errs))
        memset(self.tun_errs, 0, sizeof(self.tun_errs))
        delivered = self.delivered
        self.delivered = 0
        self.dirty = False
        return peers, drops, udp, tun, delivered

    @property
    def pending(self):
        """Whether ``drain`` has anything to report."""
        return self.dirty

    # -- the two directions ------------------------------------------------------------------

    def pump_outbound(self, TunIO tun not None, PacketBatch batch not None, double timeout,
                      double due=0.0, double delay=0.005):
        """Read bursts from ``tun`` and send each whose every alive packet has an established
        session, staying in C from one burst to the next. Returns ``(n, due)``:

        * ``n > 0``: ``batch`` holds a burst the path declined, as read, for the core;
        * ``n == 0``: the wait ended (``timeout`` s without a packet, the TUN's wake-up fd)
          or the bookkeeping fell due; ``n < 0``: ``-errno`` of a failed read.

        ``due`` is when the bookkeeping of handled bursts is owed (0: nothing owed); the
        first handled burst sets it ``delay`` s ahead, and the call returns once it passed.
        """
        return self._pump(tun, None, batch, timeout, due, delay)

    def pump_inbound(self, BatchIO udp not None, PacketBatch batch not None, double timeout,
                     double due=0.0, double delay=0.005):
        """Receive bursts from ``udp`` and deliver each whose every alive datagram is
        transport data of a session we hold; the rest as ``pump_outbound``."""
        return self._pump(None, udp, batch, timeout, due, delay)

    cdef tuple _pump(self, TunIO tun, BatchIO udp, PacketBatch batch, double timeout,
                     double due, double delay):
        # From the TUN device (``tun``) or the UDP socket (``udp``), whichever is given.
        cdef int err = 0, ms = 0
        cdef Py_ssize_t n = 0
        cdef bint outbound = tun is not None
        if batch.capacity > MAX_BATCH:
            raise ValueError(f"batches of at most {MAX_BATCH} packets")
        # The calling thread owns the batch and the object it reads; tables and sessions are
        # used under the state lock, the shared transmit objects under theirs.
        with nogil:
            while True:
                n = 0
                if not self._wait_ms(timeout, due, &ms):
                    break
                if outbound:
                    n = tun.read_c(batch, ms, &err)
                    if n <= 0 or not self._outbound(batch):
                        break
                else:
                    n = udp.recv_c(batch, ms, &err)
                    if n <= 0 or not self._inbound(batch):
                        break
                if due <= 0:
                    due = monotonic() + delay
        if n == 0 and err:
            return -err, due
        return n, due

    cdef bint _wait_ms(self, double timeout, double due, int* ms) noexcept nogil:
        # How long the next wait may last (ms, rounded up, -1: forever); False when the
        # bookkeeping is due now.
        cdef double left
        if due > 0:
            left = due - monotonic()
            if left <= 0:
                ms[0] = 0
                return False
            if timeout < 0 or left < timeout:
                timeout = left
        ms[0] = -1 if timeout < 0 else <int>(timeout * 1000 + 0.999)
        return True

    cdef bint _outbound(self, PacketBatch batch) noexcept nogil:
        cdef Py_ssize_t i, k, count = batch.count, npeer = 0
        cdef int32_t v, peer
        cdef int bad
        cdef peer_t* p
        cdef double now
        cdef int32_t want[MAX_BATCH]
        cdef uint32_t need[MAX_BATCH]
        cdef sockaddr_in6 sa[MAX_BATCH]
        cdef int salen[MAX_BATCH]
        cdef uint8_t alive[MAX_BATCH]
        if batch.first_bad_bounds() >= 0:
            return False
        PyThread_acquire_lock(self.state_lock, WAIT_LOCK)
        if not self.enabled:
            PyThread_release_lock(self.state_lock)
            return False
        now = monotonic()
        # Pass 1, nothing changed yet: every alive packet must route to a usable session.
        for i in range(count):
            alive[i] = batch.status[i] == ST_OK
            if not alive[i]:
                continue
            bad = 0
            v = self.out_table.lookup_packet(batch.pkt_ptr(i), batch.lengths[i], False, &bad)
            if bad or v == LPM_NONE or (v >> ACTION_SHIFT) != KIND_PEER:
                break
            peer = v & ID_MASK
            if peer >= self.npeers or not self.peers[peer].can_send:
                break
            p = &self.peers[peer]
            if now >= p.send_until:
                break
            batch.peers[i] = peer
            for k in range(npeer):
                if want[k] == peer:
                    need[k] += 1
                    break
            else:
                want[npeer] = peer
                need[npeer] = 1
                npeer += 1
        else:
            for k in range(npeer):
                p = &self.peers[want[k]]
                if p.counter[0] + need[k] >= p.counter_limit:
                    break
            else:
                # Pass 2: seal, per peer, with the counters of its session.
                for k in range(npeer):
                    p = &self.peers[want[k]]
                    p.counter[0] = seal_batch(p.send_ctx, batch, p.remote_index,
                                              p.counter[0], self.mtu, want[k])
                    sa[k] = p.sa
                    salen[k] = p.salen
                # What was sealed counts as sent (as in the core); a datagram the socket
                # refuses is counted per errno as well.
                for i in range(count):
                    if not alive[i]:
                        continue
                    if batch.status[i] != ST_OK:
                        self.drops[batch.status[i]] += 1
                        continue
                    p = &self.peers[batch.peers[i]]
                    p.tx_packets += 1
                    p.tx_bytes += batch.lengths[i]
                    p.last_tx = now
                    p.touched = True
                self.dirty = True
                self.outbound_batches += 1
                PyThread_release_lock(self.state_lock)
                self._send(batch, want, sa, salen, npeer)
                batch.count = 0
                return True
        self.outbound_declined += 1
        PyThread_release_lock(self.state_lock)
        return False

    cdef void _send(self, PacketBatch batch, int32_t* want, sockaddr_in6* sa, int* salen,
                    Py_ssize_t npeer) noexcept nogil:
        cdef Py_ssize_t k
        cdef unsigned long long errs[UDP_ERRNO_SLOTS]
        memset(errs, 0, sizeof(errs))
        PyThread_acquire_lock(self.udp_lock, WAIT_LOCK)
        for k in range(npeer):
            if self.udp_tx is None:
                errs[0] += 1  # detached meanwhile (shutdown): counted, not sent
                continue
            self.udp_tx.send_c(batch, &sa[k], salen[k], want[k], errs)
        PyThread_release_lock(self.udp_lock)
        self._add_errors(self.udp_errs, errs, UDP_ERRNO_SLOTS)

    cdef void _add_errors(self, unsigned long long* total, unsigned long long* errs,
                          Py_ssize_t slots) noexcept nogil:
        # Errors are rare: the state lock is taken again only when there are some.
        cdef Py_ssize_t i
        for i in range(slots):
            if errs[i]:
                break
        else:
            return
        PyThread_acquire_lock(self.state_lock, WAIT_LOCK)
        for i in range(slots):
            total[i] += errs[i]
        self.dirty = True
        PyThread_release_lock(self.state_lock)

    cdef bint _inbound(self, PacketBatch batch) noexcept nogil:
        cdef Py_ssize_t i, k, count = batch.count, nsess = 0
        cdef const uint8_t* d
        cdef uint32_t index
        cdef Py_ssize_t slot
        cdef double now
        cdef recv_t* r
        cdef recv_t* sess[MAX_BATCH]
        cdef int32_t v, peer
        cdef int bad
        cdef peer_t* p
        cdef uint8_t before[MAX_BATCH]
        cdef unsigned long long errs[TUN_ERRNO_SLOTS]
        cdef Py_ssize_t alive = 0
        cdef sockaddr_in6 roam_sa
        cdef int salen
        if batch.first_bad_bounds() >= 0:
            return False
        PyThread_acquire_lock(self.state_lock, WAIT_LOCK)
        if not self.enabled or self.recv == NULL:
            PyThread_release_lock(self.state_lock)
            return False
        now = monotonic()
        # Pass 1, nothing changed yet: every alive datagram must be transport data for a
        # receiving session we hold that is not too old.
        for i in range(count):
            before[i] = batch.status[i]
            if batch.status[i] != ST_OK:
                continue
            if batch.lengths[i] < MIN_TRANSPORT:
                break
            d = batch.pkt_ptr(i)
            if d[0] != MESSAGE_TRANSPORT_DATA or d[1] | d[2] | d[3]:
                break
            index = load_le32(d + 4)
            slot = index & self.recv_mask
            r = NULL
            while self.recv[slot].peer >= 0:
                if self.recv[slot].index == index:
                    r = &self.recv[slot]
                    break
                slot = (slot + 1) & self.recv_mask
            if r == NULL or now >= r.until:
                break
            for k in range(nsess):
                if sess[k] == r:
                    break
            else:
                sess[nsess] = r
                nsess += 1
        else:
            # Pass 2: open per session (authenticates, then moves the replay window).
            for k in range(nsess):
                open_batch(sess[k].ctx, sess[k].window, batch, sess[k].index, sess[k].peer)
            for i in range(count):
                if before[i] != ST_OK:
                    continue
                if batch.status[i] != ST_OK:
                    self.drops[batch.status[i]] += 1
                    continue
                p = &self.peers[batch.peers[i]]
                p.touched = True
                p.last_rx = now
                p.rx_bytes += batch.lengths[i] + TRANSPORT_OVERHEAD
                memcpy(p.rx_addr, &batch.ep_addr[i, 0], 16)
                p.rx_port = batch.ep_port[i]
                if p.rx_port != 0:
                    # Roaming takes effect at once, as in the device: a reply written a
                    # moment from now must already go to where the peer now is.
                    salen = endpoint_to_sockaddr(self.udp_family(), p.rx_addr, p.rx_port,
                                                 &roam_sa)
                    if salen and (salen != p.salen or memcmp(&roam_sa, &p.sa, salen) != 0):
                        p.sa = roam_sa
                        p.salen = salen
                if batch.lengths[i] == 0:
                    p.rx_keepalives += 1
                    batch.status[i] = ST_KEEPALIVE
                else:
                    p.rx_data += 1
            unpad_batch(batch)
            # AllowedIPs of the decrypting peer, then the inbound route (our interface).
            for i in range(count):
                if before[i] != ST_OK or batch.status[i] != ST_OK:
                    if before[i] == ST_OK and batch.status[i] == ST_BAD_IP:
                        self.drops[ST_BAD_IP] += 1
                    continue
                bad = 0
                peer = self.src_table.lookup_packet(batch.pkt_ptr(i), batch.lengths[i], True,
                                                    &bad)
                if bad:
                    batch.status[i] = ST_BAD_IP
                elif peer != batch.peers[i]:
                    batch.status[i] = ST_SOURCE_FILTER
                else:
                    v = self.in_table.lookup_packet(batch.pkt_ptr(i), batch.lengths[i],
                                                    False, &bad)
                    if bad:
                        batch.status[i] = ST_BAD_IP
                    elif v == LPM_NONE:
                        batch.status[i] = ST_NO_ROUTE
                    elif (v >> ACTION_SHIFT) == KIND_DROP:
                        batch.status[i] = ST_ROUTE_DROP
                    elif (v >> ACTION_SHIFT) != KIND_PEER or (v & ID_MASK) != self.overlay_id:
                        batch.status[i] = ST_NO_ROUTE
                if batch.status[i] != ST_OK:
                    self.drops[batch.status[i]] += 1
                else:
                    alive += 1
            self.delivered += alive
            self.dirty = True
            self.inbound_batches += 1
            PyThread_release_lock(self.state_lock)
            memset(errs, 0, sizeof(errs))
            if alive:
                PyThread_acquire_lock(self.tun_lock, WAIT_LOCK)
                if self.tun_tx is not None:
                    self.tun_tx.write_c(batch, errs)
                else:
                    errs[0] += alive
                PyThread_release_lock(self.tun_lock)
                self._add_errors(self.tun_errs, errs, TUN_ERRNO_SLOTS)
            batch.count = 0
            return True
        self.inbound_declined += 1
        PyThread_release_lock(self.state_lock)
        return False
