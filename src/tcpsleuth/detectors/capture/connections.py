"""A capture's connections as records and columns: what the tracker
(:mod:`.tracking`) leaves of each connection, the records made from it on demand,
and the analysis a detector reads. Address text is written as everywhere else in
tcpsleuth (:func:`tcpsleuth.model.findings.endpoint`: IPv6 in brackets, IPv4-mapped
addresses as IPv4)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, overload

import numpy as np

from tcpsleuth.model.capture import CWR, ECE, SynOptions, TcpColumns
from tcpsleuth.model.findings import host

SERIES_POINTS = 100


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of 64-bit values."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def endpoint_hash(hi: np.ndarray, lo: np.ndarray, port: np.ndarray, af: np.ndarray) -> np.ndarray:
    tail = (port.astype(np.uint64) << np.uint64(8)) | af.astype(np.uint64)
    return mix(mix(mix(hi) ^ lo) ^ tail)


class Addresses:
    """Address text, made once per address: a busy capture has few addresses and
    many connections. IPv4-mapped IPv6 addresses are written as IPv4, as
    :func:`tcpsleuth.model.findings.endpoint` does."""

    def __init__(self) -> None:
        self.text: dict[tuple[int, int, int], str] = {}

    def __call__(self, af: int, hi: int, lo: int) -> str:
        key = (af, hi, lo)
        known = self.text.get(key)
        if known is None:
            if af == 4:
                known = str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
            else:
                known = host(str(ipaddress.IPv6Address((hi << 64) | lo)))
            self.text[key] = known
        return known


def _text(address: str, port: int) -> str:
    return f"{address}:{port}"


@dataclass(frozen=True)
class ConnectionColumns:
    """What the tracker kept of every connection, one array per field, indexed by
    stream. Pairs (``packets``, ``bytes``, ``retrans``, ``zero``, ``probe``, ``wmin``,
    ``wmax``, ``rwnd_limited_ns``, ``window_changes``, ``waits``) have a column per direction:
    client to server, then server to client. Times are ns since the epoch, -1 where
    the capture did not show the event (see :mod:`.kernels` for each field)."""

    af: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    first_c2s: np.ndarray
    first_frame: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    opened_by: np.ndarray
    has_syn: np.ndarray
    has_synack: np.ndarray
    syn_frame: np.ndarray
    synack_frame: np.ndarray
    syn_window: np.ndarray
    synack_window: np.ndarray
    syn_flags: np.ndarray
    synack_flags: np.ndarray
    syn_seq: np.ndarray
    rtt_ns: np.ndarray
    packets: np.ndarray  # (connections, [client to server, server to client])
    bytes: np.ndarray
    retrans: np.ndarray
    zero: np.ndarray
    probe: np.ndarray
    wmin: np.ndarray
    wmax: np.ndarray
    rwnd_limited_ns: np.ndarray
    window_changes: np.ndarray
    waits: np.ndarray
    span_c2s: np.ndarray
    span_s2c: np.ndarray
    first_window_frame: np.ndarray
    first_window: np.ndarray
    first_window_ack: np.ndarray
    server_port: np.ndarray
    syn_ts: np.ndarray
    last_syn_ts: np.ndarray
    synack_ts: np.ndarray
    synack_seq: np.ndarray
    later_best_ns: np.ndarray
    far_state: np.ndarray  # int8, clockrate.Far: what the segments beyond 10 s decided
    synacks: np.ndarray
    synacks_same_seq: np.ndarray
    synacks_renewed: np.ndarray
    repeat_ts: np.ndarray
    repeat_tsval: np.ndarray
    server_key: np.ndarray
    server_addr_key: np.ndarray
    client_addr_key: np.ndarray

    def __len__(self) -> int:
        return len(self.af)

    def row(self, c: int) -> dict[str, Any]:
        """Connection ``c``'s values as Python numbers (pairs as lists)."""
        return {f.name: getattr(self, f.name)[c].tolist() for f in fields(self)}

    @classmethod
    def empty(cls) -> ConnectionColumns:
        pairs = {
            "bytes",
            "packets",
            "probe",
            "retrans",
            "rwnd_limited_ns",
            "waits",
            "window_changes",
            "wmax",
            "wmin",
            "zero",
        }
        return cls(
            **{
                f.name: np.zeros((0, 2) if f.name in pairs else 0, dtype=np.int64)
                for f in fields(cls)
            }
        )


