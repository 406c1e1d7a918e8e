"""Pictures of captured connections: time-sequence graphs and request latency charts.

The time-sequence graph is drawn as tcptrace and Wireshark's Stevens/tcptrace
graphs draw it: time across, the sender's relative sequence number up; each data
segment a vertical stroke from its first to its last byte (retransmissions in
red), the receiver's cumulative ACK as a step line below and the right edge of
its advertised window (ACK + window in bytes, as the sender computes it) as a
step line above. A sender pressed against that upper line is window-limited.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from tcpsleuth import safefile
from tcpsleuth.detectors.capture import SEQ_SPACE, Analysis
from tcpsleuth.model.capture import ACK

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tcpsleuth.detectors.capture.kafka import KafkaRequest

MAX_CONNECTIONS = 12


def time_sequence(analysis: Analysis, stream: int, path: Path, from_client: bool = True) -> Path:
    """Time-sequence graph of one direction of one connection."""
    tcp = analysis.tcp
    lo, hi = int(analysis.starts[stream]), int(analysis.ends[stream])
    rows = analysis.order[lo:hi]
    c2s = analysis.c2s[lo:hi]
    sender = c2s if from_client else ~c2s
    t0 = int(tcp.ts_ns[rows[0]])
    seconds = (tcp.ts_ns[rows] - t0) / 1e9
    rel = analysis.rel_seq[lo:hi]
    paylen = tcp.paylen[rows].astype(np.int64)
    data = sender & (paylen > 0)
    # the receiver's ACKs in the sender's relative sequence space
    base = tcp.seq[rows][sender][0] if sender.any() else 0
    receiver_ack = ~sender & ((tcp.flags[rows] & ACK) != 0)
    ack_rel = (tcp.ack[rows] - base) % SEQ_SPACE
    edge = ack_rel + analysis.win_bytes[lo:hi]
    record = analysis.connections[stream]
    fig, ax = plt.subplots(figsize=(9, 5))
    running = np.maximum.accumulate(np.where(data, rel + paylen, 0))
    retrans = data & (rel + paylen <= np.r_[0, running[:-1]])
    for mask, colour, label in (
        (data & ~retrans, "black", "data"),
        (retrans, "red", "retransmission"),
    ):
        if mask.any():
            ax.vlines(
                seconds[mask],
                rel[mask],
                rel[mask] + paylen[mask],
                colors=colour,
                linewidth=1.2,
                label=label,
            )
    if receiver_ack.any():
        ax.step(
            seconds[receiver_ack],
            ack_rel[receiver_ack],
            where="post",
            color="tab:green",
            linewidth=1,
            label="ACK",
        )
        ax.step(
            seconds[receiver_ack],
            edge[receiver_ack],
            where="post",
            color="tab:orange",
            linewidth=1,
            label="window edge (ACK + advertised window)",
        )
    direction = "client → server" if from_client else "server → client"
    ax.set_title(f"stream {stream}: {record.client} → {record.server} ({direction})", fontsize=10)
    ax.set_xlabel("seconds since the connection's first packet")
    ax.set_ylabel("relative sequence number (bytes)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def request_latency(requests: list[KafkaRequest], title: str, path: Path) -> Path:
    """One bar per request: time to put it on the wire, then time until the response."""
    done = [r for r in requests if r.send_ms is not None][:200]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.18 * len(done) + 1.2)))
    y = np.arange(len(done))
    send = np.array([r.send_ms or 0.0 for r in done])
    broker = np.array([r.broker_ms or 0.0 for r in done])
    ax.barh(y, send, color="tab:red", label="send (first to last request byte)")
    ax.barh(y, broker, left=send, color="tab:blue", label="broker (last byte to response)")
    ax.set_yticks(y, [f"{r.correlation_id}" for r in done], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("correlation id")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG file at ``path``, written whole or not at all and never
    through a link planted in the directory (``tcpsleuth.safefile``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    safefile.write_file(path, buffer.getvalue())
    return path


def write_connection_plots(
    analysis: Analysis,
    streams: Sequence[int],
    requests: list[KafkaRequest],
    directory: Path,
    prefix: str,
    captions: Mapping[int, str] | None = None,
) -> list[tuple[str, Path]]:
    """Graphs of the connections ``streams`` (the caller chooses them:
    ``detectors.capture.selection``); (caption, file) pairs. ``captions`` replaces a
    time-sequence graph's caption (what it shows and why it matters)."""
    captions = captions or {}
    directory.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, Path]] = []
    by_stream: dict[int, list[KafkaRequest]] = {}
    for request in requests:
        by_stream.setdefault(request.stream, []).append(request)
    for stream in streams[:MAX_CONNECTIONS]:
        record = analysis.connections[stream]
        from_client = record.bytes_c2s >= record.bytes_s2c
        path = time_sequence(
            analysis, stream, directory / f"{prefix}stream{stream}-tsg.png", from_client
        )
        caption = f"Time-sequence graph, stream {stream}: {record.client} → {record.server}"
        out.append((captions.get(stream, caption), path))
        if stream in by_stream:
            path = request_latency(
                by_stream[stream],
                f"Kafka requests on stream {stream}: {record.client} → {record.server}",
                directory / f"{prefix}stream{stream}-requests.png",
            )
            out.append(
                (
                    f"Kafka request latency, stream {stream}: each bar is one request, red "
                    "the time to put it on the wire, blue the broker's time to answer. A red "
                    "part longer than the blue one is time lost in TCP, before the broker "
                    "saw the request, which the broker's own metrics never show.",
                    path,
                )
            )
    return out
