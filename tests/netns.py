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
* ``WireguardGo`` runs ``wireguard-go -f`` in a namespace (``ip netns exec`` execs it in
  place, so the PID we hold is wireguard-go's), waits for its UAPI socket, configures it
  with ``wg set`` and stops it by PID: SIGTERM, then SIGKILL, then the removal of a UAPI
  socket that nobody serves any more.
* ``lab_up`` holds a test's lab (anything with ``up`` and ``close``) for a fixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
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
