"""Two data planes in two processes over loopback UDP, talking through overlay sockets.

Each node is ``tests/_node_proc.py`` run with ``sys.executable`` (DataPlane +
ThreadedDataPlane + UdpTransport + OverlayNetwork, an echo port and a counting sink port),
controlled over stdin/stdout lines. Node A is the "server" (no endpoint configured for B:
it learns it from B's handshake), node B the "client" (A's endpoint configured).

Shown here: datagrams and pings both ways; a SIGKILLed node restarted with the same key
(on a new port, or on the same port with the survivor's timers doing the recovery); a
node moving to a new UDP port mid-session (roaming, no new handshake); and a flood of
random datagrams at a node's UDP port that leaves the established session undisturbed.
"""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
from _node_proc import NodeProcess

from dataplane.wireguard.keys import PrivateKey

ADDR_A, ADDR_B = "10.88.0.1", "10.88.0.2"
ECHO, SINK = 7, 9
RECOVERY_BOUND = 30.0  # seconds; KEEPALIVE_TIMEOUT + REKEY_TIMEOUT = 15 s plus jitter


class Pair:
    def __init__(self, tmp_path, relay: bool = False) -> None:
        self.tmp = tmp_path
        self.key_a, self.key_b = PrivateKey.generate(), PrivateKey.generate()
        self.nodes: list[NodeProcess] = []
        self.relay: Relay | None = None
        try:
            self.a = self.start_a()
            if relay:
                self.relay = Relay(self.a.port)
            self.b = self.start_b(endpoint=self.relay.port if self.relay else None)
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, args: list[str]) -> NodeProcess:
        node = NodeProcess(args, self.tmp / f"{name}-{len(self.nodes)}.log")
        self.nodes.append(node)
        return node

    def start_a(self, port: int = 0) -> NodeProcess:
        return self._start(
            "a",
            [
                "--key", self.key_a.to_base64(),
                "--bind", f"127.0.0.1:{port}",
                "--addr", ADDR_A,
                "--peer-key", self.key_b.public_key.to_base64(),
                "--peer-allowed", f"{ADDR_B}/32",
            ],
        )  # fmt: skip

    def start_b(self, port: int = 0, endpoint: int | None = None) -> NodeProcess:
        return self._start(
            "b",
            [
                "--key", self.key_b.to_base64(),
                "--bind", f"127.0.0.1:{port}",
                "--addr", ADDR_B,
                "--peer-key", self.key_a.public_key.to_base64(),
                "--peer-allowed", f"{ADDR_A}/32",
                "--peer-endpoint", f"127.0.0.1:{endpoint or self.a.port}",
            ],
        )  # fmt: skip

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        if self.relay is not None:
            self.relay.close()


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.close()


def reach(node: NodeProcess, addr: str, deadline: float = 10.0) -> dict:
    r = node.cmd(f"reach {addr} {ECHO} {deadline}", timeout=deadline + 10)
    assert r["ok"], f"{addr} unreachable from node {node.pid} within {deadline}s: {r}"
    return r


def wait_sink(node: NodeProcess, distinct: int, timeout: float = 5.0) -> dict:
    """The node's sink report once it holds ``distinct`` sequence numbers (or at timeout)."""
    end = time.monotonic() + timeout
    while (got := node.cmd("sink"))["distinct"] < distinct and time.monotonic() < end:
        time.sleep(0.05)
    return got


def probes(sender: NodeProcess, receiver: NodeProcess, addr: str, start: int, n: int,
           gap: float = 0.0, size: int = 100) -> dict:  # fmt: skip
    """Send n numbered datagrams and wait (bounded) until the receiver's sink has them."""
    before = receiver.cmd("sink")["distinct"]
    sender.cmd(f"probe {addr} {SINK} {start} {n} {size} {gap}", timeout=n * gap + 20)
    return wait_sink(receiver, before + n)


def test_datagrams_and_pings_both_ways(pair):
    reach(pair.b, ADDR_A)  # the first echo waits for B's handshake with A
    got = probes(pair.b, pair.a, ADDR_A, 0, 300)
    assert got["distinct"] == 300 and got["count"] == 300 and got["max_seq"] == 299
    # A never had B's endpoint configured: it learned it from the handshake.
    got = probes(pair.a, pair.b, ADDR_B, 0, 300, size=1392)
    assert got["distinct"] == 300 and got["bytes"] == 300 * 1392
    assert pair.a.cmd(f"ping {ADDR_B} 5")["ok"]
    assert pair.b.cmd(f"ping {ADDR_A} 5")["ok"]
    st_a, st_b = pair.a.cmd("stats"), pair.b.cmd("stats")
    assert st_a["peer"]["endpoint"] == ["127.0.0.1", pair.b.port]
    assert st_a["peer"]["has_session"] and st_b["peer"]["has_session"]
    assert st_b["peer"]["handshake_initiations"] == 1
    for st in (st_a, st_b):
        assert not st["errors"]
        assert not st["device_drops"] and not st["core_drops"]


