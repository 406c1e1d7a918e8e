"""Where a socket snapshot comes from, as an operator names it on the command line.

  live             this host's sockets (sock_diag)
  netns:NAME       the sockets of network namespace NAME (sock_diag, needs root)
  FILE             saved `ss -tni` / `ss -tnie` / `ss -tnai` text (any iproute2),
                   or a `tcpsleuth sockets --format json` document
  DIR              a bundle directory (its ss-tni.txt, and ss-ltn.txt if present)
  -                `ss` text or JSON on standard input

So two hosts without tcpsleuth can each run `ss -tni > NAME.txt` and the files
are compared anywhere.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import key
from tcpsleuth.model.records import Listener, TcpConnection
from tcpsleuth.model.text import to_int
from tcpsleuth.sources import netns, sockdiag
from tcpsleuth.sources.sstext import parse_ss
from tcpsleuth.sources.textfile import decode_text, read_limited, read_text

LIVE = "live"
NETNS_PREFIX = "netns:"


@dataclass(frozen=True)
class Snapshot:
    origin: str  # what the user named, spelled out for reports
    kind: str  # live | ss-text | json | bundle
    listeners: list[Listener] | None  # None: the source lists no listeners
    connections: list[TcpConnection]


def load(
    spec: str,
    ports: frozenset[int] | None = None,
    addresses: frozenset[str] | None = None,
) -> Snapshot:
    if spec == LIVE or spec.startswith(NETNS_PREFIX):
        name = spec[len(NETNS_PREFIX) :] if spec != LIVE else None
        if name == "":
            raise InputError("netns: needs a namespace name, e.g. netns:blue")
        if name is not None:
            netns.checked_name(name)
        dump = sockdiag.dump(name)
        if ports is not None or addresses is not None:
            dump = dump.filtered(ports, addresses)
        origin = f"live network namespace {name}" if name else "live host"
        return Snapshot(origin, "live", dump.listeners(), dump.connections())
    if spec == "-":
        what = "`ss -tni` output or tcpsleuth JSON"
        data = read_limited(sys.stdin.buffer, "<stdin>", what)
        snap = _from_text(decode_text(data, "<stdin>", what), "<stdin>", "<stdin>")
    else:
        path = Path(spec)
        if path.is_dir():
            snap = _from_bundle(path)
        else:
            snap = _from_text(read_text(path, "`ss -tni` output or tcpsleuth JSON"), path, spec)
    return _filtered(snap, ports, addresses)


def _from_text(text: str, source: Path | str, origin: str) -> Snapshot:
    if text.lstrip().startswith("{"):
        return _from_json(text, source)
    table = parse_ss(text, source)
    # Listeners only mean something when the text lists them (ss -a / -l).
    listeners = table.listeners if table.listeners else None
    return Snapshot(f"ss text {origin}", "ss-text", listeners, table.connections)


def _from_bundle(directory: Path) -> Snapshot:
    from tcpsleuth.sources.bundle import SS_INFO, SS_LISTEN, Bundle

    bundle = Bundle(directory)
    if not bundle.has(SS_INFO):
        raise InputError(
            f"{directory}: no {SS_INFO} in this directory; make it with "
            f"`ss -tni > {SS_INFO}` on the host"
        )
    connections = bundle.ss(SS_INFO).connections
    listeners = None
    if bundle.has(SS_LISTEN):
        listeners = bundle.ss(SS_LISTEN, default_state="LISTEN").listeners
    return Snapshot(f"bundle {directory}", "bundle", listeners, connections)


def _json_int(text: str) -> int | float:
    """A JSON integer; one longer than any count (Python refuses past 4,300 digits)
    becomes infinity, which the field checks below refuse by name."""
    value = to_int(text)
    return math.inf if value is None else value


def _from_json(text: str, source: Path | str) -> Snapshot:
    try:
        doc = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply to be a `sockets` document") from None
    if not isinstance(doc, dict) or doc.get("command") != "sockets":
        raise InputError(f"{source}: JSON but not a `tcpsleuth sockets --format json` document")
    if not isinstance(doc.get("connections"), list):
        raise InputError(f"{source}: `sockets` JSON without a `connections` list")
    listeners_doc = doc.get("listeners")
    if listeners_doc is not None and not isinstance(listeners_doc, list):
        raise InputError(f"{source}: `sockets` JSON whose `listeners` is not a list")
    connections = [
        _record(TcpConnection, _CONNECTION_TYPES, c, source, f"connections[{i}]")
        for i, c in enumerate(doc["connections"])
    ]
    listeners = (
        None
        if listeners_doc is None
        else [
            _record(Listener, _LISTENER_TYPES, x, source, f"listeners[{i}]")
            for i, x in enumerate(listeners_doc)
        ]
    )
    origin = doc.get("origin", "?")
    return Snapshot(
        f"json {source} ({origin if isinstance(origin, str) else '?'})",
        "json",
        listeners,
        connections,
    )


def _field_types(cls: Any) -> dict[str, tuple[str, bool]]:
    """Field name -> (base type name, None allowed), from the record's annotations."""
    types = {}
    for field in dataclasses.fields(cls):
        spelled = str(field.type).replace(" ", "").split("|")
        types[field.name] = (spelled[0], "None" in spelled[1:])
    return types


