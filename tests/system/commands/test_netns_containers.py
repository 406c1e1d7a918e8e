"""`--netns pid:N` and `--netns container:NAME`: a real podman container running a
listener that locks its receive buffer, found through the container's namespace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, SUPPORT, run_tcpsleuth

from tcpsleuth.errors import InputError
from tcpsleuth.sources import netns

CONTAINERS_CONF = REPO / "deploy" / "container" / "containers.conf"
PORT = 9092
RCVBUF = 98304  # the kernel doubles it: rb196608 in `ss -ltm`, not tcp_rmem[1]
BACKLOG = 100


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=120
    )


def _in_netns(pid: int, *command: str) -> str:
    """What a command prints inside process ``pid``'s network namespace, through
    nsenter: the trusted side."""
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


class Container:
    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A podman container of its own network (no network: loopback only) whose one
    process is rcvbuf_listener, run from a root directory holding only that program."""
    for tool in ("podman", "runc", "gcc"):
        assert shutil.which(tool), f"{tool} is missing: scripts/install.sh installs it"
    previous_conf = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)  # tcpsleuth's podman reads it too
    root = tmp_path_factory.mktemp("rootfs")
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(root / "listener"), str(SUPPORT / "rcvbuf_listener.c")],
        check=True,
    )
    name = f"tcpsleuth-test-{os.getpid()}"
    _podman("rm", "--force", "--time", "0", name, check=False)
    _podman(
        "run", "--detach", "--name", name, "--network", "none", "--rootfs", str(root),
        "/listener", str(PORT), str(RCVBUF), str(BACKLOG),
    )  # fmt: skip
    try:
        pid = int(_podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
        deadline = time.monotonic() + 30
        while not _in_netns(pid, "ss", "-Hltn", f"sport = :{PORT}").strip():
            assert time.monotonic() < deadline, _podman("logs", name, check=False).stderr
            time.sleep(0.1)
        yield Container(name, pid)
    finally:
        _podman("rm", "--force", "--time", "0", name, check=False)
        if previous_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = previous_conf


def _audit(netns_name: str) -> dict:
    result = run_tcpsleuth("audit", "--netns", netns_name, "--format", "json")
    assert result.returncode in (0, 1), result.stderr  # info only on a kernel with the fix
    return json.loads(result.stdout)


def _locked(doc: dict) -> dict[str, dict]:
    return {
        f["subject"]["listener"]: f
        for f in doc["findings"]
        if f["kind"] == "listener-rcvbuf-locked"
    }


def test_audit_of_a_container_flags_its_locked_listener(container: Container) -> None:
    host_inode = os.stat("/proc/self/ns/net").st_ino
    container_inode = os.stat(f"/proc/{container.pid}/ns/net").st_ino
    assert container_inode != host_inode
    skmem = _in_netns(container.pid, "ss", "-Hltm", f"sport = :{PORT}")
    rcvbuf = int(skmem.split("skmem:(")[1].split(",")[1].removeprefix("rb"))
    assert rcvbuf == 2 * RCVBUF
    for name in (f"container:{container.name}", f"pid:{container.pid}"):
        doc = _audit(name)
        locked = _locked(doc)
        assert set(locked) == {f"0.0.0.0:{PORT}"}, name
        evidence = locked[f"0.0.0.0:{PORT}"]["evidence"]
        assert (evidence["rcvbuf"], evidence["so_rcvbuf"]) == (rcvbuf, RCVBUF)
        assert evidence["processes"] == [{"comm": "listener", "pid": container.pid}]
        [listener] = doc["listeners"]  # the container's one, nothing of the host's
        assert listener["listener"] == f"0.0.0.0:{PORT}"
        assert listener["backlog"] == BACKLOG
        assert listener["processes"] == [{"comm": "listener", "pid": container.pid}]


def test_children_run_in_the_containers_namespace(container: Container, tmp_path: Path) -> None:
    """collect runs `ss` as a child: through nsenter, it lists the container's listener."""
    out = tmp_path / "bundle"
    result = run_tcpsleuth("collect", str(out), "--netns", f"container:{container.name}")
    assert result.returncode == 0, result.stderr
    listening = (out / "ss-ltn.txt").read_text().splitlines()[1:]
    assert [line.split()[3] for line in listening] == [f"0.0.0.0:{PORT}"]
    assert [line.split()[2] for line in listening] == [str(BACKLOG)]
    assert netns.exec_prefix(f"pid:{container.pid}") == [
        "nsenter",
        f"--net=/proc/{container.pid}/ns/net",
    ]


def test_sockets_and_compare_take_the_same_names(container: Container) -> None:
    result = run_tcpsleuth("sockets", f"netns:container:{container.name}", "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert [(x["local"], x["backlog"]) for x in doc["listeners"]] == [(f"0.0.0.0:{PORT}", BACKLOG)]
    assert doc["origin"] == f"live network namespace container:{container.name}"
    result = run_tcpsleuth(
        "compare", f"netns:pid:{container.pid}", "live", "--port", str(PORT), "--format", "json"
    )
    assert result.returncode in (0, 1), result.stderr
    assert f"live network namespace pid:{container.pid}" in result.stdout


def test_the_recorders_tcpdump_captures_in_the_containers_namespace(
    container: Container, tmp_path: Path
) -> None:
    """The recorder's child, tcpdump, enters the container's namespace by nsenter: the
    handshakes made there to the container's listener are in its ring."""
    directory, metrics = tmp_path / "rec", tmp_path / "recorder.prom"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "record", "--port", str(PORT), "--dir",
         str(directory), "--netns", f"container:{container.name}", "--trace", "0",
         "--metrics-file", str(metrics)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "tcpsleuth_recorder_capture_up{" not in (
            metrics.read_text() if metrics.exists() else ""
        ):
            assert recorder.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        knock = (
            "import socket\n"
            f"for _ in range(5): socket.create_connection(('127.0.0.1', {PORT}), timeout=5)\n"
        )
        subprocess.run(
            ["nsenter", f"--net=/proc/{container.pid}/ns/net", sys.executable, "-c", knock],
            check=True,
        )
        time.sleep(2)
        up = metrics.read_text()
    finally:
        recorder.terminate()
        recorder.wait(timeout=60)
    assert re.search(r"^tcpsleuth_recorder_capture_up\{[^}]*\} 1\.0$", up, re.M), up
    syns = 0
    for ring_file in sorted((directory / "ring").glob("*")):
        read = subprocess.run(
            ["tcpdump", "-r", str(ring_file), "-nn",
             f"tcp[tcpflags] == tcp-syn and dst port {PORT}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        syns += len(read.stdout.splitlines())
    assert syns == 5


def test_an_ip_netns_name_wins_over_pid(container: Container) -> None:
    """`pid:N` is also a legal `ip netns` name: an existing /run/netns/pid:N is meant."""
    name = f"pid:{container.pid}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        doc = json.loads(run_tcpsleuth("sockets", "--netns", name, "--format", "json").stdout)
        assert doc["listeners"] == []  # the empty namespace made just now
        assert netns.exec_prefix(name) == ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
    doc = json.loads(run_tcpsleuth("sockets", "--netns", name, "--format", "json").stdout)
    assert [x["local"] for x in doc["listeners"]] == [f"0.0.0.0:{PORT}"]


def test_stopped_and_unknown_containers_are_one_line_exit_2(
    container: Container, tmp_path: Path
) -> None:
    stopped = f"{container.name}-stopped"
    _podman("create", "--name", stopped, "--network", "none", "--rootfs", str(tmp_path), "/x")
    try:
        result = run_tcpsleuth("audit", "--netns", f"container:{stopped}")
    finally:
        _podman("rm", "--force", stopped, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not running (podman)" in result.stderr
    result = run_tcpsleuth("audit", "--netns", f"container:{container.name}-nowhere")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no running container named" in result.stderr


def _path_without_runtimes(farm: Path) -> str:
    """$PATH with podman, docker and crictl gone: each directory holding one of them is
    replaced by a directory of links to everything else in it."""
    runtimes = ("podman", "docker", "crictl")
    directories = []
    for index, directory in enumerate(os.environ["PATH"].split(os.pathsep)):
        if not any(os.path.lexists(os.path.join(directory, tool)) for tool in runtimes):
            directories.append(directory)
            continue
        links = farm / str(index)
        links.mkdir(parents=True)
        for entry in os.listdir(directory):
            if entry not in runtimes:
                (links / entry).symlink_to(os.path.join(directory, entry))
        directories.append(str(links))
    path = os.pathsep.join(directories)
    assert not any(shutil.which(tool, path=path) for tool in runtimes)
    return path


def test_container_names_resolve_through_the_api_socket_alone(
    container: Container, tmp_path: Path
) -> None:
    """As in the image with the runtime's socket mounted and no runtime command: podman's
    API service on a socket of its own, no podman, docker or crictl on PATH."""
    socket_path = f"/tmp/tcpsleuth-test-{os.getpid()}.sock"
    log = (tmp_path / "service.log").open("w")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    stopped = f"{container.name}-stopped-api"
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path):
            assert service.poll() is None and time.monotonic() < deadline, (
                tmp_path / "service.log"
            ).read_text()
            time.sleep(0.1)
        _podman("create", "--name", stopped, "--network", "none", "--rootfs", str(tmp_path), "/x")
        env = {
            **os.environ,
            "PATH": _path_without_runtimes(tmp_path / "bin"),
            "CONTAINER_HOST": f"unix://{socket_path}",
        }
        env.pop("DOCKER_HOST", None)

        def tcpsleuth(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tcpsleuth", *args],
                capture_output=True, text=True, check=False, timeout=120, env=env,
            )  # fmt: skip

        name = f"container:{container.name}"
        resolve = (
            "from tcpsleuth.sources import netns\n"
            f"print(netns.path({name!r}), netns.inode({name!r}))\n"
        )
        answer = subprocess.run(
            [sys.executable, "-c", resolve],
            capture_output=True, text=True, check=False, timeout=60, env=env,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        inspected = int(_podman("inspect", "--format", "{{.State.Pid}}", container.name).stdout)
        assert answer.stdout.split() == [
            f"/proc/{inspected}/ns/net",
            str(os.stat(f"/proc/{inspected}/ns/net").st_ino),
        ]
        result = tcpsleuth("sockets", "--netns", name, "--format", "json")
        assert result.returncode in (0, 1), result.stderr
        doc = json.loads(result.stdout)
        assert [x["local"] for x in doc["listeners"]] == [f"0.0.0.0:{PORT}"]
        result = tcpsleuth("audit", "--netns", f"{name}-nowhere")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert (
            f"no running container named '{container.name}-nowhere' (asked {socket_path})"
            in result.stderr
        )
        result = tcpsleuth("audit", "--netns", f"container:{stopped}")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert f"is not running ({socket_path})" in result.stderr
    finally:
        _podman("rm", "--force", stopped, check=False)
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=30)
        log.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("pid:", "needs a process id"),
        ("pid:0", "needs a process id"),
        ("pid:-1", "needs a process id"),
        ("pid:12x", "needs a process id"),
        ("pid:99999999", "no process 99999999"),
        ("container:", "a container name is"),
        ("container:-rm", "a container name is"),
        ("container:a b", "a container name is"),
        ("container:../x", "is not a network namespace name"),
        ("", "is empty"),
        ("nonesuch-namespace", "no network namespace named"),
    ],
)
def test_bad_names(name: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=words):
        netns.path(name)
    result = run_tcpsleuth("sockets", "--netns", name)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    out = tmp_path / "bundle"
    result = run_tcpsleuth("collect", str(out), "--netns", name)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert not out.exists()  # nothing written for a name that names nothing
