"""`ss -tni` text read the plainest way, apart from tcpsleuth's own parser: the tests'
witness of what `ss` printed.

A socket is one line that starts in the first column (state, queues, both ends; without
the State column when `ss` was asked for one state), then its indented details. Any
socket's line ends the one before it, whatever its state: the details below a FIN-WAIT-1
line are that socket's, not those of the ESTAB socket above it.
"""

from __future__ import annotations

import re

_NUMBERS = {
    "busy_ms": re.compile(r"\bbusy:(\d+)ms"),
    "rwnd_limited_ms": re.compile(r"\brwnd_limited:(\d+)ms"),
    "snd_wnd": re.compile(r"\bsnd_wnd:(\d+)"),
}
_WSCALE = re.compile(r"\bwscale:(\d+),(\d+)")


def sockets(text: str, state: str = "ESTAB") -> dict[tuple[str, str], dict[str, int]]:
    """(local, remote) -> {"snd", "rcv" (the shifts), "busy_ms", "rwnd_limited_ms",
    "snd_wnd"}, whichever the details carry, for each socket in `state`; a text filtered
    to one state (no State column) counts as that state."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            current = None
            if fields[0] in ("State", "Recv-Q", "Netid"):
                continue  # the header
            has_state = not fields[0].isdigit()
            if has_state and fields[0] != state:
                continue
            local, remote = fields[3:5] if has_state else fields[2:4]
            current = out.setdefault((local, remote), {})
        elif current is not None:
            if shifts := _WSCALE.search(line):
                current["snd"], current["rcv"] = int(shifts.group(1)), int(shifts.group(2))
            for name, pattern in _NUMBERS.items():
                if found := pattern.search(line):
                    current[name] = int(found.group(1))
    return out


def shifts(text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(local, remote) -> (snd_wscale, rcv_wscale) of each established socket that shows
    window scaling."""
    return {key: (info["snd"], info["rcv"]) for key, info in sockets(text).items() if "snd" in info}
