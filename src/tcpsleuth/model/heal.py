"""What ``tcpsleuth heal`` exchanges between its layers: one accepted socket as sock_diag
names it (``inet_diag_sockid``, the cookie included, so that SOCK_DESTROY or a firewall
set entry can name exactly that socket and never a later one on the same ports), and
what happened to each connection it ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tcpsleuth.model.findings import endpoint


@dataclass(frozen=True)
class DiagSocket:
    """One TCP socket of a sock_diag dump, with the fields heal decides on.

    ``cookie`` is the kernel's socket cookie (``idiag_cookie``): unique for the boot, so
    a connection that reuses the same four-tuple later has another one.
    """

    family: int  # AF_INET or AF_INET6, as the socket is (a dual-stack socket is 6)
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    interface: int  # idiag_if
    cookie: int
    state: str
    snd_wscale: int | None
    rcv_wscale: int | None

    @property
    def local(self) -> str:
        return endpoint(self.local_ip, self.local_port)

    @property
    def remote(self) -> str:
        return endpoint(self.remote_ip, self.remote_port)


@dataclass(frozen=True)
class Ended:
    """A hit connection heal tried to end: ``how`` is the method (destroy, reset),
    ``outcome`` ended, gone (closed before heal came to it) or failed, ``at`` seconds
    since heal started working."""

    socket: DiagSocket
    listener: str
    how: str
    outcome: str
    at: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.socket.remote,
            "server": self.socket.local,
            "listener": self.listener,
            "cookie": self.socket.cookie,
            "how": self.how,
            "outcome": self.outcome,
            "at_s": round(self.at, 3),
            "detail": self.detail or None,
        }
