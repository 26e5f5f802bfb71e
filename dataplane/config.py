"""wg-quick configuration files: parse them into plain data and write them back.

Theory of operation. A file is a sequence of lines; ``#`` starts a comment that runs to the
end of the line, blank lines are ignored, ``[Interface]`` and ``[Peer]`` start sections and
every other line is ``Key = Value``. Parsing is one pass over the lines with the current
section as the only state: each key is looked up in the table of its section
(``_INTERFACE_KEYS`` / ``_PEER_KEYS``), its value is converted by the parser named there
and stored on the section's dataclass. List keys (``Address``, ``DNS``, ``AllowedIPs``)
take comma lists and accumulate over repeated lines; scalar keys keep the last value, and
the hook keys (``PreUp``...) keep every line in order, all as ``wg``/``wg-quick`` do.
Section names and keys are case-insensitive like ``wg setconf`` (wireguard-tools
``config.c`` compares with ``strncasecmp``).

Every problem is a :class:`ConfigError` naming the file, the line and the key; nothing else
escapes the parser (key, address and number errors are converted). Unknown sections and
keys are errors, never silently dropped. Stricter than ``wg`` on purpose: two ``[Peer]``
sections with one PublicKey, or a peer with the interface's own key, are errors (``wg``
would merge or ignore them), and whitespace inside a key is not removed.

This module only parses and writes. ``dataplane up`` (:mod:`dataplane.interface`, with
:mod:`dataplane.wgquick`) acts on ``Address``, ``MTU``, ``FwMark``, ``DNS``, ``Table`` and
the ``PreUp``/``PostUp``/``PreDown``/``PostDown`` hooks as wg-quick does; ``SaveConfig``
is parsed, kept and written back, but not acted on (``up`` warns).

Endpoints keep the host as written (``Endpoint.host``) so that a file round-trips, and the
address it resolved to (``Endpoint.address``) through a resolver the caller can replace
(tests use a dictionary; the default asks ``getaddrinfo`` for UDP addresses and prefers
IPv4 as ``wg`` does). Writing (:func:`dump`) emits the same format, one key per line in a
fixed order; comments are not preserved. ``dump(config, wg_only=True)`` leaves out the
wg-quick-only keys, as ``wg-quick strip`` does, for ``wg setconf``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from dataplane.wireguard.keys import KeyError_, PresharedKey, PrivateKey, PublicKey

__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "InterfaceConfig",
    "PeerConfig",
    "Resolver",
    "dump",
    "format_endpoint",
    "load",
    "parse",
    "parse_endpoint",
    "system_resolver",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Resolver = Callable[[str, int], str]
"""``resolver(host, port) -> IP address text``; raises OSError or ValueError on failure."""

MAX_FILE_SIZE = 16 * 1024 * 1024
"""Refuse larger files: a configuration is kilobytes; this bounds memory, not semantics."""


class ConfigError(ValueError):
    """A configuration file problem, with where it is: ``file:line: key: message``."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "<string>",
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class Endpoint:
    """A peer's UDP endpoint: the host as written and the IP address it stands for."""

    host: str
    port: int
    address: str

    def pair(self) -> tuple[str, int]:
        """``(ip, port)`` as the core's ``endpoint=`` argument takes it."""
        return (self.address, self.port)


@dataclass
class InterfaceConfig:
    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None  # None: not given; 0: "off"
    addresses: list[IPInterface] = field(default_factory=list)
    mtu: int | None = None
    # wg-quick-only keys: acted on by dataplane.interface (SaveConfig is only kept).
    dns: list[str] = field(default_factory=list)
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool | None = None


@dataclass
class PeerConfig:
    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None  # None: not given; 0: "off"


@dataclass
class Config:
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)


# -- value parsers (raise ValueError; the caller adds file, line and key) --

_DECIMAL = re.compile(r"[0-9]{1,10}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?"
)


