"""Envoy's static listeners (a bootstrap YAML or JSON file): their address,
``tcp_backlog_size`` and the ``socket_options`` that set SO_RCVBUF.

Envoy listens with net.core.somaxconn as its backlog unless ``tcp_backlog_size`` is set
(api/envoy/config/listener/v3/listener.proto: "If no value is provided
net.core.somaxconn will be used on Linux"). A listener's ``socket_options`` entry with
``level: 1`` (SOL_SOCKET) and ``name: 8`` (SO_RCVBUF) sets the listening socket's
receive buffer, the lock the SYN-cookie window-scale bug needs, whatever its ``state``
(before bind, bound or listening). Listeners given over LDS are not in the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.model.text import to_int
from tcpsleuth.sources.config.common import Budget

SOL_SOCKET, SO_RCVBUF = 1, 8


def _number(value: Any, maximum: int = 2**32 - 1) -> int | None:
    """A whole number as protobuf's JSON mapping allows it (a number, or its digits as
    a string), within ``maximum``; anything else (a list, ``.inf``, a fraction) is None."""
    if isinstance(value, dict):  # a wrapped UInt32Value written as {value: N}
        value = value.get("value")
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, str):
        value = to_int(value.strip())
    if not isinstance(value, int) or not -(2**31) <= value <= maximum:
        return None
    return value


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _listeners(document: dict[str, Any]) -> list[Any]:
    listeners = _get(document.get("static_resources"), "listeners")
    if not isinstance(listeners, list):
        listeners = []
    if not listeners and "address" in document:  # a single listener file
        listeners = [document]
    return listeners


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    text = (budget or Budget.for_operator()).read(path, "Envoy configuration")
    # PyYAML only when an Envoy file is read: it costs every command 11 ms of start-up
    from tcpsleuth.sources.config import envoy_yaml

    document = envoy_yaml.load(text, path)
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected an Envoy bootstrap (a mapping)")
    out = []
    for listener in _listeners(document):
        if not isinstance(listener, dict):
            continue
        address = _get(_get(listener, "address"), "socket_address")
        port = _number(_get(address, "port_value"), 65535)
        if port is None or port < 0:
            continue
        host = _get(address, "address")
        host = host if isinstance(host, str) else ""
        rcvbuf = None
        options = listener.get("socket_options")
        for option in options if isinstance(options, list) else []:
            if (
                isinstance(option, dict)
                and _number(option.get("level")) == SOL_SOCKET
                and _number(option.get("name")) == SO_RCVBUF
            ):
                rcvbuf = _number(option.get("int_value"))
        backlog = _number(listener.get("tcp_backlog_size"))
        name = listener.get("name")
        name = name if isinstance(name, str) else f"{host}:{port}"
        line = listener.get(envoy_yaml.LINE)
        out.append(
            ConfiguredListener(
                host,
                port,
                backlog,
                rcvbuf,
                f"{path}:{line if isinstance(line, int) else 0}",
                f"listener {name}",
            )
        )
    return ServerConfig("envoy", str(path), tuple(out))
