"""ThreadedDataPlane: the two-phase SELECT/UPDATE driver around the synchronous core.

Theory of operation (the seed's async driver, with threads):

* SELECT waits on one ``threading.Condition`` for the first of: a batch from an overlay
  transport, a batch from an underlay transport, a change of transports or configuration,
  or the core's next timer deadline. It never holds the core lock, so callers can add
  transports or update the core at any time without waiting for traffic or a timer. With
  no deadline it still wakes after ``MAX_IDLE_SLEEP`` (5 s) and never sooner: no busy spin.
* UPDATE takes the core lock, hands the one input to the core (``process_outbound`` /
  ``process_inbound`` / ``process_events``), also runs due timers so a flood of input
  cannot starve them, and writes the outputs to the per-transport output queues.

Locks: ``_cond`` (its own lock) guards the input queues and the wake flags; ``_core_lock``
guards the core and the transport tables. Neither is held while waiting for the other's
holder to do I/O, and transports take ``_core_lock`` only through ``submit``, which never
waits for it (see "run to completion"). All queues are bounded and
drop (tail drop) rather than block; every drop is counted. Overlay and underlay inputs are
served alternately so neither direction starves the other.

Run to completion: while ``run()`` is looping and the driver is idle (no queued input, no
UPDATE in progress), a transport thread that calls ``InputPort.submit`` runs the UPDATE for
its batch itself, under the same core lock, instead of queueing it and waking the driver
thread: one thread hand-off (a futex wake and a GIL hand-over, tens of microseconds on a
VM) less per batch. It never waits for the core lock (a held lock means someone else is
updating: the batch is queued as before), so FIFO order per transport holds: a transport
whose earlier batch is still queued or in flight always queues. If the inline UPDATE moved
the next timer deadline earlier than the one SELECT sleeps towards, the driver is woken.
Overlay transports can likewise take their deliveries inline (``deliver_inline``), as
underlay transports take their datagrams (``send_inline``).

The TUN and UDP transports of ``dataplane up`` go further: bursts of established sessions
never reach the driver (``transport/_express.pyx`` carries them in C); the driver sees
what that path declines, and an empty batch now and then, whose UPDATE is the core's
bookkeeping of what the path did (``transport/bookkeeping.py``).

Threads: ``start()`` runs ``run()`` on a named thread; ``spawn()`` runs a transport's loop
on a named thread owned by the driver. ``close()`` stops and joins them all. An exception
in any of them is logged, recorded in ``errors`` and re-raised by ``raise_if_failed()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from dataplane.queues import DEFAULT_DEPTH, BatchQueue, packets_in
from dataplane.results import Endpoint, Output

log = logging.getLogger(__name__)

MAX_IDLE_SLEEP = 5.0
"""Longest SELECT wait when the core has no timer scheduled (seconds).

