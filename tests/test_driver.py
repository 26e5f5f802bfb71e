"""The threaded driver: the seed's wake-up rules, real-thread cadence, transports, queues."""

from __future__ import annotations

import threading
import time

import pytest

from dataplane.driver import (
    MAX_IDLE_SLEEP,
    ThreadedDataPlane,
    TransportFailed,
    next_wakeup,
)
from dataplane.queues import BatchQueue, QueueClosed
from dataplane.results import Output

# --- the seed's five wake-up tests, ported ----------------------------------------------


def test_no_scheduled_event_still_wakes_within_floor():
    now = 1000.0
    assert next_wakeup(None, now, MAX_IDLE_SLEEP) == now + MAX_IDLE_SLEEP


def test_near_event_is_honored_exactly():
    now = 1000.0
    soon = now + 0.050
    assert next_wakeup(soon, now, MAX_IDLE_SLEEP) == soon


def test_far_event_is_honored_not_clamped():
    now = 1000.0
    far = now + 3600
    assert next_wakeup(far, now, MAX_IDLE_SLEEP) == far


def test_keepalive_in_25s_sleeps_to_the_deadline_not_the_floor():
    now = 1000.0
    keepalive_due = now + 25
    woke = next_wakeup(keepalive_due, now, MAX_IDLE_SLEEP)
    assert woke == keepalive_due
    assert woke > now + MAX_IDLE_SLEEP


def test_idle_wakeup_is_coarse_and_never_busy_spins():
    assert MAX_IDLE_SLEEP > 0
    base = 1000.0
    for offset in (0.0, 0.001, 0.25, 5.0, 60.0):
        now = base + offset
        woke = next_wakeup(None, now, MAX_IDLE_SLEEP)
        assert woke > now
        assert woke == now + MAX_IDLE_SLEEP


# --- a scripted core -----------------------------------------------------------------------


class EchoCore:
    """Overlay batches go to underlay 0 at a fixed endpoint; underlay batches to overlay 0.

    ``deadlines`` is a list of pending timer instants; process_events pops the due ones.
    """

    ENDPOINT = ("192.0.2.1", 51820)

    def __init__(self) -> None:
        self.deadlines: list[float] = []
        self.fired: list[float] = []
        self.calls: list[str] = []
        self.out_underlay = 0
        self.out_overlay = 0

    def next_event(self) -> float | None:
        return min(self.deadlines) if self.deadlines else None

    def process_outbound(self, now, overlay_id, batch):
        self.calls.append("outbound")
        out = Output()
        out.send(self.out_underlay, self.ENDPOINT, batch)
        return out

    def process_inbound(self, now, underlay_id, batch):
        self.calls.append("inbound")
        out = Output()
        out.deliver(self.out_overlay, batch)
        return out

    def process_events(self, now):
        self.calls.append("events")
        due = [d for d in self.deadlines if d <= now]
        self.deadlines = [d for d in self.deadlines if d > now]
        self.fired += due
        return Output()


@pytest.fixture
def driver():
    core = EchoCore()
    d = ThreadedDataPlane(core, max_idle_sleep=0.3, queue_depth=8)
    yield d, core
    d.close()


# --- real-thread cadence -------------------------------------------------------------------


def test_step_sleeps_to_a_near_deadline(driver):
    d, core = driver
    t0 = time.monotonic()
    core.deadlines = [t0 + 0.08]
    assert d.step() == "event"
    elapsed = time.monotonic() - t0
    assert core.fired == core.fired[:1] and len(core.fired) == 1
    assert elapsed >= 0.08 - 0.002


def test_deadline_beyond_the_floor_is_not_cut_short(driver):
    d, core = driver  # floor is 0.3 s here
    t0 = time.monotonic()
    core.deadlines = [t0 + 0.6]
    assert d.step() == "event"
    assert time.monotonic() - t0 >= 0.6 - 0.002
    assert d.stats.idle_wakeups == 0 and len(core.fired) == 1


def test_idle_driver_wakes_on_the_floor_and_does_not_spin(driver):
    d, core = driver
    t0 = time.monotonic()
    kinds = []
    while time.monotonic() - t0 < 1.0:
        kinds.append(d.step())
    # 1 s with a 0.3 s floor: 3 or 4 wakeups, each an idle one, not thousands.
    assert 3 <= len(kinds) <= 5
    assert set(kinds) == {"idle"}
    assert core.calls == []


