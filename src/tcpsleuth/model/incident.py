"""The incident report (``report.json``) as types: what ``recorder/analysis.py`` builds
and every reader of an incident reads, so a key renamed on one side fails on the other
instead of showing as a dash.

``to_dict``/``from_dict`` round-trip (report -> JSON -> report is identity). A report
written before the schema had a version (tcpsleuth up to this change) reads as version
1; a version this tcpsleuth does not know, or a section without a key it needs, is a
ReportError naming the place (``report.json.rwnd_limited: no 'count'``). Each section
keeps the keys it does not type in ``extra`` (the capture's recorder facts, a newer
writer's additions) and which of its optional keys were missing in ``absent``, so the
JSON read is the JSON written.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

SCHEMA_VERSION = 1  # report.json without "schema_version" is version 1


class ReportError(ValueError):
    """A report.json that is not what this tcpsleuth reads: one line, its place."""


_META = ("absent", "extra", "order")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(hint: Any) -> tuple[type[Section] | None, bool]:
    """The Section a field holds (or a list of), and whether it is a list."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args:
        return (args[0] if _is_section(args[0]) else None), True
    return (hint if _is_section(hint) else None), False


def _may_be_null(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


@dataclass(frozen=True)
class Section:
    """A part of the report: typed fields (those without a default are required), the
    optional ones that were missing (``absent``) and the untyped rest (``extra``)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # keys that may be missing
    ORDER: ClassVar[tuple[str, ...]] = ()  # the keys' order when not read from JSON

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        absent: frozenset[str] = getattr(self, "absent", frozenset())
        for f in dataclasses.fields(self):
            if f.name in _META or f.name in absent:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, Section) else v for v in value]
            out[f.name] = value
        out.update(getattr(self, "extra", {}))
        # the keys in the order they were read (or ORDER), the others after them
        order = getattr(self, "order", ()) or self.ORDER
        if order:
            rank = {k: i for i, k in enumerate(order)}
            out = {k: out[k] for k in sorted(out, key=lambda k: rank.get(k, len(rank)))}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Self:
        if not isinstance(data, dict):
            raise ReportError(f"{where}: expected an object")
        values: dict[str, Any] = {}
        absent = set()
        names = {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if f.name in _META:
                continue
            if f.name not in data:
                if f.name not in cls.OPTIONAL:
                    raise ReportError(f"{where}: no {f.name!r}")
                absent.add(f.name)
                continue
            value = data[f.name]
            hint = _hints(cls)[f.name]
            section, many = _section_type(hint)
            if section is not None and value is None and not _may_be_null(hint):
                raise ReportError(f"{where}.{f.name}: expected an object, found null")
            if section is not None and value is not None:
                if many:
                    value = [
                        section.from_dict(v, f"{where}.{f.name}[{i}]") for i, v in enumerate(value)
                    ]
                else:
                    value = section.from_dict(value, f"{where}.{f.name}")
            values[f.name] = value
        if "absent" in names:
            values["absent"] = frozenset(absent)
        if "extra" in names:
            values["extra"] = {k: v for k, v in data.items() if k not in names}
        if "order" in names:
            values["order"] = tuple(data)
        return cls(**values)


@dataclass(frozen=True)
class Window(Section):
    """The time the incident kept: its capture window and its first and last event."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("start", "end", "first_event", "last_event")
    start: float | None = None
    end: float | None = None
    first_event: float | None = None
    last_event: float | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Capture(Section):
    """The capture: the recorder's facts of it (tcpdump's counts, the ring files, the
    payload cut) and what its analysis counted."""

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "packets_kept",
        "packets",
        "bytes",
        "payload_cut",
        "kernel_drops",
        "connections",
        "handshakes",
        "kafka",
    )
    packets_kept: int | None = None
    packets: int | None = None
    bytes: int | None = None
    payload_cut: bool | None = None
    kernel_drops: int | None = None
    connections: int | None = None
    handshakes: int | None = None
    kafka: list[dict[str, Any]] | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class SynCookies(Section):
    """The kernel's counter over the window (``sent``) and the capture's cookie verdicts
    (``counts``: the keys of ``cookies.totals`` and ``sent_not_in_capture``)."""

    sent: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def counts(self) -> dict[str, Any]:
        """The section as the one mapping ``reports.cookiecounts`` reads."""
        return {"sent": self.sent, **self.extra}


