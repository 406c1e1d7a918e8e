"""Redis's ``redis.conf``: ``port``, ``bind`` and ``tcp-backlog`` (default 511, in the
shipped redis.conf and built in), following ``include``. Redis sets no SO_RCVBUF on its
listening sockets: ``rcvbuf`` stays None.

``bind`` lists addresses; a leading ``-`` marks one that may be missing (``-::*``), ``*``
is every IPv4 address and ``::*`` every IPv6 one. Without ``bind`` Redis listens on
every address. ``port 0`` means no TCP listener. Includes count against one ``Budget``.
"""

from __future__ import annotations

from pathlib import Path

from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.sources.config.common import Budget, port_number, whole_number

DEFAULT_PORT = 6379


def _lines(path: Path, budget: Budget, depth: int = 0) -> list[tuple[str, int, list[str]]]:
    budget.check_depth(path, depth)
    out = []
    for number, raw in enumerate(budget.read(path, "redis.conf").splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].lower() == "include" and len(words) == 2:
            out += _lines(Path(words[1]), budget, depth + 1)
        else:
            out.append((str(path), number, words))
    return out


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    port, port_at = DEFAULT_PORT, ""
    binds: list[str] = []
    bind_at = ""
    backlog = None
    backlog_at = ""
    settings: dict[str, str] = {}
    for name, line, words in _lines(path, budget or Budget.for_operator()):
        key = words[0].lower()
        if key == "port" and len(words) > 1:
            port, port_at = port_number(words[1], name, line, "port"), f"{name}:{line}"
            settings["port"] = words[1]
        elif key == "bind":
            binds, bind_at = words[1:], f"{name}:{line}"
            settings["bind"] = " ".join(words[1:])
        elif key == "tcp-backlog" and len(words) > 1:
            backlog = whole_number(words[1], name, line, "tcp-backlog")
            backlog_at = f"{name}:{line}"
            settings["tcp-backlog"] = words[1]
    if port == 0:
        return ServerConfig("redis", str(path), (), settings, ("port 0: no TCP listener",))
    where = backlog_at or bind_at or port_at or str(path)
    text = f"tcp-backlog {backlog}" if backlog is not None else f"port {port}"
    hosts = []
    for address in binds or ["*", "::*"]:
        address = address.lstrip("-")
        hosts.append({"*": "0.0.0.0", "::*": "::"}.get(address, address))
    return ServerConfig(
        "redis",
        str(path),
        tuple(ConfiguredListener(host, port, backlog, None, where, text) for host in hosts),
        settings,
    )