@dataclass(frozen=True)
class CaptureConnection:
    """One TCP connection as the capture shows it. ``c2s`` is client to server.
    The client is the side that sent the first SYN (``opened_by`` = "syn"); with
    no SYN in the capture, the receiver of a SYN-ACK ("syn-ack") or else the side
    with the higher port ("port-guess")."""

    stream: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    client: str  # IP:PORT, IPv6 in brackets
    server: str
    opened_by: str
    first_frame: int
    first_ts_ns: int
    last_ts_ns: int
    syn: SynOptions | None
    synack: SynOptions | None
    syn_frame: int | None
    synack_frame: int | None
    packets_c2s: int
    packets_s2c: int
    bytes_c2s: int
    bytes_s2c: int
    handshake_rtt_ms: float | None
    retransmissions_c2s: int
    retransmissions_s2c: int
    zero_windows_c2s: int  # zero windows advertised by the client
    zero_windows_s2c: int
    window_probes_c2s: int
    window_probes_s2c: int
    server_window_min: int | None  # bytes, as the client computes them
    server_window_max: int | None
    client_window_min: int | None
    client_window_max: int | None
    rwnd_limited_ns_c2s: int
    rwnd_limited_ns_s2c: int
    rwnd_waits_c2s: int
    rwnd_waits_s2c: int
    data_span_ns_c2s: int
    data_span_ns_s2c: int

    @property
    def scaling(self) -> bool:
        """Both sides announced window scaling, so both apply it (RFC 7323 2.2)."""
        return bool(
            self.syn
            and self.synack
            and self.syn.wscale is not None
            and self.synack.wscale is not None
        )

    def summary(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "client": self.client,
            "server": self.server,
            "opened_by": self.opened_by,
            "first_frame": self.first_frame,
            "start_ns": self.first_ts_ns,
            "duration_ms": round((self.last_ts_ns - self.first_ts_ns) / 1e6, 3),
            "syn": self.syn.to_dict() if self.syn else None,
            "synack": self.synack.to_dict() if self.synack else None,
            "packets": {"c2s": self.packets_c2s, "s2c": self.packets_s2c},
            "bytes": {"c2s": self.bytes_c2s, "s2c": self.bytes_s2c},
            "handshake_rtt_ms": self.handshake_rtt_ms,
            "retransmissions": {"c2s": self.retransmissions_c2s, "s2c": self.retransmissions_s2c},
            "zero_windows": {"client": self.zero_windows_c2s, "server": self.zero_windows_s2c},
            "window_probes": {"c2s": self.window_probes_c2s, "s2c": self.window_probes_s2c},
            "server_window_bytes": [self.server_window_min, self.server_window_max],
            "client_window_bytes": [self.client_window_min, self.client_window_max],
            "rwnd_limited_ms": {
                "c2s": round(self.rwnd_limited_ns_c2s / 1e6, 3),
                "s2c": round(self.rwnd_limited_ns_s2c / 1e6, 3),
            },
        }


