"""Real guest kernels: Debian's 6.1 as shipped (`fixed`) and with the SYN-cookie
window-scale fix reverted (`prefix`), built by `tcpsleuth lab kernel build` and booted
under QEMU. The first run on a machine builds both (about 15 minutes on 2 cores);
later runs find them in the cache."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SUPPORT
from support.capabilities import GUEST_TOOLS, missing
from support.storm_lab import Storm
from support.storm_truth import analyse as storm_truth_analyse
from support.storm_truth import (
    check_capture,
    connections,
    idle_storm_verdicts,
    undecided_beyond_chance,
)

from tcpsleuth import compiled
from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.kernel import build as kbuild
from tcpsleuth.lab.kernel import guest, precompiled
from tcpsleuth.lab.runner import TCP_RMEM
from tcpsleuth.lab.scenarios import SCENARIOS
from tcpsleuth.sources import procfs

BUILD_TIMEOUT = 3600
GUEST_TIMEOUT = 1800
# The guest's command line: a small shell prelude prints the sysctls the expected
# shifts are derived from, on stderr, before the command under test.
SYSCTLS = "cat /proc/sys/net/ipv4/tcp_rmem /proc/sys/net/core/rmem_max >&2"


def _tcpsleuth(*args: str, timeout: float = GUEST_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def lab_kernels() -> dict[str, dict[str, Any]]:
    """Both kernels, built now if the cache does not have them."""
    absent = missing(*GUEST_TOOLS, "pahole")
    if absent or not kbuild.SOURCE_TARBALL.exists():
        reason = f"missing {absent or kbuild.SOURCE_TARBALL} (scripts/install.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    kernels = {}
    for name in ("fixed", "prefix"):
        result = _tcpsleuth(
            "lab", "kernel", "build", name, "--format", "json", timeout=BUILD_TIMEOUT
        )
        assert result.returncode == 0, result.stderr
        kernels[name] = json.loads(result.stdout)["kernel"]
    return kernels


def _shift(space: int) -> int:
    """tcp_select_initial_window(): the smallest shift that fits SPACE in 16 bits
    (ilog2(space) - 15, clamped to 0..14)."""
    return min(14, max(0, space.bit_length() - 1 - 15))


def _guest_sysctls(stderr: str) -> tuple[int, int]:
    lines = stderr.splitlines()
    rmem = next(line for line in lines if len(line.split()) == 3 and line.split()[0].isdigit())
    rmem_max = int(lines[lines.index(rmem) + 1].split()[0])
    return int(rmem.split()[2]), rmem_max


def test_a_command_the_kernel_line_cannot_hold_is_refused() -> None:
    """The guest's command travels on the kernel's command line (2,047 bytes on x86);
    cut off there, the guest would wait forever, so it is refused before the boot."""
    folder = Path("/tmp") / ("k" * 40)
    fits = guest._shell(["python3", "-m", "tcpsleuth", "lab", "run", "wscale-bug"])
    guest.check_command_line(fits, (folder, folder))
    too_long = guest._shell(["python3", "-m", "tcpsleuth", "lab", "run", "x" * 900])
    with pytest.raises(EnvironmentProblem, match="more than the kernel's 2047"):
        guest.check_command_line(too_long, (folder, folder))
    # the developer's PATH is not carried along: only this Python's folder and the system's
    assert guest._guest_path().split(":")[0] == os.path.dirname(sys.executable)
    assert len(guest._guest_path()) < 120


def _guests_of(owner: int) -> list[int]:
    """QEMU guests (a ``-kernel`` on the command line) that carry the run ``owner`` in
    their environment. virtme first runs ``qemu-system-x86_64 --version``, which carries
    the mark too but ends by itself: CI once caught that probe and saw it gone."""
    mark = f"{guest.OWNER}={owner}:".encode()
    names = dict(procfs.processes("comm"))
    argvs = dict(procfs.processes("cmdline"))
    return [
        pid
        for pid, environ in procfs.processes("environ")
        if any(item.startswith(mark) for item in environ.split(b"\0"))
        and names.get(pid, b"").startswith(b"qemu")
        and b"-kernel" in argvs.get(pid, b"").split(b"\0")
    ]


def test_a_killed_run_leaves_no_guest_behind(lab_kernels: dict[str, dict[str, Any]]) -> None:
    """SIGKILL cannot be handled: the QEMU of a killed run lives on (in its own session)
    until the next guest start ends it."""
    run = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "lab", "kernel", "run", "prefix", "--", "sleep", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (qemu := _guests_of(run.pid)):
            assert run.poll() is None and time.monotonic() < deadline, "no QEMU started"
            time.sleep(0.5)
    finally:
        run.kill()
        run.wait()
    time.sleep(1)
    assert all(procfs.running(pid) for pid in qemu)  # orphaned, still running
    ended = guest.end_orphans()  # what the next guest start does first
    assert set(qemu) <= set(ended)
    # it returns once they have ended (a SIGKILLed process runs on until the kernel has
    # torn it down: on a loaded machine a second look found vng or virtme-run still
    # running), so the next guest starts without them and a second look finds none
    assert [pid for pid in ended if procfs.running(pid)] == []
    assert guest.end_orphans() == []
    # a live run's guest is left alone
    mine = subprocess.Popen(["sleep", "30"], env={**os.environ, guest.OWNER: guest._owner_mark()})
    try:
        assert mine.pid not in guest.end_orphans() and mine.poll() is None
    finally:
        mine.kill()
        mine.wait()


def test_build_is_cached_and_keyed(lab_kernels: dict[str, dict[str, Any]]) -> None:
    started = time.monotonic()
    again = _tcpsleuth("lab", "kernel", "build", "prefix", "--format", "json")
    assert again.returncode == 0, again.stderr
    kernel = json.loads(again.stdout)["kernel"]
    assert kernel["cached"] is True and time.monotonic() - started < 30
    assert kernel["image"] == lab_kernels["prefix"]["image"]
    # one source, two keys: the patch is part of the prefix key only
    fixed, prefix = lab_kernels["fixed"], lab_kernels["prefix"]
    assert fixed["source_version"] == prefix["source_version"] == kbuild.source_version()
    assert fixed["key"] != prefix["key"]
    assert fixed["release"].startswith("6.1.") and fixed["release"] == prefix["release"]
    listed = _tcpsleuth("lab", "kernel", "list", "--format", "json")
    assert {k["name"] for k in json.loads(listed.stdout)["kernels"]} == {"fixed", "prefix"}
    # the image is a bootable x86 kernel of that release: the boot protocol's "HdrS"
    # magic at 0x202 and, where the header's kernel_version field points, its version
    image = Path(prefix["image"]).read_bytes()
    assert image[0x202:0x206] == b"HdrS"
    version_at = int.from_bytes(image[0x20E:0x210], "little") + 0x200
    assert image[version_at:].startswith(prefix["release"].encode() + b" ")


@dataclass
class Session:
    """One boot of a kernel for the checks that need only commands in the guest (a boot
    under emulation takes 30 to 45 s here): each check's stdout, stderr and status are
    files in ``out``, which the guest writes; ``result`` is the boot's."""

    out: Path
    result: guest.GuestResult

    def step(self, name: str) -> tuple[int, str, str]:
        """A check's status, stdout and stderr (-1 if the guest never got to it)."""
        rc = self.out / f"{name}.rc"
        status = int(rc.read_text()) if rc.exists() else -1
        texts = [(self.out / f"{name}.{ext}") for ext in ("out", "err")]
        stdout, stderr = (t.read_text() if t.exists() else "" for t in texts)
        return status, stdout, stderr + self.result.stderr[-2000:] * (status == -1)


