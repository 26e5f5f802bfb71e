"""Sans-I/O WireGuard: keys, messages, Noise_IKpsk2, cookies, sessions, timers, device.

Layering: nothing in this package imports threading, time, socket, the driver or the
transports. Every entry point takes ``now`` (monotonic seconds) from the caller; wall time
is used only for TAI64N timestamps, through an injectable clock.
"""
