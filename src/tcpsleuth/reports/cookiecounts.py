"""The SYN-cookie counts every report shows, in one wording: a capture's connections
judged cookie, ordinary (decided not a cookie) and undecided, the reasons the undecided
stayed so, and beside them the kernel's counter (TcpExtSyncookiesSent) where it is
known, with the cookies the capture could not attribute to a connection.

A capture that cannot judge its connections (no timestamps, nothing after the SYN-ACK)
has few cookie connections and many undecided ones: "0 of 1500" would read as "no
cookies", so the undecided are always counted beside the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COUNTER = "SYN cookies sent (TcpExtSyncookiesSent)"
VERDICTS = "cookie verdicts in the capture"
WHY = "undecided because"
NOT_ATTRIBUTED = "cookies the capture did not attribute"


def verdicts_text(
    cookie: int, ordinary: int, undecided: int, of: int | None, unit: str = "connections"
) -> str:
    """``117 SYN cookie, 33 ordinary, 0 undecided (of 150 connections)``."""
    text = f"{cookie} SYN cookie, {ordinary} ordinary, {undecided} undecided"
    return text + (f" (of {of} {unit})" if of is not None else "")


def why_text(undecided_why: Mapping[str, Any] | None) -> str | None:
    """The reasons connections stayed undecided, each with its count, most first."""
    if not undecided_why:
        return None
    ordered = sorted(undecided_why.items(), key=lambda item: -int(item[1]))
    return "; ".join(f"{count}: {reason}" for reason, count in ordered)


def not_attributed_text(sent: int, cookie: int) -> str | None:
    """The counter less the cookie connections, when positive (as
    ``cookies.not_attributed``, without loading the capture analyzer to render)."""
    missing = sent - cookie
    if missing <= 0:
        return None
    return (
        f"{missing} (the kernel counted {sent}, the capture shows {cookie} cookie "
        "connections: the rest are among the undecided, repeated SYN-ACKs, or outside "
        "the capture)"
    )


def rows(cookies: Mapping[str, Any], connections: int | None) -> list[tuple[str, Any]]:
    """Rows of a facts table: the counter where the document holds one (``sent``), the
    three counts of the capture's connections, why the undecided are, and the cookies the
    capture did not attribute. ``cookies`` is a ``syn_cookies`` section (recorder) or
    ``cookies.totals`` (a capture); ``connections`` all the capture's connections, for
    sections written before ``ordinary_connections`` was (cookie, ordinary and undecided
    add up to them)."""
    out: list[tuple[str, Any]] = []
    sent = cookies.get("sent")
    if "sent" in cookies:
        out.append((COUNTER, "—" if sent is None else sent))
    cookie, undecided = cookies.get("cookie_connections"), cookies.get("undecided_connections")
    if cookie is None or undecided is None:
        out.append((VERDICTS, "— (no capture analysed)"))
        return out
    total = cookies.get("connections", connections)
    ordinary = cookies.get("ordinary_connections")
    if ordinary is None and total is not None:
        ordinary = total - cookie - undecided
    if ordinary is None:
        out.append((VERDICTS, f"{cookie} SYN cookie, {undecided} undecided"))
    else:
        out.append((VERDICTS, verdicts_text(cookie, ordinary, undecided, total)))
    why = why_text(cookies.get("undecided_why"))
    if undecided and why:
        out.append((WHY, why))
    if sent is not None:
        missing = not_attributed_text(int(sent), int(cookie))
        if missing:
            out.append((NOT_ATTRIBUTED, missing))
    return out
