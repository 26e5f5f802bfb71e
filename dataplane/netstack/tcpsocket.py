"""TCP sockets on the overlay with the ``socket`` module's surface.

Theory of operation: ``TcpSocket`` (a connection) and ``TcpListener`` wrap a
``tcp.Connection`` / ``tcp.Listener`` of the network's ``TcpStack``. Every call takes the
network's one TCP lock, runs the sans-I/O call with ``now``, collects what the stack wants
sent into the network's ordered transmit queue, and releases the lock before that queue is
handed to the data plane (``OverlayNetwork._tcp_call``), so the crypto and the UDP send
run outside it. A call that must wait (``recv`` with nothing buffered, ``send`` with a full
send buffer, ``accept``, ``create_connection``) waits on the socket's own Condition over
the same lock, which the netstack thread notifies when the stack reports the connection
changed; the GIL is released while waiting. Timeouts follow the socket module:
``settimeout(None)`` blocks, ``0`` (or ``setblocking(False)``) raises ``BlockingIOError``,
a positive value raises ``TimeoutError``; for ``sendall`` it bounds the whole call.

Errors are the socket module's, built from the errno the stack recorded:
``ConnectionRefusedError``, ``ConnectionResetError``, ``BrokenPipeError``,
``TimeoutError`` (ETIMEDOUT when retransmissions run out), ``OSError(EBADF)`` after
``close``. As on Linux, bytes that arrived before a reset are still returned by ``recv``,
the reset is reported once, and reads after it return end of stream.

``fileno()`` is a readiness descriptor (``readiness.py``), readable when ``recv`` /
``accept`` would not block; it is for ``select``-style waiting only, not for I/O. Code that
needs a real descriptor uses ``socket()`` (``fdbridge.py``).
"""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from dataplane.netstack._ip import pack_address, unpack_address
from dataplane.netstack.readiness import Readiness
from dataplane.netstack.tcp import Connection, Listener, State

if TYPE_CHECKING:
    from dataplane.netstack.network import OverlayNetwork

_UNSET: Any = object()
_SEND_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})
_SOCKOPT_NAMES = {
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "nodelay",
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "keepalive",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "keep_idle",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "keep_intvl",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "keep_cnt",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "sndbuf",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "rcvbuf",
}
_INHERITED = ("nodelay", "keepalive", "keep_idle", "keep_intvl", "keep_cnt", "sndbuf", "rcvbuf")
"""Options an accepted connection takes from its listener, as on Linux."""


def os_error(code: int, what: str = "") -> OSError:
    """``OSError(code)``, which Python turns into the right subclass
    (ConnectionResetError for ECONNRESET, ...)."""
    message = os.strerror(code)
    return OSError(code, f"{message}{': ' + what if what else ''}")


def endpoint(a16: bytes, port: int) -> tuple[Any, ...]:
    """The socket module's address tuple: (ip, port), or (ip, port, 0, 0) for IPv6."""
    text = unpack_address(a16)
    if a16[:12] == b"\x00" * 10 + b"\xff\xff":
        return (text, port)
    return (text, port, 0, 0)


def parse_endpoint(address: Any, what: str = "address") -> tuple[bytes, int]:
    """(packed ip, port) of an (ip, port[, flowinfo, scope]) tuple; the overlay has no
    name service, so the host must be an IP address literal."""
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError, KeyError) as e:
        raise TypeError(f"{what} must be an (ip, port) tuple, got {address!r}") from e
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError(f"port must be 0-65535, got {port!r}")
    try:
        return pack_address(host), port
    except ValueError:
        raise socket.gaierror(
            socket.EAI_NONAME, f"{host!r} is not an IP address (the overlay has no DNS)"
        ) from None


class _Deadline:
    """Remaining time of a call with the socket's timeout semantics."""

    __slots__ = ("end", "nonblocking")

    def __init__(self, timeout: float | None) -> None:
        self.nonblocking = timeout == 0
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self.end is None:
            return None
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def _wait(net: OverlayNetwork, cond: Any, deadline: _Deadline, what: str) -> None:
    """Wait (TCP lock held) for the netstack to report a change; raise BlockingIOError
    for a non-blocking call and TimeoutError once the deadline has passed."""
    remaining = deadline.remaining()
    if remaining == 0.0:
        if deadline.nonblocking:
            raise BlockingIOError(errno.EAGAIN, f"{what} would block")
        raise TimeoutError("timed out")
    net._tcp_wait(cond, remaining)


