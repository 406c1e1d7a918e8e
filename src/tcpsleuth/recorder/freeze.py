"""The evidence of an incident while it lasts, gathered in a staging directory
(``.incident-<time>.partial``) that becomes ``incident-<time>/`` once whole:

| file                  | what                                                     |
|-----------------------|----------------------------------------------------------|
| ring-links/           | hard links to the ring files of the window (removed once |
|                       | capture.pcap is written): the ring cannot delete them    |
| capture.pcap          | the window's packets (see :mod:`.capture`)               |
| sockets-during.json.gz| sock_diag of the port's connections at the first event   |
| sockets-later.json.gz | the same, some seconds after the last event (gzip: a     |
|                       | broker's thousands of sockets with their tcp_info)       |
| bundle/               | the host as ``tcpsleuth collect`` writes it              |
| trace.jsonl           | a short ``tcpsleuth trace`` (or trace-skipped.txt: why)  |
| events.jsonl          | the events that made the incident                        |
| samples.jsonl         | the counters and listeners sampled over the window       |
| recorder.json         | the recorder's settings, window, capture counts, notes   |
| report.json / .html   | the analysis (:mod:`.analysis`)                          |

Everything is written with mode 0600 in directories of mode 0700 (the recorder's
umask): captures can hold credentials. Every write goes through :mod:`tcpsleuth.safefile`
(a new file renamed into place, never through a symbolic link), and every read of an
incident through it and :mod:`.schema` (regular files only, each checked for the shape
the recorder writes): ``tcpsleuth report`` reads incidents handed over from anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tcpsleuth import safefile
from tcpsleuth.errors import InputError
from tcpsleuth.model.records import Listener, TcpConnection, WindowSample
from tcpsleuth.recorder import schema
from tcpsleuth.recorder.ring import RingFile
from tcpsleuth.sources import sockdiag
from tcpsleuth.sources.bundle import write_bundle

LINKS = "ring-links"
META = "recorder.json"
EVENTS = "events.jsonl"
SAMPLES = "samples.jsonl"
CAPTURE = "capture.pcap"
DURING, LATER = "sockets-during.json.gz", "sockets-later.json.gz"
TRACE, TRACE_SKIPPED = "trace.jsonl", "trace-skipped.txt"
BUNDLE = "bundle"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"


def staging_dir(directory: Path, name: str) -> Path:
    return directory / f".{name}.partial"


def final_dir(staging: Path) -> Path:
    return staging.parent / staging.name.removeprefix(".").removesuffix(".partial")


def make_staging(directory: Path, name: str) -> Path:
    path = staging_dir(directory, name)
    for made in (path, path / LINKS):
        if not safefile.make_dir(made) and (why := safefile.unusable_dir(made)):
            raise safefile.WriteError(f"{made}: not the recorder's own directory ({why})")
    return path


def link_ring(files: Iterable[RingFile], staging: Path) -> int:
    """Hard-link ring files into the incident; how many new links."""
    made = 0
    for ring_file in files:
        target = staging / LINKS / ring_file.path.name
        if target.exists():
            continue
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            os.link(ring_file.path, target)
            made += 1
    return made


def write_json(path: Path, doc: Any, indent: int | None = 1, sync: bool = False) -> None:
    text = json.dumps(
        doc, indent=indent, default=str, separators=None if indent else (",", ":"), allow_nan=False
    )
    data = gzip.compress(text.encode(), 6) if path.suffix == ".gz" else text.encode()
    safefile.write_file(path, data, 0o600, sync=sync)


def append_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, default=str, allow_nan=False) + "\n" for r in records)
    safefile.append_file(path, data.encode())


def read_lines(path: Path, shape: Any = schema.ANY) -> list[dict[str, Any]]:
    """The records of a JSON-lines file of the incident, each of ``shape``."""
    if not os.path.lexists(path):
        return []
    return schema.lines(
        safefile.read_file(path, schema.MAX_FILE_BYTES), {"*": schema.ANY}
        if shape is schema.ANY else shape, schema.name_of(path)
    )  # fmt: skip


def read_meta(directory: Path, to_finish: bool = False) -> dict[str, Any]:
    """The incident's recorder.json."""
    path = directory / META
    shape = schema.META_TO_FINISH if to_finish else schema.META
    data = safefile.read_file(path, schema.MAX_FILE_BYTES)
    return typing.cast(dict[str, Any], schema.document(data, shape, schema.name_of(path)))


def socket_snapshot(netns: str | None, ports: frozenset[int], path: Path, taken: float) -> int:
    """The port's sockets with their tcp_info, as sock_diag reads them; how many."""
    table = sockdiag.snapshot(netns, ports=ports)
    write_json(
        path,
        {
            "taken": taken,
            "ports": sorted(ports),
            "listeners": [
                {
                    "local_ip": x.local_ip,
                    "local_port": x.local_port,
                    "backlog": x.backlog,
                    "accept_queue": x.accept_queue,
                }
                for x in table.listeners
            ],
            "connections": [
                {k: v for k, v in dataclasses.asdict(c).items() if v is not None}
                for c in table.connections
            ],
        },
        indent=None,
    )
    return len(table.connections)


def read_snapshot(path: Path) -> tuple[list[Listener], list[TcpConnection], float | None]:
    if not os.path.lexists(path):
        return [], [], None
    where = schema.name_of(path)
    data = schema.gunzip(safefile.read_file(path, schema.MAX_FILE_BYTES), where)
    doc = schema.document(data, schema.SOCKETS, where)
    names = {f.name for f in dataclasses.fields(TcpConnection)}
    connections = [
        TcpConnection(**{k: v for k, v in c.items() if k in names}) for c in doc["connections"]
    ]
    listeners = [
        Listener(**{k: v for k, v in x.items() if k in schema.LISTENER_FIELDS})
        for x in doc["listeners"]
    ]
    return listeners, connections, doc.get("taken")


def bundle(staging: Path, netns: str | None, kafka_config: Path | None) -> str | None:
    """The host bundle; None, or why it could not be written."""
    try:
        write_bundle(staging / BUNDLE, netns, kafka_config)
    except (InputError, OSError) as problem:
        return f"no bundle: {problem}"
    return None


def trace_rows(samples: Iterable[WindowSample]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in samples]


def read_trace(path: Path) -> list[WindowSample]:
    names = {f.name for f in dataclasses.fields(WindowSample)}
    return [
        WindowSample(**{k: v for k, v in row.items() if k in names})
        for row in read_lines(path, schema.TRACE_ROW)
    ]
