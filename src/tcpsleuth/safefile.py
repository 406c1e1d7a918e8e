"""Every file tcpsleuth writes, and the files of a directory someone else handed over
(an incident), as root on a host shared with other users.

Writing (:func:`write_file`, :func:`replacing`): a temporary file in the target's own
directory, created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name (nothing that
already exists is opened, so a planted symbolic link is never followed and no file is
truncated), written, fsync'd, then renamed over the name (a symbolic link there is
replaced, its target left alone) and the directory fsync'd. On any failure the temporary
file is removed: the name holds the old file or the whole new one, never a part.
Failures are :class:`WriteError`, both an ``InputError`` (exit 2, one line) and an
``OSError`` (for the recorder, which goes on).

Directories (:func:`make_dir`): made with their mode, never chmod'ed afterwards; one that
exists is used as it is, and one tcpsleuth keeps its own files in is checked to be a real
directory owned by this user that nobody else can write (:func:`unusable_dir`).

Reading a handed-over directory (:func:`read_file`, :func:`check_tree`): regular files
only, opened ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat`` (a FIFO never blocks
the reader, a device is never read), and no symbolic link anywhere in the tree: the
recorder makes none, so one that is there was put there by someone else.

This module is outside the layers (like ``errors``): every layer that writes or reads a
handed-over file uses it, so there is one copy of these rules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tcpsleuth.errors import InputError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_KIND = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
}


class WriteError(InputError, OSError):
    """A file could not be written; nothing of it was left behind. Its ``errno``,
    ``strerror`` and ``filename`` are the failure's; its text is the one line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _why(problem: OSError) -> str:
    if problem.errno == errno.ENOSPC:
        return "no space left on the file system"
    if problem.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return problem.strerror or str(problem)


def _failed(path: Path, problem: OSError) -> WriteError:
    error = WriteError(f"{path}: cannot write it ({_why(problem)}); nothing was written")
    error.errno, error.strerror, error.filename = problem.errno, problem.strerror, str(path)
    return error


def _refused_target(path: Path, info: os.stat_result) -> WriteError:
    kind = _KIND.get(stat.S_IFMT(info.st_mode), "not a regular file")
    error = WriteError(
        f"{path}: {kind}; tcpsleuth replaces only regular files and writes through no "
        "link: give another path"
    )
    error.errno, error.strerror, error.filename = errno.EEXIST, kind, str(path)
    return error


def _stream(path: Path, info: os.stat_result) -> bool:
    """A FIFO or character device named directly (``/dev/full``, a named pipe): written
    into, as a stream, rather than replaced."""
    return stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)


