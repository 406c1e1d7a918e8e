"""A compiled loop calls a compiled function of another module through that module
(``fourtuples.find_or_add``), never by a name imported from it: on the first
compiled call `tcpsleuth.compiled` rebinds each module's own global to numba's
dispatcher, so an imported name would still be the wrapper, which numba cannot type.
The capture tests would fail on that too, but only when numba is there and only in
the path that reaches the call; this says which call, from the source alone."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "src" / "tcpsleuth"


def _compiled(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """The module's functions marked ``@njit(...)``, by name."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "")
                if name == "njit":
                    out[node.name] = node
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """``module: caller -> name`` for each compiled function calling a compiled
    function of another module by an imported name (``sources``: module -> text)."""
    trees = {module: ast.parse(text) for module, text in sources.items()}
    compiled = {module: set(_compiled(tree)) for module, tree in trees.items()}
    found = []
    for module, tree in trees.items():
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module in compiled
            for alias in node.names
            if alias.name in compiled[node.module]
        }
        for caller, function in _compiled(tree).items():
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in imported
                ):
                    found.append(f"{module}: {caller} -> {node.func.id}")
    return found


def test_the_check_can_fail() -> None:
    callee = "from tcpsleuth.compiled import njit\n@njit(cache=True)\ndef f(x):\n    return x\n"
    by_name = "from tcpsleuth.a import f\n@njit()\ndef g(x):\n    return f(x)\n"
    through_module = "from tcpsleuth import a\n@njit()\ndef g(x):\n    return a.f(x)\n"
    from_python = "from tcpsleuth.a import f\ndef g(x):\n    return f(x)\n"
    assert violations({"tcpsleuth.a": callee, "tcpsleuth.b": by_name}) == ["tcpsleuth.b: g -> f"]
    assert violations({"tcpsleuth.a": callee, "tcpsleuth.b": through_module}) == []
    assert violations({"tcpsleuth.a": callee, "tcpsleuth.b": from_python}) == []


def test_compiled_functions_call_other_modules_through_the_module() -> None:
    sources = {
        "tcpsleuth." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path.read_text()
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert sum(len(_compiled(ast.parse(text))) for text in sources.values()) > 20
    assert violations(sources) == []
