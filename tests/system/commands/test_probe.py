"""`tcpsleuth probe`: the kernel tested by experiment, on this host's real kernel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_tcpsleuth

from tcpsleuth.lab import namespaces


def _shift_for(rcvbuf: int, rmem_max: int) -> int:
    """What tcp_select_initial_window() announces for a listener with SO_RCVBUF set:
    the kernel doubles the value (capped by rmem_max), keeps half of it for data
    (tcp_adv_win_scale=1) and shifts until it fits in 16 bits."""
    space = 2 * min(rcvbuf, rmem_max) // 2
    shift = 0
    while space > 0xFFFF:
        space >>= 1
        shift += 1
    return shift


def _probe(*args: str) -> tuple[int, dict]:
    result = run_tcpsleuth("probe", "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _leftovers() -> list[str]:
    return [n for n in namespaces.owned() if n.startswith("tcpsleuth-probe")]


@pytest.mark.parametrize("rcvbuf", [102400, 1000000])
def test_probe_on_this_kernel(rcvbuf: int) -> None:
    status, doc = _probe("--rcvbuf", str(rcvbuf))
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    expected = _shift_for(rcvbuf, rmem_max)
    cookies = [c for c in doc["connections"] if c["timestamps"]]
    assert {c["family"] for c in cookies} == {"IPv4", "IPv6"}
    for conn in cookies:
        assert conn["announced_wscale"] == conn["client_snd_wscale"] == expected
        assert conn["server_rcv_wscale"] == expected  # this kernel has the fix
    assert doc["kernel"] == {**doc["kernel"], "status": "fixed", "source": "experiment"}
    assert doc["syncookies_sent"] >= len(doc["connections"])
    kinds = {f["kind"]: f for f in doc["findings"]}
    assert "kernel-cookie-wscale-bug" not in kinds
    assert kinds["kernel-cookie-wscale-ok"]["evidence"]["actual_wscale"] == expected
    # cookies without timestamps cannot carry the window scale: none at either end
    plain = [c for c in doc["connections"] if not c["timestamps"]]
    assert plain and all(
        c["announced_wscale"] is None
        and c["client_snd_wscale"] == 0
        and c["server_rcv_wscale"] == 0
        and c["client_snd_wnd"] <= 65535
        for c in plain
    )
    assert status == 0
    assert _leftovers() == []


def test_killed_probe_leaves_nothing_after_the_next_run() -> None:
    run = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "probe", "--format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(_leftovers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert len(_leftovers()) == 2  # killed mid-way: the next run must clean this up
    _probe()
    assert _leftovers() == []


def test_audit_and_doctor_use_the_experiment() -> None:
    audit = json.loads(run_tcpsleuth("audit", "--probe", "--format", "json").stdout)
    assert audit["kernel"]["source"] == "experiment"
    plain = json.loads(run_tcpsleuth("audit", "--format", "json").stdout)
    assert plain["kernel"]["source"] == "version table"
    doctor = json.loads(run_tcpsleuth("doctor", "--format", "json").stdout)
    assert doctor["checks"][0]["data"]["kernel"]["source"] == "experiment"
