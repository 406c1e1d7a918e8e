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

A bundle usually comes from another host and another person, so it is read as theirs:
each file must be a regular file (a FIFO, a device or a socket is refused at once, never
waited on: opened non-blocking, then checked with fstat), a symlink is followed only to
a file inside the bundle, and whatever is wrong is one line naming the file (exit 2).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

from tcpsleuth import safefile
from tcpsleuth.errors import InputError
from tcpsleuth.model.records import HostSnapshot, KafkaConfig
from tcpsleuth.model.text import is_number, printable, shortened
from tcpsleuth.sources import netns, procfs
from tcpsleuth.sources.config.common import Budget
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.sources.nstattext import parse_nstat
from tcpsleuth.sources.sockdiag import SocketTable
from tcpsleuth.sources.sstext import parse_ss
from tcpsleuth.sources.sysctltext import parse_sysctl
from tcpsleuth.sources.textfile import decode_text, read_limited

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


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class Bundle:
    """A bundle directory whose files are read as somebody else's (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            info = directory.stat()
        except FileNotFoundError:
            raise InputError(
                f"{directory}: not a directory (nothing is there); a bundle is a directory "
                "made by `tcpsleuth collect` or by hand (see the README)"
            ) from None
        except OSError as exc:
            raise InputError(f"{directory}: cannot open it as a bundle ({exc.strerror})") from None
        if not stat.S_ISDIR(info.st_mode):
            raise InputError(
                f"{directory}: not a directory; a bundle is a directory made by "
                "`tcpsleuth collect` or by hand (see the README)"
            )
        self.root = directory.resolve()

    def has(self, name: str) -> bool:
        """The bundle holds ``name`` (a symlink counts: reading it says what is wrong)."""
        try:
            (self.directory / name).lstat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InputError(
                f"{self.directory / name}: cannot look at it ({exc.strerror})"
            ) from None
        return True

    def path(self, name: str) -> Path:
        """The file to open for ``name``: itself, or where its symlink leads inside the
        bundle; InputError for a symlink that leads out of it, nowhere or in a loop."""
        path = self.directory / name
        try:
            if not stat.S_ISLNK(path.lstat().st_mode):
                return path
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise InputError(
                f"{path}: a symlink that leads nowhere or in a loop; a bundle holds plain "
                "text files"
            ) from None
        if not target.is_relative_to(self.root):
            raise InputError(
                f"{path}: a symlink out of the bundle (to {printable(str(target))}); not "
                "followed: a bundle holds its own files"
            )
        return target

    def check(self, name: str, what: str) -> Path:
        """The path of ``name`` once it is known to be a regular file of the bundle
        (for readers that open the file themselves)."""
        path = self.path(name)
        self._open(path, what).close()
        return path

    def _open(self, path: Path, what: str) -> BinaryIO:
        try:
            # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer, and is
            # refused below; O_NOFOLLOW: `path` is no symlink now, none is followed if
            # one was put there since it was looked at
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
        except OSError as exc:
            raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise InputError(
                f"{path}: {_kind(mode)}, not a regular file; a bundle holds plain text "
                f"files ({what})"
            )
        return os.fdopen(fd, "rb")

    def text(self, name: str, what: str) -> str:
        path = self.path(name)
        with self._open(path, what) as stream:
            data = read_limited(stream, self.directory / name, what)
        return decode_text(data, self.directory / name, what)

    def first_line(self, name: str, what: str) -> str:
        line = self.text(name, what).strip().splitlines()
        if not line or not line[0].strip():
            raise InputError(f"{self.directory / name}: empty, expected {what}")
        return line[0].strip()

    def ss(self, name: str, default_state: str = "ESTAB") -> SocketTable:
        return parse_ss(self.text(name, "`ss` output"), self.directory / name, default_state)

    def counters(self, name: str) -> dict[str, int]:
        return procfs.parse_counter_pairs(self.text(name, "kernel counters"), self.directory / name)


def read_bundle(directory: Path, kafka_config: KafkaConfig | None = None) -> HostSnapshot:
    bundle = Bundle(directory)
    notes: list[str] = []
    for required, how, alternative in ((UNAME, "uname -r", UNAME_ALL), (SYSCTL, "sysctl -a", None)):
        if not bundle.has(required) and not (alternative and bundle.has(alternative)):
            raise InputError(
                f"{directory}: bundle lacks {required} (make it with "
                f"`{how} > {required}` on the host)"
            )
    hostname = bundle.root.name
    if bundle.has(UNAME):
        uname = directory / UNAME
        release = bundle.first_line(UNAME, "`uname -r` output")
    else:
        uname = directory / UNAME_ALL
        fields = bundle.first_line(UNAME_ALL, "`uname -a` output").split()
        release = fields[2] if len(fields) > 2 and fields[0] == "Linux" else fields[0]
        if len(fields) > 2:
            hostname = fields[1]
    if not is_number(release[:1]):
        raise InputError(f"{uname}: '{shortened(release)}' is not a kernel release")
    proc_version = None
    if bundle.has(PROC_VERSION):
        proc_version = bundle.text(PROC_VERSION, "/proc/version")
    if bundle.has(HOSTNAME):
        hostname = bundle.first_line(HOSTNAME, "`hostname` output")
    sysctls = parse_sysctl(bundle.text(SYSCTL, "`sysctl -a` output"), directory / SYSCTL)

    counters: dict[str, int] = {}
    if bundle.has(NETSTAT):
        counters.update(bundle.counters(NETSTAT))
        if bundle.has(SNMP):
            counters.update(bundle.counters(SNMP))
    elif bundle.has(NSTAT):
        counters.update(parse_nstat(bundle.text(NSTAT, "`nstat -az` output"), directory / NSTAT))
    else:
        notes.append(f"no {NSTAT} or {NETSTAT}: counters not checked")

    listeners = connections = None
    everything = bundle.ss(SS_ALL) if bundle.has(SS_ALL) else None
    if bundle.has(SS_LISTEN_DETAILS):
        listeners = bundle.ss(SS_LISTEN_DETAILS, default_state="LISTEN").listeners
    elif bundle.has(SS_LISTEN):
        listeners = bundle.ss(SS_LISTEN, default_state="LISTEN").listeners
    elif everything is not None:
        listeners = everything.listeners
    else:
        notes.append(f"no {SS_LISTEN_DETAILS} or {SS_LISTEN}: listen backlogs not checked")
    if bundle.has(SS_INFO):
        connections = bundle.ss(SS_INFO).connections
    elif everything is not None:
        connections = everything.connections
    else:
        notes.append(f"no {SS_INFO}: established connections per port unknown")
    if kafka_config is None and bundle.has(KAFKA):
        kafka_config = read_kafka_config(bundle.check(KAFKA, "Kafka server.properties"))
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
    # as `audit --kafka-config` reads it: a regular file, never waited on (a FIFO
    # without a writer is refused, not a hang), within the configuration readers' budget
    kafka_text = (
        None if kafka_config is None else Budget().read(kafka_config, "Kafka server.properties")
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
        # in a new directory of its own, renamed into place once whole: no fsync each
        safefile.write_file(directory / name, text, sync=False)
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
