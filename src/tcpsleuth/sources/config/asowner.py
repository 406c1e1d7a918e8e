"""Reading a configuration file that another process's command line names, as that
process's owner would, never with root's privilege.

tcpsleuth runs as root; any local user can start a process that listens and carries
``nginx -c /etc/shadow`` in its argv. Read by root, that file's text would reach the
audit's table (a confused deputy), a FIFO would hang it, an include that fans out or
a YAML alias bomb would exhaust it. So the file is read by a forked child that:

- enters the process's view of the file system: chroot to /proc/PID/root (a
  container's paths resolve inside the container, absolute symlinks included) and
  chdir to /proc/PID/cwd (relative paths resolve as the server resolved them);
- drops to the owner's credentials, supplementary groups first, then gid and uid
  (``setresuid`` changes the whole process, which is why a child does it, not a
  thread of the command); every capability goes with uid 0;
- opens regular files only (``common.read_regular_file``: O_NONBLOCK, fstat before
  reading, a size cap), within one ``Budget`` of files, bytes, depth and time for the
  file and all its includes, under resource limits of address space and CPU time;
- keeps no descriptor of the command but its answer's pipe, is not dumpable, and
  imports nothing once inside (the root is the user's: a module on ``sys.path`` there
  could be theirs);
- sends back the parsed settings (not the text) as JSON over a pipe; the parent reads
  at most ``MAX_REPLY`` bytes, checks every field's type, and kills the child when the
  time budget is spent.

The owner is the least privileged of the process's uids (/proc/PID/status ``Uid:``
real, effective, saved, filesystem): a set-user-ID root program started by a user is
read as that user. Whatever goes wrong is an InputError naming the file (the caller
makes it a note); a file the owner may not read is "FILE: not readable by its owner
uid N". Nothing the file says is ever put in a message.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import ConfiguredListener, KafkaConfig, KafkaListener, ServerConfig
from tcpsleuth.model.text import is_number, printable, to_int
from tcpsleuth.sources.config import READERS
from tcpsleuth.sources.config.common import Budget, ConfigFileMissing, ConfigFileNotReadable
from tcpsleuth.sources.kafkaconfig import read_kafka_config

PROC = Path("/proc")
SECONDS = 5.0  # per file, includes and parsing included
MAX_REPLY = 16 << 20
EXTRA_ADDRESS_SPACE = 512 << 20  # what the child may add to the command's own
PR_SET_DUMPABLE = 4  # <linux/prctl.h>


@dataclass(frozen=True)
class ProcessOwner:
    """Whom a file is read as: the credentials of process ``pid``."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


def _least_privileged(ids: list[int]) -> int:
    """The effective id unless it is 0 and another is not (a set-user-ID root program
    keeps its caller's real id): the first non-zero of effective, real, saved, fs."""
    if len(ids) < 4:
        raise ValueError("short id line")
    real, effective, saved, fs = ids[:4]
    for candidate in (effective, real, saved, fs):
        if candidate != 0:
            return candidate
    return 0


