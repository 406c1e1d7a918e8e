"""What the configuration readers share: opening a configuration file safely and within
bounds, Java-properties and `key = value` files with line numbers, sizes with unit
suffixes, and addresses with ports.

A configuration file may be named by somebody else (a listener's command line), so it
is opened as a regular file only (a FIFO or a device is refused before a byte is read,
and O_NONBLOCK keeps the open itself from waiting), read up to a size cap, and every
file a read opens, includes and all, counts against one ``Budget``: files, bytes,
include depth and a deadline, in total. Errors name the file and line, never what the
file says: the reader's caller may hold privileges the file's owner has not.
"""

from __future__ import annotations

import errno
import glob
import ipaddress
import os
import re
import select
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.text import is_number, to_int

# A setting as the file writes it, and where: (value, line number)
Located = tuple[str, int]

MAX_FILE_BYTES = 4 << 20  # a real server's configuration is kilobytes
MAX_TOTAL_BYTES = 16 << 20
MAX_FILES = 256  # every file a read opens, the same file included twice counting twice
MAX_DEPTH = 16
MAX_SECONDS = 10.0
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


class ConfigFileMissing(InputError):
    """The file does not exist (a default location, or a server started without it)."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(f"{path}: no such file ({what})")
        self.path = str(path)


class ConfigFileNotReadable(InputError):
    """Permission denied: the reader's user may not read it."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(f"{path}: permission denied reading {what}")
        self.path = str(path)


@dataclass
class Budget:
    """What one read of a configuration may still open: files, bytes, include depth
    and time, for the main file and everything it includes together (an include that
    fans out, ten files each including the ten, is stopped by the total, not only by
    cycles)."""

    files: int = MAX_FILES
    total_bytes: int = MAX_TOTAL_BYTES
    file_bytes: int = MAX_FILE_BYTES
    depth: int = MAX_DEPTH
    seconds: float = MAX_SECONDS
    # the main file was named by whoever runs tcpsleuth (--config, --kafka-config): it
    # may be a pipe (``<(...)``); what it includes, and any file found from somebody
    # else's command line, must be a regular file
    operator_named: bool = False
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_operator(cls) -> Budget:
        return cls(operator_named=True)

    def check_depth(self, path: Path | str, depth: int) -> None:
        if depth > self.depth:
            raise InputError(f"{path}: includes nested more than {self.depth} deep")

    def check_time(self, path: Path | str) -> None:
        if time.monotonic() - self.started > self.seconds:
            raise InputError(
                f"{path}: reading the configuration took more than {self.seconds:g} s; "
                "stopped (includes that fan out?)"
            )

    def read(self, path: Path | str, what: str) -> str:
        """The text of ``path``, a regular file, counted against the budget."""
        self.check_time(path)
        if self.files <= 0:
            raise InputError(
                f"{path}: the configuration opens more than {MAX_FILES} files with its "
                "includes; stopped"
            )
        self.files -= 1
        regular_only, self.operator_named = not self.operator_named, False
        limit = min(self.file_bytes, self.total_bytes)
        data = read_regular_file(path, what, limit, regular_only)
        self.total_bytes -= len(data)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")  # Java reads .properties as ISO-8859-1

    def glob(self, pattern: str) -> list[str]:
        """The names an include pattern matches, sorted, at most as many as the budget
        may still open (one more, so that going over is seen)."""
        found: list[str] = []
        for name in glob.iglob(pattern):
            found.append(name)
            if len(found) > self.files:
                break
            self.check_time(pattern)
        return sorted(found)


