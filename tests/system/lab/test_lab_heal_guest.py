"""Heal on the real bug: `lab run wscale-bug --kernel prefix --heal`, once per method.
In the pre-fix guest kernel the reconnect storm gives the clients SYN-cookie connections
with the wrong window scale; `tcpsleuth heal --apply` ends them inside the guest, they
come back through ordinary handshakes, and the clients' latency returns to what it was
before the restart. The guest's CPU is emulated (TCG): each run takes minutes, so the
heavy tier (`pytest -m heavy`), not CI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.capabilities import GUEST_TOOLS, missing
from support.lab_checks import healed
from test_lab_kernel import _tcpsleuth

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def prefix_kernel() -> dict[str, Any]:
    """The pre-fix kernel, built now if the cache does not have it."""
    if missing(*GUEST_TOOLS):
        pytest.skip(f"missing {missing(*GUEST_TOOLS)} (scripts/install.sh installs them)")
    result = _tcpsleuth("lab", "kernel", "build", "prefix", "--format", "json", timeout=3600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["kernel"]


@pytest.mark.parametrize("method", ["destroy", "reset"])
def test_heal_ends_the_incident_in_the_prefix_kernel(
    prefix_kernel: dict[str, Any], method: str, tmp_path: Path
) -> None:
    keep = tmp_path / "keep"
    began = time.monotonic()
    result = _tcpsleuth(
        "lab", "run", "wscale-bug", "--kernel", "prefix", "--heal", "--heal-method", method,
        "--keep", str(keep), "--format", "json", timeout=3600,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert result.returncode == 1, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    [run] = doc["runs"]
    heal = run["heal"]
    print(f"guest run {elapsed:.0f} s ({doc['guest']['accel']}); heal {json.dumps(heal)}")
    assert run["kernel"]["name"] == "prefix" and run["kernel"]["fault_emulated"] is False
    assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    document = json.loads((keep / "wscale-bug" / "heal.json").read_text())
    healed(run, method, document)
