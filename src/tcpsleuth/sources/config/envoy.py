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

import yaml

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.model.text import to_int
from tcpsleuth.sources.config.common import Budget

SOL_SOCKET, SO_RCVBUF = 1, 8
LINE = "__line__"
# A bootstrap has no use for more than a few anchors; a document that would grow past
# MAX_NODES once its aliases are expanded (a "billion laughs": 14 lines, gigabytes) is
# refused before anything is built from it.
MAX_ALIASES = 64
MAX_NODES = 200_000


class _Loader(yaml.SafeLoader):
    """Every mapping gets the line it starts on; aliases are counted as they are met."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise InputError(f"more than {MAX_ALIASES} YAML aliases")
        return super().compose_node(parent, index)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[LINE] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many nodes the document has once every alias is expanded, counted without
    expanding them (each node's size once, shared by every alias of it); more than
    ``limit``, or a node that contains itself, is an InputError."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # iterative post-order: deep nesting must not exhaust Python's stack either
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if not children_done:
            if key in open_nodes:
                raise InputError("a YAML alias that contains itself")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        if total > limit:
            raise InputError(f"more than {limit} YAML nodes once its aliases are expanded")
        sizes[key] = total
    return sizes.get(id(root), 0)


def load(text: str, path: Path | str) -> Any:
    """The YAML or JSON document, aliases bounded; not YAML, deeper than Python's stack,
    or numbers Python refuses are an InputError naming the file (not its text)."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    except InputError as problem:
        raise InputError(f"{path}: not a usable Envoy configuration: {problem}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise InputError(f"{path}{line}: not YAML or JSON Envoy configuration") from None
    except (RecursionError, ValueError, TypeError, OverflowError):
        raise InputError(f"{path}: not a usable Envoy configuration (too deep or odd)") from None
    finally:
        if loader is not None:
            loader.dispose()


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
    document = load(text, path)
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
        line = listener.get(LINE)
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
