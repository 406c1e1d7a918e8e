"""Docs that cannot drift (issue 29): every block of real output in the docs made from
fixed inputs is the command's output now (scripts/make_docs.py --check)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from conftest import REPO

SCRIPT = REPO / "scripts" / "make_docs.py"


def make_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_marked_block_is_the_commands_output_now() -> None:
    check = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_guides_real_output_is_marked() -> None:
    docs = make_docs()
    commands = {
        (path.relative_to(REPO).as_posix(), match["command"])
        for path in docs.marked_files()
        for match in docs.marked_blocks(path.read_text())
    }
    assert ("docs/commands/doctor-audit.md", "tcpsleuth doctor --example") in commands
    assert ("docs/doctor.md", "tcpsleuth doctor --example") in commands
    assert any(p == "docs/commands/pcap.md" and "storm-fixed" in c for p, c in commands)
    assert any(p == "docs/commands/sockets-compare.md" for p, _ in commands)
    assert len(commands) >= 8


def test_a_drifted_block_is_found(tmp_path: Path) -> None:
    docs = make_docs()
    page = REPO / "docs" / "commands" / "doctor-audit.md"
    text = page.read_text()
    block = text.index("<!-- output: tcpsleuth doctor --example -->")
    assert "backlog 50" in text[block:]
    drifted = tmp_path / "drifted.md"
    drifted.write_text(text[:block] + text[block:].replace("backlog 50", "backlog 51", 1))
    assert docs.stale_blocks([drifted]) == [f"{drifted}: tcpsleuth doctor --example"]
    same = tmp_path / "same.md"
    same.write_text(text)
    assert docs.stale_blocks([same]) == []
