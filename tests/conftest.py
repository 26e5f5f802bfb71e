"""Shared fixtures: privileged-test policy and thread-leak checking."""

from __future__ import annotations

import os
import threading

import pytest

REQUIRE_PRIVILEGED = os.environ.get("DATAPLANE_REQUIRE_PRIVILEGED") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a test that needs something this machine lacks; fail instead under CI.

    ``.ci/run`` sets DATAPLANE_REQUIRE_PRIVILEGED=1 so that a missing wireguard-go,
    /dev/net/tun or root can never turn into a silently skipped test there.
    """
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"required by DATAPLANE_REQUIRE_PRIVILEGED=1: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_thread_leak():
    before = set(threading.enumerate())
    yield
    deadline = threading.Event()
    for _ in range(50):
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        deadline.wait(0.02)
    pytest.fail(f"threads leaked by the test: {[t.name for t in leaked]}")
