"""ZooKeeper's ``zoo.cfg`` (Java properties): the client port and its backlog.

- ``clientPort`` (and ``clientPortAddress``, every address when absent): the port
  clients connect to; a dynamic configuration's ``server.N=...;[ADDRESS:]PORT`` gives
  it too;
- ``clientPortListenBacklog``: the backlog of the client port, new in 3.4.14, 3.5.5
  and 3.6.0; unset (or -1) the JDK's default, 50 on Linux (ZooKeeper Administrator's
  Guide).
- ``secureClientPort``: the TLS client port, with the same backlog.

ZooKeeper has no setting for the client port's receive buffer: ``rcvbuf`` stays None.
"""

from __future__ import annotations

from pathlib import Path

from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.sources.config.common import (
    Budget,
    host_port,
    port_number,
    properties_with_lines,
    whole_number,
)

SETTINGS = (
    "clientPort",
    "clientPortAddress",
    "clientPortListenBacklog",
    "secureClientPort",
    "maxClientCnxns",
)


def parse(text: str, path: Path | str) -> ServerConfig:
    found = properties_with_lines(text)
    backlog = None
    if "clientPortListenBacklog" in found:
        value, line = found["clientPortListenBacklog"]
        number = whole_number(value, path, line, "clientPortListenBacklog")
        backlog = number if number > 0 else None
    address = found.get("clientPortAddress", ("", 0))[0]
    listeners = []
    for key in ("clientPort", "secureClientPort"):
        if key not in found:
            continue
        value, line = found[key]
        port = port_number(value, path, line, key)
        text_line = f"{key}={value}"
        listeners.append(
            ConfiguredListener(address, port, backlog, None, f"{path}:{line}", text_line)
        )
    if not listeners:
        # a dynamic configuration: server.N=host:quorum:election[:role];[address:]clientport
        for key, (value, line) in found.items():
            if key.startswith("server.") and ";" in value:
                client = host_port(value.rsplit(";", 1)[1])
                if client is not None:
                    listeners.append(
                        ConfiguredListener(
                            client[0], client[1], backlog, None, f"{path}:{line}", f"{key}={value}"
                        )
                    )
    settings = {key: found[key][0] for key in SETTINGS if key in found}
    where_backlog = found.get("clientPortListenBacklog")
    notes = ()
    if where_backlog is None:
        notes = ("clientPortListenBacklog is not set: the client port listens with 50",)
    return ServerConfig("zookeeper", str(path), tuple(listeners), settings, notes)


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    return parse((budget or Budget.for_operator()).read(path, "ZooKeeper zoo.cfg"), path)
