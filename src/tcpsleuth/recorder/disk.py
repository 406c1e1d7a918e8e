"""What the recorder holds on disk, and the cap it keeps (``--max-disk``).

Usage is counted as ``du`` counts it: allocated blocks, each file once however many
names it has (an incident protects the ring files it needs with hard links while it
lasts). When usage plus the headroom gets near the cap, the recorder frees space in
this order: ring files older than any incident can use (or the oldest ring files,
except the one tcpdump writes), then whole incidents, oldest first (never the newest
one, nor one being made); and if that is not enough, the capture pauses until there
is room again. The headroom is three times what was written since the last check
(every quarter second), and at least a fifth of the cap: a storm makes the ring grow
fast, and an incident writes its bundle and socket snapshots at once.

That check runs every quarter second; between two checks the ring grows only by what
the :class:`Budget` the check left allows: the recorder writes the ring's files itself
(:mod:`.ring_writer`) and makes no write the budget refuses. Files an incident is about
to write (its host bundle, its capture copied out of the ring) are reserved from the
budget first, until they are written and measured.

The file system's own free space counts too: the recorder keeps at least
``MIN_FREE_FRACTION`` of it free, for everyone else.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIN_FREE_FRACTION = 0.05
INCIDENT_PREFIX = "incident-"
STAGING_PREFIX = ".incident-"


def blocks(paths: Iterable[Path]) -> int:
    """Bytes allocated to these files and directories and to everything under the
    directories (their own blocks too, as ``du`` counts them), each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(path: str) -> None:
        nonlocal total
        try:
            info = os.lstat(path)
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key not in seen:
            seen.add(key)
            total += info.st_blocks * 512

    for path in paths:
        count(str(path))
        if not path.is_dir():
            continue
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                count(os.path.join(root, name))
    return total


def usage(directory: Path) -> int:
    return blocks([directory])


def _directories(directory: Path, prefix: str) -> list[Path]:
    """Real directories (a symbolic link is never one: the recorder makes none, and
    following one would read, write or delete outside) named ``prefix...``."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(prefix) and not p.is_symlink() and p.is_dir()
    )


def incidents(directory: Path) -> list[Path]:
    """Complete incidents, oldest first (their names sort by time)."""
    return _directories(directory, INCIDENT_PREFIX)


def staging(directory: Path) -> list[Path]:
    return _directories(directory, STAGING_PREFIX)


def fs_room(directory: Path) -> int:
    """Bytes the recorder may still take from its file system."""
    total, _used, free = shutil.disk_usage(directory)
    return free - int(total * MIN_FREE_FRACTION)


@dataclass
class Freed:
    ring_files: int = 0
    incidents: list[str] | None = None
    bytes: int = 0


class Budget:
    """Bytes the ring may still allocate until the next check measures the directory.

    ``set`` is given the room the check measured (the cap less what is on disk); what
    the ring took while the check was measuring, and what incidents reserved, come off
    it. ``take`` is all or nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self._taken = 0
        self._reserved: dict[str, int] = {}

    def mark(self) -> int:
        """Call before measuring; give the result to ``set``."""
        with self._lock:
            return self._taken

    def set(self, room: int, mark: int) -> None:
        with self._lock:
            taken_since = self._taken - mark
            self._left = max(0, room - sum(self._reserved.values()) - taken_since)

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._left:
                return False
            self._left -= size
            self._taken += size
            return True

    def reserve(self, name: str, size: int) -> None:
        """Hold ``size`` bytes back for files about to be written (until ``release``);
        the room the ring has left shrinks at once."""
        with self._lock:
            self._reserved[name] = self._reserved.get(name, 0) + size
            self._left = max(0, self._left - size)

    def release(self, name: str) -> None:
        with self._lock:
            self._reserved.pop(name, None)

    @property
    def reserved(self) -> int:
        with self._lock:
            return sum(self._reserved.values())