def _uint(text: str, limit: int, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{what} must be a decimal number, got {text!r}")
    value = int(text)
    if value > limit:
        raise ValueError(f"{what} {value} is out of range 0..{limit}")
    return value


def _port(text: str) -> int:
    return _uint(text, 0xFFFF, "port")


def _fwmark(text: str) -> int:
    # config.c parses with strtoul(base 0): "off", decimal or 0x-hex (octal is not worth it).
    if text.lower() == "off":
        return 0
    if re.fullmatch(r"0[xX][0-9a-fA-F]{1,8}", text):
        return int(text, 16)
    return _uint(text, 0xFFFFFFFF, "fwmark")


def _keepalive(text: str) -> int:
    if text.lower() == "off":
        return 0
    return _uint(text, 0xFFFF, "persistent keepalive")


def _mtu(text: str) -> int:
    value = _uint(text, 0xFFFF, "MTU")
    if value < 576:  # wg-quick hands it to `ip link set mtu`; below IPv4's minimum is useless
        raise ValueError(f"MTU {value} is below 576")
    return value


def _bool(text: str) -> bool:
    low = text.lower()
    if low not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return low == "true"


def _items(text: str) -> list[str]:
    """A comma list; wg-quick also splits on whitespace (``${value//,/ }``)."""
    return [item for item in re.split(r"[,\s]+", text) if item]


def _address(text: str) -> IPInterface:
    if "%" in text:
        raise ValueError(f"address {text!r} must not carry a scope")
    return ipaddress.ip_interface(text)


def _network(text: str) -> IPNetwork:
    # `wg` masks host bits (10.0.0.1/24 -> 10.0.0.0/24); a bare address is a host route.
    if "%" in text:
        raise ValueError(f"allowed IP {text!r} must not carry a scope")
    return ipaddress.ip_network(text, strict=False)


def _dns(text: str) -> list[str]:
    out = []
    for item in _items(text):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            if not _HOSTNAME.fullmatch(item):  # wg-quick treats non-IPs as search domains
                raise ValueError(f"DNS entry {item!r} is neither an IP nor a domain") from None
            out.append(item)
    return out


def _table(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"table {text!r} must be off, auto, a number or a table name")
    return text


def _hook(text: str) -> str:
    if not text:
        raise ValueError("empty command")
    return text


def system_resolver(host: str, port: int) -> str:
    """Resolve ``host`` for UDP with ``getaddrinfo``, preferring IPv4 as ``wg`` does."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    if not infos:
        raise OSError(f"no address for {host!r}")
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def parse_endpoint(text: str, resolver: Resolver | None = system_resolver) -> Endpoint:
    """``1.2.3.4:51820``, ``[2001:db8::1]:51820`` or ``host.example:51820``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"endpoint {text!r}: expected [IPv6]:port")
        host, port_text = text[1:close], text[close + 2 :]
        addr = ipaddress.ip_address(host)
        if addr.version != 6:
            raise ValueError(f"endpoint {text!r}: brackets are for IPv6 addresses")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"endpoint {text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"endpoint {text!r}: an IPv6 address needs brackets, [addr]:port")
    port = _port(port_text)
    if port == 0:
        raise ValueError(f"endpoint {text!r}: port 0")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"endpoint host {host!r} is not an IP or host name") from None
        if resolver is None:
            raise ValueError(f"endpoint host {host!r} is not an IP address") from None
        try:
            address = str(ipaddress.ip_address(resolver(host, port)))
        except (OSError, ValueError, UnicodeError) as e:
            raise ValueError(f"cannot resolve {host!r}: {e}") from None
    return Endpoint(host, port, address)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the section tables --
# key (lowercase) -> (canonical spelling, parser, attribute, how to store).
# "set": last value wins; "extend": a list value accumulates; "append": one item per line.

