"""Reading user-given text files so that every parser fails the same clear way."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from tcpsleuth.errors import InputError

MAX_TEXT_BYTES = 512 * 1024 * 1024  # far above any `ss`, nstat or config file
_CHUNK = 1 << 20


def read_limited(stream: BinaryIO, source: Path | str, what: str) -> bytes:
    """Everything in ``stream`` up to MAX_TEXT_BYTES, read a chunk at a time so that
    /dev/zero or an endless pipe is refused at once (NUL) or at the limit, never read
    until memory runs out."""
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(_CHUNK):
        if b"\x00" in chunk:
            raise InputError(f"{source}: binary data, not text; expected {what}")
        total += len(chunk)
        if total > MAX_TEXT_BYTES:
            raise InputError(
                f"{source}: more than {MAX_TEXT_BYTES // 2**20} MiB; expected {what}, "
                "which is never this large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode_text(data: bytes, source: Path | str, what: str, latin1: bool = False) -> str:
    """UTF-8; with ``latin1`` what is not UTF-8 is read as ISO-8859-1, as Java reads
    a .properties file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if latin1:
            return data.decode("latin-1")
        raise InputError(
            f"{source}: not text (invalid UTF-8 at byte {exc.start}); expected {what}"
        ) from None


def read_text(path: Path, what: str, latin1: bool = False) -> str:
    """The file's text, or an InputError naming the file and what is wrong with it."""
    try:
        with path.open("rb") as stream:
            data = read_limited(stream, path, what)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected {what}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    return decode_text(data, path, what, latin1)


def file_line(path: Path | str, line_number: int) -> str:
    """``FILE:LINE``, where a message about a line of ``path`` points."""
    return f"{path}:{line_number}"
