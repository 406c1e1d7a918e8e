"""Network namespaces owned by tcpsleuth, and their clean-up.

Every namespace tcpsleuth makes is named ``tcpsleuth-<role>-<pid>-<n>`` so that
what a killed run left behind can be recognised (its pid is gone) and removed by
the next run, without touching namespaces of a run still going or of anyone else.
Everything a test or the lab changes (sysctls, nftables, interfaces) lives inside
such a namespace and disappears with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem

PREFIX = "tcpsleuth-"
RUN_DIR = Path("/var/run/netns")
_counter = itertools.count()
_NAME = re.compile(r"^tcpsleuth-([a-z0-9]+(?:-[a-z0-9]+)*?)-(\d+)-(\d+)$")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"{what} needs root (it creates network namespaces); run it with sudo"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned() -> list[str]:
    """Names of all tcpsleuth namespaces on this host."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(entry.name for entry in RUN_DIR.iterdir() if entry.name.startswith(PREFIX))


def remove_stale() -> list[str]:
    """Delete tcpsleuth namespaces whose creating process is gone; return their names."""
    removed = []
    for name in owned():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(2))):
            delete(name)
            removed.append(name)
    return removed


def new_name(role: str) -> str:
    return f"{PREFIX}{role}-{os.getpid()}-{next(_counter)}"


def create(role: str, name: str | None = None) -> str:
    """Make the namespace (``name``, or a new one for ``role``) with loopback up. If
    anything (a signal) interrupts it after ``ip netns add``, the namespace is removed
    before the interruption goes on."""
    name = name or new_name(role)
    result = _ip("netns", "add", name)
    if result.returncode != 0:
        raise EnvironmentProblem(f"cannot create network namespace {name}: {result.stderr.strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete(name)
        raise
    return name


def delete(name: str) -> None:
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to delete namespace {name!r}: not made by tcpsleuth")
    # Killing what still runs inside lets the kernel free the namespace at once.
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _ip("netns", "del", name)


@contextlib.contextmanager
def namespace(role: str) -> Iterator[str]:
    """A fresh namespace with loopback up, removed on exit, Ctrl-C or error."""
    require_root(f"a {role} namespace")
    remove_stale()
    # named first, so that however early a signal comes, the finally knows what to remove
    name = new_name(role)
    try:
        create(role, name)
        yield name
    finally:
        delete(name)


def sysctl(name: str, key: str, value: str | int) -> None:
    """Set a sysctl inside namespace ``name`` (never on the host)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to change sysctls outside a tcpsleuth namespace: {name!r}")
    result = _ip("netns", "exec", name, "sysctl", "-q", "-w", f"{key}={value}")
    if result.returncode != 0:
        raise EnvironmentProblem(f"cannot set {key}={value} in {name}: {result.stderr.strip()}")
