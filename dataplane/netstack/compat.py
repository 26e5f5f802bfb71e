"""Standard-library glue for overlay TCP: socketserver, http.client, asyncio streams, TLS.

Theory of operation: overlay TCP sockets (``tcpsocket.py``) have the ``socket.socket``
surface but no kernel descriptor, so library code that creates its own sockets has to be
handed ours at the one place it does. Each adapter here overrides exactly that place and
leaves the rest of the library unchanged, and uses only the public API of
``OverlayNetwork`` / ``TcpSocket`` / ``TcpListener``:

* **socketserver / http.server** (``OverlayTCPServer`` and friends): ``server_bind``
  creates a ``TcpListener`` instead of binding a kernel socket, ``get_request`` accepts from
  it. ``serve_forever`` keeps working untouched because it waits in a selector on
  ``fileno()``, and the listener's ``fileno()`` is its readiness descriptor (readable
  exactly while ``accept`` would not block). ``get_request`` accepts with a zero timeout,
  so a spurious wake-up costs a ``BlockingIOError`` that ``socketserver`` already ignores,
  never a blocked server loop. Handlers get native ``TcpSocket`` objects, or real sockets
  (``request_fd = True``, implied by ``ssl_context``) for handlers that need a descriptor
  (their ``getpeername`` is the local pump's; ``client_address`` is the overlay peer);
  with an ``ssl_context`` the accepted socket is wrapped server-side and the handshake
  runs in ``finish_request`` (the handler's thread, for the threading servers), not in the
  accept loop. ``OverlayHTTPServer`` differs from ``http.server.HTTPServer`` only in not
  resolving its own name with ``socket.getfqdn`` (a DNS query the overlay cannot answer).
  Threads follow ``socketserver``'s rules: ``ThreadingOverlayTCPServer`` handler threads
  are not daemonic and ``server_close`` joins them (``block_on_close``);
  ``ThreadingOverlayHTTPServer`` has daemonic handler threads, as
  ``http.server.ThreadingHTTPServer``, which ``server_close`` does not wait for.
* **http.client** (``OverlayHTTPConnection``, ``OverlayHTTPSConnection``): ``connect``
  uses ``net.create_connection``. HTTPS hands the connection to a real descriptor
  (``TcpSocket.socket()``) after setting TCP_NODELAY on the overlay socket (an option
  of the bridge's descriptor would only reach the local pump), then
  ``context.wrap_socket``.
* **asyncio** (``open_connection``, ``start_server``): the event loop needs real
  descriptors, so both sides use bridged sockets (``create_connection(fd=True)`` /
  ``accept(fd=True)``) given to ``loop.create_connection(sock=...)`` /
  ``loop.connect_accepted_socket``. Connecting blocks for the handshake, so it runs in the
  loop's default executor; a caller cancelled meanwhile gets its connection closed when
  the thread finishes. The server does not use a thread: ``loop.add_reader`` on the
  listener's readiness descriptor calls a non-blocking accept loop, so an idle server
  costs nothing and there is no polling. The writers' ``get_extra_info("peername")`` /
  ``"sockname"`` give the overlay addresses (the bridge's socket names its local pump);
  ``wait_closed`` returns once the server is closed and its connections are gone (the
  Python 3.12 semantics).
* **TLS**: ``ssl`` works unchanged on the real socket of ``TcpSocket.socket()`` or
  ``create_connection(fd=True)`` with ``SSLContext.wrap_socket``. ``TLSStream`` runs TLS
  over a native ``TcpSocket`` instead, with ``ssl.MemoryBIO`` and ``SSLObject``, saving
  the bridge's copy through the kernel (blocking calls, one thread at a time).
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataplane.netstack.network import OverlayNetwork
    from dataplane.netstack.tcpsocket import TcpListener, TcpSocket

__all__ = [
    "OverlayHTTPConnection",
    "OverlayHTTPSConnection",
    "OverlayHTTPServer",
    "OverlayServer",
    "OverlayTCPServer",
    "TLSStream",
    "ThreadingOverlayHTTPServer",
    "ThreadingOverlayTCPServer",
    "open_connection",
    "start_server",
]

STREAM_LIMIT = 2**16
"""Default buffer limit of the asyncio StreamReaders (asyncio's own default)."""

TLS_CHUNK = 1 << 16
"""Bytes ``TLSStream`` reads from the connection at a time."""


def _timeout(timeout: Any) -> float | None:
    """A socket-module timeout argument, with ``_GLOBAL_DEFAULT_TIMEOUT`` resolved."""
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
        return socket.getdefaulttimeout()
    return timeout


# -- socketserver / http.server ---------------------------------------------------------


class OverlayTCPServer(socketserver.TCPServer):
    """``socketserver.TCPServer`` listening on an overlay address of ``net``.

    ``server_address`` is ``(ip, port)`` of ours (ip ``""``: all our addresses; port 0:
    an ephemeral one, read back from ``server_address`` after binding). Handlers get
    ``TcpSocket`` requests, or real sockets if ``request_fd`` is true or ``ssl_context``
    is given (then ``ssl.SSLSocket``, handshake in ``finish_request``).
    """

    request_fd = False
    """Give handlers real ``socket.socket`` requests (``accept(fd=True)``)."""

    socket: Any  # a TcpListener once bound (None before)

    def __init__(
        self,
        net: OverlayNetwork,
        server_address: Any,
        RequestHandlerClass: Callable[..., socketserver.BaseRequestHandler],  # noqa: N803
        bind_and_activate: bool = True,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Not TCPServer.__init__: it would create a kernel socket.
        socketserver.BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.net = net
        self.ssl_context = ssl_context
        self.socket = None
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Create the listener (``create_server`` binds and listens in one step)."""
        listener: TcpListener = self.net.create_server(
            tuple(self.server_address), backlog=self.request_queue_size
        )
        self.socket = listener
        self.address_family = listener.family
        self.server_address = listener.getsockname()

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        if self.socket is not None:
            self.socket.close()

    def fileno(self) -> int:
        """The listener's readiness descriptor, for ``serve_forever``'s selector."""
        return int(self.socket.fileno())

    def get_request(self) -> tuple[Any, Any]:
        # Zero timeout: serve_forever / handle_request call this once the descriptor is
        # readable; should nothing be there after all, BlockingIOError (an OSError) is
        # ignored by _handle_request_noblock instead of blocking the loop.
        fd = self.request_fd or self.ssl_context is not None
        request, address = self.socket.accept(timeout=0, fd=fd)
        if self.ssl_context is not None:
            try:
                request = self.ssl_context.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
            except BaseException:
                request.close()
                raise
        return request, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)


class ThreadingOverlayTCPServer(socketserver.ThreadingMixIn, OverlayTCPServer):
    """``OverlayTCPServer`` with a thread per request; ``server_close`` joins them."""


class OverlayHTTPServer(OverlayTCPServer, http.server.HTTPServer):
    """``http.server.HTTPServer`` on the overlay (``isinstance`` of both); the server name
    is the bound address itself, not a reverse DNS lookup."""

    def server_bind(self) -> None:
        OverlayTCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class ThreadingOverlayHTTPServer(socketserver.ThreadingMixIn, OverlayHTTPServer):
    """As ``http.server.ThreadingHTTPServer``: a daemonic thread per request."""

    daemon_threads = True


# -- http.client ------------------------------------------------------------------------


class OverlayHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` to ``host`` (an overlay IP; IPv6 in brackets when
    it carries the port) over ``net``."""

    def __init__(
        self,
        net: OverlayNetwork,
        host: str,
        port: int | None = None,
        timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: Any = None,
        blocksize: int = 8192,
    ) -> None:
        super().__init__(host, port, timeout, source_address, blocksize=blocksize)
        self.net = net

    def connect(self) -> None:
        self.sock = _http_connect(self, self.net)
        if self._tunnel_host:  # type: ignore[attr-defined]
            self._tunnel()  # type: ignore[attr-defined]


def _http_connect(conn: Any, net: OverlayNetwork) -> TcpSocket:
    """What ``HTTPConnection.connect`` does up to the tunnel, on the overlay."""
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    sock: TcpSocket = net.create_connection(
        (conn.host, conn.port), _timeout(conn.timeout), conn.source_address
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class OverlayHTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` over ``net``: TLS by ``context`` (default: the
    default HTTPS context) on the connection's real descriptor."""

    def __init__(
        self,
        net: OverlayNetwork,
        host: str,
        port: int | None = None,
        *,
        context: ssl.SSLContext | None = None,
        timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: Any = None,
        blocksize: int = 8192,
    ) -> None:
        super().__init__(
            host,
            port,
            timeout=timeout,
            source_address=source_address,
            context=context,
            blocksize=blocksize,
        )
        self.net = net

    def connect(self) -> None:
        sock = _http_connect(self, self.net)
        self.sock = sock
        if self._tunnel_host:  # type: ignore[attr-defined]
            self._tunnel()  # type: ignore[attr-defined]
        server_hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        real = sock.socket()
        self.sock = real  # closed by close() should wrapping fail
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            real, server_hostname=server_hostname
        )


# -- asyncio ----------------------------------------------------------------------------


class _NamedTransport:
    """A transport whose ``peername`` / ``sockname`` are the overlay's addresses; all
    else is the wrapped transport's."""

    def __init__(self, transport: Any, names: dict[str, Any]) -> None:
        self._transport = transport
        self._names = names

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._names:
            return self._names[name]
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<overlay {self._transport!r}>"


async def open_connection(
    net: OverlayNetwork,
    host: str,
    port: int,
    *,
    limit: int = STREAM_LIMIT,
    local_addr: Any = None,
    timeout: float | None = None,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As ``asyncio.open_connection`` to ``(host, port)`` on the overlay: a (reader,
    writer) pair. ``local_addr`` and ``timeout`` are ``create_connection``'s
    ``source_address`` and connect timeout; ``kwds`` go to ``loop.create_connection``
    (``ssl``, ``server_hostname`` (default: ``host``), ``ssl_handshake_timeout``, ...)."""
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    state: dict[str, Any] = {"abandoned": False, "sock": None}

    def connect() -> tuple[socket.socket, dict[str, Any]] | None:
        conn: TcpSocket = net.create_connection((host, port), timeout, local_addr)
        try:
            names = {"peername": conn.getpeername(), "sockname": conn.getsockname()}
            sock = conn.socket()
        except BaseException:
            conn.close()
            raise
        with lock:
            if state["abandoned"]:
                sock.close()
                return None
            state["sock"] = sock
        return sock, names

    try:
        connected = await loop.run_in_executor(None, connect)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            if state["sock"] is not None:
                state["sock"].close()
        raise
    assert connected is not None
    sock, names = connected
    if kwds.get("ssl") and "server_hostname" not in kwds:
        kwds["server_hostname"] = host
    try:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock, **kwds)
    except BaseException:
        sock.close()
        raise
    named: Any = _NamedTransport(transport, names)
    return reader, asyncio.StreamWriter(named, protocol, reader, loop)


class _ServerProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, counted by its server and naming the overlay ends."""

    def __init__(self, server: OverlayServer, names: dict[str, Any], *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._server = server
        self._names = names
        self._attached = False

    def connection_made(self, transport: Any) -> None:
        self._attached = True
        self._server._attach()
        named: Any = _NamedTransport(transport, self._names)
        super().connection_made(named)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._attached:
                self._attached = False
                self._server._detach()


class OverlayServer:
    """What ``start_server`` returns: as ``asyncio.Server`` (``close``, ``wait_closed``,
    ``serve_forever``, ``start_serving``, ``is_serving``, ``sockets``, ``async with``).
    Accepting runs on the loop, driven by the listener's readiness descriptor."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: TcpListener,
        client_connected_cb: Callable[..., Any],
        *,
        limit: int,
        backlog: int,
        ssl: ssl.SSLContext | None,
        kwds: dict[str, Any],
    ) -> None:
        self._loop = loop
        self._listener: TcpListener | None = listener
        self._fd = -1
        self._cb = client_connected_cb
        self._limit = limit
        self._backlog = backlog
        self._ssl = ssl
        self._kwds = kwds
        self._active = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever: asyncio.Future[None] | None = None
        self._listen_name = listener.getsockname()

    # -- asyncio.Server surface ------------------------------------------------------

    @property
    def sockets(self) -> tuple[TcpListener, ...]:
        return () if self._listener is None else (self._listener,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._fd >= 0

    async def start_serving(self) -> None:
        self._start_serving()

    def close(self) -> None:
        """Stop accepting (connections already accepted stay open)."""
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1
        listener.close()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._maybe_wake()

    async def wait_closed(self) -> None:
        """Until the server is closed and its connections are gone."""
        if self._listener is None and self._idle():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"{self!r} is already being awaited on serve_forever()")
        if self._listener is None:
            raise RuntimeError(f"{self!r} is closed")
        self._start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> OverlayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<OverlayServer {self._listen_name}{'' if self._listener else ' closed'}>"

    # -- accepting ---------------------------------------------------------------------

    def _start_serving(self) -> None:
        if self._fd >= 0 or self._listener is None:
            return
        self._fd = self._listener.fileno()
        self._loop.add_reader(self._fd, self._accept_ready)

    def _accept_ready(self) -> None:
        # Level-triggered: what the backlog leaves behind wakes us again at once.
        for _ in range(self._backlog):
            listener = self._listener
            if listener is None:
                return
            try:
                sock, address = listener.accept(timeout=0, fd=True)
            except BlockingIOError:
                return
            except OSError as e:
                if not listener.closed:
                    self._loop.call_exception_handler(
                        {"message": "overlay accept failed", "exception": e, "server": self}
                    )
                self.close()  # e.g. the network was closed under us
                return
            task = self._loop.create_task(self._connect(sock, address))
            self._pending.add(task)
            task.add_done_callback(self._connected)

    async def _connect(self, sock: socket.socket, address: Any) -> None:
        names = {"peername": address, "sockname": self._listen_name}

        def factory() -> _ServerProtocol:
            reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
            return _ServerProtocol(self, names, reader, self._cb, loop=self._loop)

        try:
            await self._loop.connect_accepted_socket(factory, sock, ssl=self._ssl, **self._kwds)
        except (asyncio.CancelledError, Exception) as e:
            sock.close()
            if not isinstance(e, asyncio.CancelledError):
                self._loop.call_exception_handler(
                    {"message": "overlay connection setup failed", "exception": e}
                )

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        self._maybe_wake()

    def _attach(self) -> None:
        self._active += 1

    def _detach(self) -> None:
        self._active -= 1
        self._maybe_wake()

    def _idle(self) -> bool:
        return self._active == 0 and not self._pending

    def _maybe_wake(self) -> None:
        if self._listener is None and self._idle():
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)


async def start_server(
    net: OverlayNetwork,
    client_connected_cb: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
    ],
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = STREAM_LIMIT,
    backlog: int = 128,
    ssl: ssl.SSLContext | None = None,
    start_serving: bool = True,
    **kwds: Any,
) -> OverlayServer:
    """As ``asyncio.start_server`` on ``(host, port)`` of ours (host None or "": all our
    addresses; port 0: ephemeral, see ``server.sockets[0].getsockname()``).
    ``client_connected_cb(reader, writer)`` may be a coroutine function; ``kwds`` go to
    ``loop.connect_accepted_socket`` (``ssl_handshake_timeout``, ...)."""
    loop = asyncio.get_running_loop()
    listener = net.create_server((host or "", port), backlog=backlog)
    server = OverlayServer(
        loop,
        listener,
        client_connected_cb,
        limit=limit,
        backlog=backlog,
        ssl=ssl,
        kwds=kwds,
    )
    if start_serving:
        server._start_serving()
    return server


# -- TLS over a native TcpSocket ----------------------------------------------------------


class TLSStream:
    """TLS over a native ``TcpSocket`` with ``ssl.MemoryBIO`` / ``SSLObject`` (no bridge).

    Blocking, with the socket's timeout; not for concurrent use from several threads.
    ``close`` closes the connection without close_notify; ``unwrap`` first for a clean
    TLS shutdown.
    ``recv`` returns b"" at the end of the stream, whether or not the peer sent
    close_notify (as ``SSLSocket`` with ``suppress_ragged_eofs``).
    """

    def __init__(
        self,
        sock: TcpSocket,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        do_handshake: bool = True,
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        if do_handshake:
            self.do_handshake()

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)

    def _run(self, op: Callable[..., Any], *args: Any) -> Any:
        """Run ``op`` of the SSLObject, feeding it from the connection as it asks."""
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(TLS_CHUNK)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def do_handshake(self) -> None:
        self._run(self._obj.do_handshake)

    def send(self, data: Any) -> int:
        return int(self._run(self._obj.write, data))

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.send(view[:TLS_CHUNK])
            view = view[n:]

    def recv(self, bufsize: int) -> bytes:
        try:
            return bytes(self._run(self._obj.read, bufsize))
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def unwrap(self) -> TcpSocket:
        """Exchange close_notify; the plain connection is the caller's again."""
        self._run(self._obj.unwrap)
        return self.sock

    def close(self) -> None:
        self.sock.close()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._obj.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> Any:
        return self._obj.cipher()

    def selected_alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def __enter__(self) -> TLSStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
