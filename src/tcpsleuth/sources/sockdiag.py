"""Live TCP sockets over netlink sock_diag (INET_DIAG), with ``tcp_info``.

This is what ``ss -tni`` reads, without a subprocess and without text: one dump
request per address family, answered by the kernel in batches of netlink
messages. Layouts are those of include/uapi/linux/inet_diag.h and
include/uapi/linux/tcp.h; ``tcp_info`` has grown over the years, so a field is
decoded only when the kernel's attribute is long enough to hold it.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.model.records import STATE_NUMBERS, TCP_STATES, Listener, TcpConnection
from tcpsleuth.sources import netns

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN = 1, 2, 4, 8

NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (zeros)
REQ_V2 = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retrans, sport, dport (big-endian), src, dst,
# if, cookie, expires, rqueue, wqueue, uid, inode
DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8xIIIII")
PORT = struct.Struct("!H")
RTATTR = struct.Struct("=HH")

# tcp_info up to tcpi_rcv_wnd (236 bytes); older kernels send a prefix of it.
TCP_INFO = struct.Struct("=8B24I4Q6I4Q2I2Q5I")
TCP_INFO_FIELDS = [
    "state",
    "ca_state",
    "retransmits",
    "probes",
    "backoff",
    "options",
    "wscale",
    "flags",
    "rto",
    "ato",
    "snd_mss",
    "rcv_mss",
    "unacked",
    "sacked",
    "lost",
    "retrans",
    "fackets",
    "last_data_sent",
    "last_ack_sent",
    "last_data_recv",
    "last_ack_recv",
    "pmtu",
    "rcv_ssthresh",
    "rtt",
    "rttvar",
    "snd_ssthresh",
    "snd_cwnd",
    "advmss",
    "reordering",
    "rcv_rtt",
    "rcv_space",
    "total_retrans",
    "pacing_rate",
    "max_pacing_rate",
    "bytes_acked",
    "bytes_received",
    "segs_out",
    "segs_in",
    "notsent_bytes",
    "min_rtt",
    "data_segs_in",
    "data_segs_out",
    "delivery_rate",
    "busy_time",
    "rwnd_limited",
    "sndbuf_limited",
    "delivered",
    "delivered_ce",
    "bytes_sent",
    "bytes_retrans",
    "dsack_dups",
    "reord_seen",
    "rcv_ooopack",
    "snd_wnd",
    "rcv_wnd",
]
# Byte offset at which each optional field ends: present only if len >= that.
_FIELD_END = {}
_offset = 0
for _name, _code in zip(
    TCP_INFO_FIELDS,
    "B" * 8 + "I" * 24 + "Q" * 4 + "I" * 6 + "Q" * 4 + "I" * 2 + "Q" * 2 + "I" * 5,
    strict=True,
):
    _offset += struct.calcsize("=" + _code)
    _FIELD_END[_name] = _offset

ALL_BUT_TIMEWAIT = sum(1 << n for n in TCP_STATES if n not in (6, 7, 12))


@dataclass(frozen=True)
class SocketTable:
    listeners: list[Listener]
    connections: list[TcpConnection]


def _decode_tcp_info(raw: bytes) -> dict[str, object]:
    size = len(raw)
    padded = raw[: TCP_INFO.size].ljust(TCP_INFO.size, b"\0")
    values = dict(zip(TCP_INFO_FIELDS, TCP_INFO.unpack(padded), strict=True))

    def have(name: str) -> bool:
        return size >= _FIELD_END[name]

    options = values["options"]
    scaled = bool(options & TCPI_OPT_WSCALE)
    busy = values["busy_time"] if have("busy_time") else None
    return {
        # ss prints wscale only when scaling was negotiated; without it both shifts are 0.
        "snd_wscale": values["wscale"] & 0x0F if scaled else 0,
        "rcv_wscale": values["wscale"] >> 4 if scaled else 0,
        "timestamps": bool(options & TCPI_OPT_TIMESTAMPS),
        "sack": bool(options & TCPI_OPT_SACK),
        "ecn": bool(options & TCPI_OPT_ECN),
        "rto": values["rto"] / 1000,
        "rtt": values["rtt"] / 1000,
        "rttvar": values["rttvar"] / 1000,
        "mss": values["snd_mss"],
        "rcv_mss": values["rcv_mss"],
        "advmss": values["advmss"],
        "pmtu": values["pmtu"],
        "cwnd": values["snd_cwnd"],
        "ssthresh": values["snd_ssthresh"],
        "unacked": values["unacked"],
        "rcv_space": values["rcv_space"],
        "rcv_ssthresh": values["rcv_ssthresh"],
        "retrans_total": values["total_retrans"],
        "bytes_acked": values["bytes_acked"] if have("bytes_acked") else None,
        "bytes_received": values["bytes_received"] if have("bytes_received") else None,
        "segs_out": values["segs_out"] if have("segs_out") else None,
        "segs_in": values["segs_in"] if have("segs_in") else None,
        "notsent_bytes": values["notsent_bytes"] if have("notsent_bytes") else None,
        "busy_time": busy,
        "rwnd_limited": values["rwnd_limited"] if have("rwnd_limited") else None,
        "sndbuf_limited": values["sndbuf_limited"] if have("sndbuf_limited") else None,
        "bytes_sent": values["bytes_sent"] if have("bytes_sent") else None,
        "bytes_retrans": values["bytes_retrans"] if have("bytes_retrans") else None,
        "snd_wnd": values["snd_wnd"] if have("snd_wnd") else None,
        "rcv_wnd": values["rcv_wnd"] if have("rcv_wnd") else None,
    }


def _dump(sock: socket.socket, family: int, states: int, with_info: bool) -> Iterator[bytes]:
    """Yield each inet_diag_msg (with its attributes) of one dump."""
    ext = 1 << (INET_DIAG_INFO - 1) if with_info else 0
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, ext, states)
    sock.send(
        NLMSGHDR.pack(
            NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        + body
    )
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        pos = 0
        while pos + NLMSGHDR.size <= n:
            length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, pos)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", buf, pos + NLMSGHDR.size)[0]
                if code == 0:
                    return
                raise OSError(code, f"sock_diag dump failed: {errno.errorcode.get(code, code)}")
            if kind == SOCK_DIAG_BY_FAMILY:
                yield bytes(view[pos + NLMSGHDR.size : pos + length])
            pos += (length + 3) & ~3


def _parse(message: bytes, ports: frozenset[int] | None) -> Listener | TcpConnection | None:
    (
        family,
        state,
        _timer,
        _retrans,
        sport,
        dport,
        src,
        dst,
        _if,
        _expires,
        rqueue,
        wqueue,
        _uid,
        inode,
    ) = DIAG_MSG.unpack_from(message)
    local_port = PORT.unpack(sport)[0]
    remote_port = PORT.unpack(dport)[0]
    if ports is not None and local_port not in ports and remote_port not in ports:
        return None
    size = 4 if family == socket.AF_INET else 16
    local_ip = socket.inet_ntop(family, src[:size])
    remote_ip = socket.inet_ntop(family, dst[:size])
    if state == STATE_NUMBERS["LISTEN"]:
        return Listener(local_ip, local_port, backlog=wqueue, accept_queue=rqueue)
    info: dict[str, object] = {}
    pos = DIAG_MSG.size
    while pos + RTATTR.size <= len(message):
        length, kind = RTATTR.unpack_from(message, pos)
        if length < RTATTR.size:
            break
        if kind == INET_DIAG_INFO:
            info = _decode_tcp_info(message[pos + RTATTR.size : pos + length])
        pos += (length + 3) & ~3
    return TcpConnection(
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        TCP_STATES.get(state, str(state)),
        recv_q=rqueue,
        send_q=wqueue,
        inode=inode,
        **info,  # type: ignore[arg-type]
    )


def snapshot(
    netns_name: str | None = None,
    ports: frozenset[int] | None = None,
    states: int = ALL_BUT_TIMEWAIT | (1 << STATE_NUMBERS["LISTEN"]),
    with_info: bool = True,
) -> SocketTable:
    """Listeners and connections of a namespace (ours when ``netns_name`` is None).

    ``ports`` keeps sockets whose local or remote port is in the set.
    """
    with netns.entered(netns_name):
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot open a sock_diag netlink socket ({exc.strerror}); "
                "the kernel may lack CONFIG_INET_DIAG: use `ss` output instead"
            ) from None
    listeners: list[Listener] = []
    connections: list[TcpConnection] = []
    with sock:
        for family in (socket.AF_INET, socket.AF_INET6):
            for message in _dump(sock, family, states, with_info):
                record = _parse(message, ports)
                if isinstance(record, Listener):
                    listeners.append(record)
                elif record is not None:
                    connections.append(record)
    return SocketTable(listeners, connections)
