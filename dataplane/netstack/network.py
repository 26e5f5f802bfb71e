"""In-process overlay sockets: UDP, ICMP and TCP over the data plane, without a TUN or root.

Theory of operation: an ``OverlayNetwork`` is one overlay transport of a
``ThreadedDataPlane`` that owns a set of overlay addresses (IPv4 and/or IPv6), like a
network interface does. Applications in the same process get socket-like objects from
``net.udp_socket(port)``; the network does for them what a kernel's IP/UDP layers do,
with the per-packet work in ``_ip`` (nogil over whole PacketBatches):

* **send** (``sendto``): the payload is copied into a pending PacketBatch together with
  its addresses and ports. Whoever finds no flush in progress becomes the flusher: it
  takes all pending batches, has ``push_udp_each`` write UDP + IPv4/IPv6 headers with
  checksums in front of every payload in one nogil pass, and hands the batches to the
  driver (``incoming.put``). Senders arriving during a flush only append, so concurrent
  senders share batches (and the driver's per-batch cost) with no extra thread and no
  added latency for a lone sender. Payload slots keep 16 bytes of headroom in front of the
  IPv6 header and 32 behind the payload, so the core seals in place (WireGuard header,
  padding, tag) without copying.
* **receive**: one named demultiplexer thread reads the batches the data plane delivers
  (``outgoing``), answers ICMP/ICMPv6 echo requests for our addresses in place
  (``echo_reply``; the replies go back through ``incoming.put``), validates the rest as
  UDP (``parse_udp``: lengths, checksums, fragments), and appends each payload to the
  bounded receive queue of the socket bound to its destination address and port, or to
  the port on all our addresses (the two never coexist: binding either takes the port,
  as without SO_REUSEADDR). Replies to our own ``ping`` are matched here too.

* **TCP** (``create_connection`` / ``create_server``): one ``TcpStack`` (``tcp.py``, over
  the C engine ``_tcp.pyx``) holds every connection, under one lock. Each batch from the
  data plane goes to it first, on the demux thread: it takes the TCP segments (marking
  them consumed) and leaves the rest for the UDP and ICMP steps above; ICMP errors about
  our segments are handed back to it. The demux thread also sleeps to the stack's
  earliest timer and runs it (a timer that moves earlier interrupts the sleep), so idle
  connections cost nothing. What the stack wants sent, on any thread, goes into one
  ordered transmit queue that whichever thread finds it unowned hands to the driver after
  releasing the TCP lock (``_tcp_flush``), so segments leave in the order they were built
  and sealing runs outside the lock. The queue is bounded like Linux's TCP small queues
  (``TX_PIPELINE`` segments, ``TX_DRIVER_QUEUE`` batches in the driver): a connection
  beyond it holds its data until the queue drains, instead of filling local queues with
  its congestion window. The socket objects are ``tcpsocket.py``; ``fdbridge.py`` gives a
  connection a real descriptor.

Everything a peer sends is data, never an exception: each drop is counted by reason in
``drops`` (``no_socket``, ``bad_checksum``, ``truncated``, ``not_udp``, ``fragment``,
``not_our_address``, ``socket_queue_full``, ``input_queue_full``, ...). Application
mistakes raise what a socket would: ``OSError`` with ``EADDRINUSE``, ``EADDRNOTAVAIL``,
``EBADF``, ``EAFNOSUPPORT``, ``ENETUNREACH``, ``EINVAL``; ``ValueError`` for payloads the
overlay MTU cannot carry; ``TimeoutError`` (``socket.timeout``) from ``recvfrom``.

Locks: ``_bind_lock`` guards the port table (the demux thread only reads it, atomically
per lookup); ``_tx_lock`` guards the pending send batches and the flusher flag; each
socket's condition guards its receive queue; ``_stats_lock`` the counters. None is held
while waiting on another or while calling into the driver.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import math
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dataplane._batch import DEFAULT_HEADROOM, DEFAULT_TAILROOM, DropReason, PacketBatch
from dataplane.netstack import icmp
from dataplane.netstack._ip import (
    IPV4_HEADER,
    IPV6_HEADER,
    NOT_UDP,
    OK,
    SKIPPED,
    VERDICT_NAMES,
    UdpParse,
    echo_reply,
    pack_address,
    parse_udp,
    push_udp_each,
    unpack_address,
)
from dataplane.netstack.tcp import State, TcpLimits, TcpStack
from dataplane.netstack.tcpsocket import TcpListener, TcpSocket, os_error, parse_endpoint
from dataplane.queues import QueueClosed

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420
"""Overlay MTU: WireGuard's default (1500 - 80 bytes of outer IPv6 + UDP + WireGuard)."""