def test_killed_client_restarts_with_same_key_on_new_port(pair):
    reach(pair.b, ADDR_A)
    assert probes(pair.b, pair.a, ADDR_A, 0, 100)["distinct"] == 100
    old_port = pair.b.port
    pair.b.kill()
    b2 = pair.start_b()
    assert b2.port != old_port
    reach(b2, ADDR_A, RECOVERY_BOUND)
    # A took the new endpoint from the authenticated handshake and answers there.
    assert pair.a.cmd("stats")["peer"]["endpoint"] == ["127.0.0.1", b2.port]
    got = probes(pair.a, b2, ADDR_B, 0, 200)
    assert got["distinct"] == 200
    assert pair.a.cmd(f"ping {ADDR_B} 5")["ok"]


def test_killed_server_restarts_on_same_port_and_timers_recover(pair):
    """A restarts knowing nothing of B's endpoint: only B can re-establish the session,
    and B still holds the old one, so recovery rests on B's timers (new handshake after
    KEEPALIVE_TIMEOUT + REKEY_TIMEOUT of sending without hearing back)."""
    reach(pair.b, ADDR_A)
    port = pair.a.port
    pair.a.kill()
    a2 = pair.start_a(port)
    assert a2.port == port
    reach(pair.b, ADDR_A, RECOVERY_BOUND)
    st_b = pair.b.cmd("stats")
    assert st_b["peer"]["handshake_initiations"] >= 2
    # Data B sent with the dead session was refused by A2 and counted, not delivered.
    st_a = a2.cmd("stats")
    assert sum(st_a["device_drops"].values()) >= 1
    assert probes(a2, pair.b, ADDR_B, 0, 100)["distinct"] == 100
    assert probes(pair.b, a2, ADDR_A, 0, 100)["distinct"] == 100


def test_roaming_to_a_new_udp_port_keeps_the_session(pair):
    reach(pair.b, ADDR_A)
    assert probes(pair.a, pair.b, ADDR_B, 0, 100)["distinct"] == 100
    inits = pair.b.cmd("stats")["peer"]["handshake_initiations"]
    old_port = pair.b.port
    new_port = pair.b.cmd("rebind 127.0.0.1:0")["port"]
    assert new_port != old_port
    # B's next authenticated packet tells A where B lives now; the echo comes back there.
    reach(pair.b, ADDR_A, 5)
    assert pair.a.cmd("stats")["peer"]["endpoint"] == ["127.0.0.1", new_port]
    assert probes(pair.a, pair.b, ADDR_B, 100, 200)["distinct"] == 300
    assert probes(pair.b, pair.a, ADDR_A, 0, 200)["distinct"] == 200
    # Same session throughout: roaming needs no handshake.
    st_b = pair.b.cmd("stats")
    assert st_b["peer"]["handshake_initiations"] == inits
    # A second move, with A sending first this time: A's packets go to the port B left
    # (and are lost) until B speaks; then they follow B.
    newer = pair.b.cmd("rebind 127.0.0.1:0")["port"]
    pair.a.cmd(f"probe {ADDR_B} {SINK} 300 20 100 0")
    assert pair.b.cmd(f"ping {ADDR_A} 5")["ok"]
    # (A sent those 20 before B's ping reached it, to a closed port: gone for good.)
    assert pair.b.cmd("sink")["distinct"] == 300
    assert pair.a.cmd("stats")["peer"]["endpoint"] == ["127.0.0.1", newer]
    assert probes(pair.a, pair.b, ADDR_B, 400, 100)["distinct"] == 400  # 300..319 lost
    # The server side moves too: A learned B's endpoint, B learns A's the same way.
    a_port = pair.a.cmd("rebind 127.0.0.1:0")["port"]
    assert pair.a.cmd(f"ping {ADDR_B} 5")["ok"]
    assert pair.b.cmd("stats")["peer"]["endpoint"] == ["127.0.0.1", a_port]
    assert probes(pair.b, pair.a, ADDR_A, 200, 100)["distinct"] == 300
    for node in (pair.a, pair.b):
        st = node.cmd("stats")
        assert st["peer"]["handshake_initiations"] == (inits if node is pair.b else 0)
        assert st["device_events"].get("roamed", 0) >= 1
        assert not st["errors"]


