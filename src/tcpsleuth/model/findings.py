"""The findings model: what every detector returns and every report renders.

A finding is about one thing (a connection, a listener, a host), has a stable
kebab-case ``kind`` that scripts may match on, a ``severity``, the numbers that
support it (``evidence``) and what to do about it (``advice``).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tcpsleuth.model import kinds


class Endpoints(Protocol):
    """Both ends of a connection (a ``records.TcpConnection``, or anything with them)."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is worse; used to sort findings and to pick the exit status."""
        return {"critical": 2, "warning": 1, "info": 0}[self.value]


def plain_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, with an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, a dual-stack
    or Java socket's view of an IPv4 peer) read as the IPv4 address it is."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def endpoint(ip: str, port: int) -> str:
    """``IP:PORT``, with IPv6 addresses in brackets as ``ss`` and URLs write them.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are shown as IPv4 so both
    ends of one connection name it the same way.
    """
    return f"{host(ip)}:{port}"


ConnectionKey = tuple[str, str]  # (local, remote) as endpoint() writes them


@functools.lru_cache(maxsize=1 << 16)
def host(ip: str) -> str:
    """endpoint() without the port. Cached: a snapshot of 100k sockets has few
    distinct addresses, and parsing each with ipaddress is the slow part."""
    addr = plain_address(ip)
    return f"[{addr.compressed}]" if addr.version == 6 else str(addr)


def key(conn: Endpoints) -> ConnectionKey:
    """(local, remote) of a connection as endpoint() writes them: the key that joins
    the two ends of one connection."""
    return (endpoint(conn.local_ip, conn.local_port), endpoint(conn.remote_ip, conn.remote_port))


ALL_CLIENTS = kinds.ALL_CLIENTS  # a connection subject's client: every client of the server


def shrink_factor(announced: int, actual: int) -> float:
    """How many times smaller a reader applying shift ``announced`` sees each window
    its writer scaled by ``actual``; below 1 where it reads them larger (an int where
    it is whole, as the findings' JSON has always carried it)."""
    return 2 ** (actual - announced)


def misread(announced: int, actual: int) -> str:
    """How a reader applying shift ``announced`` reads windows scaled by ``actual``:
    "64x too small", or "4x too large" (it may send past what the writer keeps)."""
    if actual >= announced:
        return f"{2 ** (actual - announced)}x too small"
    return f"{2 ** (announced - actual)}x too large"


def connection_subject(client: str, server: str) -> dict[str, str]:
    return {"client": client, "server": server}


def listener_subject(listener: str) -> dict[str, str]:
    return {"listener": listener}


def host_subject(host: str) -> dict[str, str]:
    return {"host": host}


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: Severity
    subject: Mapping[str, str]
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    advice: str = ""

    def __post_init__(self) -> None:
        # Every kind is registered (model/kinds.py); a former name becomes the current one.
        spec = kinds.lookup(self.kind)
        if spec.name != self.kind:
            object.__setattr__(self, "kind", spec.name)
        if self.severity.value not in spec.severities:
            raise kinds.UnknownKind(
                f"finding kind {spec.name!r} is registered with severities "
                f"{', '.join(spec.severities)}, not {self.severity.value}"
            )
        object.__setattr__(self, "subject", kinds.subject_of(spec, self.subject))
        object.__setattr__(self, "evidence", kinds.evidence_of(spec, self.evidence))

    @property
    def aliases(self) -> tuple[str, ...]:
        """The kind's former names, kept for one release."""
        return kinds.KINDS[self.kind].aliases

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.aliases:
            out["aliases"] = list(self.aliases)
        out.update(
            severity=self.severity.value,
            subject=dict(self.subject),
            summary=self.summary,
            evidence=dict(self.evidence),
            advice=self.advice,
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """The inverse of ``to_dict`` (findings made elsewhere, e.g. in a guest, or by
        an older tcpsleuth: the keys its kind no longer has are left out)."""
        spec = kinds.lookup(data["kind"])
        evidence = {k: v for k, v in dict(data.get("evidence", {})).items() if k in spec.keys}
        return cls(
            data["kind"],
            Severity(data["severity"]),
            dict(data["subject"]),
            data["summary"],
            evidence,
            data.get("advice", ""),
        )


def ranked(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first; stable within a severity so detectors keep their order."""
    return sorted(findings, key=lambda f: -f.severity.rank)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing is of warning or worse, 1 otherwise (2 is for usage and input errors)."""
    worst = max((f.severity.rank for f in findings), default=0)
    return 1 if worst >= Severity.WARNING.rank else 0
