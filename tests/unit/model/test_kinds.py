"""The registry of finding kinds (model/kinds.py) against the code and the docs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from tcpsleuth.model import kinds
from tcpsleuth.model.findings import Finding, Severity

SRC = REPO / "src" / "tcpsleuth"


def kinds_in_code() -> dict[str, list[str]]:
    """Every string literal given as the kind of a Finding(...) in the package."""
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name != "Finding":
                continue
            arg = node.args[0] if node.args else None
            arg = arg or next((k.value for k in node.keywords if k.arg == "kind"), None)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.setdefault(arg.value, []).append(f"{path.name}:{node.lineno}")
    return found


def test_every_kind_made_in_the_code_is_registered_under_its_current_name() -> None:
    made = kinds_in_code()
    assert len(made) >= 20, made  # the scan sees the detectors
    unregistered = {k: where for k, where in made.items() if k not in kinds.KINDS}
    assert not unregistered, f"register in model/kinds.py (or use the new name): {unregistered}"


def test_every_registered_kind_is_made_somewhere() -> None:
    made = kinds_in_code()
    assert not [k for k in kinds.KINDS if k not in made]


def test_an_unregistered_kind_or_severity_is_refused() -> None:
    with pytest.raises(kinds.UnknownKind, match="no-such-kind"):
        Finding("no-such-kind", Severity.INFO, {}, "x")
    with pytest.raises(kinds.UnknownKind, match="severities"):
        Finding("somaxconn-low", Severity.CRITICAL, {}, "x")


def test_a_former_name_becomes_the_current_one_and_is_listed_in_aliases() -> None:
    old = Finding(
        "syncookies-sent", Severity.WARNING, {"host": "h"}, "x", {"TcpExtSyncookiesSent": 1}
    )
    assert old.kind == "syn-cookies-sent"
    doc = old.to_dict()
    assert doc["kind"] == "syn-cookies-sent" and doc["aliases"] == ["syncookies-sent"]
    assert Finding.from_dict({**doc, "kind": "syncookies-sent"}) == old
    assert "aliases" not in Finding("somaxconn-low", Severity.INFO, {"host": "h"}, "x").to_dict()


def test_names_follow_one_scheme() -> None:
    for name in [*kinds.KINDS, *kinds.ALIASES]:
        assert name == name.lower() and " " not in name and "_" not in name, name
    # one name per thing: no two kinds differ only by a trailing "s"
    names = set(kinds.KINDS)
    assert not [n for n in names if n + "s" in names]


def test_the_docs_tables_are_generated_from_the_registry(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_kinds_doc.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    readme = (REPO / "README.md").read_text()
    for name in kinds.KINDS:
        assert f"`{name}`" in readme
    findings_md = (REPO / "docs" / "findings.md").read_text()
    for kind in kinds.KINDS.values():
        assert all(f"`{key}`" in findings_md for key in kind.evidence)
