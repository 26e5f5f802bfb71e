"""The ``dataplane`` command: key tools interchangeable with ``wg``, errors, the demo."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import skip_or_fail

from dataplane.cli import main
from dataplane.wireguard.keys import PrivateKey


def run(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dataplane", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wg(*args: str, stdin: str = "") -> str:
    path = shutil.which("wg")
    if path is None:
        skip_or_fail("the wg tool (wireguard-tools) is not installed")
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, check=True, timeout=10
    ).stdout


def test_genkey_pubkey_match_wg_both_ways():
    ours = run("genkey").stdout
    assert run("pubkey", stdin=ours).stdout == wg("pubkey", stdin=ours)
    theirs = wg("genkey")
    assert run("pubkey", stdin=theirs).stdout == wg("pubkey", stdin=theirs)
    psk = run("genpsk").stdout.strip()
    assert len(psk) == 44 and psk.endswith("=")


def test_genkey_is_clamped_and_parses(capsys):
    assert main(["genkey"]) == 0
    text = capsys.readouterr().out.strip()
    raw = PrivateKey.from_base64(text).secret_bytes()
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


def test_bad_input_is_one_line_on_stderr_with_status_2():
    r = run("pubkey", stdin="not a key\n")
    assert r.returncode == 2
    assert r.stderr.startswith("dataplane: pubkey:") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    r = run("demo", "--duration", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("no-such-command")
    assert r.returncode == 2


def test_demo_runs_and_reports():
    r = run("demo", "--duration", "1", "--pings", "20", "--tcp-seconds", "0.5", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "handshake + first round trip:" in out
    assert "round trip over 20 pings" in out
    assert "throughput:" in out and "packets/s" in out
    assert "TCP: connect" in out and "request/response over 20 round trips" in out
    assert "SHA-256 verified" in out
    assert "drops" in out
