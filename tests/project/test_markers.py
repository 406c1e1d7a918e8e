"""The markers are applied in one place (tests/conftest.py): every module, test and
fixture its root tables name exists, and ``-m "not root"`` selects exactly the tests
that need no root, the hook having marked them before pytest deselects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO, ROOT_FIXTURES, ROOT_MODULES, ROOT_TESTS, TESTS


def _defined(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(test functions, fixtures) a test module defines at its top level."""
    tests, fixtures = set(), set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            if node.name.startswith("test"):
                tests.add(node.name)
            if any("fixture" in ast.unparse(d) for d in node.decorator_list):
                fixtures.add(node.name)
    return tests, fixtures


def stale_entries(
    directory: Path,
    fixtures: dict[str, str],
    modules: dict[str, str],
    tests: dict[str, dict[str, str]],
) -> list[str]:
    """The names of the root tables that no longer name anything in ``directory``, and
    the tests named both alone and with their whole module."""
    files = [*directory.glob("conftest.py"), *directory.rglob("test_*.py")]
    found = {p.stem: _defined(ast.parse(p.read_text())) for p in files}
    all_fixtures = set().union(*(f for _, f in found.values())) if found else set()
    bad = [f"fixture {name}" for name in fixtures if name not in all_fixtures]
    bad += [f"module {name}" for name in modules if name not in found]
    for module, names in tests.items():
        if module in modules:
            bad.append(f"module {module} is in ROOT_MODULES already")
        defined = found.get(module, (set(), set()))[0]
        bad += [f"{module}::{name}" for name in names if name.split("[")[0] not in defined]
    return bad


def test_the_root_tables_name_what_exists(tmp_path: Path) -> None:
    assert stale_entries(TESTS, ROOT_FIXTURES, ROOT_MODULES, ROOT_TESTS) == []
    # the check can fail: a renamed test, a removed module, an unknown fixture
    (tmp_path / "test_a.py").write_text("def test_new(kind):\n    pass\n")
    named = {"test_a": {"test_old": "x", "test_new[device]": "x", "test_gone[device]": "x"}}
    assert stale_entries(tmp_path, {"ns": "x"}, {"test_gone": "x"}, named) == [
        "fixture ns",
        "module test_gone",
        "test_a::test_old",
        "test_a::test_gone[device]",
    ]


def _collected(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return sorted(line for line in result.stdout.splitlines() if "::" in line)


def test_not_root_selects_the_tests_without_root() -> None:
    """test_audit_live.py mixes both kinds (the netns fixture marks the others; no
    decorator in the file): each selection gets its own, and together all."""
    module = "tests/system/commands/test_audit_live.py"
    free = _collected("-m", "not root", module)
    root = _collected("-m", "root", module)
    assert free == [
        f"{module}::test_audit_reports_this_hosts_kernel_and_sysctls",
        f"{module}::test_netns_needs_an_existing_namespace",
    ]
    assert len(root) == 5 and not set(root) & set(free)
    assert sorted(free + root) == _collected(module)
