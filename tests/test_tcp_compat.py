"""The standard library on overlay TCP (``dataplane.netstack.compat``), end to end.

``http.server`` / ``socketserver`` handlers served unchanged by the overlay servers,
``http.client`` through ``OverlayHTTPConnection`` / ``OverlayHTTPSConnection``, TLS with a
certificate made here by ``cryptography`` (on real descriptors and over ``MemoryBIO``),
and asyncio streams. Two real nodes over an in-memory WireGuard underlay
(``OverlayPair``); hang guards are generous timeouts, nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import functools
import hashlib
import http.server
import ipaddress
import os
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from overlay_pair import A4, A6, B4, B6, OverlayPair

from dataplane.netstack.compat import (
    OverlayHTTPConnection,
    OverlayHTTPSConnection,
    OverlayHTTPServer,
    OverlayTCPServer,
    ThreadingOverlayHTTPServer,
    ThreadingOverlayTCPServer,
    TLSStream,
    open_connection,
    start_server,
)

HANG = 30.0
"""Timeout of every blocking call: only a hang reaches it."""


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


def server_ip(family: str) -> str:
    return B4 if family == "v4" else B6


def client_ip(family: str) -> str:
    return A4 if family == "v4" else A6


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a self-signed certificate naming B's
    addresses, as a certificate authority the client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overlay test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("b.overlay.test"),
                    x509.IPAddress(ipaddress.ip_address(B4)),
                    x509.IPAddress(ipaddress.ip_address(B6)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


class Worker(threading.Thread):
    """A thread whose result or exception the test collects with ``result()``."""

    def __init__(self, fn: Any) -> None:
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


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[Any]:
    """``serve_forever`` in a thread; then ``shutdown``, ``server_close``, join."""
    loop = Worker(lambda: server.serve_forever(poll_interval=0.05))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        loop.result()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = HANG  # of the request socket: a stuck client cannot hang the test

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, bytes]:
    body = os.urandom(1 << 20)
    (tmp_path / "blob.bin").write_bytes(body)
    (tmp_path / "hello.txt").write_text("hello over the overlay\n")
    return tmp_path, body


# -- http.server + http.client ----------------------------------------------------------


def test_simple_http_server_serves_a_file(
    pair: OverlayPair, family: str, site: tuple[Path, bytes]
) -> None:
    directory, body = site
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = ThreadingOverlayHTTPServer(pair.net_b, (server_ip(family), 0), handler)
    assert isinstance(server, http.server.HTTPServer)
    port = server.server_address[1]
    assert server.server_name == server_ip(family) and server.server_port == port
    with serving(server):
        conn = OverlayHTTPConnection(pair.net_a, server_ip(family), port, timeout=HANG)
        try:
            conn.request("GET", "/blob.bin")
            with conn.getresponse() as r:
                assert r.status == 200
                assert int(r.getheader("Content-Length")) == len(body)
                got = r.read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
            # HTTP/1.0 handler: the server closed; http.client reconnects on its own.
            conn.request("GET", "/hello.txt")
            with conn.getresponse() as r:
                assert r.read() == b"hello over the overlay\n"
            conn.request("GET", "/missing")
            with conn.getresponse() as r:
                r.read()
                assert r.status == 404
            conn.request("GET", "/")
            with conn.getresponse() as r:
                listing = r.read()
            assert b"blob.bin" in listing and b"hello.txt" in listing
        finally:
            conn.close()


def test_http_keep_alive_uses_one_connection(pair: OverlayPair, site: tuple[Path, bytes]) -> None:
    directory, _ = site
    connections = []

    class KeepAlive(QuietHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

    handler = functools.partial(KeepAlive, directory=str(directory))
    with serving(ThreadingOverlayHTTPServer(pair.net_b, ("", 0), handler)) as server:
        conn = OverlayHTTPConnection(pair.net_a, f"[{B6}]:{server.server_address[1]}", timeout=HANG)
        try:
            for _ in range(20):
                conn.request("GET", "/hello.txt")
                with conn.getresponse() as r:
                    assert r.read() == b"hello over the overlay\n"
            assert conn.sock.getpeername()[0] == B6
        finally:
            conn.close()  # the handler thread sees the end of the stream and ends
    assert len(connections) == 1 and connections[0][0] == A6


def test_http_server_single_threaded(pair: OverlayPair, site: tuple[Path, bytes]) -> None:
    directory, body = site
    handler = functools.partial(QuietHandler, directory=str(directory))
    with serving(OverlayHTTPServer(pair.net_b, (B4, 0), handler)) as server:
        for _ in range(3):
            conn = OverlayHTTPConnection(pair.net_a, B4, server.server_address[1], timeout=HANG)
            try:
                conn.request("GET", "/blob.bin")
                with conn.getresponse() as r:
                    assert r.read() == body
            finally:
                conn.close()


def test_bind_and_activate_false(pair: OverlayPair) -> None:
    server = OverlayTCPServer(
        pair.net_b, (B4, 0), socketserver.BaseRequestHandler, bind_and_activate=False
    )
    assert server.socket is None
    server.server_bind()
    server.server_activate()
    try:
        assert server.server_address[0] == B4 and server.server_address[1] != 0
        assert server.address_family == socket.AF_INET
    finally:
        server.server_close()


def test_address_in_use_closes_nothing_else(pair: OverlayPair) -> None:
    with serving(OverlayTCPServer(pair.net_b, (B4, 0), socketserver.BaseRequestHandler)) as s:
        with pytest.raises(OSError) as e:
            OverlayTCPServer(pair.net_b, s.server_address, socketserver.BaseRequestHandler)
        assert e.value.errno == errno.EADDRINUSE
        # The failed server closed only what it had: the first still serves.
        with pair.net_a.create_connection(s.server_address, HANG):
            pass


# -- socketserver -----------------------------------------------------------------------


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"echo " + line)


def test_stream_request_handler_echo(pair: OverlayPair, family: str) -> None:
    server = ThreadingOverlayTCPServer(pair.net_b, (server_ip(family), 0), EchoHandler)
    assert not server.daemon_threads and server.block_on_close

    def client(i: int) -> None:
        with pair.net_a.create_connection(server.server_address[:2], HANG) as c:
            with c.makefile("rwb") as f:
                for j in range(20):
                    f.write(b"client %d line %d\n" % (i, j))
                    f.flush()
                    assert f.readline() == b"echo client %d line %d\n" % (i, j)
            assert c.getpeername()[0] == server_ip(family)

    with serving(server):
        clients = [Worker(functools.partial(client, i)) for i in range(10)]
        for w in clients:
            w.result()
    # server_close joined the handler threads (block_on_close).


def test_tcp_server_real_socket_requests(pair: OverlayPair) -> None:
    seen = []

    class RealHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(type(self.request))
            data = b""
            while not data.endswith(b"\n"):
                data += self.request.recv(100)
            self.request.sendall(data.upper())

    class Server(ThreadingOverlayTCPServer):
        request_fd = True

    with serving(Server(pair.net_b, (B4, 0), RealHandler)) as server:
        with pair.net_a.create_connection(server.server_address, HANG) as c:
            c.sendall(b"shout\n")
            assert c.recv(100) == b"SHOUT\n"
    assert seen == [socket.socket]


# -- TLS --------------------------------------------------------------------------------


def test_https_server_and_client(
    pair: OverlayPair, family: str, site: tuple[Path, bytes], tls: Any
) -> None:
    server_ctx, client_ctx = tls
    directory, body = site
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = ThreadingOverlayHTTPServer(
        pair.net_b, (server_ip(family), 0), handler, ssl_context=server_ctx
    )
    with serving(server):
        conn = OverlayHTTPSConnection(
            pair.net_a,
            server_ip(family),
            server.server_address[1],
            context=client_ctx,
            timeout=HANG,
        )
        try:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
            conn.request("GET", "/blob.bin")
            with conn.getresponse() as r:
                assert r.status == 200
                got = r.read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        finally:
            conn.close()


def test_https_rejects_an_unknown_certificate(
    pair: OverlayPair, site: tuple[Path, bytes], tls: Any
) -> None:
    server_ctx, _ = tls
    handler = functools.partial(QuietHandler, directory=str(site[0]))

    class Server(ThreadingOverlayHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the failed handshake, expected

    with serving(Server(pair.net_b, (B4, 0), handler, ssl_context=server_ctx)) as server:
        conn = OverlayHTTPSConnection(
            pair.net_a, B4, server.server_address[1], context=ssl.create_default_context()
        )
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                conn.request("GET", "/hello.txt")
        finally:
            conn.close()


def _tls_client(kind: str, pair: OverlayPair, family: str, port: int, ctx: ssl.SSLContext) -> Any:
    host = server_ip(family)
    if kind == "fd":
        sock = pair.net_a.create_connection((host, port), HANG, fd=True)
        return ctx.wrap_socket(sock, server_hostname=host)
    return TLSStream(pair.net_a.create_connection((host, port), HANG), ctx, server_hostname=host)


def _tls_accept(kind: str, listener: Any, ctx: ssl.SSLContext) -> Any:
    if kind == "fd":
        sock, _ = listener.accept(timeout=HANG, fd=True)
        return ctx.wrap_socket(sock, server_side=True)
    conn, _ = listener.accept(timeout=HANG)
    conn.settimeout(HANG)
    return TLSStream(conn, ctx, server_side=True)


@pytest.mark.parametrize("client_kind", ["fd", "bio"])
@pytest.mark.parametrize("server_kind", ["fd", "bio"])
def test_tls_stream_both_ways(
    pair: OverlayPair, family: str, tls: Any, client_kind: str, server_kind: str
) -> None:
    """Real-descriptor ``SSLSocket`` and ``TLSStream`` (MemoryBIO) ends, in every pairing:
    a large upload answered by its digest, then close_notify both ways."""
    server_ctx, client_ctx = tls
    payload = os.urandom(2 << 20)
    with pair.net_b.create_server((server_ip(family), 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            t = _tls_accept(server_kind, listener, server_ctx)
            try:
                h = hashlib.sha256()
                left = len(payload)
                while left:
                    data = t.recv(min(left, 1 << 16))
                    assert data
                    h.update(data)
                    left -= len(data)
                t.sendall(h.digest())
                assert t.recv(10) == b""  # the client's close_notify
                t.unwrap().close()  # ours in reply
            finally:
                t.close()

        server = Worker(serve)
        t = _tls_client(client_kind, pair, family, port, client_ctx)
        try:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
            assert t.getpeercert()["subject"] == ((("commonName", "overlay test"),),)
            t.sendall(payload)
            digest = b""
            while len(digest) < 32:
                digest += t.recv(32 - len(digest))
            assert digest == hashlib.sha256(payload).digest()
            plain = t.unwrap()
            plain.close()
        finally:
            t.close()
        server.result()


# -- asyncio ----------------------------------------------------------------------------


def test_asyncio_echo(pair: OverlayPair, family: str) -> None:
    host = server_ip(family)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        while line := await reader.readline():
            writer.write(b"echo " + line)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port: int, i: int) -> Any:
        reader, writer = await open_connection(pair.net_a, host, port)
        for j in range(10):
            writer.write(b"%d %d\n" % (i, j))
            await writer.drain()
            assert await reader.readline() == b"echo %d %d\n" % (i, j)
        writer.write_eof()
        assert await reader.read() == b""
        name = writer.get_extra_info("sockname")
        assert writer.get_extra_info("peername")[:2] == (host, port)
        writer.close()
        await writer.wait_closed()
        return name

    async def main() -> list[Any]:
        server = await start_server(pair.net_b, handle, host, 0)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        async with server:
            names = await asyncio.wait_for(
                asyncio.gather(*(client(port, i) for i in range(20))), HANG
            )
        assert not server.is_serving() and server.sockets == ()
        return names

    peers: list[Any] = []
    names = asyncio.run(main())
    assert sorted(peers) == sorted(names)
    assert all(n[0] == client_ip(family) for n in names)


def test_asyncio_tls(pair: OverlayPair, tls: Any) -> None:
    server_ctx, client_ctx = tls
    payload = os.urandom(1 << 20)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(len(payload))
        writer.write(hashlib.sha256(data).digest())
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await start_server(pair.net_b, handle, B6, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await open_connection(pair.net_a, B6, port, ssl=client_ctx)
            assert writer.get_extra_info("ssl_object") is not None
            writer.write(payload)
            await writer.drain()
            digest = await asyncio.wait_for(reader.readexactly(32), HANG)
            assert digest == hashlib.sha256(payload).digest()
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), HANG)

    asyncio.run(main())


def test_asyncio_serve_forever_cancelled_closes(pair: OverlayPair) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        writer.close()

    async def main() -> None:
        server = await start_server(pair.net_b, handle, None, 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        assert not server.is_serving()
        task = asyncio.create_task(server.serve_forever())
        reader, writer = await open_connection(pair.net_a, B4, port)
        writer.write(b"once\n")
        assert await asyncio.wait_for(reader.readline(), HANG) == b"once\n"
        writer.close()
        await writer.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await open_connection(pair.net_a, B4, port)

    asyncio.run(main())


def test_asyncio_network_close_stops_server(pair: OverlayPair) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def main() -> None:
        server = await start_server(pair.net_b, handle, B4, 0)
        await asyncio.get_running_loop().run_in_executor(None, pair.net_b.close)
        await asyncio.wait_for(server.wait_closed(), HANG)
        assert not server.is_serving()

    asyncio.run(main())


def test_asyncio_open_connection_errors_and_cancellation(pair: OverlayPair) -> None:
    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await open_connection(pair.net_a, B4, 9)
        # Nobody answers there: the connect waits in the executor; cancelling the caller
        # leaves it to time out on its own (asyncio.run joins the executor's threads).
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(open_connection(pair.net_a, "100.64.0.99", 80, timeout=1.0), 0.1)

    asyncio.run(main())
