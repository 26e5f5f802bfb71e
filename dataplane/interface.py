"""A running WireGuard interface: wg-quick file -> DataPlane + driver + UDP + TUN + UAPI.

Theory of operation. ``RunningInterface.start()`` builds, in this order (the order of
wg-quick's ``cmd_up``), and undoes in reverse on any failure:

1. the TUN device named after the file (``wg0.conf`` -> ``wg0``) with the file's MTU
   (default 1420) and a TX queue of 1000; then the ``PreUp`` hooks (wg-quick runs them
   right after creating the link, so they may refer to it);
2. the core, a ``DataPlane`` inside a ``uapi.CoreSlot`` (inert until a private key is
   set) so that ``wg set private-key`` can replace it, driven by a ``ThreadedDataPlane``;
3. the TUN as overlay transport: our addresses are delivered to it, and every packet that
   a peer sends, is decrypted and passes AllowedIPs goes to it
   (``set_routes(inbound={"0.0.0.0/0": tun, "::/0": tun})``): the kernel decides what is
   local, as with any interface;
4. the UDP underlay (a rebindable :class:`UdpTransport`) on ``ListenPort`` (random if absent),
   dual-stack on ``::`` where IPv6 exists. It keeps one underlay id for its whole life
   and swaps only its socket on ``wg set listen-port``, so every peer, including peers
   added later over UAPI (which land on underlay 0), keeps a valid underlay;
5. the ``uapi.Interface`` (peers, keys, port, fwmark through ``apply_config``: the same
   all-or-nothing path as ``wg setconf``), the addresses, link up, ``DNS`` through
   ``resolvconf``, and the routes of the AllowedIPs as wg-quick makes them according to
   ``Table`` (:mod:`dataplane.wgquick`): none for ``off``, all in table N for a number or
   name, and for ``auto`` a main-table route per prefix plus, for a ``/0``, wg-quick's
   policy routing. For that the interface's fwmark (FwMark, or else the first free
   table from 51820, set like ``wg set fwmark`` so ``wg show`` reports it) marks our UDP
   socket, whose encrypted packets thus skip the tunnel's table;
6. the UAPI server on ``/var/run/wireguard/NAME.sock``; then the ``PostUp`` hooks, which
   can use ``wg`` on the interface.

Every routing rule, route and DNS entry is recorded with its inverse command in a
``wgquick.Teardown`` as soon as it is made. A failing PreUp/PostUp hook fails ``start()``
with a one-line :class:`InterfaceError` after everything made so far is undone (without
running the Down hooks, like wg-quick's ``del_if`` trap). Hooks run under a timeout
(``hook_timeout``, 60 s by default).

``run()`` waits for SIGINT/SIGTERM, for the UAPI socket file to be deleted (this is how
``dataplane down`` stops an instance, and how wireguard-go is stopped too), for the TUN to
disappear, or for a driver thread to fail; ``close()`` then runs the ``PreDown`` hooks,
removes DNS, rules and routes, removes the socket, stops and joins every thread, closes
the TUN, which removes the interface, and runs the ``PostDown`` hooks. A failing Down hook
is logged and the teardown goes on.

``dataplane up`` always runs in the foreground (``--foreground`` is accepted for
compatibility with ``wireguard-go -f``): daemonizing after threads exist is unsafe in
Python, and service managers (systemd, ``ip netns exec … &``) do it better.
"""

from __future__ import annotations

import argparse
import contextlib
import errno as errno_mod
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dataplane.config import Config, ConfigError, interface_name, load
from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.transport._express import Express
from dataplane.transport.tun import TunDevice, TunError, TunTransport, interface_exists
from dataplane.transport.udp import UdpTransport, _errname
from dataplane.uapi import (
    DEFAULT_SOCKET_DIR,
    CoreSlot,
    Interface,
    SetRequest,
    UAPIError,
    UAPIServer,
)
from dataplane.wgquick import (
    HOOK_TIMEOUT,
    SetupError,
    Teardown,
    add_routes,
    free_table,
    plan_routes,
    run_hooks,
    set_dns,
)
from dataplane.wireguard.keys import PrivateKey, PublicKey

__all__ = ["InterfaceError", "open_underlay", "RunningInterface", "resolve_config_path"]

log = logging.getLogger(__name__)

CONFIG_DIR = "/etc/wireguard"
DEFAULT_MTU = 1420
POLL = 0.5
SO_MARK = getattr(socket, "SO_MARK", 36)


class InterfaceError(RuntimeError):
    """The interface could not be brought up (message is one line)."""


# -- the UDP underlay -------------------------------------------------------------------------


