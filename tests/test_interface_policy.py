"""What ``dataplane up`` does like wg-quick around the interface: Table and the policy
routing of a default route, Pre/Post Up/Down hooks, DNS through resolvconf.

The first tests check :mod:`dataplane.wgquick` without root (route planning, the exact
commands and their inverses through a recording runner, hooks, DNS text). The others run
``python -m dataplane up`` inside network namespaces created here (``dppol<pid>n<k>``),
deleted at the end with every process started here, also when a test fails. DNS is only
ever given to a fake ``resolvconf`` that the test puts first on PATH; this machine's
resolver configuration is never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest
from icmp_ping import ping_cmd
from netns import REPO, TAG, Namespaces, in_ns, ip, require, run, stop, veth, wait_for

from dataplane.transport.tun import TunError
from dataplane.wgquick import (
    HookError,
    SetupError,
    Teardown,
    add_routes,
    dns_input,
    free_table,
    plan_routes,
    resolvconf_name,
    run_hooks,
    set_dns,
)
from dataplane.wireguard.keys import PrivateKey

_serial = itertools.count()

# -- without root: planning, commands, hooks, DNS text ---------------------------------------


def nets(*texts):
    return [ip_network(t) for t in texts]


ADDRS = [ip_interface("10.77.0.2/24"), ip_interface("fd77::2/64")]
ALLOWED = nets("0.0.0.0/0", "10.77.0.0/24", "10.60.0.0/16", "::/0", "fd60::/64", "10.61.1.1/32")


def test_plan_table_off_adds_nothing():
    for off in ("off", "Off"):
        plan = plan_routes(off, ADDRS, ALLOWED)
        assert plan.routes == [] and plan.policy == []


def test_plan_named_table_takes_every_prefix_longest_first():
    plan = plan_routes("1234", ADDRS, ALLOWED)
    assert plan.policy == []
    assert [(str(n), t) for n, t in plan.routes] == [
        ("fd60::/64", "1234"),
        ("10.61.1.1/32", "1234"),
        ("10.77.0.0/24", "1234"),
        ("10.60.0.0/16", "1234"),
        ("0.0.0.0/0", "1234"),
        ("::/0", "1234"),
    ]


@pytest.mark.parametrize("table", [None, "auto", "AUTO"])
def test_plan_auto_routes_main_and_policy_for_default(table):
    plan = plan_routes(table, ADDRS, ALLOWED + nets("10.60.0.0/16"))
    # 10.77.0.0/24 is our own address's prefix (already routed); /0 needs policy routing.
    assert [(str(n), t) for n, t in plan.routes] == [
        ("fd60::/64", None),
        ("10.61.1.1/32", None),
        ("10.60.0.0/16", None),
    ]
    assert plan.policy == [4, 6]
    assert plan_routes(None, ADDRS, nets("::/0")).policy == [6]


class Recorder:
    """A stand-in for ``run_ip``: records argument lists, fails on request."""

    def __init__(self, fail_on: tuple[str, ...] | None = None, shows: dict | None = None):
        self.calls: list[tuple[str, ...]] = []
        self.fail_on = fail_on
        self.shows = shows or {}

    def __call__(self, *args: str) -> str:
        self.calls.append(args)
        if args == self.fail_on:
            raise TunError(f"`ip {' '.join(args)}` failed: RTNETLINK answers: File exists")
        if args[1:3] == ("route", "show"):
            return self.shows.get((args[0], args[-1]), "")
        return ""


def test_policy_commands_and_their_exact_inverses(tmp_path):
    mark = tmp_path / "src_valid_mark"
    mark.write_text("0\n")
    run, td = Recorder(), Teardown()
    plan = plan_routes(None, ADDRS, nets("0.0.0.0/0", "::/0", "10.60.0.0/16"))
    add_routes("wgx", plan, td, policy_table=51820, run=run, src_valid_mark=str(mark))
    assert run.calls == [
        ("-4", "route", "replace", "10.60.0.0/16", "dev", "wgx"),
        ("-4", "rule", "add", "not", "fwmark", "51820", "table", "51820"),
        ("-4", "rule", "add", "table", "main", "suppress_prefixlength", "0"),
        ("-4", "route", "add", "0.0.0.0/0", "dev", "wgx", "table", "51820"),
        ("-6", "rule", "add", "not", "fwmark", "51820", "table", "51820"),
        ("-6", "rule", "add", "table", "main", "suppress_prefixlength", "0"),
        ("-6", "route", "add", "::/0", "dev", "wgx", "table", "51820"),
    ]
    assert mark.read_text().strip() == "1"
    added = list(run.calls)
    run.calls.clear()
    td.run()
    assert len(td) == 0
    # Last in, first out; each the same arguments with add/replace turned into del.
    assert run.calls == [
        (a[0], a[1], "del", *a[3:]) for a in reversed(added)
    ]  # fmt: skip


def test_a_failed_step_leaves_only_the_steps_before_it_to_undo(tmp_path):
    failing = ("-6", "rule", "add", "not", "fwmark", "7", "table", "7")
    run, td = Recorder(fail_on=failing), Teardown()
    (tmp_path / "m").write_text("1\n")
    plan = plan_routes(None, [], nets("0.0.0.0/0", "::/0"))
    with pytest.raises(SetupError, match="File exists"):
        add_routes("wgx", plan, td, policy_table=7, run=run,
                   src_valid_mark=str(tmp_path / "m"))  # fmt: skip
    assert len(td) == 3  # the three IPv4 steps
    run.calls.clear()
    td.run()
    assert [c[:3] for c in run.calls] == [("-4", "route", "del"), ("-4", "rule", "del"),
                                           ("-4", "rule", "del")]  # fmt: skip


def test_src_valid_mark_error_is_one_clear_line(tmp_path):
    plan = plan_routes(None, [], nets("0.0.0.0/0"))
    with pytest.raises(SetupError, match="src_valid_mark=1"):
        add_routes("wgx", plan, Teardown(), policy_table=9, run=Recorder(),
                   src_valid_mark=str(tmp_path / "missing" / "m"))  # fmt: skip


def test_teardown_runs_every_step_even_after_a_failure(caplog):
    done = []
    td = Teardown()
    td.push("first", lambda: done.append(1))
    td.push("second", lambda: 1 / 0)
    td.push("third", lambda: done.append(3))
    with caplog.at_level(logging.ERROR, logger="dataplane.wgquick"):
        td.run()
    assert done == [3, 1]
    assert "second failed" in caplog.text


def test_free_table_skips_tables_in_use_like_wg_quick():
    run = Recorder(shows={("-4", "51820"): "default dev x\n", ("-6", "51821"): "::/0 dev y\n"})
    assert free_table(run) == 51822


def test_hooks_substitute_the_name_and_run_in_order(tmp_path):
    out = tmp_path / "out"
    run_hooks("PostUp", [f"echo one %i >> {out}", f"echo two %i%i >> {out}"], "wgh0", check=True)
    assert out.read_text() == "one wgh0\ntwo wgh0wgh0\n"


def test_failing_up_hook_raises_with_a_clear_message_and_stops(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(HookError) as e:
        run_hooks("PreUp", ["exit 3", f"echo later > {out}"], "wgh0", check=True)
    assert str(e.value) == "PreUp hook `exit 3` failed with exit status 3"
    assert not out.exists()


def test_failing_down_hook_is_logged_and_the_next_one_runs(tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="dataplane.wgquick"):
        run_hooks("PreDown", ["false", f"echo %i > {out}"], "wgh0", check=False)
    assert out.read_text() == "wgh0\n"
    assert "PreDown hook `false` failed with exit status 1" in caplog.text


def test_hook_timeout_kills_the_hook_and_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(HookError, match="did not finish within 0.5 s"):
        run_hooks("PostUp", [f"sleep 30 & echo $! > {pidfile}; wait"], "wgh0", check=True,
                  timeout=0.5)  # fmt: skip
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())
    for _ in range(100):  # a killed orphan may linger as a zombie until it is reaped
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"background child {child} of the hook is still running")


def test_dns_text_like_wg_quick():
    assert dns_input(["10.0.0.1", "fd00::1", "corp.example", "lan"]) == (
        "nameserver 10.0.0.1\nnameserver fd00::1\nsearch corp.example lan\n"
    )
    assert dns_input(["corp.example"]) == ""  # wg-quick applies nothing without a server


def test_resolvconf_name_prefix_from_interface_order(tmp_path):
    order = tmp_path / "interface-order"
    order.write_text("lo.inet6\nlo.inet\nlo.@(dnsmasq|pdnsd)\nlo\ntun*\ntap*\n")
    tool = tmp_path / "resolvconf"
    tool.write_text("#!/bin/sh\n")
    assert resolvconf_name("wg0", order=str(order), resolvconf=str(tool)) == "tun.wg0"
    assert resolvconf_name("wg0", order=str(tmp_path / "none")) == "wg0"
    link = tmp_path / "resolvectl-link"
    link.symlink_to(tool)
    assert resolvconf_name("wg0", order=str(order), resolvconf=str(link)) == "wg0"


def test_dns_without_resolvconf_warns_and_comes_up(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no resolvconf
    td = Teardown()
    with caplog.at_level(logging.WARNING, logger="dataplane.wgquick"):
        assert set_dns("wgd0", ["10.0.0.1"], td) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DNS = 10.0.0.1 not applied: resolvconf is not installed" in warnings[0].getMessage()
    assert len(td) == 0


# -- as root, in network namespaces ----------------------------------------------------------


FAKE_RESOLVCONF = """#!/bin/sh
# Test stand-in: record the arguments and, for -a, the text on stdin.
echo "ARGS $*" >> {log}
case "$1" in -a) cat >> {log} ;; esac
exit 0
"""


class Lab:
    """Namespaces, `dataplane up` processes, a short UAPI socket dir, a fake resolvconf."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sockdir = tempfile.mkdtemp(prefix="dpp")  # AF_UNIX paths are short
        self.namespaces = Namespaces()
        self.procs: list[subprocess.Popen] = []
        self.daemon_pids: list[int] = []
        self.logs: list[Path] = []
        bindir = tmp / "bin"
        bindir.mkdir()
        self.resolvconf_log = tmp / "resolvconf.log"
        fake = bindir / "resolvconf"
        fake.write_text(FAKE_RESOLVCONF.format(log=self.resolvconf_log))
        fake.chmod(0o755)
        self.env = dict(os.environ, PYTHONPATH=str(REPO),
                        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip

    def ns(self) -> str:
        return self.namespaces.add(f"dppol{TAG}n{next(_serial)}")

    def name(self) -> str:
        return f"dpp{TAG}{next(_serial)}"[:15]

    def write_conf(self, name: str, text: str) -> Path:
        conf = self.tmp / f"{name}.conf"
        conf.write_text(text)
        conf.chmod(0o600)
        return conf

    def _cmd(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane", *args]

    def up(self, ns: str, conf: Path) -> subprocess.Popen:
        log = self.tmp / f"{conf.stem}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self._cmd(ns, "up", "-f", "-v", "--socket-dir", self.sockdir, str(conf)),
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def up_fails(self, ns: str, conf: Path) -> subprocess.CompletedProcess:
        return run(*self._cmd(ns, "up", "--socket-dir", self.sockdir, str(conf)),
                   env=self.env, timeout=30, check=False)  # fmt: skip

    def wait_up(self, proc: subprocess.Popen, name: str) -> None:
        sock = os.path.join(self.sockdir, f"{name}.sock")
        wait_for(lambda: os.path.exists(sock), 20, f"UAPI socket of {name}", proc)

    def down(self, ns: str, name: str, proc: subprocess.Popen) -> None:
        r = run(*self._cmd(ns, "down", "--socket-dir", self.sockdir, name), env=self.env)
        assert r.returncode == 0, r.stderr
        assert proc.wait(15) == 0, self.log_text()

    def show(self, ns: str, name: str) -> str:
        return run(*self._cmd(ns, "show", "--socket-dir", self.sockdir, name), env=self.env).stdout

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in self.logs if p.exists())  # fmt: skip

    def daemons(self, conf: Path) -> list[int]:
        """PIDs of detached `dataplane up` daemons of ``conf`` (remembered for cleanup)."""
        r = run("pgrep", "-f", f"dataplane up .*{conf}", check=False)
        pids = [int(p) for p in r.stdout.split()]
        self.daemon_pids += pids
        return pids

    def close(self) -> None:
        for proc in self.procs:
            stop(proc, timeout=10)
        for pid in self.daemon_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.namespaces.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def lab(tmp_path):
    require("policy routing tests (network namespaces, TUN, ip rule)", "ip")
    lab = Lab(tmp_path)
    try:
        yield lab
    except BaseException:
        print(lab.log_text())
        raise
    finally:
        lab.close()


def ip_out(ns: str, *args: str) -> str:
    return ip(ns, *args).stdout


def table_routes(ns: str, version: int, table: str) -> str:
    """The routes of a table; "" for one the kernel never created (``ip`` fails then)."""
    r = ip(ns, f"-{version}", "route", "show", "table", table, check=False)
    assert r.returncode == 0 or "does not exist" in r.stderr, r.stderr
    return r.stdout.strip()


def rules(ns: str, version: int) -> list[str]:
    return ip_out(ns, f"-{version}", "rule", "show").splitlines()


def link_exists(ns: str, name: str) -> bool:
    return ip(ns, "link", "show", "dev", name, check=False).returncode == 0


def conf_text(*, address="10.77.0.2/24, fd77::2/64", allowed="0.0.0.0/0, ::/0",
              endpoint="192.0.2.1:51820", extra="", peer_key=None, key=None) -> str:  # fmt: skip
    key = key or PrivateKey.generate()
    peer = peer_key or PrivateKey.generate().public_key
    return (
        f"[Interface]\nPrivateKey = {key.to_base64()}\nAddress = {address}\n{extra}"
        f"\n[Peer]\nPublicKey = {peer.to_base64()}\nAllowedIPs = {allowed}\n"
        + (f"Endpoint = {endpoint}\n" if endpoint else "")
    )


privileged = pytest.mark.privileged


@privileged
def test_default_route_policy_routing_hooks_and_dns_come_and_go(lab):
    ns, name = lab.ns(), lab.name()
    before = {4: rules(ns, 4), 6: rules(ns, 6)}
    files = {hook: lab.tmp / hook for hook in ("postup", "predown", "postdown")}
    conf = lab.write_conf(name, conf_text(
        allowed="0.0.0.0/0, ::/0, 10.60.0.0/16",
        extra="DNS = 10.77.0.1, fd77::1, example.test\n"
              f"PostUp = echo %i > {files['postup']}\n"
              f"PreDown = echo %i > {files['predown']}\n"
              f"PostDown = echo %i > {files['postdown']}\n",
    ))  # fmt: skip
    proc = lab.up(ns, conf)
    wait_for(files["postup"].exists, 20, "PostUp hook", proc)
    assert files["postup"].read_text() == f"{name}\n"  # %i substituted

    table, mark = 51820, hex(51820)  # FwMark unset, fresh namespace: wg-quick's first choice
    for v in (4, 6):
        now = rules(ns, v)
        assert f"not from all fwmark {mark} lookup {table}" in " ".join(now)
        assert "from all lookup main suppress_prefixlength 0" in " ".join(now)
        assert len(now) == len(before[v]) + 2
    assert ip_out(ns, "-4", "route", "show", "table", str(table)).split()[:3] == [
        "default", "dev", name]  # fmt: skip
    assert ip_out(ns, "-6", "route", "show", "table", str(table)).split()[:3] == [
        "default", "dev", name]  # fmt: skip
    assert f"10.60.0.0/16 dev {name}" in ip_out(ns, "-4", "route", "show")
    src_valid = in_ns(ns, "cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark")
    assert src_valid.stdout.strip() == "1"
    assert f"fwmark: {mark}" in lab.show(ns, name)  # as `wg show` would report it
    rname = resolvconf_name(name, resolvconf=shutil.which("resolvconf", path=lab.env["PATH"]))
    assert lab.resolvconf_log.read_text() == (
        f"ARGS -a {rname} -m 0 -x\nnameserver 10.77.0.1\nnameserver fd77::1\nsearch example.test\n"
    )

    lab.down(ns, name, proc)
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]
    for v in (4, 6):
        assert table_routes(ns, v, str(table)) == ""
    assert not link_exists(ns, name)
    assert files["predown"].read_text() == f"{name}\n"
    assert files["postdown"].read_text() == f"{name}\n"
    assert lab.resolvconf_log.read_text().splitlines()[-1] == f"ARGS -d {rname} -f"


