"""Naming sockets exactly and ending them through sock_diag (what ``ss -K`` does).

``tcpsleuth heal`` ends established connections one by one. A socket is named by its
whole ``inet_diag_sockid``: addresses, ports, interface and the kernel's socket cookie.
The kernel looks the socket up by the four-tuple and then compares the cookie
(inet_diag_find_one_icsk, sock_diag_check_cookie: ESTALE when it differs), so a client
that reconnected from the same port in the meantime is never ended by mistake.

SOCK_DESTROY (net/core/sock_diag.c, since 4.5) calls tcp_abort(): the server's socket
is closed and the client gets a reset. It needs CAP_NET_ADMIN and a kernel built with
CONFIG_INET_DIAG_DESTROY; without that option the kernel answers EOPNOTSUPP, and a
kernel before 4.5 does not know the message (EINVAL). Support is decided by trying.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

import numpy as np

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.model.heal import DiagSocket
from tcpsleuth.model.records import STATE_NUMBERS, TCP_STATES
from tcpsleuth.sources import netns, sockdiag

SOCK_DESTROY = 21
NLM_F_ACK = 0x4
# inet_diag_req_v2 with its inet_diag_sockid: family, protocol, ext, pad, states, then
# sport, dport (network order), src[4], dst[4] (u32 each), if, cookie[2]
DESTROY_REQ = struct.Struct("=BBBxI2s2s16s16sIQ")
ESTABLISHED_AND_LISTEN = (1 << STATE_NUMBERS["ESTAB"]) | (1 << STATE_NUMBERS["LISTEN"])
UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL)


def _text(raw: bytes, family: int) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def sockets(netns_name: str | None, ports: Iterable[int]) -> list[DiagSocket]:
    """Established and listening sockets with a local or remote port in ``ports``,
    each with its sock_diag cookie and window-scale shifts (the kernel filters by port)."""
    dump = sockdiag.dump(netns_name, states=ESTABLISHED_AND_LISTEN, with_info=True, ports=ports)
    return from_dump(dump)


def from_dump(dump: sockdiag.DiagDump) -> list[DiagSocket]:
    diag, info, info_len = dump.diag, dump.info, dump.info_len
    scaled = (info["options"] & 4) != 0  # TCPI_OPT_WSCALE
    have = info_len > 0
    snd = np.where(scaled, info["wscale"] & 0x0F, 0)
    rcv = np.where(scaled, info["wscale"] >> 4, 0)
    out = []
    for n in range(len(diag)):
        row = diag[n]
        family = int(row["family"])
        out.append(
            DiagSocket(
                family,
                _text(bytes(row["src"]), family),
                int(row["sport"]),
                _text(bytes(row["dst"]), family),
                int(row["dport"]),
                int(row["if"]),
                int(row["cookie"]),
                TCP_STATES.get(int(row["state"]), str(int(row["state"]))),
                int(snd[n]) if have[n] else None,
                int(rcv[n]) if have[n] else None,
            )
        )
    return out


def _packed(ip: str, family: int) -> bytes:
    if family == socket.AF_INET:
        return socket.inet_pton(socket.AF_INET, ip) + bytes(12)
    return socket.inet_pton(socket.AF_INET6, ip)


def destroy_request(target: DiagSocket, sequence: int) -> bytes:
    body = DESTROY_REQ.pack(
        target.family,
        socket.IPPROTO_TCP,
        0,
        0xFFFFFFFF,
        struct.pack(">H", target.local_port),
        struct.pack(">H", target.remote_port),
        _packed(target.local_ip, target.family),
        _packed(target.remote_ip, target.family),
        target.interface,
        target.cookie,
    )
    header = sockdiag.NLMSGHDR.pack(
        sockdiag.NLMSGHDR.size + len(body),
        SOCK_DESTROY,
        sockdiag.NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        0,
    )
    return header + body


class Destroyer:
    """A sock_diag socket opened in one namespace, ending sockets one request each."""

    def __init__(self, netns_name: str | None) -> None:
        with netns.entered(netns_name):
            try:
                self._sock = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG
                )
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot open a sock_diag netlink socket ({exc.strerror})"
                ) from None
        self._sequence = 100

    def close(self) -> None:
        self._sock.close()

    def destroy(self, target: DiagSocket) -> int:
        """0 when the kernel ended the socket, else the errno it answered: ENOENT
        (already gone), ESTALE (the four-tuple now belongs to another socket),
        EOPNOTSUPP or EINVAL (this kernel cannot destroy sockets), EPERM."""
        self._sequence += 1
        self._sock.send(destroy_request(target, self._sequence))
        while True:
            reply = self._sock.recv(65536)
            pos = 0
            while pos + sockdiag.NLMSGHDR.size <= len(reply):
                length, kind, _flags, sequence, _pid = sockdiag.NLMSGHDR.unpack_from(reply, pos)
                if length < sockdiag.NLMSGHDR.size:
                    return errno.EPROTO
                if kind == sockdiag.NLMSG_ERROR and sequence == self._sequence:
                    code = struct.unpack_from("=i", reply, pos + sockdiag.NLMSGHDR.size)[0]
                    return -code
                pos += (length + 3) & ~3
