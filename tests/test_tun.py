"""The TUN overlay transport on a real Linux TUN, inside a network namespace of its own.

The test process enters a fresh namespace only while it creates each device (the fd keeps
working from anywhere afterwards) and runs ``ip``/``ping`` there; the kernel of that
namespace is the peer: it answers ICMP echo requests we write into the interface, and
its ``ping`` sends echo requests that our transport reads and a tiny echo core answers.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
from icmp_ping import echo_packet as echo
from icmp_ping import parse_echo, ping_cmd
from netns import TAG, inside, namespace, require, run

from dataplane._batch import DropReason, PacketBatch
from dataplane.driver import ThreadedDataPlane
from dataplane.results import Output
from dataplane.transport.tun import TunDevice, TunError, TunTransport

pytestmark = pytest.mark.privileged

NS = f"dptun{TAG}"
LOCAL4, PEER4 = "10.97.0.1", "10.97.0.2"
LOCAL6, PEER6 = "fd97::1", "fd97::2"


@pytest.fixture(scope="module")
def netns():
    require("TUN tests", "ip")
    with namespace(NS) as ns:
        yield ns


def make_device(ns: str, name: str, **kw) -> TunDevice:
    with inside(ns):
        dev = TunDevice(name, **kw)
        try:
            dev.add_addresses([f"{LOCAL4}/24", f"{LOCAL6}/64"])
            dev.set_up()
        except BaseException:
            dev.close()
            raise
    return dev


def read_replies(dev: TunDevice, want: int, deadline: float = 5.0) -> tuple[list[bytes], list[int]]:
    """Echo replies read from ``dev`` (other packets such as IPv6 router solicitations are
    skipped), and the number of packets each read call returned."""
    got: list[bytes] = []
    per_read: list[int] = []
    end = time.monotonic() + deadline
    while len(got) < want and time.monotonic() < end:
        batch = dev.read_batch(timeout=0.2)
        if len(batch):
            per_read.append(len(batch))
        for pkt in batch.packets():
            e = parse_echo(pkt)
            if e is not None and e.type in (0, 129):
                got.append(pkt)
    return got, per_read


def test_kernel_answers_echoes_written_in_a_batch(netns):
    dev = make_device(netns, "dptun0")
    try:
        assert run("ip", "-n", netns, "link", "show", "dptun0").stdout.count("mtu 1420")
        show = run("ip", "-n", netns, "-d", "link", "show", "dptun0").stdout
        assert "qlen 1000" in show and "tun" in show
        n = 40
        pkts = [echo(PEER4, LOCAL4, s, b"v4-%d" % s) for s in range(n)]
        pkts += [echo(PEER6, LOCAL6, s, b"v6-%d" % s) for s in range(n)]
        batch = PacketBatch.from_packets(pkts)
        batch.set_status(3, DropReason.NO_ROUTE)  # a dropped slot is never written
        assert dev.write_batch(batch) == 2 * n - 1
        replies, per_read = read_replies(dev, 2 * n - 1)
        seen = {(parse_echo(p).src, parse_echo(p).seq) for p in replies}
        assert seen == {(LOCAL4, s) for s in range(n) if s != 3} | {(LOCAL6, s) for s in range(n)}
        for p in replies:
            src, dst, _, _, seq, data = parse_echo(p)
            assert dst == (PEER4 if src == LOCAL4 else PEER6)
            assert data == (b"v4-%d" if src == LOCAL4 else b"v6-%d") % seq
        # The kernel answered a whole burst before we read: several packets per wake-up.
        assert max(per_read) > 1
        assert dev.io.rx_packets >= 2 * n - 1 and dev.io.tx_packets == 2 * n - 1
    finally:
        dev.close()
    assert "dptun0" not in run("ip", "-n", netns, "link", "show").stdout


def test_oversize_packet_is_marked_too_big_not_cut_silently(netns):
    dev = make_device(netns, "dptun1")
    try:
        big = echo(PEER4, LOCAL4, 1, b"x" * 400)
        dev.write_batch(PacketBatch.from_packets([big]))
        got = PacketBatch(8, mtu=200)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            dev.read_batch(got, timeout=0.2)
            if any(got.status_of(i) == DropReason.TOO_BIG for i in range(len(got))):
                break
        bad = [i for i in range(len(got)) if got.status_of(i) == DropReason.TOO_BIG]
        assert bad and len(got[bad[0]]) == got.slot_size - got.headroom - got.tailroom < 400
        assert dev.io.rx_too_big >= 1
    finally:
        dev.close()


def test_bad_packets_are_counted_not_raised(netns):
    dev = make_device(netns, "dptun2")
    try:
        batch = PacketBatch.from_packets([b"\x00" * 20, echo(PEER4, LOCAL4, 7)])
        # The kernel accepts any bytes on a TUN write and drops what is not IP itself,
        # or refuses with EINVAL; either way no exception and the good packet goes out.
        dev.write_batch(batch)
        replies, _ = read_replies(dev, 1)
        assert [parse_echo(p).seq for p in replies] == [7]
    finally:
        dev.close()


class EchoCore:
    """A core that answers ICMP echo requests arriving from the overlay, back to it."""

    def __init__(self) -> None:
        self.requests = 0

    def next_event(self):
        return None

    def process_outbound(self, now, overlay_id, batch):
        out = Output()
        answers = []
        for pkt in batch.packets():
            e = parse_echo(pkt)
            if e is not None and e.type in (8, 128):
                self.requests += 1
                answers.append(echo(e.dst, e.src, e.seq, e.data, reply=True, ident=e.ident))
        if answers:
            out.deliver(overlay_id, PacketBatch.from_packets(answers))
        return out

    def process_inbound(self, now, underlay_id, batch):
        return Output()

    def process_events(self, now):
        return Output()


def test_transport_carries_kernel_ping_through_the_driver(netns):
    dev = make_device(netns, "dptun3")
    core = EchoCore()
    driver = ThreadedDataPlane(core, name="tuntest").start()
    gone = threading.Event()
    tun = TunTransport(driver, dev, on_gone=gone.set)
    try:
        for target in (PEER4, PEER6):
            r = run(*ping_cmd(netns, target, 5, interval=0.05, size=1200, timeout=2), check=False)
            assert r.returncode == 0 and r.stdout.split() == ["5", "5"], r.stdout + r.stderr
        assert core.requests >= 10
        # Deleting the interface under the transport is noticed, not spun on.
        run("ip", "-n", netns, "link", "del", "dptun3")
        assert gone.wait(5)
    finally:
        tun.close()
        driver.close()
        dev.close()
    driver.raise_if_failed()


def test_errors_are_one_line_and_clear(netns, tmp_path):
    with pytest.raises(TunError, match="does not exist"):
        TunDevice("dptunx", path=str(tmp_path / "no-tun"))
    with pytest.raises(TunError, match="bad interface name"):
        TunDevice("a-name-much-too-long")
    run("ip", "-n", netns, "link", "add", "dptaken", "type", "veth", "peer", "name", "dptaken1")
    with inside(netns), pytest.raises(TunError, match="exists and is not a TUN"):
        TunDevice("dptaken")
    dev = make_device(netns, "dptun4")
    try:
        with inside(netns), pytest.raises(TunError, match="in use by another process"):
            TunDevice("dptun4")
    finally:
        dev.close()
    # Without root: /dev/net/tun is world-writable, TUNSETIFF needs CAP_NET_ADMIN.
    code = (
        "from dataplane.transport.tun import TunDevice, TunError\n"
        "try:\n    TunDevice('dptun5')\nexcept TunError as e:\n    print(e)\n"
    )
    r = run(
        "ip",
        "netns",
        "exec",
        netns,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        sys.executable,
        "-c",
        code,
        check=False,
    )
    assert "run as root" in r.stdout, r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) == 1


def test_attaches_to_a_persistent_tun_and_leaves_it(netns):
    run("ip", "-n", netns, "tuntap", "add", "mode", "tun", "name", "dptunp")
    try:
        with inside(netns):
            dev = TunDevice("dptunp", mtu=1300)
        assert dev.existed
        try:
            show = run("ip", "-n", netns, "link", "show", "dptunp").stdout
            assert "mtu 1300" in show and "qlen 1000" in show
            with inside(netns):
                dev.add_addresses([f"{LOCAL4}/24"])
                dev.set_up()
            dev.write_batch(PacketBatch.from_packets([echo(PEER4, LOCAL4, 9)]))
            replies, _ = read_replies(dev, 1)
            assert [parse_echo(p).seq for p in replies] == [9]
        finally:
            dev.close()
        # Closing detaches; a persistent interface outlives us, as `ip tuntap` made it.
        assert "dptunp" in run("ip", "-n", netns, "link", "show").stdout
    finally:
        run("ip", "-n", netns, "link", "del", "dptunp", check=False)