@privileged
@pytest.mark.parametrize("table", ["1234", "off"])
def test_named_table_or_off(lab, table):
    ns, name = lab.ns(), lab.name()
    before = {4: rules(ns, 4), 6: rules(ns, 6)}
    conf = lab.write_conf(name, conf_text(
        allowed="0.0.0.0/0, 10.60.0.0/16, fd60::/64", extra=f"Table = {table}\n"))  # fmt: skip
    proc = lab.up(ns, conf)
    lab.wait_up(proc, name)
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]  # no policy routing
    assert "fwmark" not in lab.show(ns, name)
    main4, main6 = ip_out(ns, "-4", "route", "show"), ip_out(ns, "-6", "route", "show")
    assert "10.60.0.0/16" not in main4 and "fd60::/64" not in main6
    assert "default" not in main4
    if table == "off":
        ours = [
            line
            for v in (4, 6)
            for line in ip_out(ns, f"-{v}", "route", "show", "table", "all").splitlines()
            if f"dev {name} " in line
        ]
        assert ours and all("proto kernel" in line for line in ours), ours  # only the kernel's
    else:
        t4 = ip_out(ns, "-4", "route", "show", "table", table)
        assert f"default dev {name}" in t4 and f"10.60.0.0/16 dev {name}" in t4
        assert f"fd60::/64 dev {name}" in ip_out(ns, "-6", "route", "show", "table", table)
    lab.down(ns, name, proc)
    assert table_routes(ns, 4, "1234") == "" and table_routes(ns, 6, "1234") == ""
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]