def test_input_wakes_a_sleeping_select_promptly(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    results = []
    t = threading.Thread(target=lambda: results.append(d.step()), name="stepper")
    t.start()
    time.sleep(0.05)
    ov.incoming.put([b"pkt"])
    t.join(2)
    assert results == ["overlay"]
    endpoint, batch = un.outgoing.get(timeout=1)
    assert endpoint == EchoCore.ENDPOINT and batch == [b"pkt"]


def test_transports_added_while_run_blocks(driver):
    d, core = driver
    d2 = ThreadedDataPlane(core, max_idle_sleep=30.0)  # far floor: only events wake it
    try:
        d2.start()
        time.sleep(0.05)  # run() is now blocked in SELECT with nothing to do
        un = d2.new_underlay_transport()
        ov = d2.new_overlay_transport()
        ov.incoming.put([b"a", b"b"])
        endpoint, batch = un.outgoing.get(timeout=2)
        assert batch == [b"a", b"b"]
        with d2.locked() as c:
            c.deadlines.append(time.monotonic() + 0.05)
        deadline = time.monotonic() + 2
        while not core.fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(core.fired) == 1  # the new deadline was picked up without waiting 30 s
    finally:
        d2.close()


def test_timers_fire_even_under_continuous_input(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    d.new_underlay_transport()
    core.deadlines = [time.monotonic() + 0.05]
    stop = time.monotonic() + 0.5
    while time.monotonic() < stop and not core.fired:
        ov.incoming.put([b"x"])
        d.step()
    assert len(core.fired) == 1


def test_directions_alternate(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    for _ in range(3):
        ov.incoming.put([b"o"])
        un.incoming.put([b"u"])
    for _ in range(6):
        d.step()
    assert core.calls in (
        ["outbound", "inbound"] * 3,
        ["inbound", "outbound"] * 3,
    )


# --- queues and failures -----------------------------------------------------------------


def test_output_for_a_removed_transport_is_dropped_and_counted(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    d.remove_underlay_transport(un.id)
    ov.incoming.put([b"1", b"2", b"3"])
    assert d.step() == "overlay"
    assert d.stats.dropped_no_transport_batches == 1
    assert d.stats.dropped_no_transport_packets == 3
    with pytest.raises(QueueClosed):
        un.outgoing.get(timeout=0.1)


def test_full_queues_drop_newest_and_count(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    accepted = [ov.incoming.put([b"p"] * 2) for _ in range(10)]
    assert accepted == [True] * 8 + [False] * 2
    assert d.input_dropped_packets == 4
    for _ in range(9):
        d.step()
    # The underlay output queue (depth 8) got 8 batches; nobody drained it.
    assert len(un.outgoing) == 8
    ov.incoming.put([b"late"])
    d.step()
    assert d.stats.dropped_queue_full_batches == 1
    assert d.stats.dropped_queue_full_packets == 1


def test_exception_in_a_transport_thread_surfaces(driver):
    d, core = driver

    def broken():
        raise OSError("socket exploded")

    d.start()
    d.spawn("broken-transport", broken)
    deadline = time.monotonic() + 2
    while not d.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(TransportFailed) as info:
        d.raise_if_failed()
    assert isinstance(info.value.__cause__, OSError)


def test_close_joins_every_thread_and_is_a_context_manager():
    core = EchoCore()
    with ThreadedDataPlane(core, max_idle_sleep=0.2) as d:
        ov = d.new_overlay_transport()
        stop = threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    ov.outgoing.get(timeout=0.05)
                except QueueClosed:
                    return

        d.spawn("overlay-reader", reader)
        names = {t.name for t in threading.enumerate()}
        assert {"dataplane-driver", "overlay-reader"} <= names
    assert not any(
        t.name in ("dataplane-driver", "overlay-reader") and t.is_alive()
        for t in threading.enumerate()
    )


def test_batch_queue_basics():
    q: BatchQueue[list[bytes]] = BatchQueue(2, "q")
    assert q.get(timeout=0.01) is None
    assert q.put([b"a"]) and q.put([b"b"]) and not q.put([b"c", b"d"])
    assert (q.dropped, q.dropped_packets) == (1, 2)
    assert q.get() == [b"a"]
    q.close()
    assert not q.put([b"e"])
    assert q.get() == [b"b"]
    with pytest.raises(QueueClosed):
        q.get()
    with pytest.raises(ValueError):
        BatchQueue(0)


def test_producer_can_wait_for_room_instead_of_dropping(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    d.new_underlay_transport()
    while ov.incoming.put([b"fill"]):
        pass
    assert ov.incoming.full() and d.input_dropped_packets == 1
    assert not ov.incoming.wait_for_room(timeout=0.05)  # nobody drains: times out
    waited = []
    t = threading.Thread(
        target=lambda: waited.append(ov.incoming.wait_for_room(timeout=5)), name="waiter"
    )
    t.start()
    time.sleep(0.05)
    d.step()  # the driver takes one batch: room for one more
    t.join(5)
    assert waited == [True] and not ov.incoming.full()
    assert ov.incoming.put([b"after"])


def test_inline_sink_receives_output_and_its_errors_are_counted(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    seen = []
    un.send_inline(lambda endpoint, batch: seen.append((endpoint, batch)))
    ov.incoming.put([b"a", b"b"])
    d.step()
    assert seen == [(EchoCore.ENDPOINT, [b"a", b"b"])] and len(un.outgoing) == 0

    def broken(endpoint, batch):
        raise OSError("wire cut")

    un.send_inline(broken)
    ov.incoming.put([b"c"])
    d.step()  # logged and counted, the driver goes on
    assert d.stats.dropped_sink_error_packets == 1
    un.send_inline(None)  # back to the queue
    ov.incoming.put([b"d"])
    d.step()
    assert un.outgoing.get(timeout=1) == (EchoCore.ENDPOINT, [b"d"])


# --- run to completion: transport threads running the UPDATE themselves ----------------------


def _wait_until(predicate, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


def test_submit_to_an_idle_running_driver_runs_on_the_callers_thread(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    threads = []
    un.send_inline(lambda endpoint, batch: threads.append(threading.current_thread().name))
    assert ov.incoming.submit([b"queued"])  # run() not looping yet: plain queueing
    assert len(d._from_overlay) == 1 and d.stats.inline_batches == 0
    d.start()
    assert _wait_until(lambda: len(threads) == 1)  # the driver thread took the queued one
    assert _wait_until(lambda: d._running)
    assert ov.incoming.submit([b"inline"])  # returns after the core has processed it
    assert threads == [f"{d.name}-driver", threading.current_thread().name]
    assert d.stats.inline_batches == 1 and d.stats.outbound_batches == 2


def test_submit_queues_behind_earlier_input_and_while_the_core_is_busy(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    order = []
    un.send_inline(lambda endpoint, batch: order.append(batch[0]))
    d.start()
    assert _wait_until(lambda: d._running)
    with d.locked():  # someone updates the core: submit must not wait for it, nor overtake
        assert ov.incoming.submit([b"1"])  # from the thread holding the lock: no re-entry
        other = threading.Thread(target=lambda: ov.incoming.submit([b"2"]), name="producer")
        other.start()
        other.join(2)
        assert not other.is_alive()
        assert order == []  # both wait (queued, or taken by SELECT) for the lock holder
    assert _wait_until(lambda: len(order) == 2)
    assert ov.incoming.submit([b"3"])
    assert _wait_until(lambda: len(order) == 3)
    assert order == [b"1", b"2", b"3"]
    assert d.stats.inline_batches == 1


def test_inline_update_that_moves_the_deadline_earlier_wakes_select(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    d.new_underlay_transport()
    d2 = ThreadedDataPlane(core, max_idle_sleep=30.0, name="far")
    try:
        ov2 = d2.new_overlay_transport()
        d2.new_underlay_transport()
        d2.start()
        assert _wait_until(lambda: d2._running)
        time.sleep(0.05)  # SELECT now sleeps towards the 30 s floor

        def outbound_with_timer(now, overlay_id, batch):
            core.deadlines.append(now + 0.05)  # e.g. a handshake retry armed by the send
            return Output()

        core.process_outbound = outbound_with_timer
        assert ov2.incoming.submit([b"x"]) and d2.stats.inline_batches == 1
        assert _wait_until(lambda: len(core.fired) == 1, timeout=1.0)  # not 30 s later
    finally:
        d2.close()
    assert ov is not None


def test_overlay_deliver_inline_and_its_errors_are_counted(driver):
    d, core = driver
    ov = d.new_overlay_transport()
    un = d.new_underlay_transport()
    got = []
    ov.deliver_inline(got.append)
    un.incoming.put([b"in"])
    d.step()
    assert got == [[b"in"]] and len(ov.outgoing) == 0

    def broken(batch):
        raise OSError("device gone")

    ov.deliver_inline(broken)
    un.incoming.put([b"p", b"q"])
    d.step()
    assert d.stats.dropped_sink_error_packets == 2
    ov.deliver_inline(None)
    un.incoming.put([b"r"])
    d.step()
    assert ov.outgoing.get(timeout=1) == [b"r"]


def test_two_drivers_feeding_each_other_inline_do_not_deadlock():
    # A's UPDATE submits to B, whose UPDATE submits back to A: A is busy, so that one is
    # queued, never re-entered (the core lock is reentrant) and never waited for.
    core_a, core_b = EchoCore(), EchoCore()
    a = ThreadedDataPlane(core_a, max_idle_sleep=30.0, name="a")
    b = ThreadedDataPlane(core_b, max_idle_sleep=30.0, name="b")
    try:
        a_ov, a_un = a.new_overlay_transport(), a.new_underlay_transport()
        b_ov, b_un = b.new_overlay_transport(), b.new_underlay_transport()
        a_un.send_inline(lambda endpoint, batch: b_un.incoming.submit(batch))
        b_ov.deliver_inline(lambda batch: b_ov.incoming.submit(batch))  # echo back out
        b_un.send_inline(lambda endpoint, batch: a_un.incoming.submit(batch))
        a.start()
        b.start()
        assert _wait_until(lambda: a._running and b._running)
        time.sleep(0.05)  # both asleep in SELECT (30 s floor, no timers)
        assert a_ov.incoming.submit([b"ping"])
        assert a_ov.outgoing.get(timeout=2) == [b"ping"]
        assert core_a.calls == ["outbound", "inbound"]
        assert core_b.calls == ["inbound", "outbound"]
        # B, busy with the inbound batch, queued its own echo and its driver thread took
        # it; A was idle both times, so both of A's batches ran on the submitting threads.
        assert a.stats.inline_batches == 2 and a.stats.steps == 0
        assert b.stats.inline_batches == 1 and b.stats.steps == 1
    finally:
        a.close()
        b.close()
