"""Bundles: a directory of plain text files from standard tools, made on hosts
where tcpsleuth cannot be installed, analysed exactly like a live host.

| file                   | made by                        | needed   |
|------------------------|--------------------------------|----------|
| uname-r.txt            | uname -r                       | yes      |
| sysctl-a.txt           | sysctl -a                      | yes      |
| nstat-az.txt           | nstat -asz                     | one of   |
| proc-net-netstat.txt   | cat /proc/net/netstat          | these    |
|   (+ proc-net-snmp.txt)| cat /proc/net/snmp             |          |
| ss-ltnmp.txt           | ss -ltnmp (buffers, processes) | optional |
| ss-ltn.txt             | ss -ltn (if no ss-ltnmp.txt)   | optional |
| ss-tni.txt             | ss -tni                        | optional |
| proc-version.txt       | cat /proc/version              | optional |
| hostname.txt           | hostname                       | optional |
| server.properties      | the broker's config            | optional |
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import HostSnapshot, KafkaConfig
from tcpsleuth.sources import netns, procfs
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.sources.nstattext import read_nstat_file
from tcpsleuth.sources.sstext import read_ss_file
from tcpsleuth.sources.sysctltext import read_sysctl_file
from tcpsleuth.sources.textfile import read_text

UNAME = "uname-r.txt"
UNAME_ALL = "uname-a.txt"  # `uname -a` instead: the release is its third field
PROC_VERSION = "proc-version.txt"
HOSTNAME = "hostname.txt"
SYSCTL = "sysctl-a.txt"
NSTAT = "nstat-az.txt"
NETSTAT = "proc-net-netstat.txt"
SNMP = "proc-net-snmp.txt"
SS_LISTEN = "ss-ltn.txt"
# `ss -ltnmp`: the listeners with their receive buffer (-m) and processes (-p)
SS_LISTEN_DETAILS = "ss-ltnmp.txt"
SS_INFO = "ss-tni.txt"
SS_ALL = "ss-a.txt"  # `ss -a` / `ss -tan` instead: listeners and connections in one file
KAFKA = "server.properties"
MANIFEST = "collected.txt"


def _first_line(path: Path, what: str) -> str:
    line = read_text(path, what).strip().splitlines()
    if not line or not line[0].strip():
        raise InputError(f"{path}: empty, expected {what}")
    return line[0].strip()


def read_bundle(directory: Path, kafka_config: KafkaConfig | None = None) -> HostSnapshot:
    if not directory.is_dir():
        raise InputError(
            f"{directory}: not a directory; a bundle is a directory made by "
            "`tcpsleuth collect` or by hand (see the README)"
        )
    notes: list[str] = []
    for required, how, alternative in ((UNAME, "uname -r", UNAME_ALL), (SYSCTL, "sysctl -a", None)):
        if not (directory / required).exists() and not (
            alternative and (directory / alternative).exists()
        ):
            raise InputError(
                f"{directory}: bundle lacks {required} (make it with "
                f"`{how} > {required}` on the host)"
            )
    hostname = directory.resolve().name
    if (directory / UNAME).exists():
        uname = directory / UNAME
        release = _first_line(uname, "`uname -r` output")
    else:
        uname = directory / UNAME_ALL
        fields = _first_line(uname, "`uname -a` output").split()
        release = fields[2] if len(fields) > 2 and fields[0] == "Linux" else fields[0]
        if len(fields) > 2:
            hostname = fields[1]
    if not release[0].isdigit():
        raise InputError(f"{uname}: {release!r} is not a kernel release")
    proc_version = None
    if (directory / PROC_VERSION).exists():
        proc_version = read_text(directory / PROC_VERSION, "/proc/version")
    if (directory / HOSTNAME).exists():
        hostname = _first_line(directory / HOSTNAME, "`hostname` output")
    sysctls = read_sysctl_file(directory / SYSCTL)

    counters: dict[str, int] = {}
    if (directory / NETSTAT).exists():
        counters.update(procfs.read_counter_file(directory / NETSTAT))
        if (directory / SNMP).exists():
            counters.update(procfs.read_counter_file(directory / SNMP))
    elif (directory / NSTAT).exists():
        counters.update(read_nstat_file(directory / NSTAT))
    else:
        notes.append(f"no {NSTAT} or {NETSTAT}: counters not checked")

    listeners = connections = None
    everything = read_ss_file(directory / SS_ALL) if (directory / SS_ALL).exists() else None
    if (directory / SS_LISTEN_DETAILS).exists():
        listeners = read_ss_file(directory / SS_LISTEN_DETAILS, default_state="LISTEN").listeners
    elif (directory / SS_LISTEN).exists():
        listeners = read_ss_file(directory / SS_LISTEN, default_state="LISTEN").listeners
    elif everything is not None:
        listeners = everything.listeners
    else:
        notes.append(f"no {SS_LISTEN_DETAILS} or {SS_LISTEN}: listen backlogs not checked")
    if (directory / SS_INFO).exists():
        connections = read_ss_file(directory / SS_INFO).connections
    elif everything is not None:
        connections = everything.connections
    else:
        notes.append(f"no {SS_INFO}: established connections per port unknown")
    if kafka_config is None and (directory / KAFKA).exists():
        kafka_config = read_kafka_config(directory / KAFKA)
    return HostSnapshot(
        origin=f"bundle {directory}",
        hostname=hostname,
        kernel_release=release,
        sysctls=sysctls,
        counters=counters,
        listeners=listeners,
        connections=connections,
        kafka_config=kafka_config,
        proc_version=proc_version,
        notes=notes,
    )


def _sysctl_lines(root: Path = Path("/proc/sys/net")) -> list[str]:
    """`sysctl -a`-style lines for net.*, read in the caller's network namespace."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                value = path.read_text()
            except OSError:
                continue  # write-only or permission-restricted entries, as sysctl -a skips
            key = ".".join(path.relative_to("/proc/sys").parts)
            lines.append(f"{key} = {' '.join(value.split())}")
    return lines


