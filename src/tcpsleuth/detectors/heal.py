"""Which connections ``tcpsleuth heal`` may end, when it must not start, how fast it may
go, and whether the clients came back right. Pure functions: sockets and counters in,
decisions out.

On a kernel without commit 909172a14974 a connection completed from a SYN cookie to a
listener that locks SO_RCVBUF scales its window by the shift of an unlocked buffer
(from max(tcp_rmem[2], rmem_max)), while the SYN-ACK announced the locked buffer's
shift; every other connection of that listener uses the announced one. The server's
own tcp_info shows it (``rcv_wscale``), so the server alone can list the hit
connections. Ended after the storm, such a client reconnects through an ordinary
handshake and both ends agree again.

Each listener's two shifts come from listeners.listener_facts: the lock and its
buffer (``listener-rcvbuf-locked``'s ``announced_wscale`` and ``actual_wscale``), and
the shifts its established connections use (what ``sockets`` reports as
``wscale-inconsistent``). Nothing is touched on a listener whose lock is not shown,
nor where the two shifts are equal (nothing can be told apart), nor on a kernel whose
version says it has the fix.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tcpsleuth.detectors.kernel import KernelVerdict, Status
from tcpsleuth.detectors.listeners import YES, ListenerFacts
from tcpsleuth.model.findings import endpoint
from tcpsleuth.model.heal import DiagSocket, Ended
from tcpsleuth.model.records import STATE_NUMBERS
from tcpsleuth.model.sockdiag import TCPI_OPT_WSCALE, SocketArrays

# Counters that say a listen queue overflowed: SYN cookies sent, or the accept queue full.
OVERFLOW_COUNTERS = (
    "TcpExtSyncookiesSent",
    "TcpExtTCPReqQFullDoCookies",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
)
COOKIES_SENT = "TcpExtSyncookiesSent"


@dataclass(frozen=True)
class ListenerPlan:
    """One listening address of the port, with its two shifts and whether heal may touch
    its connections."""

    local_ip: str
    local_port: int
    backlog: int
    rcvbuf: int | None
    rcvbuf_locked: str  # yes, no, undetermined (listeners.listener_facts)
    lock_reason: str
    own_wscale: int | None  # what its SYN-ACKs announce and its other connections use
    bug_wscale: int | None  # what a cookie connection uses on a kernel without the fix
    own_evidence: str | None  # predicted, seen, both
    bug_evidence: str | None
    shifts_seen: Mapping[int, int] = field(default_factory=dict)  # rcv_wscale -> connections
    healable: bool = False
    why: str = ""
    program: str | None = None

    @property
    def local(self) -> str:
        return endpoint(self.local_ip, self.local_port)

    def to_dict(self) -> dict[str, Any]:
        return {
            "listener": self.local,
            "backlog": self.backlog,
            "rcvbuf": self.rcvbuf,
            "rcvbuf_locked": self.rcvbuf_locked,
            "rcvbuf_locked_why": self.lock_reason,
            "own_wscale": self.own_wscale,
            "bug_wscale": self.bug_wscale,
            "own_wscale_evidence": self.own_evidence,
            "bug_wscale_evidence": self.bug_evidence,
            "shifts_seen": {str(k): v for k, v in sorted(self.shifts_seen.items())},
            "healable": self.healable,
            "why": self.why,
            "program": self.program,
        }


def _evidence(shift: int, seen: Mapping[int, int]) -> str:
    return "both" if seen.get(shift) else "predicted"


def plan_listeners(facts: Iterable[ListenerFacts], verdict: KernelVerdict) -> list[ListenerPlan]:
    """One plan per listening address in ``facts`` (give only the port's)."""
    plans = []
    for fact in facts:
        seen = dict(fact.connection_shifts)
        own = bug = own_evidence = bug_evidence = None
        if fact.shifts is not None:
            own, bug = fact.shifts
            own_evidence, bug_evidence = _evidence(own, seen), _evidence(bug, seen)
        healable = False
        if verdict.status == Status.FIXED:
            why = (
                f"kernel {verdict.release} has the fix ({verdict.reason}): a connection with "
                "another shift is not the bug's"
            )
        elif fact.rcvbuf_locked != YES:
            why = f"its receive buffer is not shown locked ({fact.rcvbuf_locked}): never touched"
        elif own is None or bug is None:
            why = "its two shifts cannot be predicted (tcp_rmem or rmem_max unknown)"
        elif own == bug:
            why = (
                f"a cookie connection would use the shift it announces ({own}): nothing to "
                "tell apart"
            )
        else:
            healable = True
            why = (
                f"locked at {fact.rcvbuf} bytes: its SYN-ACKs announce shift {own}; on kernel "
                f"{verdict.release} ({verdict.status}) a cookie connection uses {bug}"
            )
        plans.append(
            ListenerPlan(
                fact.local_ip,
                fact.local_port,
                fact.backlog,
                fact.rcvbuf,
                fact.rcvbuf_locked,
                fact.lock_reason,
                own,
                bug,
                own_evidence,
                bug_evidence,
                seen,
                healable,
                why,
                fact.program,
            )
        )
    return plans


def _version(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def owner(sock: DiagSocket, plans: Sequence[ListenerPlan]) -> ListenerPlan | None:
    """The listening address that accepted ``sock``: the one bound to its local address,
    else the wildcard of its family, else any wildcard on its port (a dual-stack IPv6
    socket sees IPv4 peers as ::ffff:a.b.c.d)."""
    on_port = [p for p in plans if p.local_port == sock.local_port]
    for plan in on_port:
        if plan.local_ip == sock.local_ip:
            return plan
    for plan in on_port:
        if _wildcard(plan.local_ip) and _version(plan.local_ip) == _version(sock.local_ip):
            return plan
    for plan in on_port:
        if _wildcard(plan.local_ip):
            return plan
    return None


def accepted(sockets: Iterable[DiagSocket], plans: Sequence[ListenerPlan]) -> list[DiagSocket]:
    """Established connections accepted by the plans' listeners (the server's end)."""
    ports = {p.local_port for p in plans}
    return [
        s
        for s in sockets
        if s.state == "ESTAB" and s.local_port in ports and owner(s, plans) is not None
    ]


def hit(
    sockets: Iterable[DiagSocket], plans: Sequence[ListenerPlan]
) -> list[tuple[ListenerPlan, DiagSocket]]:
    """Every established connection of a healable listener whose receive shift is the
    bug's shift for that listener (scaling negotiated: a peer without the option has 0)."""
    out = []
    for sock in accepted(sockets, plans):
        plan = owner(sock, plans)
        if plan is None or not plan.healable or sock.snd_wscale is None:
            continue
        if sock.rcv_wscale == plan.bug_wscale and sock.rcv_wscale != plan.own_wscale:
            out.append((plan, sock))
    return sorted(out, key=lambda pair: (pair[0].local, pair[1].remote))


def candidates(sockets: SocketArrays, plans: Sequence[ListenerPlan]) -> np.ndarray:
    """Rows of a sock_diag dump that may be hit: established, on a healable listener's
    port, with a receive shift that is some healable listener's bug shift. A mask over
    every socket at once, so that a scrape of 100,000 sockets makes records only of
    these few (``hit`` then decides)."""
    healable = [p for p in plans if p.healable]
    diag, info = sockets.diag, sockets.info
    if not healable or len(diag) == 0:
        return np.zeros(len(diag), dtype=bool)
    ports = np.array(sorted({p.local_port for p in healable}), dtype=np.uint16)
    shifts = np.array(sorted({p.bug_wscale for p in healable}), dtype=np.uint8)
    return (
        (diag["state"] == STATE_NUMBERS["ESTAB"])
        & np.isin(diag["sport"], ports)
        & (sockets.info_len > 0)
        & ((info["options"] & TCPI_OPT_WSCALE) != 0)
        & np.isin(info["wscale"] >> 4, shifts)
    )


def refusal_by_settings(sysctls: Mapping[str, str]) -> str | None:
    if sysctls.get("net.ipv4.tcp_syncookies", "").strip() == "2":
        return (
            "net.ipv4.tcp_syncookies=2 sends a SYN cookie for every connection: every "
            "client heal ended would come back by cookie, with the bug's shift again"
        )
    return None


def overflow_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {
        name: after.get(name, 0) - before.get(name, 0)
        for name in OVERFLOW_COUNTERS
        if after.get(name, 0) > before.get(name, 0)
    }


def refusal_by_counters(
    before: Mapping[str, int],
    after: Mapping[str, int],
    seconds: float,
    plans: Sequence[ListenerPlan] = (),
    accept_queues: Mapping[str, int] | None = None,
) -> str | None:
    """Why heal must not start yet: the namespace's overflow counters rose between two
    reads ``seconds`` apart, or a listener's accept queue is at its backlog."""
    rose = overflow_delta(before, after)
    if rose:
        what = ", ".join(f"{name} +{count}" for name, count in rose.items())
        return (
            f"the listen queues are still overflowing ({what} in the last {seconds:g} s): "
            "wait until the storm is over, or clients would come back by cookie"
        )
    for plan in plans:
        queue = (accept_queues or {}).get(plan.local)
        if queue is not None and plan.backlog and queue >= plan.backlog:
            return (
                f"the accept queue of {plan.local} is full ({queue} of {plan.backlog}): "
                "wait until the server accepts again"
            )
    return None


def per_second(backlog: int, rate: int) -> int:
    """Connections to end per second: half the listener's backlog, so that the clients'
    reconnects (one SYN each, queued until accepted) fit beside other traffic, at most
    ``rate`` and at least one."""
    return max(1, min(rate, backlog // 2))


def came_back(
    ended: Sequence[Ended],
    sockets_after: Iterable[DiagSocket],
    cookies_before: frozenset[int],
    plans: Sequence[ListenerPlan],
) -> tuple[list[dict[str, Any]], list[Ended]]:
    """Which ended clients came back right: per listener and client address, as many new
    connections (a cookie heal had not seen) with the listener's own shift as connections
    ended. Returns (the new connections matched, the ended connections left over)."""
    fresh: dict[tuple[str, str], list[DiagSocket]] = defaultdict(list)
    for sock in accepted(sockets_after, plans):
        plan = owner(sock, plans)
        if plan is None or sock.cookie in cookies_before:
            continue
        if sock.rcv_wscale == plan.own_wscale:
            fresh[(plan.local, sock.remote_ip)].append(sock)
    back: list[dict[str, Any]] = []
    missing: list[Ended] = []
    for item in ended:
        if item.outcome != "ended":
            continue
        pool = fresh.get((item.listener, item.socket.remote_ip))
        if pool:
            new = pool.pop(0)
            back.append(
                {
                    "client": item.socket.remote_ip,
                    "listener": item.listener,
                    "ended_cookie": item.socket.cookie,
                    "new_connection": new.remote,
                    "new_cookie": new.cookie,
                    "rcv_wscale": new.rcv_wscale,
                }
            )
        else:
            missing.append(item)
    return back, missing
