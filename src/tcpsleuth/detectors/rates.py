"""Events from two samples of a namespace's TCP counters and listeners.

Counters only ever grow (until the namespace goes away or the host reboots),
so what matters while watching is how fast they grow between two samples:
- ``TcpExtSyncookiesSent`` per second: the SYN queue of some listener is full
  and the kernel answers with cookies (tcp_conn_request -> cookie_v4_init_sequence).
  A reconnect storm after a restart shows as a burst of hundreds per second.
- ``TcpExtListenOverflows``/``ListenDrops``: a completed handshake found the
  accept queue full (tcp_v4_syn_recv_sock -> sk_acceptq_is_full) and was dropped.
- a listener whose accept queue is at its backlog right now: the next handshake
  to complete on it will be dropped or, with cookies, retried by the client.

Pure functions: samples in, rates and findings out; the caller owns the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tcpsleuth.model.findings import Finding, Severity, host_subject, listener_subject
from tcpsleuth.model.records import Listener

# Counters watch shows, in this order (nstat names).
RATE_COUNTERS = (
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDoCookies",
    "TcpExtTCPReqQFullDrop",
    "TcpPassiveOpens",
    "TcpActiveOpens",
    "TcpRetransSegs",
)
OVERFLOW_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPReqQFullDrop")


@dataclass(frozen=True)
class Thresholds:
    # SYN cookies per second from which a burst counts as a storm. A healthy
    # server sends none; a few per second can be a scan, hundreds a reconnect storm.
    cookies_per_second: float = 10.0
    # Accept-queue overflows and drops per second from which they are an event; 0:
    # any overflow (watch). One or two at a moment of churn are not a storm.
    overflows_per_second: float = 0.0
    # Window-limited connections on the watched ports that appeared since the
    # previous sample (0: not checked).
    rwnd_limited_jump: int = 0


class Sample(Protocol):
    """What events are computed from: a sample of counters and listeners
    (``sources.sampling.CounterSample``)."""

    @property
    def at(self) -> float: ...
    @property
    def counters(self) -> Mapping[str, int]: ...
    @property
    def listeners(self) -> tuple[Listener, ...]: ...


def rates(before: Mapping[str, int], after: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Per-second growth of every counter present in both samples.

    A counter that went down was reset (a new namespace under the same name):
    its rate is counted from zero, as Prometheus's rate() does.
    """
    if seconds <= 0:
        raise ValueError("samples must be taken at different times")
    out: dict[str, float] = {}
    for name, value in after.items():
        if name not in before:
            continue
        grown = value - before[name] if value >= before[name] else value
        out[name] = grown / seconds
    return out


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {
        name: (value - before[name] if value >= before[name] else value)
        for name, value in after.items()
        if name in before
    }