_INTERFACE_KEYS: dict[str, tuple[str, Callable[[str], object], str, str]] = {
    "privatekey": ("PrivateKey", PrivateKey.from_base64, "private_key", "set"),
    "listenport": ("ListenPort", _port, "listen_port", "set"),
    "fwmark": ("FwMark", _fwmark, "fwmark", "set"),
    "address": ("Address", lambda v: [_address(a) for a in _items(v)], "addresses", "extend"),
    "mtu": ("MTU", _mtu, "mtu", "set"),
    "dns": ("DNS", _dns, "dns", "extend"),
    "table": ("Table", _table, "table", "set"),
    "preup": ("PreUp", _hook, "pre_up", "append"),
    "postup": ("PostUp", _hook, "post_up", "append"),
    "predown": ("PreDown", _hook, "pre_down", "append"),
    "postdown": ("PostDown", _hook, "post_down", "append"),
    "saveconfig": ("SaveConfig", _bool, "save_config", "set"),
}
_PEER_KEYS: dict[str, tuple[str, Callable[[str], object], str, str]] = {
    "publickey": ("PublicKey", PublicKey.from_base64, "public_key", "set"),
    "presharedkey": ("PresharedKey", PresharedKey.from_base64, "preshared_key", "set"),
    "allowedips": (
        "AllowedIPs",
        lambda v: [_network(a) for a in _items(v)],
        "allowed_ips",
        "extend",
    ),
    # Endpoint is special-cased: it needs the resolver.
    "endpoint": ("Endpoint", str, "endpoint", "set"),
    "persistentkeepalive": ("PersistentKeepalive", _keepalive, "persistent_keepalive", "set"),
}
_LIST_KEYS = {"address", "dns", "allowedips"}  # an empty value is allowed and adds nothing


class _PeerDraft:
    """A [Peer] section being read: PublicKey may come after the other keys."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.values: dict[str, object] = {}


def parse(
    text: str | bytes,
    *,
    filename: str = "<string>",
    resolver: Resolver | None = system_resolver,
) -> Config:
    """Parse wg-quick text; raise :class:`ConfigError` for anything wrong."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"not UTF-8 text: {e.reason} at byte {e.start}", file=filename
            ) from None
    config = Config()
    iface_seen = False
    section: str | None = None
    drafts: list[_PeerDraft] = []
    iface_values: dict[str, object] = {}

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.lower()
            if name == "[interface]":
                section = "interface"
                iface_seen = True
            elif name == "[peer]":
                section = "peer"
                drafts.append(_PeerDraft(lineno))
            else:
                raise ConfigError(f"unknown section {line!r}", file=filename, line=lineno)
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"expected Key = Value, got {line!r}", file=filename, line=lineno)
        if section is None:
            raise ConfigError(
                "key outside of an [Interface] or [Peer] section",
                file=filename,
                line=lineno,
                key=key,
            )
        table = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        entry = table.get(key.lower())
        if entry is None:
            where = "[Interface]" if section == "interface" else "[Peer]"
            raise ConfigError(f"unknown key in {where}", file=filename, line=lineno, key=key)
        canonical, convert, attr, mode = entry
        if not value and key.lower() not in _LIST_KEYS:
            raise ConfigError("empty value", file=filename, line=lineno, key=canonical)
        try:
            if key.lower() == "endpoint":
                parsed: object = parse_endpoint(value, resolver)
            else:
                parsed = convert(value)
        except (ValueError, KeyError_) as e:
            raise ConfigError(str(e), file=filename, line=lineno, key=canonical) from None
        values = iface_values if section == "interface" else drafts[-1].values
        if mode == "set":
            values[attr] = parsed
        elif mode == "extend":
            values.setdefault(attr, []).extend(parsed)  # type: ignore[attr-defined]
        else:
            values.setdefault(attr, []).append(parsed)  # type: ignore[attr-defined]

    if not iface_seen and drafts:
        raise ConfigError("no [Interface] section", file=filename)
    config.interface = InterfaceConfig(**iface_values)  # type: ignore[arg-type]
    seen: dict[PublicKey, int] = {}
    own = config.interface.private_key.public_key if config.interface.private_key else None
    for draft in drafts:
        pk = draft.values.get("public_key")
        if pk is None:
            raise ConfigError(
                "[Peer] without a PublicKey", file=filename, line=draft.line, key="PublicKey"
            )
        assert isinstance(pk, PublicKey)
        if pk in seen:
            raise ConfigError(
                f"peer {pk} is already defined at line {seen[pk]}",
                file=filename,
                line=draft.line,
                key="PublicKey",
            )
        if pk == own:
            raise ConfigError(
                "a peer has the interface's own public key",
                file=filename,
                line=draft.line,
                key="PublicKey",
            )
        seen[pk] = draft.line
        config.peers.append(PeerConfig(**draft.values))  # type: ignore[arg-type]
    return config


