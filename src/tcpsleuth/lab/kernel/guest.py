"""Boot a lab kernel under QEMU and run one command in it (virtme-ng).

The guest sees this machine's root filesystem read-only (``/tmp`` is its own, in
memory), so tcpsleuth and its Python run there as installed here. KVM is used when
it can boot the guest; some hosts expose a /dev/kvm that cannot (a paravirtual one
whose boots hang), so the first run on a host tries KVM once with a short timeout
and remembers the outcome; otherwise QEMU emulates the CPU (TCG), which is much
slower but always works. ``TCPSLEUTH_GUEST_ACCEL=kvm|tcg`` overrides the choice.

A guest never outlives its run: on an error, a timeout, Ctrl-C or SIGTERM its whole
process group (vng, and the QEMU it starts) is killed. A run killed with SIGKILL cannot
do that, so every guest process carries its run in its environment
(``TCPSLEUTH_GUEST_OF=PID:START``), and the next guest started on this host first kills
the guests whose run is gone (a QEMU holds gigabytes of memory and a core).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.kernel import precompiled
from tcpsleuth.lab.kernel.build import BuiltKernel, cache_root
from tcpsleuth.sources import procfs

KVM_TRIAL_S = 40
# Where the guest writes: the root filesystem is read-only there.
GUEST_ENV = {
    "HOME": "/tmp",
    "NUMBA_CACHE_DIR": "/tmp/tcpsleuth-numba",
    **precompiled.GENERIC,
    "MPLCONFIGDIR": "/tmp/tcpsleuth-mpl",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TERM": "dumb",
}
MARK = "tcpsleuth-guest-status:"
OWNER = "TCPSLEUTH_GUEST_OF"
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# x86's COMMAND_LINE_SIZE less its final NUL, and what virtme-ng puts there besides the
# command (measured with `vng --dry-run`, virtme-ng 1.x: 589 bytes for the console, the
# root file system, overlays and init; a shared folder adds its path and 74 bytes)
COMMAND_LINE_BYTES = 2047
VNG_FIXED_BYTES = 600
MOUNT_BYTES = 80


@dataclass(frozen=True)
class GuestResult:
    status: int
    stdout: str
    stderr: str
    accel: str  # "kvm" or "tcg"
    accel_note: str
    release: str
    seconds: float


def _accel_file() -> Path:
    return cache_root() / "accel.json"


def _host_id() -> str:
    return f"{platform.release()} {shutil.which('qemu-system-x86_64')}"


def _owner_mark() -> str:
    return f"{os.getpid()}:{procfs.start_time(os.getpid())}"


def end_orphans(wait_s: float = 30) -> list[int]:
    """Kill guest processes (vng, QEMU) whose lab run is gone, and wait (up to
    ``wait_s``) until they have ended: a killed process keeps running, with its memory
    and its environment, until the kernel has torn it down. Their pids."""
    prefix = f"{OWNER}=".encode()
    ended: dict[int, str] = {}  # pid: when it started, so a reused pid is not waited on
    for pid, environ in procfs.processes("environ"):
        owner = next((i[len(prefix) :] for i in environ.split(b"\0") if i.startswith(prefix)), None)
        if owner is None:
            continue
        run, _, started = owner.decode(errors="replace").partition(":")
        if run.isdigit() and procfs.start_time(int(run)) == started:
            continue  # its run is alive
        since = procfs.start_time(pid)
        if since is None:
            continue  # ended by itself since it was read
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            ended[pid] = since
    deadline = time.monotonic() + wait_s
    while any(procfs.running(pid, since) for pid, since in ended.items()):
        if time.monotonic() > deadline:
            break  # still dying: the caller goes on, the next start looks again
        time.sleep(0.05)
    return list(ended)


def _vng_argv(
    kernel: BuiltKernel,
    shell_command: str,
    accel: str,
    cpus: int,
    memory: str,
    rwdirs: tuple[Path, ...],
) -> list[str]:
    argv = [
        "vng",
        "--run",
        str(kernel.image),
        "--user",
        "root",
        "--cpus",
        str(cpus),
        "--memory",
        memory,
        "--cwd",
        "/tmp",
    ]
    for folder in rwdirs:
        argv.append(f"--rwdir={folder}")
    if accel == "tcg":
        argv.append("--disable-kvm")
    return [*argv, "--exec", shell_command]


def _guest_path() -> str:
    """A short PATH for the guest: this Python's folder and the system's. The command
    travels on the kernel's command line, which holds 2,047 bytes on x86 (what is cut
    off is lost silently, and the guest waits forever), so a developer's long PATH
    (version managers, toolchains) is left out."""
    folders = [os.path.dirname(sys.executable), *SYSTEM_PATH]
    return ":".join(dict.fromkeys(f for f in folders if os.path.isdir(f)))


def check_command_line(shell_command: str, rwdirs: tuple[Path, ...]) -> None:
    """Refuse a guest command the kernel's command line cannot hold."""
    encoded = len(base64.b64encode(shell_command.encode()))
    mounts = sum(len(str(folder)) + MOUNT_BYTES for folder in rwdirs)
    size = VNG_FIXED_BYTES + mounts + encoded
    if size > COMMAND_LINE_BYTES:
        raise EnvironmentProblem(
            f"the guest's command line would be {size} bytes, more than the kernel's "
            f"{COMMAND_LINE_BYTES}: give shorter paths (to --keep or --record, say)"
        )


