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

from pathlib import Path
from typing import Any

import yaml

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.sources.textfile import read_text

SOL_SOCKET, SO_RCVBUF = 1, 8
LINE = "__line__"


class _Loader(yaml.SafeLoader):
    """Every mapping gets the line it starts on."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[LINE] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _number(value: Any) -> int | None:
    if isinstance(value, dict):  # a wrapped UInt32Value written as {value: N}
        value = value.get("value")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read(path: Path) -> ServerConfig:
    text = read_text(path, "Envoy configuration")
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML or JSON Envoy configuration ({exc})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected an Envoy bootstrap (a mapping)")
    listeners = (document.get("static_resources") or {}).get("listeners") or []
    if not listeners and "address" in document:  # a single listener file
        listeners = [document]
    out = []
    for listener in listeners:
        if not isinstance(listener, dict):
            continue
        address = ((listener.get("address") or {}).get("socket_address")) or {}
        port = _number(address.get("port_value"))
        if port is None:
            continue
        host = str(address.get("address", ""))
        rcvbuf = None
        for option in listener.get("socket_options") or []:
            if (
                isinstance(option, dict)
                and _number(option.get("level")) == SOL_SOCKET
                and _number(option.get("name")) == SO_RCVBUF
            ):
                rcvbuf = _number(option.get("int_value"))
        backlog = _number(listener.get("tcp_backlog_size"))
        name = listener.get("name", f"{host}:{port}")
        out.append(
            ConfiguredListener(
                host,
                port,
                backlog,
                rcvbuf,
                f"{path}:{listener.get(LINE, 0)}",
                f"listener {name}",
            )
        )
    return ServerConfig("envoy", str(path), tuple(out))
