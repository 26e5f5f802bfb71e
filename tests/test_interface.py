"""The interface's pieces that need no root: config lookup, show/down over a UAPI socket in
a temporary directory, and the rebindable UDP underlay on loopback."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time

import pytest

from dataplane import cli
from dataplane._batch import PacketBatch
from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.interface import format_status, open_underlay, resolve_config_path
from dataplane.uapi import CoreSlot, Interface, UAPIServer
from dataplane.wireguard.keys import PresharedKey, PrivateKey


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to 108 bytes: keep the directory short.
    d = tempfile.mkdtemp(prefix="dpif")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_config_path_like_wg_quick(tmp_path):
    assert resolve_config_path("wg0") == "/etc/wireguard/wg0.conf"
    assert resolve_config_path("wg0", "/x") == "/x/wg0.conf"
    assert resolve_config_path("./wg1.conf") == "./wg1.conf"
    assert resolve_config_path("wg2.conf") == "wg2.conf"
    f = tmp_path / "plainname"
    f.write_text("")
    assert resolve_config_path(str(f)) == str(f)


def test_format_status_reads_like_wg_show():
    key, peer, psk = PrivateKey.generate(), PrivateKey.generate(), PresharedKey.generate()
    now = int(time.time())
    state = {
        "iface": {"private_key": key.secret_bytes().hex(), "listen_port": "51820", "fwmark": "0"},
        "peers": [
            {
                "public_key": peer.public_key.raw.hex(),
                "preshared_key": psk.secret_bytes().hex(),
                "endpoint": "[2001:db8::1]:51820",
                "last_handshake_time_sec": str(now - 5),
                "rx_bytes": "2048",
                "tx_bytes": "3145728",
                "persistent_keepalive_interval": "25",
                "allowed_ip": ["10.0.0.2/32", "fd00::2/128"],
            }
        ],
    }
    text = format_status("wg9", state)
    assert text.splitlines()[0] == "interface: wg9"
    assert f"public key: {key.public_key.to_base64()}" in text
    assert key.to_base64() not in text and psk.to_base64() not in text  # secrets hidden
    assert "listening port: 51820" in text and "fwmark" not in text
    assert f"peer: {peer.public_key.to_base64()}" in text
    assert "endpoint: [2001:db8::1]:51820" in text
    assert "allowed ips: 10.0.0.2/32, fd00::2/128" in text
    assert "latest handshake: 5 seconds ago" in text or "6 seconds ago" in text
    assert "transfer: 2.00 KiB received, 3.00 MiB sent" in text
    assert "persistent keepalive: every 25 seconds" in text


def _served(name: str, sockdir: str, deleted: threading.Event):
    key, peer = PrivateKey.generate(), PrivateKey.generate()
    core = DataPlane(key)
    core.add_peer(peer.public_key, allowed_ips=["10.5.0.2/32"], endpoint=("192.0.2.1", 51820))
    driver = ThreadedDataPlane(CoreSlot(core), name=f"t-{name}").start()
    server = UAPIServer(
        name, Interface(driver, listen_port=4242), socket_dir=sockdir, on_deleted=deleted.set
    ).start()
    return key, peer, driver, server


def test_show_and_down_through_the_uapi_socket(sockdir, capsys):
    deleted = threading.Event()
    key, peer, driver, server = _served("dpt0", sockdir, deleted)
    try:
        assert cli.main(["show", "--socket-dir", sockdir]) == 0
        out = capsys.readouterr().out
        assert "interface: dpt0" in out and f"public key: {key.public_key.to_base64()}" in out
        assert f"peer: {peer.public_key.to_base64()}" in out
        assert "endpoint: 192.0.2.1:51820" in out and "allowed ips: 10.5.0.2/32" in out
        assert "latest handshake: never" in out and "listening port: 4242" in out
        # down removes the socket; the server notices, as a running `up` does.
        assert cli.main(["down", "--socket-dir", sockdir, "dpt0"]) == 0
        assert deleted.wait(5)
    finally:
        server.close()
        driver.close()
    assert cli.main(["down", "--socket-dir", sockdir, "dpt0"]) == 1
    assert "is not up" in capsys.readouterr().err
    assert cli.main(["show", "--socket-dir", sockdir, "dpt0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read interface dpt0" in err[0]


def test_rebindable_udp_moves_port_and_keeps_its_underlay_id():
    core = DataPlane(PrivateKey.generate())
    driver = ThreadedDataPlane(core, name="t-udp")
    udp = open_underlay(driver, 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        first = udp.port
        uid = udp.id
        busy = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        busy.bind(("::", 0))
        try:
            with pytest.raises(OSError):
                udp.rebind(busy.getsockname()[1])
        finally:
            busy.close()
        assert udp.port == first
        second = udp.rebind(0)
        assert second != first and udp.id == uid and udp.port == second
        # The new socket sends and receives through the same handle.
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        udp.handle.outgoing.put((peer.getsockname(), PacketBatch.from_packets([b"hello"])))
        data, src = peer.recvfrom(100)
        assert data == b"hello" and src[1] == second
        peer.sendto(b"back", ("127.0.0.1", second))
        end = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < end:
            item = driver._from_underlay.get(timeout=0.2)
            if item is not None:
                got = item
        assert got is not None and got[0] == uid and got[1].packets() == [b"back"]
    finally:
        peer.close()
        udp.close()
        driver.close()