class _TimeoutMixin:
    _timeout: float | None

    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0


class TcpSocket(_TimeoutMixin):
    """A TCP connection on the overlay; thread-safe, shaped like ``socket.socket``."""

    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, net: OverlayNetwork, conn: Connection, timeout: float | None = None):
        self._net = net
        self._conn = conn
        conn.owner = self
        self._cond = net._tcp_condition()
        self._timeout = timeout
        self._closed = False  # close() was called (makefile() objects may still read)
        self._released = False  # the connection is given back to the stack, or handed over
        self._ready: Readiness | None = None
        self._linger: tuple[int, int] = (0, 0)
        self._io_refs = 0
        self._error_reported = False
        self.family = socket.AF_INET if conn.local[0][:12] == _V4 else socket.AF_INET6

    # -- the netstack's side (called with the TCP lock held) -----------------------------

    def _notify(self) -> None:
        self._cond.notify_all()
        if self._ready is not None:
            self._ready.update(self._readable())

    def _readable(self) -> bool:
        c = self._conn
        return bool(c.tcb.readable or c.tcb.fin_received or c.error or c.shut_rd or c.tcb.id < 0)

    # -- data -----------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue what fits of ``data``; returns the bytes taken (at least 1 unless it
        would block or ``data`` is empty)."""
        view = memoryview(data).cast("B")
        deadline = _Deadline(0.0 if flags & socket.MSG_DONTWAIT else self._timeout)
        with self._net._tcp_call() as stack:
            while True:
                self._check_send()
                if not len(view):
                    return 0
                n = stack.send(self._conn, view, time.monotonic())
                if n:
                    return n
                self._wait(deadline, "send")

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data``; the timeout bounds the whole call (as since Python 3.5)."""
        view = memoryview(data).cast("B")
        deadline = _Deadline(0.0 if flags & socket.MSG_DONTWAIT else self._timeout)
        sent = 0
        with self._net._tcp_call() as stack:
            while sent < len(view):
                self._check_send()
                n = stack.send(self._conn, view[sent:], time.monotonic())
                if n:
                    sent += n
                    continue
                self._wait(deadline, "sendall")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes; b"" at the end of the stream."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        buf = bytearray(bufsize)
        n = self.recv_into(buf, bufsize, flags)
        del buf[n:]
        return bytes(buf)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Read into ``buffer`` (up to ``nbytes``, 0: its size); returns the count, 0 at the
        end of the stream. Flags: MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL."""
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes:
            if nbytes > len(view):
                raise ValueError("buffer too small for requested bytes")
            view = view[:nbytes]
        if not len(view):
            return 0
        peek = bool(flags & socket.MSG_PEEK)
        waitall = bool(flags & socket.MSG_WAITALL) and not peek
        deadline = _Deadline(0.0 if flags & socket.MSG_DONTWAIT else self._timeout)
        got = 0
        with self._net._tcp_call() as stack:
            while True:
                self._check_open()
                n = stack.recv_into(self._conn, view[got:], time.monotonic(), peek)
                got += n
                if got and (not waitall or got == len(view)):
                    break
                if self._at_end():
                    break
                if got and deadline.expired():
                    break
                try:
                    self._wait(deadline, "recv")
                except (BlockingIOError, TimeoutError):
                    if got:
                        break
                    raise
            if self._ready is not None:
                self._ready.update(self._readable())
        return got

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, None]:
        """As a stream socket's: the data, and None for the address."""
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, None]:
        return self.recv_into(buffer, nbytes, flags), None

    def _at_end(self) -> bool:
        """Nothing more will arrive: EOF, SHUT_RD, or an error (raised once here)."""
        c = self._conn
        if c.error and not self._error_reported:
            self._error_reported = True
            raise os_error(c.error)
        return bool(c.tcb.fin_received or c.shut_rd or c.error or c.tcb.id < 0)

    def _check_open(self) -> None:
        if self._released:
            raise os_error(errno.EBADF, "socket is closed")

    def _check_send(self) -> None:
        self._check_open()
        c = self._conn
        if c.error:
            code = c.error if not self._error_reported else errno.EPIPE
            self._error_reported = True
            raise os_error(code)
        if c.shut_wr or c.state not in _SEND_STATES:
            raise os_error(errno.EPIPE, "the connection's sending side is closed")

    def _wait(self, deadline: _Deadline, what: str) -> None:
        """Wait for the netstack to report a change (lock held); raises on timeout."""
        _wait(self._net, self._cond, deadline, what)

    # -- the connection -------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"invalid shutdown how: {how}")
        with self._net._tcp_call() as stack:
            self._check_open()
            c = self._conn
            if c.tcb.id < 0 and not c.tcb.fin_received or c.state == State.SYN_SENT:
                raise os_error(errno.ENOTCONN)
            stack.shutdown(
                c,
                time.monotonic(),
                read=how in (socket.SHUT_RD, socket.SHUT_RDWR),
                write=how in (socket.SHUT_WR, socket.SHUT_RDWR),
            )
            self._notify()

    def close(self) -> None:
        """Close the connection (a FIN after what is buffered, or an RST when bytes are
        left unread or SO_LINGER is on with a zero timeout). With SO_LINGER on and a
        positive timeout, wait that long for the peer to acknowledge everything first."""
        if self._closed:
            return
        self._closed = True
        if self._io_refs > 0:
            return  # makefile() objects still use it; the last of them closes
        self._real_close()

    def _real_close(self) -> None:
        if self._released:
            return
        self._released = True
        onoff, seconds = self._linger
        with self._net._tcp_call() as stack:
            c = self._conn
            abort = bool(onoff) and seconds == 0
            if not abort:
                stack.close(c, time.monotonic())
                if onoff and seconds > 0:
                    deadline = _Deadline(float(seconds))
                    while c.tcb.id >= 0 and not (c.tcb.all_acked and c.tcb.fin_acked):
                        if deadline.expired():
                            abort = True
                            break
                        self._net._tcp_wait(self._cond, deadline.remaining())
                if abort and c.tcb.id >= 0:
                    stack.close(c, time.monotonic(), abort=True)
            else:
                stack.close(c, time.monotonic(), abort=True)
            if self._ready is not None:
                self._ready.close()
                self._ready = None

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed and self._io_refs == 0:
            self._real_close()

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over the connection, as ``socket.makefile`` returns."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: Any
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    def socket(self) -> socket.socket:
        """A real ``socket.socket`` carrying this connection (one end of a
        ``socketpair`` the netstack pumps), for libraries that need a descriptor for
        I/O (``ssl.wrap_socket``, asyncio's ``sock=``, paramiko). This object is
        handed over: use only the returned socket from now on."""
        return self._net._bridge(self)

    # -- socket module surface ----------------------------------------------------------

    def fileno(self) -> int:
        """A readiness descriptor: readable when ``recv`` would not block."""
        with self._net._tcp_call():
            self._check_open()
            if self._ready is None:
                self._ready = Readiness()
                self._ready.update(self._readable())
            return self._ready.fileno()

    def getsockname(self) -> tuple[Any, ...]:
        return endpoint(*self._conn.local)

    def getpeername(self) -> tuple[Any, ...]:
        if self._conn.tcb.id < 0 and not self._conn.tcb.fin_received:
            raise os_error(errno.ENOTCONN)
        return endpoint(*self._conn.remote)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_LINGER):
            onoff, seconds = struct.unpack("ii", bytes(value))
            self._linger = (onoff, seconds)
            return
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_REUSEADDR):
            return  # no TIME-WAIT bind conflicts to relax here
        if (level, optname) == (socket.IPPROTO_TCP, socket.TCP_CONGESTION):
            name = bytes(value).rstrip(b"\0").decode()
            if name not in ("cubic", "reno", "newreno"):
                raise os_error(errno.ENOENT, f"no congestion control {name!r}")
            with self._net._tcp_call():
                self._conn.tcb.set_option("cc", "cubic" if name == "cubic" else "newreno")
            return
        key = _SOCKOPT_NAMES.get((level, optname))
        if key is None:
            raise os_error(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")
        v = int.from_bytes(bytes(value), "little") if not isinstance(value, int) else value
        if key in ("sndbuf", "rcvbuf") and v < 0:
            raise ValueError(f"{key} must be non-negative")
        with self._net._tcp_call():
            self._check_open()
            self._conn.tcb.set_option(key, v)
            if key in ("keepalive", "keep_idle"):
                self._conn.tcb.start_keepalive(time.monotonic())
                self._net._tcp_reschedule(self._conn)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_LINGER):
            return struct.pack("ii", *self._linger)
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_TYPE):
            return socket.SOCK_STREAM
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_ERROR):
            with self._net._tcp_call():
                err = self._conn.error if not self._error_reported else 0
                self._error_reported = self._error_reported or bool(err)
                return err
        if (level, optname) == (socket.IPPROTO_TCP, socket.TCP_CONGESTION):
            name = self._conn.tcb.get_option("cc")
            return (b"cubic" if name == "cubic" else b"reno").ljust(buflen or 16, b"\0")
        key = _SOCKOPT_NAMES.get((level, optname))
        if key is None:
            raise os_error(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")
        v = self._conn.tcb.get_option(key)
        return int(v)

    def tcp_info(self) -> dict[str, Any]:
        """The connection's state, estimates and counters (like ``ss -ti``)."""
        with self._net._tcp_call():
            info = self._conn.tcb.counters()
            info["state"] = self._conn.state.name
            return info

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TcpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self._conn
        return (
            f"<TcpSocket {'closed ' if self._closed else ''}{c.state.name} "
            f"laddr={self.getsockname()} raddr={endpoint(*c.remote)}>"
        )


class TcpListener(_TimeoutMixin):
    """A listening TCP socket on the overlay; ``accept`` gives ``TcpSocket`` objects."""

    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, net: OverlayNetwork, listener: Listener, family: int) -> None:
        self._net = net
        self._listener = listener
        listener.owner = self
        self._cond = net._tcp_condition()
        self._timeout: float | None = None
        self._ready: Readiness | None = None
        self._options: dict[str, int] = {}
        self.family = family

    def _notify(self) -> None:
        self._cond.notify_all()
        if self._ready is not None:
            self._ready.update(bool(self._listener.accept_queue) or self._listener.closed)

    def accept(self, timeout: float | None = _UNSET, *, fd: bool = False) -> tuple[Any, Any]:
        """The next connection and its peer's address. ``timeout`` (default: the
        listener's) as for a socket; ``fd=True`` returns a real ``socket.socket``."""
        deadline = _Deadline(self._timeout if timeout is _UNSET else timeout)
        with self._net._tcp_call() as stack:
            while True:
                if self._listener.closed:
                    raise os_error(errno.EBADF, "listener is closed")
                conn = stack.accept(self._listener)
                if conn is not None:
                    break
                _wait(self._net, self._cond, deadline, "accept")
            for key, value in self._options.items():
                conn.tcb.set_option(key, value)
            if self._options.get("keepalive"):
                conn.tcb.start_keepalive(time.monotonic())
                self._net._tcp_reschedule(conn)
            sock = TcpSocket(self._net, conn)
            if self._ready is not None:
                self._ready.update(bool(self._listener.accept_queue))
        address = endpoint(*conn.remote)
        if fd:
            return sock.socket(), address
        return sock, address

    def listen(self, backlog: int = 128) -> None:
        """Change the backlog (the accept queue's bound)."""
        with self._net._tcp_call():
            self._listener.backlog = max(1, int(backlog))

    def close(self) -> None:
        with self._net._tcp_call() as stack:
            stack.close_listener(self._listener, time.monotonic())
            if self._ready is not None:
                self._ready.close()
                self._ready = None

    @property
    def closed(self) -> bool:
        return self._listener.closed

    def fileno(self) -> int:
        """A readiness descriptor: readable when ``accept`` would not block."""
        with self._net._tcp_call():
            if self._listener.closed:
                raise os_error(errno.EBADF, "listener is closed")
            if self._ready is None:
                self._ready = Readiness()
                self._ready.update(bool(self._listener.accept_queue))
            return self._ready.fileno()

    def getsockname(self) -> tuple[Any, ...]:
        a = self._listener.address
        port = self._listener.port
        if a is None:
            return ("0.0.0.0", port) if self.family == socket.AF_INET else ("::", port, 0, 0)
        return endpoint(a, port)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        """Options for the connections it accepts (TCP_NODELAY, SO_KEEPALIVE, keepalive
        times, SO_SNDBUF, SO_RCVBUF); SO_REUSEADDR is accepted and has no effect."""
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_REUSEADDR):
            return
        key = _SOCKOPT_NAMES.get((level, optname))
        if key is None or key not in _INHERITED:
            raise os_error(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")
        self._options[key] = (
            int(value) if isinstance(value, int) else int.from_bytes(value, "little")
        )

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return 0 if self._listener.closed else 1
        key = _SOCKOPT_NAMES.get((level, optname))
        if key is None:
            raise os_error(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")
        return self._options.get(key, 0)

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpListener {self.getsockname()}{' closed' if self.closed else ''}>"


_V4 = b"\x00" * 10 + b"\xff\xff"
