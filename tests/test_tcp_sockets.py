"""The socket-module surface of overlay TCP (``TcpSocket`` / ``TcpListener``), end to end.

Two real nodes over an in-memory WireGuard underlay (``OverlayPair``), IPv4 and IPv6: what
a program written against ``socket.socket`` relies on (addresses, errors, timeouts,
options, half-close, resets, ``makefile``, ``selectors``, many connections), for the
native objects and for the real descriptors of ``fd=True``. Hang guards are generous
timeouts; nothing asserts on time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from overlay_pair import A4, A6, B4, B6, OverlayPair

from dataplane.netstack import EPHEMERAL_PORTS

HANG = 30.0
"""Timeout of every blocking call: only a hang reaches it."""

BIG = 4 << 20


@pytest.fixture
def pair() -> Iterator[OverlayPair]:
    p = OverlayPair()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=["v4", "v6"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def addrs(family: str) -> tuple[str, str]:
    """(client address on A, server address on B)."""
    return (A4, B4) if family == "v4" else (A6, B6)


def name(ip: str, port: int) -> tuple[Any, ...]:
    """The socket module's address tuple for ``ip``."""
    return (ip, port) if ":" not in ip else (ip, port, 0, 0)


class Worker(threading.Thread):
    """A thread whose result or exception the test collects with ``result()``."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(name="test-worker")
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def result(self) -> Any:
        self.join(HANG)
        assert not self.is_alive(), "worker hung"
        if self.error is not None:
            raise self.error
        return self.value


def connect(pair: OverlayPair, family: str, *, fd_client: bool = False, fd_server: bool = False):
    """(listener on B, client on A, accepted connection on B), all with hang timeouts."""
    _, server_ip = addrs(family)
    listener = pair.net_b.create_server((server_ip, 0))
    port = listener.getsockname()[1]
    client = pair.net_a.create_connection((server_ip, port), timeout=HANG, fd=fd_client)
    conn, _ = listener.accept(timeout=HANG, fd=fd_server)
    conn.settimeout(HANG)
    return listener, client, conn


def recv_all(sock: Any) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def recv_exactly(sock: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"end of stream after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


# -- connections and addresses ----------------------------------------------------------


def test_connect_accept_echo_and_names(pair: OverlayPair, family: str) -> None:
    client_ip, server_ip = addrs(family)
    listener = pair.net_b.create_server((server_ip, 7001))
    client = pair.net_a.create_connection((server_ip, 7001), timeout=HANG)
    conn, address = listener.accept(timeout=HANG)
    with listener, client, conn:
        want = socket.AF_INET if family == "v4" else socket.AF_INET6
        assert client.family == conn.family == listener.family == want
        assert client.type == socket.SOCK_STREAM
        assert listener.getsockname() == name(server_ip, 7001)
        assert client.getpeername() == name(server_ip, 7001)
        assert conn.getsockname() == name(server_ip, 7001)
        local = client.getsockname()
        assert local[0] == client_ip and local == name(client_ip, local[1])
        assert address == local == conn.getpeername()
        client.sendall(b"ping")
        assert conn.recv(100) == b"ping"
        conn.sendall(b"pong")
        assert client.recv(100) == b"pong"


def test_wildcard_listener_accepts_both_families(pair: OverlayPair) -> None:
    with pair.net_b.create_server(("", 0)) as listener:
        port = listener.getsockname()[1]
        assert listener.getsockname() == ("0.0.0.0", port)
        for server_ip in (B4, B6):
            with pair.net_a.create_connection((server_ip, port), timeout=HANG) as c:
                conn, address = listener.accept(timeout=HANG)
                with conn:
                    assert conn.getsockname() == name(server_ip, port)
                    assert address == c.getsockname()


def test_source_address(pair: OverlayPair, family: str) -> None:
    client_ip, server_ip = addrs(family)
    with pair.net_b.create_server((server_ip, 0)) as listener:
        port = listener.getsockname()[1]
        with pair.net_a.create_connection(
            (server_ip, port), HANG, source_address=(client_ip, 40123)
        ) as c:
            conn, address = listener.accept(timeout=HANG)
            conn.close()
            assert c.getsockname() == address == name(client_ip, 40123)


def test_sendall_megabytes_both_directions_at_once(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    up, down = os.urandom(BIG), os.urandom(BIG + 12345)
    with listener, client, conn:
        senders = [Worker(lambda: client.sendall(up)), Worker(lambda: conn.sendall(down))]
        at_server = Worker(lambda: hashlib.sha256(recv_exactly(conn, len(up))).digest())
        at_client = hashlib.sha256(recv_exactly(client, len(down))).digest()
        for w in senders:
            w.result()
        assert at_server.result() == hashlib.sha256(up).digest()
        assert at_client == hashlib.sha256(down).digest()


def test_half_close_then_peer_replies(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client, conn:
        request = os.urandom(300_000)
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        got = recv_all(conn)  # ends with our FIN
        assert got == request
        conn.sendall(hashlib.sha256(got).digest())
        conn.sendall(b"and more after the peer's FIN")
        conn.shutdown(socket.SHUT_WR)
        reply = recv_all(client)
        assert reply == hashlib.sha256(request).digest() + b"and more after the peer's FIN"
        with pytest.raises(BrokenPipeError):
            client.send(b"x")


def test_connection_refused(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with pytest.raises(ConnectionRefusedError):
        pair.net_a.create_connection((server_ip, 9), timeout=HANG)


# -- timeouts and blocking --------------------------------------------------------------


def test_recv_timeout(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client, conn:
        client.settimeout(0.2)
        assert client.gettimeout() == 0.2
        with pytest.raises(TimeoutError):
            client.recv(10)
        with pytest.raises(socket.timeout):  # the same class since 3.10
            client.recv(10)
        conn.sendall(b"late")
        client.settimeout(HANG)
        assert client.recv(10) == b"late"  # a timeout does not break the connection


def test_nonblocking(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client, conn:
        client.setblocking(False)
        assert not client.getblocking() and client.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            client.recv(10)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
        with pytest.raises(BlockingIOError):
            conn.recv(10, socket.MSG_DONTWAIT)
        # A non-blocking send takes what fits, then would block.
        chunk = b"\0" * (1 << 20)
        with pytest.raises(BlockingIOError):
            while True:
                assert client.send(chunk) > 0


def test_accept_timeout(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with pair.net_b.create_server((server_ip, 0)) as listener:
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.2)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


# -- resets -----------------------------------------------------------------------------


def test_close_with_unread_data_resets_peer(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client:
        client.sendall(b"never read")
        # Wait until the bytes are at the server: what arrives later is not "unread".
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        assert sel.select(HANG)
        sel.close()
        conn.close()
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        assert client.recv(10) == b""  # reported once; then the end of the stream


def test_so_linger_zero_aborts(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, conn:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert struct.unpack("ii", client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER)) == (
            1,
            0,
        )
        client.close()
        with pytest.raises(ConnectionResetError):
            conn.recv(10)
    with pytest.raises(OSError) as e:
        client.recv(10)
    assert e.value.errno == errno.EBADF


# -- options ----------------------------------------------------------------------------

OPTIONS = [
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18),
    (socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 18),
]


@pytest.mark.parametrize(("level", "option", "value"), OPTIONS)
def test_socket_option_round_trip(
    pair: OverlayPair, family: str, level: int, option: int, value: int
) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client, conn:
        client.setsockopt(level, option, value)
        got = client.getsockopt(level, option)
        if value == 1:
            assert got  # a flag: any true value, as Linux
        else:
            assert got >= value  # Linux doubles buffer sizes
        if value == 1:
            client.setsockopt(level, option, 0)
            assert not client.getsockopt(level, option)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        client.sendall(b"still works")
        assert conn.recv(100) == b"still works"


def test_accepted_connection_inherits_listener_options(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with pair.net_b.create_server((server_ip, 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with pair.net_a.create_connection(listener.getsockname()[:2], HANG):
            conn, _ = listener.accept(timeout=HANG)
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_unknown_option(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, client, conn:
        with pytest.raises(OSError) as e:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        assert e.value.errno == errno.ENOPROTOOPT


# -- makefile and selectors -------------------------------------------------------------


def test_makefile_readline_and_write(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener:

        def serve() -> None:
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    f.write(b"echo " + line)
                    f.flush()

        server = Worker(serve)
        with client, client.makefile("rw", encoding="utf-8", newline="\n") as f:
            for i in range(50):
                f.write(f"line {i} \u00e9\n")
                f.flush()
                assert f.readline() == f"echo line {i} \u00e9\n"
            client.shutdown(socket.SHUT_WR)
            assert f.read() == ""
        server.result()


def test_makefile_outlives_close(pair: OverlayPair, family: str) -> None:
    """As with ``socket.socket``, ``close()`` while makefile() objects are open closes
    the connection only when the last of them closes; until then they still work
    (http.client relies on it: it closes a "Connection: close" socket, then reads the
    response body through the response's file)."""
    listener, client, conn = connect(pair, family)
    with listener, conn:
        f = client.makefile("rb")
        client.close()
        conn.sendall(b"still readable\n")
        assert f.readline() == b"still readable\n"
        f.close()  # the last reference: now the connection closes
        assert recv_all(conn) == b""


def test_selectors_on_connection_and_listener(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with pair.net_b.create_server((server_ip, 0)) as listener, selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ, "listener")
        assert sel.select(0) == []
        client = pair.net_a.create_connection(listener.getsockname()[:2], HANG)
        with client:
            assert [k.data for k, _ in sel.select(HANG)] == ["listener"]
            conn, _ = listener.accept(timeout=0)
            assert sel.select(0) == []  # the accept queue is empty again
            with conn:
                sel.register(conn, selectors.EVENT_READ, "conn")
                assert sel.select(0) == []
                client.sendall(b"hello")
                assert [k.data for k, _ in sel.select(HANG)] == ["conn"]
                assert conn.recv(5) == b"hello"
                assert sel.select(0) == []  # everything read: not readable
                client.shutdown(socket.SHUT_WR)
                assert [k.data for k, _ in sel.select(HANG)] == ["conn"]  # end of stream
                assert conn.recv(5) == b""
                sel.unregister(conn)


def test_two_hundred_concurrent_connections(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    count = 200
    listener = pair.net_b.create_server((server_ip, 0), backlog=count)
    stop_r, stop_w = socket.socketpair()

    def serve() -> int:
        # One thread, one selector over the listener and every connection.
        served = 0
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ, None)
            sel.register(stop_r, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in sel.select(HANG):
                    if key.data == "stop":
                        return served
                    if key.data is None:
                        conn, _ = listener.accept(timeout=0)
                        conn.settimeout(HANG)
                        sel.register(conn, selectors.EVENT_READ, conn)
                        continue
                    conn = key.data
                    data = conn.recv(1 << 16)
                    if data:
                        conn.sendall(data)
                    else:
                        sel.unregister(conn)
                        conn.close()
                        served += 1

    server = Worker(serve)
    clients = []
    try:
        for _ in range(count):
            clients.append(pair.net_a.create_connection(listener.getsockname()[:2], HANG))
        for i, c in enumerate(clients):
            c.sendall(b"%d:" % i + bytes([i % 256]) * 1000)
        for i, c in enumerate(clients):
            want = b"%d:" % i + bytes([i % 256]) * 1000
            assert recv_exactly(c, len(want)) == want
            c.shutdown(socket.SHUT_WR)
        for c in clients:
            assert c.recv(10) == b""
    finally:
        for c in clients:
            c.close()
        stop_w.send(b"x")
        try:
            served = server.result()
        finally:
            listener.close()
            stop_r.close()
            stop_w.close()
    assert served == count


def test_accept_queue_overflow_is_retried_not_reset(pair: OverlayPair, family: str) -> None:
    """Handshakes completing while the accept queue is full wait, as on Linux (its
    default tcp_abort_on_overflow=0 drops the final ACK and retransmits the SYN-ACK):
    every client of a busy listener is served once the application accepts, none is
    reset. Many clients connect at once, so their SYNs all reach the SYN queue before
    the first handshake fills the accept queue."""
    _, server_ip = addrs(family)
    count = 8
    with pair.net_b.create_server((server_ip, 0), backlog=1) as listener:
        address = listener.getsockname()[:2]

        def client(i: int) -> None:
            with pair.net_a.create_connection(address, HANG) as c:
                c.sendall(b"%d" % i)
                assert c.recv(10) == b"%d" % i

        clients = [Worker(lambda i=i: client(i)) for i in range(count)]
        served = 0
        while served < count and not any(w.error for w in clients):
            try:
                conn, _ = listener.accept(timeout=0.5)  # then look for failed clients
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(HANG)
                conn.sendall(conn.recv(10))
                served += 1
    # The listener is closed: clients still waiting get a reset now, not at HANG.
    for w in clients:
        w.result()


# -- binding ----------------------------------------------------------------------------


def test_port_zero_is_ephemeral(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with (
        pair.net_b.create_server((server_ip, 0)) as a,
        pair.net_b.create_server((server_ip, 0)) as b,
    ):
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        assert pa != pb
        for port in (pa, pb):
            assert EPHEMERAL_PORTS[0] <= port <= EPHEMERAL_PORTS[1]
        with pair.net_a.create_connection((server_ip, pb), HANG):
            conn, _ = b.accept(timeout=HANG)
            conn.close()


def test_address_in_use(pair: OverlayPair, family: str) -> None:
    _, server_ip = addrs(family)
    with pair.net_b.create_server((server_ip, 7002)):
        with pytest.raises(OSError) as e:
            pair.net_b.create_server((server_ip, 7002))
        assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as e:
            pair.net_b.create_server(("", 7002))  # the wildcard overlaps it
        assert e.value.errno == errno.EADDRINUSE
    with pair.net_b.create_server((server_ip, 7002)):  # free again once closed
        pass


def test_not_our_address(pair: OverlayPair) -> None:
    with pytest.raises(OSError) as e:
        pair.net_b.create_server((A4, 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(socket.gaierror):
        pair.net_a.create_connection(("example.com", 80), HANG)


# -- the network going away -------------------------------------------------------------


def test_network_close_wakes_blocked_calls(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family)
    with listener, conn:
        other = pair.net_a.create_server(("", 0))
        blocked_recv = Worker(lambda: client.recv(10))
        blocked_accept = Worker(lambda: other.accept(timeout=HANG))
        # No way to know they are blocked yet; either order must end in an error.
        pair.net_a.close()
        with pytest.raises(OSError) as e:
            blocked_recv.result()
        assert isinstance(e.value, ConnectionAbortedError) or e.value.errno == errno.EBADF
        with pytest.raises(OSError):
            blocked_accept.result()
        # The peer learns of it (the RST of the closing stack).
        with pytest.raises(ConnectionResetError):
            conn.recv(10)
        with pytest.raises(OSError):
            pair.net_a.create_connection((addrs(family)[1], 1), HANG)


# -- real descriptors (fd=True) ---------------------------------------------------------


def test_fd_client_large_transfer_and_half_close(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family, fd_client=True)
    assert isinstance(client, socket.socket)
    payload = os.urandom(BIG)
    with listener, client, conn:

        def serve() -> None:
            got = recv_all(conn)
            conn.sendall(hashlib.sha256(got).digest() + got[:1000])
            conn.shutdown(socket.SHUT_WR)

        server = Worker(serve)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        reply = recv_all(client)
        server.result()
        assert reply == hashlib.sha256(payload).digest() + payload[:1000]


def test_fd_server_large_transfer_and_half_close(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family, fd_server=True)
    assert isinstance(conn, socket.socket)
    down, up = os.urandom(BIG), os.urandom(BIG // 2)
    with listener, client, conn:
        sender = Worker(lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR)))
        uploader = Worker(lambda: client.sendall(up))
        at_client = recv_all(client)  # ends at the server's FIN, through the bridge
        uploader.result()
        client.shutdown(socket.SHUT_WR)
        at_server = recv_all(conn)
        sender.result()
        assert hashlib.sha256(at_client).digest() == hashlib.sha256(down).digest()
        assert hashlib.sha256(at_server).digest() == hashlib.sha256(up).digest()


def test_fd_both_ends_echo(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family, fd_client=True, fd_server=True)
    with listener, client, conn:
        for size in (1, 1000, 100_000):
            data = os.urandom(size)
            client.sendall(data)
            conn.sendall(recv_exactly(conn, size))
            assert recv_exactly(client, size) == data


def test_fd_reset_by_peer(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family, fd_client=True)
    with listener, client:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        with pytest.raises(ConnectionResetError):
            client.recv(10)


def test_fd_close_with_unread_data_resets_peer(pair: OverlayPair, family: str) -> None:
    """Closing the real socket with bytes unread resets the connection, as a kernel
    socket does (and as ``TcpSocket.close`` does)."""
    listener, client, conn = connect(pair, family, fd_client=True)
    with listener, conn:
        conn.sendall(b"never read")
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            assert sel.select(HANG)  # the bytes are in the application's socket
        client.close()
        with pytest.raises(ConnectionResetError):
            conn.recv(10)


def test_fd_application_close_closes_connection(pair: OverlayPair, family: str) -> None:
    listener, client, conn = connect(pair, family, fd_client=True)
    with listener, conn:
        client.sendall(b"bye")
        client.close()
        assert recv_all(conn) == b"bye"
