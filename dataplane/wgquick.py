"""What wg-quick does around a WireGuard interface besides ``wg``: routes, policy routing
for default routes, the Pre/Post Up/Down hooks and DNS.

Theory of operation. The facts follow wireguard-tools ``src/wg-quick/linux.bash``
(``add_route``, ``add_default``, ``set_dns``, ``execute_hooks``); the code is ours.

* **Routes** are planned from data first (:func:`plan_routes`, no I/O, testable without
  root) and then applied with ``ip``. ``Table = off`` adds none. ``Table = N`` (a number or
  a name from ``rt_tables``) puts every AllowedIPs prefix, ``/0`` included, in table N.
  ``Table = auto`` (or no Table) routes each prefix in the main table, except a ``/0``,
  which would also capture our own encrypted UDP: it gets wg-quick's policy routing,
  per address family::

      fwmark = table = FwMark, or the first of 51820, 51821, ... whose tables are empty
      ip -4 rule add not fwmark T table T        # unmarked traffic: the tunnel's table
      ip -4 rule add table main suppress_prefixlength 0   # main, except its default route
      ip -4 route add 0.0.0.0/0 dev NAME table T
      net.ipv4.conf.all.src_valid_mark = 1       # IPv4 only, as wg-quick

  Our UDP socket carries the mark (``SO_MARK``), so it skips table T and leaves by the
  main table's default route. Prefixes are applied longest first, as wg-quick sorts them.
* **Teardown** is a :class:`Teardown`: every command that changed something pushes its
  exact inverse (``ip rule add X`` -> ``ip rule del X``) the moment it succeeded, and
  ``run()`` replays them last-in first-out, each even if an earlier one failed. Unlike
  wg-quick's ``del_if`` it never deletes a rule it did not add (wg-quick deletes every
  rule that looks up table T). ``src_valid_mark`` is left at 1, as wg-quick leaves it:
  other interfaces may rely on it.
* **Hooks** run one by one with ``bash -c`` (``sh -c`` where bash is missing), ``%i``
  replaced by the interface name, stdin closed, stdout/stderr inherited, in their own
  process group so that a hook that outlives :data:`HOOK_TIMEOUT` is killed whole.
  A failing PreUp/PostUp raises :class:`HookError`; Down hooks are logged and skipped.
* **DNS** goes to ``resolvconf -a [PREFIX]NAME -m 0 -x`` with ``nameserver``/``search``
  lines and is removed with ``resolvconf -d [PREFIX]NAME -f``; PREFIX comes from
  ``/etc/resolvconf/interface-order`` (``tun.`` on Debian) as in wg-quick. Without
  ``resolvconf`` the interface still comes up and a warning says DNS was not applied.

Not done (wg-quick does it): the nftables/iptables rules that wg-quick adds with a
default route (conntrack mark save/restore for rp_filter, and dropping packets for our
addresses arriving on other interfaces), the MTU computed from the endpoint route, and
``SaveConfig``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dataplane.transport.tun import TunError, run_ip

__all__ = [
    "FIRST_TABLE",
    "HOOK_TIMEOUT",
    "HookError",
    "RoutePlan",
    "SetupError",
    "Teardown",
    "add_routes",
    "dns_input",
    "free_table",
    "plan_routes",
    "resolvconf_name",
    "run_hooks",
    "set_dns",
]

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0
"""Seconds a hook (or resolvconf) may run before its process group is killed."""
FIRST_TABLE = 51820
"""wg-quick's first candidate fwmark/table for the policy routing of a default route."""
MAX_TABLE_PROBES = 1000  # bound on the search for an empty table; wg-quick has none
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
INTERFACE_ORDER = "/etc/resolvconf/interface-order"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Runner = Callable[..., str]  # run_ip's signature: ("-4", "rule", "add", ...) -> stdout


class SetupError(RuntimeError):
    """Routes, rules, DNS or a hook could not be set up (message is one line)."""


class HookError(SetupError):
    """A PreUp/PostUp hook failed or timed out."""


# -- teardown ---------------------------------------------------------------------------------


