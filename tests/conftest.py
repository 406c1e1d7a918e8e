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
from support.capabilities import HAS_ROOT

from tcpsleuth.lab import namespaces

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
FIXTURES = TESTS / "fixtures"
DATA = TESTS / "data"
REPO = TESTS.parent
SHARED = REPO.parent / "shared"

# Which tests need root, in one place: pytest_collection_modifyitems below marks them
# `root` (so that `pytest -m "not root"` selects exactly the tests any user can run) and
# skips them without root. A test needs root when it uses one of ROOT_FIXTURES (directly
# or through another fixture), when its module is in ROOT_MODULES or when it is named in
# ROOT_TESTS (a function, or one of its parameter sets: NAME[ID]); tests/project/test_markers.py
# checks that every name here exists.
ROOT_FIXTURES = {
    "netns": "makes a network namespace",
    "farm_ns": "a namespace of connections",  # test_sockdiag.py
    "storm": "storms in network namespaces",  # test_capture_storms.py
    "traffic": "tracing in a namespace",  # test_trace.py
    "listen": "listeners run as another user",  # test_config_safety.py
    "world": "files given to another user",  # test_config_safety.py
    "lab_kernels": "guest kernels",  # test_lab_kernel.py
    "prefix_kernel": "guest kernels",  # test_lab_heal_guest.py
    "image": "runs podman",  # test_image.py
    "container": "runs podman",  # test_netns_containers.py
}
ROOT_MODULES = {
    "test_compare_wscale": "network namespaces",
    "test_kafka_monitoring": "network namespaces",
    "test_lab_kafka": "the lab makes network namespaces",
    "test_lab_servers": "network namespaces",
    "test_pcap_lab": "storms in network namespaces",
    "test_probe": "the probe's namespaces",
}
ROOT_TESTS = {
    "test_capture_storms": {"test_no_cookies_without_syncookies": "a storm in namespaces"},
    "test_exporter": {
        "test_a_namespace_that_goes_away_fails_scrapes_not_the_exporter": "namespaces",
    },
    "test_heal": {"test_remote_clients_over_ipv4_and_ipv6_come_back": "namespaces"},
    "test_hostile_input": {
        "test_probe_cleans_up_on_signal": "the probe's namespaces",
        "test_a_namespace_interrupted_while_it_is_made_is_removed": "namespaces",
        "test_trace_detaches_bpftrace_on_sigterm": "tracing",
        "test_collect_on_a_full_disk_keeps_nothing": "mounts a small tmpfs",
        "test_pcap_read_only_plot_directory_is_refused_first": "mounts read-only",
        # as a user, the check that /dev may hold the report refuses first
        "test_pcap_html_on_a_full_device_is_one_line": "writes a report beside /dev/full",
    },
    "test_kafka_audit": {
        "test_audit_of_the_real_kafka_3_1_2_says_the_backlog_setting_has_no_effect": (
            "network namespaces"
        ),
    },
    "test_kafka_broker": {
        "test_kafka_3_1_2_keeps_backlog_50_and_locks_the_receive_buffer": "network namespaces",
        "test_kafka_4_listen_backlog_setting_reaches_the_kernel": "network namespaces",
        "test_kafka_unclean_restart_recovers_its_logs": "network namespaces",
    },
    "test_lab": {
        "test_wscale_bug_reproduces_the_incident": "the lab",
        "test_mitigations": "the lab",
        "test_killed_run_leaves_nothing_after_the_next_run": "the lab",
        "test_relay_link_has_the_configured_round_trip": "the lab",
        "test_lab_runs_a_broker_command": "the lab",
    },
    "test_lab_heal": {"test_heal_phase_on_the_fixed_kernel_ends_nothing": "the lab"},
    "test_pcap_reader": {
        "test_ethernet_vlan_sll2_and_multi_interface_pcapng_equal_tshark": "a namespace",
    },
    "test_record": {
        "test_recorder_in_the_lab_keeps_the_wscale_bug": "the lab",
        "test_recorder_beside_a_quiet_lab_run_records_nothing": "the lab",
    },
    "test_write_safety": {
        "test_no_fifo_device_or_link_out_is_read[device]": "makes a device node",
        "test_report_on_a_foreign_incident_shows_and_does_not_save": "gives a file to another user",
        "test_report_on_a_read_only_incident_shows_and_does_not_save": "mounts read-only",
        "test_report_on_a_full_file_system_leaves_nothing_partial": "mounts a small tmpfs",
        "test_pcap_html_on_a_full_file_system_leaves_no_partial_page": "mounts a small tmpfs",
        "test_an_append_that_does_not_fit_is_cut_off_again": "mounts a small tmpfs",
    },
}


def root_reason(item: pytest.Item) -> str | None:
    """Why ``item`` needs root, or None when it does not."""
    module = item.module.__name__ if item.module else ""
    fixtures = getattr(item, "fixturenames", ())
    for name, why in ROOT_FIXTURES.items():
        if name in fixtures:
            return why
    if module in ROOT_MODULES:
        return ROOT_MODULES[module]
    named = ROOT_TESTS.get(module, {})
    for name in (item.name, getattr(item, "originalname", item.name)):
        if name in named:
            return named[name]
    if item.get_closest_marker("root") is not None:
        return "marked root"
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        why = root_reason(item)
        if why is None:
            continue
        if item.get_closest_marker("root") is None:
            item.add_marker(pytest.mark.root)
        if not HAS_ROOT:
            item.add_marker(pytest.mark.skip(reason=f"needs root ({why})"))


# Tests that start namespaces, storms, brokers or guests measure time and load; when
# several developers' test runs share one small machine, they take turns through this
# lock (one test at a time). CI runs one pytest, so it never waits. Those are the tests
# marked root or heavy, and the long root-free ones of SERIAL_MODULES.
HEAVY_LOCK = Path("/tmp/tcpsleuth-heavy.lock")
SERIAL_MODULES = {"test_hostile_replay": "584 commands, minutes of both cores"}


@pytest.fixture(autouse=True)
def _heavy_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    node = request.node
    name = node.module.__name__ if node.module else ""
    held = os.environ.get("CI") or os.environ.get("TCPSLEUTH_HEAVY_HELD")  # e.g. under flock(1)
    loaded = (
        node.get_closest_marker("root") is not None
        or node.get_closest_marker("heavy") is not None
        or name in SERIAL_MODULES
    )
    if held or not loaded:
        yield
        return
    # read-only: another user's lock file (mode 0644) is locked as well as one's own
    lock = os.open(HEAVY_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (loopback up), deleted afterwards (a test using it
    is marked root: see ROOT_FIXTURES)."""
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