def process_owner(pid: int, proc: Path = PROC) -> ProcessOwner | None:
    """The credentials of ``pid`` from /proc/PID/status, None when it has ended or
    the file says something else than the kernel writes."""
    try:
        text = (proc / str(pid) / "status").read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, list[int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            words = rest.split()
            if not all(is_number(word, 10) for word in words):
                return None
            fields[name] = [int(word) for word in words]
    try:
        uid = _least_privileged(fields["Uid"])
        gid = _least_privileged(fields["Gid"])
    except (KeyError, ValueError):
        return None
    return ProcessOwner(pid, uid, gid, tuple(fields.get("Groups", [])))


def read_as_owner(
    owner: ProcessOwner,
    program: str,
    path: Path,
    seconds: float = SECONDS,
    proc: Path = PROC,
) -> ServerConfig | KafkaConfig | None:
    """``program``'s configuration at ``path`` (as the process names it) read as
    ``owner`` inside its root; None when there is no such file. Anything else that
    stops the read (the owner may not read it, not a regular file, too large, too
    slow, not the program's syntax) is an InputError naming the file."""
    if program != "kafka" and program not in READERS:
        raise InputError(f"no configuration reader for {program!r}")
    reply = _in_child(lambda: _read_in_view(owner, program, path, seconds, proc), seconds)
    if reply.get("missing") is True:
        return None
    if isinstance(reply.get("failure"), str):
        raise InputError(f"{path}: {reply['failure']}")
    if isinstance(reply.get("error"), str):
        raise InputError(reply["error"])
    try:
        if "kafka" in reply:
            return _kafka_from(reply["kafka"])
        return _server_from(reply["server"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{path}: the reader's answer was not understood") from None


def run_in_child(work: Any, seconds: float) -> dict[str, Any]:
    """``work()`` (returning a JSON-able dict) in a forked child, its answer back
    within ``seconds``; the child is killed past them. Exposed for tests."""
    return _in_child(work, seconds)


def _in_child(work: Any, seconds: float) -> dict[str, Any]:
    # the child imports nothing once inside: what a reader loads on demand (PyYAML, for
    # Envoy's files) is loaded here, before the fork
    from tcpsleuth.sources.config import envoy_yaml  # noqa: F401

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's coverage is not collected
        os.close(read_end)
        status = 0
        try:
            _confine_child(seconds, write_end)
            answer = work()
        except BaseException as exc:  # every failure, KeyboardInterrupt too, is the answer
            answer = {"failure": f"the reader failed ({type(exc).__name__})"}
            status = 1
        try:
            data = json.dumps(answer).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            os._exit(status)
    os.close(write_end)
    data = bytearray()
    deadline = time.monotonic() + seconds
    ended = False
    poll = select.poll()  # not select(): the command may hold more than 1,024 descriptors
    poll.register(read_end, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poll.poll(max(1, int(left * 1000))):
                break
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                ended = True
                break
            data += chunk
            if len(data) > MAX_REPLY:
                break
    finally:
        os.close(read_end)
        if not ended:
            os.kill(child, signal.SIGKILL)
        _, status = os.waitpid(child, 0)
    if not ended:
        if len(data) > MAX_REPLY:
            return {"failure": f"the reader's answer exceeded {MAX_REPLY >> 20} MiB; stopped"}
        return {"failure": f"not read within {seconds:g} s; the reader was stopped"}
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return {"failure": f"the reader was ended by {name} (a resource limit)"}
    try:
        answer = json.loads(bytes(data))
    except (ValueError, RecursionError):
        return {"failure": "the reader's answer was not understood"}
    return answer if isinstance(answer, dict) else {"failure": "the reader's answer was odd"}


def _confine_child(seconds: float, keep: int) -> None:  # pragma: no cover - in the child
    """Bounds on what the child may take and touch, whatever the reader does or meets:
    CPU time, address space, no files written, no core dump, no descriptor of the
    command but the answer's pipe (stdin, stdout and stderr are /dev/null), not
    dumpable (no ptrace by the owner it becomes), and no import from the file system:
    inside another process's root, ``sys.path`` would name that root's files, so a
    module the reader had not loaded yet must fail to load rather than run a user's
    code. The codecs the readers use are loaded before."""
    cpu = int(seconds) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        with open("/proc/self/status") as status:
            size = next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")
            )
        limit = size + EXTRA_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, StopIteration, ValueError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], keep + 2))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    for codec in ("utf-8", "latin-1", "ascii"):
        b"x".decode(codec)
    json.dumps({"warm": [1, None, "x"]})
    sys.path.clear()
    sys.path_importer_cache.clear()