class Teardown:
    """Inverse actions, replayed last-in first-out; each runs even if another failed."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object], bool]] = []

    def push(self, what: str, undo: Callable[[], object], *, quiet: bool = False) -> None:
        """``quiet``: a failure is expected when the interface is already gone (routes
        through a deleted link disappear with it), so it is logged at debug level only."""
        self._steps.append((what, undo, quiet))

    def __len__(self) -> int:
        return len(self._steps)

    def run(self) -> None:
        while self._steps:
            what, undo, quiet = self._steps.pop()
            try:
                undo()
            except Exception as e:  # noqa: BLE001 - undo the rest regardless
                log.log(logging.DEBUG if quiet else logging.ERROR, "%s failed: %s", what, e)


def _ip_step(teardown: Teardown, run: Runner, args: Sequence[str], undo: Sequence[str],
             *, quiet_undo: bool = False) -> None:  # fmt: skip
    try:
        run(*args)
    except TunError as e:
        raise SetupError(str(e)) from None

    def inverse() -> None:
        log.info("[#] ip %s", " ".join(undo))
        run(*undo)

    teardown.push(f"`ip {' '.join(undo)}`", inverse, quiet=quiet_undo)


# -- routes -----------------------------------------------------------------------------------


@dataclass
class RoutePlan:
    """What :func:`add_routes` will do.

    ``routes``: (prefix, table) longest prefix first; table ``None`` is the main table.
    ``policy``: the IP versions whose ``/0`` needs policy routing (Table auto only).
    """

    routes: list[tuple[IPNetwork, str | None]] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)


def _table_mode(table: str | None) -> str:
    # wg-quick compares with "off"/"auto" case-sensitively and hands anything else to
    # `ip ... table`, where "Off" then fails; accepting any case is kinder and no less safe.
    low = (table or "auto").lower()
    return low if low in ("off", "auto") else "table"


def plan_routes(
    table: str | None,
    addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    allowed_ips: Iterable[IPNetwork],
) -> RoutePlan:
    """The routes wg-quick's ``add_route`` adds for these AllowedIPs (no I/O)."""
    plan = RoutePlan()
    mode = _table_mode(table)
    if mode == "off":
        return plan
    nets = sorted(dict.fromkeys(allowed_ips), key=lambda n: (-n.prefixlen, n.version, n))
    own = list(addresses)
    for net in nets:
        if mode == "table":
            plan.routes.append((net, table))
        elif net.prefixlen == 0:
            if net.version not in plan.policy:
                plan.policy.append(net.version)
        elif not any(
            a.version == net.version
            and net.prefixlen >= a.network.prefixlen
            and net.network_address in a.network
            for a in own
        ):
            # wg-quick skips a prefix `ip route show dev NAME match` already covers; on a
            # fresh interface those are exactly the prefixes of its own addresses.
            plan.routes.append((net, None))
    return plan


def _table_empty(run: Runner, version: int, table: int) -> bool:
    try:
        return not run(f"-{version}", "route", "show", "table", str(table)).strip()
    except TunError:  # e.g. IPv6 disabled: nothing there
        return True


def free_table(run: Runner = run_ip) -> int:
    """wg-quick's choice of fwmark/table: the first from 51820 with no IPv4/IPv6 routes."""
    for table in range(FIRST_TABLE, FIRST_TABLE + MAX_TABLE_PROBES):
        if _table_empty(run, 4, table) and _table_empty(run, 6, table):
            return table
    raise SetupError(
        f"no empty routing table in {FIRST_TABLE}..{FIRST_TABLE + MAX_TABLE_PROBES - 1} "
        "for the default route (set FwMark or Table)"
    )


def _ensure_src_valid_mark(path: str = SRC_VALID_MARK) -> None:
    # Lets the reverse-path filter see the mark of our replies' reverse route. wg-quick
    # writes it only when it is not 1 already; so do we, which also lets a container
    # with a read-only /proc/sys and the value preset come up.
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return
        with open(path, "w") as f:
            f.write("1\n")
    except OSError as e:
        raise SetupError(
            f"cannot set net.ipv4.conf.all.src_valid_mark=1 for the default route: {e.strerror}"
        ) from None
    log.info("[#] sysctl -q net.ipv4.conf.all.src_valid_mark=1")


def add_routes(
    name: str,
    plan: RoutePlan,
    teardown: Teardown,
    *,
    policy_table: int | None = None,
    run: Runner = run_ip,
    src_valid_mark: str = SRC_VALID_MARK,
) -> None:
    """Apply ``plan`` to interface ``name``; ``policy_table`` is the fwmark/table of the
    policy routing (required when ``plan.policy`` is not empty; the caller has already
    marked the UDP socket with it)."""
    for net, table in plan.routes:
        v = f"-{net.version}"
        if table is None:
            # `replace`, not `add`: a prefix that another device routes (or a second run
            # after a crash) is taken over instead of failing the whole interface.
            args = [v, "route", "replace", str(net), "dev", name]
            undo = [v, "route", "del", str(net), "dev", name]
        else:
            args = [v, "route", "add", str(net), "dev", name, "table", table]
            undo = [v, "route", "del", str(net), "dev", name, "table", table]
        log.info("[#] ip %s", " ".join(args))
        _ip_step(teardown, run, args, undo, quiet_undo=True)
    if not plan.policy:
        return
    if policy_table is None:
        raise ValueError("policy routing needs a table")
    t = str(policy_table)
    for version in plan.policy:
        v = f"-{version}"
        default = "0.0.0.0/0" if version == 4 else "::/0"
        for args, undo, quiet in (
            ([v, "rule", "add", "not", "fwmark", t, "table", t],
             [v, "rule", "del", "not", "fwmark", t, "table", t], False),
            ([v, "rule", "add", "table", "main", "suppress_prefixlength", "0"],
             [v, "rule", "del", "table", "main", "suppress_prefixlength", "0"], False),
            ([v, "route", "add", default, "dev", name, "table", t],
             [v, "route", "del", default, "dev", name, "table", t], True),
        ):  # fmt: skip
            log.info("[#] ip %s", " ".join(args))
            _ip_step(teardown, run, args, undo, quiet_undo=quiet)
        if version == 4:
            _ensure_src_valid_mark(src_valid_mark)