def write_bundle(
    directory: Path, netns_name: str | None = None, kafka_config: Path | None = None
) -> list[str]:
    """Write a bundle of the live host (read-only on the host). Returns what was written.

    The files are written into a new directory next to ``directory`` and renamed to it
    at the end, so that a bundle is either whole or absent: an input error, a full disk
    or Ctrl-C leaves nothing that `audit --bundle` would take for a bundle, and a second
    run into the same place is not refused."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(
            f"{directory}: exists and is not an empty directory; "
            "give a new directory for the bundle"
        )
    kafka_text = (
        None
        if kafka_config is None
        else read_text(kafka_config, "Kafka server.properties", latin1=True)
    )
    parent = directory.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{directory}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=parent))
    except OSError as exc:
        raise InputError(
            f"{directory}: cannot make a directory there ({exc.strerror or exc})"
        ) from None
    try:
        written = _write_files(staging, netns_name, kafka_text)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        os.rename(staging, directory)  # replaces an empty directory, atomically
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(
            f"{directory}: cannot write the bundle ({exc.strerror or exc}); nothing was kept"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _write_files(directory: Path, netns_name: str | None, kafka_text: str | None) -> list[str]:
    written: list[str] = []

    def put(name: str, text: str) -> None:
        (directory / name).write_text(text)
        written.append(name)

    put(UNAME, procfs.kernel_release() + "\n")
    put(HOSTNAME, socket.gethostname() + (f"/{netns_name}" if netns_name else "") + "\n")
    try:
        version: str | None = Path("/proc/version").read_text()
    except OSError:
        version = None
    if version is not None:
        put(PROC_VERSION, version)
    with netns.entered(netns_name):
        put(SYSCTL, "\n".join(_sysctl_lines()) + "\n")
        put(NETSTAT, Path("/proc/thread-self/net/netstat").read_text())
        put(SNMP, Path("/proc/thread-self/net/snmp").read_text())
    ss = shutil.which("ss")
    if ss:
        prefix = netns.exec_prefix(netns_name)
        for name, args in (
            (SS_LISTEN, ["-ltn"]),
            (SS_LISTEN_DETAILS, ["-ltnmp"]),
            (SS_INFO, ["-tni"]),
        ):
            result = subprocess.run(
                [*prefix, ss, *args], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise InputError(f"`ss {' '.join(args)}` failed: {result.stderr.strip()}")
            put(name, result.stdout)
    if kafka_text is not None:
        put(KAFKA, kafka_text)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    put(
        MANIFEST,
        f"collected by tcpsleuth at {stamp}\n"
        + (f"network namespace: {netns_name}\n" if netns_name else "")
        + "".join(f"{name}\n" for name in written),
    )
    return written
