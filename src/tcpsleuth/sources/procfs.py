"""procfs: TCP counters from /proc/net/netstat and /proc/net/snmp, sysctls, and what
/proc tells of processes (their sockets, command lines, environments, start times).

Both counter files hold pairs of lines, a header naming the fields and a line of
values, each starting with the same ``Group:`` prefix. Names are returned as
``nstat`` prints them: group and field joined (``TcpExtSyncookiesSent``). Files
from old kernels have fewer fields; a field the kernel lacks is simply absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import AUDIT_SYSCTLS
from tcpsleuth.model.text import shortened, to_int
from tcpsleuth.sources.textfile import file_line, read_text


def parse_counter_pairs(text: str, source: Path | str) -> dict[str, int]:
    counters: dict[str, int] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{source}: empty, expected kernel counters (/proc/net/netstat format)")
    if len(lines) % 2:
        raise InputError(
            f"{file_line(source, len(lines))}: a header line without its values line "
            "(file truncated?)"
        )
    for i in range(0, len(lines), 2):
        head, values = lines[i].split(), lines[i + 1].split()
        if not head or not head[0].endswith(":") or not values or values[0] != head[0]:
            raise InputError(
                f"{file_line(source, i + 1)}: not a counter header/value pair "
                "(expected two lines starting with the same 'Group:')"
            )
        if len(head) != len(values):
            raise InputError(
                f"{file_line(source, i + 2)}: {len(head) - 1} counter names but "
                f"{len(values) - 1} values (file truncated?)"
            )
        group = head[0][:-1]
        for name, value in zip(head[1:], values[1:], strict=True):
            number = to_int(value)  # ASCII digits only, and not 5,000 of them
            if number is None:
                raise InputError(
                    f"{file_line(source, i + 2)}: counter {group}{name} has value "
                    f"'{shortened(value)}', not a number"
                )
            counters[group + name] = number
    return counters


def read_counter_file(path: Path) -> dict[str, int]:
    return parse_counter_pairs(read_text(path, "kernel counters"), path)


def read_live_counters(proc: Path = Path("/proc")) -> dict[str, int]:
    """Counters of the calling thread's network namespace (/proc/thread-self/net)."""
    counters: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        counters.update(read_counter_file(proc / "thread-self" / "net" / name))
    return counters


def read_live_sysctls(names: tuple[str, ...] = AUDIT_SYSCTLS) -> dict[str, str]:
    """Values as ``sysctl`` prints them, white space folded; missing ones left out.

    Opening /proc/sys/net reads the namespace of the opening thread, so call
    this inside ``netns.entered`` to read another namespace.
    """
    values: dict[str, str] = {}
    for name in names:
        path = Path("/proc/sys") / name.replace(".", "/")
        try:
            values[name] = " ".join(path.read_text().split())
        except FileNotFoundError:
            continue
    return values


def tcp_sockets_in_use(proc: Path = Path("/proc")) -> int | None:
    """``TCP: inuse N`` of /proc/net/sockstat (this namespace's TCP sockets but those
    in TIME-WAIT); None if it cannot be read."""
    try:
        text = (proc / "net" / "sockstat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["TCP:"] and "inuse" in words[1:-1]:
            return to_int(words[words.index("inuse") + 1])
    return None


def kernel_release() -> str:
    return os.uname().release


def processes(part: str, proc: Path = Path("/proc")) -> Iterator[tuple[int, bytes]]:
    """(pid, contents of /proc/PID/PART) of every process but this one whose file can
    be read (a process can end while it is read; ``cmdline`` and ``environ`` separate
    their items with NUL)."""
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            yield int(entry.name), (entry / part).read_bytes()
        except OSError:
            continue


def start_time(pid: int, proc: Path = Path("/proc")) -> str | None:
    """When the process started (clock ticks since boot, as /proc/PID/stat says), or
    None if it is gone: with its pid, a process that cannot be mistaken for a later one
    given the same pid."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def running(pid: int, started: str | None = None, proc: Path = Path("/proc")) -> bool:
    """Whether process ``pid`` (the one that started at ``started``, if given) still
    runs: it exists and is neither a zombie nor dead. A process sent SIGKILL keeps
    running until the kernel has scheduled it to act on the signal and torn it down,
    which on a loaded machine can take a while."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X", "x") and started in (None, fields[19])


def local_ports_of_pid(pid: int, proc: Path = Path("/proc")) -> frozenset[int]:
    """Local TCP ports of the sockets process ``pid`` holds (its listeners and connections).

    Socket inodes come from /proc/PID/fd; /proc/PID/net/tcp{,6} (the process's own
    network namespace) maps them to addresses.
    """
    fd_dir = proc / str(pid) / "fd"
    try:
        links = [os.readlink(fd_dir / entry) for entry in os.listdir(fd_dir)]
    except FileNotFoundError:
        raise InputError(f"no process with pid {pid}") from None
    except PermissionError:
        raise InputError(
            f"cannot read the sockets of pid {pid}: permission denied (run with sudo)"
        ) from None
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return frozenset(ports)
