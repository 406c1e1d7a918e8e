"""Run the tcp_window.bt program under bpftrace and turn its lines into samples.

bpftrace (Debian package ``bpftrace``) compiles the program against the running
kernel's BTF, so no kernel headers are needed; it needs root, BTF
(/sys/kernel/btf/vmlinux), the tcp:tcp_probe tracepoint and a mounted tracefs.
Each missing piece is reported as one line saying what to use instead.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.records import WindowSample

TRACEFS = Path("/sys/kernel/tracing")
BTF = Path("/sys/kernel/btf/vmlinux")
STOP_TIMEOUT_S = 30  # after SIGINT, for bpftrace to detach and exit
INSTEAD = "use `tcpsleuth sockets` (ss -ti from both ends) or a capture instead"


METHODS = {
    "tracepoint": "tcp_window.bt",  # tcp:tcp_probe, at every segment a socket receives
    "kprobe": "tcp_select_window.bt",  # __tcp_select_window, the talk's method
}
KPROBE_EVENTS = TRACEFS / "kprobe_events"


def program_text(method: str = "tracepoint") -> str:
    return (resources.files("tcpsleuth.sources.bpf") / METHODS[method]).read_text()


def _port_be(port: int) -> int:
    """PORT as the kernel keeps a peer's port (network byte order) read as a number."""
    return ((port & 0xFF) << 8) | (port >> 8)


def build_program(
    ports: frozenset[int],
    netns_inodes: frozenset[int],
    sample_ms: float,
    method: str = "tracepoint",
) -> str:
    conditions = []
    if method == "kprobe":
        sock = "((struct sock *)arg0)"
        port_terms = [
            f"{sock}->__sk_common.skc_num == {p} || {sock}->__sk_common.skc_dport == {_port_be(p)}"
            for p in sorted(ports)
        ]
    else:
        sock = "((struct sock *)args->skaddr)"
        port_terms = [f"args->sport == {p} || args->dport == {p}" for p in sorted(ports)]
    if ports:
        conditions.append(" || ".join(port_terms))
    if netns_inodes:
        field = f"{sock}->__sk_common.skc_net.net->ns.inum"
        conditions.append(" || ".join(f"{field} == {inode}" for inode in sorted(netns_inodes)))
    predicate = "/ " + " && ".join(f"({c})" for c in conditions) + " /" if conditions else ""
    return (
        program_text(method)
        .replace("FILTER", predicate)
        .replace("SAMPLE_NS", str(int(sample_ms * 1_000_000)))
    )


def netns_inode(name: str) -> int:
    from tcpsleuth.sources import netns

    try:
        return netns.inode(name)
    except FileNotFoundError:
        raise InputError(f"network namespace {name!r} is gone") from None


def check_environment(method: str = "tracepoint") -> str:
    """Path of bpftrace, or EnvironmentProblem saying what is missing."""
    bpftrace = shutil.which("bpftrace")
    if bpftrace is None:
        raise EnvironmentProblem(
            f"bpftrace is not installed (Debian: apt-get install bpftrace); {INSTEAD}"
        )
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"tracing the kernel needs root (CAP_BPF and CAP_PERFMON); run with sudo, or {INSTEAD}"
        )
    if not BTF.exists():
        raise EnvironmentProblem(
            f"this kernel has no BTF ({BTF} is missing), so the socket "
            f"cannot be read from a tracepoint; {INSTEAD}"
        )
    if not (TRACEFS / "events").is_dir():
        # tracefs is a pseudo file system: mounting it changes nothing in the kernel's state.
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, check=False
        )
    if method == "kprobe":
        if not KPROBE_EVENTS.exists():
            raise EnvironmentProblem(
                "this kernel has no kprobes (CONFIG_KPROBE_EVENTS), so __tcp_select_window "
                "cannot be probed; use --method tracepoint, or run it on a lab kernel "
                "(`tcpsleuth lab kernel run prefix -- tcpsleuth trace --method kprobe`)"
            )
        return bpftrace
    if not (TRACEFS / "events" / "tcp" / "tcp_probe").is_dir():
        raise EnvironmentProblem(
            f"this kernel has no tcp:tcp_probe tracepoint (or tracefs "
            f"cannot be mounted at {TRACEFS}); {INSTEAD}"
        )
    return bpftrace


def parse_line(line: str) -> WindowSample | None:
    fields = line.split()
    if len(fields) != 17 or fields[0] != "P":
        return None
    v = fields[1:]
    return WindowSample(
        int(v[0]),
        int(v[1]),
        v[2],
        int(v[3]),
        v[4],
        int(v[5]),
        int(v[6]),
        int(v[7]),
        int(v[8]),
        int(v[9]),
        int(v[10]),
        int(v[11]),
        int(v[12]),
        v[13] == "1",
        int(v[14]),
        int(v[15]),
    )


def _lines(fd: int, until: float) -> Iterator[str | None]:
    """Complete lines from ``fd`` until the monotonic deadline; None on each idle wake-up."""
    pending = b""
    while (now := time.monotonic()) < until:
        readable, _, _ = select.select([fd], [], [], min(0.2, until - now))
        if not readable:
            yield None
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace")


def trace(
    program: str,
    duration_s: float,
    on_tick: Callable[[], None] | None = None,
    method: str = "tracepoint",
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[WindowSample]:
    """Run ``program`` for ``duration_s`` seconds, yielding samples as they come
    (``preexec_fn`` runs in the child before bpftrace starts, e.g. to tie its life
    to the caller's)."""
    bpftrace = check_environment(method)
    process = subprocess.Popen(
        [bpftrace, "-e", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    assert process.stdout is not None and process.stderr is not None
    fd = process.stdout.fileno()
    try:
        for line in _lines(fd, time.monotonic() + 60):
            if line is not None and line.strip() == "ready":
                break
            if process.poll() is not None:
                error = process.stderr.read().decode(errors="replace").strip().splitlines()
                detail = next(
                    (
                        e
                        for e in error
                        if "RLIMIT_MEMLOCK" not in e and not e.startswith("Attaching")
                    ),
                    "no output",
                )
                raise EnvironmentProblem(f"bpftrace could not start the trace: {detail}; {INSTEAD}")
        else:
            raise EnvironmentProblem(f"bpftrace did not start within 60 s; {INSTEAD}")
        next_tick = time.monotonic() + 1
        for line in _lines(fd, time.monotonic() + duration_s):
            if line is not None and (sample := parse_line(line)) is not None:
                yield sample
            if on_tick is not None and time.monotonic() >= next_tick:
                next_tick += 1
                on_tick()
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # detaching can take longer on a loaded machine: the samples were read as
            # they came, what bpftrace still held is given up (and it is killed below)
            rest = b""
        for line in rest.decode(errors="replace").splitlines():
            if (sample := parse_line(line)) is not None:
                yield sample
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
