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

import math
import re

# Longer than any count, size or port a kernel or a server writes (2**64 has 20 digits)
MAX_DIGITS = 30

# a decimal as tools print it: 12, 0.021, .5, 1e3 (no sign, no nan, no inf, ASCII only)
_ASCII_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
# C0 and C1 controls and DEL; tab and newline are handled by the caller's layout
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_number(text: str, max_digits: int = MAX_DIGITS) -> bool:
    """True when ``text`` is 1 to ``max_digits`` ASCII digits, nothing else."""
    # str.isdigit alone takes `²` and `٣`; with isascii it is exactly [0-9], and both
    # run in C (a parser of 100k `ss` lines calls this a million times)
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def to_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """ASCII digits as an int (an optional leading ``-``); None for anything else."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not is_number(digits, max_digits):
        return None
    value = int(digits)
    return -value if negative else value


def to_float(text: str, max_chars: int = MAX_DIGITS) -> float | None:
    """A decimal of ASCII digits (``0.021``, ``12``, ``1e3``, an optional leading ``-``)
    as a finite float; None for anything else: ``nan``, ``inf``, ``1e999`` (which
    ``float`` reads as infinity), Unicode digits, more than ``max_chars`` characters."""
    negative = text.startswith("-")
    body = text[1:] if negative else text
    if not 0 < len(body) <= max_chars or _ASCII_DECIMAL.fullmatch(body) is None:
        return None
    value = float(body)
    if not math.isfinite(value):
        return None
    return -value if negative else value


def shortened(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut) and made
    printable: how an error message quotes what it could not read, so that a 5,000
    digit number or a 200 KB line makes one short line."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return printable(cut)


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
