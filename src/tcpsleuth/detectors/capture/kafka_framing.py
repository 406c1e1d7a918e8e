"""The Kafka wire format as a capture shows it, and the compiled loop that follows it.

Every Kafka request and response starts with a 4-byte big-endian size; a request
header goes on with api_key (int16), api_version (int16) and correlation_id (int32),
a response header with correlation_id (kafka.apache.org/protocol). :func:`follow`
walks each direction's byte stream through sequence numbers, so headers split across
segments, several requests in one segment and segments cut short by a snap length
are all handled; only the header bytes must have been captured. Which headers are
accepted as Kafka is said in :mod:`.kafka`.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.model.capture import SYN

MAX_MESSAGE = 1 << 30  # a larger response size means we are not at a message boundary
MIN_REQUEST = 8  # api_key, api_version, correlation_id
MAX_REQUEST = 100 << 20  # the broker's default socket.request.max.bytes
# Highest version Apache Kafka defines for each api key 0..92 (the schemas of kio
# 0.6.5, i.e. Kafka 4.x, plus keys 4..7 with their last versions before Kafka 4.0
# removed them). A version up to VERSION_HEADROOM above is still accepted: a newer
# client or broker than this table.
_MAX_VERSIONS = (
    "13 18 11 13 7 4 8 3 10 10 "  # 0..9
    "6 9 4 5 5 6 5 1 4 7 "  # 10..19
    "6 2 6 4 5 4 5 2 5 3 "  # 20..29
    "3 3 4 2 2 5 2 3 3 2 "  # 30..39
    "2 3 2 2 1 1 0 0 1 1 "  # 40..49
    "0 0 2 1 1 2 3 2 0 1 "  # 50..59
    "2 0 4 2 0 0 2 0 1 1 "  # 60..69
    "0 0 0 0 1 0 1 1 2 2 "  # 70..79
    "1 0 0 0 0 1 0 1 0 0 "  # 80..89
    "1 0 0"  # 90..92
)
API_MAX_VERSION = np.array(_MAX_VERSIONS.split(), dtype=np.int64)
VERSION_HEADROOM = 4
ID_CAP = 64  # bytes of a client.id kept (a -s 128 capture keeps at most ~48)
# What a connection (or one direction of it) was judged to carry
UNDECIDED, KAFKA, NOT_KAFKA, TLS = 0, 1, 2, 3
VERDICT_NAMES = ("undecided", "kafka", "not_kafka", "tls")

# Per direction of a connection (``state[c, d, field]``): where the next message
# starts (relative sequence number; -1: at the first data segment, -2: direction
# not seen yet), one past the highest byte seen, header bytes collected so far and
# the frame and time of the first of them, the message still waiting for its last
# byte (-1: none), whether decoding stopped (we lost our place, or it is not
# Kafka), the verdict on the direction (UNDECIDED, KAFKA, NOT_KAFKA, TLS) and
# whether it was seen from its SYN.
S_NEXT, S_HIGH, S_PARTIAL, S_FRAME, S_TS, S_PENDING, S_DEAD, S_KIND, S_FROM_SYN = range(9)
STATE_FIELDS = 9
STATE_INITIAL = np.array([-2, 0, 0, 0, 0, -1, 0, UNDECIDED, 0], dtype=np.int64)
# Per connection (``idstate[c, field]``), its client.id: where its bytes are kept in
# ``ids`` (-1: nowhere), its length field (-2: not read yet, -1: null), how many
# bytes were kept and the stream position of the next one (-1: no more to collect).
I_AT, I_LEN, I_HAVE, I_POS = range(4)
ID_FIELDS = 4
ID_INITIAL = np.array([-1, -2, 0, -1], dtype=np.int64)
# Message columns (``messages[m, field]``)
(
    M_CONN,
    M_REQUEST,
    M_SIZE,
    M_API_KEY,
    M_API_VERSION,
    M_CORRELATION,
    M_FRAME,
    M_TS,
    M_END,
    M_LAST_FRAME,
    M_LAST_TS,
) = range(11)
MESSAGE_FIELDS = 11
_HEADER = 14  # header bytes read: a request's up to its client_id length (a response's: 8)


@njit(cache=True, nogil=True)
def _int32(partial, at):  # type: ignore[no-untyped-def]
    value = (
        (np.int64(partial[at]) << 24)
        | (np.int64(partial[at + 1]) << 16)
        | (np.int64(partial[at + 2]) << 8)
        | np.int64(partial[at + 3])
    )
    return value - (1 << 32) if value >= (1 << 31) else value


@njit(cache=True, nogil=True)
def _int16(partial, at):  # type: ignore[no-untyped-def]
    value = (np.int64(partial[at]) << 8) | np.int64(partial[at + 1])
    return value - (1 << 16) if value >= (1 << 15) else value


@njit(cache=True, nogil=True)
def _request_ok(header, size):  # type: ignore[no-untyped-def]
    """Whether a request header (its first 14 bytes, size field included) is one
    Kafka defines: see the module's docstring."""
    if size < MIN_REQUEST or size > MAX_REQUEST:
        return False
    key = (np.int64(header[4]) << 8) | np.int64(header[5])
    version = (np.int64(header[6]) << 8) | np.int64(header[7])
    if key >= len(API_MAX_VERSION) or version > API_MAX_VERSION[key] + VERSION_HEADROOM:
        return False
    if key == 7 and version == 0:
        return True  # request header v0 (ControlledShutdown v0) has no client_id
    id_len = _int16(header, 12)
    return id_len >= -1 and 10 + max(id_len, 0) <= size


