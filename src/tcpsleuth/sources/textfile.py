"""Reading user-given text files so that every parser fails the same clear way."""

from __future__ import annotations

from pathlib import Path

from tcpsleuth.errors import InputError


def read_text(path: Path, what: str) -> str:
    """The file's text, or an InputError naming the file and what is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected {what}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if b"\x00" in data:
        raise InputError(f"{path}: binary data, not text; expected {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not text (invalid UTF-8 at byte {exc.start}); expected {what}"
        ) from None


def where(path: Path | str, line_number: int) -> str:
    return f"{path}:{line_number}"
