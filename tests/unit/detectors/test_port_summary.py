"""The per-port summary on its own (no root): sides, folding, window scales, and
window-limited time measured between two summaries by socket cookie. The arrays are
laid out as sock_diag's (``DiagDump``); the values are chosen so each rule shows."""

from __future__ import annotations

import socket

import numpy as np

from tcpsleuth.detectors.port_summary import OTHER, summarize
from tcpsleuth.model.records import STATE_NUMBERS
from tcpsleuth.model.sockdiag import DIAG_DTYPE, TCP_INFO_DTYPE, TCPI_OPT_WSCALE, field_end
from tcpsleuth.sources.sockdiag import DiagDump

LISTEN, ESTAB = STATE_NUMBERS["LISTEN"], STATE_NUMBERS["ESTAB"]
LOOPBACK = socket.inet_aton("127.0.0.1") + bytes(12)


def sockets(rows: list[dict[str, int]]) -> DiagDump:
    diag = np.zeros(len(rows), DIAG_DTYPE)
    info = np.zeros(len(rows), TCP_INFO_DTYPE)
    info_len = np.full(len(rows), TCP_INFO_DTYPE.itemsize, np.uint32)
    for i, row in enumerate(rows):
        diag[i]["family"] = socket.AF_INET
        diag[i]["src"] = diag[i]["dst"] = LOOPBACK
        for name in ("state", "sport", "dport", "cookie", "wqueue", "rqueue"):
            diag[i][name] = row.get(name, 0)
        scale = row.get("wscale")  # (snd, rcv) or None when not negotiated
        if scale is not None:
            info[i]["options"] = TCPI_OPT_WSCALE
            info[i]["wscale"] = scale[0] | (scale[1] << 4)
        info[i]["busy_time"] = row.get("busy", 0)
        info[i]["rwnd_limited"] = row.get("rwnd", 0)
        info_len[i] = row.get("info_len", info_len[i])
    return DiagDump(diag, info, info_len)


def conn(sport: int, dport: int, cookie: int, **more: object) -> dict[str, object]:
    return {"state": ESTAB, "sport": sport, "dport": dport, "cookie": cookie, **more}


def by_port(summary) -> dict[tuple[str, str], object]:  # type: ignore[no-untyped-def]
    return {(p.side, p.port): p for p in summary.ports}


def test_sides_folding_and_wscales() -> None:
    rows = [
        {"state": LISTEN, "sport": 9092, "wqueue": 50, "rqueue": 3},
        {"state": LISTEN, "sport": 9093, "wqueue": 128},
        # three server connections on 9092: two with shifts 7,7, one cookie-made 7,1
        conn(9092, 40001, 1, wscale=(7, 7)),
        conn(9092, 40002, 2, wscale=(7, 7)),
        conn(9092, 40003, 3, wscale=(7, 1)),
        # one on 9093, and two client connections to a remote 443 (one without scaling)
        conn(9093, 40004, 4, wscale=(7, 7)),
        conn(40005, 443, 5, wscale=(8, 7)),
        conn(40006, 443, 6),
        # an old kernel's short tcp_info: counted, but no shifts
        conn(40007, 8080, 7, info_len=field_end("wscale") - 1),
    ]
    summary = summarize(sockets(rows), max_ports=2)
    ports = by_port(summary)
    assert summary.connections == 7
    assert set(ports) == {
        ("server", "9092"),
        ("client", "443"),
        ("server", OTHER),
        ("client", OTHER),
    }
    assert ports[("server", "9092")].connections == 3
    assert ports[("server", "9092")].by_wscale == {(7, 7): 2, (7, 1): 1}
    assert ports[("client", "443")].by_wscale == {(8, 7): 1, (0, 0): 1}
    assert ports[("server", OTHER)].connections == 1  # 9093, folded
    assert ports[("client", OTHER)].connections == 1  # 8080, folded
    assert ports[("client", OTHER)].by_wscale == {}
    assert summary.folded_ports == 2
    [l9092, l9093] = summary.listeners
    assert (l9092.port, l9092.backlog, l9092.accept_queue) == (9092, 50, 3)
    assert (l9093.port, l9093.backlog) == (9093, 128)


def test_window_limited_since_the_previous_summary() -> None:
    listener = {"state": LISTEN, "sport": 9092}
    first = sockets(
        [
            listener,
            # 300 ms of 1 s busy at the window: limited (>= 20% and >= 20 ms)
            conn(40001, 9092, 11, busy=1_000_000, rwnd=300_000),
            # 19 ms: too short to count, whatever the share
            conn(40002, 9092, 12, busy=20_000, rwnd=19_000),
            # 10%: below the share
            conn(40003, 9092, 13, busy=1_000_000, rwnd=100_000),
        ]
    )
    one = summarize(first)
    p = by_port(one)[("client", "9092")]
    assert p.rwnd_limited_connections == 1
    assert (p.rwnd_limited_us, p.busy_us) == (300_000, 1_000_000)
    assert p.rwnd_limited_share == 0.3

    second = sockets(
        [
            listener,
            # a new socket where cookie 11 was (its counters went backwards; the kernel
            # never reuses cookies, this is the defence): judged on its own life, 50 of 60 ms
            conn(40001, 9092, 11, busy=60_000, rwnd=50_000),
            # no longer waiting: busy 10 ms more, no more window time
            conn(40002, 9092, 12, busy=30_000, rwnd=19_000),
            # now waiting: 400 ms of the last 500 ms
            conn(40003, 9092, 13, busy=1_500_000, rwnd=500_000),
            # first seen: its whole life, 90 of 100 ms
            conn(40004, 9092, 14, busy=100_000, rwnd=90_000),
        ]
    )
    two = summarize(second, one.times)
    p = by_port(two)[("client", "9092")]
    assert p.rwnd_limited_connections == 3
    assert (p.rwnd_limited_us, p.busy_us) == (50_000 + 400_000 + 90_000, 60_000 + 500_000 + 100_000)
    # without the previous state every connection is judged on its whole life
    whole = by_port(summarize(second))[("client", "9092")]
    assert (whole.rwnd_limited_us, whole.busy_us) == (
        50_000 + 500_000 + 90_000,
        60_000 + 1_500_000 + 100_000,
    )
