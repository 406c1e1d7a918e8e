"""Connections summed per service port, for monitoring without a series per connection.

A broker with 18,000 clients cannot have a time series per connection; what an
operator needs per port is how many connections ended with which window-scale
shifts (cookie connections on a buggy kernel end with another shift than their
neighbours) and how many are held back by the peer's receive window right now.

- side and port: a connection whose local port has a listener is the server
  side and counts under that port; any other counts as a client of its remote
  port (the service it talks to).
- ports: the ``max_ports`` (side, port) pairs with the most connections keep their
  number; the rest are folded into port ``other``, so the number of series is bounded.
- window-limited now: ``rwnd_limited`` and ``busy_time`` only grow over a
  connection's life, so the share since the previous summary says what is
  happening now; a connection first seen (by its socket cookie) is judged on its
  whole life.

Works on the bulk sock_diag arrays (``SocketArrays``), not on records: an exporter
scrape of 100,000 sockets must not build 100,000 objects. Pure: the state between
two summaries is passed in and returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tcpsleuth.detectors.thresholds import RWND_LIMITED_MIN_US, RWND_LIMITED_SHARE
from tcpsleuth.model.records import STATE_NUMBERS, Listener
from tcpsleuth.model.sockdiag import TCPI_OPT_WSCALE, SocketArrays, field_end

OTHER = "other"
DEFAULT_MAX_PORTS = 20
ESTAB = STATE_NUMBERS["ESTAB"]
SERVER, CLIENT = 1, 0


@dataclass(frozen=True)
class TimesSeen:
    """Per connection at the previous summary: socket cookie (sorted), busy_time and
    rwnd_limited in us."""

    cookies: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    busy: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    rwnd: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))


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
    times: TimesSeen = field(repr=False, default_factory=TimesSeen)


def summarize_listeners(listeners: Iterable[Listener]) -> list[ListenerSummary]:
    grouped: dict[tuple[str, int], list[Listener]] = {}
    for listener in listeners:
        grouped.setdefault((listener.local_ip, listener.local_port), []).append(listener)
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


def _since(
    cookies: np.ndarray, busy: np.ndarray, rwnd: np.ndarray, previous: TimesSeen
) -> tuple[np.ndarray, np.ndarray]:
    """busy_time and rwnd_limited since the previous summary, for connections seen
    then; whole-life values for the others."""
    if len(previous.cookies) == 0 or len(cookies) == 0:
        return busy, rwnd
    at = np.searchsorted(previous.cookies, cookies)
    at = np.minimum(at, len(previous.cookies) - 1)
    seen = previous.cookies[at] == cookies
    before_busy = np.where(seen, previous.busy[at], 0)
    before_rwnd = np.where(seen, previous.rwnd[at], 0)
    # A counter that went backwards is another socket that reused the cookie's slot.
    fresh = (before_busy > busy) | (before_rwnd > rwnd)
    before_busy[fresh] = 0
    before_rwnd[fresh] = 0
    return busy - before_busy, rwnd - before_rwnd


# a connection's (side, port) from its key side * 65536 + port, the port OTHER if folded
Label = Callable[[int], tuple[str, str]]


def _by_wscale(
    packed: np.ndarray, label: Label
) -> dict[tuple[str, str], dict[tuple[int, int], int]]:
    """Per (side, port), the connections by (snd_wscale, rcv_wscale); ``packed``: each
    connection's key and shifts as ``key * 256 + snd * 16 + rcv``."""
    scales: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
    # shifts are at most 14 (RFC 7323), 4 bits each
    scale_keys, scale_counts = np.unique(packed, return_counts=True)
    for packed_key, count in zip(scale_keys.tolist(), scale_counts.tolist(), strict=True):
        key, s, r = packed_key >> 8, (packed_key >> 4) & 0x0F, packed_key & 0x0F
        per = scales.setdefault(label(key), {})
        per[(s, r)] = per.get((s, r), 0) + count
    return scales