A real deadline is always slept to exactly, however far; this floor only guarantees that a
driver with nothing scheduled still re-checks the core now and then instead of blocking
forever on I/O."""


def next_wakeup(
    deadline: float | None, now: float, max_idle_sleep: float = MAX_IDLE_SLEEP
) -> float:
    """When SELECT should give up waiting for input: the deadline itself, or the idle floor."""
    if deadline is not None:
        return deadline
    return now + max_idle_sleep


class Core(Protocol):
    """What the driver needs of the synchronous core (``dataplane.core.DataPlane``)."""

    def next_event(self) -> float | None: ...
    def process_outbound(self, now: float, overlay_id: int, batch: Any) -> Output: ...
    def process_inbound(self, now: float, underlay_id: int, batch: Any) -> Output: ...
    def process_events(self, now: float) -> Output: ...


class TransportFailed(RuntimeError):
    """A thread owned by the driver (the driver loop or a transport) raised."""


@dataclass
class InputPort:
    """The end of the driver's input queue that one transport writes to."""

    transport_id: int
    _queue: BatchQueue[tuple[int, Any]]
    _driver: Any = field(default=None, repr=False)
    _kind: str = "overlay"

    def put(self, batch: Any) -> bool:
        """Queue a batch for the driver; False (and counted) if the input queue is full."""
        return self._queue.put((self.transport_id, batch))

    def submit(self, batch: Any) -> bool:
        """Process ``batch`` now on this thread if the running driver is idle, else ``put``
        it. Never waits for the core; True if processed or queued. For transport threads
        that would otherwise only hand the batch over (see "run to completion")."""
        if self._driver is not None and self._driver._update_inline(
            self._kind, self.transport_id, batch
        ):
            return True
        return self._queue.put((self.transport_id, batch))

    def full(self) -> bool:
        """Whether ``put`` would be refused right now."""
        return self._queue.full()

    def wait_below(self, depth: int, timeout: float | None = None) -> bool:
        """Wait until fewer than ``depth`` batches are queued; False after ``timeout``."""
        return self._queue.wait_below(depth, timeout)

    def pending(self) -> int:
        """Batches queued for the driver (from every transport sharing the queue)."""
        return len(self._queue)

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Wait until ``put`` would be accepted; False after ``timeout`` seconds."""
        return self._queue.wait_for_room(timeout)


@dataclass
class UnderlayHandle:
    """What an underlay transport gets: its id, the datagrams to send, where to put received.

    ``outgoing`` yields ``(endpoint, batch)`` items; ``incoming.put(batch)`` takes batches of
    received datagrams whose per-slot endpoints are set.
    """

    id: int
    outgoing: BatchQueue[tuple[Endpoint, Any]]
    incoming: InputPort
    _driver: Any = field(default=None, repr=False)

    def send_inline(self, sink: Callable[[Endpoint, Any], None] | None) -> None:
        """Have the driver hand each outgoing batch to ``sink(endpoint, batch)`` itself, in
        its UPDATE phase, instead of queueing it on ``outgoing``: one thread hand-off less
        per batch. ``sink`` must not block for long (a non-blocking send) and should not
        raise; if it does, the error is logged and the batch counted as dropped. None goes
        back to queueing."""
        self._driver._set_sink(self.id, sink)


@dataclass
class OverlayHandle:
    """What an overlay transport gets: its id, packets to deliver, where to put its packets."""

    id: int
    outgoing: BatchQueue[Any]
    incoming: InputPort
    _driver: Any = field(default=None, repr=False)

    def deliver_inline(self, sink: Callable[[Any], None] | None) -> None:
        """Have the driver hand each batch for this transport to ``sink(batch)`` in its
        UPDATE phase instead of queueing it on ``outgoing`` (same rules as
        ``UnderlayHandle.send_inline``). None goes back to queueing."""
        self._driver._set_overlay_sink(self.id, sink)


@dataclass
class DriverStats:
    steps: int = 0
    outbound_batches: int = 0
    inbound_batches: int = 0
    event_rounds: int = 0
    idle_wakeups: int = 0
    # Batches a transport thread processed itself (run to completion), of the totals above.
    inline_batches: int = 0
    # Outputs for transports that no longer exist, and outputs refused by full queues.
    dropped_no_transport_batches: int = 0
    dropped_no_transport_packets: int = 0
    dropped_queue_full_batches: int = 0
    dropped_queue_full_packets: int = 0
    dropped_sink_error_packets: int = 0


class ThreadedDataPlane:
    """Drive a synchronous core with threads; see the module docstring."""

    def __init__(
        self,
        core: Core,
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_depth: int = DEFAULT_DEPTH,
        max_idle_sleep: float = MAX_IDLE_SLEEP,
        name: str = "dataplane",
        run_to_completion: bool = True,
    ) -> None:
        if max_idle_sleep <= 0:
            raise ValueError("max_idle_sleep must be positive (else the driver would spin)")
        self.name = name
        self._core = core
        self._clock = clock
        self._queue_depth = queue_depth
        self._max_idle_sleep = max_idle_sleep

        self._cond = threading.Condition()
        self._from_overlay: BatchQueue[tuple[int, Any]] = BatchQueue(
            queue_depth, f"{name}-from-overlay", self._cond
        )
        self._from_underlay: BatchQueue[tuple[int, Any]] = BatchQueue(
            queue_depth, f"{name}-from-underlay", self._cond
        )
        self._changed = False
        self._stopping = False
        self._prefer_underlay = False
        # Guarded by _cond: run() is looping; an UPDATE is claimed (by the driver or by a
        # transport thread); the deadline SELECT currently sleeps towards.
        self._run_to_completion = run_to_completion
        self._running = False
        self._updating = False
        self._select_until = float("inf")

        self._core_lock = threading.RLock()
        self._overlays: dict[int, BatchQueue[Any]] = {}
        self._underlays: dict[int, BatchQueue[tuple[Endpoint, Any]]] = {}
        self._sinks: dict[int, Callable[[Endpoint, Any], None]] = {}
        self._overlay_sinks: dict[int, Callable[[Any], None]] = {}
        self._next_overlay = 0
        self._next_underlay = 0

        self.disco: BatchQueue[tuple[int, Endpoint, bytes]] = BatchQueue(
            queue_depth, f"{name}-disco"
        )
        self.stun: BatchQueue[tuple[int, Endpoint, bytes]] = BatchQueue(queue_depth, f"{name}-stun")
        self.stats = DriverStats()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._runner: threading.Thread | None = None

    # -- transports ---------------------------------------------------------------------

    def new_underlay_transport(self) -> UnderlayHandle:
        """Register an underlay transport; safe at any time, also while ``run()`` waits."""
        with self._core_lock:
            tid = self._next_underlay
            self._next_underlay += 1
            out: BatchQueue[tuple[Endpoint, Any]] = BatchQueue(
                self._queue_depth, f"{self.name}-underlay-{tid}"
            )
            self._underlays[tid] = out
        self._wake()
        return UnderlayHandle(tid, out, InputPort(tid, self._from_underlay, self, "underlay"), self)

    def _set_sink(self, tid: int, sink: Callable[[Endpoint, Any], None] | None) -> None:
        with self._core_lock:
            if sink is None:
                self._sinks.pop(tid, None)
            elif tid in self._underlays:
                self._sinks[tid] = sink

    def _set_overlay_sink(self, tid: int, sink: Callable[[Any], None] | None) -> None:
        with self._core_lock:
            if sink is None:
                self._overlay_sinks.pop(tid, None)
            elif tid in self._overlays:
                self._overlay_sinks[tid] = sink

    def new_overlay_transport(self) -> OverlayHandle:
        """Register an overlay transport; safe at any time, also while ``run()`` waits."""
        with self._core_lock:
            tid = self._next_overlay
            self._next_overlay += 1
            out: BatchQueue[Any] = BatchQueue(self._queue_depth, f"{self.name}-overlay-{tid}")
            self._overlays[tid] = out
        self._wake()
        return OverlayHandle(tid, out, InputPort(tid, self._from_overlay, self, "overlay"), self)

    def remove_underlay_transport(self, tid: int) -> None:
        """Forget an underlay transport; later output for it is dropped and counted."""
        with self._core_lock:
            q = self._underlays.pop(tid, None)
            self._sinks.pop(tid, None)
        if q is not None:
            q.close()
        self._wake()

    def remove_overlay_transport(self, tid: int) -> None:
        """Forget an overlay transport; later output for it is dropped and counted."""
        with self._core_lock:
            q = self._overlays.pop(tid, None)
            self._overlay_sinks.pop(tid, None)
        if q is not None:
            q.close()
        self._wake()

    # -- core access ----------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[Any]:
        """The core, locked, for table and peer updates; wakes a waiting SELECT after."""
        with self._core_lock:
            yield self._core
        self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    # -- the two-phase step ---------------------------------------------------------------

    def step(self) -> str:
        """One SELECT/UPDATE round; returns what woke it: overlay, underlay, changed, event,
        idle or stopped."""
        # A change signalled from here on must interrupt this SELECT; one signalled before is
        # already reflected in the deadline read below. Until SELECT has its deadline, any
        # inline UPDATE counts as a change (it may have moved the deadline).
        with self._cond:
            self._changed = False
            self._select_until = float("-inf")
        with self._core_lock:
            deadline = self._core.next_event()
        now = self._clock()
        wake_at = next_wakeup(deadline, now, self._max_idle_sleep)

        # SELECT: the core is not locked here.
        with self._cond:
            self._select_until = wake_at
            while True:
                if self._stopping:
                    return "stopped"
                # While a transport thread runs an UPDATE, queued input waits for it (FIFO).
                item, kind = (None, "") if self._updating else self._pick_input()
                if item is not None:
                    self._updating = True
                    break
                if self._changed:
                    self._changed = False
                    return "changed"
                remaining = wake_at - self._clock()
                if remaining <= 0:
                    kind = "event" if deadline is not None else "idle"
                    break
                self._cond.wait(remaining)
            self._select_until = float("inf")

        # UPDATE: the core is locked, one input is processed, outputs are written.
        try:
            with self._core_lock:
                self.stats.steps += 1
                self._update(kind, item)
        finally:
            if item is not None:
                with self._cond:
                    self._updating = False
        return kind

    def _update(self, kind: str, item: tuple[int, Any] | None) -> None:
        # Called with _core_lock held: hand the input to the core, run due timers, write.
        now = self._clock()
        st = self.stats
        if kind == "overlay":
            assert item is not None
            st.outbound_batches += 1
            out = self._core.process_outbound(now, item[0], item[1])
        elif kind == "underlay":
            assert item is not None
            st.inbound_batches += 1
            out = self._core.process_inbound(now, item[0], item[1])
        else:
            out = Output()
            if kind == "idle":
                st.idle_wakeups += 1
        due = self._core.next_event()
        if due is not None and due <= now:
            st.event_rounds += 1
            out.merge(self._core.process_events(now))
        self._write(out)

    def _update_inline(self, kind: str, tid: int, batch: Any) -> bool:
        """Run the UPDATE for one input on the calling thread if nothing else is queued or
        being processed and the core is free right now; False means "queue it"."""
        if not self._run_to_completion:
            return False
        with self._cond:
            if (
                not self._running
                or self._stopping
                or self._updating
                or len(self._from_overlay)
                or len(self._from_underlay)
            ):
                return False
            self._updating = True
        due: float | None = None
        try:
            # Held by this very thread (inside ``locked()`` or an UPDATE that fed us): the
            # RLock would let us in, but an UPDATE must not run inside another one.
            if self._core_lock._is_owned() or not self._core_lock.acquire(blocking=False):  # type: ignore[attr-defined]
                return False
            try:
                self.stats.inline_batches += 1
                self._update(kind, (tid, batch))
                due = self._core.next_event()
            finally:
                self._core_lock.release()
            return True
        finally:
            with self._cond:
                self._updating = False
                moved = due is not None and due < self._select_until
                if moved:
                    self._changed = True
                if moved or len(self._from_overlay) or len(self._from_underlay):
                    self._cond.notify_all()

    def _pick_input(self) -> tuple[tuple[int, Any] | None, str]:
        # Called with _cond held. Alternate directions when both have input.
        order = (
            (self._from_underlay, "underlay"),
            (self._from_overlay, "overlay"),
        )
        if not self._prefer_underlay:
            order = order[::-1]
        for q, kind in order:
            item = q._pop_locked()
            if item is not None:
                self._prefer_underlay = kind == "overlay"
                return item, kind
        return None, ""

    def _write(self, out: Output) -> None:
        # Called with _core_lock held; never blocks (queues tail-drop).
        st = self.stats
        for (tid, endpoint), batches in out.to_underlay.items():
            uq = self._underlays.get(tid)
            sink = self._sinks.get(tid)
            for batch in batches:
                if sink is not None:
                    try:
                        sink(endpoint, batch)
                    except Exception:
                        log.exception("underlay %d failed to send a batch inline", tid)
                        st.dropped_sink_error_packets += packets_in(batch)
                elif uq is None:
                    st.dropped_no_transport_batches += 1
                    st.dropped_no_transport_packets += packets_in(batch)
                elif not uq.put((endpoint, batch)):
                    st.dropped_queue_full_batches += 1
                    st.dropped_queue_full_packets += packets_in(batch)
        for oid, batches in out.to_overlay.items():
            oq = self._overlays.get(oid)
            deliver = self._overlay_sinks.get(oid)
            for batch in batches:
                if deliver is not None:
                    try:
                        deliver(batch)
                    except Exception:
                        log.exception("overlay %d failed to take a batch inline", oid)
                        st.dropped_sink_error_packets += packets_in(batch)
                elif oq is None:
                    st.dropped_no_transport_batches += 1
                    st.dropped_no_transport_packets += packets_in(batch)
                elif not oq.put(batch):
                    st.dropped_queue_full_batches += 1
                    st.dropped_queue_full_packets += packets_in(batch)
        for item in out.disco:
            self.disco.put(item)
        for item in out.stun:
            self.stun.put(item)

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Step until ``close()``; transport threads may run UPDATEs meanwhile."""
        with self._cond:
            self._running = True
        try:
            while self.step() != "stopped":
                pass
        finally:
            with self._cond:
                self._running = False

    def start(self) -> ThreadedDataPlane:
        """Run the driver loop on a named background thread."""
        if self._runner is not None:
            raise RuntimeError("driver already started")
        self._runner = self.spawn(f"{self.name}-driver", self.run)
        return self

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Run ``target`` on a named thread that ``close()`` joins; exceptions are recorded."""

        def guarded() -> None:
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - recorded and surfaced to the owner
                log.exception("thread %s failed", name)
                self.errors.append(e)
                with self._cond:
                    self._stopping = True
                    self._cond.notify_all()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def raise_if_failed(self) -> None:
        if self.errors:
            raise TransportFailed(f"{len(self.errors)} driver thread(s) failed") from self.errors[0]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, close every queue, join every thread (each within ``timeout``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with self._core_lock:
            queues = [*self._underlays.values(), *self._overlays.values()]
        for q in (*queues, self._from_overlay, self._from_underlay, self.disco, self.stun):
            q.close()
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive() and t is not current]
        if alive:
            log.error("threads still alive after close: %s", alive)
            raise RuntimeError(f"threads did not stop within {timeout}s: {alive}")

    def __enter__(self) -> ThreadedDataPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def input_dropped_packets(self) -> int:
        """Packets refused because the driver's input queues were full."""
        return self._from_overlay.dropped_packets + self._from_underlay.dropped_packets
