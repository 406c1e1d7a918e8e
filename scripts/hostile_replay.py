#!/usr/bin/env python3
"""Replay a table of hostile and careless inputs across every command and check the
contract of each run (README, exit codes):

- exit 0 or 1 only with a valid JSON document on stdout when --format json was asked;
- exit 2 with exactly one line on stderr;
- no traceback, no other exit status (3 is a bug in tcpsleuth), no hang (60 s);
- nothing left behind: no process of the run's session, no network namespace under
  /run/netns named for the run's process (tcpsleuth-ROLE-PID-N), no file in the
  run's own $TMPDIR, no partial bundle;
- every input file unchanged (hashed before and after), and the mode of every
  directory a case names unchanged (``record --dir`` on a 1777 directory or a symlink);
- no control character (an escape sequence read from a bundle, an incident or a
  process name) in the table output or on stderr: only newlines and tabs.

    python3 scripts/hostile_replay.py            # the whole table
    python3 scripts/hostile_replay.py --list     # the cases, one a line
    python3 scripts/hostile_replay.py -k pcap    # the cases whose name contains pcap

Ends with 'N passed, N failed'; exit 1 when any case broke the contract.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
KAFKA_PCAP = REPO / "tests" / "data" / "go-sniffer-kafka.pcap"
BUNDLE = FIXTURES / "bundles" / "debian12-6.18-storm"
SS_CLIENT = FIXTURES / "ss" / "lab-fault-client-tni.txt"
SS_SERVER = FIXTURES / "ss" / "lab-clean-server-tni.txt"
SS_LISTENERS = FIXTURES / "ss" / "iproute2-6.1-ltnmp-servers.txt"
INCIDENT = REPO / "tests" / "data" / "incident-small"
NETNS_DIR = Path("/run/netns")
# what a hostile process name, hostname or client.id carries: retitle, clear, colour
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m"
BIG = "9" * 5000  # Python refuses to read more than 4,300 digits as an int
# control characters but newline and tab: none may reach a terminal from the input
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Case:
    name: str
    argv: list[str]
    stdin: bytes = b""
    # a directory the command may create (collect): absent after exit 2, whole after 0/1
    creates: str | None = None
    fifo: str | None = None  # a FIFO in the inputs that a writer feeds KAFKA_PCAP into
    timeout: float = 60.0
    modes: list[str] = field(default_factory=list)  # paths whose mode must not change


@dataclass
class Outcome:
    case: Case
    status: int | None
    breaks: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- the inputs ---------------------------------------------------------------------------


def _pcap(linktype: int, frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for index, frame in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + index, 0, len(frame), len(frame)) + frame
    return out


def make_inputs(root: Path) -> dict[str, str]:
    """Hostile files, each as a careless or hostile user would hand it over."""
    files: dict[str, bytes] = {
        "empty": b"",
        "zeros": b"\x00" * 4096,
        "binary": bytes(range(256)) * 16,
        "one-long-line": b"x" * 200_000,
        "latin1.properties": "listeners=PLAINTEXT://caf\xe9:9092\n".encode("latin-1"),
        "bad.properties": b"listeners=PLAINTEXT://:99999\nsocket.listen.backlog.size=-1\n",
        "huge-buffer.properties": b"socket.receive.buffer.bytes=2147483648\n",
        "nan.properties": b"socket.listen.backlog.size=nan\n",
        "brace": b"{",
        "json-array": b"[1, 2, 3]",
        "json-other-command": b'{"command": "audit"}',
        "json-connections-int": b'{"command": "sockets", "connections": [1]}',
        "json-deep": b'{"command": "sockets", "connections": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        "json-bad-address": json.dumps(
            {
                "command": "sockets",
                "connections": [
                    {"local_ip": "10.0.0.999", "local_port": 1, "remote_ip": "1.2.3.4"}
                ],
            }
        ).encode(),
        "ss-port-99999": b"State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"
        b"ESTAB 0 0 10.0.0.1:99999 10.0.0.2:1\n",
        "ss-wscale-99": b"State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"
        b"ESTAB 0 0 10.0.0.1:1 10.0.0.2:1\n\t cubic wscale:99,99 rtt:1/0.5\n",
        "ss-markup-[red]x[bold]": SS_CLIENT.read_bytes(),
        "ss-[/x]": SS_SERVER.read_bytes(),
        "ss-truncated": SS_CLIENT.read_bytes()[:333],
        "pcap-truncated-header": KAFKA_PCAP.read_bytes()[:10],
        "pcap-truncated-record": KAFKA_PCAP.read_bytes()[:100],
        "pcap-linktype-147": _pcap(147, [b"\x45" + b"\x00" * 59] * 3),
        "pcap-eth-as-raw": _pcap(101, [b"\x00\x11\x22\x33\x44\x55" * 2 + b"\x08\x00"] * 3),
        "pcap-no-packets": _pcap(1, []),
        "pcap-huge-caplen": KAFKA_PCAP.read_bytes()[:24] + struct.pack("<IIII", 1, 0, 2**31, 60),
        "pcap-bad-version": KAFKA_PCAP.read_bytes()[:4] + b"\x07\x00" + KAFKA_PCAP.read_bytes()[6:],
        "pcap-gzip-corrupt": gzip.compress(KAFKA_PCAP.read_bytes())[:60] + b"\x00" * 40,
        "pcap-gzip-empty": gzip.compress(b""),
        "pcapng-bad-bom": b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 16,
        "kafka.pcap": KAFKA_PCAP.read_bytes(),
        "kafka-[red].pcap": KAFKA_PCAP.read_bytes(),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)  # "ss-[/x]": "x]" in "ss-["
        (root / name).write_bytes(data)
    paths = {name: str(root / name) for name in files}
    (root / "a-directory").mkdir()
    paths["a-directory"] = str(root / "a-directory")
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    paths["symlink-loop"] = str(root / "loop-a")
    paths["missing"] = str(root / "does-not-exist")
    for fifo in ("fifo", "fifo2"):  # one for each case that reads one (cases run side by side)
        os.mkfifo(root / fifo)
        paths[fifo] = str(root / fifo)
    # bundles: a whole one, one without sysctl, one with hostile text in it
    shutil.copytree(BUNDLE, root / "bundle")
    paths["bundle"] = str(root / "bundle")
    shutil.copytree(BUNDLE, root / "bundle-no-sysctl")
    (root / "bundle-no-sysctl" / "sysctl-a.txt").unlink()
    paths["bundle-no-sysctl"] = str(root / "bundle-no-sysctl")
    shutil.copytree(BUNDLE, root / "bundle-hostile")
    (root / "bundle-hostile" / "hostname.txt").write_text("[/x]broker\n")
    (root / "bundle-hostile" / "uname-r.txt").write_text("\x00\xff[red]\n")
    (root / "bundle-hostile" / "sysctl-a.txt").write_bytes(b"net.core.somaxconn = nan\n\xff\xfe")
    paths["bundle-hostile"] = str(root / "bundle-hostile")
    shutil.copytree(BUNDLE, root / "bundle-empty-ss")
    (root / "bundle-empty-ss" / "ss-tni.txt").write_bytes(b"")
    paths["bundle-empty-ss"] = str(root / "bundle-empty-ss")
    paths.update(_numbers_and_escapes(root))
    paths.update(_hostile_bundles(root))
    paths.update(_incidents(root))
    os.mkfifo(root / "fifo-nowriter")  # nobody ever writes: reading it must not wait
    paths["fifo-nowriter"] = str(root / "fifo-nowriter")
    return paths


def _numbers_and_escapes(root: Path) -> dict[str, str]:
    """Real `ss` output with one value replaced: numbers that only look like numbers
    (a superscript, Arabic-Indic digits, 5,000 digits, nan) and process names with
    escape sequences."""
    client = SS_CLIENT.read_text()
    listeners = SS_LISTENERS.read_text()
    texts = {
        "ss-superscript": client.replace("mss:1448", "mss:1\u00b2"),
        "ss-arabic-indic": client.replace("mss:1448", "mss:\u0661\u0664"),
        "ss-5000-digits": client.replace("mss:1448", f"mss:{BIG}"),
        "ss-rtt-5000-digits": client.replace("rtt:0.021/", f"rtt:{BIG}/"),
        "ss-rtt-nan": client.replace("rtt:0.021/", "rtt:nan/"),
        "ss-port-superscript": client.replace("198.18.0.1:9092", "198.18.0.1:9\u00b2"),
        "ss-listeners-escapes": listeners.replace('"nginx"', f'"{ESCAPES}nginx"'),
        "ss-listeners-pid-5000-digits": listeners.replace("pid=24389", f"pid={BIG}"),
        "json-5000-digits": json.dumps(
            {
                "command": "sockets",
                "connections": [{"local_ip": "10.0.0.1", "local_port": 1, "remote_ip": "10.0.0.2"}],
            }
        ).replace('"local_port": 1', f'"local_port": {BIG}'),
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    return {name: str(root / name) for name in texts}


def _bundle(root: Path, name: str, **files: str | bytes) -> str:
    """The storm bundle with files replaced (``ss_ltnmp_txt`` is ss-ltnmp.txt)."""
    directory = root / name
    shutil.copytree(BUNDLE, directory)
    for key, content in files.items():
        path = directory / key.replace("_txt", ".txt").replace("_", "-")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return str(directory)


def _hostile_bundles(root: Path) -> dict[str, str]:
    listeners = SS_LISTENERS.read_text()
    netstat = (BUNDLE / "proc-net-netstat.txt").read_text()
    paths = {
        "bundle-escapes": _bundle(
            root,
            "bundle-escapes",
            hostname_txt=f"{ESCAPES}broker\n",
            ss_ltnmp_txt=listeners.replace('"nginx"', f'"{ESCAPES}nginx"'),
        ),
        "bundle-5000-digits": _bundle(
            root,
            "bundle-5000-digits",
            ss_ltnmp_txt=listeners.replace("rb196608", f"rb{BIG}"),
        ),
        "bundle-counter-5000-digits": _bundle(
            root,
            "bundle-counter-5000-digits",
            proc_net_netstat_txt=netstat.replace(" 0", f" {BIG}", 1),
        ),
        "bundle-superscript": _bundle(
            root,
            "bundle-superscript",
            uname_r_txt="\u00b2.18.44\n",
            proc_net_netstat_txt=netstat.replace(" 0", " \u00b2", 1),
        ),
        "bundle-release-5000-digits": _bundle(
            root, "bundle-release-5000-digits", uname_r_txt=f"{BIG}.1.0\n"
        ),
    }
    fifo = Path(_bundle(root, "bundle-fifo"))
    (fifo / "ss-tni.txt").unlink()
    os.mkfifo(fifo / "ss-tni.txt")
    paths["bundle-fifo"] = str(fifo)
    for name, member, target in (
        ("bundle-link-out", "hostname.txt", "/etc/shadow"),
        ("bundle-link-device", "sysctl-a.txt", "/dev/zero"),
        ("bundle-link-up", "ss-tni.txt", "../ss-[/x]"),
    ):
        directory = Path(_bundle(root, name))
        (directory / member).unlink()
        (directory / member).symlink_to(target)
        paths[name] = str(directory)
    return paths


def _incident(root: Path, name: str, **files: str | bytes | None) -> str:
    """The small real incident with files replaced (None: removed, "FIFO": a FIFO)."""
    directory = root / name
    shutil.copytree(INCIDENT, directory)
    for filename, content in files.items():
        path = directory / filename.replace("__", ".").replace("_", "-")
        if path.exists() or path.is_symlink():
            path.unlink()
        if content == "FIFO":
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
    return str(directory)


def _incidents(root: Path) -> dict[str, str]:
    """Incident directories as a colleague might hand them over. report.json is removed
    where the case is about the evidence: `report` then analyses it (and may save the
    result: each such directory serves one case only)."""
    report = json.loads((INCIDENT / "report.json").read_text())
    report["host"] = f"{ESCAPES}broker"
    samples = (INCIDENT / "samples.jsonl").read_text().splitlines()
    untimed = "".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "time"}) + "\n"
        for line in samples
    )
    return {
        "incident": _incident(root, "incident"),
        "incident-json": _incident(root, "incident-json"),
        "incident-report-a-list": _incident(root, "incident-report-a-list", report__json="[1, 2]"),
        "incident-report-escapes": _incident(
            root, "incident-report-escapes", report__json=json.dumps(report)
        ),
        "incident-samples-untimed": _incident(
            root, "incident-samples-untimed", report__json=None, samples__jsonl=untimed
        ),
        "incident-gz-not-gzip": _incident(
            root,
            "incident-gz-not-gzip",
            report__json=None,
            sockets_during__json__gz=b'{"connections": []}',
        ),
        "incident-report-fifo": _incident(root, "incident-report-fifo", report__json="FIFO"),
        "incident-events-fifo": _incident(
            root, "incident-events-fifo", report__json=None, events__jsonl="FIFO"
        ),
    }


def _writable_places(out: Path, victims: Path) -> dict[str, str]:
    """Places a run may write into (not hashed): an incident whose report files are
    symlinks to files of the inputs (which must stay as they are), a 1777 directory
    and a symlink to a directory for `record --dir`."""
    out.mkdir(parents=True, exist_ok=True)
    victims.mkdir(parents=True, exist_ok=True)
    for name in ("victim-html", "victim-json-tmp"):
        (victims / name).write_text("a file the incident's sender pointed at\n")
    linked = Path(_incident(out, "incident-linked-reports"))
    (linked / "report.html").symlink_to(victims / "victim-html")
    (linked / "report.json.tmp").symlink_to(victims / "victim-json-tmp")
    sticky = out / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    real = out / "real-dir"
    real.mkdir()
    real.chmod(0o755)
    (out / "dir-link").symlink_to(real)
    return {
        "incident-linked-reports": str(linked),
        "sticky": str(sticky),
        "real-dir": str(real),
        "dir-link": str(out / "dir-link"),
    }


# -- the table ----------------------------------------------------------------------------

BAD_NETNS = ["", ".", "..", "../../etc/passwd", "a/b", "does-not-exist", "x" * 300, "-", "\x01"]
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e999", "99999999999999999999", "", "1,5"]
TEXT_INPUTS = [
    "empty",
    "zeros",
    "binary",
    "one-long-line",
    "brace",
    "json-array",
    "json-other-command",
    "json-connections-int",
    "json-deep",
    "json-bad-address",
    "ss-port-99999",
    "ss-wscale-99",
    "ss-markup-[red]x[bold]",
    "ss-[/x]",
    "ss-truncated",
    "a-directory",
    "symlink-loop",
    "missing",
    "kafka.pcap",
    "/dev/null",
    "/dev/zero",
    "/proc/self/mem",
    "bundle-empty-ss",
    "ss-superscript",
    "ss-arabic-indic",
    "ss-5000-digits",
    "ss-rtt-5000-digits",
    "ss-rtt-nan",
    "ss-port-superscript",
    "ss-listeners-escapes",
    "ss-listeners-pid-5000-digits",
    "json-5000-digits",
]
CAPTURES = [
    "empty",
    "zeros",
    "binary",
    "one-long-line",
    "pcap-truncated-header",
    "pcap-truncated-record",
    "pcap-linktype-147",
    "pcap-eth-as-raw",
    "pcap-no-packets",
    "pcap-huge-caplen",
    "pcap-bad-version",
    "pcap-gzip-corrupt",
    "pcap-gzip-empty",
    "pcapng-bad-bom",
    "kafka.pcap",
    "kafka-[red].pcap",
    "a-directory",
    "symlink-loop",
    "missing",
    "/dev/null",
    "/dev/zero",
]
PROPERTIES = [
    "latin1.properties",
    "bad.properties",
    "huge-buffer.properties",
    "nan.properties",
    "empty",
    "binary",
    "one-long-line",
    "a-directory",
    "symlink-loop",
    "missing",
    "/dev/zero",
    "fifo-without-writer",
    "fifo-nowriter",
]
BUNDLES = [
    "bundle",
    "bundle-no-sysctl",
    "bundle-hostile",
    "bundle-empty-ss",
    "kafka.pcap",
    "missing",
    "symlink-loop",
    "/proc",
    "/",
    "/dev/null",
    "bundle-escapes",
    "bundle-5000-digits",
    "bundle-counter-5000-digits",
    "bundle-superscript",
    "bundle-release-5000-digits",
    "bundle-fifo",
    "bundle-link-out",
    "bundle-link-device",
    "bundle-link-up",
]
INCIDENTS = [
    "incident",
    "incident-report-a-list",
    "incident-report-escapes",
    "incident-samples-untimed",
    "incident-gz-not-gzip",
    "incident-report-fifo",
    "incident-events-fifo",
]
FORMATS = ["table", "json"]


def table(paths: dict[str, str], out: Path) -> list[Case]:
    # the victims live among the inputs: hashed, they must not change
    victims = Path(paths["empty"]).parent / "victims"
    paths = {**paths, **_writable_places(out / "places", victims)}

    def p(name: str) -> str:
        if name == "fifo-without-writer":
            return "/dev/stdin"  # stdin: an empty pipe that ends at once
        return paths.get(name, name)

    cases: list[Case] = []

    def add(name: str, *argv: str, **extra: object) -> None:
        cases.append(Case(name, list(argv), **extra))  # type: ignore[arg-type]

    # usage errors every command shares
    for command in ["doctor", "audit", "collect", "trace", "sockets", "compare", "watch"]:
        add(f"{command} --format xml", command, "--format", "xml")
        add(f"{command} --no-such-option", command, "--no-such-option")
    for command in ["exporter", "probe", "pcap", "lab run", "lab list", "lab kernel list"]:
        add(f"{command} --no-such-option", *command.split(), "--no-such-option")
    add("no such command", "no-such-command")
    add("pcap without files", "pcap")
    add("compare with one file", "compare", paths["ss-[/x]"])
    # --netns in every command that takes it
    for name in BAD_NETNS:
        for command in ["doctor", "audit", "sockets", "watch", "trace", "exporter"]:
            add(f"{command} --netns {name!r}", command, "--netns", name)
        add(f"collect --netns {name!r}", "collect", "--netns", name, str(out / f"ns-{len(cases)}"))
        add(f"sockets netns:{name!r}", "sockets", f"netns:{name}")
    # numbers that are not what they look like
    for value in BAD_NUMBERS:
        add(f"watch --interval {value!r}", "watch", "--interval", value, "--count", "1")
        add(f"watch --cookie-rate {value!r}", "watch", "--cookie-rate", value, "--count", "1")
        if value != "99999999999999999999":  # a count that big is "until stopped": valid
            add(f"watch --count {value!r}", "watch", "--count", value)
        add(f"trace --duration {value!r}", "trace", "--duration", value)
        add(f"trace --sample-ms {value!r}", "trace", "--sample-ms", value, "--duration", "0.5")
        add(f"trace --port {value!r}", "trace", "--port", value, "--duration", "0.5")
        add(f"sockets --limit {value!r}", "sockets", "--limit", value, paths["ss-[/x]"])
        add(f"probe --rcvbuf {value!r}", "probe", "--rcvbuf", value)
        if value != "0":  # 0 ms is a valid link: the lab would run
            add(f"lab run --rtt-ms {value!r}", "lab", "run", "--rtt-ms", value, "baseline")
        add(f"exporter --max-ports {value!r}", "exporter", "--max-ports", value)
    for value in ["99999", "65536", "-5", "2147483648"]:
        add(f"trace --port {value}", "trace", "--port", value)
        add(f"sockets --port {value}", "sockets", "--port", value, paths["ss-[/x]"])
        add(f"pcap --kafka-port {value}", "pcap", "--kafka-port", value, paths["kafka.pcap"])
        add(f"probe --rcvbuf {value}", "probe", "--rcvbuf", value)
    for listen in ["", ":", "nohost:1", "127.0.0.1:99999", "[::1", "127.0.0.1:-1", "x" * 300]:
        add(f"exporter --listen {listen!r}", "exporter", "--listen", listen)
    # ports that only look like numbers (str.isdigit takes both; int() refuses both)
    for name, listen in [("superscript", "127.0.0.1:9\u00b2"), ("5000 digits", f"127.0.0.1:{BIG}")]:
        add(f"exporter --listen ({name})", "exporter", "--listen", listen)
        add(
            f"record --metrics-listen ({name})",
            "record",
            "--port",
            "9092",
            "--dir",
            str(out / f"metrics-listen-{len(cases)}"),
            "--metrics-listen",
            listen,
            "--duration",
            "1",
            "--trace",
            "0",
        )
    for address in ["10.0.0.999", "::g", "", "[/x]"]:
        add(f"sockets --address {address!r}", "sockets", "--address", address, paths["ss-[/x]"])
    # snapshot files: sockets and compare, both formats
    for name in TEXT_INPUTS:
        for fmt in FORMATS:
            add(f"sockets {name} ({fmt})", "sockets", p(name), "--format", fmt)
        add(f"compare {name}", "compare", p(name), paths["ss-[/x]"], "--format", "json")
    add("sockets - (binary on stdin)", "sockets", "-", stdin=bytes(range(256)) * 64)
    add("sockets - (json on stdin)", "sockets", "-", "--format", "json", stdin=b'{"command":1}')
    add("sockets - (empty stdin)", "sockets", "-")
    # captures: pcap with every output
    for name in CAPTURES:
        for fmt in FORMATS:
            add(f"pcap {name} ({fmt})", "pcap", p(name), "--format", fmt)
    add("pcap a FIFO (json)", "pcap", paths["fifo"], "--format", "json", fifo="fifo")
    plots = str(out / "fifo-plots")
    add("pcap a FIFO (plot)", "pcap", paths["fifo2"], "--plot", plots, fifo="fifo2")
    add("pcap stdin pipe", "pcap", "/dev/stdin", "--format", "json", stdin=KAFKA_PCAP.read_bytes())
    for place in ["/missing-dir/r.html", "/dev/full", "/proc/r.html", paths["a-directory"]]:
        add(f"pcap --html {place}", "pcap", "--html", place, paths["kafka.pcap"])
    for place in ["/proc/plots", "/sys/plots", paths["kafka.pcap"], "/dev/null"]:
        add(f"pcap --plot {place}", "pcap", "--plot", place, paths["kafka.pcap"])
    add("pcap two captures, one bad", "pcap", paths["kafka.pcap"], paths["zeros"])
    add(
        "pcap all connections", "pcap", "--all-connections", "--format", "json", paths["kafka.pcap"]
    )
    # Kafka configurations
    for name in PROPERTIES:
        for command in ["audit", "doctor", "probe"]:
            add(f"{command} --kafka-config {name}", command, "--kafka-config", p(name))
        add(
            f"collect --kafka-config {name}",
            "collect",
            "--kafka-config",
            p(name),
            str(out / f"kc-{len(cases)}"),
            creates=str(out / f"kc-{len(cases)}"),
        )
    # bundles
    for name in BUNDLES:
        for command in ["audit", "doctor"]:
            for fmt in FORMATS:
                add(
                    f"{command} --bundle {name} ({fmt})",
                    command,
                    "--bundle",
                    p(name),
                    "--format",
                    fmt,
                )
        add(f"sockets {name} (as a bundle)", "sockets", p(name), "--format", "json")
    for example in ["incident-broker", "", "../x", "[red]"]:
        add(f"doctor --example {example!r}", "doctor", "--example", example, "--format", "json")
    add("audit --config", "audit", "--config", "nginx=" + paths["binary"])
    add("audit --config FIFO", "audit", "--config", "nginx=" + paths["fifo-nowriter"])
    # names the kernel refuses: a component over 255 bytes, a path over 4,096 (ENAMETOOLONG)
    for what, name in [("long name", "/tmp/" + "x" * 300), ("long path", "/tmp/" + "/y" * 2100)]:
        pcap, incident = paths["kafka.pcap"], paths["incident"]
        for label, argv in (
            ("sockets", ["sockets", name]),
            ("compare", ["compare", name, paths["ss-[/x]"]]),
            ("audit --bundle", ["audit", "--bundle", name]),
            ("doctor --kafka-config", ["doctor", "--kafka-config", name]),
            ("pcap", ["pcap", name]),
            ("pcap --html", ["pcap", "--html", name, pcap]),
            ("report", ["report", name]),
            ("report --html", ["report", incident, "--html", name]),
            ("collect", ["collect", name]),
            ("record --dir", ["record", "--port", "9092", "--dir", name, "--duration", "1"]),
        ):
            add(f"{label} ({what})", *argv)
    # incidents handed over, and the recorder's directory in careless places
    for name in INCIDENTS:
        add(f"report {name}", "report", paths[name])
    add("report incident (json)", "report", paths["incident-json"], "--format", "json")
    add(
        "report --again, report files linked out",
        "report",
        paths["incident-linked-reports"],
        "--again",
    )
    for place in ("sticky", "dir-link"):
        add(
            f"record --dir {place}",
            "record",
            "--port",
            "9092",
            "--dir",
            paths[place],
            "--duration",
            "1",
            "--trace",
            "0",
            modes=[paths[place], paths["real-dir"]],
        )
    add("audit --config without =", "audit", "--config", "nginx")
    add("audit --kafka-version", "audit", "--kafka-version", "x.y.z[/x]")
    # collect into careless places
    for index, place in enumerate(
        ["/dev/full/x", "/proc/x", "/sys/x", paths["kafka.pcap"], paths["bundle"], "/"]
    ):
        add(f"collect {place}", "collect", place, creates=None if index >= 3 else place)
    for fmt in FORMATS:
        target = str(out / f"bundle-{fmt}")
        add(f"collect whole ({fmt})", "collect", target, "--format", fmt, creates=target)
    # live commands, briefly
    for fmt in FORMATS:
        add(f"doctor ({fmt})", "doctor", "--format", fmt)
        add(f"audit ({fmt})", "audit", "--format", fmt)
        add(f"sockets live ({fmt})", "sockets", "--format", fmt, "--limit", "1")
        add(f"watch once ({fmt})", "watch", "--count", "1", "--interval", "0.1", "--format", fmt)
        add(f"lab list ({fmt})", "lab", "list", "--format", fmt)
        add(f"lab kernel list ({fmt})", "lab", "kernel", "list", "--format", fmt)
    # lab and probe: refused before anything starts
    add("lab run unknown scenario", "lab", "run", "no-such-scenario")
    add("lab run --keep a file", "lab", "run", "--keep", paths["kafka.pcap"], "baseline")
    add("lab run --broker nonsense", "lab", "run", "--broker", "nonsense", "baseline")
    add("lab run --crowd -1", "lab", "run", "--crowd", "-1", "baseline")
    add("lab run --size huge", "lab", "run", "--size", "huge", "baseline")
    add("lab kernel run unknown", "lab", "kernel", "run", "no-such-kernel", "--", "true")
    add("lab kernel build unknown", "lab", "kernel", "build", "no-such-kernel")
    add("trace --method nonsense", "trace", "--method", "nonsense")
    add("trace --pid 0", "trace", "--pid", "0", "--duration", "0.5")
    add("trace --pid 2147483647", "trace", "--pid", "2147483647", "--duration", "0.5")
    return cases


# -- running and checking -----------------------------------------------------------------


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not stat_is_fifo(path):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def stat_is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(path.lstat().st_mode)


def _modes(path: str) -> tuple[str, str]:
    """The mode of the path itself and of what it leads to."""

    def mode(follow: bool) -> str:
        try:
            return oct(os.stat(path, follow_symlinks=follow).st_mode)
        except OSError as exc:
            return exc.strerror or "?"

    return mode(False), mode(True)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id, not a zombie
            members.append(int(entry.name))
    return members


def _feed_fifo(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", f"cat '{KAFKA_PCAP}' > '{path}'"])


def run_case(case: Case, inputs: Path, scratch: Path) -> Outcome:
    tmpdir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "120"}
    feeder = _feed_fifo(inputs / case.fifo) if case.fifo else None
    modes = {path: _modes(path) for path in case.modes}
    started = time.monotonic()
    outcome = Outcome(case, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", *case.argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(case.stdin, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        outcome.breaks.append(f"still running after {case.timeout:.0f} s (a hang)")
    finally:
        if feeder is not None:
            feeder.kill()
            feeder.wait()
    outcome.seconds = time.monotonic() - started
    outcome.status = process.returncode
    err = stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    if "Traceback" in err:
        outcome.breaks.append("a traceback on stderr")
    table_output = not ("--format" in case.argv and "json" in case.argv)
    if table_output and CONTROL.search(stdout.decode("utf-8", "replace")):
        found = CONTROL.search(stdout.decode("utf-8", "replace"))
        assert found is not None
        outcome.breaks.append(f"a control character ({found.group()!r}) in the table output")
    if CONTROL.search(err):
        outcome.breaks.append("a control character on stderr")
    for path, before in modes.items():
        if _modes(path) != before:
            outcome.breaks.append(f"mode of {path} changed: {before} -> {_modes(path)}")
    if process.returncode in (0, 1):
        if "json" in case.argv and "--format" in case.argv:
            outcome.breaks += _json_breaks(case, stdout)
    elif process.returncode == 2:
        if len(lines) != 1 or not lines[0].startswith("tcpsleuth: "):
            outcome.breaks.append(f"exit 2 with {len(lines)} lines on stderr")
    elif not outcome.breaks:
        outcome.breaks.append(f"exit {process.returncode}")
    time.sleep(0.05)  # a child that outlived the command: give it a moment to go
    left = _session_members(process.pid)
    if left:
        outcome.breaks.append(f"processes left behind: {left}")
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # tcpsleuth names its namespaces tcpsleuth-ROLE-PID-N
    namespaces = [name for name in _namespaces() if f"-{process.pid}-" in name]
    if namespaces:
        outcome.breaks.append(f"network namespaces left behind: {namespaces}")
    leftovers = [p.name for p in tmpdir.iterdir()]
    if leftovers:
        outcome.breaks.append(f"temporary files left behind: {leftovers[:3]}")
    shutil.rmtree(tmpdir, ignore_errors=True)
    if case.creates:
        made = Path(case.creates)
        partial = list(made.parent.glob(f".{made.name}.partial-*")) if made.parent.exists() else []
        if partial:
            outcome.breaks.append(f"a partial bundle left behind: {partial[0]}")
        if process.returncode == 2 and made.exists() and made.parent != Path("/"):
            outcome.breaks.append(f"exit 2 but {made} was made")
        if process.returncode in (0, 1) and not (made / "sysctl-a.txt").exists():
            outcome.breaks.append(f"exit {process.returncode} without a whole bundle in {made}")
    if outcome.breaks:
        outcome.breaks.append(f"stderr: {err.strip()[:300]!r}")
    return outcome


def _json_breaks(case: Case, stdout: bytes) -> list[str]:
    """--format json: one document with its command; `watch` writes one object a line
    with its type (its help says so), each of which must parse."""
    try:
        if case.argv[0] == "watch":
            records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            if not records or not all(isinstance(r, dict) and "type" in r for r in records):
                return ["exit 0/1 without JSON lines, each an object with its type"]
            return []
        doc = json.loads(stdout)
    except ValueError:
        return ["exit 0/1 without a valid JSON document"]
    if not isinstance(doc, dict) or "command" not in doc:
        return ["exit 0/1 with JSON that is no tcpsleuth document"]
    return []


@dataclass
class Replay:
    outcomes: list[Outcome]
    global_breaks: list[str]

    @property
    def broken(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.breaks]


def _namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def replay(select: str = "", jobs: int = 2) -> Replay:
    with tempfile.TemporaryDirectory(prefix="tcpsleuth-hostile-") as work:
        root = Path(work)
        inputs, out, scratch = root / "inputs", root / "out", root / "scratch"
        out.mkdir()
        scratch.mkdir()
        paths = make_inputs(inputs)
        cases = [c for c in table(paths, out) if select in c.name]
        before = _digest(inputs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, inputs, scratch), cases))
        global_breaks = []
        after = _digest(inputs)
        changed = [name for name in before if before[name] != after.get(name)]
        if changed:
            global_breaks.append(f"input files changed: {changed}")
        return Replay(outcomes, global_breaks)


def cases_listed() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tcpsleuth-hostile-") as work:
        root = Path(work)
        for case in table(make_inputs(root / "inputs"), root / "out"):
            yield f"{case.name}: tcpsleuth {' '.join(case.argv)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("-v", action="store_true", help="every case's exit status and time")
    args = parser.parse_args()
    if args.list:
        for line in cases_listed():
            print(line)
        return 0
    started = time.monotonic()
    result = replay(args.k, args.jobs)
    if args.v:
        for outcome in result.outcomes:
            print(f"exit {outcome.status} {outcome.seconds:5.1f} s  {outcome.case.name}")
    for outcome in result.broken:
        print(f"BREAK {outcome.case.name} (exit {outcome.status}): {'; '.join(outcome.breaks)}")
    for line in result.global_breaks:
        print(f"BREAK {line}")
    statuses: dict[int | None, int] = {}
    for outcome in result.outcomes:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    commands = sorted({o.case.argv[0] for o in result.outcomes if o.case.argv})
    counted = dict(sorted(statuses.items(), key=str))
    print(
        f"{len(result.outcomes)} cases over {len(commands)} commands ({', '.join(commands)}) "
        f"in {time.monotonic() - started:.0f} s; exit statuses {counted}"
    )
    failed = len(result.broken) + len(result.global_breaks)
    print(f"{len(result.outcomes) - len(result.broken)} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
