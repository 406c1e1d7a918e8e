"""``tcpsleuth heal``: its decisions on records (no root), and its mechanics end to end in
namespaces this test makes.

This host's kernel has the fix, so no connection is ever hit by the bug here. The
mechanics are tested on a listener whose SO_RCVBUF is locked after some clients
connected (tests/support/heal_clients.py): the kernel reads the lock per handshake,
so the early connections use an unlocked buffer's shift (the bug's shift for that
listener) and the later ones the locked buffer's. TCPSLEUTH_TEST_KERNEL_STATUS=affected
(test-only, recorder/healing.py) makes heal treat the kernel as one without the fix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import Farm, SupportChild, nstat_in

from tcpsleuth.detectors import heal as detect
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.listeners import ListenerFacts
from tcpsleuth.model.heal import DiagSocket, Ended
from tcpsleuth.model.records import Listener

PORT = 9092
EARLY, LATE = 12, 20
TEST_ENV = {**os.environ, "TCPSLEUTH_TEST_KERNEL_STATUS": "affected"}
AFFECTED = KernelVerdict("5.4.0", "affected", "test")
FIXED = KernelVerdict("6.18.0", "fixed", "test")


def all_came_back(hit: int) -> dict[str, int]:
    """heal's counts when it ended every one of ``hit`` connections and each client
    came back with the listener's own shift."""
    return {"hit": hit, "ended": hit, "came_back": hit, "not_back": 0, "gone": 0}


# -- decisions, on records -------------------------------------------------------------


def _facts(locked: str = "yes", shifts: tuple[int, int] | None = (1, 7)) -> ListenerFacts:
    return ListenerFacts(
        "0.0.0.0",
        PORT,
        [Listener("0.0.0.0", PORT, backlog=50, accept_queue=0, rcvbuf=204800)],
        None,
        3,
        131072,
        locked,
        "test",
        shifts=shifts,
        connection_shifts={1: 2, 7: 1},
    )


def _sock(port: int, rcv: int | None, cookie: int, client: str = "10.0.0.2") -> DiagSocket:
    return DiagSocket(socket.AF_INET, "10.0.0.1", PORT, client, port, 0, cookie, "ESTAB", 7, rcv)


SOCKETS = [_sock(40001, 1, 1), _sock(40002, 7, 2), _sock(40003, 1, 3), _sock(40004, 0, 4)]


def test_only_the_bugs_shift_of_a_locked_listener_is_hit() -> None:
    [plan] = detect.plan_listeners([_facts()], AFFECTED)
    assert plan.healable and (plan.own_wscale, plan.bug_wscale) == (1, 7)
    assert (plan.own_evidence, plan.bug_evidence) == ("both", "both")
    assert [s.cookie for _, s in detect.hit(SOCKETS, [plan])] == [2]


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        (_facts(locked="undetermined"), AFFECTED),
        (_facts(locked="no"), AFFECTED),
        (_facts(shifts=(7, 7)), AFFECTED),
        (_facts(shifts=None), AFFECTED),
        (_facts(), FIXED),
    ],
)
def test_nothing_is_hit_where_heal_must_not_touch(
    facts: ListenerFacts, verdict: KernelVerdict
) -> None:
    plans = detect.plan_listeners([facts], verdict)
    assert not plans[0].healable and plans[0].why
    assert detect.hit(SOCKETS, plans) == []


def test_refusals() -> None:
    assert detect.refusal_by_settings({"net.ipv4.tcp_syncookies": "2"}) is not None
    assert detect.refusal_by_settings({"net.ipv4.tcp_syncookies": "1"}) is None
    quiet = {"TcpExtSyncookiesSent": 5, "TcpExtListenOverflows": 9}
    assert detect.refusal_by_counters(quiet, dict(quiet), 5) is None
    why = detect.refusal_by_counters(quiet, {**quiet, "TcpExtListenOverflows": 12}, 5)
    assert why is not None and "TcpExtListenOverflows +3" in why
    [plan] = detect.plan_listeners([_facts()], AFFECTED)
    full = detect.refusal_by_counters(quiet, quiet, 5, [plan], {plan.local: 50})
    assert full is not None and "50 of 50" in full


