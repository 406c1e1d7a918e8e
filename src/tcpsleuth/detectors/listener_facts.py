"""The listener facts: every listening address with what the kernel, the processes and
the configuration say about it (its program, backlog, established connections, its
receive buffer and whether it is locked), from which :mod:`.listeners` finds risks.

sock_diag does not say whether a buffer is locked; it gives the buffer
(INET_DIAG_SKMEMINFO, ``ss -m``'s rb). An unlocked listener's buffer is what
tcp_init_sock() gave it, tcp_rmem[1] of its namespace; a locked one's is
2 x SO_RCVBUF (capped by rmem_max). So a buffer other than tcp_rmem[1] is locked, and
one equal to it is either unlocked or locked at exactly tcp_rmem[1] / 2, which the
numbers cannot tell apart: "undetermined", unless the program's configuration says
whether it sets the buffer, or the listener's accepted connections do (they inherit
the lock, and a locked buffer gives them a smaller window scale than an unlocked one).
A listener made before tcp_rmem was last changed also keeps the old tcp_rmem[1]: it
reads as locked.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tcpsleuth.detectors import servers
from tcpsleuth.detectors.kernel import locked_wscale, shifts_for_rcvbuf, unlocked_wscale
from tcpsleuth.model.findings import endpoint, plain_address
from tcpsleuth.model.records import (
    ConfiguredListener,
    HostSnapshot,
    Listener,
    ServerConfig,
    TcpConnection,
)
from tcpsleuth.model.text import to_int


class Lock(enum.StrEnum):
    """Whether a listener's receive buffer is locked (a str: the JSON says "yes" as before)."""

    YES = "yes"
    NO = "no"
    UNDETERMINED = "undetermined"


YES, NO, UNDETERMINED = Lock.YES, Lock.NO, Lock.UNDETERMINED


@dataclass(frozen=True)
class ListenerFacts:
    """One listening address (the sockets bound to the same address and port, more than
    one with SO_REUSEPORT), with what the kernel, the processes and the configuration
    say about it."""

    local_ip: str
    local_port: int
    sockets: list[Listener]
    program: str | None
    established: int | None
    rcvbuf_unlocked: int | None  # tcp_rmem[1]: what an unlocked listener gets
    rcvbuf_locked: Lock
    lock_reason: str
    config: ConfiguredListener | None = None
    config_program: str | None = None
    shifts: tuple[int, int] | None = None  # (announced, used) on a kernel without the fix
    connection_shifts: dict[int, int] = field(default_factory=dict)  # rcv_wscale -> count
    # the buffer the lock verdict was made on: of a SO_REUSEPORT group's sockets, the
    # first that differs from tcp_rmem[1] (None: the largest known, see rcvbuf)
    decided_rcvbuf: int | None = None

    @property
    def local(self) -> str:
        return endpoint(self.local_ip, self.local_port)

    @property
    def backlog(self) -> int:
        return sum(x.backlog for x in self.sockets)

    @property
    def accept_queue(self) -> int:
        return sum(x.accept_queue for x in self.sockets)

    @property
    def rcvbuf(self) -> int | None:
        """The receive buffer reported: the one the lock verdict was made on."""
        if self.decided_rcvbuf is not None:
            return self.decided_rcvbuf
        known = [x.rcvbuf for x in self.sockets if x.rcvbuf is not None]
        return max(known) if known else None

    @property
    def owners(self) -> list[Any]:
        return [owner for x in self.sockets for owner in x.owners]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "listener": self.local,
            "program": self.program,
            "processes": servers.process_names(self.owners),
            "backlog": self.backlog,
            "accept_queue": self.accept_queue,
            "established": self.established,
            "sockets": len(self.sockets),
            "rcvbuf": self.rcvbuf,
            "rcvbuf_unlocked": self.rcvbuf_unlocked,
            "rcvbuf_locked": self.rcvbuf_locked,
            "rcvbuf_locked_why": self.lock_reason,
        }
        if self.rcvbuf_locked == YES and self.rcvbuf is not None:
            out["so_rcvbuf"] = self.rcvbuf // 2
        if self.shifts is not None:
            out["announced_wscale"], out["cookie_wscale_without_fix"] = self.shifts
        if self.config is not None:
            out["config"] = {
                "program": self.config_program,
                "where": self.config.where,
                "text": self.config.text,
                "backlog": self.config.backlog,
                "rcvbuf": self.config.rcvbuf,
            }
        return out


