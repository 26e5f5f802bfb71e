"""The UDP underlay: a batched socket, and the transport that joins it to the driver.

``UdpSocket`` is usable on its own (no threads): ``recv_batch`` fills a PacketBatch with
one ``recvmmsg``, ``send_batch`` empties one with ``sendmmsg``. ``UdpTransport`` registers
as an underlay transport of a ``ThreadedDataPlane``: a named receiver thread moves
socket -> driver input, and the driver sends its output on the socket itself, inline in
its UPDATE phase (``send_inline``: no thread hand-off; a named sender thread remains for
batches queued before that was set up). ``close()`` wakes the receiver through an
eventfd, so shutdown does not wait for traffic.

Address families: binding to an IPv4 address gives an IPv4 socket; binding to an IPv6
address gives an IPv6 socket, dual-stack for ``::`` (IPv4 peers appear as plain dotted
quads in endpoints). Errors from the network (EAGAIN, ENOBUFS, ECONNREFUSED after an ICMP
error, ...) are counted in ``errors`` by errno name and never stop the transport. Datagrams
the kernel drops because the receive buffer is full are counted too
(``UdpSocket.rx_kernel_dropped``, from SO_RXQ_OVFL), so such loss is never silent.
Receiving uses UDP GRO where the kernel has it (see ``_udp.pyx``), sending UDP GSO.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import logging
import os
import socket
import threading
from collections import Counter
from typing import Any

from dataplane._batch import PacketBatch
from dataplane.queues import QueueClosed
from dataplane.results import Endpoint
from dataplane.transport._udp import BatchIO
from dataplane.transport.bookkeeping import ACCOUNT_DELAY, bookkeeping_due, hand_over

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 8 << 20
# Receive slots must hold a full sealed datagram: MTU 1420 + 32 bytes of WireGuard overhead
# fits the default PacketBatch slot (1472 B, 16 B headroom).
RECV_POLL_INTERVAL = 0.5
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
UDP_GRO = getattr(socket, "UDP_GRO", 104)


def _errname(code: int) -> str:
    return errno_mod.errorcode.get(code, str(code))


class UdpSocket:
    """A bound UDP socket with batched, GIL-free receive and send."""

    def __init__(
        self,
        bind: Endpoint = ("127.0.0.1", 0),
        *,
        capacity: int = 128,
        buffer_bytes: int = DEFAULT_BUFFER,
        gro: bool = True,
    ) -> None:
        host, port = bind
        try:
            addr = ipaddress.ip_address(host)
        except ValueError as e:
            raise ValueError(f"bind address must be an IP address, got {host!r}") from e
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                self.sock.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr.is_unspecified else 1
                )
            self._set_buffers(buffer_bytes)
            self._enable_drop_count()
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.capacity = capacity
        self.io = BatchIO(self.sock.fileno(), family, capacity, self._wake_fd)
        if gro:
            self._enable_gro()
        self.errors: Counter[str] = Counter()
        self._closed = False

    def _set_buffers(self, size: int) -> None:
        # SO_*BUFFORCE lifts the net.core.[rw]mem_max cap for a privileged process;
        # otherwise take what the kernel allows.
        for force, plain in (
            (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
            (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
        ):
            try:
                if force is None:
                    raise PermissionError
                self.sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, size)

    def _enable_drop_count(self) -> None:
        # Every received datagram then carries the socket's cumulative drop count; BatchIO
        # reads it. Set before bind, so every datagram the socket queues carries it.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError as e:
            log.debug("SO_RXQ_OVFL unavailable, kernel receive drops not counted: %s", e)

    def _enable_gro(self) -> None:
        # Runs of equal-sized datagrams from one sender (what a GSO send makes) then come
        # up as one message; BatchIO cuts them apart. Linux >= 5.0.
        try:
            self.sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError as e:
            log.debug("UDP_GRO unavailable, datagrams are received one by one: %s", e)
            return
        self.io.enable_gro()

    @property
    def rx_kernel_dropped(self) -> int:
        """Datagrams the kernel dropped at this socket, mostly for a full receive buffer.

        Known once a later datagram arrives: each one carries the count as of its arrival.
        """
        return self.io.rx_kernel_dropped

    @property
    def address(self) -> Endpoint:
        host, port = self.sock.getsockname()[:2]
        return (host, port)

    @property
    def closed(self) -> bool:
        return self._closed

    def recv_batch(
        self, batch: PacketBatch | None = None, timeout: float | None = None
    ) -> PacketBatch:
        """Append the datagrams that are ready, waiting up to ``timeout`` s for the first.

        Returns the batch (a new one if none is given); it may be empty on timeout or
        after ``wake()``.
        """
        if batch is None:
            batch = PacketBatch(self.capacity)
        n = self.io.recv(batch, -1.0 if timeout is None else timeout)
        if n < 0:
            self.errors[_errname(-n)] += 1
        return batch

    def send_batch(self, batch: PacketBatch, endpoint: Endpoint | None = None) -> int:
        """Send each alive packet of ``batch`` to ``endpoint`` (or to its slot's endpoint)."""
        sent, errs = self.io.send(batch, endpoint)
        for code in errs:
            self.errors[_errname(code)] += 1
        return sent

    def sendto(self, data: bytes, endpoint: Endpoint) -> None:
        """Send one datagram (control-path convenience)."""
        self.send_batch(PacketBatch.from_packets([data]), endpoint)

    def wake(self) -> None:
        """Make a blocked ``recv_batch`` return now."""
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake()
        self.sock.close()
        os.close(self._wake_fd)

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.address[0]}:{self.address[1]}"
        return f"<UdpSocket {state}>"


