"""One data-plane node in its own process, driven line by line over stdin/stdout.

Used by ``tests/test_two_process.py``, ``tests/test_overlay_interop.py`` and
``benchmarks/bench_overlay_e2e.py``. Not a test module (no ``test_`` prefix).

A node is wired as ``dataplane demo`` wires one: DataPlane + ThreadedDataPlane +
UdpTransport (underlay) + OverlayNetwork (overlay sockets), with one peer. It serves two
overlay UDP ports for the controller: an echo server (``--echo-port``, default 7) and a
sink (``--sink-port``, default 9) that counts numbered datagrams (8-byte big-endian
sequence number at the front of the payload).

With ``--plain`` there is no data plane at all: the same sink and ``blast`` loop run on a
kernel UDP socket, as the baseline of the end-to-end benchmark.

TCP (``tests/test_tcp_interop.py``): the node runs TCP jobs on the overlay's TCP
(``OverlayNetwork.create_connection`` / ``create_server``); with ``--kernel`` there is no
data plane either and the same jobs run on the kernel's ``socket`` module, so one
controller drives both ends of a kernel <-> ours transfer with the same code.

Protocol: after start-up the node prints one JSON line ``{"ready": true, "port": P, ...}``;
then every command line on stdin gets exactly one JSON line on stdout. Commands:

    ping ADDR TIMEOUT                 ICMP echo through the overlay
    reach ADDR PORT DEADLINE          echo request/reply every 0.25 s until one returns
    probe ADDR PORT START N SIZE GAP  N numbered datagrams START.., GAP seconds apart
    blast ADDR PORT N SIZE            N numbered datagrams as fast as sendto goes
    sink                              what the sink received so far
    sinkreset                         forget it
    stats                             drop counters and the peer's state
    rebind HOST:PORT                  move the underlay to a new UDP socket (roaming)
    endpoint HOST:PORT                send to the peer at a new underlay endpoint
    tcp role=ROLE key=value...        start a TCP job (``TcpJobs``): {"job": ID}
    tcpwait job=ID timeout=T          its result once it ended: {"done": true, ...}
    tcpconnect addr=A port=P [timeout=T]  one connect: {"ok": true} or the exception
    tcpstats                          the overlay TCP stack's counters (not --kernel)
    quit

Every wait is bounded; a closed stdin (the controller died) ends the process.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SEQ = struct.Struct("!Q")
SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent


class NodeProcess:
    """The controller's handle on a node process: start, ``cmd``, ``kill`` (by PID).

    ``prefix`` runs the interpreter under another command (``ip netns exec NS``). Every
    read has a deadline; ``close`` always ends the process (quit, then SIGKILL).
    """

    def __init__(
        self, args: list[str], log_path: Path, prefix: tuple[str, ...] = (), timeout: float = 20
    ) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(ROOT),
        )
        self.pid = self.proc.pid
        self._buf = b""
        try:
            hello = self._read_line(timeout)
        except BaseException:
            self.kill()
            raise
        if not hello.get("ready"):
            self.kill()
            raise RuntimeError(f"node did not start: {hello}")
        self.port: int = hello["port"]

    def _read_line(self, timeout: float) -> dict:
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"node {self.pid}: no answer within {timeout}s; {self.log()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"node {self.pid} exited ({self.proc.poll()}); {self.log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, line: str, timeout: float = 20) -> dict:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read_line(timeout)
        if "error" in reply:
            raise RuntimeError(f"node {self.pid}: {line!r} failed: {reply['error']}")
        return reply

    def log(self) -> str:
        try:
            return "log: " + self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "no log"

    def kill(self) -> None:
        """SIGKILL by PID (no cleanup in the node: a crash)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._close_pipes()

    def close(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            try:
                self.cmd("quit", timeout=timeout)
                self.proc.wait(timeout)
            except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._log.close()


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Sink:
    """Counts numbered datagrams; ``recv`` is any callable returning one payload or None."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.count = 0
            self.bytes = 0
            self.seqs: set[int] = set()
            self.first: float | None = None
            self.last: float | None = None

    def add(self, payload: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            self.count += 1
            self.bytes += len(payload)
            if len(payload) >= SEQ.size:
                self.seqs.add(SEQ.unpack_from(payload)[0])
            if self.first is None:
                self.first = now
            self.last = now

    def report(self) -> dict:
        with self.lock:
            return {
                "count": self.count,
                "distinct": len(self.seqs),
                "bytes": self.bytes,
                "first": self.first,
                "last": self.last,
                "max_seq": max(self.seqs) if self.seqs else None,
            }


def _blast(send, addr: tuple[str, int], n: int, size: int, limit: float = 20.0) -> dict:
    """Send n numbered datagrams back to back, stopping early after ``limit`` seconds."""
    payload = bytearray(max(size, SEQ.size))
    t0 = time.monotonic()
    end = t0 + limit
    sent = 0
    for i in range(n):
        SEQ.pack_into(payload, 0, i)
        send(payload, addr)
        sent += 1
        if not i & 1023 and time.monotonic() > end:
            break
    return {"sent": sent, "t0": t0, "t1": time.monotonic()}


# -- TCP jobs ---------------------------------------------------------------------------------

CHUNK = 1 << 20


def _kv(words: tuple[str, ...]) -> dict[str, str]:
    """``key=value`` words as a dict."""
    out = {}
    for w in words:
        key, sep, value = w.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {w!r}")
        out[key] = value
    return out


def stream_out(sock: Any, total: int | None, seconds: float | None) -> dict:
    """Send ``total`` bytes (or for ``seconds``) of random data, 1 MiB per ``sendall``;
    each chunk starts with its index, so reordered or repeated chunks change the hash."""
    block = os.urandom(CHUNK)
    h = hashlib.sha256()
    sent = 0
    t0 = time.monotonic()
    end = t0 + seconds if seconds else None
    for i in itertools.count():
        if total is not None and sent >= total:
            break
        if end is not None and time.monotonic() >= end:
            break
        n = CHUNK if total is None else min(CHUNK, total - sent)
        chunk = bytearray(block[:n])
        chunk[: min(8, n)] = SEQ.pack(i)[: min(8, n)]
        sock.sendall(chunk)
        h.update(chunk)
        sent += n
    return {"sent": sent, "sha256": h.hexdigest(), "send_seconds": time.monotonic() - t0}


def stream_in(sock: Any, limit: int | None = None) -> dict:
    """Read to the end of the stream (or ``limit`` bytes), hashing."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    h = hashlib.sha256()
    got = 0
    t0 = time.monotonic()
    first = None
    while limit is None or got < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - got)
        n = sock.recv_into(view[:want])
        if not n:
            break
        if first is None:
            first = time.monotonic()
        h.update(view[:n])
        got += n
    t1 = time.monotonic()
    return {"bytes": got, "sha256": h.hexdigest(), "seconds": t1 - t0, "first": first, "t1": t1}


