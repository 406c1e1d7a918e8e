"""Following a capture's connections on several cores: the per-connection passes
split by 4-tuple, merged before anything looks across connections.

A connection lives on one 4-tuple, and everything :mod:`.tracking` and the Kafka
follower keep is per connection. So each shard (a hash of the 4-tuple, see
``fourtuples.shard_of``) follows its own connections through every chunk, in its
own thread: the compiled loops release the GIL, and the two shards of a chunk run
while the next chunk is read and decoded. Each shard numbers its connections by
their first segment, as one tracker would; the merge interleaves the shards by
first frame, which gives every connection the number one tracker gives it, and
hands one merged state to the same ``finish`` as a single tracker. The passes
that look across connections (SYN-cookie clock groups, window-scale findings per
server, Kafka pairing and summaries) run on the merged result only.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from tcpsleuth import compiled
from tcpsleuth.detectors.capture import fourtuples, kernels
from tcpsleuth.detectors.capture import kafka_framing as wire
from tcpsleuth.detectors.capture.connections import Analysis, ConnectionColumns
from tcpsleuth.detectors.capture.kafka import KafkaFollower, KafkaRequests
from tcpsleuth.detectors.capture.tracking import (
    ChunkRows,
    ConnectionTracker,
    TrackedState,
    finish,
    option_rows,
)
from tcpsleuth.model.capture import TcpColumns

MAX_SHARDS = 4


def usable_cores() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


AHEAD = 4  # chunks a shard may lag behind the reader (each a few MB)


class ShardedFollow:
    """Connections and Kafka messages of a capture, ``shards`` trackers at once, each
    in its own thread, fed the decoded chunks in order through its own queue: a
    shard that the scheduler holds back a moment does not hold back the others."""

    def __init__(self, kafka_ports: frozenset[int], shards: int) -> None:
        self.ports = kafka_ports
        self.trackers = [
            ConnectionTracker(shard=i, shards=shards, keep_rows=True) for i in range(shards)
        ]
        self.followers = [KafkaFollower(kafka_ports) for _ in range(shards)]
        self.queues: list[queue.Queue[tuple[TcpColumns, np.ndarray] | None]] = [
            queue.Queue(maxsize=AHEAD) for _ in range(shards)
        ]
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"tcpsleuth-shard-{i}", daemon=True)
            for i in range(shards)
        ]
        for thread in self.threads:
            thread.start()

    def _work(self, shard: int) -> None:
        tracker, follower = self.trackers[shard], self.followers[shard]
        while (item := self.queues[shard].get()) is not None:
            if self.errors:
                continue  # drain: the reader is stopping
            tcp, opt_index = item
            try:
                follower.feed(tcp, tracker.feed(tcp, opt_index), tracker)
            except BaseException as exc:  # handed to the reader's thread
                self.errors.append(exc)

    def feed(self, tcp: TcpColumns) -> None:
        """Queue ``tcp`` for every shard (waits while a shard is AHEAD chunks behind)."""
        opt_index = option_rows(tcp)
        for one in self.queues:
            one.put((tcp, opt_index))
        if self.errors:
            self.stop()

    def stop(self) -> None:
        """Let the shards finish what is queued, and end their threads."""
        for one in self.queues:
            one.put(None)
        for thread in self.threads:
            thread.join()
        self.queues = []
        if self.errors:
            raise self.errors[0]

    def numbering(self) -> list[np.ndarray]:
        """Per shard, the number each of its connections has in the whole capture:
        connections are numbered by their first segment's frame."""
        firsts = [t.conn_state[: t.connection_count, kernels.K_FIRST_FRAME] for t in self.trackers]
        order = np.argsort(np.concatenate(firsts), kind="stable")
        number = np.empty(len(order), dtype=np.int64)
        number[order] = np.arange(len(order))
        bounds = np.cumsum([0, *(len(first) for first in firsts)])
        return [number[a:b] for a, b in itertools.pairwise(bounds)]

    def finish(self) -> tuple[Analysis, KafkaRequests]:
        """After :meth:`stop`: the shards merged, and the analysis of all of them."""
        where = self.numbering()
        tracked = TrackedState.empty(sum(len(w) for w in where))
        fills = [
            threading.Thread(target=tracked.fill, args=(tracker, number))
            for tracker, number in zip(self.trackers, where, strict=True)
        ]
        for fill in fills:
            fill.start()
        follower = merged_follower(self.ports, self.followers, self.trackers, where)
        self.followers = []
        for fill in fills:
            fill.join()
        for tracker in self.trackers:
            tracker.release()
        analysis = finish(tracked)
        return analysis, follower.finish(analysis)


