"""Server programs' configuration files, one reader per program, each returning a
``ServerConfig``: the listening addresses with the settings that decide their backlog
and their receive buffer, under the program's own names, with FILE:LINE for advice.

The kernel gives every listener's backlog and buffer; these add what it cannot know:
which setting made them, in which file, and whether a buffer equal to what the kernel
gives an unlocked socket was set on purpose.

``locate`` finds a running server's file from its command line where the program names
it there (nginx -c, ZooKeeper's and Kafka's argument, Envoy -c, postgres -D or
config_file=); Redis rewrites its process title, so its file must be given. It only
reads the command line: whether the file exists, and what it says, is for a reader
running as the process's owner inside its root (``asowner``) to find out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.programs import PROGRAMS
from tcpsleuth.model.records import ServerConfig
from tcpsleuth.model.text import is_number
from tcpsleuth.sources.config import envoy, nginx, postgresql, rabbitmq, redis, zookeeper
from tcpsleuth.sources.config.common import Budget

READERS: dict[str, Callable[[Path, Budget | None], ServerConfig]] = {
    "nginx": nginx.read,
    "zookeeper": zookeeper.read,
    "rabbitmq": rabbitmq.read,
    "redis": redis.read,
    "postgresql": postgresql.read,
    "envoy": envoy.read,
}
# the programs --config PROGRAM=FILE takes; `kafka` is read by
# tcpsleuth.sources.kafkaconfig (the audit's --kafka-config)
CONFIG_PROGRAMS = (*READERS, "kafka")


def read_server_config(program: str, path: Path, budget: Budget | None = None) -> ServerConfig:
    """``path`` read by ``program``'s reader within ``budget`` (by default the budget of
    a file the operator named: the main file may be a pipe)."""
    reader = READERS.get(program)
    if reader is None:
        raise InputError(
            f"no configuration reader for {program!r} (have {', '.join(sorted(READERS))}, "
            "and kafka through --kafka-config)"
        )
    return reader(path, budget)


def parse_option(text: str) -> tuple[str, Path]:
    """``PROGRAM=FILE`` as --config takes it."""
    program, sep, path = text.partition("=")
    if not sep or not path or program not in CONFIG_PROGRAMS:
        raise InputError(
            f"--config {text!r}: expected PROGRAM=FILE, PROGRAM one of {', '.join(CONFIG_PROGRAMS)}"
        )
    return program, Path(path)


def _after(args: Sequence[str], *flags: str) -> str | None:
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def locate(program: str, cmdline: Sequence[str], cwd: Path | None) -> Path | None:
    """The configuration file a running server was started with, when its command
    line says (an option or its Java main class's argument, as ``model/programs.py``
    lists them), or the program's default file (None when neither); relative paths are
    taken from ``cwd`` when it is given. Nothing is opened or looked up here."""
    known = PROGRAMS.get(program)
    if known is None:
        return None
    args = list(cmdline)
    if program == "nginx" and len(args) == 1:  # nginx: master process /usr/sbin/nginx -c F
        args = args[0].split()
    found = _after(args, *known.config_options) if known.config_options else None
    if program == "nginx":
        prefix = _after(args, "-p")
        if found and prefix and not Path(found).is_absolute():
            found = str(Path(prefix) / found)
    for i, arg in enumerate(args):
        if arg in known.main_classes:
            # ZooKeeperServerMain also takes PORT DATADIR instead of a file
            if i + 1 < len(args) and not is_number(args[i + 1]):
                found = args[i + 1]
            break
    if program == "postgresql":
        for arg in args:
            if arg.startswith("config_file="):
                found = arg.split("=", 1)[1]
        if found is None:
            data = _after(args, "-D")
            if data:
                found = str(Path(data) / "postgresql.conf")
    if found is None:
        return known.default_config
    path = Path(found)
    if not path.is_absolute() and cwd is not None:
        path = cwd / path
    return path
