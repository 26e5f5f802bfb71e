"""wg-quick configuration files: the documented examples, errors with locations, round trips,
and garbage that can only ever raise ConfigError."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import config as cfg
from dataplane.config import ConfigError, dump, interface_name, load, parse
from dataplane.wireguard.keys import PresharedKey, PrivateKey, PublicKey

NAMES = {
    "test.wireguard.com": "198.51.100.7",
    "demo.wireguard.com": "163.172.161.0",
    "v6only.example": "2001:db8::77",
}


def resolver(host: str, port: int) -> str:
    """A resolver that never touches the network."""
    try:
        return NAMES[host.rstrip(".").lower()]
    except KeyError:
        raise OSError(f"unknown host {host}") from None


def p(text: str | bytes, **kw) -> cfg.Config:
    return parse(text, resolver=resolver, **kw)


# The CONFIGURATION FILE FORMAT EXAMPLE of wg(8), restated.
WG8_EXAMPLE = """\
[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
ListenPort = 51820

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
Endpoint = 192.95.5.67:1234
AllowedIPs = 10.192.122.3/32, 10.192.124.1/24

[Peer]
PublicKey = TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=
Endpoint = [2607:5300:60:6b0::c05f:543]:2468
AllowedIPs = 10.192.122.4/32, 192.168.0.0/16

[Peer]
PublicKey = gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=
Endpoint = test.wireguard.com:18981
AllowedIPs = 10.10.10.230/32
"""

# The client example of wg-quick(8), restated, plus its hook and SaveConfig examples.
WG_QUICK_EXAMPLE = """\
[Interface]
Address = 10.200.100.8/24
DNS = 10.200.100.1
PrivateKey = oK56DE9Ue9zK76rAc8pBl6opph+1v36lm7cXXsQKrQM=

[Peer]
PublicKey = GtL7fZc/bLnqZldpVofMCD6hDjrK28SsdLxevJ+qtKU=
PresharedKey = /UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak=
AllowedIPs = 0.0.0.0/0
Endpoint = demo.wireguard.com:51820
"""

WG_QUICK_SERVER_EXAMPLE = """\
[Interface]
Address = 10.192.122.1/24
Address = 10.10.0.1/16, fd00:abcd::1/64
SaveConfig = true
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
ListenPort = 51820
MTU = 1380
FwMark = 0x8c
Table = 1234
PreUp = true
PostUp = wg set %i private-key /etc/wireguard/wg0.key <(some command here)
PostUp = echo nameserver 1.1.1.1 | resolvconf -a %i -m 0 -x
PreDown = true
PostDown = resolvconf -d %i
DNS = 1.1.1.1, 2606:4700:4700::1111, internal.example

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
AllowedIPs = 10.192.122.3/32, 10.192.124.1/24
PersistentKeepalive = 25
"""


def test_wg8_example():
    c = p(WG8_EXAMPLE)
    i = c.interface
    assert i.private_key == PrivateKey.from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
    assert i.listen_port == 51820 and i.fwmark is None and i.addresses == []
    assert [str(x.public_key) for x in c.peers] == [
        "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
        "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=",
    ]
    a, b, t = c.peers
    assert a.endpoint.pair() == ("192.95.5.67", 1234)
    # The host bits of 10.192.124.1/24 are masked, as wg does.
    assert [str(n) for n in a.allowed_ips] == ["10.192.122.3/32", "10.192.124.0/24"]
    assert b.endpoint.pair() == ("2607:5300:60:6b0::c05f:543", 2468)
    assert b.endpoint.host == "2607:5300:60:6b0::c05f:543"
    assert t.endpoint.host == "test.wireguard.com"
    assert t.endpoint.pair() == ("198.51.100.7", 18981)
    assert all(x.preshared_key is None and x.persistent_keepalive is None for x in c.peers)


def test_wg_quick_example():
    c = p(WG_QUICK_EXAMPLE)
    i = c.interface
    assert i.addresses == [ipaddress.ip_interface("10.200.100.8/24")]
    assert i.dns == ["10.200.100.1"]
    (peer,) = c.peers
    assert peer.preshared_key == PresharedKey.from_base64(
        "/UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak="
    )
    assert peer.allowed_ips == [ipaddress.ip_network("0.0.0.0/0")]
    assert peer.endpoint == cfg.Endpoint("demo.wireguard.com", 51820, "163.172.161.0")


def test_wg_quick_only_keys_are_kept():
    c = p(WG_QUICK_SERVER_EXAMPLE)
    i = c.interface
    assert [str(a) for a in i.addresses] == ["10.192.122.1/24", "10.10.0.1/16", "fd00:abcd::1/64"]
    assert i.save_config is True and i.mtu == 1380 and i.fwmark == 0x8C and i.table == "1234"
    assert i.pre_up == ["true"] and i.pre_down == ["true"]
    assert i.post_up == [
        "wg set %i private-key /etc/wireguard/wg0.key <(some command here)",
        "echo nameserver 1.1.1.1 | resolvconf -a %i -m 0 -x",
    ]
    assert i.post_down == ["resolvconf -d %i"]
    assert i.dns == ["1.1.1.1", "2606:4700:4700::1111", "internal.example"]
    assert c.peers[0].persistent_keepalive == 25


def test_case_comments_whitespace_and_line_endings():
    text = (
        "# leading comment\r\n"
        "\r\n"
        "  [INTERFACE]   # section comment\r\n"
        "privatekey=yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\r\n"
        "\tLISTENPORT   =    7   # trailing\r\n"
        "fwMark = off\r\n"
        "[peer]\r\n"
        "   PUBLICKEY = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\r\n"
        "allowedips = 10.0.0.1 , fd00::/8 ,\r\n"
        "AllowedIPs = 10.1.0.0/16\r\n"
        "AllowedIPs =\r\n"
        "persistentkeepalive = off\r\n"
    )
    c = p(text)
    assert c.interface.listen_port == 7 and c.interface.fwmark == 0
    (peer,) = c.peers
    assert [str(n) for n in peer.allowed_ips] == ["10.0.0.1/32", "fd00::/8", "10.1.0.0/16"]
    assert peer.persistent_keepalive == 0


def test_public_key_may_come_after_other_peer_keys_and_sections_may_repeat():
    text = WG8_EXAMPLE + (
        "[Interface]\nListenPort = 9\n"
        "[Peer]\nAllowedIPs = 10.9.0.0/16\nPublicKey = "
        + PrivateKey.generate().public_key.to_base64()
    )
    c = p(text)
    assert c.interface.listen_port == 9  # the last value of a scalar key wins
    assert c.interface.private_key is not None  # kept from the first [Interface]
    assert str(c.peers[-1].allowed_ips[0]) == "10.9.0.0/16"


def test_fwmark_forms():
    base = "[Interface]\nFwMark = {}\n"
    assert p(base.format("1234")).interface.fwmark == 1234
    assert p(base.format("0xffffffff")).interface.fwmark == 0xFFFFFFFF
    assert p(base.format("OFF")).interface.fwmark == 0
    with pytest.raises(ConfigError, match="FwMark"):
        p(base.format("4294967296"))


def _err(text: str | bytes, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        p(text, **kw)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey", "base64"),
        ("[Interface]\nListenPort = 65536\n", 2, "ListenPort", "out of range"),
        ("[Interface]\nListenPort = -1\n", 2, "ListenPort", "decimal"),
        ("[Interface]\n\n# c\nMTU = 100\n", 4, "MTU", "576"),
        ("[Interface]\nAddress = 10.0.0.300/24\n", 2, "Address", ""),
        ("[Interface]\nSaveConfig = yes\n", 2, "SaveConfig", "true or false"),
        ("[Interface]\nDNS = not a domain!\n", 2, "DNS", "neither"),
        ("[Interface]\nTable = a b\n", 2, "Table", ""),
        ("[Interface]\nPostUp =\n", 2, "PostUp", "empty"),
        ("[Interface]\nBogusKey = 1\n", 2, "BogusKey", "unknown key"),
        ("[Interface]\nPublicKey = x\n", 2, "PublicKey", "unknown key"),
        ("ListenPort = 1\n", 1, "ListenPort", "outside"),
        (
            "[Interface]\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n"
            "Endpoint = 2001:db8::1:51820\n",
            4,
            "Endpoint",
            "brackets",
        ),
        ("[Interface]\n[Peer]\nEndpoint = 10.0.0.1\n", 3, "Endpoint", "host:port"),
        ("[Interface]\n[Peer]\nEndpoint = 10.0.0.1:0\n", 3, "Endpoint", "port 0"),
        ("[Interface]\n[Peer]\nEndpoint = [10.0.0.1]:5\n", 3, "Endpoint", "IPv6"),
        ("[Interface]\n[Peer]\nEndpoint = nowhere.invalid:5\n", 3, "Endpoint", "resolve"),
        ("[Interface]\n[Peer]\nAllowedIPs = 10.0.0.0/33\n", 3, "AllowedIPs", ""),
        ("[Interface]\n[Peer]\nPersistentKeepalive = 70000\n", 3, "PersistentKeepalive", ""),
        ("[Interface]\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 2, "PublicKey", "without a PublicKey"),
        ("[Interface]\n[Peer]\nPresharedKey = AAAA\n", 3, "PresharedKey", ""),
        ("[Interface]\n[Peer]\nListenPort = 1\n", 3, "ListenPort", "unknown key in [Peer]"),
        ("[Interface]\nthis line has no equals\n", 2, None, "Key = Value"),
        ("[Interfaces]\n", 1, None, "unknown section"),
    ],
)
def test_errors_name_line_and_key(text, line, key, fragment):
    e = _err(text, filename="wg9.conf")
    assert e.file == "wg9.conf" and e.line == line and e.key == key
    assert fragment in str(e)
    assert str(e).startswith(f"wg9.conf:{line}: ")


def test_duplicate_and_own_key_peers_are_errors():
    pk = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    e = _err(f"[Interface]\n[Peer]\nPublicKey = {pk}\n[Peer]\nPublicKey = {pk}\n")
    assert e.line == 4 and "line 2" in str(e)
    priv = PrivateKey.generate()
    e = _err(
        f"[Interface]\nPrivateKey = {priv.to_base64()}\n[Peer]\n"
        f"PublicKey = {priv.public_key.to_base64()}\n"
    )
    assert e.line == 3 and "own public key" in str(e)


def test_peers_without_interface_and_non_utf8():
    assert "no [Interface]" in str(_err("[Peer]\nPublicKey = " + "A" * 43 + "=\n"))
    assert "UTF-8" in str(_err(b"[Interface]\n\xff\xfe = 1\n"))


def test_host_names_use_the_injected_resolver_only():
    seen = []

    def spy(host: str, port: int) -> str:
        seen.append((host, port))
        return "2001:db8::9"

    c = parse(
        "[Interface]\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n"
        "Endpoint = vpn.example.org:443\n",
        resolver=spy,
    )
    assert seen == [("vpn.example.org", 443)]
    assert c.peers[0].endpoint.pair() == ("2001:db8::9", 443)
    # A resolver answering garbage is a ConfigError, as is having no resolver at all.
    with pytest.raises(ConfigError, match="resolve"):
        parse("[Interface]\n[Peer]\nEndpoint = a.example:1\n", resolver=lambda h, p: "nope")
    with pytest.raises(ConfigError, match="not an IP"):
        parse("[Interface]\n[Peer]\nEndpoint = a.example:1\n", resolver=None)


def test_load_and_interface_name(tmp_path):
    path = tmp_path / "wg0.conf"
    path.write_text(WG8_EXAMPLE)
    assert load(path, resolver=resolver) == p(WG8_EXAMPLE)
    assert interface_name(path) == "wg0"
    with pytest.raises(ConfigError, match="valid interface name"):
        interface_name(tmp_path / "much-too-long-interface-name.conf")
    bad = tmp_path / "bad.conf"
    bad.write_text("[Interface]\nListenPort = x\n")
    with pytest.raises(ConfigError) as info:
        load(bad, resolver=resolver)
    assert info.value.file == str(bad) and info.value.line == 2
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.conf")


@pytest.mark.parametrize("text", [WG8_EXAMPLE, WG_QUICK_EXAMPLE, WG_QUICK_SERVER_EXAMPLE])
def test_round_trip_of_the_examples(text):
    c = p(text)
    written = dump(c)
    assert p(written) == c
    assert dump(p(written)) == written  # the writer is a fixed point after one pass


def test_writer_format_and_wg_only():
    c = p(WG_QUICK_SERVER_EXAMPLE)
    full = dump(c)
    assert "Address = 10.192.122.1/24, 10.10.0.1/16, fd00:abcd::1/64\n" in full
    assert "FwMark = 0x8c\n" in full and "SaveConfig = true\n" in full
    assert full.count("PostUp = ") == 2
    stripped = dump(c, wg_only=True)
    for key in (
        "Address",
        "MTU",
        "DNS",
        "Table",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
        "SaveConfig",
    ):
        assert f"{key} =" not in stripped
    again = p(stripped)
    assert again.interface.private_key == c.interface.private_key
    assert again.peers == c.peers


def test_writer_refuses_what_cannot_be_read_back():
    c = p(WG_QUICK_EXAMPLE)
    c.interface.post_up = ["echo a # not a comment"]
    with pytest.raises(ConfigError, match="PostUp"):
        dump(c)
    c.interface.post_up = ["two\nlines"]
    with pytest.raises(ConfigError):
        dump(c)


# -- Hypothesis: generated configurations round-trip; garbage only raises ConfigError ----------

keys32 = st.binary(min_size=32, max_size=32)
v4nets = st.builds(
    lambda a, n: ipaddress.ip_network((a, n), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6nets = st.builds(
    lambda a, n: ipaddress.ip_network((a, n), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
v4ifaces = st.builds(
    lambda a, n: ipaddress.ip_interface((a, n)), st.integers(1, 2**32 - 1), st.integers(1, 32)
)
v6ifaces = st.builds(
    lambda a, n: ipaddress.ip_interface((a, n)), st.integers(1, 2**128 - 1), st.integers(1, 128)
)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
endpoints = st.one_of(
    st.builds(lambda h, port: cfg.Endpoint(h, port, h), ips, st.integers(1, 65535)),
    st.builds(
        lambda name, port: cfg.Endpoint(name, port, NAMES[name]),
        st.sampled_from(sorted(NAMES)),
        st.integers(1, 65535),
    ),
)
hook = (
    st.text(string.ascii_letters + string.digits + " %|;<>()-/.$'\"", min_size=1, max_size=30)
    .map(str.strip)
    .filter(bool)
)

peers = st.builds(
    cfg.PeerConfig,
    public_key=keys32.map(PublicKey),
    preshared_key=st.none() | keys32.map(PresharedKey),
    allowed_ips=st.lists(v4nets | v6nets, max_size=4),
    endpoint=st.none() | endpoints,
    persistent_keepalive=st.none() | st.integers(0, 65535),
)
interfaces = st.builds(
    cfg.InterfaceConfig,
    private_key=st.none() | keys32.map(PrivateKey),
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    addresses=st.lists(v4ifaces | v6ifaces, max_size=3),
    mtu=st.none() | st.integers(576, 65535),
    dns=st.lists(ips | st.sampled_from(["corp.example", "lan"]), max_size=3),
    table=st.none() | st.sampled_from(["off", "auto", "1234", "main"]),
    pre_up=st.lists(hook, max_size=2),
    post_up=st.lists(hook, max_size=2),
    pre_down=st.lists(hook, max_size=2),
    post_down=st.lists(hook, max_size=2),
    save_config=st.none() | st.booleans(),
)


@st.composite
def configs(draw):
    c = cfg.Config(
        draw(interfaces), draw(st.lists(peers, max_size=4, unique_by=lambda x: x.public_key))
    )
    own = c.interface.private_key.public_key if c.interface.private_key else None
    c.peers = [x for x in c.peers if x.public_key != own]
    return c


@settings(max_examples=80, deadline=None)
@given(configs())
def test_generated_configs_round_trip(c):
    assert p(dump(c)) == c


KEYWORDS = [
    "[Interface]",
    "[Peer]",
    "[interface]",
    "[",
    "]",
    "=",
    "#",
    ",",
    ":",
    "/",
    "\n",
    " ",
    "PrivateKey",
    "ListenPort",
    "FwMark",
    "Address",
    "MTU",
    "DNS",
    "Table",
    "PreUp",
    "PostDown",
    "SaveConfig",
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
    "off",
    "true",
    "0x",
    "10.0.0.1",
    "::1",
    "[::1]",
    "65535",
    "-1",
    "test.wireguard.com",
    "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
]
garbage_text = st.lists(st.sampled_from(KEYWORDS) | st.text(max_size=5), max_size=40).map("".join)


def _only_config_errors(data) -> None:
    try:
        parse(data, resolver=resolver)
    except ConfigError as e:
        assert e.file == "<string>"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage_text)
def test_garbage_text_only_raises_config_error(text):
    _only_config_errors(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bytes_only_raise_config_error(data):
    _only_config_errors(data)


@settings(max_examples=120, deadline=None)
@given(configs(), st.data())
def test_mutated_valid_files_only_raise_config_error(c, data):
    text = dump(c)
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 8))
    insert = data.draw(st.sampled_from(KEYWORDS) | st.text(max_size=3))
    _only_config_errors(text[:pos] + insert + text[pos + cut :])
