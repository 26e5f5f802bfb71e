"""Sans-I/O WireGuard: keys, messages, Noise_IKpsk2, cookies, sessions, timers, device.

One concern per module, named as in wireguard-go's ``device/``: ``constants`` (whitepaper
names), ``keys``, ``tai64n``, ``messages``, ``noise`` (the handshake), ``cookie`` (mac1/mac2,
cookie replies, rate limiting), ``keypair``, ``indextable``, ``peer`` and ``device`` (send,
receive, handshake state machine and timers). ``_wgbatch`` holds the per-slot loops.

Layering: nothing in this package imports threading, time, socket, the driver or the
transports. Every entry point takes ``now`` (monotonic seconds) from the caller; wall time
is used only for TAI64N timestamps, through an injectable clock.
"""

from .device import ConfigError, Device, Transmit
from .keys import KeyError_, PresharedKey, PrivateKey, PublicKey
from .peer import PeerStats

__all__ = [
    "ConfigError",
    "Device",
    "KeyError_",
    "PeerStats",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "Transmit",
]
