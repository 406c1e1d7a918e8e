"""Shared fixtures. Tests that need root make their own namespaces and remove them."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsleuth.lab import namespaces

SUPPORT = Path(__file__).parent / "support"
FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
SHARED = REPO.parent / "shared"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

# Tests that start namespaces, storms, brokers or guests measure time and load; when
# several developers' test runs share one small machine, they take turns through this
# lock (one test at a time). CI runs one pytest, so it never waits.
HEAVY_LOCK = Path("/tmp/tcpsleuth-heavy.lock")
HEAVY_WORDS = (
    "lab",
    "storm",
    "kafka_broker",
    "kafka_monitoring",
    "probe",
    "watch",
    "exporter",
    "trace",
    "record",
    "guest",
    "audit_live",
    "alerts",
    "hostile_replay",
)


@pytest.fixture(autouse=True)
def _heavy_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    name = request.node.module.__name__ if request.node.module else ""
    held = os.environ.get("CI") or os.environ.get("TCPSLEUTH_HEAVY_HELD")  # e.g. under flock(1)
    if held or not any(word in name for word in HEAVY_WORDS):
        yield
        return
    with HEAVY_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (loopback up), deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with namespaces.namespace("test") as name:
        yield name


def run_tcpsleuth(
    *args: str, check_status: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed command line as a user would, in a separate process."""
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check_status is not None:
        assert result.returncode == check_status, (result.returncode, result.stdout, result.stderr)
    return result


class SupportChild:
    """A script of tests/support running inside a namespace until it prints "ready";
    stopped by closing its stdin."""

    SCRIPT = ""

    def __init__(self, ns: str, *args: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(SUPPORT / self.SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.ready = self.process.stdout.readline()
        if not self.ready.startswith("ready"):
            self.stop()
            raise RuntimeError(f"{self.SCRIPT} did not get ready: {self.ready!r}")

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Farm(SupportChild):
    """conn_farm.py in a namespace: ``connected`` is how many connections it holds."""

    SCRIPT = "conn_farm.py"

    def __init__(self, ns: str, *args: str) -> None:
        super().__init__(ns, *args)
        self.connected = int(self.ready.split()[1])


def default_signals() -> None:
    """For a child whose handling of SIGHUP and SIGINT a test checks: the dispositions a
    login shell gives. A suite started under nohup, or as a background job of a
    non-interactive shell, has them ignored, and its children inherit that (tcpsleuth
    then rightly keeps ignoring them, as nohup asks)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def nstat_in(ns: str) -> dict[str, int]:
    """Absolute counters of namespace ``ns`` as iproute2's nstat prints them (-s: no
    history file), read with the simplest split: the trusted side of differential tests."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split()[0]: int(line.split()[1])
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    }