@dataclass(frozen=True)
class MismatchRow(Section):
    client: str
    server: str
    announced_wscale: int | None
    inferred_wscale: int | None
    server_rcv_wscale: int | None
    syn_cookie: bool
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class WscaleMismatch(Section):
    """Connections whose two ends disagree on the window scale."""

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "by_capture",
        "by_server_socket",
        "handshakes_joined_to_sockets",
    )
    ORDER: ClassVar[tuple[str, ...]] = ("count", *OPTIONAL, "connections")
    count: int
    connections: list[MismatchRow]
    by_capture: int | None = None
    by_server_socket: int | None = None
    handshakes_joined_to_sockets: int | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class LimitedRow(Section):
    OPTIONAL: ClassVar[tuple[str, ...]] = ("client_id", "syn_cookie")
    client: str
    server: str
    sender: str
    rwnd_limited_ms: float
    rwnd_limited_share: float
    min_window_bytes: float | None
    client_id: str | None = None
    syn_cookie: bool | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class RwndLimited(Section):
    """Senders held back by the peer's receive window."""

    count: int
    connections: list[LimitedRow]
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Snapshot(Section):
    """One sock_diag snapshot of the incident (during or later)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("taken", "by_wscale")
    taken: float | None = None
    connections: int = 0
    by_wscale: dict[str, int] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Sockets(Section):
    during: Snapshot
    later: Snapshot
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Trace(Section):
    """The socket trace: skipped (why) or its samples of so many connections."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("skipped", "samples", "connections")
    skipped: str | None = None
    samples: int | None = None
    connections: int | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class IncidentReport(Section):
    """An incident's report.json. ``events``, ``timeline``, ``counters`` and
    ``findings`` stay as the JSON objects their own schemas check (findings through
    :class:`~tcpsleuth.model.findings.Finding`)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("schema_version", "bundle", "trace")
    ORDER: ClassVar[tuple[str, ...]] = (
        "schema_version",
        *("tool", "version", "command", "incident", "host", "netns", "ports", "window"),
        *("events", "counters", "timeline", "sockets", "capture", "syn_cookies"),
        *("wscale_mismatch", "rwnd_limited", "bundle", "trace", "notes", "findings"),
    )
    tool: str
    version: str
    command: str
    incident: str
    host: str | None
    netns: str | None
    ports: list[int]
    window: Window | None
    events: list[dict[str, Any]]
    counters: dict[str, Any]
    timeline: list[dict[str, Any]]
    sockets: Sockets
    capture: Capture
    syn_cookies: SynCookies
    wscale_mismatch: WscaleMismatch
    rwnd_limited: RwndLimited
    notes: list[str]
    findings: list[dict[str, Any]]
    schema_version: int = SCHEMA_VERSION
    bundle: dict[str, Any] | None = None
    trace: Trace | None = None
    absent: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report.json document; the version is always written."""
        out = super().to_dict()
        return {"schema_version": self.schema_version, **out}

    @classmethod
    def read(cls, data: Any, where: str) -> IncidentReport:
        """A report.json's document (its types checked by the recorder's schema); a
        ReportError for a version this tcpsleuth does not read or a missing key."""
        if isinstance(data, dict):
            version = data.get("schema_version", 1)
            if version != SCHEMA_VERSION:
                raise ReportError(
                    f"{where}.schema_version: {version!r}, this tcpsleuth reads "
                    f"version {SCHEMA_VERSION} (or none)"
                )
        report = cls.from_dict(data, where)
        return dataclasses.replace(report, absent=report.absent - {"schema_version"})