class UdpTransport:
    """An underlay transport of a ThreadedDataPlane over one ``UdpSocket``.

    The socket is read under ``_rx_lock`` and written under ``_tx_lock``, so ``rebind``
    can swap in a socket on another port and close the old one once neither the receiver
    nor a sender uses it (and an inline send from the driver never overlaps a queued one).
    ``mtu`` (the inner MTU) sizes the receive slots: a slot from the headroom on holds
    ``mtu`` + 32 bytes, a full sealed datagram (header + tag; no padding past the MTU).
    """

    def __init__(
        self,
        driver: Any,
        bind: Endpoint = ("127.0.0.1", 0),
        *,
        capacity: int = 128,
        buffer_bytes: int = DEFAULT_BUFFER,
        mtu: int = 1420,
    ) -> None:
        self._host = bind[0]
        self._capacity = capacity
        self._buffer_bytes = buffer_bytes
        self._mtu = mtu
        self._fwmark = 0
        self.socket = UdpSocket(bind, capacity=capacity, buffer_bytes=buffer_bytes)
        self._driver = driver
        self.handle = driver.new_underlay_transport()
        self.id: int = self.handle.id
        self._stop = threading.Event()
        self._rx_lock = threading.Lock()
        self._kernel_dropped_before = 0
        self._tx_lock = threading.Lock()
        self.dropped_input_batches = 0
        #: the established-session path (``transport._express.Express``): ``attach_express``
        self.express: Any = None
        self._threads = [
            driver.spawn(f"udp{self.id}-rx", self._receive_loop),
            driver.spawn(f"udp{self.id}-tx", self._send_loop),
        ]
        # The driver sends on the socket itself (one sendmmsg per batch, GIL released): a
        # thread hand-off less per batch. The send thread stays for queued items only.
        self.handle.send_inline(self._send_now)

    @property
    def address(self) -> Endpoint:
        return self.socket.address

    @property
    def rx_kernel_dropped(self) -> int:
        """Datagrams the kernel dropped for a full receive buffer, over every socket this
        transport has had (``rebind`` starts a new one)."""
        return self._kernel_dropped_before + self.socket.rx_kernel_dropped

    @property
    def port(self) -> int:
        return self.socket.address[1]

    def rebind(self, port: int) -> int:
        """Move to ``port`` (0: any) on the same address; keeps the transport id.

        An OSError (EADDRINUSE...) leaves the old socket in place.
        """
        new = UdpSocket(
            (self._host, port), capacity=self._capacity, buffer_bytes=self._buffer_bytes
        )
        if self._fwmark:
            _set_mark(new, self._fwmark)
        old, self.socket = self.socket, new
        old.wake()
        if self.express is not None:
            self.express.set_udp(new.sock.fileno(), new.sock.family, self._capacity)
        with self._rx_lock, self._tx_lock:
            self._kernel_dropped_before += old.rx_kernel_dropped
            old.close()
        log.info("listening on UDP port %d", self.port)
        return self.port

    def set_fwmark(self, mark: int) -> None:
        """Mark outgoing datagrams (SO_MARK, needs CAP_NET_ADMIN); kept across ``rebind``."""
        self._fwmark = mark
        try:
            _set_mark(self.socket, mark)
        except OSError as e:
            log.warning("cannot set fwmark %#x: %s", mark, e.strerror)

    def _receive_loop(self) -> None:
        batch = PacketBatch(self._capacity, mtu=self._mtu)
        due = 0.0  # when the established-session path's bookkeeping is owed
        while not self._stop.is_set():
            account = False
            with self._rx_lock:
                sock = self.socket
                if sock.closed:
                    continue
                express = self.express
                if express is None:
                    sock.recv_batch(batch, timeout=RECV_POLL_INTERVAL)
                else:
                    # Bursts of established sessions are received, opened, checked and
                    # written to the TUN device in C (see TunTransport._read_loop).
                    n, due = express.pump_inbound(
                        sock.io, batch, RECV_POLL_INTERVAL, due, ACCOUNT_DELAY
                    )
                    if n < 0:
                        sock.errors[_errname(-n)] += 1
                    account = bookkeeping_due(due)
            if len(batch) or account:
                # An empty batch only makes the core drain the path's tallies.
                due = 0.0
                batch, refused = hand_over(self.handle.incoming, batch, self._capacity, self._mtu)
                self.dropped_input_batches += refused

    def _send_now(self, endpoint: Endpoint, batch: Any) -> None:
        with self._tx_lock:
            if isinstance(batch, PacketBatch):
                self.socket.send_batch(batch, endpoint)
            else:
                for pkt in batch:
                    self.socket.sendto(pkt, endpoint)

    def _send_loop(self) -> None:
        out = self.handle.outgoing
        while True:
            try:
                item = out.get(timeout=RECV_POLL_INTERVAL)
            except QueueClosed:
                return
            if item is None:
                if self._stop.is_set():
                    return
                continue
            endpoint, batch = item
            self._send_now(endpoint, batch)

    def attach_express(self, express: Any) -> None:
        """Send the established-session path's datagrams from this transport's socket (also
        after ``rebind``) and let it take received batches first."""
        express.set_udp(self.socket.sock.fileno(), self.socket.sock.family, self._capacity)
        self.express = express

    def close(self) -> None:
        """Stop both threads, unregister from the driver and close the socket."""
        if self.express is not None:
            self.express.set_udp(-1, 0)  # no send from the path on a closed (reused) fd
        self._stop.set()
        self.socket.wake()
        self._driver.remove_underlay_transport(self.id)
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join(5)
        self.socket.close()

    def __repr__(self) -> str:
        return f"<UdpTransport {self.id} {self.socket!r}>"


def _set_mark(sock: UdpSocket, mark: int) -> None:
    sock.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
