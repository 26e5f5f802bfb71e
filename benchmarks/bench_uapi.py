"""UAPI: ``wg setconf`` / ``wg showconf`` of N peers against our server, with wireguard-go
(0.0.20220316, in its own network namespace) as the baseline measured in the same run.

Groups: uapi-setconf-<N> and uapi-showconf-<N>, each with ``ours`` and ``wireguard-go``.
Every peer has an IPv4 and an IPv6 prefix and an endpoint. Needs root, wg and wireguard-go.

Run: python -m pytest benchmarks/bench_uapi.py --benchmark-only
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.wireguard.keys import PrivateKey

# Reuse the conformance tests' launchers (tests/ is not a package; its modules import
# ``conftest`` as a top-level module, as pytest arranges for them).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_wg_conformance import Node, WireguardGo, _usable  # noqa: E402

SIZES = [100, 1000]


def conf_text(n: int) -> str:
    lines = [
        "[Interface]",
        f"PrivateKey = {PrivateKey.generate().to_base64()}",
        "ListenPort = 41000",
    ]
    for i in range(n):
        lines += [
            "[Peer]",
            f"PublicKey = {PrivateKey.generate().public_key.to_base64()}",
            f"AllowedIPs = 10.{i // 256}.{i % 256}.0/24, fd00:{i:x}::/64",
            f"Endpoint = 192.0.2.{i % 250 + 1}:{1000 + i}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def targets():
    _usable()
    ours, theirs = Node(), WireguardGo()
    yield {"ours": ours.name, "wireguard-go": theirs.name}
    ours.close()
    theirs.close()


def wg(*args: str) -> str:
    return subprocess.run(["wg", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("impl", ["ours", "wireguard-go"])
@pytest.mark.parametrize("n", SIZES)
def test_setconf(benchmark, targets, tmp_path, impl, n):
    benchmark.group = f"uapi-setconf-{n}"
    path = tmp_path / "bench.conf"
    path.write_text(conf_text(n))
    # Each round replaces every peer with the same set (the first round creates them).
    benchmark.pedantic(wg, args=("setconf", targets[impl], str(path)), rounds=3, iterations=1)
    assert wg("show", targets[impl], "peers").count("\n") == n


@pytest.mark.parametrize("impl", ["ours", "wireguard-go"])
@pytest.mark.parametrize("n", SIZES)
def test_showconf(benchmark, targets, tmp_path, impl, n):
    benchmark.group = f"uapi-showconf-{n}"
    path = tmp_path / "bench.conf"
    path.write_text(conf_text(n))
    wg("setconf", targets[impl], str(path))
    out = benchmark.pedantic(wg, args=("showconf", targets[impl]), rounds=5, iterations=1)
    assert out.count("[Peer]") == n