def open_underlay(driver: Any, port: int, *, mtu: int = DEFAULT_MTU) -> UdpTransport:
    """The interface's UDP underlay: dual-stack on ``::``, IPv4 only where there is no IPv6."""
    try:
        return UdpTransport(driver, ("::", port), mtu=mtu)
    except OSError as e:
        if e.errno not in (errno_mod.EAFNOSUPPORT, errno_mod.EADDRNOTAVAIL):
            raise
        return UdpTransport(driver, ("0.0.0.0", port), mtu=mtu)


# -- the interface ----------------------------------------------------------------------------


def _uapi_socket_live(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class RunningInterface:
    """One interface brought up from a parsed configuration; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: Config,
        *,
        socket_dir: str = DEFAULT_SOCKET_DIR,
        hook_timeout: float = HOOK_TIMEOUT,
    ):
        self.name = name
        self.config = config
        self.socket_dir = socket_dir
        self.hook_timeout = hook_timeout
        self.mtu = config.interface.mtu or DEFAULT_MTU
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self.tun: TunDevice | None = None
        self.driver: ThreadedDataPlane | None = None
        self.overlay: TunTransport | None = None
        self.udp: UdpTransport | None = None
        self.express: Express | None = None
        self.interface: Interface | None = None
        self.server: UAPIServer | None = None
        self.teardown = Teardown()  # rules, routes, DNS: undone in close()
        self.policy_table: int | None = None
        self._up = False  # start() completed: close() runs the Down hooks

    # -- building --

    def _new_core(self, key: PrivateKey) -> DataPlane:
        core = DataPlane(key, mtu=self.mtu)
        assert self.overlay is not None
        tun = self.overlay.id
        core.set_addresses([a.ip for a in self.config.interface.addresses], overlay=tun)
        core.set_routes(inbound={"0.0.0.0/0": tun, "::/0": tun})
        if self.express is not None and self.udp is not None:
            core.attach_express(self.express, tun, self.udp.id, on_errors=self._express_errors)
        return core

    def _express_errors(self, kind: str, counts: dict[int, int]) -> None:
        # Transmit errors of the established-session path, counted where the transports'
        # own are (``log_stats``, ``dataplane show``).
        target = self.udp.socket.errors if kind == "udp" and self.udp else None
        if kind == "tun" and self.tun is not None:
            target = self.tun.errors
        if target is not None:
            for code, n in counts.items():
                target[_errname(code)] += n

    def start(self) -> RunningInterface:
        sock_path = os.path.join(self.socket_dir, f"{self.name}.sock")
        if _uapi_socket_live(sock_path):
            raise InterfaceError(f"interface {self.name} is already up ({sock_path} answers)")
        try:
            self._build()
        except SetupError as e:
            self.close()
            raise InterfaceError(str(e)) from None
        except BaseException:
            self.close()
            raise
        self._up = True
        log.info(
            "interface %s up: UDP port %d, MTU %d, %d peer(s)",
            self.name,
            self.udp.port if self.udp else 0,
            self.mtu,
            len(self.config.peers),
        )
        return self

    def _hooks(self, phase: str, hooks: list[str], *, check: bool) -> None:
        run_hooks(phase, hooks, self.name, check=check, timeout=self.hook_timeout)

    def _build(self) -> None:
        cfg = self.config.interface
        self.tun = TunDevice(self.name, mtu=self.mtu)
        self._hooks("PreUp", cfg.pre_up, check=True)
        if cfg.save_config:
            log.warning("SaveConfig = true is not supported: %s will not be rewritten", self.name)
        key = cfg.private_key
        # Without a key the slot is inert (drops everything); the core's key is a placeholder.
        slot = CoreSlot(DataPlane(key or PrivateKey.generate(), mtu=self.mtu), inert=key is None)
        self.driver = ThreadedDataPlane(slot, name=f"wg-{self.name}")
        self.overlay = TunTransport(self.driver, self.tun, on_gone=self._tun_gone)
        slot.core = self._new_core(key or PrivateKey.generate())
        try:
            self.udp = open_underlay(self.driver, cfg.listen_port or 0, mtu=self.mtu)
        except OSError as e:
            raise InterfaceError(
                f"cannot listen on UDP port {cfg.listen_port}: {e.strerror}"
            ) from None
        # The established-session path: TUN <-> UDP for sessions that are up, in C.
        self.express = Express()
        self.express.set_tun(self.tun.fd, self.tun.io.vnet_hdr)
        self.udp.attach_express(self.express)
        self.overlay.express = self.express
        with self.driver.locked():
            slot.core.attach_express(
                self.express, self.overlay.id, self.udp.id, on_errors=self._express_errors
            )
        self.driver.start()
        self.interface = Interface(
            self.driver,
            listen_port=self.udp.port,
            bind_port=self.udp.rebind,
            apply_fwmark=self.udp.set_fwmark,
            core_factory=self._new_core,
        )
        try:
            self.interface.apply_config(self.config)
        except UAPIError as e:
            raise InterfaceError(f"configuration refused: {e}") from None
        self.tun.add_addresses(cfg.addresses)
        self.tun.set_up()
        set_dns(self.name, cfg.dns, self.teardown, timeout=self.hook_timeout)
        self._add_routes()
        self.server = UAPIServer(
            self.name, self.interface, socket_dir=self.socket_dir, on_deleted=self._socket_deleted
        )
        try:
            self.server.start()
        except (OSError, ValueError) as e:
            raise InterfaceError(f"cannot create the UAPI socket: {e}") from None
        self._hooks("PostUp", cfg.post_up, check=True)

    def _add_routes(self) -> None:
        cfg = self.config.interface
        plan = plan_routes(
            cfg.table, cfg.addresses, [n for p in self.config.peers for n in p.allowed_ips]
        )
        if plan.policy:
            assert self.interface is not None
            # wg-quick's get_fwmark/add_default: the fwmark is the table; pick a free one
            # and set it like `wg set fwmark` when the file has none.
            table = self.interface.fwmark or free_table()
            if not self.interface.fwmark:
                log.info("[#] wg set %s fwmark %d", self.name, table)
                try:
                    self.interface.set(SetRequest(fwmark=table))
                except UAPIError as e:
                    raise InterfaceError(f"cannot set fwmark {table}: {e}") from None
            self.policy_table = table
            self._check_mark(table)
        add_routes(self.name, plan, self.teardown, policy_table=self.policy_table)

    def _check_mark(self, mark: int) -> None:
        # Unmarked, our own encrypted datagrams would be routed into the tunnel (a loop),
        # and UdpTransport.set_fwmark only logs a failure: check the socket itself.
        sock = getattr(getattr(self.udp, "socket", None), "sock", None)
        if sock is None:
            return
        got = sock.getsockopt(socket.SOL_SOCKET, SO_MARK)
        if got != mark:
            raise InterfaceError(
                f"cannot mark the UDP socket with fwmark {mark} (needs CAP_NET_ADMIN), "
                "which the default route's policy routing needs"
            )

    # -- running --

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    def _tun_gone(self) -> None:
        self.stop(f"interface {self.name} was removed")

    def _socket_deleted(self) -> None:
        self.stop("UAPI socket deleted")

    def run(self, *, handle_signals: bool = True) -> int:
        """Serve until stopped; returns 0 for a requested stop, 1 for a failure."""
        previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(
                    sig, lambda s, f: self.stop(f"signal {signal.Signals(s).name}")
                )
        try:
            while not self._stopped.wait(POLL):
                if self.driver is not None and self.driver.errors:
                    self.stop(f"driver thread failed: {self.driver.errors[0]!r}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log.info("interface %s stopping: %s", self.name, self.stop_reason)
        failed = self.stop_reason is not None and self.stop_reason.startswith("driver")
        return 1 if failed else 0

    def log_stats(self, level: int = logging.INFO) -> None:
        """Log the drop counters of the core, the device and the transports."""
        if self.driver is None or not log.isEnabledFor(level):
            return
        with self.driver.locked() as core:
            st = core.stats()
        log.log(
            level,
            "core drops %s, device drops %s, delivered %d",
            st.drops,
            st.device_drops,
            st.delivered,
        )
        if self.tun is not None:
            log.log(
                level,
                "tun errors %s, rx %d tx %d, driver %s",
                dict(self.tun.errors),
                self.tun.io.rx_packets,
                self.tun.io.tx_packets,
                self.driver.stats,
            )
        if self.udp is not None:
            log.log(
                level,
                "udp errors %s, kernel receive drops %d",
                dict(self.udp.socket.errors),
                self.udp.rx_kernel_dropped,
            )
        if self.express is not None:
            ex = self.express
            log.log(
                level,
                "established-session path: bursts out %d (declined %d), in %d (declined %d)",
                ex.outbound_batches,
                ex.outbound_declined,
                ex.inbound_batches,
                ex.inbound_declined,
            )

    def close(self) -> None:
        """Tear everything down in reverse order; every step runs even if one fails."""
        up, self._up = self._up, False
        hooks = self.config.interface
        if up:
            try:
                self._hooks("PreDown", hooks.pre_down, check=False)
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                log.error("PreDown hooks failed: %s", e)
        try:
            self.log_stats()
        except Exception as e:  # noqa: BLE001 - statistics must not stop the teardown
            log.error("reading statistics failed: %s", e)
        # Rules and DNS first, while the interface still exists: from here on traffic goes
        # by the main table again instead of into a table whose device is going away.
        self.teardown.run()
        if self.express is not None:
            # Before any fd closes: the path must not write to a reused descriptor.
            self.express.disable()
            self.express.set_udp(-1, 0)
            self.express.set_tun(-1, False)
        steps = (
            ("UAPI server", self.server),
            ("UDP", self.udp),
            ("TUN transport", self.overlay),
            ("driver", self.driver),
            ("TUN", self.tun),
        )
        for what, part in steps:
            if part is None:
                continue
            try:
                part.close()
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                log.error("closing %s failed: %s", what, e)
        self.server = None
        self.udp = None
        self.overlay = None
        self.driver = None
        self.tun = None
        if up:
            try:
                self._hooks("PostDown", hooks.post_down, check=False)
            except Exception as e:  # noqa: BLE001 - nothing else left to do
                log.error("PostDown hooks failed: %s", e)


# -- the command line ---------------------------------------------------------------------------


def resolve_config_path(arg: str, config_dir: str = CONFIG_DIR) -> str:
    """``CONFIG`` as given if it looks like a path, else ``/etc/wireguard/NAME.conf``."""
    if os.sep in arg or arg.endswith(".conf") or os.path.exists(arg):
        return arg
    return os.path.join(config_dir, f"{arg}.conf")


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        metavar="CONFIG|NAME",
        help="wg-quick file, or NAME for "
        f"{CONFIG_DIR}/NAME.conf; the interface is named after the file",
    )
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground (default: detach once the interface is up, like wireguard-go)",
    )
    p.add_argument("--socket-dir", default=DEFAULT_SOCKET_DIR, help=argparse.SUPPRESS)


def add_down_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="interface to stop")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the interface to go away (default 10)",
    )
    p.add_argument("--socket-dir", default=DEFAULT_SOCKET_DIR, help=argparse.SUPPRESS)


def add_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?", help="interface (default: all)")
    p.add_argument("--socket-dir", default=DEFAULT_SOCKET_DIR, help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    print(f"dataplane: {message}", file=sys.stderr)
    return 1


class _Terminated(BaseException):
    """SIGTERM while ``start()`` runs: unwinds it so that it undoes what it made."""


@contextlib.contextmanager
def _terminate_interrupts() -> Iterator[None]:
    # start() may wait for hooks for a long time; like wg-quick's `trap del_if TERM`, a
    # SIGTERM then undoes the rules, routes and DNS made so far instead of leaving them
    # behind. Only the first signal interrupts: a second must not cut the teardown short.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_up(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    try:
        name = interface_name(path)
        config = load(path)
    except ConfigError as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dataplane: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    if args.foreground:
        return _run_up(name, config, args.socket_dir, on_up=None)
    return _daemonize(lambda on_up: _run_up(name, config, args.socket_dir, on_up=on_up))


def _run_up(name: str, config: Config, socket_dir: str, on_up: Callable[[], None] | None) -> int:
    iface = RunningInterface(name, config, socket_dir=socket_dir)
    try:
        with _terminate_interrupts():
            iface.start()
    except (InterfaceError, TunError) as e:
        return _fail(str(e))
    except _Terminated:
        iface.close()  # a no-op when start() unwound itself; not when it had just finished
        log.warning("interface %s: terminated while coming up", name)
        return 128 + signal.SIGTERM
    try:
        if on_up is not None:
            on_up()
        return iface.run()
    finally:
        iface.close()


def _daemonize(run: Callable[[Callable[[], None]], int]) -> int:
    """Run ``run(on_up)`` in a detached daemon (wireguard-go's behaviour without ``-f``);
    return once it reports the interface up (0) or has failed (its exit status).

    The fork happens before any thread exists. The daemon (a grandchild in its own session,
    so it never gets a controlling terminal) reports errors on the caller's stderr while
    it comes up; ``on_up`` tells the caller it is up and lets go of the caller's stdio,
    so that a caller reading our output (``subprocess.run``) is not held until ``down``.
    """
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child:
        os.close(ready_w)
        os.waitpid(child, 0)  # the intermediate child exits at once
        with os.fdopen(ready_r, "rb") as ready:
            report = ready.read()  # EOF: the daemon is up, or gone
        if report.startswith(b"up "):
            return 0
        # The daemon failed (and said why on stderr) or died; its status is in the report.
        return int(report) if report.strip().isdigit() else 1
    # Intermediate child: a new session, then the daemon itself, then leave.
    try:
        os.close(ready_r)
        os.setsid()
        if os.fork():
            os._exit(0)
    except BaseException:
        os._exit(1)
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)

        def on_up() -> None:
            os.write(ready_w, f"up {os.getpid()}".encode())
            os.close(ready_w)
            # Logging keeps writing to fds 1 and 2: from now on they lead nowhere.
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)

        code = run(on_up)
        try:
            os.write(ready_w, str(code).encode())  # never came up: the caller's status
        except OSError:
            pass  # reported "up" already
    except BaseException:  # noqa: BLE001 - a daemon has nobody to raise to
        log.exception("dataplane up failed")
    finally:
        os._exit(code)


def cmd_down(args: argparse.Namespace) -> int:
    path = os.path.join(args.socket_dir, f"{args.name}.sock")
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return _fail(f"{path} is not a socket")
    except FileNotFoundError:
        return _fail(f"interface {args.name} is not up (no {path})")
    was_here = interface_exists(args.name)
    # The running instance watches its socket file and shuts down when it goes, as
    # wireguard-go does: this also works across network namespaces.
    os.unlink(path)
    if was_here:
        end = time.monotonic() + args.timeout
        while interface_exists(args.name):
            if time.monotonic() > end:
                return _fail(f"interface {args.name} still exists after {args.timeout:g} s")
            time.sleep(0.05)
    return 0


def _uapi_get(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Parse a ``get=1`` reply into {"iface": {...}, "peers": [{...}]}."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"get=1\n\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    iface: dict[str, Any] = {}
    peers: list[dict[str, Any]] = []
    cur = iface
    for line in buf.decode("utf-8", "replace").splitlines():
        if "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k == "public_key":
            cur = {"allowed_ip": []}
            peers.append(cur)
        if k == "allowed_ip":
            cur.setdefault("allowed_ip", []).append(v)
        else:
            cur[k] = v
    if iface.get("errno", "0") != "0" or (peers and peers[-1].get("errno", "0") != "0"):
        raise OSError(f"UAPI get failed on {path}")
    return {"iface": iface, "peers": peers}


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _ago(sec: int) -> str:
    if sec <= 0:
        return "never"
    d = max(0, int(time.time()) - sec)
    return f"{d} second{'s' if d != 1 else ''} ago"


def format_status(name: str, state: dict[str, Any]) -> str:
    """``wg show``-like text for one interface."""
    i = state["iface"]
    lines = [f"interface: {name}"]
    if "private_key" in i:
        pub = PrivateKey(bytes.fromhex(i["private_key"])).public_key.to_base64()
        lines += [f"  public key: {pub}", "  private key: (hidden)"]
    if "listen_port" in i:
        lines.append(f"  listening port: {i['listen_port']}")
    if int(i.get("fwmark", 0)):
        lines.append(f"  fwmark: {int(i['fwmark']):#x}")
    for p in state["peers"]:
        lines.append("")
        lines.append(f"peer: {PublicKey(bytes.fromhex(p['public_key'])).to_base64()}")
        if p.get("preshared_key", "0" * 64) != "0" * 64:
            lines.append("  preshared key: (hidden)")
        if "endpoint" in p:
            lines.append(f"  endpoint: {p['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(p['allowed_ip']) or '(none)'}")
        lines.append(f"  latest handshake: {_ago(int(p.get('last_handshake_time_sec', 0)))}")
        rx, tx = int(p.get("rx_bytes", 0)), int(p.get("tx_bytes", 0))
        lines.append(f"  transfer: {_bytes(rx)} received, {_bytes(tx)} sent")
        ka = int(p.get("persistent_keepalive_interval", 0))
        if ka:
            lines.append(f"  persistent keepalive: every {ka} seconds")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    if args.name:
        names = [args.name]
    else:
        try:
            names = sorted(f[:-5] for f in os.listdir(args.socket_dir) if f.endswith(".sock"))
        except FileNotFoundError:
            names = []
    out = []
    status = 0
    for name in names:
        path = os.path.join(args.socket_dir, f"{name}.sock")
        try:
            out.append(format_status(name, _uapi_get(path)))
        except (OSError, ValueError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print(f"dataplane: cannot read interface {name}: {msg}", file=sys.stderr)
            status = 1
    if out:
        print("\n\n".join(out))
    return status


UP_HELP = "bring up a WireGuard interface from a wg-quick file (runs in the foreground)"
DOWN_HELP = "stop an interface started by `dataplane up` (removes its UAPI socket)"
SHOW_HELP = "show interfaces, peers, handshakes and transfer through the UAPI socket"
