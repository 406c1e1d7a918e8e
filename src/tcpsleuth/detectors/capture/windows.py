"""What a capture says about receive windows: the windows each side advertised over
time (:func:`window_series`, a second pass) and the senders held back by their
peer's window (``rwnd-limited``, by the rule in :mod:`tcpsleuth.detectors.thresholds`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.detectors.capture.connections import SERIES_POINTS, Analysis
from tcpsleuth.detectors.capture.shards import rows_again
from tcpsleuth.detectors.capture.tracking import ChunkRows
from tcpsleuth.detectors.thresholds import (
    RWND_LIMITED_MIN_NS,
    RWND_LIMITED_MIN_WAITS,
    RWND_LIMITED_SHARE,
    RWND_PER_LISTENER,
)
from tcpsleuth.model.capture import RST, SYN, TcpColumns
from tcpsleuth.model.findings import Finding, Severity, connection_subject, listener_subject


class SeriesPass:
    """Per stream, the windows the server and the client advertised over time, in
    bytes as the peer computes them: (ms since the connection's first packet, bytes)
    at each change, thinned evenly to at most ``points``, gathered while another pass
    over the same capture goes by (connections numbered as in ``analysis``). The first
    pass counted the changes, so this one keeps only the points it returns."""

    def __init__(self, analysis: Analysis, streams: Iterable[int], points: int) -> None:
        self.analysis = analysis
        self.chosen = chosen = sorted(set(streams))
        cols = analysis.columns
        changes = cols.window_changes[chosen]  # (streams, [c2s, s2c])
        self.first_c2s = cols.first_c2s[chosen]
        # by direction of the first segment (d = 0) rather than client/server
        by_dir = np.where(self.first_c2s[:, None], changes, changes[:, ::-1])
        self.picks = np.full((len(chosen), 2, points), -1, dtype=np.int64)
        for s, counts in enumerate(by_dir.tolist()):
            for d, count in enumerate(counts):
                if count > points:
                    self.picks[s, d] = np.linspace(0, count - 1, points).astype(np.int64)
                else:
                    self.picks[s, d, :count] = np.arange(count)
        self.slot = np.full(len(analysis.connections) + 1, -1, dtype=np.int64)
        self.slot[chosen] = np.arange(len(chosen))
        self.done = np.zeros((len(chosen), 2), dtype=np.int64)
        self.last = np.zeros((len(chosen), 2), dtype=np.int64)
        self.taken = np.zeros((len(chosen), 2), dtype=np.int64)
        self.out = np.zeros((len(chosen), 2, points, 2), dtype=np.int64)

    def feed(self, tcp: TcpColumns, rows: ChunkRows) -> None:
        if not self.chosen:
            return
        series_pass(
            np.minimum(rows.conn, len(self.slot) - 1),
            rows.direction,
            tcp.flags,
            tcp.ts_ns,
            rows.win_bytes,
            self.slot,
            self.picks,
            self.done,
            self.last,
            self.taken,
            self.out,
        )

    def finish(self) -> dict[int, tuple[list[tuple[float, int]], list[tuple[float, int]]]]:
        result = {}
        for s, stream in enumerate(self.chosen):
            start = int(self.analysis.columns.first_ts[stream])
            series = [
                [
                    (round((t - start) / 1e6, 3), w)
                    for t, w in self.out[s, d, : self.taken[s, d]].tolist()
                ]
                for d in (0, 1)
            ]
            client_first = bool(self.first_c2s[s])
            server, client = (series[1], series[0]) if client_first else (series[0], series[1])
            result[stream] = (server, client)
        return result


def window_series(
    chunks: Iterable[TcpColumns],
    analysis: Analysis,
    streams: Iterable[int],
    points: int = SERIES_POINTS,
) -> dict[int, tuple[list[tuple[float, int]], list[tuple[float, int]]]]:
    """:class:`SeriesPass` over a pass of its own (``chunks``, the same capture again)."""
    series = SeriesPass(analysis, streams, points)
    if not series.chosen:
        return {}
    for tcp, rows in rows_again(chunks, analysis):
        series.feed(tcp, rows)
    return series.finish()


def clients_hit(
    analysis: Analysis, streams: Iterable[int], client_ids: Mapping[int, str] | None = None
) -> dict[str, dict[str, int]]:
    """Who a finding about a listener is about: connections per client address (all
    of them, most first) and, where the capture kept Kafka request headers, per
    ``client.id``: the operator's next question is which producers suffered."""
    chosen = np.fromiter(streams, dtype=np.int64)
    keys = analysis.columns.client_addr_key[chosen]
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    # address text for one connection of each client address only
    examples = chosen[first[order]].tolist()
    ends = analysis.connections.endpoints_of(examples)
    addresses = {
        ends[c][0].rsplit(":", 1)[0]: n
        for c, n in zip(examples, counts[order].tolist(), strict=True)
    }
    names = Counter(client_ids[s] for s in chosen.tolist() if s in client_ids) if client_ids else {}
    return {"clients": addresses, "client_ids": dict(Counter(names).most_common())}


# what decided an rwnd-limited finding made from a capture (sockets and trace name theirs):
# no socket was read, so the busy time is the span over which the sender had data to send
RWND_SOURCE = (
    "capture: the sender's segments against the peer's advertised window (a wait counts "
    "when the sender sent again right after the window opened)"
)


def rwnd_findings(analysis: Analysis, client_ids: Mapping[int, str] | None = None) -> list[Finding]:
    """``rwnd-limited``, one finding per connection; where more than
    RWND_PER_LISTENER connections of one server are held back in the same
    direction (a storm of cookie connections), one finding for that server
    instead, naming every client hit and the worst connections."""
    each = _rwnd_per_connection(analysis)
    groups: dict[tuple[str, str], list[Finding]] = {}
    for finding in each:
        key = (finding.subject["server"], finding.evidence["direction"])
        groups.setdefault(key, []).append(finding)
    out: list[Finding] = []
    for (server, direction), group in groups.items():
        if len(group) <= RWND_PER_LISTENER:
            out += group
            continue
        group.sort(key=lambda f: -f.evidence["rwnd_limited_ms"])
        waited = np.array([f.evidence["rwnd_limited_ms"] for f in group])
        shares = np.array([f.evidence["rwnd_limited_share"] for f in group])
        sender, receiver = ("client", "server") if direction == "c2s" else ("server", "client")
        worst = group[0]
        out.append(
            Finding(
                kind="rwnd-limited",
                severity=Severity.WARNING,
                subject=listener_subject(server),
                summary=(
                    f"{len(group)} connections: the {sender} waited with data ready and the "
                    f"{receiver}'s window full for a median {np.median(waited):.0f} ms "
                    f"({np.median(shares):.0%} of its sending time), up to {waited.max():.0f} ms"
                ),
                evidence={
                    "source": RWND_SOURCE,
                    "direction": direction,
                    "connections": len(group),
                    "rwnd_limited_ms_median": round(float(np.median(waited)), 3),
                    "rwnd_limited_ms_max": round(float(waited.max()), 3),
                    "rwnd_limited_share_median": round(float(np.median(shares)), 3),
                    **clients_hit(analysis, [f.evidence["stream"] for f in group], client_ids),
                    "streams": [f.evidence["stream"] for f in group[:RWND_PER_LISTENER]],
                    "worst": worst.evidence,
                },
                advice=worst.advice,
            )
        )
    return out


def rwnd_senders(analysis: Analysis) -> list[tuple[int, Finding]]:
    """Each held-back sender's own ``rwnd-limited`` finding with its connection's index
    in ``analysis.connections`` (what the recorder's report lists, one row each)."""
    return [(int(f.evidence["stream"]), f) for f in _rwnd_per_connection(analysis)]


def _rwnd_per_connection(analysis: Analysis) -> list[Finding]:
    """``rwnd-limited``: a sender that kept data waiting while its peer's window was
    full, for a large share of the time it was sending."""
    out: list[Finding] = []
    if not len(analysis.columns):
        return out
    waited_ns = analysis.columns.rwnd_limited_ns
    spans = np.stack([analysis.columns.span_c2s, analysis.columns.span_s2c], axis=1)
    candidate = (
        (analysis.columns.waits >= RWND_LIMITED_MIN_WAITS)
        & (waited_ns >= RWND_LIMITED_MIN_NS)
        & (spans > 0)
        & (waited_ns >= RWND_LIMITED_SHARE * np.maximum(spans, 1))
    ).any(axis=1)
    for c in np.flatnonzero(candidate).tolist():
        record = analysis.connections[c]
        for direction, waited, waits, span, window, sender, receiver in (
            (
                "c2s",
                record.rwnd_limited_ns_c2s,
                record.rwnd_waits_c2s,
                record.data_span_ns_c2s,
                record.server_window_min,
                "client",
                "server",
            ),
            (
                "s2c",
                record.rwnd_limited_ns_s2c,
                record.rwnd_waits_s2c,
                record.data_span_ns_s2c,
                record.client_window_min,
                "server",
                "client",
            ),
        ):
            if waits < RWND_LIMITED_MIN_WAITS or waited < RWND_LIMITED_MIN_NS or span <= 0:
                continue
            share = waited / span
            if share < RWND_LIMITED_SHARE:
                continue
            out.append(
                Finding(
                    kind="rwnd-limited",
                    severity=Severity.WARNING,
                    subject=connection_subject(record.client, record.server),
                    summary=(
                        f"The {sender} waited {waited / 1e6:.0f} ms ({share:.0%} of its sending "
                        f"time) with data ready and the {receiver}'s window full, {waits} times"
                    ),
                    evidence={
                        "sender": record.client if direction == "c2s" else record.server,
                        "source": RWND_SOURCE,
                        "stream": record.stream,
                        "direction": direction,
                        "rwnd_limited_ms": round(waited / 1e6, 3),
                        "rwnd_limited_share": round(share, 3),
                        "busy_ms": round(span / 1e6, 3),
                        "waits": waits,
                        "min_window_bytes": window,
                        "syn_wscale": record.syn.wscale if record.syn else None,
                        "synack_wscale": record.synack.wscale if record.synack else None,
                    },
                    advice=(
                        f"The {receiver}'s advertised window holds the {sender} back: check "
                        "the wscale findings for this server, the receiver's buffer settings "
                        "(tcp_rmem, SO_RCVBUF) and whether the receiving application reads "
                        "fast enough"
                    ),
                )
            )
    return out


@njit(cache=True, nogil=True)
def series_pass(conn, direction, flags, ts_ns, win_bytes, slot, picks, done, last, taken, out):  # type: ignore[no-untyped-def]
    """The points of window series: for each segment of a chosen connection
    (``slot[conn]`` >= 0), SYNs and RSTs aside, a change of its direction's window
    is numbered; the changes whose numbers are in ``picks[slot, d]`` (ascending,
    -1 padded) go to ``out[slot, d, k]`` as (time, bytes)."""
    for i in range(len(conn)):
        s = slot[conn[i]]
        if s < 0 or flags[i] & (SYN | RST):
            continue
        d = direction[i]
        w = win_bytes[i]
        if done[s, d] > 0 and w == last[s, d]:
            continue
        number = done[s, d]
        done[s, d] += 1
        last[s, d] = w
        k = taken[s, d]
        if k < picks.shape[2] and picks[s, d, k] == number:
            out[s, d, k, 0] = ts_ns[i]
            out[s, d, k, 1] = w
            taken[s, d] = k + 1
