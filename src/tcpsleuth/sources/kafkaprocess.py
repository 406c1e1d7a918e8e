"""Running Apache Kafka brokers, found in /proc: their pid, network namespace, the
server.properties they were started with and their version, read from the broker jar
on their class path (``kafka_2.13-3.1.2.jar``, as kafka-run-class.sh lists every jar).

The version decides what some settings mean: before 3.2.0 (KIP-764) the broker has no
``socket.listen.backlog.size`` and listens with a backlog of 50 whatever the file says.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.model.programs import PROGRAMS

# kafka_<scala>-<version>.jar is the broker itself in every release; kafka-server-<v>.jar
# from 3.7. A Confluent build (7.1.0-ccs) is read too and left for the model to doubt.
_BROKER_JAR = re.compile(r"^kafka(?:_\d+\.\d+|-server)-(\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?)\.jar$")
_CLASSPATH_OPTIONS = ("-cp", "-classpath", "--class-path")


@dataclass(frozen=True)
class KafkaProcess:
    pid: int
    netns_inode: int | None
    config: str | None  # the server.properties argument, as given
    version: str | None


def version_from_jars(names: list[str]) -> str | None:
    """The Kafka version the broker jar among ``names`` (file names) carries."""
    for name in names:
        match = _BROKER_JAR.match(name)
        if match:
            return match.group(1)
    return None


def _classpath_jars(entries: list[str], cwd: Path | None) -> list[str]:
    names = []
    for entry in entries:
        path = Path(entry)
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        if entry.endswith("*"):
            # a directory wildcard: the JVM takes every jar in it
            try:
                names += [p.name for p in path.parent.glob("*.jar")]
            except OSError:
                continue
        else:
            names.append(path.name)
    return names


def broker_from_cmdline(
    pid: int, argv: list[str], proc: Path = Path("/proc")
) -> KafkaProcess | None:
    """The broker ``argv`` (a /proc/PID/cmdline split at NULs) starts, or None when it
    is not a Kafka broker's JVM."""
    if not argv or not Path(argv[0]).name.startswith("java"):
        return None
    mains = [i for i, arg in enumerate(argv) if arg in PROGRAMS["kafka"].main_classes]
    if not mains:
        return None
    main = mains[0]
    entries: list[str] = []
    for i, arg in enumerate(argv[:main]):
        if arg in _CLASSPATH_OPTIONS and i + 1 < main:
            entries += argv[i + 1].split(":")
    try:
        cwd: Path | None = Path(os.readlink(proc / str(pid) / "cwd"))
    except OSError:
        cwd = None
    if not entries:
        entries = _environ(proc / str(pid) / "environ").get("CLASSPATH", "").split(":")
    config = argv[main + 1] if main + 1 < len(argv) else None
    if config is not None and cwd is not None and not config.startswith("/"):
        config = str(cwd / config)
    try:
        inode: int | None = os.stat(proc / str(pid) / "ns" / "net").st_ino
    except OSError:
        inode = None
    return KafkaProcess(pid, inode, config, version_from_jars(_classpath_jars(entries, cwd)))


def _environ(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def running_brokers(proc: Path = Path("/proc")) -> list[KafkaProcess]:
    """Every Kafka broker JVM /proc shows (pids this user may read)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
        broker = broker_from_cmdline(int(entry.name), argv, proc)
        if broker is not None:
            found.append(broker)
    return found


def broker_for(
    config: Path | None, netns_inode: int | None, proc: Path = Path("/proc")
) -> KafkaProcess | None:
    """The running broker an audit of ``config`` (and of namespace ``netns_inode``) is
    about: the one started with that very file, else the only one in the namespace.

    A command line is its owner's to write: any user can start a process that calls
    itself a broker of this file with another version's jars. When the processes
    started with the file do not agree on a version, none is believed (None)."""
    brokers = [
        b
        for b in running_brokers(proc)
        if netns_inode is None or b.netns_inode is None or b.netns_inode == netns_inode
    ]
    if config is not None:
        matches = []
        for broker in brokers:
            if broker.config is None:
                continue
            try:
                if os.path.samefile(broker.config, config):
                    matches.append(broker)
            except (OSError, ValueError):
                continue
        if matches:
            return matches[0] if len({b.version for b in matches}) == 1 else None
    return brokers[0] if len(brokers) == 1 else None
