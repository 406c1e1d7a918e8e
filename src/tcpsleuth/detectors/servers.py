"""Which server program holds a listener, told from its processes' names and command
lines, and the table entry (``model/programs.py``) that holds what tcpsleuth knows
about that program: its default backlog, its settings and the advice in its terms.
"""

from __future__ import annotations

from collections.abc import Iterable

from tcpsleuth.model.programs import PROGRAMS, ServerProgram, java_main
from tcpsleuth.model.records import SocketOwner

# the Erlang VM runs RabbitMQ (and others): without a command line, its usual ports say
_RABBITMQ_PORTS = frozenset({5671, 5672, 1883, 8883, 61613, 61614, 15672, 25672, 5552})


def identify(owners: Iterable[SocketOwner], port: int | None = None) -> str | None:
    """The server program holding a listener, from its processes' names and command
    lines; None for a program tcpsleuth has nothing specific to say about."""
    for owner in owners:
        comm = owner.comm
        args = owner.cmdline or ()
        if comm == "nginx" or (args and args[0].startswith("nginx:")):
            return "nginx"
        if comm in ("redis-server", "redis-sentinel") or comm.startswith("redis-server"):
            return "redis"
        if comm in ("postgres", "postmaster"):
            return "postgresql"
        if comm == "envoy":
            return "envoy"
        if comm == "beam.smp":
            if any("rabbit" in arg for arg in args) or (
                port is not None and port in _RABBITMQ_PORTS
            ):
                return "rabbitmq"
            continue
        if comm == "java":
            started = java_main(args)
            return started[0].name if started else "java"
    return None


def program(name: str | None) -> ServerProgram | None:
    return PROGRAMS.get(name) if name else None


def process_names(owners: Iterable[SocketOwner]) -> list[dict[str, object]]:
    """The processes of a listener, one per pid (nginx's master and workers all hold it)."""
    seen: dict[int, str] = {}
    for owner in owners:
        seen.setdefault(owner.pid, owner.comm)
    return [{"comm": comm, "pid": pid} for pid, comm in sorted(seen.items())]
