"""Standard output that a closed pipe cannot break.

``tcpsleuth pcap x.pcap | head -1``: once the reader has gone, writes raise
BrokenPipeError. The guard installed as ``sys.stdout`` swallows that error, sends the
rest of the output to /dev/null (so that the interpreter's last flush is quiet too) and
lets the command finish, so that it ends with the status it would have had. Commands
that write without end (``watch``) ask :func:`stdout_closed` and stop.

Both guards also show control characters as escapes (``\\x1b``): standard output and
error carry lines made of what tcpsleuth read (an error naming a file, a warning
quoting a line, the recorder's event lines), and no command's line, whoever wrote it,
may drive the terminal. Two writers go past that: rich's consoles, which escape on
their own after layout and add their colours (reports/table.py), and JSON, which has
no control character in it (json escapes them); they call ``write_rendered`` on
standard output and write to ``unguarded`` on standard error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any, TextIO

from tcpsleuth.model.text import printable

_closed = False


def stdout_closed() -> bool:
    return _closed


def _is_broken_pipe(exc: OSError) -> bool:
    return isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.ECONNRESET)


def _to_devnull(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null (its reader has gone), so that later
    writes and the interpreter's last flush are quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class PipeGuard:
    """A text stream in front of the real standard output."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _close(self) -> None:
        global _closed
        _closed = True
        _to_devnull(self._stream)

    def write(self, text: str) -> int:
        return self.write_rendered(printable(text, keep_newlines=True))

    def write_rendered(self, text: str) -> int:
        """``text`` as it is: for writers that escaped it already (module docstring)."""
        if _closed:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            if not _is_broken_pipe(exc):
                raise
            self._close()
            return len(text)

    def flush(self) -> None:
        if _closed:
            with contextlib.suppress(OSError):
                self._stream.flush()
            return
        try:
            self._stream.flush()
        except OSError as exc:
            if not _is_broken_pipe(exc):
                raise
            self._close()
            with contextlib.suppress(OSError):
                self._stream.flush()  # what was buffered now goes to /dev/null

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install() -> PipeGuard:
    """Put the guard in front of ``sys.stdout`` (once)."""
    if isinstance(sys.stdout, PipeGuard):
        return sys.stdout
    guard = PipeGuard(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    return guard


class StderrGuard:
    """A text stream in front of the real standard error: control characters in what
    is written are shown as escapes; newlines and tabs are kept. Once its reader has
    gone (a supervisor that stopped reading, then sent SIGTERM), what is written is
    dropped: there is nobody to tell, and the command ends with its own status."""

    def __init__(self, stream: TextIO) -> None:
        self.unguarded = stream
        self.gone = False

    def write(self, text: str) -> int:
        if self.gone:
            return len(text)
        try:
            self.unguarded.write(printable(text, keep_newlines=True))
        except OSError as exc:
            if not _is_broken_pipe(exc):
                raise
            self._drop()
        return len(text)

    def flush(self) -> None:
        try:
            self.unguarded.flush()
        except OSError as exc:
            if not _is_broken_pipe(exc):
                raise
            self._drop()

    def _drop(self) -> None:
        self.gone = True
        _to_devnull(self.unguarded)
        with contextlib.suppress(OSError):
            self.unguarded.flush()  # what was buffered now goes to /dev/null

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unguarded, name)


def install_stderr_guard() -> StderrGuard:
    """Put the guard in front of ``sys.stderr`` (once)."""
    if isinstance(sys.stderr, StderrGuard):
        return sys.stderr
    guard = StderrGuard(sys.stderr)
    sys.stderr = guard  # type: ignore[assignment]
    return guard
