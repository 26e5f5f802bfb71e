"""PacketBatch (dataplane._batch): construction, slots, metadata, errors, zero-copy views.

Includes regression tests for bugs found in review: size and bounds overflow, out-of-range
statuses, uninitialised instances, writable lengths and loosely typed endpoint ports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane._batch import (
    DEFAULT_CAPACITY,
    DEFAULT_HEADROOM,
    DEFAULT_MTU,
    DEFAULT_TAILROOM,
    STATUS_SLOTS,
    DropReason,
    PacketBatch,
)

PXD = Path(__file__).resolve().parent.parent / "dataplane" / "_batch.pxd"


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a crash there must not take pytest down."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PXD.parent.parent,
    )


# --- construction -------------------------------------------------------------------------


def test_defaults():
    b = PacketBatch()
    assert b.capacity == DEFAULT_CAPACITY == 128
    assert (b.headroom, b.tailroom) == (DEFAULT_HEADROOM, DEFAULT_TAILROOM)
    need = DEFAULT_HEADROOM + DEFAULT_MTU + DEFAULT_TAILROOM
    assert b.slot_size % 64 == 0 and need <= b.slot_size < need + 64
    assert b.max_packet == b.slot_size - b.headroom
    assert len(b) == 0 and b.room == b.capacity
    assert "0/128 slots" in repr(b)


def test_max_packet_admits_a_sealed_full_mtu_datagram():
    b = PacketBatch()
    sealed = 16 + 1424 + 16  # header + 1420 padded to 16 + tag
    assert b.max_packet >= sealed
    b.append(bytes(sealed))


@pytest.mark.parametrize(
    "mtu, headroom, tailroom, slot",
    [(1, 0, 0, 64), (64, 0, 0, 64), (65, 0, 0, 128), (10, 3, 1, 64)],
)
def test_slot_size_rounds_up_to_64(mtu, headroom, tailroom, slot):
    assert PacketBatch(2, mtu, headroom, tailroom).slot_size == slot


def test_explicit_slot_size():
    b = PacketBatch(capacity=2, mtu=10, headroom=3, tailroom=1, slot_size=14)
    assert b.slot_size == 14 and b.max_packet == 11
    with pytest.raises(ValueError, match="smaller than headroom"):
        PacketBatch(capacity=2, mtu=10, headroom=3, tailroom=1, slot_size=13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(capacity=0), "capacity must be positive"),
        (dict(capacity=-1), "capacity must be positive"),
        (dict(mtu=0), "mtu must be positive"),
        (dict(headroom=-1), "non-negative"),
        (dict(tailroom=-1), "non-negative"),
        (dict(slot_size=1 << 32), "batch too large"),
        (dict(capacity=1 << 40, mtu=1), "batch too large"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PacketBatch(**kwargs)


def test_huge_capacity_is_a_value_error():
    with pytest.raises(ValueError, match="batch too large"):
        PacketBatch(capacity=1 << 62, mtu=1)


# --- append / from_packets ----------------------------------------------------------------


def test_from_packets_copies_and_sizes_capacity():
    src = [bytearray(b"abc"), b"", memoryview(b"xyz!"), bytes(range(256))]
    b = PacketBatch.from_packets(src)
    assert b.capacity == len(src) == len(b) and b.room == 0
    src[0][0] = ord("Z")  # the batch holds copies
    assert b.packets() == [b"abc", b"", b"xyz!", bytes(range(256))]
    assert [b.offset(i) for i in range(len(b))] == [b.headroom] * len(b)
    empty = PacketBatch.from_packets(iter([]))
    assert empty.capacity == 1 and len(empty) == 0
    big = PacketBatch.from_packets([b"a"], capacity=8, headroom=4)
    assert big.capacity == 8 and big.headroom == 4 and big.offset(0) == 4


def test_append_returns_index_and_accepts_any_contiguous_buffer():
    b = PacketBatch(capacity=4)
    assert b.append(b"one") == 0
    assert b.append(array("I", [1, 2])) == 1  # cast to bytes, native order
    assert b.append(memoryview(b"abcdef")[2:4]) == 2
    assert b.packets() == [b"one", array("I", [1, 2]).tobytes(), b"cd"]
    with pytest.raises(TypeError):
        b.append(memoryview(b"abcdef")[::2])  # not contiguous
    with pytest.raises(TypeError):
        b.append("text")  # type: ignore[arg-type]
    assert len(b) == 3


def test_overflow_leaves_batch_intact():
    b = PacketBatch(capacity=2)
    b.extend([b"a", b"b"])
    with pytest.raises(ValueError, match="batch is full"):
        b.append(b"c")
    with pytest.raises(ValueError, match="batch is full"):
        PacketBatch.from_packets([b"a", b"b", b"c"], capacity=2)
    assert b.packets() == [b"a", b"b"] and b.room == 0


def test_too_big_packet():
    b = PacketBatch(capacity=3, mtu=100)
    b.append(bytes(b.max_packet))
    with pytest.raises(ValueError, match="does not fit a slot"):
        b.append(bytes(b.max_packet + 1))
    assert len(b) == 1
    with pytest.raises(ValueError, match="does not fit a slot"):
        b.set_packet(0, bytes(b.max_packet + 1))
    assert b.packets() == [bytes(b.max_packet)]


def test_packets_do_not_bleed_into_neighbours():
    b = PacketBatch(capacity=3, mtu=40)
    b.extend([b"\xaa" * b.max_packet, b"\xbb", b"\xcc" * b.max_packet])
    assert b.packets() == [b"\xaa" * b.max_packet, b"\xbb", b"\xcc" * b.max_packet]
    slot1 = bytes(b.slot(1))
    assert slot1[b.headroom] == 0xBB and len(slot1) == b.slot_size


# --- indexing -----------------------------------------------------------------------------

PER_SLOT = [
    ("getitem", lambda b, i: b[i]),
    ("slot", lambda b, i: b.slot(i)),
    ("offset", lambda b, i: b.offset(i)),
    ("set_bounds", lambda b, i: b.set_bounds(i, 0, 0)),
    ("set_packet", lambda b, i: b.set_packet(i, b"x")),
    ("peer", lambda b, i: b.peer(i)),
    ("set_peer", lambda b, i: b.set_peer(i, 1)),
    ("status_of", lambda b, i: b.status_of(i)),
    ("set_status", lambda b, i: b.set_status(i, 1)),
    ("endpoint", lambda b, i: b.endpoint(i)),
    ("set_endpoint", lambda b, i: b.set_endpoint(i, ("1.2.3.4", 5))),
]


@pytest.mark.parametrize("name, op", PER_SLOT, ids=[n for n, _ in PER_SLOT])
@pytest.mark.parametrize("index", [3, 4, 7, 100, -4, -100, 1 << 40])
def test_bad_index_raises_index_error(name, op, index):
    b = PacketBatch(capacity=8)  # slots 3..7 exist but hold no packet
    b.extend([b"a", b"b", b"c"])
    with pytest.raises(IndexError, match="out of range"):
        op(b, index)


def test_negative_index_counts_from_the_end():
    b = PacketBatch(capacity=8)
    b.extend([b"a", b"b", b"c"])
    assert (bytes(b[-1]), bytes(b[-3])) == (b"c", b"a")
    assert b.offset(-1) == b.offset(2) and bytes(b.slot(-1)) == bytes(b.slot(2))
    b.set_peer(-1, 9)
    b.set_status(-2, DropReason.REPLAY)
    b.set_endpoint(-3, ("192.0.2.9", 7))
    b.set_packet(-1, b"zz")
    b.set_bounds(-2, 0, 4)
    assert (b.peer(2), b.peer(-1), b.peer(0)) == (9, 9, -1)
    assert b.status_of(1) is DropReason.REPLAY and b.status_of(-2) is DropReason.REPLAY
    assert b.endpoint(0) == b.endpoint(-3) == ("192.0.2.9", 7)
    assert b.packets()[2] == b"zz" and b.offset(1) == 0


def test_empty_batch_has_no_index():
    with pytest.raises(IndexError):
        PacketBatch()[0]
    with pytest.raises(IndexError):
        PacketBatch()[-1]


# --- zero-copy views ----------------------------------------------------------------------


def test_getitem_is_a_writable_zero_copy_view():
    b = PacketBatch.from_packets([b"hello", b"world"])
    v = b[0]
    assert isinstance(v, memoryview) and not v.readonly and v.format == "B"
    v[0:1] = b"J"
    assert b.packets()[0] == b"Jello"
    assert bytes(b.slot(0)[b.headroom : b.headroom + 5]) == b"Jello"
    b.set_packet(0, b"HELLO")  # same slot memory: the old view sees the new bytes
    assert bytes(v) == b"HELLO"
    assert [bytes(p) for p in b] == [b"HELLO", b"world"]


def test_slot_view_spans_headroom_and_tailroom():
    b = PacketBatch.from_packets([b"abc"], mtu=16, headroom=8, tailroom=8)
    s = b.slot(0)
    assert len(s) == b.slot_size
    s[b.headroom - 2 : b.headroom] = b"\x01\x02"  # push a header in place
    b.set_bounds(0, b.headroom - 2, 5)
    assert bytes(b[0]) == b"\x01\x02abc"
    assert b.offset(0) == b.headroom - 2


def test_set_bounds_validation():
    b = PacketBatch.from_packets([b"abc"], mtu=16, headroom=8, tailroom=8)
    b.set_bounds(0, 0, b.slot_size)
    assert len(b[0]) == b.slot_size
    b.set_bounds(0, b.slot_size, 0)
    assert bytes(b[0]) == b""
    for off, length in [(-1, 1), (0, -1), (1, b.slot_size), (b.slot_size + 1, 0)]:
        with pytest.raises(ValueError, match="outside a slot"):
            b.set_bounds(0, off, length)
    assert b.offset(0) == b.slot_size  # the last good bounds stay


def test_set_bounds_rejects_overflowing_arguments():
    b = PacketBatch.from_packets([b"abc"])
    with pytest.raises(ValueError):
        b.set_bounds(0, (1 << 63) - 1, 1)
    assert b.offset(0) == b.headroom


def test_length_array_cannot_expose_the_next_slot():
    b = PacketBatch.from_packets([b"a", b"SECRET"], mtu=8, headroom=0, tailroom=0)
    try:
        b.length_array[0] = b.slot_size + 6
    except (TypeError, ValueError):
        return  # read-only view: fine
    try:
        view = b[0]
    except (IndexError, ValueError):
        return  # validated: fine
    assert b"SECRET" not in bytes(view)


# --- metadata -----------------------------------------------------------------------------


def test_peers():
    b = PacketBatch.from_packets([b"a", b"b", b"c"])
    assert [b.peer(i) for i in range(3)] == [-1, -1, -1]
    b.set_peer(1, 42)
    b.set_peer(-1, (1 << 31) - 1)
    assert list(b.peer_ids) == [-1, 42, (1 << 31) - 1]
    with pytest.raises(OverflowError):
        b.set_peer(0, 1 << 31)
    b.fill_peer(7)
    assert list(b.peer_ids) == [7, 7, 7]
    b.peer_ids[0] = 9  # writable view of the metadata array
    assert b.peer(0) == 9 and b.peer_ids.format == "i"


def test_statuses():
    b = PacketBatch.from_packets([b"a", b"b", b"c", b"d"])
    assert b.alive() == [0, 1, 2, 3] and b.status_of(0) is DropReason.OK
    b.set_status(1, DropReason.REPLAY)
    b.statuses[3] = DropReason.BAD_TAG
    assert b.status_of(1) is DropReason.REPLAY and b.status_of(3) is DropReason.BAD_TAG
    assert b.alive() == [0, 2]
    assert b.packets(alive_only=True) == [b"a", b"c"]
    counts = b.status_counts()
    assert len(counts) == STATUS_SLOTS
    assert counts[DropReason.OK] == 2 and counts[DropReason.REPLAY] == 1
    assert counts[DropReason.BAD_TAG] == 1 and sum(counts) == 4
    for bad in (-1, STATUS_SLOTS, 256):
        with pytest.raises(ValueError, match="out of range"):
            b.set_status(0, bad)
    assert b.status_of(0) is DropReason.OK


def test_status_counts_survives_an_out_of_range_status():
    r = run_isolated(
        """
        from dataplane._batch import PacketBatch
        b = PacketBatch.from_packets([b"x"] * 3)
        b.statuses[1] = 200
        try:
            b.status_counts()
        except ValueError:
            pass
        print("survived")
        """
    )
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-500:]


def test_every_settable_status_can_be_read_back():
    b = PacketBatch.from_packets([b"x"])
    for s in range(STATUS_SLOTS):
        try:
            b.set_status(0, s)
        except ValueError:
            continue
        assert b.status_of(0) == s


def test_drop_reasons_mirror_the_pxd_enum():
    declared = dict(re.findall(r"^\s+ST_([A-Z_]+) = (\d+)", PXD.read_text(), re.M))
    st_max = int(declared.pop("MAX"))
    assert {r.name: r.value for r in DropReason} == {k: int(v) for k, v in declared.items()}
    assert STATUS_SLOTS == st_max > max(DropReason)


# --- endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        ("192.0.2.1", 41641),
        ("0.0.0.0", 0),
        ("255.255.255.255", 65535),
        ("2001:db8::1", 41641),
        ("::", 1),
        ("fe80::1234:5678", 3478),
        ("ffff::", 65535),
    ],
)
def test_endpoint_round_trip(endpoint):
    b = PacketBatch.from_packets([b"a", b"b"])
    b.set_endpoint(1, endpoint)
    assert b.endpoint(1) == endpoint
    assert b.endpoint(0) == ("::", 0)  # untouched neighbour


def test_ipv4_is_stored_v4_mapped():
    b = PacketBatch.from_packets([b"a"])
    b.set_endpoint(0, ("::ffff:198.51.100.7", 9))
    assert b.endpoint(0) == ("198.51.100.7", 9)


def test_fill_endpoint():
    b = PacketBatch.from_packets([b"a", b"b", b"c"], capacity=5)
    b.fill_endpoint(("2001:db8::7", 5))
    assert [b.endpoint(i) for i in range(3)] == [("2001:db8::7", 5)] * 3
    b.fill_endpoint(("10.0.0.1", 6))
    assert [b.endpoint(i) for i in range(3)] == [("10.0.0.1", 6)] * 3


@pytest.mark.parametrize(
    "bad",
    [
        ("1.2.3.4", -1),
        ("1.2.3.4", 65536),
        ("1.2.3", 5),
        ("not an ip", 5),
        ("1.2.3.4",),
        ("1.2.3.4", 5, 6),
        "1.2.3.4:5",
        None,
    ],
)
def test_bad_endpoint(bad):
    b = PacketBatch.from_packets([b"a"])
    b.set_endpoint(0, ("1.1.1.1", 1))
    with pytest.raises(ValueError):
        b.set_endpoint(0, bad)
    with pytest.raises(ValueError):
        b.fill_endpoint(bad)
    assert b.endpoint(0) == ("1.1.1.1", 1)


@pytest.mark.parametrize("port", ["80", 80.5, True])
def test_endpoint_port_must_be_an_int(port):
    b = PacketBatch.from_packets([b"a"])
    with pytest.raises(ValueError):
        b.set_endpoint(0, ("1.2.3.4", port))


# --- clear and reuse ----------------------------------------------------------------------


def test_clear_and_reuse_resets_per_slot_metadata():
    b = PacketBatch(capacity=2, mtu=32)
    b.extend([b"first", b"second"])
    b.set_peer(0, 5)
    b.set_status(0, DropReason.REPLAY)
    b.set_endpoint(0, ("1.1.1.1", 1))
    b.set_bounds(1, 0, 3)
    view = b.slot(0)
    b.clear()
    assert len(b) == 0 and b.room == 2 and b.alive() == [] and b.packets() == []
    assert len(b.statuses) == len(b.peer_ids) == len(b.length_array) == 0
    with pytest.raises(IndexError):
        b[0]
    b.extend([b"x", b"yy"])
    assert b.packets() == [b"x", b"yy"]
    assert (b.peer(0), b.status_of(0), b.endpoint(0)) == (-1, DropReason.OK, ("::", 0))
    assert b.offset(1) == b.headroom
    # Same slab: a view taken before clear() sees the reused slot.
    assert bytes(view[b.headroom : b.headroom + 1]) == b"x"


def test_status_counts_only_count_used_slots():
    b = PacketBatch(capacity=4)
    b.extend([b"a", b"b", b"c"])
    b.set_status(2, DropReason.BAD_IP)
    b.clear()
    b.append(b"z")
    assert b.status_counts()[DropReason.OK] == 1 and sum(b.status_counts()) == 1


# --- uninitialised and copied batches -----------------------------------------------------


def test_uninitialised_batch_does_not_crash():
    r = run_isolated(
        """
        from dataplane._batch import PacketBatch
        b = PacketBatch.__new__(PacketBatch)
        for name in ("statuses", "peer_ids", "length_array"):
            try:
                getattr(b, name)
            except Exception:
                pass
        print("survived")
        """
    )
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-500:]


def test_batch_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(PacketBatch(capacity=1))


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.binary(max_size=200), max_size=20),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_round_trip_any_packets(packets, headroom, tailroom):
    b = PacketBatch(capacity=max(1, len(packets)), mtu=200, headroom=headroom, tailroom=tailroom)
    for p in packets:
        if len(p) <= b.max_packet:
            b.append(p)
    kept = [p for p in packets if len(p) <= b.max_packet]
    assert b.packets() == kept
    assert list(b.length_array) == [len(p) for p in kept]
    assert all(b.offset(i) == headroom for i in range(len(kept)))
    # Slots are disjoint: rewriting one packet in place changes only that packet.
    if kept and kept[0]:
        b[0][:] = bytes(len(kept[0]))
        assert b.packets() == [bytes(len(kept[0]))] + kept[1:]


def test_recycle_only_when_nobody_else_can_see_the_slab():
    # Results go through plain variables: pytest's assertion rewriting keeps temporaries
    # (a bound ``b.recycle`` is a reference to ``b``).
    b = PacketBatch(capacity=4)
    b.append(b"abc")
    view = b[0]
    kept_for_view = not b.recycle()
    del view
    other = b
    kept_for_reference = not b.recycle()
    del other
    queue = [b]
    kept_for_queue = not b.recycle()
    queue.clear()
    recycled = b.recycle()
    assert kept_for_view and kept_for_reference and kept_for_queue
    assert recycled and len(b) == 0
    b.append(b"again")
    assert b.packets() == [b"again"]