_CONNECTION_TYPES = _field_types(TcpConnection)
_LISTENER_TYPES = _field_types(Listener)
_PORTS = frozenset({"local_port", "remote_port"})
_IPS = frozenset({"local_ip", "remote_ip"})
_WSCALES = frozenset({"snd_wscale", "rcv_wscale"})


def _value(name: str, kind: str, value: Any) -> Any:
    """``value`` checked for field ``name`` of type ``kind``; ValueError says why not."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("not true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("not a string")
        if name in _IPS:
            try:
                return ipaddress.ip_address(value).compressed
            except ValueError:
                raise ValueError("not an IP address") from None
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    if kind == "int" and not isinstance(value, int):
        raise ValueError("not a whole number")
    if not math.isfinite(value) or value < 0:
        raise ValueError("not a finite number of at least 0")
    if name in _PORTS and value > 65535:
        raise ValueError("not a port (0 to 65535)")
    if name in _WSCALES and value > 14:
        raise ValueError("not a window-scale shift (0 to 14)")
    return value


def _record(
    cls: Any, types: dict[str, tuple[str, bool]], data: Any, source: Path | str, where: str
) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{source}: `sockets` JSON {where} is not an object")
    values = {}
    for name, (kind, optional) in types.items():
        if name not in data:
            continue
        value = data[name]
        if value is None and optional:
            values[name] = None
            continue
        try:
            values[name] = _value(name, kind, value)
        except ValueError as why:
            raise InputError(
                f"{source}: `sockets` JSON {where}.{name}={_short(value)}: {why}"
            ) from None
    try:
        return cls(**values)
    except TypeError:
        missing = sorted(n for n in types if n not in values)
        raise InputError(
            f"{source}: `sockets` JSON {where} lacks a field it needs ({', '.join(missing)})"
        ) from None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _filtered(
    snap: Snapshot, ports: frozenset[int] | None, addresses: frozenset[str] | None
) -> Snapshot:
    if ports is None and addresses is None:
        return snap
    from tcpsleuth.model.findings import endpoint

    wanted = None
    if addresses is not None:
        wanted = {endpoint(a, 0).rsplit(":", 1)[0] for a in addresses}

    def host(ip: str) -> str:
        return endpoint(ip, 0).rsplit(":", 1)[0]

    def keep(local_ip: str, local_port: int, remote_ip: str | None, remote_port: int) -> bool:
        if ports is not None and local_port not in ports and remote_port not in ports:
            return False
        if wanted is not None:
            hosts = {host(local_ip)} | ({host(remote_ip)} if remote_ip else set())
            if not hosts & wanted:
                return False
        return True

    return dataclasses.replace(
        snap,
        connections=[
            c
            for c in snap.connections
            if keep(c.local_ip, c.local_port, c.remote_ip, c.remote_port)
        ],
        listeners=None
        if snap.listeners is None
        else [x for x in snap.listeners if keep(x.local_ip, x.local_port, None, x.local_port)],
    )


def connection_dict(conn: TcpConnection) -> dict[str, Any]:
    """A connection for JSON: every record field, plus the endpoints as ss writes them.
    (A record's __dict__ is its fields, all plain values: asdict's deep copy is slow
    at 100k connections.)"""
    local, remote = key(conn)
    return {"local": local, "remote": remote, **conn.__dict__}
