"""`tcpsleuth record` catches the incident on the real pre-fix kernel, nothing emulated:
`lab run wscale-bug --kernel prefix --record DIR` attaches the recorder to the guest's
broker namespace once the clients are connected (it takes tens of seconds to start
under an emulated CPU; the run waits until it says it is ready, before the restart),
tells it nothing about the restart, and hands its incidents back. A guest run of some
10 minutes: the heavy tier (`pytest -m heavy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.lab_checks import check_incident_against_ss, one_incident
from test_lab_kernel import _tcpsleuth, lab_kernels  # noqa: F401

pytestmark = pytest.mark.heavy


def test_the_recorder_keeps_the_real_bug_in_the_prefix_kernel(
    lab_kernels: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    keep, record = tmp_path / "keep", tmp_path / "rec"
    result = _tcpsleuth(
        "lab", "run", "wscale-bug", "--kernel", "prefix", "--keep", str(keep),
        "--record", str(record), "--format", "json", timeout=3600,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    [run] = doc["runs"]
    assert run["kernel"]["name"] == "prefix" and run["emulation"] is None
    attached = run["recorder"]
    print(f"recorder ready in {attached['ready_s']} s; phases {run['phases_s']}")
    # ready before the restart, told nothing about it
    assert attached["ready_at"] < run["window"]["restart"]
    sent = run["counters"]["during_restart"]["TcpExtSyncookiesSent"]
    if sent == 0:
        pytest.xfail("no SYN cookie during the guest's restart: the storm did not overflow")
    # exactly one incident, analysed, handed back from the guest
    incidents = sorted((record / "wscale-bug").glob("incident-*"))
    assert [p.name for p in incidents] == attached["incidents"] == attached["reports"]
    one_incident([p.name for p in incidents], run["window"])
    [incident] = incidents
    report = json.loads((incident / "report.json").read_text())
    assert (
        run["window"]["restart"] <= report["window"]["first_event"] <= run["window"]["after_start"]
    )
    # the SYN cookies against the kernel's count
    assert report["syn_cookies"]["sent"] == sent
    assert report["syn_cookies"]["cookie_connections"] > 0
    # the mismatches against both ends' ss: announced 1, used 7, by the real kernel
    check_incident_against_ss(report, keep / "wscale-bug")
    # what kept it one: the connections the bug hit held it open (told the kernel is
    # affected, as heal is: the prefix kernel's release reads as fixed)
    held = [n for n in report["notes"] if n.startswith("held open while connections hit")]
    assert held, report["notes"]
