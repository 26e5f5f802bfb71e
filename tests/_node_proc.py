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
    quit

Every wait is bounded; a closed stdin (the controller died) ends the process.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

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


class OverlayNode:
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

    def close(self) -> None:
        self.stop.set()
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
