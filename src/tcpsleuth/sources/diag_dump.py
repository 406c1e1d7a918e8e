"""A sock_diag dump as columns, and the records made from them.

``DiagDump`` holds every socket of a dump as NumPy structured arrays (the
``inet_diag_msg`` fields, the ``tcp_info`` fields and how many bytes of it the kernel
sent), filters them by port and address at once, and builds ``Listener`` and
``TcpConnection`` records only when asked: addresses as ``ss`` writes them, each
``tcp_info`` field present only where the kernel's struct was long enough to hold it
(:mod:`.sockdiag` reads the dump).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tcpsleuth.model.records import STATE_NUMBERS, TCP_STATES, Listener, TcpConnection
from tcpsleuth.model.sockdiag import (
    TCPI_OPT_ECN,
    TCPI_OPT_SACK,
    TCPI_OPT_TIMESTAMPS,
    TCPI_OPT_WSCALE,
    field_end,
)

LISTEN = STATE_NUMBERS["LISTEN"]


@dataclass(frozen=True)
class DiagDump:
    """Every socket of a dump as NumPy structured arrays, row for row.

    ``diag`` holds the ``inet_diag_msg`` fields, ``info`` the ``tcp_info``
    fields (zeros where the kernel sent none) and ``info_len`` how many bytes
    of ``tcp_info`` the kernel sent (0: none, e.g. with_info=False).
    """

    diag: np.ndarray
    info: np.ndarray
    info_len: np.ndarray

    def __len__(self) -> int:
        return len(self.diag)

    def select(self, mask: np.ndarray) -> DiagDump:
        return DiagDump(self.diag[mask], self.info[mask], self.info_len[mask])

    def filtered(
        self, ports: Iterable[int] | None = None, addresses: Iterable[str] | None = None
    ) -> DiagDump:
        """Sockets with a local or remote port in ``ports`` and a local or remote
        address in ``addresses`` (IPv4 also matches its IPv4-mapped IPv6 form)."""
        mask = np.ones(len(self), dtype=bool)
        if ports is not None:
            wanted = np.fromiter(ports, dtype=np.uint16)
            mask &= np.isin(self.diag["sport"], wanted) | np.isin(self.diag["dport"], wanted)
        if addresses is not None:
            keys = _address_keys(addresses)
            src = _address_view(self.diag["src"], self.diag["family"])
            dst = _address_view(self.diag["dst"], self.diag["family"])
            mask &= np.isin(src, keys) | np.isin(dst, keys)
        return self.select(mask)

    @property
    def listening(self) -> np.ndarray:
        return self.diag["state"] == LISTEN

    def listeners(self) -> list[Listener]:
        rows = self.diag[self.listening]
        local = text_addresses(rows["src"], rows["family"])
        return [
            Listener(ip, port, backlog=backlog, accept_queue=accept)
            for ip, port, backlog, accept in zip(
                local,
                rows["sport"].tolist(),
                rows["wqueue"].tolist(),
                rows["rqueue"].tolist(),
                strict=True,
            )
        ]

    def connections(self) -> list[TcpConnection]:
        keep = ~self.listening
        with gc_paused():
            return _connection_records(self.diag[keep], self.info[keep], self.info_len[keep])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Build many records without the cyclic garbage collector: 100k new objects
    would trigger it hundreds of times, each pass walking every object built so far
    (records hold no cycles, so nothing is missed)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _address_keys(addresses: Iterable[str]) -> np.ndarray:
    """16-byte keys as the kernel stores addresses: IPv4 in the first 4 bytes,
    and also as IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer)."""
    keys = []
    for text in addresses:
        addr = ipaddress.ip_address(text)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.version == 4:
            keys.append(addr.packed + bytes(12))
            keys.append(ipaddress.IPv6Address(f"::ffff:{addr}").packed)
        else:
            keys.append(addr.packed)
    return np.array(keys, dtype="V16")


def _address_view(raw: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Addresses with the bytes after an IPv4 address zeroed (the kernel leaves
    them zero today; zeroing keeps the comparison exact regardless)."""
    out = raw.copy()
    v4 = family == socket.AF_INET
    if v4.any():
        as_bytes = out.view(np.uint8).reshape(-1, 16)
        as_bytes[v4, 4:] = 0
    return out


def text_addresses(raw: np.ndarray, family: np.ndarray) -> list[str]:
    """Text addresses as ``ipaddress`` writes them (compressed IPv6), via
    inet_ntop, which is what ``ss`` calls too."""
    ntop = socket.inet_ntop
    out: list[str] = []
    append = out.append
    for value, fam in zip(raw.tolist(), family.tolist(), strict=True):
        if fam == socket.AF_INET:
            append(ntop(socket.AF_INET, value[:4]))
        else:
            append(ntop(socket.AF_INET6, value))
    return out