_SESSIONS: dict[str, Session] = {}
# the capture the fixed kernel's guest analyses with the host's compiled loops
WARM = "warm.pcap"
# what the guest's shell lists: numba's index files written during the pcap check
NEWER = "find /tmp/tcpsleuth-numba -name '*.nbi' -newer /tmp/before >&2"


def _session(kernel: str, factory: pytest.TempPathFactory) -> Session:
    """The kernel's session, booted at its first use: the capture analysis with the
    host's compiled loops (fixed) or the kprobe trace (prefix), then the probe, then
    the 1,000-client storm (last: it leaves the guest's sysctls changed)."""
    if kernel in _SESSIONS:
        return _SESSIONS[kernel]
    out = factory.mktemp(f"guest-{kernel}")
    (out / "storm").mkdir()
    steps: dict[str, list[str]] = {}
    if kernel == "fixed":
        (out / WARM).write_bytes(precompiled._capture(pairs=100))
        steps["pcap"] = guest.python_command("pcap", str(out / WARM), "--format", "json")
    else:
        steps["kprobe"] = [sys.executable, str(SUPPORT / "kprobe_vs_sockdiag.py")]
    steps["probe"] = guest.python_command("probe", "--format", "json")
    storm = [sys.executable, str(SUPPORT / "storm_lab.py"), str(out / "storm")]
    storm += ["--clients", "1000", "--rcvbuf", "102400", "--settle", "60"]
    # every SYN answered with a cookie: under emulation the clients cannot be sure to
    # overflow the queue (1,000 did in two runs of three here, 300 and 500 never); the
    # overflow mix is the host storms' (tests/system/commands/test_capture_storms.py)
    steps["storm"] = [*storm, "--syncookies", "2"]
    script = f"cd {shlex.quote(str(out))}; {{ {SYSCTLS}; }} 2> sysctls.txt; touch /tmp/before; "
    for name, argv in steps.items():
        after = f"; {NEWER}" if name == "pcap" else ""
        script += (
            f"{{ {shlex.join(argv)}; echo $? > {name}.rc{after}; }} > {name}.out 2> {name}.err; "
        )
    built = kbuild.find(kernel)
    assert built is not None
    started = time.monotonic()
    # a file: the kernel's command line, which carries the guest's command, holds 2047 bytes
    (out / "session.sh").write_text(script + "\n")
    argv = ["sh", str(out / "session.sh")]
    result = guest.run(built, argv, timeout=GUEST_TIMEOUT, rwdirs=(out,))
    print(f"{kernel} guest session: {time.monotonic() - started:.0f} s with the boot")
    _SESSIONS[kernel] = Session(out, result)
    return _SESSIONS[kernel]


