"""Envoy's YAML, loaded with its aliases bounded and every mapping's line kept: apart
from ``envoy`` so that PyYAML is imported only when an Envoy file is read (every command
that takes --kafka-config loads the configuration readers, and YAML costs 11 ms of
start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tcpsleuth.errors import InputError

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
