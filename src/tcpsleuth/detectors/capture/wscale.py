"""The window-scale shift a server really uses, inferred from its windows in a capture.

The window field of a SYN-ACK is never scaled: it is the server's receive window
in bytes (65160 on a current Linux with a 1500-byte MTU). The server's next
segment carries ``rcv_wnd >> true_shift``. Linux never lets the right edge of
the window it offered move back (``tcp_select_window`` in net/ipv4/tcp_output.c),
so after the client's first ``L`` bytes that next window is still worth at least
``W0 - L`` bytes. When the shift the SYN-ACK announced makes it worth several
times less, the server is not using the announced shift; the ratio of the raw
values gives the one it uses.

Stripped scaling is a window-scale option in only one of SYN and SYN-ACK; if
the server's windows still look scaled, the server believes scaling is on while
the client applies none.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture.connections import Analysis, CaptureConnection
from tcpsleuth.detectors.capture.windows import clients_hit
from tcpsleuth.model.capture import OPT_WSCALE, SEQ_SPACE
from tcpsleuth.model.findings import (
    ALL_CLIENTS,
    Finding,
    Severity,
    connection_subject,
    listener_subject,
    misread,
    shrink_factor,
)

# The client's view of the first window must be this many times below what the
# server offered in its SYN-ACK (less what it has received) to count.
SHRINK_EVIDENCE = 4
MAX_SHIFT = 14
EXAMPLES = 10


@dataclass(frozen=True)
class WindowInference:
    """What one connection's first windows say about the server's shift."""

    stream: int
    server: str
    announced_wscale: int | None  # None: the SYN-ACK had no window-scale option
    client_wscale: int | None
    inferred_wscale: int | None
    synack_window: int
    first_window: int  # raw field of the server's first segment after the SYN-ACK
    received_before: int  # client bytes the server had acknowledged by then
    synack_frame: int
    window_frame: int
    exact: bool  # the raw ratio is a power of two within 10 %
    # the client's view of that window is several times off what the server offered
    # (see :func:`verdicts`, the one place the rule lives)
    mismatch: bool

    @property
    def client_view(self) -> int:
        """The first window in bytes as the client computes it."""
        shift = self.announced_wscale if self.scaling else 0
        return self.first_window << (shift or 0)

    @property
    def scaling(self) -> bool:
        return self.announced_wscale is not None and self.client_wscale is not None

    def evidence(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "synack_frame": self.synack_frame,
            "synack_window": self.synack_window,
            "window_frame": self.window_frame,
            "first_window_raw": self.first_window,
            "client_bytes_acked_before": self.received_before,
            "client_view_bytes": self.client_view,
            "server_offered_bytes": (self.first_window << self.inferred_wscale)
            if self.inferred_wscale is not None
            else None,
        }


@dataclass
class WscaleVerdicts:
    """For every connection (by stream): the shift its SYN-ACK announced, the one
    the server's first window after the handshake shows, and whether they
    disagree; -1 (and ``mismatch`` -1) where the capture cannot tell."""

    announced: np.ndarray  # int64: the SYN-ACK's shift, -1 without the option
    inferred: np.ndarray  # int64: -1 without a server window after the handshake
    mismatch: np.ndarray  # int8: 1 disagree, 0 agree, -1 cannot tell
    exact: np.ndarray  # bool: the raw ratio is a power of two within 10 %
    first_window: np.ndarray  # raw field of that window
    received: np.ndarray  # client bytes the server had acknowledged by then
    window_frame: np.ndarray

    def of(self, analysis: Analysis, stream: int) -> dict[str, Any]:
        """The ``wscale_verdict`` of one connection in the pcap document."""
        cols = analysis.columns
        announced, inferred = int(self.announced[stream]), int(self.inferred[stream])
        mismatch = int(self.mismatch[stream])
        proof = None
        if inferred >= 0:
            proof = {
                "synack_frame": int(cols.synack_frame[stream]),
                "synack_window": int(cols.synack_window[stream]),
                "window_frame": int(self.window_frame[stream]),
                "first_window_raw": int(self.first_window[stream]),
                "client_bytes_acked_before": int(self.received[stream]),
                "exact_power_of_two": bool(self.exact[stream]),
            }
        return {
            "announced": None if announced < 0 else announced,
            "inferred": None if inferred < 0 else inferred,
            "mismatch": None if mismatch < 0 else bool(mismatch),
            "proof": proof,
        }


def verdicts(analysis: Analysis) -> WscaleVerdicts:
    """The window-scale verdict of every connection with a SYN and a SYN-ACK, whether
    or not it was a SYN cookie (the arithmetic runs on all connections at once)."""
    cols = analysis.columns
    n = len(cols.has_syn) if cols else 0
    if not n:
        none = np.zeros(0, dtype=np.int64)
        return WscaleVerdicts(none, none, none.astype(np.int8), none > 0, none, none, none)
    at = cols.first_window_frame
    ok = (at >= 0) & cols.has_syn & cols.has_synack
    raw = np.where(ok, cols.first_window, 0).astype(np.int64)
    w0 = cols.synack_window.astype(np.int64)
    received = (cols.first_window_ack - cols.syn_seq - 1) % SEQ_SPACE
    received = np.where(received > (1 << 31), 0, received)
    announced = np.where(cols.has_synack, analysis.hs_synack[:, OPT_WSCALE], -1)
    client_ws = analysis.hs_syn[:, OPT_WSCALE]
    scaling = (announced >= 0) & (client_ws >= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log2(np.where((raw > 0) & (w0 > 0), w0 / np.maximum(raw, 1), 1.0))
    inferred = np.clip(np.rint(ratio), 0, MAX_SHIFT).astype(np.int64)
    effective = np.where(scaling, announced, 0)
    client_view = raw << effective
    floor = np.maximum(w0 - received, 0)
    judged = ok & (raw > 0) & (w0 > 0)
    # the client sees a window several times below what the server had left to offer
    shrunk = judged & (inferred > effective) & (client_view * SHRINK_EVIDENCE <= floor)
    # ... or several times above what it could have offered by then
    grown = judged & (inferred < effective) & (client_view > SHRINK_EVIDENCE * 2 * (w0 + received))
    # agreement: the client's view is what the server had to offer, within rounding
    agree = judged & ~shrunk & ~grown & (client_view * 2 >= floor) & (floor > 0)
    mismatch = np.where(shrunk | grown, 1, np.where(agree, 0, -1)).astype(np.int8)
    exact = np.abs(ratio - inferred) < 0.14
    return WscaleVerdicts(
        announced=announced,
        inferred=np.where(judged, inferred, -1),
        mismatch=mismatch,
        exact=exact & judged,
        first_window=raw,
        received=received,
        window_frame=at,
    )


def infer(analysis: Analysis, judged: WscaleVerdicts | None = None) -> list[WindowInference]:
    """Records for the connections that show a mismatch or stripped scaling."""
    cols = analysis.columns
    if not cols or not len(cols.has_syn):
        return []
    v = judged if judged is not None else verdicts(analysis)
    announced = analysis.hs_synack[:, OPT_WSCALE]
    client_ws = analysis.hs_syn[:, OPT_WSCALE]
    ok = (cols.first_window_frame >= 0) & cols.has_syn & cols.has_synack
    stripped = ok & ((announced >= 0) != (client_ws >= 0))
    out: list[WindowInference] = []
    for c in np.flatnonzero((v.mismatch == 1) | stripped).tolist():
        record: CaptureConnection = analysis.connections[c]
        assert record.synack is not None and record.syn is not None
        out.append(
            WindowInference(
                stream=c,
                server=record.server,
                announced_wscale=record.synack.wscale,
                client_wscale=record.syn.wscale,
                inferred_wscale=int(v.inferred[c]) if v.inferred[c] >= 0 else None,
                synack_window=record.synack.window,
                first_window=int(v.first_window[c]),
                received_before=int(v.received[c]),
                synack_frame=int(cols.synack_frame[c]),
                window_frame=int(v.window_frame[c]),
                exact=bool(v.exact[c]),
                mismatch=bool(v.mismatch[c] == 1),
            )
        )
    return out


def _scaled_connections(analysis: Analysis, server: str) -> int:
    """Connections to ``server`` on which both sides announced window scaling."""
    cols = analysis.columns
    scaling = (analysis.hs_synack[:, OPT_WSCALE] >= 0) & (analysis.hs_syn[:, OPT_WSCALE] >= 0)
    port = int(server.rsplit(":", 1)[1])
    candidates = np.flatnonzero(scaling & (cols.server_port == port)).tolist()
    return sum(1 for c in candidates if analysis.connections[c].server == server)


def _stripped(record: CaptureConnection) -> str | None:
    if record.syn is None or record.synack is None:
        return None
    if record.syn.wscale is not None and record.synack.wscale is None:
        return "client"
    if record.syn.wscale is None and record.synack.wscale is not None:
        return "server"
    return None


def findings(
    analysis: Analysis,
    inferences: list[WindowInference],
    client_ids: Mapping[int, str] | None = None,
    cookies: np.ndarray | None = None,
) -> list[Finding]:
    """``wscale-mismatch`` and ``wscale-stripped``, one finding per server each, naming
    every client hit (by address and, where known, by Kafka ``client.id``). A
    connection ``cookies`` marks (a SYN cookie without timestamps, whose SYN-ACK lost
    every option but the MSS) is no stripped one: the cookie explains it."""
    by_server: dict[str, list[WindowInference]] = defaultdict(list)
    for inference in inferences:
        by_server[inference.server].append(inference)
    out: list[Finding] = []
    for server, group in by_server.items():
        mismatched = [i for i in group if i.scaling and i.mismatch]
        if mismatched:
            out.append(_mismatch_finding(analysis, server, mismatched, client_ids))
        stripped = [
            (i, side)
            for i in group
            if (cookies is None or not cookies[i.stream])
            and (side := _stripped(analysis.connections[i.stream])) is not None
        ]
        if stripped:
            out.append(_stripped_finding(analysis, server, stripped, client_ids))
    return out


def _mismatch_finding(
    analysis: Analysis,
    server: str,
    mismatched: list[WindowInference],
    client_ids: Mapping[int, str] | None,
) -> Finding:
    """The ``wscale-mismatch`` finding of one server's mismatched connections."""
    scaled = _scaled_connections(analysis, server)
    announced = Counter(i.announced_wscale for i in mismatched).most_common(1)[0][0]
    inferred = Counter(i.inferred_wscale for i in mismatched).most_common(1)[0][0]
    assert announced is not None and inferred is not None
    exact = sum(1 for i in mismatched if i.exact)
    example = next((i for i in mismatched if i.exact), mismatched[0])
    factor = shrink_factor(announced, inferred)
    return Finding(
        kind="wscale-mismatch",
        severity=Severity.CRITICAL,
        subject=connection_subject(ALL_CLIENTS, server),
        summary=(
            f"{len(mismatched)} of {scaled} connections: the SYN-ACK announced "
            f"window scale {announced} but the server's windows are scaled by "
            f"{inferred}; clients read windows {misread(announced, inferred)}"
        ),
        evidence={
            "announced_wscale": announced,
            "actual_wscale": inferred,
            "shrink_factor": factor,
            # a capture cannot read the server's socket (socket_wscale null)
            "source": "capture: the server's first window after the handshake "
            "against the SYN-ACK's",
            "inferred_wscale": inferred,
            "direction": "server-to-client",
            "connections": len(mismatched),
            "connections_with_scaling": scaled,
            "exact_power_of_two": exact,
            **clients_hit(analysis, [i.stream for i in mismatched], client_ids),
            "streams": [i.stream for i in mismatched[:EXAMPLES]],
            "proof": example.evidence(),
        },
        advice=(
            "A server kernel without commit 909172a14974 answers SYN cookies on "
            "a listener with SO_RCVBUF set this way: update the kernel, or set "
            "net.ipv4.tcp_syncookies=0 and raise the listen backlog "
            "(socket.listen.backlog.size) so that cookies are not needed"
        ),
    )


