"""The layers keep their places: sources read, ``model/`` holds the types, detectors
judge without I/O, reports render, ``cli/`` and the lab wire. Every import in the
package (function-local ones too) is read from the source with ``ast`` and held
against what each layer may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "tcpsleuth"
# what modules of each layer must not import
FORBIDDEN = {
    "model": ("sources", "detectors", "reports", "cli", "lab"),
    "compiled": ("sources", "detectors", "reports", "cli", "lab", "model"),
    "detectors": ("sources", "reports", "cli", "lab"),
    "reports": ("sources", "cli", "lab"),
    "sources": ("detectors", "reports", "cli", "lab"),
    # the recorder is wiring beside cli/ and lab/, used by cli/ (record, report)
    "recorder": ("cli", "lab"),
    # use cases shared by commands (the audit for audit and doctor), used by cli/
    "usecases": ("cli",),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``source``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations(layer: str, source: str) -> list[str]:
    bad = []
    for line, module in imported_modules(source):
        parts = module.split(".")
        if parts[0] == "tcpsleuth" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
            bad.append(f"line {line}: {module}")
    return bad


def layer_of(path: Path) -> str | None:
    first = path.relative_to(PACKAGE).parts[0]
    name = first.removesuffix(".py")
    return name if name in FORBIDDEN else None


def test_the_contract_catches_a_forbidden_import() -> None:
    """The check itself can fail: a detector that reads a source is caught, wherever
    the import hides."""
    sneaky = "def f():\n    from tcpsleuth.sources.pcap import open_capture\n"
    assert violations("detectors", sneaky) == ["line 2: tcpsleuth.sources.pcap"]
    assert violations("detectors", "import tcpsleuth.lab.runner\n") == [
        "line 1: tcpsleuth.lab.runner"
    ]
    assert violations("detectors", "from tcpsleuth.model.capture import SYN\n") == []


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p)),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_module_imports_only_what_its_layer_may(path: Path) -> None:
    layer = layer_of(path)
    assert layer is not None
    assert violations(layer, path.read_text()) == []


REPORT_HEAVY = (
    "import atexit, sys\n"
    "atexit.register(lambda: print(sorted(m for m in ('numba', 'matplotlib')"
    " if m in sys.modules), file=sys.stderr))\n"
    "from tcpsleuth.cli.main import main\n"
    "main({argv!r})\n"
)


def _heavy_modules_loaded(argv: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", REPORT_HEAVY.format(argv=argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [[], ["audit"], ["sockets"], ["watch"], ["exporter"], ["doctor"], ["record"], ["report"]],
    ids=lambda argv: " ".join(argv) or "tcpsleuth",
)
def test_each_command_imports_only_what_it_uses(argv: list[str]) -> None:
    assert _heavy_modules_loaded([*argv, "--help"]) == "[]"


DATA = PACKAGE.parent.parent / "tests" / "data"


def test_a_small_capture_is_analysed_without_numba() -> None:
    """pcap on the 20-packet public capture runs its loops as Python (numba would cost
    more than the analysis); a storm's capture loads numba, so the check can fail."""
    small = str(DATA / "go-sniffer-kafka.pcap")
    assert "numba" not in _heavy_modules_loaded(["pcap", "--format", "json", small])
    storm = str(DATA / "storm-prefix" / "server.pcap")
    assert "numba" in _heavy_modules_loaded(["pcap", "--format", "json", storm])


def module_graph() -> dict[str, set[str]]:
    """Which tcpsleuth module imports which (function-local imports included), each
    import resolved to the module it names: ``from a.b import c`` is ``a.b.c`` when
    that is a module, else ``a.b``."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]  # fmt: skip
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    """No cycle, not even one hidden by a function-local import: a package's own
    ``__init__`` re-exporting its modules is the one allowed shape (a module of the
    package importing a sibling through the package name resolves to the sibling)."""
    graph = module_graph()
    assert len(graph) > 80
    for module, edges in graph.items():  # a package's re-exports are not a cycle
        graph[module] = {e for e in edges if not module.startswith(e + ".")}
    assert cycles(graph) == []