@njit(cache=True, nogil=True)
def _tls(header):  # type: ignore[no-untyped-def]
    """Whether the bytes start a TLS record (content type 20..23, version 3.0..3.4)."""
    return 0x14 <= header[0] <= 0x17 and header[1] == 3 and header[2] <= 4


@njit(cache=True, nogil=True)
def _collect_id(ist, ids, data, base, rel, length, captured):  # type: ignore[no-untyped-def]
    """Keep the bytes of the client.id ``ist`` still waits for that this segment
    (stream position ``rel``, ``length`` bytes, the ``captured`` first ones at
    ``data[base:]``) holds; stop where the capture lacks them or cut them off."""
    pos = ist[I_POS]
    if pos >= rel + length:
        return  # in a later segment
    at = pos - rel
    if at < 0 or at >= captured:
        ist[I_POS] = -1
        return
    want = min(ist[I_LEN], ID_CAP)
    take = min(want - ist[I_HAVE], captured - at)
    out = ist[I_AT] + ist[I_HAVE]
    for k in range(take):
        ids[out + k] = data[base + at + k]
    ist[I_HAVE] += take
    ist[I_POS] = pos + take if ist[I_HAVE] < want else -1


@njit(cache=True, nogil=True)
def _header_ok(st, head, size, request):  # type: ignore[no-untyped-def]
    """Whether a whole header is one Kafka would send; the direction's first header
    decides what the stream is (``st[S_KIND]``)."""
    ok = _request_ok(head, size) if request else 4 <= size <= MAX_MESSAGE
    if st[S_KIND] == UNDECIDED:
        if _tls(head):
            st[S_KIND] = TLS
            ok = False
        elif ok:
            st[S_KIND] = KAFKA
        elif st[S_FROM_SYN]:
            # at the stream's first byte: not a Kafka message (mid-stream,
            # we may merely not be at a message boundary)
            st[S_KIND] = NOT_KAFKA
    return ok


@njit(cache=True, nogil=True)
def _message(messages, m, c, request, head, size, st):  # type: ignore[no-untyped-def]
    """Row ``m`` of ``messages``: the message whose header ``head`` holds, starting at
    the stream position ``st[S_NEXT]``; its last segment not yet known (-1)."""
    messages[m, M_CONN] = c
    messages[m, M_REQUEST] = 1 if request else 0
    messages[m, M_SIZE] = size
    if request:
        messages[m, M_API_KEY] = (np.int64(head[4]) << 8) | head[5]
        messages[m, M_API_VERSION] = (np.int64(head[6]) << 8) | head[7]
        messages[m, M_CORRELATION] = _int32(head, 8)
    else:
        messages[m, M_API_KEY] = -1
        messages[m, M_API_VERSION] = -1
        messages[m, M_CORRELATION] = _int32(head, 4)
    messages[m, M_FRAME] = st[S_FRAME]
    messages[m, M_TS] = st[S_TS]
    messages[m, M_END] = st[S_NEXT] + 4 + size
    messages[m, M_LAST_FRAME] = -1
    messages[m, M_LAST_TS] = -1


@njit(cache=True, nogil=True)
def _start_id(ist, ids, count, head, at, data, base, rel, length, captured):  # type: ignore[no-untyped-def]
    """The connection's first request that has a client.id (not ControlledShutdown
    v0): its length read, room taken in ``ids``, the bytes this segment holds kept."""
    key = (np.int64(head[4]) << 8) | head[5]
    version = (np.int64(head[6]) << 8) | head[7]
    if key == 7 and version == 0:
        return
    id_len = _int16(head, 12)
    ist[I_LEN] = id_len
    if id_len >= 0:
        ist[I_AT] = count[1]
        count[1] += min(id_len, ID_CAP)
        ist[I_HAVE] = 0
        ist[I_POS] = at + _HEADER if id_len > 0 else -1
        if id_len > 0:
            _collect_id(ist, ids, data, base, rel, length, captured)


