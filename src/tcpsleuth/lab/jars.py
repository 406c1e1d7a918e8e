"""Java programs the lab runs (Kafka, ZooKeeper): their jars, pinned and checked.

Each program's jars are named by a Maven pom kept in the repository
(``deploy/<program>/<version>/pom.xml``) with a lock file beside it (``jars.sha256``,
the SHA-256 of every jar). Maven resolves the pom into the cache once, checking Maven
Central's own checksums as it downloads (``--strict-checksums``); the jars are then
checked against the lock file, and a directory that does not match is resolved afresh
beside it and swapped in only once it matches. Nothing is fetched by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem

LOCK_NAME = "jars.sha256"
# Java agents resolved beside a program's jars (the Prometheus JMX exporter): given to
# a JVM with -javaagent, never put on a class path.
AGENT_PREFIX = "jmx_prometheus_javaagent-"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tcpsleuth"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lock(lock: Path) -> dict[str, str]:
    """A lock file's digests by jar name (``sha256sum`` output; ``#`` lines are notes)."""
    wanted = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            wanted[name.lstrip("*")] = digest
    return wanted


def verify(lib: Path, lock: Path) -> list[str]:
    """What is wrong with the jars in ``lib`` against ``lock``: nothing when empty."""
    wanted = read_lock(lock)
    have = {path.name: path for path in lib.glob("*.jar")}
    problems = [f"missing {name}" for name in sorted(wanted.keys() - have.keys())]
    problems += [f"not in the lock file: {name}" for name in sorted(have.keys() - wanted.keys())]
    problems += [
        f"{name}: sha256 {sha256(have[name])}, the lock file says {digest}"
        for name, digest in sorted(wanted.items())
        if name in have and sha256(have[name]) != digest
    ]
    return problems


def maven(pom: Path, out: Path) -> None:
    """Copy the runtime dependencies ``pom`` names into ``out`` with Maven."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EnvironmentProblem(
            "the lab's Java programs are resolved with Maven, and there is no `mvn` "
            "(apt-get install maven, or run scripts/install.sh)"
        )
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "--strict-checksums",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip()[-1500:]
        raise EnvironmentProblem(f"Maven could not resolve {pom}: {said}")


def locked(what: str, pom: Path, lock: Path, lib: Path) -> Path:
    """``lib`` holding the jars ``pom`` pins, checked against ``lock``: kept when they
    match, else resolved afresh by Maven beside it and swapped in once they match (a
    failed resolve leaves the old directory as it was)."""
    if lib.is_dir() and not verify(lib, lock):
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
    try:
        maven(pom, fresh)
        problems = verify(fresh, lock)
        if problems:
            raise EnvironmentProblem(
                f"{what}'s jars do not match {lock}: " + "; ".join(problems[:5])
            )
        if lib.exists():
            shutil.rmtree(lib)
        fresh.rename(lib)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return lib


def write_lock(what: str, pom: Path, lock: Path, rewrite: str) -> Path:
    """Resolve ``pom`` afresh and write the SHA-256 of each jar to ``lock`` (for a
    maintainer adding or changing a version; review the diff). ``rewrite`` is the
    command that does this again, noted in the file's header."""
    out = Path(tempfile.mkdtemp(prefix="lock-"))
    try:
        maven(pom, out)
        lines = [f"{sha256(path)}  {path.name}" for path in sorted(out.glob("*.jar"))]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    header = (
        f"# SHA-256 of every jar Maven resolves from pom.xml ({what}), checked at\n"
        f"# first use; rewrite with {rewrite}\n"
    )
    lock.write_text(header + "\n".join(lines) + "\n")
    return lock


def classpath(lib: Path, *extra: Path) -> str:
    """The jars in ``lib`` but Java agents, and ``extra``, as a class path."""
    jars = sorted(p for p in lib.glob("*.jar") if not p.name.startswith(AGENT_PREFIX))
    return ":".join([*(str(p) for p in jars), *(str(p) for p in extra)])


def _tool(name: str, purpose: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise EnvironmentProblem(
            f"{purpose} needs a JDK and there is no `{name}` "
            "(apt-get install default-jdk-headless, or run scripts/install.sh)"
        )
    return found


def java() -> str:
    return _tool("java", "the lab's real brokers and Java clients")


def javac() -> str:
    return _tool("javac", "the lab's Java producer (compiled on first use)")