def test_pace_follows_the_backlog_and_the_rate() -> None:
    assert detect.per_second(50, 100) == 25
    assert detect.per_second(50, 10) == 10
    assert detect.per_second(1, 100) == 1


def test_came_back_counts_new_connections_with_the_own_shift_per_client() -> None:
    [plan] = detect.plan_listeners([_facts()], AFFECTED)
    ended = [Ended(_sock(40002, 7, 2), plan.local, "destroy", "ended", 0.1)] * 2
    after = [_sock(50001, 1, 10), _sock(50002, 7, 11), _sock(40003, 1, 3)]
    back, missing = detect.came_back(ended, after, frozenset({1, 2, 3, 4}), [plan])
    # one new connection with shift 1 (cookie 10); the one with 7 is no come-back, and
    # cookie 3 was there before
    assert [b["new_cookie"] for b in back] == [10]
    assert len(missing) == 1


# -- end to end, in a namespace ----------------------------------------------------------


class Clients(SupportChild):
    """heal_clients.py in a namespace; stopped by closing its standard input."""

    SCRIPT = "heal_clients.py"


@pytest.fixture
def two_shifts(netns: str) -> Iterator[str]:
    clients = Clients(netns, "--port", str(PORT), "--early", str(EARLY), "--late", str(LATE))
    try:
        yield netns
    finally:
        clients.stop()


def heal(
    ns: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "heal", "--port", str(PORT), "--netns", ns, *args],
        capture_output=True,
        text=True,
        env=env or TEST_ENV,
        timeout=180,
    )


SS_WSCALE = re.compile(r"\bwscale:(\d+),(\d+)")


