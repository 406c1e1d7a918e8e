"""Lab children: what a run says when one of them never gets ready."""

from __future__ import annotations

import sys

import pytest

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.processes import Child


def _script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_is_returned() -> None:
    code = "print('warming up'); print('ready 42', flush=True); input()"
    child = Child(_script(code), stdin=True)
    try:
        assert child.wait_for(lambda line: line.startswith("ready"), 30).split() == ["ready", "42"]
    finally:
        child.process.kill()


def test_child_that_exits_names_its_status_and_what_it_said() -> None:
    child = Child(_script("import sys; sys.stderr.write('no such topic\\n'); sys.exit(3)"))
    said = r"exited \(status 3\) before it was ready: no such topic"
    with pytest.raises(RuntimeError, match=said):
        child.wait_for(lambda line: "ready" in line, 30)


def test_child_that_hangs_names_the_timeout() -> None:
    child = Child(_script("import time; time.sleep(30)"))
    try:
        with pytest.raises(EnvironmentProblem, match=r"did not get ready within 1 s \("):
            child.wait_for(lambda line: "ready" in line, 1)
    finally:
        child.process.kill()
