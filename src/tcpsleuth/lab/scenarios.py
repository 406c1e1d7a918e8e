"""The lab's scenarios: the incident, its relatives, and what each mitigation does.

Every scenario runs the same timeline (clients connect, steady produce traffic,
broker restart, reconnect storm, steady traffic again) and differs only in the
server's settings and the fault injected. Faults emulate kernel or middlebox
behaviour with nftables on the server's egress (see ``faults``); everything else
is the real kernel of this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Fault = Literal["none", "cookie-wscale", "strip-wscale"]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    tcp_syncookies: int = 1
    tcp_timestamps: int = 1
    listen_backlog: int = 50  # socket.listen.backlog.size
    broker_rcvbuf: int = 102400  # socket.receive.buffer.bytes (-1: left to the OS)
    rcvbuf_after_accept: bool = False  # see broker.BrokerConfig
    fault: Fault = "none"
    restart: bool = True
    emulates: str = ""  # what the fault stands for, said in every report


# The pre-fix kernel, for a cookie connection on a listener with SO_RCVBUF=102400,
# announces shift 1 in the SYN-ACK (from the locked buffer) but the socket uses 7 (from
# tcp_rmem[2] = 6291456) with the buffer still locked. The emulation: the listener is
# left unlocked (so sockets use 7), cookie SYN-ACKs are rewritten to announce 1, and
# SO_RCVBUF=102400 is set on each accepted connection.
BUG = (
    "the pre-fix kernel's SYN-cookie bug: every SYN-ACK that is a SYN cookie announces "
    "window-scale shift 1 (what a listener with SO_RCVBUF=102400 announces) while the "
    "connection uses shift 7 with its receive buffer locked at 102400, as the buggy cookie "
    "path leaves it; SYN-ACKs that are not cookies are untouched"
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "baseline", "steady produce traffic, no restart: the reference latency", restart=False
        ),
        Scenario(
            "restart-storm",
            "broker restart with a backlog-50 listener: the reconnect "
            "storm overflows it and the kernel answers with SYN cookies (kernel with the fix)",
            broker_rcvbuf=-1,
        ),
        Scenario(
            "wscale-bug",
            "the incident: restart storm, SYN cookies, and the pre-fix kernel's "
            "window-scale disagreement on every cookie connection",
            rcvbuf_after_accept=True,
            fault="cookie-wscale",
            emulates=BUG,
        ),
        Scenario(
            "no-syncookies",
            "the incident's kernel with tcp_syncookies=0: overflowing SYNs "
            "are dropped and retried instead of answered with a cookie",
            tcp_syncookies=0,
            rcvbuf_after_accept=True,
            fault="cookie-wscale",
            emulates=BUG,
        ),
        Scenario(
            "big-backlog",
            "the incident's kernel with socket.listen.backlog.size=4096: the "
            "storm fits in the queue, so no cookies",
            listen_backlog=4096,
            rcvbuf_after_accept=True,
            fault="cookie-wscale",
            emulates=BUG,
        ),
        Scenario(
            "rcvbuf-unlocked",
            "the incident's kernel with socket.receive.buffer.bytes=-1: the listener's "
            "buffer is not locked, so a cookie SYN-ACK announces the shift the connection "
            "uses; the storm still brings cookies, and nothing disagrees",
            broker_rcvbuf=-1,
        ),
        Scenario(
            "fixed-kernel",
            "the incident's settings (backlog 50, SO_RCVBUF 102400) on a "
            "kernel with the fix: cookies are sent, both ends agree on the shift",
        ),
        Scenario(
            "syncookies-always",
            "tcp_syncookies=2 on the incident's kernel: every "
            "connection is a cookie connection, before the restart too",
            tcp_syncookies=2,
            rcvbuf_after_accept=True,
            fault="cookie-wscale",
            emulates=BUG,
        ),
        Scenario(
            "no-timestamps",
            "restart storm with tcp_timestamps=0: cookie connections lose "
            "window scaling altogether (real kernel behaviour, no emulation)",
            tcp_timestamps=0,
            broker_rcvbuf=-1,
        ),
        Scenario(
            "strip-wscale",
            "a middlebox strips the window-scale option from the broker's "
            "SYN-ACKs: the broker scales its windows, the clients do not",
            broker_rcvbuf=-1,
            fault="strip-wscale",
            restart=False,
            emulates="a middlebox that replaces the SYN-ACK's window-scale option by NOPs",
        ),
    )
}


REAL_KERNEL_NOTE = (
    "the window-scale disagreement is made by the guest's real kernel (Debian's 6.1 with "
    "commit 909172a14974 reverted); no nftables rewrite is installed and the broker sets "
    "SO_RCVBUF on its listener before listen(), as Kafka does"
)


def on_real_kernel(scenario: Scenario) -> Scenario:
    """SCENARIO as run on a guest kernel that has the bug: the emulated fault goes and
    the broker's listener gets its SO_RCVBUF before listen(), the bug's precondition."""
    if scenario.fault != "cookie-wscale":
        return scenario
    return replace(scenario, fault="none", rcvbuf_after_accept=False, emulates="")