@njit(cache=True, nogil=True)
def follow(  # type: ignore[no-untyped-def]
    start,
    conn,
    direction,
    rel_seq,
    flags,
    paylen,
    frame,
    ts_ns,
    payload_at,
    payload_cap,
    data,
    client_dir,
    state,
    partial,
    messages,
    idstate,
    ids,
    count,
):
    """Split the byte streams of watched connections (``client_dir`` >= 0: the
    client's direction) into messages, from segment ``start`` of the chunk on.

    Retransmitted bytes are skipped; a gap in the capture over a header the stream
    depends on stops the decoding of that direction, and so does a header Kafka
    would not send (the direction's first one decides whether it is Kafka at all).
    Each connection's client.id goes to ``ids`` (``count[1]``: bytes used); segments
    of connection -1 (another shard's, see ``kernels.assign``) are skipped. Returns
    where it stopped: the chunk's length, or earlier when ``messages`` or ``ids``
    might not hold the next segment's (the caller makes room and calls again)."""
    for i in range(start, len(conn)):
        c = conn[i]
        if c < 0:  # another shard's
            continue
        who = client_dir[c]
        if who < 0:
            continue
        d = direction[i]
        st = state[c, d]
        if st[S_NEXT] == -2:
            # the stream starts after the SYN, or at the first data segment when
            # the capture began mid-connection
            st[S_NEXT] = 1 if flags[i] & SYN else -1
            st[S_HIGH] = st[S_NEXT]
            st[S_FROM_SYN] = 1 if flags[i] & SYN else 0
        length = np.int64(paylen[i])
        if length <= 0 or st[S_DEAD]:
            continue
        if d != who and state[c, who, S_KIND] >= NOT_KAFKA:
            st[S_DEAD] = 1  # responses only where the requests are Kafka
            continue
        captured = np.int64(payload_cap[i])
        if count[0] + captured // 4 + 2 > len(messages) or count[1] + ID_CAP > len(ids):
            return i
        header = _HEADER if d == who else 8
        rel = rel_seq[i]
        if st[S_NEXT] == -1:
            st[S_NEXT] = rel
            st[S_HIGH] = rel
        seg_end = rel + length
        if seg_end <= st[S_HIGH]:
            continue
        if rel > st[S_HIGH] and st[S_NEXT] < rel and st[S_NEXT] + header > st[S_HIGH]:
            st[S_DEAD] = 1  # the header we need was in a segment the capture lacks
            continue
        pending = st[S_PENDING]
        if pending >= 0 and messages[pending, M_END] <= seg_end:
            messages[pending, M_LAST_FRAME] = frame[i]
            messages[pending, M_LAST_TS] = ts_ns[i]
            st[S_PENDING] = -1
        ist = idstate[c]
        if ist[I_POS] >= 0:
            _collect_id(ist, ids, data, payload_at[i], rel, length, captured)
        begin = max(rel, st[S_HIGH])
        st[S_HIGH] = seg_end
        lost = False
        while st[S_NEXT] < seg_end:
            have = st[S_PARTIAL]
            if st[S_NEXT] < begin and have == 0:
                lost = True
                break
            at = max(st[S_NEXT] + have, begin) - rel
            need = header - have
            if have == 0:
                st[S_FRAME] = frame[i]
                st[S_TS] = ts_ns[i]
            take = min(need, captured - at) if at < captured else 0
            base = payload_at[i] + at
            for k in range(take):
                partial[c, d, have + k] = data[base + k]
            have += take
            st[S_PARTIAL] = have
            if have < header:
                # the rest of the header is in the next segment, unless the snap
                # length cut it off here
                lost = rel + captured < seg_end
                break
            head = partial[c, d]
            size = _int32(head, 0)
            if not _header_ok(st, head, size, d == who):
                lost = True
                break
            m = count[0]
            count[0] += 1
            _message(messages, m, c, d == who, head, size, st)
            if d == who and ist[I_LEN] == -2:
                _start_id(
                    ist, ids, count, head, st[S_NEXT], data, payload_at[i], rel, length, captured
                )
            end = messages[m, M_END]
            if end <= seg_end:
                messages[m, M_LAST_FRAME] = frame[i]
                messages[m, M_LAST_TS] = ts_ns[i]
            else:
                st[S_PENDING] = m
            st[S_PARTIAL] = 0
            st[S_NEXT] = end
        if lost:
            st[S_DEAD] = 1
    return len(conn)


@njit(cache=True, nogil=True)
def _id_keys(at, have, length, ids):  # type: ignore[no-untyped-def]
    """Per connection, a key equal for equal client.id bytes kept (and equally cut
    short), -1 where none was kept: two polynomial hashes modulo primes below 2**31."""
    out = np.full(len(at), -1, dtype=np.int64)
    for c in range(len(at)):
        if at[c] < 0:
            continue
        one = np.int64(7)
        two = np.int64(11)
        for k in range(have[c]):
            b = np.int64(ids[at[c] + k]) + 1
            one = (one * 257 + b) % 2147483647
            two = (two * 263 + b) % 2147483629
        one = (one * 257 + have[c] + 1) % 2147483647
        two = (two * 263 + (1 if have[c] < length[c] else 0) + 1) % 2147483629
        out[c] = one * 2147483629 + two
    return out
