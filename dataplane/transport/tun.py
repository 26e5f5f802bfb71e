"""The Linux TUN overlay: a kernel network interface whose IP packets the data plane carries.

``TunDevice`` opens ``/dev/net/tun`` with ``IFF_TUN | IFF_NO_PI`` (raw IP packets, no
packet-information header) and, by default, ``IFF_VNET_HDR`` with TSO and checksum offload
(``TUNSETOFFLOAD``, as wireguard-go does since 2023): the kernel then hands us TCP segments
of up to 64 KiB, which ``_tun.pyx`` cuts into MTU-sized packets, instead of one read and one
trip through the sending TCP stack per packet. ``TUNSETIFF`` creates the interface, or
attaches to an existing persistent TUN of that name (``ip tuntap add mode tun``). It then
configures the link. ``read_batch`` / ``write_batch`` move packets in and out of PacketBatch
slots through ``TunIO`` (``_tun.pyx``: poll + a burst of non-blocking reads, a loop of
writes, all without the GIL). ``TunTransport`` registers the device as an overlay transport
of a ``ThreadedDataPlane`` and runs two named threads: the reader (device -> driver input)
and the writer (driver output -> device). ``close()`` wakes the reader through an eventfd,
so shutdown never waits for traffic. Closing the fd removes an interface we created (a
non-persistent TUN lives as long as its fd); an attached persistent one is left in place.

Link configuration uses the ``ip`` command of iproute2 through ``subprocess``, not
pyroute2: it happens a handful of times per interface (never per packet), ``ip`` is
present wherever wireguard-tools and wg-quick are (wg-quick itself drives ``ip``), it
follows the caller's network namespace like any child process, its error messages are
already the ones an administrator knows, and it adds no dependency. The TX queue length
(default 1000 packets, ``txqueuelen``) is set explicitly because a TUN created from a
program starts at 500, and packets the kernel queues towards us while the reader is busy
would otherwise be dropped in bursts. IPv6 addresses get ``nodad``: the point-to-point
tunnel has no neighbours to detect, and duplicate address detection would leave the
address tentative (unusable) for a second or more after ``up``.

Errors a user can cause (no root / no CAP_NET_ADMIN, no ``/dev/net/tun``, the name taken
by another interface or process, a failing ``ip`` command) raise :class:`TunError` with
a one-line message; the CLI prints it without a traceback.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from dataplane._batch import PacketBatch
from dataplane.queues import QueueClosed
from dataplane.transport._tun import TunIO
from dataplane.transport.bookkeeping import ACCOUNT_DELAY, bookkeeping_due, hand_over

__all__ = ["TunDevice", "TunError", "TunTransport", "TUN_PATH"]

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
IFNAMSIZ = 16
DEFAULT_TXQUEUELEN = 1000
DEFAULT_MTU = 1420
READ_POLL_INTERVAL = 0.5
IP_TIMEOUT = 10.0
_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


class TunError(RuntimeError):
    """The TUN device could not be created or configured (message is one line)."""


def _errname(code: int) -> str:
    return errno_mod.errorcode.get(code, str(code))


def run_ip(*args: str) -> str:
    """Run ``ip ARGS`` in our network namespace; TunError with ip's own message on failure."""
    cmd = ["ip", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except FileNotFoundError:
        raise TunError("the `ip` command (iproute2) is not installed") from None
    except subprocess.TimeoutExpired:
        raise TunError(f"`{' '.join(cmd)}` did not finish within {IP_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise TunError(f"`{' '.join(cmd)}` failed: {msg[-1] if msg else done.returncode}")
    return done.stdout


def interface_exists(name: str) -> bool:
    """Whether ``name`` exists in the calling thread's network namespace (sysfs shows the
    namespace it was mounted in, so ask the kernel through a socket instead)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class TunDevice:
    """One TUN interface and its fd; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        mtu: int = DEFAULT_MTU,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
        path: str = TUN_PATH,
        offload: bool = True,
    ) -> None:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise TunError(f"bad interface name {name!r} (1-15 of a-zA-Z0-9_=+.-)")
        if not 68 <= mtu <= 65535:
            raise TunError(f"MTU must be 68..65535, got {mtu}")
        self.name = name
        self.mtu = mtu
        self.existed = interface_exists(name)
        self._closed = False
        self.offload = False
        self.fd = self._open(name, path, offload)
        try:
            if offload:
                self.offload = self._enable_offload()
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.io = TunIO(self.fd, self._wake_fd, vnet_hdr=offload)
            run_ip("link", "set", "dev", name, "mtu", str(mtu), "txqueuelen", str(txqueuelen))
        except BaseException:
            os.close(self.fd)
            raise
        self.errors: Counter[str] = Counter()

    def _enable_offload(self) -> bool:
        # TSO segments and checksums left to us: see _tun.pyx. A kernel without them
        # still works (every read then says "no GSO, checksum done").
        flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            log.info("TUN offloads unavailable on %s: %s", self.name, e.strerror)
            return False
        return True

    def _open(self, name: str, path: str, vnet_hdr: bool = False) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(
                f"{path} does not exist: load the tun module (modprobe tun) or give the "
                "container the device"
            ) from None
        except PermissionError:
            raise TunError(f"no permission to open {path}: run as root") from None
        except OSError as e:
            raise TunError(f"cannot open {path}: {e.strerror}") from None
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), flags)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == errno_mod.EPERM:
                msg = f"creating interface {name} needs CAP_NET_ADMIN: run as root"
            elif e.errno == errno_mod.EBUSY:
                msg = f"interface {name} is already in use by another process"
            elif e.errno == errno_mod.EINVAL and interface_exists(name):
                msg = f"interface {name} already exists and is not a TUN device"
            else:
                msg = f"cannot create TUN interface {name}: {e.strerror}"
            raise TunError(msg) from None
        return fd

    # -- configuration ------------------------------------------------------------------------

    def add_addresses(self, addresses: Iterable[object]) -> None:
        """Add ``addr/prefix`` interface addresses (IPv4 and IPv6)."""
        for a in addresses:
            iface = ipaddress.ip_interface(str(a))
            extra = ("nodad",) if iface.version == 6 else ()
            run_ip(f"-{iface.version}", "addr", "add", str(iface), "dev", self.name, *extra)

    def add_routes(self, prefixes: Iterable[object]) -> None:
        """Route prefixes to the interface (``ip route replace``), as wg-quick does for
        AllowedIPs."""
        for p in prefixes:
            net = ipaddress.ip_network(str(p), strict=False)
            run_ip(f"-{net.version}", "route", "replace", str(net), "dev", self.name)

    def set_up(self, up: bool = True) -> None:
        run_ip("link", "set", "dev", self.name, "up" if up else "down")

    # -- packets ------------------------------------------------------------------------------

    def read_batch(
        self, batch: PacketBatch | None = None, timeout: float | None = None
    ) -> PacketBatch:
        """Append the packets that are ready, waiting up to ``timeout`` s for the first."""
        if batch is None:
            batch = PacketBatch(mtu=self.mtu)
        n = self.io.read(batch, -1.0 if timeout is None else timeout)
        if n < 0:
            self.errors[_errname(-n)] += 1
        return batch

    def write_batch(self, batch: PacketBatch) -> int:
        """Write each alive packet of ``batch`` to the interface; returns how many went."""
        written, errs = self.io.write(batch)
        for code, count in errs.items():
            self.errors[_errname(code)] += count
        return written

    @property
    def gone(self) -> bool:
        """True once the interface was deleted under us (``ip link del``)."""
        return self._closed or self.io.device_failed()

    def wake(self) -> None:
        """Make a blocked ``read_batch`` return now."""
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        """Close the fd: an interface we created disappears with it."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        os.close(self.fd)
        os.close(self._wake_fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TunDevice {self.name} mtu={self.mtu}{' closed' if self._closed else ''}>"


class TunTransport:
    """An overlay transport of a ThreadedDataPlane over one ``TunDevice``.

    ``on_gone`` is called (from the reader thread) once if the interface disappears.
    """

    def __init__(
        self,
        driver: Any,
        device: TunDevice,
        *,
        capacity: int = 128,
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        self.device = device
        self._driver = driver
        self._capacity = capacity
        self._on_gone = on_gone
        self.handle = driver.new_overlay_transport()
        self.id: int = self.handle.id
        self._stop = threading.Event()
        self.dropped_input_batches = 0
        #: the established-session path (``transport._express.Express``), set by the owner
        self.express: Any = None
        self._threads = [
            driver.spawn(f"tun{self.id}-rx", self._read_loop),
            driver.spawn(f"tun{self.id}-tx", self._write_loop),
        ]
        # The driver (or a transport thread running an UPDATE) writes to the device itself:
        # a TUN write never blocks, and a thread hand-off per batch is most of a ping's RTT.
        self.handle.deliver_inline(self._write_now)

    def _read_loop(self) -> None:
        dev = self.device
        batch = PacketBatch(self._capacity, mtu=dev.mtu)
        due = 0.0  # when the established-session path's bookkeeping is owed
        while not self._stop.is_set():
            express = self.express
            account = False
            if express is None:
                dev.read_batch(batch, READ_POLL_INTERVAL)
            else:
                # Bursts of established sessions are read, sealed and sent in C; it returns
                # with a burst for the core, on a timeout or wake-up, or bookkeeping due.
                n, due = express.pump_outbound(
                    dev.io, batch, READ_POLL_INTERVAL, due, ACCOUNT_DELAY
                )
                if n < 0:
                    dev.errors[_errname(-n)] += 1
                account = bookkeeping_due(due)
            if len(batch) or account:
                # An empty batch only makes the core drain the path's tallies.
                due = 0.0
                batch, refused = hand_over(self.handle.incoming, batch, self._capacity, dev.mtu)
                self.dropped_input_batches += refused
            elif not self._stop.is_set() and dev.gone:
                log.warning("interface %s disappeared", dev.name)
                if self._on_gone is not None:
                    self._on_gone()
                return

    def _write_loop(self) -> None:
        out = self.handle.outgoing
        while True:
            try:
                batch = out.get(timeout=READ_POLL_INTERVAL)
            except QueueClosed:
                return
            if batch is None:
                if self._stop.is_set():
                    return
                continue
            self._write_now(batch)

    def _write_now(self, batch: Any) -> None:
        if not isinstance(batch, PacketBatch):
            batch = PacketBatch.from_packets(batch, mtu=self.device.mtu)
        self.device.write_batch(batch)

    def close(self) -> None:
        """Stop both threads and unregister; the device itself stays open (its owner closes)."""
        self._stop.set()
        self.device.wake()
        self._driver.remove_overlay_transport(self.id)
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join(5)

    def __repr__(self) -> str:
        return f"<TunTransport {self.id} {self.device!r}>"