@pytest.mark.parametrize("kernel", ["prefix", "fixed"])
def test_probe_in_guest(
    lab_kernels: dict[str, dict[str, Any]], kernel: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    session = _session(kernel, tmp_path_factory)
    status, stdout, stderr = session.step("probe")
    assert status in (0, 1), stderr[-2000:]
    doc = json.loads(stdout)
    assert doc["kernel"]["release"] == lab_kernels[kernel]["release"]
    tcp_rmem_max, rmem_max = _guest_sysctls((session.out / "sysctls.txt").read_text())
    rcvbuf = doc["so_rcvbuf"]
    announced = _shift(min(rcvbuf, rmem_max))  # what SO_RCVBUF clamps the SYN-ACK to
    unclamped = _shift(max(tcp_rmem_max, rmem_max))  # what the pre-fix cookie path uses
    assert announced < unclamped
    cookies = [c for c in doc["connections"] if c["timestamps"]]
    assert {c["family"] for c in cookies} == {"IPv4", "IPv6"}
    kinds = {f["kind"]: f for f in doc["findings"]}
    for conn in cookies:
        assert conn["announced_wscale"] == conn["client_snd_wscale"] == announced
    if kernel == "prefix":
        assert status == 1
        assert all(c["server_rcv_wscale"] == unclamped for c in cookies)
        bug = kinds["kernel-cookie-wscale-bug"]["evidence"]
        assert (bug["announced_wscale"], bug["actual_wscale"]) == (announced, unclamped)
        assert bug["families"] == ["IPv4", "IPv6"]
        assert bug["window_shrink_factor"] == 2 ** (unclamped - announced)
    else:
        assert status == 0
        assert all(c["server_rcv_wscale"] == announced for c in cookies)
        assert "kernel-cookie-wscale-bug" not in kinds
    assert "software emulation" in session.result.accel_note or session.result.accel == "kvm"


def test_the_guest_loads_the_hosts_compiled_loops(
    lab_kernels: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The host compiles the capture analysis for the guest (lab/kernel/precompiled.py):
    in the guest `tcpsleuth pcap` on a capture above the plain-Python size compiles
    nothing (numba rewrites an index file for each function it compiles), and the
    generic machine code says what the host's own says, to the byte."""
    session = _session("fixed", tmp_path_factory)
    capture = session.out / WARM
    assert capture.stat().st_size > compiled.PLAIN_PYTHON_BYTES
    argv = [sys.executable, "-m", "tcpsleuth", "pcap", str(capture), "--format", "json"]
    host = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert host.returncode == 1, host.stderr  # the capture's handshakes are cookies
    status, stdout, stderr = session.step("pcap")
    assert status == 1, stderr[-2000:]
    compiled_there = [line for line in stderr.splitlines() if line.endswith(".nbi")]
    assert compiled_there == []
    assert stdout == host.stdout


def _lab(*args: str) -> tuple[int, dict[str, Any]]:
    result = _tcpsleuth("lab", "run", "wscale-bug", "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def _kinds(doc: dict[str, Any]) -> set[str]:
    return {f["kind"] for f in doc["findings"]}


def _mismatch_shifts(doc: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(seen by, announced, used) of every wscale-mismatch: the sockets of both ends
    read the shift used from the socket (`socket_wscale`), the capture analyzer infers it
    (`inferred_wscale`); both name it `actual_wscale`."""
    out = set()
    for f in doc["findings"]:
        if f["kind"] == "wscale-mismatch":
            evidence = f["evidence"]
            seen_by = "sockets" if evidence["socket_wscale"] is not None else "capture"
            used = evidence["actual_wscale"]
            out.add((seen_by, evidence["announced_wscale"], used))
    return out


def test_lab_on_the_real_bug_matches_the_emulation(
    lab_kernels: dict[str, dict[str, Any]],
) -> None:
    status, real = _lab("--kernel", "prefix")
    [run] = real["runs"]
    assert run["kernel"]["name"] == "prefix" and run["kernel"]["fault_emulated"] is False
    assert run["emulation"] is None and run["settings"]["fault"] == "none"
    assert "real kernel" in run["kernel"]["note"]
    assert real["guest"]["kernel"]["release"] == run["kernel"]["release"]
    restart = run["counters"]["during_restart"]
    if restart["TcpExtSyncookiesSent"] == 0:
        # The bug lives on the SYN-cookie path: a restart whose reconnects the guest's
        # SYN queue absorbed (a loaded host spreads them out) cannot show it. Said and
        # counted in the summary, not a failure of the kernel or of tcpsleuth.
        pytest.xfail(
            "no SYN cookie during the guest's restart (TcpExtSyncookiesSent 0, "
            f"TcpExtListenOverflows {restart.get('TcpExtListenOverflows')}, load average "
            f"{os.getloadavg()[0]:.1f}): the storm did not overflow, nothing to compare"
        )
    assert {"wscale-mismatch", "rwnd-limited"} <= _kinds(real)
    latency = run["latency_ms"]
    assert latency["after"]["p50"] >= 10 * latency["before"]["p50"], latency
    assert status == 1

    # The emulation, same scenario and size, on this host: the same detectors name the
    # same problems with the same shifts.
    _, emulated = _lab("--size", "guest")
    [erun] = emulated["runs"]
    assert erun["emulation"] and erun["kernel"] is None
    wanted = {"wscale-mismatch", "rwnd-limited", "syn-cookies-sent"}
    assert _kinds(real) & wanted == _kinds(emulated) & wanted == wanted
    # the shifts the scenario's buffers give: SO_RCVBUF on the SYN-ACK, the lab's
    # tcp_rmem maximum on the buggy cookie path
    announced = _shift(SCENARIOS["wscale-bug"].broker_rcvbuf)
    used = _shift(int(TCP_RMEM.split()[2]))
    expected = {("sockets", announced, used), ("capture", announced, used)}
    assert _mismatch_shifts(real) == _mismatch_shifts(emulated) == expected


def test_kprobe_trace_agrees_with_sock_diag(
    lab_kernels: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    status, stdout, stderr = _session("prefix", tmp_path_factory).step("kprobe")
    assert status == 0, stderr[-2000:]
    doc = json.loads(stdout)
    traced = {tuple(c["key"]): c for c in doc["traced"]}
    listed = {tuple(c["key"]): c for c in doc["sock_diag"]}
    assert len(listed) >= 8 and traced.keys() == listed.keys()
    for key, conn in listed.items():
        assert (traced[key]["snd_wscale"], traced[key]["rcv_wscale"]) == (
            conn["snd_wscale"],
            conn["rcv_wscale"],
        ), key
    # the bug is in what was traced: cookie connections whose server uses another shift
    # than the client believes
    servers = [c for c in doc["sock_diag"] if c["server_side"]]
    clients = {tuple(c["key"]): c for c in doc["sock_diag"] if not c["server_side"]}
    mismatched = [
        s
        for s in servers
        if clients[(s["key"][2], s["key"][3], s["key"][0], s["key"][1])]["snd_wscale"]
        != s["rcv_wscale"]
    ]
    assert mismatched


@pytest.mark.parametrize("kernel", ["prefix", "fixed"])
def test_storm_in_guest_per_connection(
    lab_kernels: dict[str, dict[str, Any]], kernel: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """1,000 clients at once on a backlog-50 listener with SO_RCVBUF 102400, as Kafka
    sets it, in the guest: nothing emulated, every SYN answered with a cookie. Both
    ends' captures are judged per connection against the kernel's truth
    (tests/support/storm_lab.py)."""
    session = _session(kernel, tmp_path_factory)
    status, _, stderr = session.step("storm")
    assert status == 0, stderr[-2000:]
    storm = Storm.load(session.out / "storm")
    # the SYN-ACK announces the shift the locked buffer gives (tcp_full_space of 2 x
    # 102400, half of it for data)
    announced = _shift(102400)
    for side in ("server", "client"):
        score = check_capture(storm, side, (announced, -1) if kernel == "prefix" else None)
        print(kernel, side, score)
    truth = connections(storm.server_pcap, storm.server_ss, storm.client_ss)
    disagree = [t for t in truth.values() if t.disagree]
    if kernel == "prefix":
        # the bug: cookie connections, and only they, disagree
        assert disagree and all(t.cookie for t in disagree)
        [used] = {t.server_rcv_wscale for t in disagree}
        assert used is not None and used > announced
    else:
        assert not disagree


@pytest.mark.heavy
def test_idle_storm_cookies_decided_in_the_prefix_guest(
    lab_kernels: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Issue 30's idle storm in the real pre-fix kernel: 1,000 clients on a backlog-50
    listener with SO_RCVBUF 102400 (Kafka's), the queue not drained for 2 s after the
    first SYN (the setup before the clients takes seconds under emulation), nothing
    sent for 15 s, then closed. Only ordinary cookies (tcp_syncookies=1), so the
    storm's ordinary connections measure the server's clock rate: every cookie
    connection whose server answered its FIN (14 s or more after the SYN-ACK) is
    decided, none wrong (save the rare one made in the clock's phase, which nothing
    tells apart: undecided_beyond_chance), and cookie connections run with the bug's
    shift."""
    built = kbuild.find("prefix")
    assert built is not None
    storm_argv = [sys.executable, str(SUPPORT / "storm_lab.py"), str(tmp_path)]
    storm_argv += ["--clients", "1000", "--rcvbuf", "102400", "--size", "0"]
    storm_argv += ["--settle", "15", "--accept-delay", "-2"]
    result = guest.run(built, storm_argv, timeout=GUEST_TIMEOUT, rwdirs=(tmp_path,))
    assert result.status == 0, result.stderr[-2000:]
    storm = Storm.load(tmp_path)
    sent = storm.netstat.get("TcpExtSyncookiesSent", 0)
    assert sent >= 50, f"the storm overflowed too little to judge: {sent} cookies sent"
    cookies, verdicts, lags = idle_storm_verdicts(storm, storm.server_pcap)
    undecided = [verdicts[c] for c in cookies if verdicts[c]["cookie"] is None]
    print(f"{sent} cookies sent, {len(cookies)} cookie connections with a later segment,")
    print(f"{len(undecided)} undecided: {[v['reason'] for v in undecided]}")
    # (one run of 736 cookies left one made in the clock's phase, one of 463 left 28)
    beyond = undecided_beyond_chance(cookies, verdicts, lags)
    assert len(cookies) >= 50 and not beyond, beyond[:5]
    doc = storm_truth_analyse(storm.server_pcap)
    [found] = [f for f in doc["findings"] if f["kind"] == "syn-cookies-seen"]
    print("server clock", found["evidence"]["server_clock"])  # the rate that decided them
    assert found["evidence"]["server_clock"]["compares_up_to_s"] >= 14
    truth = connections(storm.server_pcap, storm.server_ss, storm.client_ss)
    bitten = [t for t in truth.values() if t.cookie and t.disagree]
    # the client keeps the announced shift, the server uses the one of its full space
    assert bitten and {t.client_snd_wscale for t in bitten} == {_shift(102400)}, bitten[:3]
    [used] = {t.server_rcv_wscale for t in bitten}
    assert used is not None and used > _shift(102400)