def _stripped_finding(
    analysis: Analysis,
    server: str,
    stripped: list[tuple[WindowInference, str]],
    client_ids: Mapping[int, str] | None,
) -> Finding:
    """The ``wscale-stripped`` finding of one server's connections with the option
    stripped, each with the side (``client`` or ``server``) that announced it."""
    scaled_anyway = [i for i, _ in stripped if i.mismatch]
    sides = Counter(side for _, side in stripped)
    inferred_values = Counter(i.inferred_wscale for i in scaled_anyway)
    inferred = inferred_values.most_common(1)[0][0] if scaled_anyway else 0
    only = sides.most_common(1)[0][0]
    example = (scaled_anyway or [i for i, _ in stripped])[0]
    factor = 1 << (inferred or 0)
    return Finding(
        kind="wscale-stripped",
        severity=Severity.CRITICAL if scaled_anyway else Severity.WARNING,
        subject=listener_subject(server),
        summary=(
            f"{len(stripped)} connections: window scaling announced by the "
            f"{only} only, so neither side scales"
            + (
                f", yet the server's windows are scaled by {inferred}: clients "
                f"see windows {factor}x smaller"
                if scaled_anyway
                else "; windows are capped at 64 KiB"
            )
        ),
        evidence={
            "announced_by": dict(sides),
            "announced_wscale": None,
            "inferred_wscale": inferred,
            "shrink_factor": factor,
            "connections": len(stripped),
            "connections_scaled_anyway": len(scaled_anyway),
            **clients_hit(analysis, [i.stream for i, _ in stripped], client_ids),
            "streams": [i.stream for i, _ in stripped[:EXAMPLES]],
            "proof": example.evidence(),
        },
        advice=(
            "Something between the hosts removes the window-scale option "
            "(a middlebox or firewall rewriting TCP options), or SYN cookies "
            "were sent without timestamps: find the device, and keep "
            "net.ipv4.tcp_timestamps on so cookies keep the option"
        ),
    )
