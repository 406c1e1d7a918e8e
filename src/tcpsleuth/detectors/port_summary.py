"""Connections summed per service port, for monitoring without a series per connection.

A broker with 18,000 clients cannot have a time series per connection; what an
operator needs per port is how many connections ended with which window-scale
shifts (cookie connections on a buggy kernel end with another shift than their
neighbours) and how many are held back by the peer's receive window right now.

- side and port: a connection whose local port has a listener is the server
  side and counts under that port; any other counts as a client of its remote
  port (the service it talks to).
- ports: the ``max_ports`` ports with the most connections keep their number;
  the rest are folded into port ``other``, so the number of series is bounded.
- window-limited now: ``rwnd_limited`` and ``busy_time`` only grow over a
  connection's life, so the share since the previous summary says what is
  happening now; a connection first seen is judged on its whole life.

Pure: the state between two summaries is passed in and returned.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tcpsleuth.model.records import Listener, TcpConnection

OTHER = "other"
DEFAULT_MAX_PORTS = 20
# A sender held at the peer's window for this share of its busy time...
RWND_LIMITED_SHARE = 0.2
# ...for at least this long (us) counts as window-limited: a few ms is slow start.
RWND_LIMITED_MIN_US = 20_000

ConnectionKey = tuple[str, int, str, int]
# (busy_time, rwnd_limited) in us, per connection, at the previous summary
TimesSeen = dict[ConnectionKey, tuple[int, int]]


@dataclass(frozen=True)
class ListenerSummary:
    address: str
    port: int
    sockets: int  # more than one with SO_REUSEPORT
    backlog: int  # summed over the sockets
    accept_queue: int


@dataclass(frozen=True)
class PortSummary:
    side: str  # "server" or "client"
    port: str  # a number, or OTHER
    connections: int
    by_wscale: Mapping[tuple[int, int], int]  # (snd_wscale, rcv_wscale) -> connections
    rwnd_limited_connections: int
    rwnd_limited_us: int  # of the window-limited connections, since the last summary
    busy_us: int

    @property
    def rwnd_limited_share(self) -> float:
        return self.rwnd_limited_us / self.busy_us if self.busy_us else 0.0


@dataclass(frozen=True)
class Summary:
    listeners: list[ListenerSummary]
    ports: list[PortSummary]
    connections: int
    folded_ports: int
    times: TimesSeen = field(repr=False, default_factory=dict)


def summarize_listeners(listeners: Iterable[Listener]) -> list[ListenerSummary]:
    grouped: dict[tuple[str, int], list[Listener]] = defaultdict(list)
    for listener in listeners:
        grouped[(listener.local_ip, listener.local_port)].append(listener)
    return [
        ListenerSummary(
            address,
            port,
            len(group),
            sum(x.backlog for x in group),
            sum(x.accept_queue for x in group),
        )
        for (address, port), group in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def summarize(
    listeners: Iterable[Listener],
    connections: Iterable[TcpConnection],
    previous: TimesSeen | None = None,
    max_ports: int = DEFAULT_MAX_PORTS,
) -> Summary:
    listeners = list(listeners)
    listening = {listener.local_port for listener in listeners}
    previous = previous or {}
    times: TimesSeen = {}
    per_port: Counter[tuple[str, int]] = Counter()
    wscales: dict[tuple[str, int], Counter[tuple[int, int]]] = defaultdict(Counter)
    limited: Counter[tuple[str, int]] = Counter()
    limited_us: Counter[tuple[str, int]] = Counter()
    busy_us: Counter[tuple[str, int]] = Counter()
    total = 0
    for conn in connections:
        if conn.state != "ESTAB":
            continue
        total += 1
        if conn.local_port in listening:
            where = ("server", conn.local_port)
        else:
            where = ("client", conn.remote_port)
        per_port[where] += 1
        if conn.snd_wscale is not None and conn.rcv_wscale is not None:
            wscales[where][(conn.snd_wscale, conn.rcv_wscale)] += 1
        busy, rwnd = conn.busy_time, conn.rwnd_limited
        if busy is None or rwnd is None:
            continue
        key = (conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port)
        times[key] = (busy, rwnd)
        before = previous.get(key)
        if before is not None and before[0] <= busy and before[1] <= rwnd:
            busy, rwnd = busy - before[0], rwnd - before[1]
        if busy and rwnd >= RWND_LIMITED_MIN_US and rwnd >= RWND_LIMITED_SHARE * busy:
            limited[where] += 1
            limited_us[where] += rwnd
            busy_us[where] += busy

    ranked = sorted(per_port, key=lambda w: (-per_port[w], w))
    kept, folded = ranked[:max_ports], ranked[max_ports:]
    ports = [
        PortSummary(
            side,
            str(port),
            per_port[(side, port)],
            dict(wscales[(side, port)]),
            limited[(side, port)],
            limited_us[(side, port)],
            busy_us[(side, port)],
        )
        for side, port in sorted(kept)
    ]
    for side in ("server", "client"):
        rest = [w for w in folded if w[0] == side]
        if not rest:
            continue
        merged: Counter[tuple[int, int]] = Counter()
        for w in rest:
            merged.update(wscales[w])
        ports.append(
            PortSummary(
                side,
                OTHER,
                sum(per_port[w] for w in rest),
                dict(merged),
                sum(limited[w] for w in rest),
                sum(limited_us[w] for w in rest),
                sum(busy_us[w] for w in rest),
            )
        )
    return Summary(summarize_listeners(listeners), ports, total, len(folded), times)
