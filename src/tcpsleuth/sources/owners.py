"""Which processes hold which sockets, from /proc: what ``ss -p`` shows as
``users:(("nginx",pid=1234,fd=6))``.

Every open file of a process is a link in /proc/PID/fd; a socket's link reads
``socket:[INODE]``, and sock_diag gives every socket's inode (idiag_inode). Socket
inodes are unique on the host, whatever network namespace the socket lives in, so
one walk of /proc finds the owners of sockets of any namespace. The walk reads
links only for the inodes asked for; processes that end during the walk, and
those whose fds cannot be read (no root), are skipped as ``ss`` skips them.

``comm`` is /proc/PID/comm, the 15-character task name ``ss`` prints; ``cmdline``
(/proc/PID/cmdline) tells a Java server's main class from another's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tcpsleuth.model.records import SocketOwner

PROC = Path("/proc")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def socket_owners(
    inodes: Iterable[int], proc: Path = PROC, with_cmdline: bool = True
) -> dict[int, tuple[SocketOwner, ...]]:
    """inode -> the processes holding it (pid order, then fd), for the inodes given."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes if inode}
    found: dict[int, list[SocketOwner]] = {}
    if not wanted:
        return {}
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return {}
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        held = []
        for fd in fds:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue
            inode = wanted.get(link)
            if inode is not None:
                held.append((inode, int(fd)))
        if not held:
            continue
        comm_bytes = _read(proc / str(pid) / "comm")
        if comm_bytes is None:
            continue
        comm = comm_bytes.decode(errors="replace").rstrip("\n")
        cmdline = None
        if with_cmdline:
            raw = _read(proc / str(pid) / "cmdline")
            if raw is not None:
                cmdline = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        for inode, fd in sorted(held, key=lambda x: x[1]):
            found.setdefault(inode, []).append(SocketOwner(comm, pid, fd, cmdline))
    return {inode: tuple(owners) for inode, owners in found.items()}


def working_directory(pid: int, proc: Path = PROC) -> Path | None:
    """Where a process runs (for a relative path on its command line)."""
    try:
        return Path(os.readlink(proc / str(pid) / "cwd"))
    except OSError:
        return None
