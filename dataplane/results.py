"""What one call into the synchronous core produces: batches to hand to transports.

Plain data, shared by the core (which fills it) and the driver (which delivers it), so that
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Endpoint = tuple[str, int]
"""An underlay address: (IP text, UDP port)."""


@dataclass
class Output:
    """Batches produced by ``process_outbound`` / ``process_inbound`` / ``process_events``.

    ``to_underlay`` maps (underlay transport id, endpoint) to the batches of datagrams to
    send there, in order; ``to_overlay`` maps an overlay transport id to the batches of IP
    packets to deliver to it; ``disco`` and ``stun`` carry (underlay transport id, source
    endpoint, payload) for the control plane.
    """

    to_underlay: dict[tuple[int, Endpoint], list[Any]] = field(default_factory=dict)
    to_overlay: dict[int, list[Any]] = field(default_factory=dict)
    disco: list[tuple[int, Endpoint, bytes]] = field(default_factory=list)
    stun: list[tuple[int, Endpoint, bytes]] = field(default_factory=list)

    def send(self, underlay_id: int, endpoint: Endpoint, batch: Any) -> None:
        self.to_underlay.setdefault((underlay_id, endpoint), []).append(batch)

    def deliver(self, overlay_id: int, batch: Any) -> None:
        self.to_overlay.setdefault(overlay_id, []).append(batch)

    def merge(self, other: Output) -> None:
        for key, batches in other.to_underlay.items():
            self.to_underlay.setdefault(key, []).extend(batches)
        for oid, batches in other.to_overlay.items():
            self.to_overlay.setdefault(oid, []).extend(batches)
        self.disco += other.disco
        self.stun += other.stun

    def __bool__(self) -> bool:
        return bool(self.to_underlay or self.to_overlay or self.disco or self.stun)