@privileged
def test_failing_pre_up_fails_up_with_one_line_and_leaves_nothing(lab):
    ns, name = lab.ns(), lab.name()
    before = {4: rules(ns, 4), 6: rules(ns, 6)}
    ran = lab.tmp / "ran"
    hook = f"echo ran %i > {ran}; exit 3"
    conf = lab.write_conf(name, conf_text(extra=f"PreUp = {hook}\n"))
    r = lab.up_fails(ns, conf)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"dataplane: PreUp hook `{hook.replace('%i', name)}` failed with exit status 3"
    ]
    assert ran.read_text() == f"ran {name}\n"
    assert not link_exists(ns, name)
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]
    assert not os.path.exists(os.path.join(lab.sockdir, f"{name}.sock"))


@privileged
def test_failing_post_up_undoes_rules_routes_and_dns(lab):
    ns, name = lab.ns(), lab.name()
    before = {4: rules(ns, 4), 6: rules(ns, 6)}
    down_hooks = lab.tmp / "down-hooks"
    extra = (
        "DNS = 10.77.0.1\nPostUp = exit 7\n"
        f"PreDown = echo pre >> {down_hooks}\nPostDown = echo post >> {down_hooks}\n"
    )
    conf = lab.write_conf(name, conf_text(extra=extra))
    r = lab.up_fails(ns, conf)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "dataplane: PostUp hook `exit 7` failed with exit status 7"
    ]
    # Everything was made (PostUp runs last) and is gone again.
    calls = lab.resolvconf_log.read_text().splitlines()
    assert calls[0].startswith("ARGS -a ") and calls[-1].startswith("ARGS -d ")
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]
    for v in (4, 6):
        assert table_routes(ns, v, "51820") == ""
    assert not link_exists(ns, name)
    assert not down_hooks.exists()  # like wg-quick: a failed up runs no Down hooks