EPHEMERAL_PORTS = (32768, 60999)
"""Range ``udp_socket(0)`` picks from: Linux's default ``ip_local_port_range``."""

DEFAULT_RECV_QUEUE = 1024
"""Datagrams a socket holds before the demultiplexer drops (and counts) new ones."""

SEND_BATCH = 64
MAX_PENDING_BATCHES = 16
"""Send batches waiting for the sender thread before ``sendto`` blocks."""

SEND_BLOCK_TIMEOUT = 1.0
"""Longest a full backlog (or a full driver input queue) blocks before a datagram is
dropped and counted (``send_backlog_full`` / ``input_queue_full``)."""

POLL_INTERVAL = 0.5

TX_PIPELINE = 512
"""Segments TCP may have in our transmit queue before its connections hold data back,
as Linux's TCP small queues bound what a socket has in the qdisc: queued segments count
as in flight, so a sender that could queue its whole congestion window locally would
measure the queue as round-trip time."""

CLOSE_DRAIN = 1.0
"""Longest ``close`` waits for the driver to take our last batches (seconds)."""

TX_DRIVER_QUEUE = 2
"""Batches of ours the driver's input queue may hold before the flusher waits for it:
the driver's queue is deep for bursts of other transports, not for a TCP backlog."""
_MAPPED = b"\x00" * 10 + b"\xff\xff"
_UNSET: Any = object()

Address = tuple[str, int]


