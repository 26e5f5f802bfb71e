"""Network namespaces, veth links and wireguard-go for the privileged tests.

Not a test module (no ``test_`` prefix). Theory of operation: every piece of a lab is
named (namespaces) or known by PID (processes), and every helper that makes one also
knows how to unmake it, so a lab's ``close`` can always remove all of it, also after a
test failed half-way through setting it up:

* ``run``/``in_ns``/``ip`` run a command to completion (bounded), ``popen_in`` starts one
  in a namespace and ``stop`` ends it by PID.
* ``require`` skips a test (fails it under DATAPLANE_REQUIRE_PRIVILEGED=1, through
  conftest's ``skip_or_fail``) when root, /dev/net/tun or a tool is missing.
* ``add_namespace`` / ``delete_namespace`` make and remove a namespace with ``lo`` up
  (a namespace of the same name left by a killed run is deleted first: PIDs repeat);
  ``Namespaces`` keeps the names it made and deletes them all on ``close``/exit.
* ``veth`` joins two namespaces, ``link_up`` gives an interface addresses and brings it up.
* ``inside`` runs a block with this thread in a namespace (to create a socket or a TUN
  there; the file descriptor keeps working after the thread comes back).
* ``netem`` impairs a link for a ``with`` block (``tc qdisc … netem``, removed after);
  ``ss`` gives the kernel's view of a namespace's TCP connections (``ss -tin``).
* ``UdpImpair`` is netem for one UDP flow in userspace (a relay in C, built with ``gcc``
  on first use), for kernels built without ``sch_netem`` (``netem_supported`` tells);
  ``Impairment`` describes either's delay, loss, reordering and duplication.
* ``WireguardGo`` runs ``wireguard-go -f`` in a namespace (``ip netns exec`` execs it in
  place, so the PID we hold is wireguard-go's), waits for its UAPI socket, configures it
  with ``wg set`` and stops it by PID: SIGTERM, then SIGKILL, then the removal of a UAPI
  socket that nobody serves any more.
* ``lab_up`` holds a test's lab (anything with ``up`` and ``close``) for a fixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
TAG = os.getpid() % 100000  # in every name, so that concurrent runs do not collide
SOCK_DIR = "/var/run/wireguard"
CLONE_NEWNET = 0x40000000
INSTALL_HINT = {
    "wireguard-go": "apt-get install wireguard-go",
    "wg": "apt-get install wireguard-tools",
    "ip": "apt-get install iproute2",
    "iperf3": "apt-get install iperf3",
    "tc": "apt-get install iproute2",
    "ss": "apt-get install iproute2",
    "curl": "apt-get install curl",
    "gcc": "apt-get install gcc",
}


def has_ipv6_loopback() -> bool:
    """Whether this host can bind ::1 (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def require(purpose: str, *tools: str, tun: bool = True) -> None:
    """Skip (or, under CI, fail) the test unless this is root with ``tools`` (and a TUN)."""
    if os.geteuid() != 0:
        skip_or_fail(f"{purpose} needs root")
    if tun and not os.path.exists("/dev/net/tun"):
        skip_or_fail(f"{purpose} needs /dev/net/tun")
    for tool in tools:
        if shutil.which(tool) is None:
            skip_or_fail(f"{purpose} needs {tool} ({INSTALL_HINT.get(tool, 'not installed')})")


def run(
    *cmd: str, check: bool = True, timeout: float = 30, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command to completion (bounded), its output captured as text."""
    return subprocess.run(
        cmd, check=check, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def in_ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    """``run`` inside namespace ``ns``."""
    return run("ip", "netns", "exec", ns, *cmd, **kw)


def popen_in(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    """Start ``cmd`` inside namespace ``ns``; ``ip netns exec`` execs it in place, so the
    PID of the returned process is the command's own, for ``stop``."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ip -n ns ARGS``."""
    return run("ip", "-n", ns, *args, check=check)


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
) -> None:
    """Poll ``predicate`` until true; fail early when ``proc`` has exited meanwhile."""
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    """End a child by its PID: SIGTERM, and SIGKILL when it is still there after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


# -- namespaces and links -----------------------------------------------------------------------


def add_namespace(name: str) -> str:
    delete_namespace(name)  # left over by a killed run whose PID we now have
    run("ip", "netns", "add", name)
    ip(name, "link", "set", "lo", "up")
    return name


def delete_namespace(name: str) -> None:
    run("ip", "netns", "del", name, check=False)


class Namespaces:
    """Namespaces made on demand; ``close`` (or leaving the ``with``) deletes every one."""

    def __init__(self, *names: str) -> None:
        self.names: list[str] = []
        try:
            for name in names:
                self.add(name)
        except BaseException:
            self.close()
            raise

    def add(self, name: str) -> str:
        self.names.append(name)  # first: a failed ``lo up`` still leaves it ours to delete
        return add_namespace(name)

    def close(self) -> None:
        while self.names:
            delete_namespace(self.names.pop())

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """One namespace with ``lo`` up for the ``with`` block."""
    with Namespaces(name):
        yield name


@contextlib.contextmanager
def lab_up(lab):
    """``lab.up()`` for the block, and ``lab.close()`` after it whatever happened, also when
    ``up`` failed half-way (so ``close`` must cope with a half-built lab)."""
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


def link_up(ns: str, dev: str, *addresses: str, mtu: int | None = None) -> None:
    """Give ``dev`` its addresses (IPv6 without duplicate detection) and bring it up."""
    for addr in addresses:
        ip(ns, "addr", "add", addr, "dev", dev, *(("nodad",) if ":" in addr else ()))
    ip(ns, "link", "set", dev, *(("mtu", str(mtu)) if mtu else ()), "up")


def veth(
    ns_a: str,
    ns_b: str,
    addr_a: str | None = None,
    addr_b: str | None = None,
    names: tuple[str, str] = ("veth0", "veth1"),
) -> None:
    """A veth pair, ``names[0]`` in ``ns_a`` and ``names[1]`` in ``ns_b``, both up."""
    ip(ns_a, "link", "add", names[0], "type", "veth", "peer", "name", names[1], "netns", ns_b)
    link_up(ns_a, names[0], *([addr_a] if addr_a else []))
    link_up(ns_b, names[1], *([addr_b] if addr_b else []))


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``ns`` (children inherit it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def netem(links: Iterable[tuple[str, str]], *params: str) -> Iterator[None]:
    """``tc qdisc add dev DEV root netem PARAMS`` on every (namespace, device) of ``links``
    for the block, deleted after (also when the block failed or a later ``add`` did)."""
    done: list[tuple[str, str]] = []
    try:
        for ns, dev in links:
            in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", *params)
            done.append((ns, dev))
        yield
    finally:
        for ns, dev in done:
            in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)


def ss(ns: str, *filters: str) -> str:
    """``ss -tin`` in ``ns`` (cwnd, rtt, retransmits, wscale, …), for a failure message."""
    return in_ns(ns, "ss", "-tina", *filters, check=False, timeout=10).stdout


def netem_supported(ns: str) -> bool:
    """Whether this kernel has ``sch_netem`` (tried on ``lo`` of namespace ``ns``)."""
    r = in_ns(ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
    if r.returncode:
        return False
    in_ns(ns, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
    return True


@dataclass(frozen=True)
class Impairment:
    """What netem does to one direction: a constant delay (seconds), and the shares (0..1)
    of packets lost, sent at once past the delayed ones (netem's ``reorder``, which needs a
    delay), and duplicated; ``limit`` packets at most wait (netem's default is 1000)."""

    delay: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    limit: int = 100000

    def netem(self) -> tuple[str, ...]:
        """As ``tc qdisc add … netem`` arguments."""
        args = ["limit", str(self.limit), "delay", f"{self.delay * 1000:g}ms"]
        for name, share in (("loss", self.loss), ("reorder", self.reorder)):
            if share:
                args += [name, f"{share * 100:g}%"]
        if self.duplicate:
            args += ["duplicate", f"{self.duplicate * 100:g}%"]
        return tuple(args)

    def relay(self) -> str:
        """As ``UdpImpair``'s ``set`` arguments (microseconds, parts per million)."""
        ppm = [round(x * 1_000_000) for x in (self.loss, self.reorder, self.duplicate)]
        return " ".join(str(v) for v in (round(self.delay * 1e6), *ppm, self.limit))


UDP_IMPAIR_C = r"""
/* udp_impair: a netem-like relay for one UDP flow, for kernels without sch_netem.
 *
 *   udp_impair SEED A_IP A_PORT A_PEER_IP A_PEER_PORT B_IP B_PORT B_PEER_IP B_PEER_PORT
 *
 * What arrives on socket A (from anyone: A's peer) leaves from socket B to B's peer
 * (direction "ab"), and what arrives on B leaves from A to A's peer ("ba"). Each
 * direction has netem's impairments: a constant delay (a FIFO of due times), loss,
 * reordering (that share of packets goes out at once, jumping the delayed ones, as
 * netem's "reorder" does) and duplication, and a queue limit (beyond it: dropped).
 * Commands on stdin, one reply line each on stdout:
 *   set DIR DELAY_US LOSS_PPM REORDER_PPM DUP_PPM LIMIT  -> ok
 *   stats                                                -> a JSON line of counters
 * It prints "ready" once both sockets are bound, and exits at the end of stdin.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOT 2048
#define QCAP 16384
#define BATCH 64

struct pkt { uint64_t due; uint32_t len; unsigned char data[SLOT]; };

struct dir {
    const char *name;
    int in_fd, out_fd;
    struct sockaddr_in to;
    uint64_t delay_ns;
    uint32_t loss, reorder, dup, limit; /* parts per million; packets */
    struct pkt *q;
    uint32_t head, count;
    unsigned long long rx, tx, lost, dups, reordered, overflow, send_errors;
};

static uint64_t rng_state;

static uint32_t ppm(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % 1000000u);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int udp_socket(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 16 << 20;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (fd < 0 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) return -1;
    return fd;
}

static void send_now(struct dir *d, const unsigned char *data, uint32_t len) {
    if (sendto(d->out_fd, data, len, 0, (struct sockaddr *)&d->to, sizeof d->to) < 0)
        d->send_errors++;
    else
        d->tx++;
}

static void enqueue(struct dir *d, const unsigned char *data, uint32_t len, uint64_t due) {
    if (d->count >= d->limit || d->count >= QCAP) {
        d->overflow++;
        return;
    }
    struct pkt *p = &d->q[(d->head + d->count) % QCAP];
    p->due = due;
    p->len = len;
    memcpy(p->data, data, len);
    d->count++;
}

static void flush(struct dir *d, uint64_t now) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    while (d->count && d->q[d->head].due <= now) {
        int n = 0;
        while (n < BATCH && n < (int)d->count) {
            struct pkt *p = &d->q[(d->head + n) % QCAP];
            if (p->due > now) break;
            iov[n].iov_base = p->data;
            iov[n].iov_len = p->len;
            memset(&msgs[n].msg_hdr, 0, sizeof msgs[n].msg_hdr);
            msgs[n].msg_hdr.msg_name = &d->to;
            msgs[n].msg_hdr.msg_namelen = sizeof d->to;
            msgs[n].msg_hdr.msg_iov = &iov[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            n++;
            if ((d->head + n) % QCAP == 0) break; /* keep the batch contiguous */
        }
        int sent = sendmmsg(d->out_fd, msgs, n, 0);
        if (sent <= 0) {
            d->send_errors++;
            sent = 1; /* drop the packet it refused */
        } else {
            d->tx += sent;
        }
        d->head = (d->head + sent) % QCAP;
        d->count -= sent;
    }
}

static void receive(struct dir *d) {
    static unsigned char bufs[BATCH][SLOT];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int round = 0; round < 16; round++) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = SLOT;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(d->in_fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        uint64_t now = now_ns();
        for (int i = 0; i < n; i++) {
            uint32_t len = msgs[i].msg_len;
            d->rx++;
            if (d->loss && ppm() < d->loss) {
                d->lost++;
                continue;
            }
            int copies = (d->dup && ppm() < d->dup) ? 2 : 1;
            d->dups += copies - 1;
            for (int c = 0; c < copies; c++) {
                if (d->reorder && ppm() < d->reorder) {
                    d->reordered++;
                    send_now(d, bufs[i], len);
                } else {
                    enqueue(d, bufs[i], len, now + d->delay_ns);
                }
            }
        }
        if (n < BATCH) return;
    }
}

static void stats(struct dir *d, int last) {
    printf("\"%s\": {\"rx\": %llu, \"tx\": %llu, \"lost\": %llu, \"duplicated\": %llu, "
           "\"reordered\": %llu, \"overflow\": %llu, \"send_errors\": %llu, \"queued\": %u}%s",
           d->name, d->rx, d->tx, d->lost, d->dups, d->reordered, d->overflow, d->send_errors,
           d->count, last ? "" : ", ");
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s SEED A_IP A_PORT A_PEER_IP A_PEER_PORT "
                        "B_IP B_PORT B_PEER_IP B_PEER_PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    rng_state = strtoull(argv[1], NULL, 10) * 2654435761u + 88172645463325252ull;
    int a = udp_socket(argv[2], atoi(argv[3]));
    int b = udp_socket(argv[6], atoi(argv[7]));
    if (a < 0 || b < 0) {
        perror("bind");
        return 1;
    }
    struct dir dirs[2] = {
        {.name = "ab", .in_fd = a, .out_fd = b, .limit = 1000},
        {.name = "ba", .in_fd = b, .out_fd = a, .limit = 1000},
    };
    const char *peer_ip[2] = {argv[8], argv[4]};
    const char *peer_port[2] = {argv[9], argv[5]};
    for (int i = 0; i < 2; i++) {
        dirs[i].to.sin_family = AF_INET;
        dirs[i].to.sin_port = htons(atoi(peer_port[i]));
        if (inet_pton(AF_INET, peer_ip[i], &dirs[i].to.sin_addr) != 1) return 2;
        dirs[i].q = calloc(QCAP, sizeof(struct pkt));
        if (!dirs[i].q) return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[256];
    size_t fill = 0;
    for (;;) {
        uint64_t now = now_ns();
        flush(&dirs[0], now);
        flush(&dirs[1], now);
        struct timespec ts, *tsp = NULL;
        uint64_t next = UINT64_MAX;
        for (int i = 0; i < 2; i++) {
            struct dir *d = &dirs[i];
            if (d->count && d->q[d->head].due < next) next = d->q[d->head].due;
        }
        if (next != UINT64_MAX) {
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = wait / 1000000000u;
            ts.tv_nsec = wait % 1000000000u;
            tsp = &ts;
        }
        struct pollfd fds[3] = {{a, POLLIN, 0}, {b, POLLIN, 0}, {0, POLLIN, 0}};
        if (ppoll(fds, 3, tsp, NULL) < 0 && errno != EINTR) return 1;
        if (fds[0].revents & POLLIN) receive(&dirs[0]);
        if (fds[1].revents & POLLIN) receive(&dirs[1]);
        if (fds[2].revents & (POLLIN | POLLHUP)) {
            ssize_t r = read(0, line + fill, sizeof line - 1 - fill);
            if (r <= 0) return 0;
            fill += (size_t)r;
            line[fill] = 0;
            char *nl;
            while ((nl = strchr(line, '\n'))) {
                *nl = 0;
                char which[8];
                unsigned long long delay_us;
                unsigned loss, reorder, dup, limit;
                if (sscanf(line, "set %7s %llu %u %u %u %u", which, &delay_us, &loss, &reorder,
                           &dup, &limit) == 6) {
                    struct dir *d = strcmp(which, "ab") == 0 ? &dirs[0] : &dirs[1];
                    d->delay_ns = delay_us * 1000u;
                    d->loss = loss, d->reorder = reorder, d->dup = dup, d->limit = limit;
                    printf("ok\n");
                } else if (strcmp(line, "stats") == 0) {
                    printf("{");
                    stats(&dirs[0], 0);
                    stats(&dirs[1], 1);
                    printf("}\n");
                } else {
                    printf("{\"unknown\": true}\n");
                }
                size_t used = (size_t)(nl + 1 - line);
                memmove(line, nl + 1, fill - used + 1);
                fill -= used;
            }
            if (fill >= sizeof line - 1) fill = 0;
        }
    }
}
"""


def build_udp_impair(workdir: Path) -> str:
    """Compile the relay (once per ``workdir``); returns the executable's path."""
    exe = workdir / "udp_impair"
    if not exe.exists():
        src = workdir / "udp_impair.c"
        src.write_text(UDP_IMPAIR_C)
        run("gcc", "-O2", "-o", str(exe), str(src), timeout=60)
    return str(exe)


class UdpImpair:
    """netem for one UDP flow, in userspace: socket A (for A's peer to send to) and socket B
    (for B's peer), both bound in namespace ``ns``; what A receives leaves from B to B's
    peer (direction "ab"), what B receives leaves from A to A's peer ("ba"), each delayed,
    dropped, reordered and duplicated as ``set`` says. Point the two peers' endpoints at B
    and A. ``stop`` ends it by PID."""

    def __init__(
        self,
        ns: str,
        exe: str,
        a: tuple[str, int],
        a_peer: tuple[str, int],
        b: tuple[str, int],
        b_peer: tuple[str, int],
        seed: int = 1,
    ) -> None:
        self.a, self.b = a, b
        args = [str(seed)]
        for host, port in (a, a_peer, b, b_peer):
            args += [host, str(port)]
        self.proc: subprocess.Popen | None = popen_in(
            ns, exe, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            self._line("start")
        except BaseException:
            self.stop()
            raise

    def _line(self, what: str, timeout: float = 10) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"udp_impair: no answer to {what} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"udp_impair exited ({self.proc.poll()}) on {what}")
        return line.strip()

    def _cmd(self, line: str) -> str:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._line(line)

    def set(self, direction: str, impairment: Impairment | None) -> None:
        """Impair direction "ab" or "ba" (None: pass everything at once)."""
        spec = (impairment or Impairment()).relay()
        if self._cmd(f"set {direction} {spec}") != "ok":
            raise RuntimeError(f"udp_impair refused set {direction} {spec}")

    def stats(self) -> dict:
        return json.loads(self._cmd("stats"))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop(proc)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


# -- wireguard-go -------------------------------------------------------------------------------


def secret_file(path: Path, key) -> str:
    """Write a key (anything with ``to_base64``) as ``wg`` reads it: mode 0600, one line."""
    path.write_text(key.to_base64() + "\n")
    os.chmod(path, 0o600)
    return str(path)


def remove_stale_socket(name: str) -> None:
    """Remove the UAPI socket of ``name`` if nobody serves it (its owner was SIGKILLed)."""
    path = Path(SOCK_DIR) / f"{name}.sock"
    if path.exists() and run("wg", "show", name, check=False, timeout=5).returncode:
        path.unlink(missing_ok=True)  # `wg` itself removes a socket it finds refusing


class WireguardGo:
    """``wireguard-go -f IFNAME`` in namespace ``ns``; ``stop`` ends it by PID.

    Its log, key files and pre-shared-key file go to ``workdir``. ``start`` returns only
    once the UAPI socket exists (or raises, with the process already stopped).
    """

    def __init__(self, ns: str, ifname: str, workdir: Path, verbose: bool = False) -> None:
        self.ns, self.ifname, self.workdir = ns, ifname, workdir
        self.verbose = verbose
        self.log_path = workdir / f"wireguard-go-{ifname}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def sock_path(self) -> str:
        return f"{SOCK_DIR}/{self.ifname}.sock"

    def start(self, timeout: float = 10) -> WireguardGo:
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        if self.verbose:
            env["LOG_LEVEL"] = "verbose"
        with open(self.log_path, "a") as log:  # the child keeps its own descriptor
            self.proc = popen_in(
                self.ns, "wireguard-go", "-f", self.ifname, stdout=log, stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        try:
            wait_for(lambda: os.path.exists(self.sock_path), timeout, "wireguard-go", self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def set(self, *args: str) -> None:
        """``wg set IFNAME ARGS``."""
        in_ns(self.ns, "wg", "set", self.ifname, *args)

    def _peer_args(self, public_key, psk=None, allowed_ips: Iterable[str] = (), endpoint=None):
        args = ["peer", public_key.to_base64()]
        if psk is not None:
            args += ["preshared-key", secret_file(self.workdir / f"{self.ifname}.psk", psk)]
        if allowed_ips:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            args += ["endpoint", f"{endpoint[0]}:{endpoint[1]}"]
        return args

    def configure(self, private_key, listen_port: int, peer=None, **peer_kw) -> None:
        """Private key and port, and a first peer (``set_peer``'s arguments) in the same set."""
        key_file = secret_file(self.workdir / f"{self.ifname}.key", private_key)
        args = ["private-key", key_file, "listen-port", str(listen_port)]
        if peer is not None:
            args += self._peer_args(peer, **peer_kw)
        self.set(*args)

    def set_peer(self, public_key, psk=None, allowed_ips: Iterable[str] = (), endpoint=None):
        self.set(*self._peer_args(public_key, psk, allowed_ips, endpoint))

    def remove_peer(self, public_key) -> None:
        self.set("peer", public_key.to_base64(), "remove")

    def up(self, *addresses: str, mtu: int = 1420) -> None:
        """Addresses on its TUN, then the TUN up."""
        link_up(self.ns, self.ifname, *addresses, mtu=mtu)

    def dump(self) -> list[list[str]]:
        """``wg show IFNAME dump``: the interface line, then a line a peer, split at tabs."""
        out = in_ns(self.ns, "wg", "show", self.ifname, "dump").stdout
        return [line.split("\t") for line in out.splitlines()]

    def log_text(self, last: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except OSError:
            return "(no wireguard-go log)"

    def stop(self) -> None:
        """By PID; a SIGKILLed wireguard-go leaves its socket, which goes too."""
        stop(self.proc)
        remove_stale_socket(self.ifname)

    def __enter__(self) -> WireguardGo:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
