"""nginx's configuration: every ``listen`` of every ``server`` (http and stream), with
its ``backlog=`` and ``rcvbuf=``, following ``include``.

nginx listens with backlog 511 on Linux unless ``listen ... backlog=N`` says otherwise
(NGX_LISTEN_BACKLOG, src/os/unix/ngx_linux_config.h), and ``listen ... rcvbuf=SIZE``
sets SO_RCVBUF on the listening socket once it listens
(ngx_configure_listening_sockets, src/core/ngx_connection.c): the lock the SYN-cookie
window-scale bug needs. Both may be given once per address and port; other ``listen``
directives of the same address share that socket, so a socket's settings are merged
over every directive naming it.

The syntax read: directives ending in ``;``, blocks in ``{ }``, ``#`` comments, single
or double quotes, and ``include`` (a path or glob, relative to the main file's
directory, nginx's configuration prefix). Every file the includes open counts against
one ``Budget`` (files, bytes, depth, time), so includes that fan out stop at its total.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.sources.config.common import Budget, host_port, size, whole_number

# (file, line, words, opens a block)
Directive = tuple[str, int, list[str], bool]


def _tokens(text: str, path: str) -> Iterator[tuple[int, str]]:
    """(line, token): words (quotes removed), and the specials ``{ } ;``."""
    line, i, n = 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield line, c
            i += 1
        elif c in "\"'":
            end = i + 1
            while end < n and text[end] != c:
                end += 2 if text[end] == "\\" else 1
            if end >= n:
                raise InputError(f"{path}:{line}: a quote that is never closed")
            word = text[i + 1 : end]
            yield line, word
            line += word.count("\n")
            i = end + 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "{};\"'":
                i += 2 if text[i] == "\\" else 1
            yield line, text[start:i]


def _directives(
    path: Path, prefix: Path, depth: int, seen: frozenset[str], budget: Budget
) -> Iterator[Directive | str]:
    """The file's directives in order, ``include`` followed, and ``}`` for each block end.
    A file already open further up is skipped (a cycle); errors name the line only."""
    budget.check_depth(path, depth)
    name = str(path)
    words: list[str] = []
    first = 0
    for line, token in _tokens(budget.read(path, "nginx configuration"), name):
        if token in ";{":
            if not words:
                raise InputError(f"{name}:{line}: '{token}' without a directive")
            if token == ";" and words[0] == "include" and len(words) == 2:
                pattern = words[1] if Path(words[1]).is_absolute() else str(prefix / words[1])
                matches = budget.glob(pattern) if glob.has_magic(pattern) else [pattern]
                for included in matches:
                    key = _identity(included)
                    if key in seen:
                        continue
                    yield from _directives(Path(included), prefix, depth + 1, seen | {key}, budget)
            else:
                yield name, first, words, token == "{"
            words = []
        elif token == "}":
            if words:
                raise InputError(f"{name}:{line}: a directive without ';'")
            yield "}"
        else:
            if not words:
                first = line
            words.append(token)
    if words:
        raise InputError(f"{name}:{first}: the file ends inside a directive")


def _identity(path: str) -> str:
    """The file a path names (device and inode), or the path when it cannot be told."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return path
    return f"{found.st_dev}:{found.st_ino}"


def _address(argument: str) -> tuple[str, int] | None:
    if argument.startswith("unix:"):
        return None
    if argument.startswith("*:"):
        argument = argument[2:]
    if argument == "*":
        return "0.0.0.0", 80
    found = host_port(argument, default_port=80)
    if found is None:
        return None
    host, port = found
    if host in ("", "*"):
        host = "0.0.0.0"  # `listen 80` is every IPv4 address; IPv6 needs [::]:80
    return host, port


def parse(path: Path, budget: Budget | None = None) -> ServerConfig:
    prefix = path.parent
    stack: list[str] = []
    sockets: dict[tuple[str, int], ConfiguredListener] = {}
    budget = budget or Budget.for_operator()
    for item in _directives(path, prefix, 0, frozenset({_identity(str(path))}), budget):
        if item == "}":
            if not stack:
                raise InputError(f"{path}: a '}}' closes no block")
            stack.pop()
            continue
        name, line, words, opens = item  # type: ignore[misc]
        if opens:
            stack.append(words[0])
            continue
        if words[0] != "listen" or len(words) < 2 or stack[-1:] != ["server"]:
            continue
        found = _address(words[1])
        if found is None:
            continue
        backlog = rcvbuf = None
        for parameter in words[2:]:
            key, _, value = parameter.partition("=")
            if key == "backlog":
                backlog = whole_number(value, name, line, "backlog=")
            elif key == "rcvbuf":
                rcvbuf = size(value, name, line, "rcvbuf=")
        text = " ".join(words) + ";"
        before = sockets.get(found)
        if before is None or backlog is not None or rcvbuf is not None:
            sockets[found] = ConfiguredListener(
                found[0],
                found[1],
                backlog if backlog is not None else (before.backlog if before else None),
                rcvbuf if rcvbuf is not None else (before.rcvbuf if before else None),
                f"{name}:{line}",
                text,
            )
    if stack:
        raise InputError(f"{path}: {len(stack)} block(s) never closed")
    return ServerConfig("nginx", str(path), tuple(sockets.values()))


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    return parse(path, budget)
