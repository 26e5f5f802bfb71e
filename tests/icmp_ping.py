"""A small ``ping`` for tests, so they need no iputils: ICMP/ICMPv6 echo over a raw socket.

``ping_cmd(ns, target, ...)`` gives the command that runs it inside network namespace
``ns`` with this interpreter; it prints ``sent received`` and exits 0 only when every
echo was answered within ``timeout`` seconds. ``df=True`` forbids fragmentation (IPv4
DF bit), to prove that packets of the full interface MTU pass whole.
"""

from __future__ import annotations

import sys

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