def _read_in_view(  # pragma: no cover - runs in the child
    owner: ProcessOwner, program: str, path: Path, seconds: float, proc: Path
) -> dict[str, Any]:
    """In the child: enter the process's root and working directory, become its
    owner, read."""
    try:
        _enter(owner, proc)
    except OSError as exc:
        return {"error": f"{path}: cannot enter the view of pid {owner.pid} ({exc.strerror})"}
    if not path.is_absolute():
        try:
            here = os.getcwd()
        except OSError:
            here = ""
        if here.startswith("/"):
            path = Path(here) / path
    budget = Budget(seconds=seconds)
    try:
        if program == "kafka":
            return {"kafka": _kafka_to(read_kafka_config(path, budget))}
        return {"server": _server_to(READERS[program](path, budget))}
    except ConfigFileMissing as missing:
        if missing.path == str(path):
            return {"missing": True}
        return {"error": str(missing)}
    except ConfigFileNotReadable as denied:
        return {"error": f"{denied.path}: not readable by its owner uid {owner.uid}"}
    except InputError as problem:
        return {"error": str(problem)}
    except MemoryError:
        return {"error": f"{path}: reading it needed more memory than allowed; stopped"}
    except RecursionError:
        return {"error": f"{path}: nested too deep to read"}


def _enter(owner: ProcessOwner, proc: Path) -> None:  # pragma: no cover - in the child
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    base = proc / str(owner.pid)
    if os.geteuid() != 0:
        # no privilege to drop nor to chroot: read as this user, from the server's
        # working directory when this user may see it
        with contextlib.suppress(OSError):
            os.chdir(base / "cwd")
        return
    root = os.open(base / "root", flags)
    try:
        cwd: int | None = os.open(base / "cwd", flags)
    except OSError:
        cwd = None
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(cwd if cwd is not None else root)
    if owner.uid != 0 or owner.gid != 0:
        os.setgroups(list(owner.groups))
        os.setresgid(owner.gid, owner.gid, owner.gid)
        os.setresuid(owner.uid, owner.uid, owner.uid)
    os.close(root)
    if cwd is not None:
        os.close(cwd)


def _server_to(config: ServerConfig) -> dict[str, Any]:
    return {
        "program": config.program,
        "path": config.path,
        "listeners": [
            [x.host, x.port, x.backlog, x.rcvbuf, x.where, x.text] for x in config.listeners
        ],
        "settings": dict(config.settings),
        "notes": list(config.notes),
    }


def _text(value: Any) -> str:
    """Text of the answer, control characters shown as escapes: a path, a directive
    or a setting the user wrote reaches a terminal as text only."""
    if not isinstance(value, str):
        raise TypeError("not text")
    return printable(value)


def _integer(value: Any, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not a whole number")
    return to_int(str(value))


def _strings(mapping: Any) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise TypeError("not a mapping")
    return {_text(key): _text(value) for key, value in mapping.items()}


def _server_from(doc: Any) -> ServerConfig:
    listeners = []
    for host, port, backlog, rcvbuf, where, text in doc["listeners"]:
        number = _integer(port)
        if number is None:
            raise ValueError("port")
        listeners.append(
            ConfiguredListener(
                _text(host),
                number,
                _integer(backlog, True),
                _integer(rcvbuf, True),
                _text(where),
                _text(text),
            )
        )
    return ServerConfig(
        _text(doc["program"]),
        _text(doc["path"]),
        tuple(listeners),
        _strings(doc["settings"]),
        tuple(_text(note) for note in doc["notes"]),
    )


def _kafka_to(config: KafkaConfig) -> dict[str, Any]:
    return {
        "path": config.path,
        "properties": dict(config.properties),
        "listeners": [[x.name, x.host, x.port] for x in config.listeners],
        "listen_backlog_size": config.listen_backlog_size,
        "receive_buffer_bytes": config.receive_buffer_bytes,
        "send_buffer_bytes": config.send_buffer_bytes,
    }


def _kafka_from(doc: Any) -> KafkaConfig:
    listeners = []
    for name, host, port in doc["listeners"]:
        number = _integer(port)
        if number is None:
            raise ValueError("port")
        listeners.append(KafkaListener(_text(name), _text(host), number))
    receive = _integer(doc["receive_buffer_bytes"])
    send = _integer(doc["send_buffer_bytes"])
    if receive is None or send is None:
        raise ValueError("buffer sizes")
    return KafkaConfig(
        path=_text(doc["path"]),
        properties=_strings(doc["properties"]),
        listeners=listeners,
        listen_backlog_size=_integer(doc["listen_backlog_size"], True),
        receive_buffer_bytes=receive,
        send_buffer_bytes=send,
    )