def _family(ip: str) -> int:
    """4 or 6 as the socket sees it: a dual-stack IPv6 socket's IPv4 peers are 6."""
    return ipaddress.ip_address(ip).version


def _wildcard(ip: str) -> bool:
    return plain_address(ip).is_unspecified


def _group(found: Iterable[Listener]) -> dict[tuple[str, int], list[Listener]]:
    groups: dict[tuple[str, int], list[Listener]] = defaultdict(list)
    for listener in found:
        groups[(listener.local_ip, listener.local_port)].append(listener)
    return dict(groups)


def _owner_of(
    conn: TcpConnection, by_port: dict[int, list[tuple[str, int]]]
) -> tuple[str, int] | None:
    """The listening address that accepted an established connection: the one bound to
    its local address, else the wildcard of its family (a dual-stack IPv6 socket sees
    IPv4 peers as ::ffff:a.b.c.d), else any listener on its port."""
    keys = by_port.get(conn.local_port)
    if not keys:
        return None
    for key in keys:
        if key[0] == conn.local_ip:
            return key
    family = _family(conn.local_ip)
    for key in keys:
        if _wildcard(key[0]) and _family(key[0]) == family:
            return key
    for key in keys:
        if _wildcard(key[0]):
            return key
    return keys[0]


def _match(config: ConfiguredListener, ip: str, port: int) -> int:
    """How well a configured address names this listening address: 3 the same address,
    2 the wildcard of its family, 1 every address ("") or the other family's wildcard (a
    JVM listens on an IPv6 socket for 0.0.0.0), 0 not at all."""
    if config.port != port:
        return 0
    if config.host in ("", "*"):
        return 1
    try:
        wanted = plain_address(config.host)
    except ValueError:
        return 0  # a host name: not resolved here
    have = plain_address(ip)
    if wanted.is_unspecified and have.is_unspecified:
        return 2 if wanted.version == have.version else 1
    return 3 if wanted == have else 0


def _configs(snapshot: HostSnapshot) -> list[ServerConfig]:
    found = list(snapshot.server_configs)
    if snapshot.kafka_config is not None:
        found.append(snapshot.kafka_config.server_config())
    return found


def _config_for(
    configs: list[ServerConfig], program: str | None, ip: str, port: int
) -> tuple[ServerConfig, ConfiguredListener] | None:
    best, score = None, 0
    for config in configs:
        if program is not None and config.program != program:
            continue
        for entry in config.listeners:
            match = _match(entry, ip, port)
            if match > score:
                best, score = (config, entry), match
    return best