def _read_line(sock: Any, limit: int = 4096) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        c = sock.recv(1)
        if not c or len(line) > limit:
            break
        line += c
    return line


def _tls_context(p: dict[str, str]) -> Any:
    import ssl

    if p["tls"] == "server":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(p["cert"], p["key"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(p["ca"])
    return ctx


def _exc(e: BaseException) -> dict:
    return {"exc": type(e).__name__, "errno": getattr(e, "errno", None), "message": str(e)}


class _Job:
    def __init__(self, target) -> None:
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target) -> None:
        try:
            self.result = target()
        except BaseException as e:  # noqa: BLE001 - reported to the controller
            self.result = {"failed": True, **_exc(e), "traceback": traceback.format_exc(-6)}


class TcpJobs:
    """TCP commands over ``_connect`` / ``_listen`` / ``_accept`` (ours or the kernel's).

    Roles of ``tcp role=ROLE``, each on one connection, and what its result holds:

    * ``send addr port [bytes=N | seconds=S] [close=close|half|frame]``: connect, send.
      ``close``: then close (the peer reads to EOF); ``half``: ``shutdown(SHUT_WR)``, then
      read the peer's reply to EOF (a JSON line, then bytes); ``frame``: the data goes
      after an 8-byte length and the peer's reply line is read before closing (for TLS,
      which has no half-close). Result: sent, sha256, and the reply.
    * ``sink addr port [reply=R] [close=...]``: listen (before the command returns), accept
      one, read to EOF (or the framed length); with ``reply`` (half/frame) answer a JSON
      line of what arrived and R more bytes, then close. Result: bytes, sha256, seconds.
    * ``source addr port bytes=N|seconds=S``: listen, accept one, send, close.
    * ``recv addr port``: connect, read to EOF.
    * ``httpserve addr port dir``: listen; serve ``SimpleHTTPRequestHandler`` on every
      connection accepted (a thread each) until the node ends. Result: requests served.
    * ``httpget addr port path``: GET with ``http.client`` over our connection.

    ``cc=NAME`` sets the connection's congestion control (TCP_CONGESTION);
    ``tls=client ca=PEM`` / ``tls=server cert=PEM key=PEM`` wrap the connection
    (``fd=1`` implied on ours: ``ssl`` needs a real descriptor); ``fd=1`` alone uses the
    descriptor bridge without TLS; ``timeout`` (default 120 s) bounds every socket call.
    """

    def _tcp_state(self) -> tuple[dict[int, _Job], list[Any]]:
        if not hasattr(self, "_tcp_jobs"):
            self._tcp_jobs: dict[int, _Job] = {}
            self._tcp_listeners: list[Any] = []
            self._tcp_ids = itertools.count(1)
        return self._tcp_jobs, self._tcp_listeners

    def _tcp_close(self) -> None:
        for lst in self._tcp_state()[1]:
            try:
                lst.close()
            except OSError:
                pass

    # -- the connection, plain or TLS -----------------------------------------------------

    def _open(self, p: dict[str, str]) -> Any:
        tls = p.get("tls")
        fd = bool(tls) or p.get("fd") == "1"
        sock = self._connect(p["addr"], int(p["port"]), float(p.get("timeout", 120)), fd)
        self._set_cc(sock, p)
        if tls:
            sock = _tls_context(p).wrap_socket(sock, server_hostname=p.get("host", p["addr"]))
        return sock

    def _take(self, lst: Any, p: dict[str, str]) -> Any:
        tls = p.get("tls")
        fd = bool(tls) or p.get("fd") == "1"
        sock = self._accept(lst, float(p.get("timeout", 120)), fd)
        self._set_cc(sock, p)
        if tls:
            sock = _tls_context(p).wrap_socket(sock, server_side=True)
        return sock

    @staticmethod
    def _set_cc(sock: Any, p: dict[str, str]) -> None:
        """``cc=NAME``: the congestion control of this connection (TCP_CONGESTION)."""
        if "cc" in p:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, p["cc"].encode())

    @staticmethod
    def _info(sock: Any) -> dict | None:
        info = getattr(sock, "tcp_info", None)
        try:
            return info() if info is not None else None
        except OSError:
            return None

    # -- roles ----------------------------------------------------------------------------

    def _send(self, sock: Any, p: dict[str, str]) -> dict:
        mode = p.get("close", "close")
        total = int(p["bytes"]) if "bytes" in p else None
        seconds = float(p["seconds"]) if "seconds" in p else None
        with sock:
            t0 = time.monotonic()
            if mode == "frame":
                if total is None:
                    raise ValueError("close=frame needs bytes=N")
                sock.sendall(SEQ.pack(total))
            r = stream_out(sock, total, seconds)
            r["info"] = self._info(sock)
            if mode == "half":
                sock.shutdown(socket.SHUT_WR)
                back = bytearray()
                while chunk := sock.recv(CHUNK):
                    back += chunk
                line, _, rest = bytes(back).partition(b"\n")
                r["reply"] = json.loads(line) if line else None
                r["reply_bytes"] = len(rest)
                r["reply_sha256"] = hashlib.sha256(rest).hexdigest()
            elif mode == "frame":
                line = _read_line(sock)
                r["reply"] = json.loads(line) if line else None
            r["seconds"] = time.monotonic() - t0
        return r

    def _sink(self, sock: Any, p: dict[str, str]) -> dict:
        mode = p.get("close", "close")
        with sock:
            if mode == "frame":
                head = b""
                while len(head) < SEQ.size and (c := sock.recv(SEQ.size - len(head))):
                    head += c
                r = stream_in(sock, SEQ.unpack(head)[0] if len(head) == SEQ.size else 0)
            else:
                r = stream_in(sock)
            r["info"] = self._info(sock)
            if mode in ("half", "frame"):
                tail = os.urandom(int(p.get("reply", 0)))
                line = json.dumps({"bytes": r["bytes"], "sha256": r["sha256"]}).encode()
                sock.sendall(line + b"\n" + tail)
                r["reply_sha256"] = hashlib.sha256(tail).hexdigest()
                if mode == "frame":  # the sender closes once it read the line
                    while sock.recv(CHUNK):
                        pass
        return r

    def _source(self, sock: Any, p: dict[str, str]) -> dict:
        total = int(p["bytes"]) if "bytes" in p else None
        seconds = float(p["seconds"]) if "seconds" in p else None
        with sock:
            r = stream_out(sock, total, seconds)
            r["info"] = self._info(sock)
        return r

    def _recv(self, sock: Any, p: dict[str, str]) -> dict:
        with sock:
            r = stream_in(sock)
            r["info"] = self._info(sock)
        return r

    def _http_serve(self, lst: Any, p: dict[str, str]) -> dict:
        import functools
        import http.server

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=p["dir"])
        server = argparse.Namespace(server_name="overlay", server_port=int(p["port"]))
        served = [0]

        def one(sock: Any, address: Any) -> None:
            try:
                sock.settimeout(float(p.get("timeout", 60)))
                handler(sock, address, server)
                served[0] += 1
                sock.shutdown(socket.SHUT_WR)  # as socketserver's shutdown_request
            except OSError:
                pass
            finally:
                sock.close()

        while True:
            try:
                sock, address = self._accept_addr(lst, None)
            except OSError:
                return {"served": served[0]}
            threading.Thread(target=one, args=(sock, address), daemon=True).start()

    def _http_get(self, p: dict[str, str]) -> dict:
        import http.client

        jobs = self

        class OverlayHTTPConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = jobs._connect(self.host, self.port, self.timeout, False)

        t0 = time.monotonic()
        conn = OverlayHTTPConnection(p["addr"], int(p["port"]), timeout=60)
        try:
            conn.request("GET", p["path"])
            resp = conn.getresponse()
            h = hashlib.sha256()
            got = 0
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                got += len(chunk)
            return {
                "status": resp.status,
                "bytes": got,
                "sha256": h.hexdigest(),
                "seconds": time.monotonic() - t0,
            }
        finally:
            conn.close()

    # -- commands -------------------------------------------------------------------------

    def cmd_tcp(self, *words: str) -> dict:
        p = _kv(words)
        jobs, listeners = self._tcp_state()
        role = p["role"]
        if role in ("sink", "source", "httpserve"):
            lst = self._listen(p["addr"], int(p["port"]))
            listeners.append(lst)
            if role == "httpserve":
                target = lambda: self._http_serve(lst, p)  # noqa: E731
            else:
                serve = self._sink if role == "sink" else self._source

                def target() -> dict:
                    try:
                        sock = self._take(lst, p)
                    finally:
                        lst.close()
                    return serve(sock, p)

        elif role in ("send", "recv"):
            act = self._send if role == "send" else self._recv
            target = lambda: act(self._open(p), p)  # noqa: E731
        elif role == "httpget":
            target = lambda: self._http_get(p)  # noqa: E731
        else:
            raise ValueError(f"unknown role {role!r}")
        job_id = next(self._tcp_ids)
        jobs[job_id] = _Job(target)
        return {"job": job_id}

    def cmd_tcpwait(self, *words: str) -> dict:
        p = _kv(words)
        job = self._tcp_state()[0][int(p["job"])]
        job.thread.join(float(p.get("timeout", 60)))
        if job.thread.is_alive():
            return {"done": False}
        return {"done": True, **(job.result or {})}

    def cmd_tcpconnect(self, *words: str) -> dict:
        p = _kv(words)
        t0 = time.monotonic()
        try:
            sock = self._connect(p["addr"], int(p["port"]), float(p.get("timeout", 10)), False)
        except OSError as e:
            return {"ok": False, "elapsed": time.monotonic() - t0, **_exc(e)}
        sock.close()
        return {"ok": True, "elapsed": time.monotonic() - t0}


