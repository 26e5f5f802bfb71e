"""The UAPI server over a raw socket in a private directory: every key, framing, errno
replies, all-or-nothing sets, socket lifecycle. (The real `wg` tool: test_wg_conformance.py.)"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane._batch import PacketBatch
from dataplane.core import DataPlane
from dataplane.driver import ThreadedDataPlane
from dataplane.uapi import (
    EADDRINUSE,
    EFBIG,
    EINVAL,
    EIO,
    EOPNOTSUPP,
    EPROTO,
    CoreSlot,
    Interface,
    UAPIError,
    UAPIServer,
    parse_set,
)
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey


def hexkey(key: PublicKey | PresharedKey | PrivateKey) -> str:
    raw = key.raw if isinstance(key, PublicKey) else key.secret_bytes()
    return raw.hex()


class Client:
    """A raw UAPI client: send text, read one reply up to its blank line."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(path)
        self.buf = b""

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def reply(self) -> tuple[list[str], int] | None:
        """(body lines, errno), or None if the server closed the connection first."""
        while b"\n\n" not in self.buf and not self.buf.startswith(b"errno="):
            if self.buf.endswith(b"\n\n"):
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        text, _, self.buf = self.buf.partition(b"\n\n")
        lines = text.decode().split("\n")
        assert lines[-1].startswith("errno="), lines
        return lines[:-1], int(lines[-1][6:])

    def closed(self) -> bool:
        """True when the server has closed the connection (after any pending reply)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def get(self) -> list[str]:
        self.send("get=1\n\n")
        r = self.reply()
        assert r is not None and r[1] == 0
        return r[0]

    def set(self, *lines: str) -> int:
        self.send("set=1\n" + "".join(line + "\n" for line in lines) + "\n")
        r = self.reply()
        assert r is not None and r[0] == []
        return r[1]

    def close(self) -> None:
        self.sock.close()


class Env:
    def __init__(self, *, slot: bool = True, **iface_kw) -> None:
        self.dir = tempfile.mkdtemp(prefix="dpu")  # short: sun_path holds 108 bytes
        self.key = PrivateKey.generate()
        self.core = DataPlane(self.key)
        self.driver = ThreadedDataPlane(CoreSlot(self.core) if slot else self.core).start()
        self.iface = Interface(self.driver, **iface_kw)
        self.server = UAPIServer("dpu0", self.iface, socket_dir=self.dir).start()
        self.clients: list[Client] = []

    def client(self) -> Client:
        c = Client(self.server.path)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()
        self.driver.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


def peer_blocks(lines: list[str]) -> dict[str, list[str]]:
    """public_key hex -> the lines of its section."""
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("public_key="):
            current = line[11:]
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def pub() -> PublicKey:
    return PrivateKey.generate().public_key


# -- parsing --


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (["private_key=" + "g" * 64], EINVAL),
        (["private_key=" + "a" * 63], EINVAL),
        (["listen_port=65536"], EINVAL),
        (["listen_port=+1"], EINVAL),
        (["listen_port= 1"], EINVAL),
        (["listen_port=1_0"], EINVAL),
        (["fwmark=4294967296"], EINVAL),
        (["fwmark=-1"], EINVAL),
        (["replace_peers=false"], EINVAL),
        (["replace_peers=TRUE"], EINVAL),
        (["no_equals_sign"], EPROTO),
        (["bogus=1"], EINVAL),
        (["allowed_ip=10.0.0.0/8"], EINVAL),  # a peer key before any public_key
        (["public_key=" + "11" * 32, "remove=yes"], EINVAL),
        (["public_key=" + "11" * 32, "update_only=1"], EINVAL),
        (["public_key=" + "11" * 32, "endpoint=2001:db8::1:5"], EINVAL),
        (["public_key=" + "11" * 32, "endpoint=[10.0.0.1]:5"], EINVAL),
        (["public_key=" + "11" * 32, "endpoint=host.example:5"], EINVAL),
        (["public_key=" + "11" * 32, "endpoint=10.0.0.1:0"], EINVAL),
        (["public_key=" + "11" * 32, "persistent_keepalive_interval=65536"], EINVAL),
        (["public_key=" + "11" * 32, "allowed_ip=10.0.0.0"], EINVAL),
        (["public_key=" + "11" * 32, "allowed_ip=10.0.0.0/33"], EINVAL),
        (["public_key=" + "11" * 32, "allowed_ip=fe80::1%eth0/64"], EINVAL),
        (["public_key=" + "11" * 32, "protocol_version=2"], EINVAL),
        (["public_key=" + "11" * 32, "private_key=" + "22" * 32], EINVAL),
        (["public_key=" + "11" * 32, "replace_allowed_ips=false"], EINVAL),
    ],
)
def test_parse_set_rejects(lines, code):
    with pytest.raises(UAPIError) as info:
        parse_set(lines)
    assert info.value.errno == code


def test_parse_set_collects_every_key():
    pk, psk = pub(), PresharedKey.generate()
    req = parse_set(
        [
            "private_key=" + "AB" * 32,  # wireguard-go's hex decoder takes upper case too
            "listen_port=51820",
            "fwmark=0",
            "replace_peers=true",
            "public_key=" + pk.raw.hex(),
            "update_only=true",
            "preshared_key=" + hexkey(psk),
            "endpoint=[::ffff:192.0.2.1]:7",
            "persistent_keepalive_interval=25",
            "replace_allowed_ips=true",
            "allowed_ip=10.1.2.3/24",
            "allowed_ip=-10.9.0.0/16",
            "protocol_version=1",
            "public_key=" + "33" * 32,
            "remove=true",
            "preshared_key=" + "00" * 32,
        ]
    )
    assert req.private_key == bytes([0xAB]) * 32 and req.listen_port == 51820
    assert req.fwmark == 0 and req.replace_peers
    a, b = req.peers
    assert a.public_key == pk and a.update_only and not a.remove and a.psk == psk
    assert a.endpoint == ("192.0.2.1", 7) and a.keepalive == 25
    assert [(op, str(n)) for op, n in a.allowed_ops] == [
        ("clear", "None"),
        ("add", "10.1.2.0/24"),
        ("del", "10.9.0.0/16"),
    ]
    assert b.remove and b.psk is None


# -- get and set through the socket --


def test_fresh_get_and_interface_keys(env):
    c = env.client()
    assert c.get() == [f"private_key={hexkey(env.key)}"]
    assert c.set("listen_port=51999", "fwmark=4660") == 0
    assert c.get() == [f"private_key={hexkey(env.key)}", "listen_port=51999", "fwmark=4660"]
    assert c.set("fwmark=0") == 0  # unset fields are left out of get
    assert c.get()[1:] == ["listen_port=51999"]


def test_peer_lifecycle_and_key_order(env):
    c = env.client()
    pk, psk = pub(), PresharedKey.generate()
    code = c.set(
        "public_key=" + pk.raw.hex(),
        "preshared_key=" + hexkey(psk),
        "endpoint=[2001:DB8:0::2]:51820",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.40.0.1/24",
        "allowed_ip=10.40.0.0/24",  # the same prefix once masked: collapses
        "allowed_ip=fd00:0:0::/64",
    )
    assert code == 0
    lines = c.get()
    block = peer_blocks(lines)[pk.raw.hex()]
    keys = [line.split("=", 1)[0] for line in block]
    assert keys == [
        "preshared_key",
        "protocol_version",
        "endpoint",
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "tx_bytes",
        "rx_bytes",
        "persistent_keepalive_interval",
        "allowed_ip",
        "allowed_ip",
    ]
    assert f"preshared_key={hexkey(psk)}" in block
    assert "endpoint=[2001:db8::2]:51820" in block
    assert "persistent_keepalive_interval=25" in block
    assert block[-2:] == ["allowed_ip=10.40.0.0/24", "allowed_ip=fd00::/64"]
    with env.driver.locked() as slot:
        (pid,) = slot.peer_ids()
        assert slot.allowed_ips(pid) == ["10.40.0.0/24", "fd00::/64"]
    # PSK removal, a -prefix removal, keepalive off, IPv4-mapped endpoint shown as IPv4.
    assert (
        c.set(
            "public_key=" + pk.raw.hex(),
            "preshared_key=" + "00" * 32,
            "allowed_ip=-10.40.0.0/24",
            "persistent_keepalive_interval=0",
            "endpoint=[::ffff:198.51.100.4]:9",
        )
        == 0
    )
    block = peer_blocks(c.get())[pk.raw.hex()]
    assert "preshared_key=" + "00" * 32 in block
    assert "endpoint=198.51.100.4:9" in block
    assert "persistent_keepalive_interval=0" in block
    assert [x for x in block if x.startswith("allowed_ip=")] == ["allowed_ip=fd00::/64"]
    assert c.set("public_key=" + pk.raw.hex(), "remove=true") == 0
    assert peer_blocks(c.get()) == {}
    assert c.set("public_key=" + pk.raw.hex(), "remove=true") == 0  # unknown: a no-op


def test_replace_allowed_ips_and_prefixes_move_between_peers(env):
    c = env.client()
    a, b = pub(), pub()
    c.set("public_key=" + a.raw.hex(), "allowed_ip=10.0.0.0/8", "allowed_ip=10.1.0.0/16")
    c.set("public_key=" + b.raw.hex(), "allowed_ip=10.1.0.0/16")
    blocks = peer_blocks(c.get())
    assert [x for x in blocks[a.raw.hex()] if "allowed_ip" in x] == ["allowed_ip=10.0.0.0/8"]
    assert [x for x in blocks[b.raw.hex()] if "allowed_ip" in x] == ["allowed_ip=10.1.0.0/16"]
    c.set("public_key=" + a.raw.hex(), "replace_allowed_ips=true", "allowed_ip=192.168.0.0/16")
    blocks = peer_blocks(c.get())
    assert [x for x in blocks[a.raw.hex()] if "allowed_ip" in x] == ["allowed_ip=192.168.0.0/16"]


def test_update_only_and_replace_peers(env):
    c = env.client()
    a, b, new = pub(), pub(), pub()
    c.set("public_key=" + a.raw.hex(), "allowed_ip=10.0.0.1/32")
    c.set("public_key=" + b.raw.hex(), "allowed_ip=10.0.0.2/32")
    assert c.set("public_key=" + new.raw.hex(), "update_only=true", "allowed_ip=10.9.9.9/32") == 0
    assert set(peer_blocks(c.get())) == {a.raw.hex(), b.raw.hex()}
    assert c.set("public_key=" + a.raw.hex(), "update_only=true", "endpoint=192.0.2.9:1") == 0
    assert "endpoint=192.0.2.9:1" in peer_blocks(c.get())[a.raw.hex()]
    with env.driver.locked() as slot:
        pid_b = slot.core.device.peer_id(b)
    assert c.set("replace_peers=true", "public_key=" + b.raw.hex()) == 0
    blocks = peer_blocks(c.get())
    assert list(blocks) == [b.raw.hex()]
    assert not [x for x in blocks[b.raw.hex()] if "allowed_ip" in x]  # b was re-set from empty
    with env.driver.locked() as slot:
        assert slot.core.device.peer_id(b) == pid_b  # kept in place, not removed and re-added
    assert c.set("replace_peers=true") == 0
    assert peer_blocks(c.get()) == {}


def test_low_order_and_own_keys(env):
    c = env.client()
    assert c.set("public_key=" + "00" * 32) == EINVAL  # a low-order point
    # A peer with the interface's own key is ignored, as the reference does.
    assert c.set("public_key=" + env.key.public_key.raw.hex(), "allowed_ip=10.0.0.0/8") == 0
    assert peer_blocks(c.get()) == {}


def snapshot(env) -> tuple[list[str], object]:
    with env.driver.locked() as slot:
        core = slot.core
    return env.client().get(), core


@pytest.mark.parametrize(
    "bad_tail",
    [
        ["allowed_ip=10.0.0.0/33"],
        ["preshared_key=zz"],
        ["bogus_key=1"],
        ["no equals sign here"],
        ["public_key=" + "00" * 32],
        ["endpoint=[fe80::1]:0"],
        ["private_key=" + "00" * 31],
    ],
)
def test_failed_set_changes_nothing(env, bad_tail):
    c = env.client()
    a = pub()
    assert c.set("public_key=" + a.raw.hex(), "allowed_ip=10.0.0.1/32", "endpoint=192.0.2.1:1") == 0
    before, core_before = snapshot(env)
    code = c.set(
        "listen_port=4000",
        "replace_peers=true",
        "public_key=" + pub().raw.hex(),
        "allowed_ip=10.0.0.1/32",
        "public_key=" + a.raw.hex(),
        "replace_allowed_ips=true",
        "endpoint=192.0.2.99:99",
        *bad_tail,
    )
    assert code in (EINVAL, EPROTO)
    after, core_after = snapshot(env)
    assert after == before and core_after is core_before
    assert env.iface.sets_refused == 1


def test_several_requests_per_connection_and_pipelining(env):
    c = env.client()
    pk = pub()
    c.send(
        "get=1\n\n"
        f"set=1\npublic_key={pk.raw.hex()}\nallowed_ip=10.0.0.0/8\n\n"
        "set=1\nbogus=1\n\n"
        "get=1\n\n"
    )
    r1, r2, r3, r4 = c.reply(), c.reply(), c.reply(), c.reply()
    assert r1 == ([f"private_key={hexkey(env.key)}"], 0)
    assert r2 == ([], 0) and r3 == ([], EINVAL)
    assert r4 is not None and f"public_key={pk.raw.hex()}" in r4[0]
    assert env.server.requests == 4


def test_framing_errors(env):
    # Bytes after get=1 other than the blank line: EINVAL, then the connection is closed.
    c = env.client()
    c.send("get=1\nfoo=bar\n\n")
    assert c.reply() == ([], EINVAL) and c.closed()
    # Unknown operation: closed without a reply.
    c = env.client()
    c.send("foo=1\n\n")
    assert c.reply() is None
    # A set cut off before its blank line is never applied.
    c = env.client()
    c.send(f"set=1\npublic_key={pub().raw.hex()}\n")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.reply() is None
    assert peer_blocks(env.client().get()) == {}
    # A line over 64 KiB: EIO and closed; nothing applied.
    c = env.client()
    c.send("set=1\nlisten_port=1" + "1" * 70000 + "\n\n")
    assert c.reply() == ([], EIO) and c.closed()
    # Non-ASCII bytes are a bad value, not a crash.
    c = env.client()
    c.send(b"set=1\nlisten_port=\xff\xfe\n\n")
    assert c.reply() == ([], EINVAL)
    assert env.client().get() == [f"private_key={hexkey(env.key)}"]


def test_request_size_is_bounded():
    e = Env()
    e.server.close()
    try:
        e.server = UAPIServer("dpu1", e.iface, socket_dir=e.dir, max_request=4096).start()
        c = e.client()
        lines = "".join(f"public_key={pub().raw.hex()}\n" for _ in range(60))
        c.send("set=1\n" + lines + "\n")
        assert c.reply() == ([], EFBIG) and c.closed()
        assert peer_blocks(e.client().get()) == {}
    finally:
        e.close()


# -- private key changes --


def test_private_key_change_rebuilds_the_core_with_the_same_peers(env):
    c = env.client()
    a, b = pub(), pub()
    psk = PresharedKey.generate()
    c.set(
        "public_key=" + a.raw.hex(),
        "preshared_key=" + hexkey(psk),
        "allowed_ip=10.0.0.1/32",
        "endpoint=192.0.2.1:5",
        "persistent_keepalive_interval=7",
    )
    c.set("public_key=" + b.raw.hex(), "allowed_ip=10.0.0.2/32")
    before = peer_blocks(c.get())
    new = PrivateKey.generate()
    # Re-sending the current key changes nothing; a new one swaps the core.
    assert c.set("private_key=" + hexkey(env.key)) == 0
    with env.driver.locked() as slot:
        assert slot.core is env.core
    assert c.set("private_key=" + hexkey(new)) == 0
    lines = c.get()
    assert lines[0] == "private_key=" + hexkey(new)
    after = peer_blocks(lines)
    assert set(after) == set(before)
    for k in before:  # same configuration (counters restart with the new core)
        strip = [x for x in before[k] if not x.startswith(("tx_bytes", "rx_bytes", "last_"))]
        assert strip == [x for x in after[k] if not x.startswith(("tx_bytes", "rx_bytes", "last_"))]
    with env.driver.locked() as slot:
        assert slot.core is not env.core and slot.core.public_key == new.public_key
    # A key whose public half is a peer's removes that peer (as the reference does).
    akey = PrivateKey.generate()
    c.set("public_key=" + akey.public_key.raw.hex())
    assert c.set("private_key=" + hexkey(akey)) == 0
    assert akey.public_key.raw.hex() not in peer_blocks(c.get())


def test_zero_private_key_makes_the_interface_inert(env):
    c = env.client()
    c.set("public_key=" + pub().raw.hex(), "allowed_ip=10.0.0.0/8")
    assert c.set("private_key=" + "00" * 32) == 0
    lines = c.get()
    assert not lines[0].startswith("private_key=") and len(peer_blocks(lines)) == 1
    with env.driver.locked() as slot:
        assert slot.inert and slot.next_event() is None
        batch = PacketBatch.from_packets([b"\x45" + b"\x00" * 27])
        out = slot.process_outbound(0.0, 0, batch)
        assert not out and batch.alive() == []
    new = PrivateKey.generate()
    assert c.set("private_key=" + hexkey(new)) == 0
    assert c.get()[0] == "private_key=" + hexkey(new)
    with env.driver.locked() as slot:
        assert not slot.inert


def test_bare_core_refuses_key_change_and_applies_nothing():
    e = Env(slot=False)
    try:
        c = e.client()
        code = c.set(
            "private_key=" + hexkey(PrivateKey.generate()),
            "listen_port=5",
            "public_key=" + pub().raw.hex(),
        )
        assert code == EOPNOTSUPP
        assert e.client().get() == [f"private_key={hexkey(e.key)}"]
        assert c.set("private_key=" + hexkey(e.key), "listen_port=5") == 0
    finally:
        e.close()


# -- listen port and fwmark hooks --


def test_listen_port_binder_and_fwmark_hook():
    calls: list[tuple[str, int]] = []

    def bind(port: int) -> int:
        calls.append(("bind", port))
        if port == 1111:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return port or 40000  # 0 asks for any port

    e = Env(bind_port=bind, apply_fwmark=lambda m: calls.append(("mark", m)))
    try:
        c = e.client()
        assert c.set("listen_port=0", "fwmark=7") == 0  # unchanged port: no rebind
        assert c.set("listen_port=1234") == 0
        assert c.set("listen_port=1111", "fwmark=9", "public_key=" + pub().raw.hex()) == EADDRINUSE
        assert c.get()[1:] == ["listen_port=1234", "fwmark=7"]  # nothing else applied
        assert c.set("listen_port=0") == 0
        assert c.get()[1] == "listen_port=40000"
        assert calls == [("mark", 7), ("bind", 1234), ("bind", 1111), ("bind", 0)]
    finally:
        e.close()


# -- real counters and handshake times --


def test_counters_and_last_handshake_are_real_unix_times(env):
    """A real handshake with a second core in memory; get reports what happened."""
    other_key = PrivateKey.generate()
    other = DataPlane(other_key)
    other.add_peer(env.key.public_key, allowed_ips=["10.0.0.1/32"], endpoint=("192.0.2.1", 1))
    c = env.client()
    c.set(
        "public_key=" + other_key.public_key.raw.hex(),
        "allowed_ip=10.0.0.2/32",
        "endpoint=192.0.2.2:2",
    )
    start = time.time()
    with env.driver.locked() as slot:
        now = time.monotonic()
        pkt = bytes.fromhex("4500001c000000004011000a0a0000010a000002") + bytes(8)
        out = slot.process_outbound(now, 0, PacketBatch.from_packets([pkt]))
        sent = [(b.packets(alive_only=True)) for bs in out.to_underlay.values() for b in bs]
        wire = [p for ps in sent for p in ps]
        rx = PacketBatch.from_packets(wire)
        rx.fill_endpoint(("192.0.2.1", 1))
        back = other.process_inbound(now, 0, rx)
        reply = [p for bs in back.to_underlay.values() for b in bs for p in b.packets(True)]
        rx = PacketBatch.from_packets(reply)
        rx.fill_endpoint(("192.0.2.2", 2))
        slot.process_inbound(now, 0, rx)
        stats = slot.stats().peers[slot.peer_ids()[0]]
    block = peer_blocks(c.get())[other_key.public_key.raw.hex()]
    fields = dict(x.split("=", 1) for x in block)
    sec, nsec = int(fields["last_handshake_time_sec"]), int(fields["last_handshake_time_nsec"])
    assert start - 1 <= sec + nsec / 1e9 <= time.time() + 1
    assert 0 <= nsec < 1_000_000_000
    assert int(fields["tx_bytes"]) == stats.tx_bytes >= 148  # at least our initiation
    assert int(fields["rx_bytes"]) == stats.rx_bytes >= 92  # at least the response


# -- the socket file --


def test_socket_permissions_and_removal_on_close():
    base = tempfile.mkdtemp(prefix="dpu")
    sockdir = os.path.join(base, "wireguard")
    driver = ThreadedDataPlane(CoreSlot(DataPlane(PrivateKey.generate()))).start()
    try:
        server = UAPIServer("dpp0", Interface(driver), socket_dir=sockdir).start()
        assert stat.S_IMODE(os.stat(sockdir).st_mode) == 0o755
        st = os.lstat(server.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert os.listdir(sockdir) == ["dpp0.sock"]  # no temporary name left behind
        server.close()
        assert not os.path.exists(server.path)
    finally:
        driver.close()
        shutil.rmtree(base)


def test_stale_live_and_foreign_socket_files(env):
    # A live socket is never replaced.
    with pytest.raises(FileExistsError, match="in use"):
        UAPIServer("dpu0", env.iface, socket_dir=env.dir).start()
    # A stale one (nobody listening) is replaced.
    stale = os.path.join(env.dir, "dpu7.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    server = UAPIServer("dpu7", env.iface, socket_dir=env.dir).start()
    try:
        assert Client(stale).get()[0].startswith("private_key=")
    finally:
        server.close()
    # A regular file under the name is not ours to delete.
    with open(os.path.join(env.dir, "dpu8.sock"), "w"):
        pass
    with pytest.raises(FileExistsError, match="not a socket"):
        UAPIServer("dpu8", env.iface, socket_dir=env.dir).start()
    with pytest.raises(ValueError):
        UAPIServer("../x", env.iface, socket_dir=env.dir)


def test_deleted_socket_is_noticed_and_close_leaves_a_replacement_alone(env):
    fired = threading.Event()
    env.server.on_deleted = fired.set
    os.unlink(env.server.path)
    assert fired.wait(3.0) and env.server.deleted.is_set()
    # Someone else's socket now lives at the path: close() must not remove it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(env.server.path)
    try:
        env.server.close()
        assert os.path.exists(env.server.path)
    finally:
        s.close()
        os.unlink(env.server.path)
    env.server = UAPIServer("dpu0", env.iface, socket_dir=env.dir).start()


def test_connection_limit_and_close_ends_open_connections():
    e = Env()
    e.server.close()
    e.server = UAPIServer("dpu2", e.iface, socket_dir=e.dir, max_connections=2).start()
    try:
        a, b = e.client(), e.client()
        a.get(), b.get()  # both are being served
        extra = e.client()
        try:
            extra.send("get=1\n\n")
            answer = extra.reply()
        except (BrokenPipeError, ConnectionResetError):  # closed before or while we wrote
            answer = None
        assert answer is None  # refused: closed without a reply
        assert e.server.rejected_connections == 1
    finally:
        e.close()  # joins the two idle connection threads (the leak check verifies it)


def test_apply_config_replaces_everything_like_setconf(env):
    from dataplane import config as cfg

    a, b = pub(), pub()
    psk = PresharedKey.generate()
    c = env.client()
    c.set("public_key=" + pub().raw.hex(), "allowed_ip=10.99.0.0/16")  # replaced away
    c.set("public_key=" + a.raw.hex(), "endpoint=192.0.2.1:1")
    text = (
        f"[Interface]\nListenPort = 51820\nFwMark = 0x10\nAddress = 10.0.0.1/24\n"
        f"[Peer]\nPublicKey = {a}\nPresharedKey = {psk.to_base64()}\n"
        f"AllowedIPs = 10.1.0.0/16\nEndpoint = vpn.example:7\nPersistentKeepalive = 5\n"
        f"[Peer]\nPublicKey = {b}\nAllowedIPs = fd00::/8\n"
    )
    env.iface.apply_config(cfg.parse(text, resolver=lambda h, p: "2001:db8::7"))
    lines = c.get()
    assert lines[:3] == [f"private_key={hexkey(env.key)}", "listen_port=51820", "fwmark=16"]
    blocks = peer_blocks(lines)
    assert list(blocks) == [a.raw.hex(), b.raw.hex()]
    assert f"preshared_key={hexkey(psk)}" in blocks[a.raw.hex()]
    assert "endpoint=[2001:db8::7]:7" in blocks[a.raw.hex()]
    assert "persistent_keepalive_interval=5" in blocks[a.raw.hex()]
    assert "allowed_ip=fd00::/8" in blocks[b.raw.hex()]


def test_server_lifecycle_errors(env):
    with pytest.raises(RuntimeError):
        env.server.start()
    env.server.close()
    env.server.close()  # idempotent
    assert not os.path.exists(env.server.path)
    env.server = UAPIServer("dpu0", env.iface, socket_dir=env.dir).start()


def test_one_set_of_many_peers_leaves_the_routing_tables_current(env):
    """Tables are rebuilt once per request: packets must still route by the new prefixes."""
    c = env.client()
    keys = [pub() for _ in range(20)]
    lines = []
    for i, k in enumerate(keys):
        lines += [f"public_key={k.raw.hex()}", f"allowed_ip=10.{i}.0.0/16",
                  f"endpoint=192.0.2.{i + 1}:{1000 + i}"]  # fmt: skip
    assert c.set(*lines) == 0
    # Prefix 10.7.0.0/16 moves to the first peer in a later request.
    assert c.set(f"public_key={keys[0].raw.hex()}", "allowed_ip=10.7.0.0/16") == 0
    for dst, expect in (("0a050001", ("192.0.2.6", 1005)), ("0a070001", ("192.0.2.1", 1000))):
        pkt = bytes.fromhex("4500001c000000004011000a0a000001" + dst) + bytes(8)
        with env.driver.locked() as slot:
            out = slot.process_outbound(time.monotonic(), 0, PacketBatch.from_packets([pkt]))
        assert [ep for _uid, ep in out.to_underlay] == [expect]


def test_set_replans_when_another_controller_changed_peers_during_a_bind():
    """The bind runs outside the driver lock; the plan is redone on the peers as they are."""
    holder: dict[str, Env] = {}
    victim = pub()

    def bind(port: int) -> int:
        with holder["env"].driver.locked() as slot:  # a concurrent controller's change
            slot.remove_peer(slot.core.device.peer_id(victim))
        return port

    e = Env(bind_port=bind)
    holder["env"] = e
    try:
        c = e.client()
        assert c.set(f"public_key={victim.raw.hex()}", "allowed_ip=10.0.0.0/8") == 0
        other = pub()
        code = c.set(
            "listen_port=6000",
            f"public_key={victim.raw.hex()}",
            "update_only=true",
            "endpoint=192.0.2.1:1",
            f"public_key={other.raw.hex()}",
            "allowed_ip=10.0.0.0/8",
        )
        assert code == 0
        blocks = peer_blocks(c.get())
        assert list(blocks) == [other.raw.hex()]
        assert "allowed_ip=10.0.0.0/8" in blocks[other.raw.hex()]
    finally:
        e.close()


UAPI_WORDS = ["set=1", "get=1", "", "=", "public_key=", "11" * 32, "00" * 32, "private_key=",
              "listen_port=", "fwmark=", "replace_peers=", "true", "remove=", "update_only=",
              "preshared_key=", "endpoint=", "[::1]:5", "1.2.3.4:5", "allowed_ip=", "-",
              "10.0.0.0/8", "::/0", "persistent_keepalive_interval=", "65535", "99999999999",
              "protocol_version=", "1", "replace_allowed_ips=", "\x00", "\xff"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(UAPI_WORDS) | st.text(max_size=4), max_size=4)
                .map("".join), max_size=8))  # fmt: skip
def test_parse_set_garbage_only_raises_uapi_error(lines):
    try:
        parse_set(lines)
    except UAPIError as e:
        assert e.errno in (EINVAL, EPROTO)


def test_socket_garbage_never_breaks_the_server(env):
    """Random byte streams: each gets errnos or a close; the server keeps serving."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(UAPI_WORDS) | st.text(max_size=3), max_size=12))
    def check(words):
        data = "\n".join(words).encode("utf-8", "surrogatepass")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5.0)
        s.connect(env.server.path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        except (BrokenPipeError, ConnectionResetError):
            out = b""
        finally:
            s.close()
        for line in out.decode().splitlines():  # only well-formed replies
            assert line == "" or "=" in line
        probe = Client(env.server.path)
        try:
            probe.get()  # still answering (the garbage may itself have been a valid set)
        finally:
            probe.close()

    check()
