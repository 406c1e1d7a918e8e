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
import time
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


def _holds(proc: Path, owner: SocketOwner, link: str) -> bool:
    """Whether ``owner`` still holds the socket: one readlink of its descriptor."""
    try:
        return os.readlink(proc / str(owner.pid) / "fd" / str(owner.fd)) == link
    except OSError:
        return False


class OwnerCache:
    """Socket owners remembered by inode between reads, for the exporter's scrapes.

    Finding an owner means reading every link in every process's /proc/PID/fd: on a
    broker with 200,000 open files that is most of a core-second, while the answer
    changes only when a listener does. So an inode's owners are looked up once, then
    checked on each later read with one readlink per owner (the descriptor still
    names the same socket); only inodes not seen before, or whose every owner has
    closed them, cost a walk of /proc. Processes that inherit a known listener later
    (a server's new workers) are not added until the listener is looked up again.
    An inode whose owner could not be found (a process in a PID namespace we cannot
    see, no privilege) is looked for again after ``retry_seconds``, not on every read.
    ``walks`` counts the walks of /proc, for tests and benchmarks.
    """

    def __init__(
        self, proc: Path = PROC, with_cmdline: bool = True, retry_seconds: float = 300.0
    ) -> None:
        self.proc = proc
        self.with_cmdline = with_cmdline
        self.retry_seconds = retry_seconds
        self.walks = 0
        self._known: dict[int, tuple[SocketOwner, ...]] = {}
        self._unowned: dict[int, float] = {}  # inode -> when it was last looked for

    def owners(self, inodes: Iterable[int]) -> dict[int, tuple[SocketOwner, ...]]:
        """inode -> the processes holding it, as :func:`socket_owners` gives it."""
        wanted = {inode for inode in inodes if inode}
        now = time.monotonic()
        result: dict[int, tuple[SocketOwner, ...]] = {}
        unknown = []
        for inode in wanted:
            link = f"socket:[{inode}]"
            alive = tuple(o for o in self._known.get(inode, ()) if _holds(self.proc, o, link))
            if alive:
                result[inode] = alive
            elif now - self._unowned.get(inode, -self.retry_seconds) >= self.retry_seconds:
                unknown.append(inode)
        if unknown:
            self.walks += 1
            result.update(socket_owners(unknown, self.proc, self.with_cmdline))
            self._unowned.update((inode, now) for inode in unknown if inode not in result)
        # forget sockets that closed, so the memory follows the listeners that exist
        self._known = {inode: result[inode] for inode in wanted if inode in result}
        self._unowned = {k: v for k, v in self._unowned.items() if k in wanted}
        return result


def working_directory(pid: int, proc: Path = PROC) -> Path | None:
    """Where a process runs (for a relative path on its command line)."""
    try:
        return Path(os.readlink(proc / str(pid) / "cwd"))
    except OSError:
        return None
