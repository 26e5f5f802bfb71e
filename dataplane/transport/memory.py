"""In-memory transports: a wire between two data planes, and an overlay tap for tests.

Theory of operation: ``MemoryWire`` joins two ``ThreadedDataPlane`` drivers the way a UDP
path between two hosts would, without sockets: it registers one underlay transport on each
driver and runs one named thread per direction that takes the batches a driver wants sent
(``outgoing``: ``(endpoint, batch)``) and hands them to the other driver (``incoming``),
with every slot's endpoint set to the sender's endpoint, so the receiving core sees where
the datagrams came from exactly as from a socket. Like a wire and unlike a function call:

* only alive slots travel, and they arrive alive, with no peer id (-1) and no status of the
  sender's (batches whose slots are all alive are passed on without copying, since the
  sending driver has handed them off; others are compacted into a new batch);
* a batch addressed to an endpoint other than the far side's is lost and counted
  (``dropped_misaddressed``), as a datagram to a host that is not there would be;
* optional impairments, from a seeded ``random.Random``: ``loss`` (probability per
  datagram), ``reorder`` (probability that a batch is held back and delivered after the
  next one), ``duplicate`` (probability per datagram of arriving twice);
* a full input queue of the receiver drops the batch, counted by that driver.

``endpoint_b`` can be changed at run time with ``move_b`` to simulate roaming (B's
datagrams then come from the new endpoint, and datagrams to the old one are lost).

``MemoryOverlay`` is an overlay transport without a thread: a test puts IP packets in
with ``send`` and takes what the data plane delivers with ``receive`` / ``collect``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from dataplane._batch import PacketBatch
from dataplane.queues import QueueClosed
from dataplane.results import Endpoint

POLL_INTERVAL = 0.5


def _normalise(endpoint: Endpoint) -> Endpoint:
    # Same text form as PacketBatch.endpoint() gives back, so comparisons are exact.
    probe = PacketBatch(1, mtu=1, headroom=0, tailroom=0)
    probe.append(b"")
    probe.set_endpoint(0, endpoint)
    return probe.endpoint(0)


@dataclass
class WireStats:
    batches: int = 0
    packets: int = 0
    bytes: int = 0
    dropped_loss: int = 0
    dropped_misaddressed: int = 0
    dropped_dead: int = 0  # slots the sender had already dropped: never put on the wire
    dropped_input_full: int = 0
    duplicated: int = 0
    reordered: int = 0


class _Direction:
    """One direction of the wire: from ``src`` driver's underlay to ``dst`` driver's."""

    def __init__(self, wire: MemoryWire, name: str, src_handle: Any, dst_handle: Any) -> None:
        self.wire = wire
        self.name = name
        self.src = src_handle
        self.dst = dst_handle
        self.stats = WireStats()
        self.held: PacketBatch | None = None
        self.thread: threading.Thread | None = None
        # carry() runs on the sending driver's thread (inline send); the direction's own
        # thread only releases a held-back batch when traffic pauses.
        self._lock = threading.Lock()

    def run(self) -> None:
        out = self.src.outgoing
        while True:
            try:
                item = out.get(timeout=POLL_INTERVAL)
            except QueueClosed:
                return
            if item is None:
                if self.wire._stop.is_set():
                    return
                # Nothing more is coming for now: a held-back batch must not wait forever.
                with self._lock:
                    self._release_held()
                continue
            endpoint, batch = item
            self.carry(endpoint, batch)

    def carry(self, endpoint: Endpoint, batch: Any) -> None:
        with self._lock:
            self._carry(endpoint, batch)

    def _carry(self, endpoint: Endpoint, batch: Any) -> None:
        wire = self.wire
        st = self.stats
        sender, receiver = wire._endpoints(self)
        if not isinstance(batch, PacketBatch):
            batch = PacketBatch.from_packets(batch, mtu=0xFFFF)
        if _normalise(endpoint) != receiver:
            st.dropped_misaddressed += len(batch.alive())
            return
        batch = self._on_the_wire(batch)
        if batch is None:
            return
        batch.fill_endpoint(sender)
        batch.fill_peer(-1)
        if wire.reorder and self.held is None and wire._rng.random() < wire.reorder:
            self.held = batch
            st.reordered += len(batch)
            return
        self._deliver(batch)
        self._release_held()

    def _on_the_wire(self, batch: PacketBatch) -> PacketBatch | None:
        """The datagrams that survive the wire, in a batch whose slots are all alive."""
        wire = self.wire
        st = self.stats
        alive = batch.alive()
        st.dropped_dead += len(batch) - len(alive)
        if not wire.loss and not wire.duplicate and len(alive) == len(batch):
            return batch if len(batch) else None
        keep: list[bytes] = []
        for i in alive:
            if wire.loss and wire._rng.random() < wire.loss:
                st.dropped_loss += 1
                continue
            pkt = bytes(batch[i])
            keep.append(pkt)
            if wire.duplicate and wire._rng.random() < wire.duplicate:
                keep.append(pkt)
                st.duplicated += 1
        if not keep:
            return None
        out = PacketBatch(
            len(keep),
            mtu=max(map(len, keep)) or 1,
            headroom=batch.headroom,
            tailroom=batch.tailroom,
        )
        out.extend(keep)
        return out

    def _deliver(self, batch: PacketBatch) -> None:
        st = self.stats
        n = len(batch)
        if self.dst.incoming.put(batch):
            st.batches += 1
            st.packets += n
            st.bytes += sum(batch.length_array)
        else:
            st.dropped_input_full += n

    def _release_held(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self._deliver(held)


class MemoryWire:
    """Join two drivers with an in-memory underlay; see the module docstring."""

    def __init__(
        self,
        driver_a: Any,
        driver_b: Any,
        endpoint_a: Endpoint = ("192.0.2.1", 51820),
        endpoint_b: Endpoint = ("192.0.2.2", 51820),
        *,
        loss: float = 0.0,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        seed: int | None = None,
        name: str = "wire",
    ) -> None:
        for label, p in (("loss", loss), ("reorder", reorder), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{label} must be a probability in [0, 1], got {p}")
        self.endpoint_a = _normalise(endpoint_a)
        self.endpoint_b = _normalise(endpoint_b)
        if self.endpoint_a == self.endpoint_b:
            raise ValueError(f"both ends of the wire have endpoint {endpoint_a}")
        self.loss = loss
        self.reorder = reorder
        self.duplicate = duplicate
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._drivers = (driver_a, driver_b)
        self.handle_a = driver_a.new_underlay_transport()
        self.handle_b = driver_b.new_underlay_transport()
        self.a_to_b = _Direction(self, f"{name}-a2b", self.handle_a, self.handle_b)
        self.b_to_a = _Direction(self, f"{name}-b2a", self.handle_b, self.handle_a)
        # Each direction's thread belongs to the driver whose output it drains, so that
        # driver's close() (which closes that output queue) also ends and joins it.
        self.a_to_b.thread = driver_a.spawn(self.a_to_b.name, self.a_to_b.run)
        self.b_to_a.thread = driver_b.spawn(self.b_to_a.name, self.b_to_a.run)
        # Each driver puts its datagrams on the wire itself (no hand-off to our thread).
        self.handle_a.send_inline(self.a_to_b.carry)
        self.handle_b.send_inline(self.b_to_a.carry)

    @property
    def id_a(self) -> int:
        """Underlay transport id of the wire on driver A."""
        return self.handle_a.id

    @property
    def id_b(self) -> int:
        return self.handle_b.id

    def _endpoints(self, d: _Direction) -> tuple[Endpoint, Endpoint]:
        with self._lock:
            if d is self.a_to_b:
                return self.endpoint_a, self.endpoint_b
            return self.endpoint_b, self.endpoint_a

    def move_b(self, endpoint: Endpoint) -> None:
        """B roams: its datagrams now come from ``endpoint``; those to the old one are lost."""
        endpoint = _normalise(endpoint)
        with self._lock:
            if endpoint == self.endpoint_a:
                raise ValueError(f"{endpoint} is A's endpoint")
            self.endpoint_b = endpoint

    def close(self, timeout: float = 5.0) -> None:
        """Stop both directions, unregister from both drivers, join the threads."""
        self._stop.set()
        driver_a, driver_b = self._drivers
        driver_a.remove_underlay_transport(self.handle_a.id)
        driver_b.remove_underlay_transport(self.handle_b.id)
        current = threading.current_thread()
        for d in (self.a_to_b, self.b_to_a):
            t = d.thread
            if t is not None and t is not current:
                t.join(timeout)
                if t.is_alive():
                    raise RuntimeError(f"{t.name} did not stop within {timeout}s")

    def __enter__(self) -> MemoryWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryOverlay:
    """An overlay transport driven by the caller (no thread): inject and collect packets."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self.handle = driver.new_overlay_transport()
        self.id: int = self.handle.id

    def send(self, packets: Any, **batch_args: int) -> bool:
        """Hand IP packets (a PacketBatch or bytes-likes) to the data plane."""
        if not isinstance(packets, PacketBatch):
            packets = PacketBatch.from_packets(list(packets), **batch_args)
        return self.handle.incoming.submit(packets)

    def receive(self, timeout: float | None = None) -> Any:
        """The next batch the data plane delivered, or None after ``timeout``."""
        try:
            return self.handle.outgoing.get(timeout)
        except QueueClosed:
            return None

    def collect(self, count: int, timeout: float = 2.0) -> list[bytes]:
        """Alive packets delivered, until ``count`` have arrived or ``timeout`` passed."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = self.receive(remaining)
            if batch is None:
                if self.handle.outgoing.closed:
                    break
                continue
            if isinstance(batch, PacketBatch):
                got += batch.packets(alive_only=True)
            else:
                got += [bytes(p) for p in batch]
        return got

    def close(self) -> None:
        self._driver.remove_overlay_transport(self.id)