def _lock(
    rcvbuf: int | None,
    unlocked: int | None,
    config: tuple[ServerConfig, ConfiguredListener] | None,
    shifts_seen: Counter[int],
    snapshot: HostSnapshot,
) -> tuple[Lock, str]:
    """(yes/no/undetermined, why)."""
    if rcvbuf is None:
        missing = "the source has no receive buffer for it (`ss -ltn` without -m)"
        if config is not None and config[1].rcvbuf is not None:
            # the program's own setting, read from its file, is the evidence left
            server, entry = config
            owner = servers.program(server.program)
            setting = owner.rcvbuf_setting if owner and owner.rcvbuf_setting else entry.text
            return YES, (
                f"{missing}; {entry.where or server.path} sets it to {entry.rcvbuf} "
                f"({setting.strip()})"
            )
        return UNDETERMINED, missing
    if unlocked is None:
        return UNDETERMINED, "tcp_rmem of its namespace is unknown"
    if rcvbuf != unlocked:
        return YES, (
            f"its buffer ({rcvbuf} bytes) differs from tcp_rmem[1] ({unlocked}), what the "
            "kernel gives a listener whose buffer is not locked"
        )
    same = (
        f"its buffer equals tcp_rmem[1] ({unlocked}), which an unlocked listener gets and "
        f"SO_RCVBUF={unlocked // 2} would give too"
    )
    if config is not None:
        server, entry = config
        where = entry.where or server.path
        if entry.rcvbuf is None:
            return NO, f"{same}; {where} sets no receive buffer for it ({entry.text.strip()})"
        rmem_max = snapshot.sysctl_int("net.core.rmem_max")
        if rmem_max is not None and 2 * min(entry.rcvbuf, rmem_max) == rcvbuf:
            return YES, f"{same}; {where} sets it to {entry.rcvbuf} ({entry.text.strip()})"
        # the file says another buffer than the running socket has: not what runs
        same += (
            f"; {where} sets {entry.rcvbuf}, which would give "
            f"{2 * min(entry.rcvbuf, rmem_max or entry.rcvbuf)}: the running program "
            "does not use that setting"
        )
    free, locked = unlocked_wscale(snapshot), locked_wscale(rcvbuf, snapshot)
    if free is not None and free != locked and shifts_seen:
        if shifts_seen.get(locked):
            return YES, (
                f"{same}; {shifts_seen[locked]} of its connections use window scale "
                f"{locked}, which only a locked buffer gives (unlocked: {free})"
            )
        if shifts_seen.get(free) and sum(shifts_seen.values()) == shifts_seen[free]:
            return NO, (
                f"{same}; its {shifts_seen[free]} connections use window scale {free}, "
                f"which a buffer locked at {rcvbuf} cannot give ({locked})"
            )
    return UNDETERMINED, same


def listener_facts(snapshot: HostSnapshot) -> list[ListenerFacts]:
    """Every listening address of the snapshot, busiest port first is not implied:
    ordered by port, then address."""
    if snapshot.listeners is None:
        return []
    groups = _group(snapshot.listeners)
    by_port: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for key in groups:
        by_port[key[1]].append(key)
    established: Counter[tuple[str, int]] = Counter()
    shifts_seen: dict[tuple[str, int], Counter[int]] = defaultdict(Counter)
    for conn in snapshot.connections or ():
        if conn.state != "ESTAB":
            continue
        owner = _owner_of(conn, by_port)
        if owner is None:
            continue
        established[owner] += 1
        # an accepted connection's own shift, when scaling was negotiated both ways
        if conn.rcv_wscale and conn.snd_wscale is not None:
            shifts_seen[owner][conn.rcv_wscale] += 1
    tcp_rmem = snapshot.sysctls.get("net.ipv4.tcp_rmem", "").split()
    unlocked = to_int(tcp_rmem[1]) if len(tcp_rmem) == 3 else None
    configs = _configs(snapshot)
    out = []
    for (ip, port), sockets in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        owners = [owner for x in sockets for owner in x.owners]
        program = servers.identify(owners, port)
        config = _config_for(configs, program, ip, port)
        if program is None and config is not None:
            program = config[0].program
        rcvbuf = max((x.rcvbuf for x in sockets if x.rcvbuf is not None), default=None)
        if any(x.rcvbuf is not None and x.rcvbuf != unlocked for x in sockets):
            rcvbuf = next(
                x.rcvbuf for x in sockets if x.rcvbuf is not None and x.rcvbuf != unlocked
            )
        state, why = _lock(rcvbuf, unlocked, config, shifts_seen[(ip, port)], snapshot)
        shifts = None
        if state == YES and rcvbuf is not None:
            shifts = shifts_for_rcvbuf(rcvbuf, snapshot)
        out.append(
            ListenerFacts(
                ip,
                port,
                sockets,
                program,
                established[(ip, port)] if snapshot.connections is not None else None,
                unlocked,
                state,
                why,
                config[1] if config else None,
                config[0].program if config else None,
                shifts,
                dict(shifts_seen[(ip, port)]),
                rcvbuf,
            )
        )
    return out