def load(path: str | os.PathLike[str], *, resolver: Resolver | None = system_resolver) -> Config:
    """Read and parse a file; I/O problems are ConfigErrors too."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=name) from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"larger than {MAX_FILE_SIZE} bytes", file=name)
    return parse(data, filename=name, resolver=resolver)


def interface_name(path: str | os.PathLike[str]) -> str:
    """The interface a file configures, named after it like wg-quick (``wg0.conf`` -> wg0)."""
    base = os.path.basename(os.fspath(path))
    name = base[:-5] if base.endswith(".conf") else base
    if not re.fullmatch(r"[a-zA-Z0-9_=+.-]{1,15}", name):
        raise ConfigError(
            f"{name!r} is not a valid interface name (1-15 of a-zA-Z0-9_=+.-)", file=os.fspath(path)
        )
    return name


# -- writing --


def _check_text(key: str, value: str) -> str:
    # A '#' or a line break would be read back as a comment or a new line.
    if "#" in value or "\n" in value or "\r" in value or value != value.strip() or not value:
        raise ConfigError(f"{value!r} cannot be written to a configuration file", key=key)
    return value


def dump(config: Config, *, wg_only: bool = False) -> str:
    """The text of ``config`` as wg-quick reads it (``wg_only``: only keys wg setconf reads)."""
    i = config.interface
    lines = ["[Interface]"]
    if i.private_key is not None:
        lines.append(f"PrivateKey = {i.private_key.to_base64()}")
    if i.listen_port is not None:
        lines.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        lines.append(f"FwMark = {'off' if i.fwmark == 0 else hex(i.fwmark)}")
    if not wg_only:
        if i.addresses:
            lines.append(f"Address = {', '.join(str(a) for a in i.addresses)}")
        if i.mtu is not None:
            lines.append(f"MTU = {i.mtu}")
        if i.dns:
            lines.append(f"DNS = {', '.join(_check_text('DNS', d) for d in i.dns)}")
        if i.table is not None:
            lines.append(f"Table = {_check_text('Table', i.table)}")
        for key, hooks in (
            ("PreUp", i.pre_up),
            ("PostUp", i.post_up),
            ("PreDown", i.pre_down),
            ("PostDown", i.post_down),
        ):
            lines.extend(f"{key} = {_check_text(key, h)}" for h in hooks)
        if i.save_config is not None:
            lines.append(f"SaveConfig = {'true' if i.save_config else 'false'}")
    for p in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key.to_base64()}"]
        if p.preshared_key is not None:
            lines.append(f"PresharedKey = {p.preshared_key.to_base64()}")
        if p.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(str(n) for n in p.allowed_ips)}")
        if p.endpoint is not None:
            lines.append(f"Endpoint = {format_endpoint(p.endpoint.host, p.endpoint.port)}")
        if p.persistent_keepalive is not None:
            ka = p.persistent_keepalive
            lines.append(f"PersistentKeepalive = {'off' if ka == 0 else ka}")
    return "\n".join(lines) + "\n"
