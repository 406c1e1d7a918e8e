"""PostgreSQL's ``postgresql.conf``: ``listen_addresses``, ``port`` and
``max_connections``, following ``include``, ``include_if_exists`` and ``include_dir``.

PostgreSQL has no backlog setting: the postmaster listens with 2 x max_connections
(ListenServerPort in src/backend/libpq/pqcomm.c: ``listen(fd, MaxConnections * 2)``;
releases before 16 used 2 x MaxBackends, capped at PG_SOMAXCONN), so a configured
listener's ``backlog`` is that, from the file's max_connections (default 100). It sets
no SO_RCVBUF on its listening sockets. Includes count against one ``Budget``.
"""

from __future__ import annotations

import contextlib
import glob
import re
from pathlib import Path

from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.sources.config.common import (
    Budget,
    ConfigFileMissing,
    port_number,
    whole_number,
)

DEFAULT_PORT = 5432
DEFAULT_MAX_CONNECTIONS = 100
# possessive: a name followed by a long run of blanks is read in one pass, not tried
# at every split of the run between the two \s*
_SETTING = re.compile(r"\s*+([A-Za-z_.]++)\s*+=?\s*+('(?:[^']|'')*+'|[^\s#]++)")


def _settings(
    path: Path, found: dict[str, tuple[str, str]], budget: Budget, depth: int = 0
) -> None:
    budget.check_depth(path, depth)
    for number, raw in enumerate(budget.read(path, "postgresql.conf").splitlines(), start=1):
        match = _SETTING.match(raw)
        if match is None:
            continue
        key, value = match.group(1).lower(), match.group(2)
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        where = f"{path}:{number}"
        if key in ("include", "include_if_exists", "include_dir"):
            target = Path(value) if Path(value).is_absolute() else path.parent / value
            if key == "include_dir":
                for child in budget.glob(glob.escape(str(target)) + "/*.conf"):
                    _settings(Path(child), found, budget, depth + 1)
            elif key == "include":
                _settings(target, found, budget, depth + 1)
            else:
                with contextlib.suppress(ConfigFileMissing):  # include_if_exists
                    _settings(target, found, budget, depth + 1)
            continue
        found[key] = (value, where)


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    found: dict[str, tuple[str, str]] = {}
    _settings(path, found, budget or Budget.for_operator())
    port = DEFAULT_PORT
    if "port" in found:
        value, where = found["port"]
        port = port_number(value, where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1]), "port")
    max_connections = None
    if "max_connections" in found:
        value, where = found["max_connections"]
        max_connections = whole_number(
            value, where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1]), "max_connections"
        )
    backlog = 2 * max_connections if max_connections is not None else None
    addresses = found.get("listen_addresses", ("localhost", ""))[0]
    hosts: list[str] = []
    for address in (a.strip() for a in addresses.split(",")):
        if address == "*":
            hosts += ["0.0.0.0", "::"]
        elif address == "localhost":
            hosts += ["127.0.0.1", "::1"]
        elif address:
            hosts.append(address)
    where = found.get("max_connections", found.get("listen_addresses", ("", str(path))))[1]
    text = (
        f"max_connections = {max_connections}"
        if max_connections is not None
        else f"listen_addresses = '{addresses}'"
    )
    return ServerConfig(
        "postgresql",
        str(path),
        tuple(ConfiguredListener(host, port, backlog, None, where, text) for host in hosts),
        {
            key: value
            for key, (value, _) in found.items()
            if key in ("listen_addresses", "port", "max_connections")
        },
    )
