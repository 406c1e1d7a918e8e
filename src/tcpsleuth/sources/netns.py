"""Entering a network namespace for the calling thread, and naming one.

A namespace is named three ways, tried in this order:

1. an ``ip netns`` name: a file directly under /run/netns. Such a name wins, so a
   namespace someone called ``pid:1`` with ``ip netns add`` still means that file;
2. ``pid:N``: the network namespace process N is in (/proc/N/ns/net);
3. ``container:NAME``: the namespace of a running container's first process, whose
   pid podman, docker or crictl tells (the first of them installed that knows NAME);
   when none of them is installed or knows NAME, a runtime's API socket
   ($CONTAINER_HOST, $DOCKER_HOST, Podman's and Docker's usual sockets) is asked
   ``GET /containers/NAME/json``: how tcpsleuth's image, which has no runtime command,
   finds a container when the runtime's socket is mounted into it.

Sockets, /proc/self/net and /proc/sys/net files opened inside stay bound to that
namespace after we return, so sources open what they need inside and read it
anywhere. Python 3.11 has no ``os.setns``; libc's is called through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tcpsleuth.errors import EnvironmentProblem, InputError

if TYPE_CHECKING:
    import http.client

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")
PROC = Path("/proc")
PID_PREFIX = "pid:"
CONTAINER_PREFIX = "container:"
FORMS = "an `ip netns` name, pid:N or container:NAME"

# what podman, docker and CRI accept as a container name or id; anything else never
# reaches a command line
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_PID = re.compile(r"[1-9][0-9]{0,9}")
RUNTIME_TIMEOUT = 20.0
# a runtime's API socket: each step (connect, a read) and the whole exchange; a reply
# longer than the cap is no runtime's answer (an inspect is a few tens of kB)
SOCKET_STEP_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0
SOCKET_REPLY_CAP = 4 << 20
# the sockets asked after the environment's: rootful Podman's, then Docker's
RUNTIME_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock")
SOCKET_ENVIRONMENT = ("CONTAINER_HOST", "DOCKER_HOST")

_libc = ctypes.CDLL(None, use_errno=True)
# container name -> pid, asked once per process: the exporter enters its namespace at
# every scrape, and a runtime takes a tenth of a second or more to answer
_container_pids: dict[str, int] = {}


def _is_ip_netns(name: str) -> bool:
    try:
        return (NETNS_RUN_DIR / name).is_file()
    except OSError:
        return False


def checked_name(name: str) -> str:
    """``name`` if it names a network namespace (see the module's docstring), else
    InputError. The one check every ``--netns`` and ``netns:`` goes through: an empty
    name (an unset shell variable) must not mean the host, and ``.``, ``..`` or a name
    with ``/`` must not reach outside /run/netns."""
    path(name)
    return name


def path(name: str) -> Path:
    """The file of network namespace ``name``: /run/netns/NAME or /proc/PID/ns/net."""
    if name == "":
        raise InputError(f"the network namespace name is empty ({FORMS}; see `ip netns list`)")
    if name in (".", "..") or "/" in name or "\x00" in name or len(name) > 255:
        raise InputError(
            f"{name!r} is not a network namespace name: an `ip netns` name has no '/' "
            f"and is not '.' or '..' (see `ip netns list`)"
        )
    if _is_ip_netns(name):
        return NETNS_RUN_DIR / name
    if name.startswith(PID_PREFIX):
        return _process_netns(name[len(PID_PREFIX) :], name)
    if name.startswith(CONTAINER_PREFIX):
        container = name[len(CONTAINER_PREFIX) :]
        if not _CONTAINER_NAME.fullmatch(container):
            raise InputError(
                f"{name!r}: a container name is letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )
        pid = _container_pid(container)
        return _process_netns(str(pid), name)
    raise InputError(f"no network namespace named {name!r} ({FORMS}; see `ip netns list`)")


def _process_netns(pid: str, name: str) -> Path:
    if not _PID.fullmatch(pid):
        raise InputError(f"{name!r}: pid:N needs a process id, e.g. pid:4242")
    target = PROC / pid / "ns" / "net"
    try:
        target.stat()
    except FileNotFoundError:
        raise InputError(f"{name!r}: no process {pid} (see `ps -p {pid}`)") from None
    except PermissionError:
        if os.geteuid() != 0:
            raise EnvironmentProblem(
                f"reading the network namespace of process {pid} needs root; run with sudo"
            ) from None
        raise EnvironmentProblem(
            f"{target}: not allowed, even to root (the process is beyond this one's reach)"
        ) from None
    except OSError as exc:
        raise InputError(f"{name!r}: {target}: {exc.strerror or exc}") from None
    return target


def inode(name: str) -> int:
    """The inode number of namespace ``name``: what eBPF programs see as its id."""
    return path(name).stat().st_ino


def _container_pid(container: str) -> int:
    cached = _container_pids.get(container)
    if cached is not None and (PROC / str(cached)).is_dir():
        return cached
    pid = container_pid(container)
    _container_pids[container] = pid
    return pid


def _ask(command: list[str]) -> str | None:
    """What ``command`` printed, or None when it failed or took too long."""
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=RUNTIME_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _from_cli(tool: str, container: str) -> str | None:
    """The pid podman or docker reports for ``container`` ("0": not running)."""
    return _ask([tool, "container", "inspect", "--format", "{{.State.Pid}}", "--", container])


def _from_crictl(tool: str, container: str) -> str | None:
    """crictl knows containers by id; a name is found among the running ones first."""
    ids = _ask([tool, "ps", "--quiet", "--state", "running", "--name", f"^{container}$"])
    candidates = ids.split() if ids else [container]
    if len(candidates) != 1:
        raise InputError(
            f"container:{container}: {len(candidates)} running containers have that name "
            f"(`crictl ps --name {container}`); give one's id"
        )
    return _ask(
        [tool, "inspect", "--output", "go-template", "--template", "{{.info.pid}}", candidates[0]]
    )


RUNTIMES = (("podman", _from_cli), ("docker", _from_cli), ("crictl", _from_crictl))


def _unix_http_connection(socket_path: str) -> http.client.HTTPConnection:
    """HTTP over a unix socket; ``Host: localhost``, as Docker's API wants a Host.
    (http.client is imported here: at the top it cost every command 20 ms of start-up,
    and only a container lookup needs it.)"""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(SOCKET_STEP_TIMEOUT)
                sock.connect(socket_path)
            except BaseException:
                sock.close()
                raise
            self.sock = sock

    return UnixHTTPConnection("localhost", timeout=SOCKET_STEP_TIMEOUT)


def runtime_sockets() -> list[str]:
    """The API sockets to ask, in order: $CONTAINER_HOST's and $DOCKER_HOST's when they
    are unix://PATH, then /run/podman/podman.sock and /var/run/docker.sock; one socket
    named twice (/var/run is /run) is asked once."""
    named = []
    for variable in SOCKET_ENVIRONMENT:
        value = os.environ.get(variable, "")
        if value.startswith("unix:///"):
            named.append(value[len("unix://") :])
    named.extend(RUNTIME_SOCKETS)
    sockets, seen = [], set()
    for socket_path in named:
        key = os.path.realpath(socket_path)
        if key not in seen:
            seen.add(key)
            sockets.append(socket_path)
    return sockets


class _Unreachable(Exception):
    """No runtime listens on the socket (none there, refused, not allowed)."""


def _inspect_over_socket(socket_path: str, container: str) -> bytes | None:
    """The body of ``GET /containers/NAME/json`` from the API at ``socket_path``
    (Docker's, or Podman's compatible one), or None when it answers anything but 200
    (404: no such container), or too slowly or too much; _Unreachable when no runtime
    listens there."""
    import http.client

    deadline = time.monotonic() + SOCKET_TIMEOUT
    connection = _unix_http_connection(socket_path)
    try:
        connection.connect()
    except OSError:
        connection.close()
        raise _Unreachable(socket_path) from None
    try:
        # the name matched _CONTAINER_NAME: nothing in it needs quoting in a path
        connection.request(
            "GET", f"/containers/{container}/json", headers={"Accept": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            return None
        body = b""
        while len(body) <= SOCKET_REPLY_CAP:
            if time.monotonic() > deadline:
                return None
            chunk = response.read1(65536)  # one read of the socket at most
            if not chunk:
                return body
            body += chunk
        return None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _pid_from_socket(socket_path: str, container: str) -> int | None:
    """The pid the API at ``socket_path`` reports for ``container``: None when it does
    not know it, InputError when it is not running or the answer has no pid."""
    body = _inspect_over_socket(socket_path, container)
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    state = doc.get("State") if isinstance(doc, dict) else None
    pid = state.get("Pid") if isinstance(state, dict) else None
    running = state.get("Running") if isinstance(state, dict) else None
    if type(pid) is not int or type(running) is not bool or not 0 <= pid < 10**10:
        raise InputError(
            f"container:{container}: {socket_path} gave no State.Pid and State.Running"
        )
    if not running or pid == 0:
        raise InputError(f"container:{container} is not running ({socket_path})")
    return pid


def container_pid(container: str) -> int:
    """The host pid of running container ``container``, from the first runtime
    installed (podman, docker, crictl) that knows it, else from the first runtime API
    socket (see runtime_sockets) that does."""
    asked = []
    for tool, ask in RUNTIMES:
        executable = shutil.which(tool)
        if executable is None:
            continue
        asked.append(tool)
        answer = ask(executable, container)
        if answer is None:
            continue
        if not _PID.fullmatch(answer):
            if answer == "0":
                raise InputError(f"container:{container} is not running ({tool})")
            raise InputError(f"container:{container}: {tool} gave no pid but {answer[:40]!r}")
        return int(answer)
    sockets = runtime_sockets()
    for socket_path in sockets:
        try:
            pid = _pid_from_socket(socket_path, container)
        except _Unreachable:
            continue
        if pid is not None:
            return pid
        asked.append(socket_path)
    if not asked:
        raise EnvironmentProblem(
            f"container:{container} needs podman, docker or crictl on PATH or a runtime's "
            f"socket it may use ({', '.join(sockets)}; none answered) to find the "
            "container's process; give pid:N instead"
        )
    raise InputError(f"no running container named {container!r} (asked {', '.join(asked)})")


def exec_prefix(name: str | None) -> list[str]:
    """The start of a command line that runs a program in namespace ``name``, or nothing
    for the caller's own namespace: ``ip netns exec`` for an `ip netns` name (which also
    shows the program that namespace's /sys and /etc/netns files), ``nsenter --net`` for
    a process's or container's."""
    if not name:
        return []
    target = path(name)
    if target.parent == NETNS_RUN_DIR:
        return ["ip", "netns", "exec", name]
    return ["nsenter", f"--net={target}"]


def _setns(fd: int, name: str | None = None) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise EnvironmentProblem(
                "entering a network namespace needs root (CAP_SYS_ADMIN); "
                "run with sudo or drop --netns"
            )
        if err == errno.EINVAL and name is not None:
            raise InputError(f"{name!r} is not a network namespace")
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name``; ``None`` stays where we are."""
    if name is None:
        yield
        return
    target = path(name)
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # the process or container ended since it was named
        raise InputError(f"network namespace {name!r} is gone ({target})") from None
    except PermissionError:
        raise EnvironmentProblem(
            f"reading network namespace {name!r} needs root; run with sudo"
        ) from None
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target_fd, name)
        try:
            yield
        finally:
            _setns(home_fd)
    finally:
        os.close(target_fd)
        os.close(home_fd)
