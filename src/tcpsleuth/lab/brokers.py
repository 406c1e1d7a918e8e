"""The broker a lab run talks to: tcpsleuth's lab broker, or a real one the user names.

All look the same to the runner (:class:`Broker`): started, restarted (every connection
closed, listening again, accepting again) and stopped, each returning when the broker is
in that state. A real Apache Kafka (``kafka_broker.KafkaBroker``) is one too, and adds
what only it has (its metrics, its jars for the Java clients).
"""

from __future__ import annotations

import shlex
import signal
import time
from typing import Any, Protocol

from tcpsleuth.errors import InputError
from tcpsleuth.lab.processes import READY_S, Child, python_module
from tcpsleuth.sources import sockdiag


class Broker(Protocol):
    """What a lab run asks of its broker."""

    description: str  # what the report calls it

    def restart(self, down_s: float, startup_s: float) -> None:
        """Close every connection, be down ``down_s`` and listening without accepting
        ``startup_s``; return once accepting again."""

    def stop(self) -> object:
        """Stop for good."""

    def events(self) -> list[dict[str, Any]]:
        """What happened to it (starting, listening, accepting, stopped), with times."""


class LabBrokerProcess:
    """``tcpsleuth.lab.broker`` in the broker namespace, driven on its standard input."""

    description = "tcpsleuth lab broker (Kafka protocol, kio)"

    def __init__(self, ns: str, argv: list[str]) -> None:
        self.child = Child(python_module("tcpsleuth.lab.broker", *argv), ns=ns, stdin=True)
        self.child.wait_for(lambda line: '"accepting"' in line)

    def restart(self, down_s: float, startup_s: float) -> None:
        self.child.send(f"restart {down_s} {startup_s}")
        self.child.wait_for(lambda line: '"accepting"' in line, down_s + startup_s + READY_S)

    def stop(self) -> None:
        if self.child.process.poll() is None:
            self.child.send("quit")
            self.child.process.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        return self.child.json_lines()


class CommandBroker:
    """A broker started by the user's command (a real Kafka broker, say) in the broker
    namespace. ``{host}``, ``{port}``, ``{backlog}`` and ``{rcvbuf}`` in the command are
    filled in. Restarting it is what restarting a broker is: SIGTERM, wait for it to
    exit, start it again; it is accepting once its listener is back."""

    def __init__(self, ns: str, command: str, port: int, values: dict[str, Any]) -> None:
        try:
            self.argv = shlex.split(command.format(port=port, **values))
        except (KeyError, ValueError, IndexError) as exc:
            raise InputError(f"--broker-cmd {command!r}: cannot fill it in ({exc})") from None
        self.ns, self.port = ns, port
        self.description = f"the user's broker command: {' '.join(self.argv)}"
        self.log: list[dict[str, Any]] = []
        self.child: Child | None = None
        self._start(timeout=120)

    def _listening(self) -> bool:
        table = sockdiag.snapshot(self.ns, ports=frozenset({self.port}), with_info=False)
        return any(listener.local_port == self.port for listener in table.listeners)

    def _start(self, timeout: float) -> None:
        self.child = Child(self.argv, ns=self.ns, merge_stderr=True)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.child.process.poll() is not None or time.monotonic() > deadline:
                output = "".join(self.child.all_lines)[-300:].strip()
                raise InputError(f"--broker-cmd did not listen on port {self.port}: {output}")
            time.sleep(0.05)
        self.log.append({"event": "accepting", "time": time.time()})

    def restart(self, down_s: float, startup_s: float) -> None:
        assert self.child is not None
        self.child.stop(signal.SIGTERM, timeout=60)
        self.log.append({"event": "stopped", "time": time.time()})
        time.sleep(down_s)
        self._start(timeout=120 + startup_s)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(signal.SIGTERM, timeout=60)

    def events(self) -> list[dict[str, Any]]:
        return self.log
