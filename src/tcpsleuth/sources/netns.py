"""Entering a named network namespace (``ip netns`` names) for the calling thread.

Sockets, /proc/self/net and /proc/sys/net files opened inside stay bound to that
namespace after we return, so sources open what they need inside and read it
anywhere. Python 3.11 has no ``os.setns``; libc's is called through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem, InputError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def exec_prefix(name: str | None) -> list[str]:
    """The start of a command line that runs a program in namespace ``name`` (``ip
    netns exec``), or nothing for the caller's own namespace."""
    return ["ip", "netns", "exec", name] if name else []


def checked_name(name: str) -> str:
    """``name`` if it names a network namespace as ``ip netns`` does (a file directly
    under /run/netns), else InputError. The one check every ``--netns`` and ``netns:``
    goes through: an empty name (an unset shell variable) must not mean the host, and
    ``.``, ``..`` or a name with ``/`` must not reach outside /run/netns."""
    if name == "":
        raise InputError("the network namespace name is empty (see `ip netns list`)")
    if name in (".", "..") or "/" in name or "\x00" in name or len(name) > 255:
        raise InputError(
            f"{name!r} is not a network namespace name: an `ip netns` name has no '/' "
            f"and is not '.' or '..' (see `ip netns list`)"
        )
    try:
        is_namespace = (NETNS_RUN_DIR / name).is_file()
    except OSError:
        is_namespace = False
    if not is_namespace:
        raise InputError(f"no network namespace named {name!r} (see `ip netns list`)")
    return name


def _setns(fd: int, name: str | None = None) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise EnvironmentProblem(
                "entering a network namespace needs root (CAP_SYS_ADMIN); "
                "run with sudo or drop --netns"
            )
        if err == errno.EINVAL and name is not None:
            raise InputError(f"{NETNS_RUN_DIR / name} is not a network namespace")
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name``; ``None`` stays where we are."""
    if name is None:
        yield
        return
    target = NETNS_RUN_DIR / checked_name(name)
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"no network namespace named {name!r} (see `ip netns list`)") from None
    except PermissionError:
        raise EnvironmentProblem(
            f"reading network namespace {name!r} needs root; run with sudo"
        ) from None
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target_fd, name)
        try:
            yield
        finally:
            _setns(home_fd)
    finally:
        os.close(target_fd)
        os.close(home_fd)