@privileged
def test_marked_underlay_skips_the_tunnel_that_carries_the_default_route(lab):
    """Client A routes everything (0.0.0.0/0) into the tunnel; its server B is reachable
    only through A's main-table default route. The handshake (hence the ping) works only
    because our UDP socket carries the fwmark that the policy rule exempts."""
    a, b = lab.ns(), lab.ns()
    name_a, name_b = lab.name(), lab.name()
    veth(a, b, "10.98.0.2/24", "10.98.0.1/24")
    ip(b, "addr", "add", "10.97.0.1/32", "dev", "lo")  # B's public address
    ip(a, "route", "add", "default", "via", "10.98.0.1")
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    conf_b = lab.write_conf(name_b, conf_text(
        key=key_b, peer_key=key_a.public_key, address="10.77.0.1/24", allowed="10.77.0.2/32",
        endpoint=None, extra="ListenPort = 51821\n",
    ))  # fmt: skip
    conf_a = lab.write_conf(name_a, conf_text(
        key=key_a, peer_key=key_b.public_key, address="10.77.0.2/24", allowed="0.0.0.0/0",
        endpoint="10.97.0.1:51821",
    ))  # fmt: skip
    proc_b = lab.up(b, conf_b)
    lab.wait_up(proc_b, name_b)
    proc_a = lab.up(a, conf_a)
    lab.wait_up(proc_a, name_a)
    # The two halves of the policy: unmarked traffic to B goes into the tunnel, marked
    # traffic (our encrypted UDP) leaves by the main table's default route.
    assert f"dev {name_a} table 51820" in ip_out(a, "route", "get", "10.97.0.1")
    assert "via 10.98.0.1 dev veth0" in ip_out(a, "route", "get", "10.97.0.1", "mark", "51820")
    r = run(*ping_cmd(a, "10.97.0.1", 3), check=False)
    assert r.returncode == 0, r.stdout + r.stderr + lab.log_text()
    stats = ip(a, "-s", "link", "show", "dev", name_a).stdout.split("\n")
    rx_packets = int(stats[stats.index(next(s for s in stats if "RX:" in s)) + 1].split()[1])
    assert rx_packets >= 3  # the echo replies came back through our TUN
    lab.down(a, name_a, proc_a)
    lab.down(b, name_b, proc_b)


