"""The parsers that read what a user hands over, each as a fuzz target: bytes in, and
either a result or an :class:`InputError` (one line for the user) out. Anything else
that escapes (an IndexError, a KeyError, an OverflowError, a crash of the process) is
a bug. Seeds are the real fixtures the tests already use.

Used by tests/system/safety/test_fuzz.py (hypothesis, a short run in CI) and scripts/fuzz.py
(atheris, coverage-guided, the long run).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
FIXTURES = TESTS / "fixtures"
DATA = TESTS / "data"
REGRESSIONS = DATA / "fuzz-regressions"
SEED_BYTES = 8192  # seeds cut to their first lines: small inputs fuzz faster

# a scratch directory in memory for the targets that read files
SCRATCH = Path(os.environ.get("TCPSLEUTH_FUZZ_SCRATCH", tempfile.gettempdir()))


def _cut(data: bytes, limit: int = SEED_BYTES) -> bytes:
    if len(data) <= limit:
        return data
    return data[: data.rfind(b"\n", 0, limit) + 1] or data[:limit]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def ss_text(data: bytes) -> None:
    from tcpsleuth.sources.sstext import parse_ss

    parse_ss(_text(data), "fuzz")


def nstat_text(data: bytes) -> None:
    from tcpsleuth.sources.nstattext import parse_nstat

    parse_nstat(_text(data), "fuzz")


def netstat_text(data: bytes) -> None:
    """/proc/net/netstat and /proc/net/snmp: header and value lines in pairs."""
    from tcpsleuth.sources.procfs import parse_counter_pairs

    parse_counter_pairs(_text(data), "fuzz")


def sysctl_text(data: bytes) -> None:
    from tcpsleuth.sources.sysctltext import parse_sysctl

    parse_sysctl(_text(data), "fuzz")


def _scratch_file(name: str, data: bytes) -> Path:
    path = SCRATCH / f"tcpsleuth-fuzz-{os.getpid()}-{name}"
    path.write_bytes(data)
    return path


def kafka_config(data: bytes) -> None:
    from tcpsleuth.sources.kafkaconfig import read_kafka_config

    read_kafka_config(_scratch_file("server.properties", data))


# -- configuration readers (issue 24): each file read as a discovered one is, regular
# files only and within a Budget, so that includes the input names stay bounded


def _config_target(program: str, name: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        from tcpsleuth.sources.config import READERS
        from tcpsleuth.sources.config.common import Budget

        READERS[program](_scratch_file(name, data), Budget(files=32, seconds=10.0))

    target.__name__ = f"{program}_config"
    return target


CONFIG_TARGETS = {
    "nginx-config": _config_target("nginx", "nginx.conf"),
    "zookeeper-config": _config_target("zookeeper", "zoo.cfg"),
    "rabbitmq-config": _config_target("rabbitmq", "rabbitmq.conf"),
    "redis-config": _config_target("redis", "redis.conf"),
    "postgresql-config": _config_target("postgresql", "postgresql.conf"),
    "envoy-config": _config_target("envoy", "envoy.yaml"),
}
SERVERS = FIXTURES / "servers"
CONFIG_SEEDS = {
    "nginx-config": ["nginx.conf", "sites/api.conf"],
    "zookeeper-config": ["zoo.cfg", "zoo-dynamic.cfg"],
    "rabbitmq-config": ["rabbitmq.conf", "rabbitmq.config"],
    "redis-config": ["redis.conf"],
    "postgresql-config": ["postgresql.conf"],
    "envoy-config": ["envoy.yaml"],
}


def sockets_json(data: bytes) -> None:
    """A `sockets --format json` document (or ss text) as `sockets FILE` and `compare`
    read it."""
    from tcpsleuth.sources.socketsnap import _from_text
    from tcpsleuth.sources.textfile import decode_text

    _from_text(decode_text(data, "fuzz", "JSON"), "fuzz", "fuzz")


BUNDLE = FIXTURES / "bundles" / "debian12-6.18-storm"
BUNDLE_FILES = sorted(p.name for p in BUNDLE.iterdir() if p.name != "PROVENANCE.md")


def bundle(data: bytes) -> None:
    """One file of a real bundle replaced by the input (its first byte picks which),
    the bundle read as `audit --bundle` reads it."""
    from tcpsleuth.sources.bundle import read_bundle

    if not data:
        return
    directory = SCRATCH / f"tcpsleuth-fuzz-{os.getpid()}-bundle"
    if not directory.exists():
        shutil.copytree(BUNDLE, directory)
        for name in BUNDLE_FILES:  # small files: faster reads
            (directory / name).write_bytes(_cut((BUNDLE / name).read_bytes()))
    name = BUNDLE_FILES[data[0] % len(BUNDLE_FILES)]
    target = directory / name
    saved = target.read_bytes()
    target.write_bytes(data[1:])
    try:
        read_bundle(directory)
    finally:
        target.write_bytes(saved)


def capture(data: bytes) -> None:
    """A capture file through the reader, the decoder and every capture detector."""
    from tcpsleuth.detectors.capture.run import analyse_stream
    from tcpsleuth.sources.pcap import open_capture

    analyse_stream(open_capture(_scratch_file("capture", data)), frozenset({9092}))


# -- incident directories (issue 24): each file of an incident as `tcpsleuth report`
# reads it (regular files, checked against the recorder's schema), then handed to what
# uses it: the counters and timeline, the events table, the sockets, the rendering

INCIDENT = DATA / "incident-small"


def _incident_file(name: str, data: bytes) -> Path:
    directory = SCRATCH / f"tcpsleuth-fuzz-{os.getpid()}-incident"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def incident_report(data: bytes) -> None:
    """A report.json, as `report DIR` shows it: the table and the HTML sections."""
    import io

    from rich.console import Console

    from tcpsleuth import safefile
    from tcpsleuth.recorder import schema
    from tcpsleuth.reports import html, incident

    path = _incident_file("report.json", data)
    doc = schema.report(safefile.read_file(path, schema.MAX_FILE_BYTES), "report.json")
    Console(file=io.StringIO(), width=120).print(incident.render(doc))
    html.render("fuzz", incident.html_sections(doc, []))


def incident_samples(data: bytes) -> None:
    """samples.jsonl: the counters over the window and the timeline of the report."""
    from tcpsleuth.recorder import analysis, freeze, schema

    samples = freeze.read_lines(_incident_file("samples.jsonl", data), schema.SAMPLE)
    analysis._counters(samples)


def incident_events(data: bytes) -> None:
    from tcpsleuth.recorder import freeze, schema
    from tcpsleuth.reports import incident

    events = freeze.read_lines(_incident_file("events.jsonl", data), schema.EVENT)
    incident.event_rows(events, 100)


def incident_sockets(data: bytes) -> None:
    """A sockets-*.json.gz: the input gzipped unless it is gzip already."""
    from tcpsleuth.recorder import freeze

    packed = data if data[:2] == b"\x1f\x8b" else gzip.compress(data, 1)
    freeze.read_snapshot(_incident_file("sockets-during.json.gz", packed))


def incident_meta(data: bytes) -> None:
    from tcpsleuth.recorder import freeze

    _incident_file("recorder.json", data)
    freeze.read_meta(SCRATCH / f"tcpsleuth-fuzz-{os.getpid()}-incident", to_finish=True)


INCIDENT_TARGETS = {
    "incident-report": incident_report,
    "incident-samples": incident_samples,
    "incident-events": incident_events,
    "incident-sockets": incident_sockets,
    "incident-meta": incident_meta,
}


INCIDENT_FILES = {
    "incident-report": "report.json",
    "incident-samples": "samples.jsonl",
    "incident-events": "events.jsonl",
    "incident-meta": "recorder.json",
}


def _incident_seeds(target: str) -> list[bytes]:
    if target == "incident-sockets":
        names = ("sockets-during.json.gz", "sockets-later.json.gz")
        packed = [(INCIDENT / n).read_bytes() for n in names]
        return [gzip.decompress(p) for p in packed] + packed[:1]
    name = INCIDENT_FILES[target]
    data = (INCIDENT / name).read_bytes()
    return [_cut(data)] if name.endswith(".jsonl") else [data]


TARGETS: dict[str, Callable[[bytes], None]] = {
    "ss": ss_text,
    "nstat": nstat_text,
    "netstat": netstat_text,
    "sysctl": sysctl_text,
    "kafka-config": kafka_config,
    "sockets-json": sockets_json,
    "bundle": bundle,
    "capture": capture,
    **CONFIG_TARGETS,
    **INCIDENT_TARGETS,
}


def _sockets_document() -> bytes:
    import subprocess
    import sys

    return subprocess.run(
        [
            *(sys.executable, "-m", "tcpsleuth", "sockets", "--format", "json"),
            str(FIXTURES / "ss" / "lab-fault-client-tni.txt"),
        ],
        capture_output=True,
        check=False,
        timeout=120,
    ).stdout


@cache
def seeds(target: str) -> tuple[bytes, ...]:
    """The real files a target starts from."""
    if target in INCIDENT_TARGETS:
        return tuple(_incident_seeds(target))
    ss = sorted((FIXTURES / "ss").glob("*.txt"))
    bundles = sorted((FIXTURES / "bundles").iterdir())
    files: list[Path] = {
        "ss": ss + [b / "ss-tni.txt" for b in bundles] + [b / "ss-a.txt" for b in bundles],
        "nstat": sorted(FIXTURES.glob("proc/nstat-*.txt")),
        "netstat": sorted((FIXTURES / "proc").glob("proc-net-*.txt"))
        + [b / "proc-net-netstat.txt" for b in bundles]
        + [b / "proc-net-snmp.txt" for b in bundles],
        "sysctl": [b / "sysctl-a.txt" for b in bundles],
        "kafka-config": sorted((FIXTURES / "kafka").glob("*.properties")),
        "sockets-json": [],
        "bundle": [],
        "capture": [DATA / "go-sniffer-kafka.pcap", DATA / "storm-prefix" / "server.pcap"],
        **{name: [SERVERS / f for f in files] for name, files in CONFIG_SEEDS.items()},
    }[target]
    out = [_cut(p.read_bytes()) for p in files if p.exists()]
    if target == "sockets-json":
        out.append(_cut(_sockets_document(), 1 << 16))
    if target == "bundle":
        out = [bytes([i]) + _cut((BUNDLE / n).read_bytes()) for i, n in enumerate(BUNDLE_FILES)]
    if target == "capture":
        out = [p.read_bytes()[: 1 << 16] for p in files]
        out.append(gzip.compress(out[0]))
        out += _fragmented(files[0])
    return tuple(out)


def _fragmented(capture: Path) -> list[bytes]:
    """The public capture with IPv4 fragments, and as IPv6 with extension headers and
    fragments: seeds that reach the reassembly."""
    from support import pcap_rewrite

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "x.pcap"
        for change in (
            pcap_rewrite.ipv4_fragments(24, hold_back=3),
            pcap_rewrite.sll_ipv4_to_ipv6(pcap_rewrite.FOUR_EXTENSIONS, fragment=16),
        ):
            pcap_rewrite.rewrite(capture, path, change)
            out.append(path.read_bytes())
    return out


def regressions(target: str) -> list[Path]:
    folder = REGRESSIONS / target
    return sorted(folder.iterdir()) if folder.is_dir() else []