def _junk(rng: random.Random) -> bytes:
    """Random datagrams, a share of them shaped like WireGuard messages."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 1:  # initiation-sized, bad MACs
        return b"\x01\0\0\0" + rng.randbytes(144)
    if kind == 2:  # response-sized
        return b"\x02\0\0\0" + rng.randbytes(88)
    if kind == 3:  # cookie-reply-sized
        return b"\x03\0\0\0" + rng.randbytes(60)
    if kind == 4:  # transport data with a random receiver index
        return b"\x04\0\0\0" + rng.randbytes(rng.randrange(28, 1448))
    return bytes([rng.randrange(1, 5)]) + rng.randbytes(rng.randrange(0, 64))


def _total_drops(st: dict) -> int:
    # Datagrams longer than a receive slot are marked TOO_BIG by the UDP layer itself,
    # before the core sees them, and counted there.
    return (
        sum(st["device_drops"].values()) + sum(st["core_drops"].values()) + st["udp_rx_truncated"]
    )


def test_random_datagrams_do_not_disturb_an_established_session(pair):
    reach(pair.b, ADDR_A)
    before = probes(pair.b, pair.a, ADDR_A, 0, 200)
    assert before["distinct"] == 200
    st0 = pair.a.cmd("stats")
    inits0 = pair.b.cmd("stats")["peer"]["handshake_initiations"]

    rng = random.Random(0xD47A)
    junk = [_junk(rng) for _ in range(20_000)]
    sent = [0]
    window = [0.0, 0.0]

    def blast() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        window[0] = time.monotonic()
        try:
            end = time.monotonic() + 10
            for i, d in enumerate(junk):
                if time.monotonic() > end:
                    break
                s.sendto(d, ("127.0.0.1", pair.a.port))
                sent[0] += 1
                if i % 100 == 99:
                    # Bursts well under even an unprivileged socket buffer (rmem_max):
                    # this is about bad input, not about out-running the receiver.
                    time.sleep(0.003)
        finally:
            window[1] = time.monotonic()
            s.close()

    t = threading.Thread(target=blast, name="junk-blaster")
    t.start()
    try:
        sending = pair.b.cmd(f"probe {ADDR_A} {SINK} 200 500 100 0.002")
    finally:
        t.join(30)
    assert not t.is_alive()
    assert sent[0] == len(junk)
    # The probes went out while the junk did (one monotonic clock for all processes).
    assert window[0] < sending["t1"] and sending["t0"] < window[1]
    during = wait_sink(pair.a, 700)
    after = probes(pair.b, pair.a, ADDR_A, 700, 200)
    # Every probe made it: before, during and after the junk.
    assert during["distinct"] == 700
    assert after["distinct"] == 900 and after["count"] == 900
    reach(pair.a, ADDR_B, 5)

    st1 = pair.a.cmd("stats")
    assert st1["peer"]["has_session"]
    assert pair.b.cmd("stats")["peer"]["handshake_initiations"] == inits0  # no re-handshake
    assert st1["peer"]["last_handshake"] == st0["peer"]["last_handshake"]
    # Each junk datagram the socket received was dropped and counted by some reason.
    received = sent[0] - _kernel_drops(pair.a.port)
    dropped = _total_drops(st1) - _total_drops(st0)
    assert dropped == received, (dropped, received, st1["device_drops"], st1["core_drops"])
    # ...and nothing else arrived but the 700 probes, the echo request and keepalives.
    assert 0 <= st1["udp_rx_packets"] - st0["udp_rx_packets"] - received - 701 <= 2
    oversized = sum(len(d) > 1456 for d in junk)
    assert st1["udp_rx_truncated"] - st0["udp_rx_truncated"] == oversized
    assert not st1["errors"]


class Relay:
    """A UDP hop between B and A that records what B sends: an on-path observer whose
    captures an attacker can replay from elsewhere."""

    def __init__(self, a_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.a = ("127.0.0.1", a_port)
        self.b: tuple[str, int] | None = None
        self.captured: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="relay")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, src = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if src == self.a:
                if self.b is not None:
                    self.sock.sendto(data, self.b)
            else:
                self.b = src
                self.captured.append(data)
                self.sock.sendto(data, self.a)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_replayed_datagrams_from_elsewhere_are_refused_and_do_not_roam(tmp_path):
    """Everything B sent (handshake initiation and transport data), captured on the path
    and replayed from another address: no duplicate delivery, no new session, and A keeps
    sending to B's real endpoint (a replay is not an authenticated packet of B's)."""
    p = Pair(tmp_path, relay=True)
    try:
        assert p.relay is not None
        reach(p.b, ADDR_A)
        assert probes(p.b, p.a, ADDR_A, 0, 100)["distinct"] == 100
        st0 = p.a.cmd("stats")
        assert st0["peer"]["endpoint"] == ["127.0.0.1", p.relay.port]
        captured = list(p.relay.captured)
        assert captured[0][0] == 1 and len(captured) >= 101  # initiation, then data

        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(3):
                for d in captured:
                    attacker.sendto(d, ("127.0.0.1", p.a.port))
        finally:
            attacker.close()
        replayed = 3 * len(captured)
        end = time.monotonic() + 5
        while time.monotonic() < end:  # until A has seen (and dropped) every replay
            st1 = p.a.cmd("stats")
            if _total_drops(st1) - _total_drops(st0) >= replayed:
                break
            time.sleep(0.05)

        sink = p.a.cmd("sink")
        assert sink["count"] == 100 and sink["distinct"] == 100  # nothing delivered twice
        assert st1["peer"]["endpoint"] == ["127.0.0.1", p.relay.port]
        assert st1["peer"]["last_handshake"] == st0["peer"]["last_handshake"]
        assert st1["device_events"].get("roamed", 0) == st0["device_events"].get("roamed", 0)
        assert _total_drops(st1) - _total_drops(st0) == replayed, st1["device_drops"]
        # The session carries on in both directions, through the relay.
        assert probes(p.a, p.b, ADDR_B, 0, 100)["distinct"] == 100
        assert probes(p.b, p.a, ADDR_A, 100, 100)["distinct"] == 200
    finally:
        p.close()


def _kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped at a full receive buffer of the UDP socket on port."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


@pytest.mark.parametrize(
    ("bind_a", "bind_b", "a_host"),
    [("[::1]:0", "[::1]:0", "[::1]"), ("[::]:0", "127.0.0.1:0", "127.0.0.1")],
    ids=["ipv6-loopback", "dual-stack-server"],
)
def test_ipv6_underlay_and_overlay(tmp_path, bind_a, bind_b, a_host):
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    nodes: list[NodeProcess] = []
    try:
        a = NodeProcess(
            ["--key", key_a.to_base64(), "--bind", bind_a, "--addr", "fd88::1",
             "--addr", ADDR_A, "--peer-key", key_b.public_key.to_base64(),
             "--peer-allowed", f"fd88::2/128,{ADDR_B}/32"],
            tmp_path / "a.log",
        )  # fmt: skip
        nodes.append(a)
        b = NodeProcess(
            ["--key", key_b.to_base64(), "--bind", bind_b, "--addr", "fd88::2",
             "--addr", ADDR_B, "--peer-key", key_a.public_key.to_base64(),
             "--peer-allowed", f"fd88::1/128,{ADDR_A}/32",
             "--peer-endpoint", f"{a_host}:{a.port}"],
            tmp_path / "b.log",
        )  # fmt: skip
        nodes.append(b)
        reach(b, "fd88::1")
        assert probes(a, b, "fd88::2", 0, 100, size=1372)["distinct"] == 100  # MTU - 48
        assert probes(b, a, ADDR_A, 0, 100)["distinct"] == 100
        assert a.cmd("ping fd88::2 5")["ok"]
        # A's endpoint for B is B's source as A's socket saw it (plain IPv4 on dual-stack).
        want_host = "::1" if a_host == "[::1]" else "127.0.0.1"
        assert a.cmd("stats")["peer"]["endpoint"] == [want_host, b.port]
    finally:
        for n in nodes:
            n.close()


def test_handshake_completes_through_a_flood_of_bogus_initiations(pair):
    """Junk initiations put A under load (as wireguard-go's handshake queue would be), so
    A answers B's real initiation with a cookie reply instead of a session; B's retry after
    REKEY_TIMEOUT carries mac2 for that cookie and is accepted, flood or not."""
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        rng = random.Random(7)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            end = time.monotonic() + 25
            while not stop.is_set() and time.monotonic() < end:
                for _ in range(20):
                    s.sendto(b"\x01\0\0\0" + rng.randbytes(144), ("127.0.0.1", pair.a.port))
                    sent[0] += 1
                time.sleep(0.02)  # ~1000/s: far above the 128/s A spends on handshakes
        finally:
            s.close()

    t = threading.Thread(target=flood, name="initiation-flood")
    t.start()
    try:
        time.sleep(0.5)
        reach(pair.b, ADDR_A, RECOVERY_BOUND)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    st_a, st_b = pair.a.cmd("stats"), pair.b.cmd("stats")
    assert st_a["device_events"].get("cookie_reply_sent", 0) >= 1, st_a["device_events"]
    assert st_a["device_drops"].get("UNDER_LOAD", 0) >= 1
    assert st_b["device_events"].get("cookie_received", 0) >= 1, st_b["device_events"]
    assert st_b["peer"]["handshake_initiations"] >= 2
    assert st_a["peer"]["has_session"] and st_b["peer"]["has_session"]
    assert probes(pair.a, pair.b, ADDR_B, 0, 100)["distinct"] == 100