@privileged
def test_sigterm_during_a_slow_post_up_undoes_everything(lab):
    ns, name = lab.ns(), lab.name()
    before = {4: rules(ns, 4), 6: rules(ns, 6)}
    started = lab.tmp / "started"
    conf = lab.write_conf(name, conf_text(extra=f"PostUp = touch {started}; sleep 30\n"))
    proc = lab.up(ns, conf)
    wait_for(started.exists, 20, "PostUp hook", proc)
    assert len(rules(ns, 4)) == len(before[4]) + 2  # the policy rules exist now
    proc.terminate()
    assert proc.wait(15) == 128 + 15, lab.log_text()
    assert rules(ns, 4) == before[4] and rules(ns, 6) == before[6]
    assert table_routes(ns, 4, "51820") == "" and not link_exists(ns, name)


@privileged
def test_up_detaches_once_the_interface_is_up_and_down_stops_it(lab):
    ns, name = lab.ns(), lab.name()
    conf = lab.write_conf(name, conf_text(allowed="10.62.0.0/16"))
    sock = os.path.join(lab.sockdir, f"{name}.sock")
    start = time.monotonic()
    r = run(*lab._cmd(ns, "up", "--socket-dir", lab.sockdir, str(conf)), env=lab.env,
            timeout=30, check=False)  # fmt: skip
    # It returned (so it let go of our stdout/stderr pipes) with the interface up, while
    # the daemon it left behind keeps it up.
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 20
    pids = lab.daemons(conf)
    assert len(pids) == 1
    assert link_exists(ns, name) and os.path.exists(sock)
    assert name in lab.show(ns, name)
    again = run(*lab._cmd(ns, "up", "--socket-dir", lab.sockdir, str(conf)), env=lab.env,
                timeout=30, check=False)  # fmt: skip
    assert again.returncode == 1 and "already up" in again.stderr, again.stderr
    r = run(*lab._cmd(ns, "down", "--socket-dir", lab.sockdir, name), env=lab.env)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not os.path.exists(f"/proc/{pids[0]}"), 15, "the daemon to exit")
    assert not link_exists(ns, name) and not os.path.exists(sock)
