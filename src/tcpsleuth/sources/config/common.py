"""What the configuration readers share: Java-properties and `key = value` files with
line numbers, sizes with unit suffixes, and addresses with ports."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.sources.kafkaconfig import _key_value

# A setting as the file writes it, and where: (value, line number)
Located = tuple[str, int]


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
        key, value = _key_value(logical + line)
        found[key] = (value.strip(), first)
        logical = ""
    if logical:
        key, value = _key_value(logical)
        found[key] = (value.strip(), first)
    return found


_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")


def size(text: str, path: Path | str, line: int, what: str) -> int:
    """``64k``, ``1m``, ``102400`` as bytes (k = 1024, m = 1024**2, g = 1024**3)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise InputError(f"{path}:{line}: {what} {text!r} is not a size (bytes, or with k, m, g)")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * factor


def whole_number(text: str, path: Path | str, line: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{path}:{line}: {what} {text!r} is not a whole number") from None


def host_port(text: str, default_port: int | None = None) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port``, ``port`` or (with a default port) ``host``, as
    (host, port); "" for a bare port. None if it is not an address."""
    text = text.strip()
    if text.isdigit():
        return "", int(text)
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
    if port.isdigit():
        return host, int(port)
    if not port and default_port is not None:
        return host, default_port
    return None