def server_shifts(ns: str) -> Counter[int]:
    """rcv_wscale of the server's established sockets as `ss -tni` prints them: the
    trusted side of the differential checks."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tniH", "state", "established", f"( sport = :{PORT} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Counter(int(m.group(2)) for m in SS_WSCALE.finditer(text))


def own_and_bug(ns: str) -> tuple[int, int]:
    shifts = server_shifts(ns)
    assert sorted(shifts.values()) == sorted([EARLY, LATE]), shifts
    own = next(s for s, n in shifts.items() if n == LATE)
    bug = next(s for s, n in shifts.items() if n == EARLY)
    return own, bug


def test_dry_run_lists_exactly_the_connections_with_the_other_shift(two_shifts: str) -> None:
    own, bug = own_and_bug(two_shifts)
    result = heal(two_shifts, "--format", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["mode"] == "dry-run" and doc["refused"] is None
    [listener] = doc["listeners"]
    assert (listener["own_wscale"], listener["bug_wscale"]) == (own, bug)
    assert listener["own_wscale_evidence"] == listener["bug_wscale_evidence"] == "both"
    assert len(doc["hit"]) == server_shifts(two_shifts)[bug] == EARLY
    assert {h["rcv_wscale"] for h in doc["hit"]} == {bug}
    assert len({h["cookie"] for h in doc["hit"]}) == EARLY
    # the verdict first: how many are hit, of how many, and what --apply would do
    assert list(doc)[:4] == ["tool", "version", "command", "verdict"]
    verdict = doc["verdict"]
    assert verdict["at_risk"] is True
    assert verdict["summary"].startswith(
        f"AT RISK: {EARLY} of {EARLY + LATE} connections on port {PORT} are hit"
    )
    assert f"windows {2 ** abs(bug - own)}x too " in verdict["summary"]
    apply = f"sudo tcpsleuth heal --port {PORT} --netns {two_shifts} --apply"
    assert apply in verdict["actions"][0]
    assert f"at most {doc['per_second']} a second" in verdict["actions"][0]
    assert doc["per_second"] == detect.per_second(listener["backlog"], 100)
    # nothing was ended by a dry run
    assert server_shifts(two_shifts)[bug] == EARLY


def test_without_the_test_verdict_this_fixed_kernel_has_nothing_to_heal(two_shifts: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TCPSLEUTH_TEST_KERNEL_STATUS"}
    result = heal(two_shifts, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kernel"]["status"] == "fixed" and doc["hit"] == []
    assert doc["verdict"]["at_risk"] is False and doc["verdict"]["actions"] == []
    assert doc["verdict"]["summary"].startswith(f"Not at risk: nothing to heal on port {PORT}.")


def _applied(ns: str, method: str) -> None:
    own, bug = own_and_bug(ns)
    args = ["--apply", "--method", method, "--quiet-seconds", "1", "--wait", "30"]
    result = heal(ns, *args, "--format", "json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert doc["method"] == method and doc["refused"] is None and doc["stopped"] is None
    assert doc["counts"] == all_came_back(EARLY)
    assert {e["how"] for e in doc["ended"]} == {method}
    assert all(b["rcv_wscale"] == own for b in doc["came_back"])
    assert doc["cookies_during"] == 0
    assert doc["verdict"]["at_risk"] is False
    assert doc["verdict"]["summary"].startswith(f"Healed: {EARLY} of {EARLY} connections hit")
    # differential: ss sees every client back, and none with the bug's shift
    after = server_shifts(ns)
    assert after[bug] == 0 and after[own] == EARLY + LATE, after


def test_apply_by_destroy_ends_them_and_the_clients_come_back(two_shifts: str) -> None:
    _applied(two_shifts, "destroy")


def test_apply_by_reset_ends_them_and_leaves_no_firewall(two_shifts: str) -> None:
    _applied(two_shifts, "reset")
    assert nft_ruleset(two_shifts) == ""


def test_a_clean_listener_has_nothing_to_heal(netns: str) -> None:
    clients = Clients(netns, "--port", str(PORT), "--early", "0", "--late", str(LATE))
    try:
        assert sum(server_shifts(netns).values()) == LATE
        dry = heal(netns, "--format", "json")
        assert dry.returncode == 0 and json.loads(dry.stdout)["hit"] == []
        applied = heal(netns, "--apply", "--quiet-seconds", "1", "--format", "json")
        assert applied.returncode == 0, applied.stderr
        assert json.loads(applied.stdout)["ended"] == []
        assert sum(server_shifts(netns).values()) == LATE
    finally:
        clients.stop()


def test_apply_refuses_with_syncookies_always(two_shifts: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", two_shifts, "sysctl", "-qw", "net.ipv4.tcp_syncookies=2"],
        check=True,
    )
    result = heal(two_shifts, "--apply", "--quiet-seconds", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "tcp_syncookies=2" in result.stderr
    assert server_shifts(two_shifts)[own_and_bug(two_shifts)[1]] == EARLY


def test_apply_refuses_during_a_storm(two_shifts: str) -> None:
    _own, bug = own_and_bug(two_shifts)
    started = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "heal", "--port", str(PORT), "--netns", two_shifts,
         "--apply", "--quiet-seconds", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TEST_ENV,
    )  # fmt: skip
    farm = None
    try:
        time.sleep(3)  # heal has read the counters once and waits for the second read
        farm = Farm(two_shifts, "--port", "9093", "--backlog", "50", "--clients", "2000", "--storm")
        out, err = started.communicate(timeout=120)
    finally:
        if farm is not None:
            farm.stop()
        if started.poll() is None:
            started.kill()
    assert started.returncode == 2, (out, err)
    assert err.count("\n") == 1 and "still overflowing" in err, err
    assert server_shifts(two_shifts)[bug] == EARLY


def nft_ruleset(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_nothing_stays_in_the_firewall_after_sigkill(two_shifts: str) -> None:
    timeout = 3
    process = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "heal", "--port", str(PORT), "--netns", two_shifts,
         "--apply", "--method", "reset", "--rate", "1", "--quiet-seconds", "0.5",
         "--firewall-timeout", str(timeout)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=TEST_ENV,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "elements" not in nft_ruleset(two_shifts) and time.monotonic() < deadline:
            time.sleep(0.1)
        ruleset = nft_ruleset(two_shifts)
        assert "tcpsleuth_heal_" in ruleset and "elements" in ruleset, ruleset
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + timeout + 2
    while nft_ruleset(two_shifts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nft_ruleset(two_shifts) == ""


def test_apply_stops_at_once_when_a_cookie_is_sent(two_shifts: str) -> None:
    _own, bug = own_and_bug(two_shifts)
    started = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "heal", "--port", str(PORT), "--netns", two_shifts,
         "--apply", "--rate", "1", "--quiet-seconds", "0.5", "--wait", "5", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TEST_ENV,
    )  # fmt: skip
    farm = None
    try:
        # one connection a second: wait until heal has ended a few, then storm
        deadline = time.monotonic() + 60
        while server_shifts(two_shifts)[bug] > EARLY - 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        farm = Farm(two_shifts, "--port", "9093", "--backlog", "50", "--clients", "2000", "--storm")
        out, err = started.communicate(timeout=120)
    finally:
        if farm is not None:
            farm.stop()
        if started.poll() is None:
            started.kill()
    assert started.returncode == 1, (out, err)
    doc = json.loads(out)
    assert doc["stopped"] is not None and "SYN cookie" in doc["stopped"]
    assert doc["cookies_during"] > 0
    ended = doc["counts"]["ended"]
    assert 2 <= ended < EARLY
    # what heal did not end is still there, and nothing else was touched
    assert server_shifts(two_shifts)[bug] == EARLY - ended


def _gauge(ns: str) -> dict[tuple[str, ...], float]:
    from tcpsleuth.cli.exporter import ScrapeCollector

    families = {f.name: f for f in ScrapeCollector(ns, 10).collect()}
    family = families["tcpsleuth_listen_wscale_bug_connections"]
    return {
        tuple(s.labels[k] for k in ("address", "port", "own_wscale", "bug_wscale")): s.value
        for s in family.samples
    }


def test_the_exporter_counts_the_hit_connections(
    two_shifts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    own, bug = own_and_bug(two_shifts)
    key = ("127.0.0.1", str(PORT), str(own), str(bug))
    # the fixed kernel as it is: nothing is the bug's
    monkeypatch.delenv("TCPSLEUTH_TEST_KERNEL_STATUS", raising=False)
    assert _gauge(two_shifts) == {key: 0}
    monkeypatch.setenv("TCPSLEUTH_TEST_KERNEL_STATUS", "affected")
    assert _gauge(two_shifts) == {key: server_shifts(two_shifts)[bug]} == {key: EARLY}
    result = heal(two_shifts, "--apply", "--quiet-seconds", "0.5", "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert _gauge(two_shifts) == {key: 0}


@pytest.mark.parametrize("method", ["destroy", "reset"])
def test_remote_clients_over_ipv4_and_ipv6_come_back(method: str) -> None:
    """Clients in another namespace over veth, to a dual-stack listener: IPv4 clients
    appear as ::ffff:a.b.c.d on the server, and each method's packets cross a real link
    (the reset method's probe to the server carries a remote source address)."""
    from tcpsleuth.lab import topology

    with topology.server_client_pair("heal") as pair:
        clients = Clients(
            pair.server, "--port", str(PORT), "--early", "8", "--late", "8", "--host", "::",
            "--connect", pair.server_ip4, "--connect", pair.server_ip6,
            "--client-netns", pair.client,
        )  # fmt: skip
        try:
            shifts = server_shifts(pair.server)
            assert sorted(shifts.values()) == [8, 8], shifts
            result = heal(
                pair.server, "--apply", "--method", method, "--quiet-seconds", "1",
                "--format", "json",
            )  # fmt: skip
            assert result.returncode == 0, (result.stdout, result.stderr)
            doc = json.loads(result.stdout)
            [listener] = doc["listeners"]
            bug, own = listener["bug_wscale"], listener["own_wscale"]
            assert doc["counts"] == all_came_back(8)
            clients_hit = {h["client"].rsplit(":", 1)[0] for h in doc["hit"]}
            assert clients_hit == {"198.18.0.2", "[2001:db8::2]"}, clients_hit
            after = server_shifts(pair.server)
            assert after[bug] == 0 and after[own] == 16, after
            assert nft_ruleset(pair.server) == ""
        finally:
            clients.stop()


def test_a_storm_on_the_fixed_kernel_leaves_nothing_to_heal(netns: str) -> None:
    """The lab's fixed-kernel scenario on this host: backlog 50, SO_RCVBUF 102400 before
    listen(), a reconnect storm answered by SYN cookies. The kernel has the fix, so the
    cookie connections use the listener's own shift: nothing is hit, even with heal told
    to treat the kernel as affected."""
    before = nstat_in(netns).get("TcpExtSyncookiesSent", 0)
    farm = Farm(
        netns, "--port", str(PORT), "--backlog", "50", "--clients", "1500", "--rcvbuf",
        "102400", "--storm",
    )  # fmt: skip
    try:
        assert nstat_in(netns).get("TcpExtSyncookiesSent", 0) - before > 50
        shifts = server_shifts(netns)
        assert sum(shifts.values()) == 1500 and len(shifts) == 1, shifts
        env = {k: v for k, v in os.environ.items() if k != "TCPSLEUTH_TEST_KERNEL_STATUS"}
        for environment in (env, TEST_ENV):
            dry = heal(netns, "--format", "json", env=environment)
            assert dry.returncode == 0, dry.stderr
            doc = json.loads(dry.stdout)
            assert doc["hit"] == [] and doc["listeners"][0]["rcvbuf_locked"] == "yes"
        applied = heal(netns, "--apply", "--format", "json")
        assert applied.returncode == 0 and json.loads(applied.stdout)["ended"] == []
        assert server_shifts(netns) == shifts
    finally:
        farm.stop()


def test_clients_that_do_not_come_back_are_listed_and_exit_1(netns: str) -> None:
    clients = Clients(netns, "--port", str(PORT), "--early", "5", "--late", "5", "--no-reconnect")
    try:
        result = heal(netns, "--apply", "--quiet-seconds", "0.5", "--wait", "2", "--format", "json")
        assert result.returncode == 1, (result.stdout, result.stderr)
        doc = json.loads(result.stdout)
        assert doc["counts"] == {"hit": 5, "ended": 5, "came_back": 0, "not_back": 5, "gone": 0}
        assert {e["cookie"] for e in doc["not_back"]} == {h["cookie"] for h in doc["hit"]}
    finally:
        clients.stop()


@pytest.mark.parametrize("method", ["auto", "destroy"])
def test_a_kernel_without_sock_destroy(
    two_shifts: str,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Where SOCK_DESTROY answers EOPNOTSUPP (no CONFIG_INET_DIAG_DESTROY), auto falls
    back to resets; an explicit --method destroy says so in one line (exit 2)."""
    import errno

    from tcpsleuth.cli.main import run
    from tcpsleuth.sources import sockdestroy

    monkeypatch.setenv("TCPSLEUTH_TEST_KERNEL_STATUS", "affected")
    monkeypatch.setattr(sockdestroy.Destroyer, "destroy", lambda self, target: errno.EOPNOTSUPP)
    _own, bug = own_and_bug(two_shifts)
    args = ["heal", "--port", str(PORT), "--netns", two_shifts, "--apply", "--method", method]
    status = run([*args, "--quiet-seconds", "0.5", "--format", "json"])
    out, err = capsys.readouterr()
    if method == "destroy":
        assert status == 2 and err.count("\n") == 1 and "EOPNOTSUPP" in err, err
        assert server_shifts(two_shifts)[bug] == EARLY
        return
    assert status == 0, err
    doc = json.loads(out)
    assert doc["method"] == "reset"
    assert doc["counts"] == all_came_back(EARLY)
    assert {e["how"] for e in doc["ended"]} == {"reset"}
    assert server_shifts(two_shifts)[bug] == 0


def test_the_pace_follows_the_backlog(netns: str) -> None:
    """Backlog 8: at most 4 connections ended a second (half the backlog), although
    --rate allows 100 (the cap by --rate: test_pace_follows_the_backlog_and_the_rate)."""
    clients = Clients(netns, "--port", str(PORT), "--early", "12", "--late", "4", "--backlog", "8")
    try:
        result = heal(netns, "--apply", "--quiet-seconds", "0.5", "--format", "json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["per_second"] == 4 and doc["counts"]["ended"] == 12
        times = sorted(e["at_s"] for e in doc["ended"])
        # three batches of four, a second apart
        assert times[-1] - times[0] >= 1.9, times
        assert all(times[n + 4] - times[n] >= 0.9 for n in range(len(times) - 4)), times
    finally:
        clients.stop()
