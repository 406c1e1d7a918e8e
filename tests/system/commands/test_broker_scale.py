"""The always-on parts on a host shaped like a broker: their cost must follow the
listeners and watched ports, not the host's open files (issue: a broker holds
100,000+ files). These tests count work, they do not time it; bench/bench_broker_host.py
measures the cost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsleuth.sources import owners, sampling

HOLDER = textwrap.dedent(
    """
    import os, socket, sys
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    # open files as a broker holds log segments
    files = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[1]))]
    if sys.argv[2] == "fork" and os.fork() == 0:
        import time
        time.sleep(120)  # outlives its parent; the test kills it
        os._exit(0)
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()
    """
)


class Holder:
    """A process listening on 127.0.0.1 with ``files`` other files open."""

    def __init__(self, files: int = 100, fork: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(files), "fork" if fork else "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def fd_listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every /proc/PID/fd directory listed, in order (the real os.listdir runs)."""
    listed: list[str] = []
    real = os.listdir

    def listing(path: object = ".") -> list[str]:
        text = os.fspath(path)  # type: ignore[arg-type]
        if str(text).endswith("/fd"):
            listed.append(str(text))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(owners.os, "listdir", listing)
    yield listed


def _processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def test_a_scrape_walks_proc_again_only_for_a_new_listener(fd_listings: list[str]) -> None:
    holder = Holder(files=2000)
    cache = owners.OwnerCache()
    try:
        first = sampling.scrape(None, cache)
        walked = len(fd_listings)
        # the first scrape looked at every process's descriptors
        assert walked >= _processes() // 2
        mine = [x for x in first.listeners if x.local_port == holder.port]
        assert [o.pid for x in mine for o in x.owners] == [holder.process.pid]
        for _ in range(3):
            again = sampling.scrape(None, cache)
        assert len(fd_listings) == walked, "a scrape listed /proc/PID/fd again"
        assert cache.walks == 1
        [same] = [x for x in again.listeners if x.local_port == holder.port]
        assert same.owners == mine[0].owners  # remembered, command line and all
        # a listener not seen before: one more walk, and it is found
        other = Holder(files=10)
        try:
            found = sampling.scrape(None, cache)
            assert cache.walks == 2
            assert len(fd_listings) > walked
            [new] = [x for x in found.listeners if x.local_port == other.port]
            assert [o.pid for o in new.owners] == [other.process.pid]
        finally:
            other.stop()
        # the closed listener is forgotten, the first one still costs nothing
        walked = len(fd_listings)
        sampling.scrape(None, cache)
        assert len(fd_listings) == walked
    finally:
        holder.stop()


def test_a_remembered_owner_that_closed_the_socket_is_looked_up_again() -> None:
    """The parent forks and exits: the child still holds the listener, so the
    remembered owner (the parent) fails its readlink check and the child is found."""
    holder = Holder(files=10, fork=True)
    cache = owners.OwnerCache()
    pids: set[int] = set()
    try:
        inode = next(
            x.inode for x in sampling.scrape(None, cache).listeners if x.local_port == holder.port
        )
        pids = {o.pid for o in cache.owners([inode])[inode]}
        assert holder.process.pid in pids and len(pids) == 2
        walks = cache.walks
        holder.process.stdin.close()  # type: ignore[union-attr]
        holder.process.wait(timeout=10)  # the parent is gone, its child holds on
        child = (pids - {holder.process.pid}).pop()
        assert [o.pid for o in cache.owners([inode])[inode]] == [child]
        assert cache.walks == walks  # the child was remembered: still no walk
    finally:
        holder.process.poll() is None and holder.stop()
        for pid in pids - {holder.process.pid}:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, 9)


def test_an_unowned_socket_is_not_looked_for_on_every_read(fd_listings: list[str]) -> None:
    cache = owners.OwnerCache(retry_seconds=3600)
    assert cache.owners([4_000_000_000]) == {}  # no such socket: nobody holds it
    walked = len(fd_listings)
    assert walked > 0
    assert cache.owners([4_000_000_000]) == {}
    assert len(fd_listings) == walked and cache.walks == 1
    assert owners.OwnerCache(retry_seconds=0).owners([4_000_000_000]) == {}