def _limited_sums(
    where: np.ndarray, rwnd: np.ndarray, busy: np.ndarray, label: Label
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Per (side, port) of the window-limited connections: how many, and their
    rwnd_limited and busy_time summed (us)."""
    limited_count: dict[tuple[str, str], int] = {}
    limited_us: dict[tuple[str, str], int] = {}
    busy_us: dict[tuple[str, str], int] = {}
    for key, r, b in zip(where.tolist(), rwnd.tolist(), busy.tolist(), strict=True):
        name = label(key)
        limited_count[name] = limited_count.get(name, 0) + 1
        limited_us[name] = limited_us.get(name, 0) + r
        busy_us[name] = busy_us.get(name, 0) + b
    return limited_count, limited_us, busy_us


def summarize(
    dump: SocketArrays,
    previous: TimesSeen | None = None,
    max_ports: int = DEFAULT_MAX_PORTS,
) -> Summary:
    listeners = dump.listeners()
    listening = np.fromiter({x.local_port for x in listeners}, dtype=np.uint16)
    # One column at a time: selecting whole rows would copy every tcp_info field of
    # every socket (about 20 ms of a scrape of 100,000 sockets) to use six of them.
    estab = dump.diag["state"] == ESTAB
    diag, info = dump.diag, dump.info
    info_len = dump.info_len[estab]
    sport = diag["sport"][estab].astype(np.int64)
    dport = diag["dport"][estab].astype(np.int64)
    server = np.isin(sport, listening)
    # (side, service port) as one integer: side * 65536 + port
    where = np.where(server, SERVER * 65536 + sport, dport)

    has_wscale = info_len >= field_end("wscale")
    scaled = (info["options"][estab] & TCPI_OPT_WSCALE) != 0
    wscale = info["wscale"][estab]
    # ss prints wscale only when scaling was negotiated; without it both shifts are 0.
    snd = np.where(scaled, wscale & 0x0F, 0).astype(np.int64)
    rcv = np.where(scaled, wscale >> 4, 0).astype(np.int64)

    has_times = info_len >= field_end("rwnd_limited")
    cookies = diag["cookie"][estab][has_times]
    order = np.argsort(cookies)
    cookies = cookies[order]
    busy_all = info["busy_time"][estab][has_times][order]
    rwnd_all = info["rwnd_limited"][estab][has_times][order]
    busy, rwnd = _since(cookies, busy_all, rwnd_all, previous or TimesSeen())
    limited = (busy > 0) & (rwnd >= RWND_LIMITED_MIN_US) & (rwnd >= RWND_LIMITED_SHARE * busy)
    limited_where = where[has_times][order][limited]

    keys, counts = np.unique(where, return_counts=True)
    ranked = sorted(
        zip(keys.tolist(), counts.tolist(), strict=True), key=lambda kc: (-kc[1], kc[0])
    )
    kept = {key for key, _ in ranked[:max_ports]}
    folded = len(ranked) - len(kept)

    def label(key: int) -> tuple[str, str]:
        side = "server" if key >= 65536 else "client"
        return side, str(key % 65536) if key in kept else OTHER

    connections: dict[tuple[str, str], int] = {}
    for key, count in ranked:
        connections[label(key)] = connections.get(label(key), 0) + count
    scales = _by_wscale((where * 256 + snd * 16 + rcv)[has_wscale], label)
    limited_count, limited_us, busy_us = _limited_sums(
        limited_where, rwnd[limited], busy[limited], label
    )

    def port_order(name: tuple[str, str]) -> tuple[str, int]:
        return name[0], 65536 if name[1] == OTHER else int(name[1])

    ports = [
        PortSummary(
            side,
            port,
            count,
            scales.get((side, port), {}),
            limited_count.get((side, port), 0),
            limited_us.get((side, port), 0),
            busy_us.get((side, port), 0),
        )
        for (side, port), count in sorted(connections.items(), key=lambda kv: port_order(kv[0]))
    ]
    return Summary(
        summarize_listeners(listeners),
        ports,
        len(sport),
        folded,
        TimesSeen(cookies, busy_all, rwnd_all),
    )