def _connection_records(
    diag: np.ndarray, info: np.ndarray, info_len: np.ndarray
) -> list[TcpConnection]:
    n = len(diag)
    local = text_addresses(diag["src"], diag["family"])
    remote = text_addresses(diag["dst"], diag["family"])
    states = [TCP_STATES.get(s, str(s)) for s in diag["state"].tolist()]
    columns: dict[str, list[object]] = {
        "local_port": diag["sport"].tolist(),
        "remote_port": diag["dport"].tolist(),
        "recv_q": diag["rqueue"].tolist(),
        "send_q": diag["wqueue"].tolist(),
        "inode": diag["inode"].tolist(),
    }
    columns.update(_info_columns(info, info_len))
    columns["local_ip"] = local
    columns["remote_ip"] = remote
    columns["state"] = states
    # a field the record type gained that sock_diag does not fill keeps its default
    for spec in dataclasses.fields(TcpConnection):
        if spec.name not in columns:
            columns[spec.name] = [spec.default] * n
    names = tuple(columns)
    records = []
    append = records.append
    new = object.__new__
    set_attribute = object.__setattr__
    # TcpConnection is a frozen dataclass: its __init__ sets ~40 fields one
    # object.__setattr__ at a time, the bulk of the cost at 100k sockets. Giving
    # each record its finished __dict__ makes the same object (every field set).
    for row in zip(*columns.values(), strict=True):
        record = new(TcpConnection)
        set_attribute(record, "__dict__", dict(zip(names, row, strict=True)))
        append(record)
    assert len(records) == n
    return records


# tcp_info fields copied to TcpConnection under the same name, with the
# attribute length they need.
_COPIED = {
    "mss": "snd_mss",
    "rcv_mss": "rcv_mss",
    "advmss": "advmss",
    "pmtu": "pmtu",
    "cwnd": "snd_cwnd",
    "ssthresh": "snd_ssthresh",
    "unacked": "unacked",
    "rcv_space": "rcv_space",
    "rcv_ssthresh": "rcv_ssthresh",
    "retrans_total": "total_retrans",
    "bytes_acked": "bytes_acked",
    "bytes_received": "bytes_received",
    "segs_out": "segs_out",
    "segs_in": "segs_in",
    "notsent_bytes": "notsent_bytes",
    "busy_time": "busy_time",
    "rwnd_limited": "rwnd_limited",
    "sndbuf_limited": "sndbuf_limited",
    "bytes_sent": "bytes_sent",
    "bytes_retrans": "bytes_retrans",
    "snd_wnd": "snd_wnd",
    "rcv_wnd": "rcv_wnd",
}
_MS = {"rto": "rto", "rtt": "rtt", "rttvar": "rttvar"}  # us in tcp_info, ms in records


def _info_columns(info: np.ndarray, info_len: np.ndarray) -> dict[str, list[object]]:
    n = len(info)
    if n == 0:
        return {
            name: []
            for name in [*_COPIED, *_MS, "snd_wscale", "rcv_wscale", "timestamps", "sack", "ecn"]
        }
    shortest, longest = int(info_len.min()), int(info_len.max())
    columns: dict[str, list[object]] = {}

    def present(values: list[object], end: int) -> list[object]:
        if shortest >= end:
            return values
        if longest < end:
            return [None] * n
        have = (info_len >= end).tolist()
        return [v if h else None for v, h in zip(values, have, strict=True)]

    for name, kernel_name in _COPIED.items():
        columns[name] = present(info[kernel_name].tolist(), field_end(kernel_name))
    for name, kernel_name in _MS.items():
        columns[name] = present((info[kernel_name] / 1000).tolist(), field_end(kernel_name))
    options = info["options"]
    wscale = info["wscale"]
    scaled = (options & TCPI_OPT_WSCALE) != 0
    # ss prints wscale only when scaling was negotiated; without it both shifts are 0.
    base = field_end("wscale")
    columns["snd_wscale"] = present(np.where(scaled, wscale & 0x0F, 0).tolist(), base)
    columns["rcv_wscale"] = present(np.where(scaled, wscale >> 4, 0).tolist(), base)
    columns["timestamps"] = present(((options & TCPI_OPT_TIMESTAMPS) != 0).tolist(), base)
    columns["sack"] = present(((options & TCPI_OPT_SACK) != 0).tolist(), base)
    columns["ecn"] = present(((options & TCPI_OPT_ECN) != 0).tolist(), base)
    return columns
