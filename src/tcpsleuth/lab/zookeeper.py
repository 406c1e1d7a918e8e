"""A real Apache ZooKeeper server for the lab: resolved from Maven Central, run in a
namespace.

As for the real Kafka broker: the jars come from a pinned dependency list in the
repository (``deploy/zookeeper/<version>/pom.xml``), resolved by Maven into
``~/.cache/tcpsleuth/zookeeper/<version>/lib`` once, and checked against the SHA-256
lock file beside the pom (``jars.sha256``) before each start (lab/jars.py).

A server here is standalone (``org.apache.zookeeper.server.ZooKeeperServerMain
zoo.cfg``) with its data in a work directory. Its client port listens with
``clientPortListenBacklog`` when given, else with the JDK's default of 50 (the
Administrator's Guide), and ZooKeeper sets no receive buffer on it. ``maxClientCnxns=0``
lets a storm from one address through (the default, 60 per address, would refuse it).

  python3 -m tcpsleuth.lab.zookeeper resolve        # fetch and check the jars
  python3 -m tcpsleuth.lab.zookeeper lock           # rewrite jars.sha256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab import jars
from tcpsleuth.lab.processes import Child, ServerChild
from tcpsleuth.sources import sockdiag

VERSION = "3.9.5"
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "zookeeper"
CACHE = jars.CACHE_ROOT / "zookeeper"
MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"


def resolve(version: str = VERSION, cache: Path = CACHE) -> Path:
    """The directory of ZooKeeper's jars, resolved by Maven on first use and checked
    against the lock file every time."""
    pom, lock = DEPLOY / version / "pom.xml", DEPLOY / version / jars.LOCK_NAME
    if not pom.is_file() or not lock.is_file():
        raise EnvironmentProblem(
            f"no pinned dependency list for ZooKeeper {version} at {pom.parent}"
        )
    return jars.locked(f"ZooKeeper {version}", pom, lock, cache / version / "lib")


def write_lock(version: str = VERSION) -> Path:
    return jars.write_lock(
        f"ZooKeeper {version}",
        DEPLOY / version / "pom.xml",
        DEPLOY / version / jars.LOCK_NAME,
        "python3 -m tcpsleuth.lab.zookeeper lock",
    )


class ZooKeeperServer(ServerChild):
    """A standalone ZooKeeper in namespace ``ns``; ``start`` returns once its client port
    listens."""

    def __init__(
        self,
        ns: str,
        host: str = "127.0.0.1",
        port: int = 2181,
        backlog: int | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.ns, self.host, self.port, self.backlog = ns, host, port, backlog
        self.lib = resolve()
        self.java = jars.java()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tcpsleuth-zookeeper-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "zoo.cfg"
        lines = [
            "tickTime=2000",
            f"dataDir={self.workdir / 'data'}",
            f"clientPortAddress={host}",
            f"clientPort={port}",
            "maxClientCnxns=0",
            "admin.enableServer=false",
        ]
        if backlog is not None:
            lines.append(f"clientPortListenBacklog={backlog}")
        self.config.write_text("# tcpsleuth lab: ZooKeeper, standalone\n" + "\n".join(lines) + "\n")
        self.child: Child | None = None

    @property
    def argv(self) -> list[str]:
        return [self.java, "-Xmx256m", "-cp", jars.classpath(self.lib), MAIN, str(self.config)]

    def _listening(self) -> bool:
        return any(x.local_port == self.port for x in sockdiag.listeners(self.ns))

    def start(self, timeout: float = 120) -> float:
        started = time.monotonic()
        self.child = Child(self.argv, ns=self.ns, merge_stderr=True)
        while not self._listening():
            if self.child.process.poll() is not None:
                said = "".join(self.child.all_lines).strip()[-1000:] or "no output"
                raise EnvironmentProblem(f"ZooKeeper exited before it listened: {said}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise EnvironmentProblem(f"ZooKeeper did not listen within {timeout:.0f} s")
            time.sleep(0.1)
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description="Apache ZooKeeper for tcpsleuth's lab.")
    parser.add_argument("command", choices=["resolve", "lock"])
    args = parser.parse_args()
    if args.command == "resolve":
        lib = resolve()
        print(f"ZooKeeper {VERSION}: {len(list(lib.glob('*.jar')))} jars checked in {lib}")
    else:
        print(f"wrote {write_lock()}")


if __name__ == "__main__":
    main()