def _shell(
    command: list[str], extra_env: dict[str, str] | None = None, compiled: Path | None = None
) -> str:
    """The command as the guest's shell runs it: with this machine's PATH and Python,
    writable caches under /tmp (numba's seeded with the host's ``compiled`` code, see
    :mod:`precompiled`), and its exit status marked on stdout (what virtme-ng itself
    returns is not always the command's)."""
    env = {"PATH": _guest_path(), **GUEST_ENV}
    env.update(extra_env or {})
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    seed = (
        "" if compiled is None else f"cp -r {shlex.quote(str(compiled))}/. /tmp/tcpsleuth-numba; "
    )
    return (
        f"export {exports}; mkdir -p /tmp/tcpsleuth-numba /tmp/tcpsleuth-mpl; {seed}"
        f"{shlex.join(command)}; printf '%s%d\\n' {MARK} $?"
    )


def _boot(
    kernel: BuiltKernel,
    command: list[str],
    accel: str,
    timeout: float,
    cpus: int,
    memory: str,
    rwdirs: tuple[Path, ...],
    env: dict[str, str] | None = None,
    compiled: Path | None = None,
) -> tuple[int | None, str, str, float]:
    """(status or None on timeout, stdout, stderr, seconds)."""
    if not shutil.which("vng"):
        raise EnvironmentProblem("virtme-ng is not installed: pip install virtme-ng")
    if not shutil.which("qemu-system-x86_64"):
        raise EnvironmentProblem("QEMU is not installed: apt-get install qemu-system-x86")
    orphans = end_orphans()
    if orphans:
        print(
            f"tcpsleuth: killed {len(orphans)} guest process(es) left by a lab run that was "
            f"killed (pids {', '.join(map(str, orphans))})",
            file=sys.stderr,
        )
    shell_command = _shell(command, env, compiled)
    check_command_line(shell_command, rwdirs)
    started = time.monotonic()
    process = subprocess.Popen(
        _vng_argv(kernel, shell_command, accel, cpus, memory, rwdirs),
        env={**os.environ, OWNER: _owner_mark()},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err, time.monotonic() - started
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    # the marker follows the command's last byte (which need not end a line)
    status: int | None = None
    at = out.rfind(MARK)
    if at >= 0 and out[at + len(MARK) :].strip().isdigit():
        status = int(out[at + len(MARK) :].strip())
        out = out[:at]
    if status is None:  # the guest died before the command ended
        status = process.returncode or 1
        err += (
            "tcpsleuth: the guest ended without the command's status "
            f"(vng exit {process.returncode})\n"
        )
    return status, out, err, time.monotonic() - started


def choose_accel(kernel: BuiltKernel) -> tuple[str, str]:
    forced = os.environ.get("TCPSLEUTH_GUEST_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, f"{forced} (set by TCPSLEUTH_GUEST_ACCEL)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "software emulation (TCG): /dev/kvm is not available"
    remembered = _accel_file()
    if remembered.is_file():
        saved = json.loads(remembered.read_text())
        if saved.get("host") == _host_id():
            return saved["accel"], saved["note"]
    status, _out, err, seconds = _boot(kernel, ["true"], "kvm", KVM_TRIAL_S, 1, "512M", ())
    if status == 0:
        accel, note = "kvm", f"KVM (a trial boot took {seconds:.0f} s)"
    elif status is None:
        accel, note = (
            "tcg",
            "software emulation (TCG): a trial boot with this host's /dev/kvm did not "
            f"finish within {KVM_TRIAL_S} s",
        )
    else:
        said = [line.strip() for line in err.splitlines() if "qemu" in line.lower()]
        accel, note = (
            "tcg",
            "software emulation (TCG): this host's /dev/kvm could not boot the guest"
            + (f" ({said[0][:120]})" if said else ""),
        )
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(json.dumps({"host": _host_id(), "accel": accel, "note": note}))
    return accel, note


def run(
    kernel: BuiltKernel,
    command: list[str],
    timeout: float = 900,
    cpus: int = 2,
    memory: str = "2G",
    rwdirs: tuple[Path, ...] = (),
    env: dict[str, str] | None = None,
) -> GuestResult:
    """Boot KERNEL, run COMMAND as root, and return what it printed and its status.
    ``rwdirs``: host folders the guest may write (for files it hands back); ``env``:
    variables the command gets besides the usual ones. What the guest printed on stderr
    is also kept in ``last-guest-stderr.txt`` in the cache."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("running a guest kernel needs root here: run it with sudo")
    accel, note = choose_accel(kernel)
    compiled = precompiled.prepare()
    status, out, err, seconds = _boot(
        kernel, command, accel, timeout, cpus, memory, rwdirs, env, compiled
    )
    log = cache_root() / "last-guest-stderr.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(err)
    if status is None:
        raise EnvironmentProblem(
            f"the guest ({kernel.name}, {note}) did not finish within {timeout:.0f} s: "
            "raise --timeout, or make the command smaller"
        )
    return GuestResult(status, out, err, accel, note, kernel.release, seconds)


def python_command(*args: str) -> list[str]:
    """tcpsleuth as this machine runs it (same interpreter), for use inside a guest."""
    return [sys.executable, "-m", "tcpsleuth", *args]
