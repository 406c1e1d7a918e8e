"""Sizes a reader can hold: no module under ``src/tcpsleuth`` over ``MAX_MODULE`` lines,
no function over ``MAX_FUNCTION`` lines, and a module over ``NOTE_FROM`` lines says at
the top of its docstring about how long it is ("About N lines") and why, within
``NOTE_SLACK`` of its real length. Read from the source with ``ast``, like
``test_layers.py``; each check is shown failing on a planted violation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "tcpsleuth"
MAX_MODULE = 600
MAX_FUNCTION = 80
LONG_FUNCTION_MAX = 120  # even an allowed one
NOTE_FROM = 450
NOTE_SLACK = 0.10  # of the real length

# Functions allowed to be longer (up to LONG_FUNCTION_MAX), each with its reason (path
# relative to the package, then the function's name). The four are compiled loops over
# a chunk's packets: each keeps a dozen arrays and per-packet locals in registers, and
# their parts already are helpers where a cut did not cost speed (measured in
# bench/bench_pcap.py; see compiled.py on reference counting across helper calls).
_HOT_LOOP = "a compiled per-packet loop; cut further only with bench/bench_pcap.py before and after"
LONG_FUNCTIONS: dict[tuple[str, str], str] = {
    ("sources/pcap/decode.py", "_decode_packets"): _HOT_LOOP,
    ("detectors/capture/kafka_framing.py", "follow"): _HOT_LOOP,
    ("detectors/capture/kernels.py", "assign"): _HOT_LOOP,
    ("detectors/capture/kernels.py", "follow_handshakes"): _HOT_LOOP,
}

# Modules allowed to be longer, each with its reason (path relative to the package).
LONG_MODULES: set[str] = set()

NOTE = re.compile(r"[Aa]bout (\d+) lines")


def long_functions(source: str, limit: int = MAX_FUNCTION) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, nested
    ones too; a function's lines include those of the functions nested in it."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def size_note_problem(source: str) -> str | None:
    """Why the module's "About N lines" note is missing or wrong, or None."""
    lines = len(source.splitlines())
    docstring = ast.get_docstring(ast.parse(source)) or ""
    note = NOTE.search(docstring)
    if note is None:
        return f"{lines} lines and no 'About N lines' note" if lines > NOTE_FROM else None
    said = int(note.group(1))
    if abs(said - lines) > NOTE_SLACK * lines:
        return f"says about {said} lines, has {lines}"
    return None


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_size_checks_can_fail() -> None:
    def body(lines: int, indent: str = "    ") -> str:
        return f"{indent}x = 1\n" * lines

    nested = (
        f"class C:\n    def big(self):\n        def inner():\n{body(MAX_FUNCTION - 2, ' ' * 12)}"
    )
    assert long_functions(nested) == []  # at the limit, `inner` inside them
    assert long_functions(nested + "        return inner\n") == [("big", MAX_FUNCTION + 1)]
    assert long_functions(f"def f():\n{body(MAX_FUNCTION)}") == [("f", MAX_FUNCTION + 1)]
    assert long_functions(f"def f():\n{body(MAX_FUNCTION - 1)}") == []
    filler = "x = 1\n" * NOTE_FROM
    assert size_note_problem(f'"""Short."""\n{filler}') == (
        f"{NOTE_FROM + 1} lines and no 'About N lines' note"
    )
    assert size_note_problem(f'"""About 300 lines."""\n{filler}') == (
        f"says about 300 lines, has {NOTE_FROM + 1}"
    )
    assert size_note_problem(f'"""About 450 lines: one loop."""\n{filler}') is None
    assert size_note_problem('"""About 450 lines."""\nx = 1\n') == "says about 450 lines, has 2"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_short_enough(path: Path) -> None:
    if str(path.relative_to(PACKAGE)) not in LONG_MODULES:
        assert len(path.read_text().splitlines()) <= MAX_MODULE


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short_enough(path: Path) -> None:
    where = str(path.relative_to(PACKAGE))
    found = [
        (n, k) for n, k in long_functions(path.read_text()) if (where, n) not in LONG_FUNCTIONS
    ]
    assert found == []
    assert long_functions(path.read_text(), LONG_FUNCTION_MAX) == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_how_long_it_is(path: Path) -> None:
    assert size_note_problem(path.read_text()) is None


def test_the_allowed_long_functions_exist() -> None:
    """An allowed module or function that was cut, renamed or moved leaves the list."""
    for where in LONG_MODULES:
        assert len((PACKAGE / where).read_text().splitlines()) > MAX_MODULE, where
    for where, name in LONG_FUNCTIONS:
        names = {n for n, _ in long_functions((PACKAGE / where).read_text())}
        assert name in names, (where, name)