def counter_events(
    before: Mapping[str, int],
    after: Mapping[str, int],
    seconds: float,
    host: str,
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    grown = deltas(before, after)
    per_second = rates(before, after, seconds)
    events: list[Finding] = []
    subject = host_subject(host)
    sent = grown.get("TcpExtSyncookiesSent", 0)
    if sent and per_second["TcpExtSyncookiesSent"] >= thresholds.cookies_per_second:
        events.append(
            Finding(
                "syn-cookies-rate",
                Severity.WARNING,
                subject,
                f"{sent} SYN cookies sent in {seconds:.1f} s "
                f"({per_second['TcpExtSyncookiesSent']:.0f}/s): a listener's SYN queue "
                "is overflowing, clients are connecting by cookie",
                {
                    "seconds": round(seconds, 3),
                    "cookies_per_second": round(per_second["TcpExtSyncookiesSent"], 1),
                    **{
                        name: grown[name]
                        for name in (
                            "TcpExtSyncookiesSent",
                            "TcpExtSyncookiesRecv",
                            "TcpExtSyncookiesFailed",
                            "TcpExtTCPReqQFullDoCookies",
                        )
                        if name in grown
                    },
                },
                "Find the listener with `tcpsleuth audit` (backlog against established "
                "connections), raise its backlog, and check the cookie connections' window "
                "scale with `tcpsleuth sockets`.",
            )
        )
    overflows = {name: grown[name] for name in OVERFLOW_COUNTERS if name in grown}
    if any(overflows.values()) and (
        max(overflows.values()) / seconds >= thresholds.overflows_per_second
    ):
        events.append(
            Finding(
                "listen-overflows-rate",
                Severity.WARNING,
                subject,
                f"{overflows.get('TcpExtListenOverflows', 0)} accept-queue overflows and "
                f"{overflows.get('TcpExtListenDrops', 0)} dropped connection attempts "
                f"in {seconds:.1f} s",
                {"seconds": round(seconds, 3), **overflows},
                "A listener's accept queue is full: raise its backlog and net.core.somaxconn, "
                "and check that the application accepts fast enough (`tcpsleuth audit`).",
            )
        )
    return events


def is_full(listener: Listener) -> bool:
    """The kernel drops a completed handshake when the queue is longer than the
    backlog (sk_acceptq_is_full: ack_backlog > max_ack_backlog), so a queue at
    the backlog has room for one more at most."""
    return listener.backlog > 0 and listener.accept_queue >= listener.backlog


def queue_events(listeners: Iterable[Listener], before: Iterable[Listener] = ()) -> list[Finding]:
    """Listeners whose accept queue is at their backlog now and was not in the
    sample ``before``: reported once when the queue fills, not at every sample."""
    was_full = {listener.local for listener in before if is_full(listener)}
    events = []
    for listener in listeners:
        if is_full(listener) and listener.local not in was_full:
            events.append(
                Finding(
                    "accept-queue-full",
                    Severity.WARNING,
                    listener_subject(listener.local),
                    f"{listener.local}: {listener.accept_queue} connections wait for accept() "
                    f"with a backlog of {listener.backlog}",
                    {"accept_queue": listener.accept_queue, "backlog": listener.backlog},
                    "The application is not accepting fast enough or the backlog is too "
                    "small for the clients that connect at once: raise the backlog "
                    "(and net.core.somaxconn).",
                )
            )
    return events


def sample_events(
    before: Mapping[str, int],
    after: Mapping[str, int],
    seconds: float,
    listeners_before: Iterable[Listener],
    listeners_after: Iterable[Listener],
    host: str,
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    """Everything worth reporting between two samples."""
    return counter_events(before, after, seconds, host, thresholds) + queue_events(
        listeners_after, listeners_before
    )


def between(
    before: Sample, after: Sample, host: str, thresholds: Thresholds = Thresholds()
) -> list[Finding]:
    """``sample_events`` between two samples of one namespace (watch, record)."""
    return sample_events(
        before.counters,
        after.counters,
        after.at - before.at,
        before.listeners,
        after.listeners,
        host,
        thresholds,
    )


def rwnd_limited_events(
    limited_before: int,
    limited_now: int,
    connections: int,
    seconds: float,
    ports: Iterable[int],
    host: str,
    thresholds: Thresholds,
) -> list[Finding]:
    """``rwnd-limited-rate``: the connections of the watched ports held back by their
    peer's receive window since the previous sample (tcp_info ``rwnd_limited`` against
    ``busy_time``, see ``port_summary``) rose by ``rwnd_limited_jump`` or more. A storm
    of cookie connections with a misread window scale makes many senders wait at
    once; one slow reader makes one."""
    if thresholds.rwnd_limited_jump <= 0:
        return []
    rise = limited_now - limited_before
    if rise < thresholds.rwnd_limited_jump:
        return []
    names = ", ".join(str(p) for p in sorted(ports))
    return [
        Finding(
            "rwnd-limited-rate",
            Severity.WARNING,
            host_subject(host),
            f"{limited_now} connections on port {names} were held back by the peer's "
            f"receive window in the last {seconds:.1f} s ({rise} more than the sample "
            "before)",
            {
                "seconds": round(seconds, 3),
                "ports": sorted(ports),
                "rwnd_limited_connections": limited_now,
                "previous": limited_before,
                "connections": connections,
            },
            "Find which ends disagree on the window scale: `tcpsleuth sockets --port "
            f"{sorted(ports)[0]}` here and on a client, then `tcpsleuth compare`.",
        )
    ]