# -- hooks ------------------------------------------------------------------------------------


def _shell() -> str:
    return shutil.which("bash") or shutil.which("sh") or "/bin/sh"


def _run_bounded(argv: list[str], timeout: float, stdin: bytes | None = None) -> int:
    """Run ``argv`` in its own process group; kill the group after ``timeout`` s.
    Returns the exit status (negative: killed by that signal); TimeoutError on timeout."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise TimeoutError(f"did not finish within {timeout:g} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this Popen created, nothing else
    except ProcessLookupError:
        pass
    proc.wait()


def _status_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"failed with exit status {code}"


def run_hooks(
    phase: str, hooks: Iterable[str], name: str, *, check: bool, timeout: float = HOOK_TIMEOUT
) -> None:
    """Run the ``phase`` (PreUp, PostUp, PreDown, PostDown) hooks in order.

    ``check``: a failure raises :class:`HookError` and the remaining hooks do not run
    (Up hooks); otherwise it is logged and the next hook runs (Down hooks).
    """
    shell = _shell()
    for hook in hooks:
        command = hook.replace("%i", name)
        log.info("[#] %s", command)
        try:
            code = _run_bounded([shell, "-c", command], timeout)
            problem = None if code == 0 else _status_text(code)
        except TimeoutError as e:
            problem = str(e)
        except OSError as e:
            problem = f"could not start {shell}: {e.strerror}"
        if problem is None:
            continue
        message = f"{phase} hook `{command}` {problem}"
        if check:
            raise HookError(message)
        log.error("%s", message)


# -- DNS --------------------------------------------------------------------------------------


def _split_dns(dns: Iterable[str]) -> tuple[list[str], list[str]]:
    servers, search = [], []
    for item in dns:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            search.append(item)
        else:
            servers.append(item)
    return servers, search


def dns_input(dns: Iterable[str]) -> str:
    """The text wg-quick pipes into ``resolvconf -a``; empty when there is no server."""
    servers, search = _split_dns(dns)
    if not servers:
        return ""
    lines = [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def resolvconf_name(
    name: str, *, order: str = INTERFACE_ORDER, resolvconf: str | None = None
) -> str:
    """``NAME`` with the prefix Debian's resolvconf orders by (``tun.NAME``), as wg-quick:
    the first ``word*`` line of interface-order, unless resolvconf is a symlink
    (systemd-resolved's ``resolvectl``, which takes the name as is)."""
    if resolvconf is not None and os.path.islink(resolvconf):
        return name
    try:
        with open(order) as f:
            lines = f.read().splitlines()
    except OSError:
        return name
    for line in lines:
        line = line.strip()
        if (
            len(line) > 1
            and line.endswith("*")
            and all(c.isascii() and (c.isalnum() or c == "-") for c in line[:-1])
        ):
            return f"{line[:-1]}.{name}"
    return name


def set_dns(
    name: str, dns: Sequence[str], teardown: Teardown, *, timeout: float = HOOK_TIMEOUT
) -> bool:
    """Apply ``DNS`` like wg-quick's ``set_dns``; returns whether it was applied."""
    if not dns:
        return False
    text = dns_input(dns)
    if not text:
        log.warning(
            "DNS = %s not applied: only search domains and no server (wg-quick ignores them too)",
            ", ".join(dns),
        )
        return False
    resolvconf = shutil.which("resolvconf")
    if resolvconf is None:
        log.warning("DNS = %s not applied: resolvconf is not installed", ", ".join(dns))
        return False
    rname = resolvconf_name(name, resolvconf=resolvconf)
    add = [resolvconf, "-a", rname, "-m", "0", "-x"]
    log.info("[#] resolvconf -a %s -m 0 -x", rname)
    try:
        code = _run_bounded(add, timeout, text.encode())
    except (TimeoutError, OSError) as e:
        raise SetupError(f"`resolvconf -a {rname}` {e}") from None
    if code:
        raise SetupError(f"`resolvconf -a {rname} -m 0 -x` {_status_text(code)}")

    def undo() -> None:
        log.info("[#] resolvconf -d %s -f", rname)
        status = _run_bounded([resolvconf, "-d", rname, "-f"], timeout)
        if status:
            raise OSError(f"`resolvconf -d {rname} -f` {_status_text(status)}")

    teardown.push(f"removing DNS of {name}", undo)
    return True