class Connections(Sequence[CaptureConnection]):
    """The connections of an analysis as records, each made when first asked for: a
    capture may hold hundreds of thousands, and most questions need a few."""

    def __init__(self, analysis: Analysis | None) -> None:
        self._analysis = analysis
        self._made: dict[int, CaptureConnection] = {}
        self._addresses = Addresses()

    def __len__(self) -> int:
        if self._analysis is None:
            return 0
        return len(self._analysis.starts)

    @overload
    def __getitem__(self, index: int) -> CaptureConnection: ...

    @overload
    def __getitem__(self, index: slice) -> list[CaptureConnection]: ...

    def __getitem__(self, index: int | slice) -> CaptureConnection | list[CaptureConnection]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        record = self._made.get(index)
        if record is None:
            record = self._made[index] = self._make(index)
        return record

    def endpoints(self, c: int) -> tuple[str, str]:
        """(client, server) as IP:PORT, without making the whole record."""
        record = self._made.get(c)
        if record is not None:
            return record.client, record.server
        assert self._analysis is not None
        cols = self._analysis.columns
        a_f = int(cols.af[c])
        src = self._addresses(a_f, int(cols.src_hi[c]), int(cols.src_lo[c]))
        dst = self._addresses(a_f, int(cols.dst_hi[c]), int(cols.dst_lo[c]))
        sport, dport = int(cols.sport[c]), int(cols.dport[c])
        if cols.first_c2s[c]:
            return _text(src, sport), _text(dst, dport)
        return _text(dst, dport), _text(src, sport)

    def endpoints_of(self, streams: list[int]) -> dict[int, tuple[str, str]]:
        """(client, server) of many connections at once (one conversion per column)."""
        if not streams or self._analysis is None:
            return {}
        cols = self._analysis.columns
        index = np.array(streams, dtype=np.int64)
        af = cols.af[index].tolist()
        src = np.stack([cols.src_hi[index], cols.src_lo[index]], axis=1).tolist()
        dst = np.stack([cols.dst_hi[index], cols.dst_lo[index]], axis=1).tolist()
        sport, dport = cols.sport[index].tolist(), cols.dport[index].tolist()
        first_c2s = cols.first_c2s[index].tolist()
        out = {}
        for i, c in enumerate(streams):
            a = self._addresses(af[i], *src[i])
            b = self._addresses(af[i], *dst[i])
            one, two = _text(a, sport[i]), _text(b, dport[i])
            out[c] = (one, two) if first_c2s[i] else (two, one)
        return out

    def _make(self, c: int) -> CaptureConnection:
        assert self._analysis is not None
        col = self._analysis.columns.row(c)
        a_f = col["af"]
        src = self._addresses(a_f, col["src_hi"], col["src_lo"])
        dst = self._addresses(a_f, col["dst_hi"], col["dst_lo"])
        if col["first_c2s"]:
            client, client_port, server, server_port = src, col["sport"], dst, col["dport"]
        else:
            client, client_port, server, server_port = dst, col["dport"], src, col["sport"]
        syn = synack = None
        if col["has_syn"]:
            f = col["syn_flags"]
            syn = _syn_options(
                self._analysis.hs_syn[c].tolist(),
                col["syn_window"],
                (f & (ECE | CWR)) == (ECE | CWR),
            )
        if col["has_synack"]:
            f = col["synack_flags"]
            synack = _syn_options(
                self._analysis.hs_synack[c].tolist(),
                col["synack_window"],
                bool(f & ECE) and not f & CWR,
            )
        wmin, wmax = col["wmin"], col["wmax"]
        return CaptureConnection(
            stream=c,
            client_ip=client[0],
            client_port=client_port,
            server_ip=server[0],
            server_port=server_port,
            client=_text(client, client_port),
            server=_text(server, server_port),
            opened_by=("syn", "syn-ack", "port-guess")[col["opened_by"]],
            first_frame=col["first_frame"],
            first_ts_ns=col["first_ts"],
            last_ts_ns=col["last_ts"],
            syn=syn,
            synack=synack,
            syn_frame=col["syn_frame"] if col["has_syn"] else None,
            synack_frame=col["synack_frame"] if col["has_synack"] else None,
            packets_c2s=col["packets"][0],
            packets_s2c=col["packets"][1],
            bytes_c2s=col["bytes"][0],
            bytes_s2c=col["bytes"][1],
            handshake_rtt_ms=round(col["rtt_ns"] / 1e6, 3) if col["rtt_ns"] >= 0 else None,
            retransmissions_c2s=col["retrans"][0],
            retransmissions_s2c=col["retrans"][1],
            zero_windows_c2s=col["zero"][0],
            zero_windows_s2c=col["zero"][1],
            window_probes_c2s=col["probe"][0],
            window_probes_s2c=col["probe"][1],
            server_window_min=None if wmin[1] < 0 else wmin[1],
            server_window_max=None if wmax[1] < 0 else wmax[1],
            client_window_min=None if wmin[0] < 0 else wmin[0],
            client_window_max=None if wmax[0] < 0 else wmax[0],
            rwnd_limited_ns_c2s=col["rwnd_limited_ns"][0],
            rwnd_limited_ns_s2c=col["rwnd_limited_ns"][1],
            rwnd_waits_c2s=col["waits"][0],
            rwnd_waits_s2c=col["waits"][1],
            data_span_ns_c2s=col["span_c2s"],
            data_span_ns_s2c=col["span_s2c"],
        )


@dataclass
class Analysis:
    """The connections of a capture as columns (by stream) plus a table of segments.

    The segments are, in the analysis of a whole capture, only the few rows of each
    connection's handshake the SYN-cookie detector reads (its first segment, the
    client's SYNs, the server's SYN-ACK and its next segment with a TSval); in a
    :func:`detail` analysis, every segment of the connections asked for, which the
    window series and the plots read. ``order`` lists rows of ``tcp`` grouped by
    connection, capture order within; ``starts``/``ends`` bound each stream's part.
    """

    tcp: TcpColumns
    order: np.ndarray
    conn: np.ndarray  # connection index (stream) of each row of ``order``
    c2s: np.ndarray  # bool: sent by the client
    win_bytes: np.ndarray  # advertised window in bytes as the peer computes it
    starts: np.ndarray  # first position in ``order`` of each connection (by stream)
    ends: np.ndarray
    first_syn: np.ndarray  # position in ``order`` of the client's SYN, or -1
    first_synack: np.ndarray  # position of the server's SYN-ACK, or -1
    rel_seq: np.ndarray  # sequence number relative to the first one seen in its direction
    # per-connection columns (by stream), and the handshake options (walk.syn_options rows)
    columns: ConnectionColumns = field(default_factory=lambda: ConnectionColumns.empty())
    hs_syn: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int64))
    hs_synack: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int64))
    connections: Connections = field(default_factory=lambda: Connections(None))
    detailed: bool = False  # every segment of the connections it covers
    # the servers' timestamp clocks against the capture's (clockrate.ClockRate), by
    # server address key, where the capture measures them
    clock_rates: dict[int, Any] = field(default_factory=dict)


def _syn_options(opts: list[int], window: int, ecn: bool) -> SynOptions:
    mss, wscale, sack, timestamps, tsval = opts
    return SynOptions(
        mss=None if mss < 0 else mss,
        wscale=None if wscale < 0 else wscale,
        sack_permitted=bool(sack),
        timestamps=bool(timestamps),
        tsval=None if tsval < 0 else tsval,
        ecn=ecn,
        window=window,
    )
