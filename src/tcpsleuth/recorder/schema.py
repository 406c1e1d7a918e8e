"""What each file of an incident must hold, checked before anything uses it: an incident
directory can come from anywhere (a copy from another host, a ticket's attachment), and
a file that is not what the recorder writes is refused with one line naming the file,
the place in it and what is wrong (exit 2), never a crash half-way through a report.

Shapes are plain data: a type (``float`` is any finite number, ``int`` an integer, never
a bool), :class:`Opt` (or null), a one-element list (a list of that), a dict (an
object: keys ending in ``?`` may be missing, ``"*"`` is every other key's value, other
keys are required), :class:`OneOf`, or ``ANY``. JSON is read with NaN and infinities
refused: the recorder never writes them, and a report must stay valid JSON.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import types
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import Finding
from tcpsleuth.model.incident import IncidentReport, ReportError
from tcpsleuth.model.records import Listener, TcpConnection, WindowSample

ANY = object()
MAX_FILE_BYTES = 256 << 20  # an incident's JSON files; a broker's sockets are a few MB
MAX_GZIP_BYTES = 1 << 30  # what a sockets file may unpack to


class SchemaError(InputError):
    """An incident file that is not what the recorder writes."""


@dataclass(frozen=True)
class Opt:
    shape: Any


@dataclass(frozen=True)
class OneOf:
    shapes: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A finite number from ``low`` to ``high``."""

    low: float
    high: float


_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def _describe(shape: Any) -> str:
    if isinstance(shape, Opt):
        return f"{_describe(shape.shape)} or null"
    if isinstance(shape, list):
        return "a list"
    if isinstance(shape, dict):
        return "an object"
    if isinstance(shape, OneOf):
        return " or ".join(_describe(s) for s in shape.shapes)
    if isinstance(shape, Range):
        return f"a number from {shape.low:g} to {shape.high:g}"
    return _NAMES.get(shape, "a value")


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def check(value: Any, shape: Any, where: str) -> None:
    """Raise a SchemaError naming ``where`` (e.g. ``events.jsonl:3: evidence``) if
    ``value`` does not have ``shape``."""
    if shape is ANY:
        return
    if isinstance(shape, Opt):
        if value is not None:
            check(value, shape.shape, where)
        return
    if isinstance(shape, OneOf):
        problems = []
        for option in shape.shapes:
            try:
                check(value, option, where)
                return
            except SchemaError as problem:
                problems.append(str(problem))
        raise SchemaError(problems[0])
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected {_describe(shape)}, found {_what(value)}")
        for index, item in enumerate(value):
            check(item, shape[0], f"{where}[{index}]")
        return
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {_what(value)}")
        for key, inner in shape.items():
            if key == "*":
                continue
            name = key.removesuffix("?")
            if name in value:
                check(value[name], inner, f"{where}.{name}")
            elif not key.endswith("?"):
                raise SchemaError(f"{where}: no {name!r}")
        if "*" in shape:
            known = {k.removesuffix("?") for k in shape}
            for key, item in value.items():
                if key not in known:
                    check(item, shape["*"], f"{where}.{key}")
        return
    if isinstance(shape, Range):
        if not (_fits(value, float) and shape.low <= value <= shape.high):
            found = f"{value:g}" if _fits(value, float) else _what(value)
            raise SchemaError(f"{where}: expected {_describe(shape)}, found {found}")
        return
    if not _fits(value, shape):
        raise SchemaError(f"{where}: expected {_describe(shape)}, found {_what(value)}")


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return "a number"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond what a number can hold")
    return value


def loads(data: bytes, where: str) -> Any:
    """JSON, with NaN and infinities refused; a SchemaError naming ``where``."""
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as problem:
        raise SchemaError(f"{where}: not JSON ({problem})") from None
    except RecursionError:
        raise SchemaError(f"{where}: JSON nested too deeply") from None


def gunzip(data: bytes, where: str) -> bytes:
    """A gzip file's content, at most MAX_GZIP_BYTES of it."""
    try:
        inflate = zlib.decompressobj(wbits=31)
        out = inflate.decompress(data, MAX_GZIP_BYTES)
        if inflate.unconsumed_tail:
            raise SchemaError(f"{where}: unpacks to more than {MAX_GZIP_BYTES >> 20} MiB")
        return out
    except (zlib.error, gzip.BadGzipFile, EOFError) as problem:
        raise SchemaError(f"{where}: not gzip ({problem})") from None


# --- the shapes of the recorder's files -------------------------------------------------

NUMBERS = {"*": float}
# a moment, in seconds since the epoch: 1970 to 2100 (what a clock can show)
EPOCH = Range(0, 4102444800)
WINDOW = {
    "start?": Opt(EPOCH),
    "end?": Opt(EPOCH),
    "first_event?": Opt(EPOCH),
    "last_event?": Opt(EPOCH),
}
META = {
    "ports": [int],
    "window?": Opt(WINDOW),
    "host?": Opt(str),
    "netns?": Opt(str),
    "notes?": [str],
    "capture?": Opt({"*": ANY}),
    "cut_payload?": bool,
    "*": ANY,
}
# make_whole needs the window it copies out of the ring
META_TO_FINISH = {**META, "window": {**WINDOW, "start": EPOCH, "end": EPOCH}}
SAMPLE = {
    "time": EPOCH,
    "seconds?": Opt(float),
    "counters": NUMBERS,
    "grown?": NUMBERS,
    "listeners?": [{"*": ANY}],
    "*": ANY,
}
EVENT = {
    "time": EPOCH,
    "kind": str,
    "summary?": Opt(str),
    "evidence?": Opt({"*": ANY}),
    "*": ANY,
}
TRACE_SKIPPED_OR_SAMPLES = OneOf(({"skipped": str}, {"samples": int, "connections": int}))