def merged_follower(
    ports: frozenset[int],
    followers: list[KafkaFollower],
    trackers: list[ConnectionTracker],
    where: list[np.ndarray],
) -> KafkaFollower:
    """One follower holding what ``finish`` reads of the shards' connections (the
    client's direction, server port, verdicts, client.id bytes and the messages), at
    their numbers in the whole capture; it can only finish."""
    merged = KafkaFollower(ports)
    if not merged.port_list:
        return merged
    total = sum(len(number) for number in where)
    merged.client_dir = np.full(total, -1, dtype=np.int64)
    merged.server_port = np.zeros(total, dtype=np.int64)
    merged.state = np.zeros((total, 2, wire.STATE_FIELDS), dtype=np.int64)
    merged.partial = np.zeros((0, 2, wire._HEADER), dtype=np.uint8)
    merged.idstate = np.empty((total, wire.ID_FIELDS), dtype=np.int64)
    merged.idstate[:] = wire.ID_INITIAL
    merged.messages = np.empty(
        (sum(int(f.count[0]) for f in followers), wire.MESSAGE_FIELDS), dtype=np.int64
    )
    merged.ids = np.zeros(sum(int(f.count[1]) for f in followers) + 1, dtype=np.uint8)
    found, kept = 0, 0
    for follower, tracker, number in zip(followers, trackers, where, strict=True):
        known = min(follower.known, len(number))
        at = number[:known]
        merged.client_dir[at] = follower.client_dir[:known]
        merged.server_port[at] = follower.server_port[:known]
        merged.state[at, :, wire.S_KIND] = follower.state[:known, :, wire.S_KIND]
        idstate = follower.idstate[:known]
        merged.idstate[at] = idstate
        merged.idstate[at, wire.I_AT] = np.where(
            idstate[:, wire.I_AT] >= 0, idstate[:, wire.I_AT] + kept, -1
        )
        if known < len(number):  # connections no chunk introduced to the follower
            rest = number[known:]
            client, server_port = tracker.server_ports(known, len(number))
            merged.client_dir[rest] = np.where(np.isin(server_port, merged.ports), client, -1)
            merged.server_port[rest] = server_port
        count, size = int(follower.count[0]), int(follower.count[1])
        merged.messages[found : found + count] = follower.messages[:count]
        conn = follower.messages[:count, wire.M_CONN]
        merged.messages[found : found + count, wire.M_CONN] = number[conn]
        merged.ids[kept : kept + size] = follower.ids[:size]
        found, kept = found + count, kept + size
    merged.count = np.array([found, kept], dtype=np.int64)
    merged.known = total
    return merged


def follow_sharded(
    chunks: Iterator[TcpColumns], kafka_ports: frozenset[int], shards: int
) -> tuple[Analysis, KafkaRequests]:
    """Every chunk through ``shards`` trackers in threads while this thread reads and
    decodes the next ones (its arrays come from this thread's memory, reused chunk
    after chunk); then the merge."""
    sharded = ShardedFollow(kafka_ports, shards)
    try:
        for tcp in chunks:
            sharded.feed(tcp)
    finally:
        if sharded.queues:
            sharded.stop()
    return sharded.finish()


def shard_members(columns: ConnectionColumns, shards: int) -> list[np.ndarray]:
    """Per shard, the numbers (in the whole capture) of its connections, in the order
    the shard numbers them: by the same hash of the 4-tuple as ``kernels.assign``."""
    s_hi, s_lo, d_hi, d_lo = columns.src_hi, columns.src_lo, columns.dst_hi, columns.dst_lo
    sport, dport = columns.sport, columns.dport
    src_is_a = (s_hi < d_hi) | (
        (s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sport <= dport)))
    )
    shard = fourtuples.shard_of(
        columns.af,
        np.where(src_is_a, s_hi, d_hi),
        np.where(src_is_a, s_lo, d_lo),
        np.where(src_is_a, d_hi, s_hi),
        np.where(src_is_a, d_lo, s_lo),
        np.where(src_is_a, sport, dport),
        np.where(src_is_a, dport, sport),
        shards,
    )
    return [np.flatnonzero(shard == one) for one in range(shards)]


def numbered_rows(
    chunks: Iterator[TcpColumns], analysis: Analysis, shards: int
) -> Iterator[tuple[TcpColumns, ChunkRows]]:
    """Another pass over the capture ``analysis`` came from: each chunk with its
    segments' rows, connections numbered as in ``analysis``, followed by ``shards``
    trackers in threads while the next chunk is read (the rows are written over by
    the next chunk's)."""
    from concurrent.futures import ThreadPoolExecutor

    members = shard_members(analysis.columns, shards)
    trackers = [ConnectionTracker(shard=i, shards=shards, keep_rows=True) for i in range(shards)]
    with ThreadPoolExecutor(shards, thread_name_prefix="tcpsleuth-shard") as pool:
        tcp = next(chunks, None)
        while tcp is not None:
            opt_index = option_rows(tcp)
            jobs = [pool.submit(tracker.feed, tcp, opt_index) for tracker in trackers]
            following = next(chunks, None)
            parts = [job.result() for job in jobs]
            yield tcp, _combined(parts, members)
            tcp = following


def _combined(parts: list[ChunkRows], members: list[np.ndarray]) -> ChunkRows:
    """The shards' rows of one chunk as one, each segment's from its shard."""
    out = parts[0]
    mine = out.conn >= 0
    out.conn[mine] = members[0][out.conn[mine]]
    for rows, number in zip(parts[1:], members[1:], strict=True):
        mine = rows.conn >= 0
        out.conn[mine] = number[rows.conn[mine]]
        out.direction[mine] = rows.direction[mine]
        out.rel_seq[mine] = rows.rel_seq[mine]
        out.win_bytes[mine] = rows.win_bytes[mine]
    return out


def rows_again(
    chunks: Iterable[TcpColumns], analysis: Analysis
) -> Iterator[tuple[TcpColumns, ChunkRows]]:
    """Each chunk of another pass with its rows, connections numbered as in
    ``analysis``: in shards on several cores when the loops are compiled. A chunk's
    rows are good until the next chunk is asked for."""
    shards = 1 if compiled.plain() else min(usable_cores(), MAX_SHARDS)
    if shards > 1:
        yield from numbered_rows(iter(chunks), analysis, shards)
        return
    tracker = ConnectionTracker()
    for tcp in chunks:
        yield tcp, tracker.feed(tcp)