class OverlayTcp(TcpJobs):
    """The jobs on our overlay TCP (``self.net``)."""

    net: Any

    def _connect(self, addr: str, port: int, timeout: float | None, fd: bool) -> Any:
        return self.net.create_connection((addr, port), timeout, fd=fd)

    def _listen(self, addr: str, port: int) -> Any:
        return self.net.create_server((addr, port))

    def _accept_addr(self, lst: Any, timeout: float | None, fd: bool = False) -> Any:
        sock, address = lst.accept(timeout=timeout, fd=fd)
        sock.settimeout(timeout)
        return sock, address

    def _accept(self, lst: Any, timeout: float | None, fd: bool) -> Any:
        return self._accept_addr(lst, timeout, fd)[0]

    def cmd_tcpstats(self) -> dict:
        return self.net.tcp_stats()


class KernelNode(TcpJobs):
    """``--kernel``: the same TCP jobs on the kernel's sockets, no data plane."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.public_key = None

    @property
    def port(self) -> int:
        return 0

    def _connect(self, addr: str, port: int, timeout: float | None, fd: bool) -> Any:
        return socket.create_connection((addr, port), timeout)

    def _listen(self, addr: str, port: int) -> Any:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return socket.create_server((addr, port), family=family, backlog=128)

    def _accept_addr(self, lst: Any, timeout: float | None, fd: bool = False) -> Any:
        lst.settimeout(timeout)
        sock, address = lst.accept()
        sock.settimeout(timeout)
        return sock, address

    def _accept(self, lst: Any, timeout: float | None, fd: bool) -> Any:
        return self._accept_addr(lst, timeout)[0]

    def close(self) -> None:
        self._tcp_close()


class OverlayNode(OverlayTcp):
    def __init__(self, args: argparse.Namespace) -> None:
        from dataplane.core import DataPlane
        from dataplane.driver import ThreadedDataPlane
        from dataplane.netstack import OverlayNetwork
        from dataplane.transport.udp import UdpTransport
        from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey

        self._UdpTransport = UdpTransport
        key = PrivateKey.from_base64(args.key)
        self.core = DataPlane(key)
        self.driver = ThreadedDataPlane(self.core, name="node").start()
        self.udp = UdpTransport(self.driver, _endpoint(args.bind))
        self.net = OverlayNetwork(self.driver, args.addr, name="node-overlay")
        with self.driver.locked() as core:
            core.set_addresses(args.addr, overlay=self.net.id)
            self.peer = core.add_peer(
                PublicKey.from_base64(args.peer_key),
                allowed_ips=args.peer_allowed.split(","),
                psk=PresharedKey.from_base64(args.psk) if args.psk else None,
                endpoint=_endpoint(args.peer_endpoint) if args.peer_endpoint else None,
                persistent_keepalive=args.keepalive,
                underlay=self.udp.id,
            )
        self.public_key = key.public_key.to_base64()
        self.stop = threading.Event()
        self.sink = Sink()
        self.echo_sock = self.net.udp_socket(args.echo_port)
        self.sink_sock = self.net.udp_socket(args.sink_port, recv_queue=args.sink_queue)
        self.client = self.net.udp_socket()
        self.threads = [
            threading.Thread(target=self._echo_loop, name="node-echo", daemon=True),
            threading.Thread(target=self._sink_loop, name="node-sink", daemon=True),
        ]
        for t in self.threads:
            t.start()

    @property
    def port(self) -> int:
        return self.udp.address[1]

    def _echo_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, src = self.echo_sock.recvfrom(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:
                return
            self.echo_sock.sendto(data, src)

    def _sink_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, _ = self.sink_sock.recvfrom(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sink.add(data)

    # -- commands ---------------------------------------------------------------------------

    def cmd_ping(self, addr: str, timeout: str) -> dict:
        try:
            return {"ok": True, "rtt": self.net.ping(addr, timeout=float(timeout))}
        except TimeoutError:
            return {"ok": False}

    def cmd_reach(self, addr: str, port: str, deadline: str) -> dict:
        t0 = time.monotonic()
        end = t0 + float(deadline)
        attempts = 0
        while time.monotonic() < end:
            attempts += 1
            token = os.urandom(8)
            self.client.sendto(token, (addr, int(port)))
            wait_until = min(end, time.monotonic() + 0.25)
            while (left := wait_until - time.monotonic()) > 0:
                try:
                    data, _ = self.client.recvfrom(timeout=left)
                except TimeoutError:
                    break
                if data == token:
                    return {"ok": True, "elapsed": time.monotonic() - t0, "attempts": attempts}
        return {"ok": False, "elapsed": time.monotonic() - t0, "attempts": attempts}

    def cmd_probe(self, addr: str, port: str, start: str, n: str, size: str, gap: str) -> dict:
        payload = bytearray(max(int(size), SEQ.size))
        pause = float(gap)
        t0 = time.monotonic()
        for i in range(int(start), int(start) + int(n)):
            SEQ.pack_into(payload, 0, i)
            self.client.sendto(payload, (addr, int(port)))
            if pause:
                time.sleep(pause)
        return {"sent": int(n), "t0": t0, "t1": time.monotonic()}

    def cmd_blast(self, addr: str, port: str, n: str, size: str) -> dict:
        return _blast(self.client.sendto, (addr, int(port)), int(n), int(size))

    def cmd_sink(self) -> dict:
        return self.sink.report()

    def cmd_sinkreset(self) -> dict:
        self.sink.reset()
        return {"ok": True}

    def cmd_stats(self) -> dict:
        with self.driver.locked() as core:
            st = core.stats()
            peer = st.peers[self.peer]
        ep = peer.endpoint
        return {
            "core_drops": st.drops,
            "device_drops": st.device_drops,
            "device_events": st.device_events,
            "delivered": st.delivered,
            "driver_queue_full": self.driver.stats.dropped_queue_full_packets,
            "driver_input_full": self.driver.input_dropped_packets,
            "udp_errors": dict(self.udp.socket.errors),
            "udp_rx_packets": self.udp.socket.io.rx_packets,
            "udp_rx_truncated": self.udp.socket.io.rx_truncated,
            "overlay_drops": dict(self.net.drops),
            "overlay_counters": dict(self.net.counters),
            "peer": {
                "endpoint": [ep[0], ep[1]] if ep else None,
                "has_session": peer.has_session,
                "handshake_initiations": peer.handshake_initiations,
                "last_handshake": peer.last_handshake,
                "rx_packets": peer.rx_packets,
                "tx_packets": peer.tx_packets,
            },
            "port": self.port,
            "errors": [repr(e) for e in self.driver.errors],
        }

    def cmd_rebind(self, bind: str) -> dict:
        new = self._UdpTransport(self.driver, _endpoint(bind))
        with self.driver.locked() as core:
            core.update_peer(self.peer, underlay=new.id)
        old, self.udp = self.udp, new
        old.close()
        return {"port": self.port}

    def cmd_endpoint(self, endpoint: str) -> dict:
        with self.driver.locked() as core:
            core.update_peer(self.peer, endpoint=_endpoint(endpoint))
        return {"ok": True}

    def close(self) -> None:
        self.stop.set()
        self._tcp_close()
        self.net.close()
        self.udp.close()
        self.driver.close()


class PlainNode:
    """The baseline: a kernel UDP socket, the same sink and blast loops, no data plane."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(_endpoint(args.bind))
        self.sock.settimeout(0.2)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.public_key = None
        self.stop = threading.Event()
        self.sink = Sink()
        self.thread = threading.Thread(target=self._sink_loop, name="plain-sink", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _sink_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sink.add(data)

    def cmd_blast(self, addr: str, port: str, n: str, size: str) -> dict:
        return _blast(self.tx.sendto, (addr, int(port)), int(n), int(size))

    def cmd_sink(self) -> dict:
        return self.sink.report()

    def cmd_sinkreset(self) -> dict:
        self.sink.reset()
        return {"ok": True}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        self.tx.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plain", action="store_true", help="kernel UDP socket only (baseline)")
    p.add_argument("--kernel", action="store_true", help="TCP jobs on kernel sockets only")
    p.add_argument("--key", help="our private key (base64)")
    p.add_argument("--bind", default="127.0.0.1:0", help="underlay UDP HOST:PORT")
    p.add_argument("--addr", action="append", default=[], help="our overlay address")
    p.add_argument("--peer-key", help="the peer's public key (base64)")
    p.add_argument("--peer-allowed", default="", help="the peer's AllowedIPs, comma-separated")
    p.add_argument("--peer-endpoint", help="the peer's underlay HOST:PORT")
    p.add_argument("--psk", help="pre-shared key (base64)")
    p.add_argument("--keepalive", type=float, default=None)
    p.add_argument("--echo-port", type=int, default=7)
    p.add_argument("--sink-port", type=int, default=9)
    p.add_argument("--sink-queue", type=int, default=1024, help="sink receive queue depth")
    args = p.parse_args()
    if args.kernel:
        node: Any = KernelNode(args)
    else:
        node = PlainNode(args) if args.plain else OverlayNode(args)
    out = sys.stdout
    try:
        out.write(json.dumps({"ready": True, "port": node.port, "pid": os.getpid()}) + "\n")
        out.flush()
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                out.write('{"bye": true}\n')
                out.flush()
                break
            handler = getattr(node, f"cmd_{words[0]}", None)
            if handler is None:
                reply = {"error": f"unknown command {words[0]!r}"}
            else:
                try:
                    reply = handler(*words[1:])
                except Exception as e:  # noqa: BLE001 - reported to the controller
                    reply = {"error": repr(e)}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