class _Temporary:
    """The file being written: a file object for the caller, committed by rename."""

    def __init__(self, path: Path, mode: int | None, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.dir_fd = os.open(path.parent, _DIR_FLAGS)
        self.name = f".{path.name[:200]}.{os.urandom(6).hex()}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                there = os.stat(path.name, dir_fd=self.dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(there.st_mode):
                    raise _refused_target(path, there)
            fd = os.open(
                self.name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666 if mode is None else mode & 0o600,
                dir_fd=self.dir_fd,
            )
        except BaseException:
            os.close(self.dir_fd)
            raise
        if mode is not None:
            os.fchmod(fd, mode)  # the file this call made, and nothing else
        self.out: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())
        self.out.close()
        os.rename(self.name, self.path.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.name = ""
        if self.sync:
            with contextlib.suppress(OSError):  # some file systems cannot sync a directory
                os.fsync(self.dir_fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
        if self.name:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.dir_fd)
        os.close(self.dir_fd)


@contextlib.contextmanager
def replacing(path: Path, mode: int | None = None, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; it becomes ``path`` when the
    block ends without an exception, and is removed otherwise. ``mode``: exactly this
    mode; None: what the umask leaves of 0666. ``sync``: on disk before the rename (a
    report, a page); without it the rename is still all or nothing for every reader,
    but a power cut may lose it (the recorder's files while an incident is made, written
    from its sampling loop, which an fsync on a busy disk would hold up for seconds)."""
    try:
        temporary = _Temporary(path, mode, sync)
    except WriteError:
        raise
    except OSError as problem:
        raise _failed(path, problem) from None
    try:
        yield temporary.out
        temporary.commit()
    except OSError as problem:
        temporary.discard()
        raise _failed(path, problem) from None
    except BaseException:
        temporary.discard()
        raise
    else:
        os.close(temporary.dir_fd)


def write_file(
    path: Path,
    data: bytes | str,
    mode: int | None = None,
    streams: bool = False,
    sync: bool = True,
) -> None:
    """``path`` holds ``data`` afterwards, whole, or what it held before (see above).
    Only a regular file is replaced; with ``streams`` (an output the user named), a
    FIFO or character device there (not a link to one) is written into instead."""
    data = data.encode() if isinstance(data, str) else data
    if streams:
        with contextlib.suppress(FileNotFoundError):
            there = os.lstat(path)
            if _stream(path, there):
                _write_stream(path, data)
                return
    with replacing(path, mode, sync) as out:
        out.write(data)


def output_kind(path: Path) -> str | None:
    """Why an output the user named cannot be written by :func:`write_file` with
    ``streams`` (None: it can, or it is not there yet)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(info.st_mode) or _stream(path, info):
        return None
    kind = _KIND.get(stat.S_IFMT(info.st_mode), "not a regular file")
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            kind += f" (to {os.readlink(path)})"
        return f"{kind}: tcpsleuth writes through no link"
    return f"{kind}, not a file"


def _write_stream(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as problem:
        raise _failed(path, problem) from None
    try:
        info = os.fstat(fd)
        if not _stream(path, info):
            raise _refused_target(path, info)
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as problem:
        if isinstance(problem, WriteError):
            raise
        raise _failed(path, problem) from None
    finally:
        os.close(fd)


def append_file(path: Path, data: bytes) -> None:
    """Add ``data`` to the end of ``path`` (a regular file, made with mode 0600 if it is
    not there): all of it, or nothing (a failed write is cut off again)."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as problem:
        raise _failed(path, problem) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WriteError(f"{path}: {_KIND.get(stat.S_IFMT(info.st_mode), 'not a file')}")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as problem:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, info.st_size)
            raise _failed(path, problem) from None
    finally:
        os.close(fd)


def make_dir(path: Path, mode: int = 0o700) -> bool:
    """Make ``path`` (and its missing parents) with ``mode``; True if this call made it.
    A directory that is already there keeps its mode: tcpsleuth changes the mode of no
    file it did not make."""
    try:
        os.mkdir(path, mode)
        return True
    except FileExistsError:
        return False
    except FileNotFoundError:
        make_dir(path.parent, mode)
        try:
            os.mkdir(path, mode)
            return True
        except FileExistsError:
            return False


def unusable_dir(path: Path, follow: bool = False) -> str | None:
    """Why tcpsleuth must not keep its files in ``path`` (None: it may): not a real
    directory (``follow``: a symbolic link the user gave to one is followed), owned by
    another user, or writable by another user."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return "it does not exist"
    except OSError as problem:
        return problem.strerror or str(problem)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"it is {_KIND.get(stat.S_IFMT(info.st_mode), 'not a directory')}"
    if info.st_uid != os.geteuid():
        return f"it belongs to uid {info.st_uid}"
    if info.st_mode & 0o022:
        return f"others can write it (mode {stat.S_IMODE(info.st_mode):04o})"
    if not os.access(path, os.W_OK):
        return "it is read-only"
    return None


def _refused(path: Path, info: os.stat_result) -> InputError:
    kind = _KIND.get(stat.S_IFMT(info.st_mode), "not a regular file")
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            kind += f" (to {os.readlink(path)})"
    return InputError(f"{path}: {kind}, not a regular file: refused (nothing is followed or read)")


def read_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not a symbolic link, FIFO or device),
    at most ``limit`` of them, or an InputError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as problem:
        if problem.errno == errno.ELOOP:
            raise _refused(path, os.lstat(path)) from None
        raise InputError(f"{path}: cannot read it ({problem.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(path, info)
        if info.st_size > limit:
            raise InputError(f"{path}: {info.st_size} bytes, more than the {limit} expected")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise InputError(f"{path}: more than the {limit} bytes expected")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as problem:
        raise InputError(f"{path}: cannot read it ({problem.strerror})") from None
    finally:
        os.close(fd)


def check_tree(root: Path) -> None:
    """An InputError naming the first entry under ``root`` that is neither a directory
    nor a regular file (symbolic links, FIFOs, devices, sockets)."""
    for parent, dirs, files in os.walk(root, onerror=None, followlinks=False):
        for name in (*dirs, *files):
            path = Path(parent) / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                raise _refused(path, info)
