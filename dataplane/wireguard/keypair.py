"""Transport keypairs (sessions) and the per-peer current / previous / next slots.

Theory of operation (whitepaper §5.4.6-§5.4.7, §6): a completed handshake yields a
``Keypair``: one ``SendKey`` and one ``ReceiveKey`` of ``dataplane._crypto`` (each keeps its
own OpenSSL context, so the per-packet path never re-keys), a replay window, our receiver
index and the peer's, the creation time and whether we were the initiator.

A peer holds up to three keypairs:

* ``current``: sends and receives.
* ``previous``: receive only, so packets in flight on the old session still arrive after a
  rekey.
* ``next``: the responder's new session, not yet confirmed. The responder must not send on
  it (the initiator may not have it yet); it becomes ``current`` when the first transport
  message on it decrypts (key confirmation), and the old ``current`` becomes ``previous``.

Limits: no keypair sends or receives once it is REJECT_AFTER_TIME old or its counter reached
REJECT_AFTER_MESSAGES (the batch primitives enforce the counter limit per packet; here it
makes the session unusable instead of failing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane._crypto import ReceiveKey, ReplayWindow, SendKey

from .constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME

__all__ = ["Keypair"]


@dataclass(eq=False, slots=True)
class Keypair:
    send: SendKey
    receive: ReceiveKey
    local_index: int
    remote_index: int
    created: float
    is_initiator: bool
    window: ReplayWindow = field(default_factory=ReplayWindow)

    @classmethod
    def derive(
        cls,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        now: float,
        is_initiator: bool,
    ) -> Keypair:
        return cls(
            SendKey(send_key), ReceiveKey(receive_key), local_index, remote_index, now, is_initiator
        )

    @property
    def send_counter(self) -> int:
        """The next unused sending counter (kept in the SendKey, shared by every sender)."""
        return self.send.counter

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        self.send.counter = value

    def age(self, now: float) -> float:
        return now - self.created

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME

    def can_send(self, now: float) -> bool:
        return not self.expired(now) and self.send_counter < REJECT_AFTER_MESSAGES

    def can_receive(self, now: float) -> bool:
        return not self.expired(now)

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return (
            f"<Keypair {role} local={self.local_index:#010x} "
            f"remote={self.remote_index:#010x} created={self.created} "
            f"counter={self.send_counter}>"
        )
