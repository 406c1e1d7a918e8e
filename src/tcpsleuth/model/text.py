"""Text that came from outside, made safe to count with and to print.

Everything tcpsleuth reads may have been written by somebody else: another user's
command line and process name, a configuration file, a client's ``client.id``, a
bundle copied from another host. Two rules hold wherever such text is used:

- It becomes a number only if it is ASCII digits of a bounded length. ``str.isdigit``
  accepts ``²`` and ``٣``, which ``int`` refuses or reads, and Python refuses to
  convert more than 4,300 digits; both used to end commands with a traceback.
- It reaches a terminal or a log line only with its control characters made visible
  (``\\x1b`` printed as the four characters ``\\x1b``), so nothing read can move the
  cursor, retitle the terminal or hide a line.
"""

from __future__ import annotations

import re

# Longer than any count, size or port a kernel or a server writes (2**64 has 20 digits)
MAX_DIGITS = 30

_ASCII_DIGITS = re.compile(r"[0-9]+")
# C0 and C1 controls and DEL; tab and newline are handled by the caller's layout
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_number(text: str, max_digits: int = MAX_DIGITS) -> bool:
    """True when ``text`` is 1 to ``max_digits`` ASCII digits, nothing else."""
    return 0 < len(text) <= max_digits and _ASCII_DIGITS.fullmatch(text) is not None


def to_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """ASCII digits as an int (an optional leading ``-``); None for anything else."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not is_number(digits, max_digits):
        return None
    value = int(digits)
    return -value if negative else value


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``); tabs and,
    with ``keep_newlines``, newlines are kept as they are."""
    pattern = _CONTROL if keep_newlines else _CONTROL_ALL

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char == "\t" or (keep_newlines and char == "\n"):
            return char
        return f"\\x{ord(char):02x}"

    return pattern.sub(escape, text)