def read_regular_file(path: Path | str, what: str, limit: int, regular_only: bool = True) -> bytes:
    """At most ``limit`` bytes of ``path``; anything but a regular file, a file over
    the limit, binary data, or a file that cannot be read without waiting is an
    InputError naming the path only. Without ``regular_only`` a pipe is read too (to
    its end or the limit, ``PIPE_WAIT_S`` at most: a pipe nobody writes to is an error,
    not a hang), a device or a directory still refused."""
    # never a blocking open or read: a FIFO without a writer, /proc/kmsg, a terminal
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigFileMissing(path, what) from None
    except PermissionError:
        raise ConfigFileNotReadable(path, what) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open {what}: {_reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        kind = _KINDS.get(stat.S_IFMT(mode))
        if regular_only and (kind is not None or not stat.S_ISREG(mode)):
            raise InputError(f"{path}: is {kind or 'not a regular file'}, expected {what}")
        if stat.S_ISDIR(mode) or stat.S_ISBLK(mode):
            raise InputError(f"{path}: is {kind or 'not a regular file'}, expected {what}")
        if stat.S_ISFIFO(mode):
            return _read_pipe(fd, path, what, limit)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            if b"\x00" in chunk:  # /dev/zero refused at once
                raise InputError(f"{path}: binary data, not text; expected {what}")
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InputError(
                    f"{path}: more than {limit // 1024} KiB; expected {what}, which is "
                    "never this large"
                )
    except BlockingIOError:
        raise InputError(f"{path}: cannot be read without waiting; expected {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


PIPE_WAIT_S = 10.0  # for an operator's pipe (--config nginx=<(...)): writer and data


def _read_pipe(fd: int, path: Path | str, what: str, limit: int) -> bytes:
    """A pipe the operator named, opened without blocking: wait for its writer's data
    and its end, ``PIPE_WAIT_S`` in all (Linux does not report a hang-up on a FIFO that
    never had a writer, so poll waits for one)."""
    deadline = time.monotonic() + PIPE_WAIT_S
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            raise InputError(
                f"{path}: a pipe that gave no end of file within {PIPE_WAIT_S:.0f} s; "
                f"expected {what}"
            )
        try:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        if b"\x00" in chunk:
            raise InputError(f"{path}: binary data, not text; expected {what}")
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise InputError(f"{path}: more than {limit // 1024} KiB; expected {what}")


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "error")


_SEPARATOR = re.compile(r"(?<!\\)(?:\s*+[=:]\s*+|\s++)")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


def key_value(logical: str) -> tuple[str, str]:
    """A Java properties line's key and value: ``key=value``, ``key: value``, ``key value``."""
    parts = _SEPARATOR.split(logical, maxsplit=1)
    return _unescape(parts[0]), _unescape(parts[1]) if len(parts) > 1 else ""


def properties_with_lines(text: str) -> dict[str, Located]:
    """Java properties (zoo.cfg, server.properties): the last value of each key, with
    the line it starts on."""
    found: dict[str, Located] = {}
    logical, first = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if not logical:
            first = number
        if (len(line) - len(line.rstrip("\\"))) % 2:
            logical += line[:-1]
            continue
        key, value = key_value(logical + line)
        found[key] = (value.strip(), first)
        logical = ""
    if logical:
        key, value = key_value(logical)
        found[key] = (value.strip(), first)
    return found


_SIZE = re.compile(r"([0-9]+)([kKmMgG]?)", re.ASCII)


def size(text: str, path: Path | str, line: int, what: str) -> int:
    """``64k``, ``1m``, ``102400`` as bytes (k = 1024, m = 1024**2, g = 1024**3)."""
    match = _SIZE.fullmatch(text.strip())
    number = to_int(match.group(1)) if match else None
    if match is None or number is None:
        raise InputError(f"{path}:{line}: {what} is not a size (bytes, or with k, m, g)")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return number * factor


def whole_number(text: str, path: Path | str, line: int, what: str) -> int:
    """ASCII digits (a leading ``-`` or ``+`` allowed), of bounded length."""
    number = to_int(text.strip().removeprefix("+"))
    if number is None:
        raise InputError(f"{path}:{line}: {what} is not a whole number")
    return number


def port_number(text: str, path: Path | str, line: int, what: str) -> int:
    """A port: ASCII digits from 0 to 65535."""
    number = _port(text.strip())
    if number is None:
        raise InputError(f"{path}:{line}: {what} is not a port (0 to 65535)")
    return number


def _port(text: str) -> int | None:
    number = to_int(text) if is_number(text) else None
    return number if number is not None and number <= 65535 else None


def host_port(text: str, default_port: int | None = None) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port``, ``port`` or (with a default port) ``host``, as
    (host, port); "" for a bare port. None if it is not an address (a port is ASCII
    digits up to 65535)."""
    text = text.strip()
    if is_number(text):
        bare = _port(text)
        return None if bare is None else ("", bare)
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    elif text.count(":") > 1:
        # IPv6 without brackets (RabbitMQ's ::1:5672, :::5672): the last part is the port
        host, _, port = text.rpartition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host, port = text, ""
    else:
        host, _, port = text.partition(":")
    if port:
        number = _port(port)
        return None if number is None else (host, number)
    if default_port is not None:
        return host, default_port
    return None
