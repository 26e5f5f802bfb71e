# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Per-packet bookkeeping of the WireGuard device: classify, tally and mark batch slots.

Theory of operation: the device's Python code runs per batch and per handshake; the loops
over every slot of a batch live here, each in one ``nogil`` block that reads and writes only
the batch's length/offset/peer/status arrays and slab (the caller owns the batch for the
call). ``classify`` drops what is not a well-formed WireGuard message and returns the slots
holding handshake messages (types 1-3) for the control path; transport messages stay alive
for ``dataplane._crypto.ReceiveKey.open``. ``tally`` turns opened slots of one peer into
counters and marks empty plaintexts as keepalives; ``mark_unclaimed`` drops the transport
messages no session opened.
"""

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memset

from dataplane._batch cimport (
    PacketBatch, ST_OK, ST_TOO_SHORT, ST_BAD_TYPE, ST_KEEPALIVE, ST_TOO_BIG, ST_HANDSHAKE, ST_MAX,
)

cdef enum:
    INITIATION_SIZE = 148
    RESPONSE_SIZE = 92
    COOKIE_REPLY_SIZE = 64
    TRANSPORT_MIN_SIZE = 32
    TRANSPORT_OVERHEAD = 32   # header + tag around the (padded) plaintext


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | \
        (<uint32_t>p[3] << 24)


cdef inline uint8_t classify_one(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """ST_OK for a well-formed message (length checked before any field is read)."""
    cdef Py_ssize_t exact
    if n < 4:
        return ST_TOO_SHORT
    if p[1] | p[2] | p[3]:
        return ST_BAD_TYPE
    if p[0] == 4:
        return ST_OK if n >= TRANSPORT_MIN_SIZE else ST_TOO_SHORT
    if p[0] == 1:
        exact = INITIATION_SIZE
    elif p[0] == 2:
        exact = RESPONSE_SIZE
    elif p[0] == 3:
        exact = COOKIE_REPLY_SIZE
    else:
        return ST_BAD_TYPE
    if n < exact:
        return ST_TOO_SHORT
    if n > exact:
        return ST_TOO_BIG
    return ST_OK


cdef Py_ssize_t classify_c(PacketBatch batch) noexcept:
    """Drop malformed alive unclaimed slots; return how many transport messages remain."""
    cdef Py_ssize_t i, n = 0, count = batch.count
    cdef uint8_t st
    cdef const uint8_t* p
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] != ST_OK or batch.peers[i] != -1:
                continue
            p = batch.pkt_ptr(i)
            st = classify_one(p, batch.lengths[i])
            if st != ST_OK:
                batch.status[i] = st
            elif p[0] == 4:
                n += 1
    return n


cdef list handshake_slots(PacketBatch batch):
    """Indexes of the alive unclaimed slots holding handshake messages (after classify_c:
    every such slot is well formed, so its first byte is its type)."""
    cdef Py_ssize_t i
    out = []
    for i in range(batch.count):
        if batch.status[i] == ST_OK and batch.peers[i] == -1 and batch.pkt_ptr(i)[0] != 4:
            out.append(i)
    return out


def classify(PacketBatch batch not None):
    """Drop malformed alive slots; return the indexes of the handshake messages (types 1-3)."""
    classify_c(batch)
    return handshake_slots(batch)


def tally(PacketBatch batch not None, int32_t peer):
    """For the alive slots opened for ``peer``: mark empty ones ST_KEEPALIVE and return
    (data packets, keepalives, wire bytes, index of the last such slot or -1)."""
    cdef Py_ssize_t i, count = batch.count, last = -1
    cdef Py_ssize_t data = 0, keepalives = 0
    cdef uint64_t nbytes = 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] != ST_OK or batch.peers[i] != peer:
                continue
            last = i
            nbytes += batch.lengths[i] + TRANSPORT_OVERHEAD
            if batch.lengths[i] == 0:
                batch.status[i] = ST_KEEPALIVE
                keepalives += 1
            else:
                data += 1
    return data, keepalives, nbytes, last


def tally_sealed(PacketBatch batch not None):
    """(alive slots, their total length): what a sealed batch puts on the wire."""
    cdef Py_ssize_t i, count = batch.count, n = 0
    cdef uint64_t nbytes = 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] == ST_OK:
                n += 1
                nbytes += batch.lengths[i]
    return n, nbytes


def mark_unclaimed(PacketBatch batch not None, uint8_t status):
    """Give ``status`` to every alive slot no stage claimed (peer still -1); return how many."""
    cdef Py_ssize_t i, count = batch.count, n = 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] == ST_OK and batch.peers[i] == -1:
                batch.status[i] = status
                n += 1
    return n


def mark_receiver(PacketBatch batch not None, uint32_t receiver_index, uint8_t status):
    """Give ``status`` to the alive unclaimed transport slots for ``receiver_index``."""
    cdef Py_ssize_t i, count = batch.count, n = 0
    cdef const uint8_t* p
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] != ST_OK or batch.peers[i] != -1 or batch.lengths[i] < 8:
                continue
            p = batch.pkt_ptr(i)
            if p[0] == 4 and load_le32(p + 4) == receiver_index:
                batch.status[i] = status
                n += 1
    return n


def set_status_where(PacketBatch batch not None, uint8_t old, uint8_t new):
    """Replace status ``old`` by ``new`` on every slot; return how many."""
    cdef Py_ssize_t i, count = batch.count, n = 0
    with nogil(SHORT_SCAN_RELEASES_GIL):
        for i in range(count):
            if batch.status[i] == old:
                batch.status[i] = new
                n += 1
    return n


def status_snapshot(PacketBatch batch not None):
    """The slots' statuses as bytes, to compare with ``new_drops`` after a stage ran.

    Raises ``ValueError`` for a status outside the DropReason range, as
    ``PacketBatch.status_counts`` does."""
    cdef Py_ssize_t i, count = batch.count
    for i in range(count):
        if batch.status[i] >= ST_MAX:
            raise ValueError(f"a slot holds status {batch.status[i]}, outside 0..{ST_MAX - 1}")
    return PyBytes_FromStringAndSize(<const char*>&batch.status[0], count)


def new_drops(PacketBatch batch not None, bytes before not None):
    """[(status, n)] for each drop reason that ``n`` more slots hold now than in ``before``
    (a ``status_snapshot``); alive, keepalive and handshake slots are not drops."""
    cdef Py_ssize_t i, count = batch.count
    cdef Py_ssize_t b[256]
    cdef Py_ssize_t a[256]
    cdef Py_ssize_t st
    cdef const uint8_t* prev = <const uint8_t*><const char*>before
    if len(before) != count:
        raise ValueError("snapshot of a different batch")
    memset(b, 0, sizeof(b))
    memset(a, 0, sizeof(a))
    for i in range(count):
        b[prev[i]] += 1
        a[batch.status[i]] += 1
    for i in range(ST_MAX, 256):
        if a[i]:
            raise ValueError(f"a slot holds status {i}, outside 0..{ST_MAX - 1}")
    out = []
    for st in range(ST_MAX):
        if a[st] > b[st] and st != ST_OK and st != ST_KEEPALIVE and st != ST_HANDSHAKE:
            out.append((st, a[st] - b[st]))
    return out


def classify_batch(PacketBatch batch not None):
    """``status_snapshot`` then ``classify`` in one call: (snapshot, handshake slots, number
    of transport messages left alive for the sessions). With no transport message, the
    session stages have nothing to look at."""
    before = status_snapshot(batch)
    cdef Py_ssize_t transports = classify_c(batch)
    return before, handshake_slots(batch), transports