def _dataclass_shape(cls: type, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The shape of a record's fields (their annotations: int, float, str, bool, and
    the same or None); fields with a default may be missing."""
    hints = typing.get_type_hints(cls)
    shape: dict[str, Any] = {"*": ANY}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        if base not in _NAMES:
            continue
        has_default = f.default is not dataclasses.MISSING
        shape[f.name + ("?" if has_default else "")] = Opt(base) if optional else base
    return shape


LISTENER_FIELDS = ("local_ip", "local_port", "backlog", "accept_queue", "rcvbuf", "inode")
SOCKETS = {
    "taken?": Opt(EPOCH),
    "ports?": [int],
    "listeners": [_dataclass_shape(Listener, LISTENER_FIELDS)],
    "connections": [_dataclass_shape(TcpConnection)],
    "*": ANY,
}
TRACE_ROW = _dataclass_shape(WindowSample)

MISMATCH_ROW = {
    "client": str,
    "server": str,
    "announced_wscale": Opt(int),
    "inferred_wscale": Opt(int),
    "server_rcv_wscale": Opt(int),
    "syn_cookie": bool,
    "*": ANY,
}
LIMITED_ROW = {
    "client": str,
    "server": str,
    "sender": str,
    "rwnd_limited_ms": float,
    "rwnd_limited_share": float,
    "min_window_bytes": Opt(float),
    "client_id?": Opt(str),
    "*": ANY,
}
KAFKA_ROW = {
    "client": str,
    "server": str,
    "api": ANY,
    "requests": int,
    "send_ms_p50": Opt(float),
    "send_ms_p99": Opt(float),
    "broker_ms_p50": Opt(float),
    "*": ANY,
}
FINDING = {
    "kind": str,
    "severity": str,
    "subject": {"*": ANY},
    "summary": str,
    "evidence?": {"*": ANY},
    "advice?": str,
    "*": ANY,
}
# what `tcpsleuth report` shows of a report.json
REPORT = {
    "schema_version?": int,
    "incident?": Opt(str),
    "host?": Opt(str),
    "ports?": [int],
    "window?": Opt(WINDOW),
    "events?": [{"kind?": ANY, "time?": Opt(EPOCH), "summary?": ANY, "evidence?": ANY, "*": ANY}],
    "timeline?": [{"time": EPOCH, "seconds?": Opt(float), "grown": NUMBERS, "*": ANY}],
    "capture?": Opt(
        {
            "kernel_drops?": Opt(int),
            "handshakes?": ANY,
            "connections?": Opt(int),
            "kafka?": Opt([KAFKA_ROW]),
            "payload_cut?": ANY,
            "*": ANY,
        }
    ),
    # the counts the report does arithmetic on (cookie, ordinary and undecided add up)
    "syn_cookies?": Opt(
        {
            "sent?": Opt(float),
            "connections?": Opt(int),
            "cookie_connections?": Opt(int),
            "ordinary_connections?": Opt(int),
            "undecided_connections?": Opt(int),
            "undecided_why?": Opt({"*": int}),
            "sent_not_in_capture?": Opt(int),
            "*": ANY,
        }
    ),
    "wscale_mismatch?": Opt({"count?": Opt(int), "connections?": [MISMATCH_ROW], "*": ANY}),
    "rwnd_limited?": Opt({"count?": Opt(int), "connections?": [LIMITED_ROW], "*": ANY}),
    "sockets?": Opt(
        {
            "during": {"connections": int, "*": ANY},
            "later": {"connections": int, "*": ANY},
            "*": ANY,
        }
    ),
    "trace?": Opt(TRACE_SKIPPED_OR_SAMPLES),
    "notes?": [str],
    "findings?": [FINDING],
    "*": ANY,
}


def document(data: bytes, shape: Any, where: str) -> Any:
    """A JSON document of ``shape``."""
    doc = loads(data, where)
    check(doc, shape, where)
    return doc


def report(data: bytes, where: str) -> IncidentReport:
    """A report.json: its shape, findings tcpsleuth knows (kind and severity), and the
    keys the report's types need (:mod:`tcpsleuth.model.incident`)."""
    doc = document(data, REPORT, where)
    for index, finding in enumerate(doc.get("findings", [])):
        try:
            Finding.from_dict(finding)
        except (ValueError, KeyError, TypeError) as problem:
            raise SchemaError(f"{where}.findings[{index}]: {problem}") from None
    try:
        return IncidentReport.read(doc, where)
    except ReportError as problem:
        raise SchemaError(str(problem)) from None


def lines(data: bytes, shape: Any, where: str) -> list[dict[str, Any]]:
    """JSON lines of ``shape``. A last line without its newline is what a recorder
    killed mid-write leaves: it is left out; any other line must be whole."""
    text = data.split(b"\n")
    torn = text.pop() if text and not data.endswith(b"\n") else b""
    out = []
    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        record = loads(line, f"{where}:{number}")
        check(record, shape, f"{where}:{number}")
        out.append(record)
    if torn.strip():
        try:
            record = loads(torn, where)
            check(record, shape, where)
            out.append(record)
        except SchemaError:
            pass  # cut off mid-write
    return out


def name_of(path: Path) -> str:
    """A file named by its incident and its own name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
