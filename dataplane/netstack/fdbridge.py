"""Real descriptors for overlay TCP connections: one end of a loopback pair, pumped.

Theory of operation: some libraries need a genuine ``socket.socket`` (``ssl`` on a real
descriptor, asyncio's ``sock=``, paramiko's ``Transport(sock)``, anything that calls
``select`` on it). ``TcpSocket.socket()`` hands its connection to the network's
``FdBridge``: the application gets one end of a connected pair of sockets, and one named
pump thread per network moves bytes between the other end and the TCP connection, for
every bridged connection at once (a selector over the inner ends plus an eventfd the
netstack writes when a connection has news).

Both directions keep the socket semantics: back-pressure (the pump reads from the
application only what the TCP send buffer takes, and writes to it only what its socket
buffer takes), half-close both ways (the application's ``shutdown(SHUT_WR)`` becomes our
FIN; the peer's FIN, once its bytes are delivered, becomes ``shutdown(SHUT_WR)`` of the
inner end, so the application reads end of stream), and a reset by the peer becomes a
reset of the pair (the inner end closes with SO_LINGER 0), so the application sees
``ConnectionResetError``. When the application closes its end, the connection is closed
like ``TcpSocket.close``. The cost is a copy through the kernel each way; the benchmarks
measure it against the native object.

The pair is a TCP connection over 127.0.0.1 (made through one listening socket per
bridge, whose accepted end is checked to be ours), not an AF_UNIX ``socketpair``: a
reset can reach the application only as TCP's (SO_LINGER 0), and libraries that look at
the family (``ssl``, asyncio) treat it as the TCP socket it stands for. ``getpeername``
of the application's end is therefore the loopback pump, not the overlay peer: the peer's
address is what ``accept`` returned, or what was connected to.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from dataplane.netstack.tcp import State

if TYPE_CHECKING:
    from dataplane.netstack.network import OverlayNetwork
    from dataplane.netstack.tcpsocket import TcpSocket

CHUNK = 1 << 18


class _Entry:
    """One bridged connection (its ``owner`` in the stack, so the netstack notifies it)."""

    __slots__ = (
        "app_eof",
        "bridge",
        "conn",
        "done",
        "fin_passed",
        "inner",
        "mask",
        "out",
    )

    def __init__(self, bridge: FdBridge, conn: Any, inner: socket.socket) -> None:
        self.bridge = bridge
        self.conn = conn
        self.inner = inner
        self.out = b""  # bytes read from the connection, not yet taken by the pair
        self.app_eof = False
        self.fin_passed = False
        self.done = False
        self.mask = 0

    def _notify(self) -> None:
        # Called by the network with the TCP lock held.
        self.bridge._mark(self)


class FdBridge:
    """The pump of one network's bridged connections; see the module docstring."""

    def __init__(self, net: OverlayNetwork) -> None:
        self._net = net
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pair_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._dirty: set[_Entry] = set()
        self._entries: set[_Entry] = set()
        self._closed = False
        self._buf = bytearray(CHUNK)
        self.bytes_in = 0  # application -> network
        self.bytes_out = 0
        self._thread = net._driver.spawn(f"overlay{net.id}-fdbridge", self._run)

    def attach(self, sock: TcpSocket) -> socket.socket:
        """Give ``sock``'s connection a real descriptor; returns the application's end."""
        outer, inner = self._pair()
        for s in (outer, inner):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inner.setblocking(False)
        outer.settimeout(sock.gettimeout())
        with self._net._tcp_call():
            if sock._released:
                outer.close()
                inner.close()
                raise OSError(errno.EBADF, "socket is closed")
            entry = _Entry(self, sock._conn, inner)
            sock._conn.owner = entry
            sock._closed = sock._released = True  # handed over: the TcpSocket is done
            if sock._ready is not None:
                sock._ready.close()
                sock._ready = None
            with self._lock:
                self._entries.add(entry)
            self._mark(entry)
        return outer

    def _pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected pair of loopback TCP sockets: (the application's, the pump's)."""
        with self._pair_lock:
            if self._listener is None:
                self._listener = socket.create_server(("127.0.0.1", 0), backlog=16)
                self._listener.settimeout(5)
            outer = socket.create_connection(self._listener.getsockname(), timeout=5)
            try:
                ours = outer.getsockname()
                while True:
                    inner, peer = self._listener.accept()
                    if peer == ours:
                        break
                    inner.close()  # somebody else on this host: not a pair of ours
            except BaseException:
                outer.close()
                raise
        inner.settimeout(None)
        return outer, inner

    def _mark(self, entry: _Entry) -> None:
        with self._lock:
            self._dirty.add(entry)
        os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        self._closed = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        for entry in list(self._entries):
            entry.inner.close()
        if self._listener is not None:
            self._listener.close()
        self._sel.close()
        os.close(self._wake)

    # -- the pump thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select():
                if key.data is None:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                else:
                    with self._lock:
                        self._dirty.add(key.data)
            with self._lock:
                work, self._dirty = self._dirty, set()
            for entry in work:
                if not entry.done:
                    self._pump(entry)

    def _pump(self, e: _Entry) -> None:
        net = self._net
        with net._tcp_call() as stack:
            conn = e.conn
            now = time.monotonic()
            want_write = self._to_app(e, stack, now)
            if e.done:
                return
            want_read = self._from_app(e, stack, now)
            if e.done:
                return
            if conn.error and not e.out:
                self._reset_app(e)
                return
            if e.app_eof and e.fin_passed and not e.out:
                # Both directions are done: the stack finishes the close on its own.
                stack.close(conn, now)
                self._finish(e)
                return
            mask = (selectors.EVENT_READ if want_read else 0) | (
                selectors.EVENT_WRITE if want_write else 0
            )
            self._register(e, mask)

    def _to_app(self, e: _Entry, stack: Any, now: float) -> bool:
        """Connection -> pair; True while the pair's buffer is full."""
        conn = e.conn
        view = memoryview(self._buf)
        while True:
            if not e.out:
                n = stack.recv_into(conn, view, now)
                if not n:
                    break
                e.out = bytes(view[:n])
            try:
                sent = e.inner.send(e.out)
            except BlockingIOError:
                return True
            except OSError:
                # The application closed its end: nobody will read what arrives.
                self._app_gone(e, stack, now)
                return False
            self.bytes_out += sent
            e.out = e.out[sent:]
        if not e.fin_passed and (conn.tcb.fin_received or conn.tcb.id < 0 and not conn.error):
            e.fin_passed = True
            try:
                e.inner.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return False

    def _from_app(self, e: _Entry, stack: Any, now: float) -> bool:
        """Pair -> connection; True while we want to read from the application."""
        conn = e.conn
        if e.app_eof:
            return False
        while True:
            if conn.state not in (State.ESTABLISHED, State.CLOSE_WAIT) or conn.shut_wr:
                if conn.tcb.id < 0 or conn.error:
                    return False
            room = conn.tcb.send_space()
            if room <= 0:
                return False  # the connection's news (EVENT_WRITABLE) brings us back
            try:
                n = e.inner.recv_into(self._buf, min(room, CHUNK))
            except BlockingIOError:
                return True
            except OSError:
                self._app_gone(e, stack, now)
                return False
            if n == 0:
                e.app_eof = True
                if conn.tcb.id >= 0:
                    stack.shutdown(conn, now, read=False, write=True)
                return False
            if (
                conn.error
                or conn.shut_wr
                or conn.state
                not in (
                    State.ESTABLISHED,
                    State.CLOSE_WAIT,
                )
            ):
                self._reset_app(e)  # writing to a connection that cannot send: EPIPE
                return False
            self.bytes_in += stack.send(conn, memoryview(self._buf)[:n], now)

    def _register(self, e: _Entry, mask: int) -> None:
        if mask == e.mask:
            return
        if e.mask == 0:
            self._sel.register(e.inner, mask, e)
        elif mask == 0:
            self._sel.unregister(e.inner)
        else:
            self._sel.modify(e.inner, mask, e)
        e.mask = mask

    def _app_gone(self, e: _Entry, stack: Any, now: float) -> None:
        # The application's end is closed (its kernel reset the pair: it closed with
        # bytes unread, or we wrote to a closed socket): reset the connection, as a
        # kernel socket closed that way does.
        stack.close(e.conn, now, abort=True)
        self._finish(e)

    def _reset_app(self, e: _Entry) -> None:
        e.inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stack = self._net._stack
        if e.conn.tcb.id >= 0:
            stack.close(e.conn, time.monotonic(), abort=True)
        self._finish(e)

    def _finish(self, e: _Entry) -> None:
        self._register(e, 0)
        e.done = True
        e.conn.owner = None
        e.inner.close()
        with self._lock:
            self._entries.discard(e)
