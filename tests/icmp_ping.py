"""A small ``ping`` for tests, so they need no iputils: ICMP/ICMPv6 echo over a raw socket.

``ping_cmd(ns, target, ...)`` gives the command that runs it inside network namespace
``ns`` with this interpreter; it prints ``sent received`` and exits 0 only when every
echo was answered within ``timeout`` seconds. ``df=True`` forbids fragmentation (IPv4
DF bit), to prove that packets of the full interface MTU pass whole.

For tests that are one end of the echo themselves (they write and read whole IP packets):
``echo_packet`` builds an ICMP/ICMPv6 echo request or reply with its IP header, and
``parse_echo`` takes one apart.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from typing import NamedTuple

from dataplane.transport.ip_model import checksum  # re-exported for the tests

SCRIPT = r"""
import ipaddress, os, select, socket, struct, sys, time
target, count, interval, size, timeout, df = sys.argv[1:7]
count, interval, size, timeout = int(count), float(interval), int(size), float(timeout)
df = df == "1"
v6 = ipaddress.ip_address(target).version == 6
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
if df and not v6:
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
ok = 0
for seq in range(count):
    body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + bytes(size)
    if not v6:
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s.sendto(body, (target, 0))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not select.select([s], [], [], max(0, end - time.monotonic()))[0]:
            break
        data, _ = s.recvfrom(65536)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            ok += 1
            break
    time.sleep(interval)
print(count, ok)
sys.exit(0 if ok == count else 1)
"""


def ping_cmd(
    ns: str,
    target: str,
    count: int = 3,
    *,
    interval: float = 0.2,
    size: int = 56,
    timeout: float = 3.0,
    df: bool = False,
) -> list[str]:
    """``ping -c count -i interval -s size -W timeout [-M do] target`` inside ``ns``."""
    args = [target, str(count), str(interval), str(size), str(timeout), "1" if df else "0"]
    return ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, *args]


def echo_packet(
    src: str, dst: str, seq: int, data: bytes = b"echo", reply: bool = False, ident: int = 0x4242
) -> bytes:
    """An IPv4 ICMP or IPv6 ICMPv6 echo request (or reply), checksums filled in."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, s.packed, d.packed
        )
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + icmp
    icmp = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + data
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 64, s.packed, d.packed) + icmp


class Echo(NamedTuple):
    src: str
    dst: str
    type: int  # 8/0 ICMP request/reply, 128/129 ICMPv6
    ident: int
    seq: int
    data: bytes


def parse_echo(pkt: bytes) -> Echo | None:
    """The echo in an ICMP/ICMPv6 packet, else None (other packets, too short)."""
    if len(pkt) >= 28 and pkt[0] >> 4 == 4 and pkt[9] == 1:
        ihl = (pkt[0] & 15) * 4
        icmp = pkt[ihl : struct.unpack("!H", pkt[2:4])[0]]
        src, dst = ipaddress.ip_address(pkt[12:16]), ipaddress.ip_address(pkt[16:20])
    elif len(pkt) >= 48 and pkt[0] >> 4 == 6 and pkt[6] == 58:
        icmp = pkt[40 : 40 + struct.unpack("!H", pkt[4:6])[0]]
        src, dst = ipaddress.ip_address(pkt[8:24]), ipaddress.ip_address(pkt[24:40])
    else:
        return None
    ty, _, _, ident, seq = struct.unpack("!BBHHH", icmp[:8])
    return Echo(str(src), str(dst), ty, ident, seq, icmp[8:])