class OverlaySocket:
    """A UDP socket on the overlay; thread-safe. Get one from ``OverlayNetwork.udp_socket``."""

    def __init__(self, net: OverlayNetwork, bound: bytes | None, port: int, queue: int) -> None:
        self._net = net
        self._bound = bound
        self._port = port
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._maxlen = queue
        self._closed = False
        self._timeout: float | None = None
        self._peer: Address | None = None
        self.received = 0
        self.dropped = 0  # datagrams refused because the receive queue was full
        self.sent = 0  # datagrams handed to the network (guarded by its send lock)

    # -- socket surface -------------------------------------------------------------------

    def getsockname(self) -> Address:
        if self._bound is not None:
            return (unpack_address(self._bound), self._port)
        return (self._net._wildcard, self._port)

    @property
    def port(self) -> int:
        return self._port

    def settimeout(self, timeout: float | None) -> None:
        """Default timeout of ``recvfrom`` (None blocks, as with a socket)."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative or None")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def connect(self, address: Address) -> None:
        """Fix the peer: ``send`` goes there and only its datagrams are received (others
        are dropped as ``not_connected_peer``), as with a connected UDP socket."""
        host, port = address
        text = unpack_address(pack_address(host))
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"cannot connect to port {port!r}")
        self._net._source_for(self, pack_address(text))  # same checks as sending
        self._peer = (text, port)

    def getpeername(self) -> Address:
        if self._peer is None:
            raise OSError(errno.ENOTCONN, "overlay socket is not connected")
        return self._peer

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send one datagram to the connected peer."""
        if self._peer is None:
            raise OSError(errno.EDESTADDRREQ, "overlay socket is not connected")
        return self.sendto(data, self._peer)

    def sendto(self, data: bytes | bytearray | memoryview, address: Address) -> int:
        """Send one datagram to ``(overlay_ip, port)``; returns the payload size.

        Like UDP, delivery is not guaranteed: a full driver queue drops and counts.
        """
        if self._closed:
            raise OSError(errno.EBADF, "overlay socket is closed")
        return self._net._send(self, data, address)

    def recvfrom(self, timeout: float | None = _UNSET) -> tuple[bytes, Address]:
        """Next datagram and its source ``(ip, port)``; waits up to ``timeout`` seconds
        (default: ``gettimeout()``), then raises ``TimeoutError`` (``socket.timeout``)."""
        if timeout is _UNSET:
            timeout = self._timeout
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            if self._closed:
                raise OSError(errno.EBADF, "overlay socket is closed")
            if self._queue:
                return self._queue.popleft()
        raise TimeoutError("timed out")

    def recv(self, timeout: float | None = _UNSET) -> bytes:
        return self.recvfrom(timeout)[0]

    def pending(self) -> int:
        """Datagrams waiting in the receive queue."""
        return len(self._queue)

    def close(self) -> None:
        """Release the port and wake every blocked ``recvfrom`` (it raises EBADF)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._net._unbind(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> OverlaySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.getsockname()
        return f"<OverlaySocket {host}:{port}{' closed' if self._closed else ''}>"

    # -- demultiplexer side ---------------------------------------------------------------

    def _deliver(self, items: list[tuple[bytes, Address]]) -> int:
        """Queue what fits; returns how many were dropped."""
        with self._cond:
            if self._closed:
                return len(items)
            room = self._maxlen - len(self._queue)
            if room < len(items):
                dropped = len(items) - max(room, 0)
                items = items[: max(room, 0)]
            else:
                dropped = 0
            if items:
                self._queue.extend(items)
                self.received += len(items)
                self._cond.notify_all()
            self.dropped += dropped
            return dropped


class _SendBatch:
    """A PacketBatch of payloads plus the per-slot addresses and ports for push_udp_each."""

    __slots__ = ("addrs", "batch", "ports")

    def __init__(self, capacity: int, payload_max: int) -> None:
        # Payload at 16 + 48: the IPv6 header ends up 16 bytes into the slot (IPv4 36), the
        # room the core needs in front for the WireGuard header; 32 behind for pad + tag.
        self.batch = PacketBatch(
            capacity,
            mtu=payload_max,
            headroom=DEFAULT_HEADROOM + IPV6_HEADER,
            tailroom=DEFAULT_TAILROOM,
        )
        self.addrs = bytearray(32 * capacity)
        self.ports = memoryview(bytearray(4 * capacity)).cast("H")

    def add(self, data: Any, addrs: bytes, sport: int, dport: int) -> None:
        i = self.batch.append(data)
        self.addrs[32 * i : 32 * i + 32] = addrs
        self.ports[2 * i] = sport
        self.ports[2 * i + 1] = dport

    @property
    def full(self) -> bool:
        return self.batch.room == 0


class OverlayNetwork:
    """Our overlay addresses as one overlay transport of a driver; see the module docstring.

    ``addresses`` are IP address texts (an interface prefix like ``"100.64.0.1/32"`` is
    accepted and its address taken). ``mtu`` bounds the IP packets sent (the payload limit
    is ``mtu - 28`` over IPv4, ``mtu - 48`` over IPv6).
    """

    def __init__(
        self,
        driver: Any,
        addresses: Iterable[str],
        *,
        mtu: int = DEFAULT_MTU,
        recv_queue: int = DEFAULT_RECV_QUEUE,
        name: str = "overlay",
        tcp_limits: TcpLimits | None = None,
    ) -> None:
        packed: list[bytes] = []
        for text in addresses:
            try:
                addr = ipaddress.ip_interface(text).ip
            except (TypeError, ValueError) as e:
                raise ValueError(f"not an overlay IP address: {text!r}") from e
            if addr.is_unspecified or addr.is_multicast:
                raise ValueError(f"overlay address must be unicast, got {text!r}")
            p = pack_address(str(addr))
            if p in packed:
                raise ValueError(f"overlay address {text!r} given twice")
            packed.append(p)
        if not packed:
            raise ValueError("an overlay network needs at least one address")
        has_v6 = any(not p.startswith(_MAPPED) for p in packed)
        if not 68 <= mtu <= 0xFFFF:  # RFC 791 minimum
            raise ValueError(f"mtu {mtu} out of range 68..65535")
        if has_v6 and mtu < 1280:  # RFC 8200 §5
            raise ValueError(f"mtu {mtu} is below the IPv6 minimum of 1280")
        if recv_queue <= 0:
            raise ValueError(f"recv_queue must be positive, got {recv_queue}")
        self.mtu = mtu
        self.max_payload_v4 = mtu - IPV4_HEADER
        self.max_payload_v6 = mtu - IPV6_HEADER
        self.addresses = [unpack_address(p) for p in packed]
        self._ours = frozenset(packed)
        self._ours16 = b"".join(packed)
        self._src_v4 = next((p for p in packed if p.startswith(_MAPPED)), None)
        self._src_v6 = next((p for p in packed if not p.startswith(_MAPPED)), None)
        self._wildcard = "::" if has_v6 else "0.0.0.0"
        self._recv_queue = recv_queue

        self._bind_lock = threading.Lock()
        self._sockets: dict[tuple[bytes | None, int], OverlaySocket] = {}
        self._port_users: Counter[int] = Counter()
        self._rng = random.Random()

        self._tx_cond = threading.Condition()
        self._pending: list[_SendBatch] = []
        self._last_flush = 0

        self._stats_lock = threading.Lock()
        self.wakeups = 0  # of the demux thread (batches, timers, interruptions)
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

        self._ping_lock = threading.Lock()
        self._pings: dict[tuple[int, int], list[Any]] = {}
        self._ping_ident = self._rng.randrange(1, 0x10000)
        self._ping_seq = itertools.count(1)

        # TCP: one lock over the sans-I/O stack; what it sends goes through an ordered
        # queue that whoever holds _tx_flush_lock hands to the driver, outside the lock.
        self._stack = TcpStack(packed, mtu=mtu, limits=tcp_limits)
        self._tcp_lock = threading.Lock()
        self._tx_fifo: deque[PacketBatch] = deque()
        self._tx_queued = 0  # segments in _tx_fifo
        self._tx_flush_lock = threading.Lock()
        self._tcp_sleep_until = math.inf
        self._bridges: Any = None

        self._parse = UdpParse(128)
        self._demux_lock = threading.Lock()
        self._driver = driver
        self._closed = False
        self.handle = driver.new_overlay_transport()
        self.id: int = self.handle.id
        self._thread = driver.spawn(f"{name}{self.id}-demux", self._demux_loop)
        self._sender = driver.spawn(f"{name}{self.id}-send", self._send_loop)

    # -- sockets --------------------------------------------------------------------------

    def udp_socket(
        self, port: int = 0, address: str | None = None, *, recv_queue: int | None = None
    ) -> OverlaySocket:
        """A UDP socket bound to ``port`` (0: an ephemeral one) on ``address`` (None: all
        our addresses). Raises ``OSError(EADDRINUSE)`` if the binding is taken."""
        bound: bytes | None = None
        if address not in (None, "", "0.0.0.0", "::"):
            try:
                bound = pack_address(address)
            except ValueError as e:
                raise OSError(errno.EADDRNOTAVAIL, f"not an IP address: {address!r}") from e
            if bound not in self._ours:
                raise OSError(errno.EADDRNOTAVAIL, f"{address} is not one of {self.addresses}")
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise OverflowError(f"port must be 0-65535, got {port!r}")
        depth = self._recv_queue if recv_queue is None else recv_queue
        if depth <= 0:
            raise ValueError(f"recv_queue must be positive, got {depth}")
        with self._bind_lock:
            if self._closed:
                raise OSError(errno.EBADF, "overlay network is closed")
            if port == 0:
                port = self._ephemeral(bound)
            elif self._conflicts(bound, port):
                where = unpack_address(bound) if bound is not None else "*"
                raise OSError(errno.EADDRINUSE, f"overlay address {where}:{port} already in use")
            sock = OverlaySocket(self, bound, port, depth)
            self._sockets[(bound, port)] = sock
            self._port_users[port] += 1
        return sock

    def _conflicts(self, bound: bytes | None, port: int) -> bool:
        # A wildcard binding overlaps every specific one on the port, and vice versa.
        if bound is None:
            return self._port_users[port] > 0
        return (bound, port) in self._sockets or (None, port) in self._sockets

    def _ephemeral(self, bound: bytes | None) -> int:
        lo, hi = EPHEMERAL_PORTS
        span = hi - lo + 1
        start = self._rng.randrange(span)
        for k in range(span):
            port = lo + (start + k) % span
            if not self._conflicts(bound, port):
                return port
        raise OSError(errno.EADDRINUSE, "no free ephemeral overlay port")

    def _unbind(self, sock: OverlaySocket) -> None:
        with self._bind_lock:
            key = (sock._bound, sock._port)
            if self._sockets.get(key) is sock:
                del self._sockets[key]
                self._port_users[sock._port] -= 1
                if not self._port_users[sock._port]:
                    del self._port_users[sock._port]

    # -- sending --------------------------------------------------------------------------

    def _source_for(self, sock: OverlaySocket | None, dst: bytes) -> bytes:
        v4 = dst.startswith(_MAPPED)
        if sock is not None and sock._bound is not None:
            if sock._bound.startswith(_MAPPED) != v4:
                raise OSError(
                    errno.EAFNOSUPPORT,
                    f"socket bound to {unpack_address(sock._bound)} cannot send to "
                    f"{unpack_address(dst)}",
                )
            return sock._bound
        src = self._src_v4 if v4 else self._src_v6
        if src is None:
            raise OSError(
                errno.ENETUNREACH,
                f"no IPv{4 if v4 else 6} overlay address to send to {unpack_address(dst)} from",
            )
        return src

    def _send(self, sock: OverlaySocket, data: Any, address: Address) -> int:
        try:
            host, port = address
        except (TypeError, ValueError) as e:
            raise TypeError(f"address must be an (ip, port) pair, got {address!r}") from e
        dst = pack_address(host)
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise OverflowError(f"port must be 0-65535, got {port!r}")
        if port == 0:
            raise OSError(errno.EINVAL, "cannot send to port 0")
        src = self._source_for(sock, dst)
        n = memoryview(data).nbytes
        limit = self.max_payload_v4 if dst.startswith(_MAPPED) else self.max_payload_v6
        if n > limit:
            family = 4 if dst.startswith(_MAPPED) else 6
            raise ValueError(
                f"datagram of {n} bytes exceeds the {limit} bytes a UDP/IPv{family} packet "
                f"can carry within the overlay MTU of {self.mtu}"
            )
        self._submit(sock, data, src + dst, port)
        return n

    def _submit(self, sock: OverlaySocket, data: Any, addrs: bytes, dport: int) -> None:
        with self._tx_cond:
            while True:
                if self._closed:
                    raise OSError(errno.EBADF, "overlay network is closed")
                tx = self._pending[-1] if self._pending else None
                if tx is not None and not tx.full:
                    break
                if len(self._pending) < MAX_PENDING_BATCHES:
                    # Size new batches after the last flush: a lone request/response
                    # sender gets small ones (cheap to allocate), a bulk sender full ones.
                    cap = min(SEND_BATCH, max(4, 2 * self._last_flush))
                    tx = _SendBatch(cap, self.max_payload_v4)
                    self._pending.append(tx)
                    break
                # Backlog full: block like a socket whose send buffer is full.
                if not self._tx_cond.wait(SEND_BLOCK_TIMEOUT):
                    self._drop("send_backlog_full", 1)
                    return
            tx.add(data, addrs, sock._port, dport)
            sock.sent += 1
            if len(self._pending) == 1 and len(tx.batch) == 1:
                self._tx_cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._tx_cond:
                while not self._pending and not self._closed:
                    self._tx_cond.wait()
                if not self._pending:
                    return
                batches, self._pending = self._pending, []
                self._last_flush = sum(len(tx.batch) for tx in batches)
                self._tx_cond.notify_all()  # senders blocked on the backlog
            for tx in batches:
                alive = push_udp_each(tx.batch, tx.addrs, tx.ports)
                self._put(tx.batch, alive, block=True)

    def _put(self, batch: PacketBatch, alive: int, block: bool = False) -> None:
        n = len(batch)
        if alive < n:
            self._drop("build_failed", n - alive)
        port = self.handle.incoming
        if block and port.full() and not self._closed:
            # The driver is behind: wait for it (bounded) rather than drop what the
            # application handed us; the sender backlog then blocks sendto in turn.
            port.wait_for_room(SEND_BLOCK_TIMEOUT)
        ok = port.submit(batch)
        if ok:
            self._count("tx_packets", alive)
        else:
            self._drop("input_queue_full", alive)

    # -- ping -----------------------------------------------------------------------------

    def ping(self, address: str, *, data: bytes = b"", timeout: float = 1.0) -> float:
        """Send one ICMP/ICMPv6 echo request to ``address``; return the round trip in
        seconds, or raise ``TimeoutError`` when no valid reply came within ``timeout``."""
        dst = pack_address(address)
        src = self._source_for(None, dst)
        seq = next(self._ping_seq) & 0xFFFF
        key = (self._ping_ident, seq)
        packet = icmp.echo_request(src, dst, self._ping_ident, seq, data)
        if len(packet) > self.mtu:
            raise ValueError(f"ping of {len(packet)} bytes exceeds the overlay MTU {self.mtu}")
        done = threading.Event()
        with self._ping_lock:
            self._pings[key] = [done, dst, None]
        try:
            t0 = time.monotonic()
            batch = PacketBatch(1, mtu=self.mtu, headroom=DEFAULT_HEADROOM)
            batch.append(packet)
            self._put(batch, 1)
            if not done.wait(timeout):
                raise TimeoutError(f"no echo reply from {address} within {timeout}s")
            with self._ping_lock:
                arrived = self._pings[key][2]
            return float(arrived - t0)
        finally:
            with self._ping_lock:
                self._pings.pop(key, None)

    def _icmp(self, batch: PacketBatch, parse: UdpParse, now: float) -> int:
        """Wake the ``ping`` callers whose replies are in ``batch`` and tell the TCP stack
        of the errors about its segments; returns how many packets were either."""
        matched = errors = 0
        verdicts = parse.verdicts
        for i in range(len(batch)):
            if verdicts[i] != NOT_UDP:
                continue
            pkt = bytes(batch[i])
            error = icmp.parse_error(pkt)
            if error is not None:
                if error.local in self._ours:
                    with self._tcp_lock:
                        self._stack.icmp_error(
                            (error.local, error.local_port),
                            (error.remote, error.remote_port),
                            error.seq,
                            error.kind,
                            error.mtu,
                            now,
                        )
                        self._tcp_collect()
                    errors += 1
                continue
            if not self._pings:
                continue
            key = icmp.echo_reply_key(pkt)
            if key is None:
                continue
            with self._ping_lock:
                waiter = self._pings.get(key[:2])
                if waiter is None or waiter[1] != key[2] or waiter[0].is_set():
                    continue
                waiter[2] = now
                waiter[0].set()
            matched += 1
        if errors:
            self._tcp_flush()
        self._count("echo_replies_received", matched)
        self._count("icmp_errors_for_tcp", errors)
        return matched + errors

    # -- TCP ------------------------------------------------------------------------------

    def create_connection(
        self,
        address: Any,
        timeout: float | None = None,
        source_address: Any = None,
        *,
        fd: bool = False,
    ) -> Any:
        """Connect to ``(ip, port)`` on the overlay, as ``socket.create_connection``:
        returns a connected ``TcpSocket`` (or, with ``fd=True``, a real
        ``socket.socket``) whose timeout is ``timeout``. ``source_address`` is an
        ``(ip, port)`` of ours to connect from (port 0: ephemeral). Raises
        ``ConnectionRefusedError``, ``TimeoutError``, ``OSError`` (ENETUNREACH,
        EADDRNOTAVAIL, EADDRINUSE) as a kernel would."""
        remote = parse_endpoint(address)
        if remote[1] == 0:
            raise os_error(errno.EINVAL, "cannot connect to port 0")
        local = None
        if source_address is not None:
            src = parse_endpoint(source_address, "source_address")
            local = (None if src[0] in (_ANY4, _ANY6) else src[0], src[1])
        deadline = time.monotonic() + timeout if timeout is not None else None
        with self._tcp_call() as stack:
            if self._closed:
                raise os_error(errno.EBADF, "overlay network is closed")
            conn = stack.connect(remote, time.monotonic(), local)
            sock = TcpSocket(self, conn, timeout)
            while conn.state == State.SYN_SENT or conn.state == State.SYN_RECEIVED:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    stack.close(conn, time.monotonic(), abort=True)
                    raise TimeoutError(f"connect to {address!r} timed out")
                self._tcp_wait(sock._cond, remaining)
            if conn.error:
                err = conn.error
                stack.close(conn, time.monotonic())
                raise os_error(err, f"connect to {address!r}")
        if fd:
            return sock.socket()
        return sock

    def create_server(self, address: Any, *, backlog: int = 128) -> TcpListener:
        """A listening TCP socket on ``(ip, port)`` (ip "" / "0.0.0.0" / "::": all our
        addresses; port 0: an ephemeral one), as ``socket.create_server``."""
        host = address[0] if isinstance(address, tuple) and address else None
        if host in ("", None, "0.0.0.0", "::"):
            packed: bytes | None = None
            port = parse_endpoint(("0.0.0.0", address[1]))[1]
            family = socket.AF_INET6 if host == "::" or self._src_v4 is None else socket.AF_INET
        else:
            packed, port = parse_endpoint(address)
            if packed not in self._ours:
                raise os_error(errno.EADDRNOTAVAIL, f"{host} is not one of {self.addresses}")
            family = socket.AF_INET if packed.startswith(_MAPPED) else socket.AF_INET6
        with self._tcp_call() as stack:
            if self._closed:
                raise os_error(errno.EBADF, "overlay network is closed")
            if port == 0:
                port = stack.ephemeral_listen_port(packed)
            listener = stack.listen(packed, port, backlog)
            return TcpListener(self, listener, family)

    def tcp_stats(self) -> dict[str, Any]:
        """The TCP stack's counters, drops by reason, connections by state."""
        with self._tcp_lock:
            return self._stack.stats()

    @contextmanager
    def _tcp_call(self) -> Iterator[TcpStack]:
        """The TCP stack, locked; on the way out what it wants sent is queued (in order)
        and the waiters it names are woken, and after the lock is released the queue goes
        to the data plane."""
        with self._tcp_lock:
            self._stack.tx_room = self._tcp_room()
            try:
                yield self._stack
            finally:
                self._tcp_collect()
        self._tcp_flush()

    def _tcp_condition(self) -> threading.Condition:
        return threading.Condition(self._tcp_lock)

    def _tcp_wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on ``cond`` (TCP lock held) after sending what is queued: a caller that
        queued data and then waits for the peer must not sit on its own segments."""
        self._tcp_collect()
        if self._tx_fifo and not self._tx_flush_lock.locked():
            self._tcp_lock.release()
            try:
                self._tcp_flush()
            finally:
                self._tcp_lock.acquire()
            # The lock was let go: whatever we would wait for may have happened, and its
            # notification gone by. The caller looks again before waiting.
            return
        # Nothing of ours to send, or its holder sends it (it looks at the queue again
        # after releasing): wait, the lock held since the caller last looked.
        cond.wait(timeout)

    def _tcp_reschedule(self, conn: Any) -> None:
        self._stack.reschedule(conn)

    def _tcp_collect(self) -> None:
        # TCP lock held.
        stack = self._stack
        out = stack.take_output()
        if out:
            self._tx_fifo.extend(out)
            self._tx_queued += sum(len(b) for b in out)
        for obj in stack.take_changed():
            owner = obj.owner
            if owner is not None:
                owner._notify()
        due = stack.next_deadline()
        if due is not None and due < self._tcp_sleep_until:
            self._tcp_sleep_until = due
            self.handle.outgoing.interrupt()  # the demux thread sleeps too long

    def _tcp_flush(self) -> bool:
        """Hand the queued segments to the driver in order, one thread at a time; False
        when another thread was doing it (it sends ours too)."""
        fifo = self._tx_fifo
        while True:
            while fifo:
                if not self._tx_flush_lock.acquire(blocking=False):
                    return False  # the holder looks again after releasing
                try:
                    while True:
                        try:
                            batch = fifo.popleft()
                        except IndexError:
                            break
                        self._tx_queued -= len(batch)
                        port = self.handle.incoming
                        if port.pending() >= TX_DRIVER_QUEUE and not self._closed:
                            port.wait_below(TX_DRIVER_QUEUE, SEND_BLOCK_TIMEOUT)
                        self._put(batch, len(batch), block=True)
                finally:
                    self._tx_flush_lock.release()
            # The local queues drained: connections that held data back send on.
            if not self._stack.throttled:
                return True
            with self._tcp_lock:
                room = self._tcp_room()
                if room <= 0:
                    return True  # refilled meanwhile; its flusher resumes them
                self._stack.resume(time.monotonic(), room)
                self._tcp_collect()
            if not fifo:
                return True

    def _tcp_room(self) -> int:
        """Segments TCP may add to the local transmit queues now (see TX_PIPELINE)."""
        return TX_PIPELINE - self._tx_queued

    def _tcp_tick(self) -> float | None:
        """Run the TCP timers that are due; seconds until the next one, or None."""
        with self._tcp_lock:
            now = time.monotonic()
            stack = self._stack
            stack.tx_room = self._tcp_room()
            due = stack.next_deadline()
            if due is not None and due <= now:
                stack.timers(now)
                due = stack.next_deadline()
            if stack.throttled:
                stack.resume(now, self._tcp_room())
            self._tcp_sleep_until = -math.inf  # we are awake: collect must not interrupt us
            self._tcp_collect()
            self._tcp_sleep_until = due if due is not None else math.inf
        self._tcp_flush()
        if due is None:
            return None
        return max(0.0, due - time.monotonic())

    def _bridge(self, sock: TcpSocket) -> Any:
        from dataplane.netstack.fdbridge import FdBridge

        with self._tcp_lock:
            if self._bridges is None:
                self._bridges = FdBridge(self)
        return self._bridges.attach(sock)

    # -- receiving ------------------------------------------------------------------------

    def _demux_loop(self) -> None:
        out = self.handle.outgoing
        while True:
            timeout = self._tcp_tick()
            try:
                batch = out.get(timeout=timeout)
            except QueueClosed:
                return
            self.wakeups += 1
            if batch is None:
                if self._closed:
                    return
                continue
            self.demux(batch)

    def demux(self, batch: Any) -> None:
        """Handle one batch of IP packets from the data plane (the demux thread's step;
        public so tests can drive it; calls are serialised, the parse state is shared)."""
        with self._demux_lock:
            self._demux(batch)

    def _demux(self, batch: Any) -> None:
        if not isinstance(batch, PacketBatch):
            try:
                batch = PacketBatch.from_packets(batch, mtu=0xFFFF)
            except (TypeError, ValueError):
                self._drop("bad_batch", 1)
                return
        n = len(batch)
        if not n:
            return
        now = time.monotonic()
        self._count("rx_packets", n)
        dead_before = n - len(batch.alive())
        with self._tcp_lock:
            self._stack.tx_room = self._tcp_room()
            others = self._stack.input(batch, time.monotonic())
            self._tcp_collect()
        self._tcp_flush()
        if not others:
            if dead_before:
                self._drop("dropped_before", dead_before)
            return

        turned = echo_reply(batch, self._ours16)
        if turned:
            replies = PacketBatch(len(turned), mtu=self.mtu, headroom=DEFAULT_HEADROOM)
            for i in turned:
                if len(batch[i]) <= replies.max_packet:
                    replies.append(batch[i])
                batch.set_status(i, DropReason.CONSUMED)  # answered here, not UDP
            self._count("echo_requests_answered", len(replies))
            self._put(replies, len(replies))

        parse = self._parse = parse_udp(batch, self._parse)
        counts = parse.verdict_counts()
        drops: Counter[str] = Counter()
        for v, c in enumerate(counts):
            if c and v not in (OK, SKIPPED):
                drops[VERDICT_NAMES[v]] += c
        if dead_before:
            drops["dropped_before"] += dead_before
        if counts[NOT_UDP]:
            # Replies to our pings and ICMP errors about our TCP segments are not UDP,
            # but expected: not drops.
            drops["not_udp"] -= self._icmp(batch, parse, now)

        by_socket: dict[OverlaySocket, list[tuple[bytes, Address]]] = {}
        sockets = self._sockets
        ours = self._ours
        for dst, dport, payload, src in parse.datagrams():
            if dst not in ours:
                drops["not_our_address"] += 1
                continue
            sock = sockets.get((dst, dport)) or sockets.get((None, dport))
            if sock is None or sock._closed:
                drops["no_socket"] += 1
                continue
            if sock._peer is not None and sock._peer != src:
                drops["not_connected_peer"] += 1
                continue
            by_socket.setdefault(sock, []).append((payload, src))
        delivered = 0
        for sock, items in by_socket.items():
            lost = sock._deliver(items)
            delivered += len(items) - lost
            if lost:
                drops["socket_queue_full"] += lost
        with self._stats_lock:
            self.drops.update(+drops)
            self.counters["rx_datagrams"] += delivered

    # -- bookkeeping ----------------------------------------------------------------------

    def _drop(self, reason: str, n: int) -> None:
        if n:
            with self._stats_lock:
                self.drops[reason] += n

    def _count(self, what: str, n: int) -> None:
        if n:
            with self._stats_lock:
                self.counters[what] += n

    def close(self, timeout: float = 5.0) -> None:
        """Close every socket, leave the driver and join the demultiplexer thread."""
        with self._bind_lock:
            if self._closed:
                return
            self._closed = True
            socks = list(self._sockets.values())
        with self._tx_cond:
            self._closed = True
            self._tx_cond.notify_all()
        for s in socks:
            s.close()
        # TCP: every connection is reset (as when a process exits), every waiter wakes
        # with ConnectionAbortedError / EBADF, and the RSTs go out before we leave.
        with self._tcp_lock:
            self._stack.abort_all(time.monotonic())
            self._tcp_collect()
        self._tcp_flush()
        # Give the driver a moment to send what is queued (the RSTs above, a FIN just
        # closed): the caller usually closes the driver and its underlay next.
        self.handle.incoming.wait_below(1, min(timeout, CLOSE_DRAIN))
        if self._bridges is not None:
            self._bridges.close()
        self._driver.remove_overlay_transport(self.id)
        current = threading.current_thread()
        for t in (self._thread, self._sender):
            if t is not current:
                t.join(timeout)
                if t.is_alive():
                    raise RuntimeError(f"{t.name} did not stop within {timeout}s")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> OverlayNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OverlayNetwork {self.id} {self.addresses} sockets={len(self._sockets)}>"


_ANY4 = pack_address("0.0.0.0")
_ANY6 = pack_address("::")
