"""The container image (scripts/build-image.sh) under podman, run as the docs say:
`podman run --rm --net=host --pid=host --privileged -v /run/netns:/run/netns:rslave
IMAGE ...`. The image tests are `heavy`: building the image takes minutes (README).
The unit files are checked in every run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, SUPPORT, nstat_in, run_tcpsleuth
from support.capabilities import HAS_PODMAN, needs_systemd_analyze
from test_helm import built_helm, render
from test_lean_install import build_wheel

from tcpsleuth.lab import namespaces

CONTAINERS_CONF = REPO / "deploy" / "container" / "containers.conf"
IMAGE = "localhost/tcpsleuth"
RUN = [
    "run", "--rm", "--net=host", "--pid=host", "--privileged",
    "-v", "/run/netns:/run/netns:rslave",
]  # fmt: skip
MAX_IMAGE_MB = 700
UNITS = ["tcpsleuth-exporter-container.service", "tcpsleuth-recorder-container.service"]


@needs_systemd_analyze
@pytest.mark.skipif(not HAS_PODMAN, reason="podman is not installed")
@pytest.mark.parametrize("unit", UNITS)
def test_the_container_units_are_valid(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or "systemd-analyze"
    text = (REPO / "deploy" / "systemd" / unit).read_text()
    # the options the documentation gives, and the image's own command
    assert "--net=host --pid=host --privileged" in text
    assert "-v /run/netns:/run/netns:rslave" in text
    assert "SuccessExitStatus=143" in text
    (tmp_path / unit).write_text(text.replace("/usr/bin/podman", shutil.which("podman") or ""))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True
    )
    assert result.returncode == 0 and unit not in result.stderr, result.stderr


def test_both_builds_run_the_same_install_script() -> None:
    script = "deploy/container/install-in-root.sh"
    assert script in (REPO / "scripts" / "build-image.sh").read_text()
    containerfile = (REPO / "deploy" / "container" / "Containerfile").read_text()
    assert f"COPY {script} /tmp/install-in-root.sh" in containerfile
    assert "FROM docker.io/library/debian:bookworm-slim" in containerfile


def _podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def _source_revision() -> str:
    """The last commit that changed what goes into the image."""
    return subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", "src", "pyproject.toml", "deploy/container",
         "scripts/build-image.sh"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """localhost/tcpsleuth:latest (and -bpftrace), built by the project's script unless the
    store has one built from the current sources."""
    for tool in ("podman", "runc", "mmdebstrap"):
        assert shutil.which(tool), f"{tool} is missing: scripts/install.sh installs it"
    previous_conf = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    try:
        found = _podman(
            "image", "inspect", "--format", '{{index .Labels "tcpsleuth.source-revision"}}',
            f"{IMAGE}:latest", f"{IMAGE}:latest-bpftrace", check=False,
        )  # fmt: skip
        if found.returncode != 0 or set(found.stdout.split()) != {_source_revision()}:
            subprocess.run(
                ["bash", str(REPO / "scripts" / "build-image.sh")], check=True, timeout=3600
            )
        yield f"{IMAGE}:latest"
    finally:
        if previous_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = previous_conf


def _size_mb(tag: str) -> float:
    return int(_podman("image", "inspect", "--format", "{{.Size}}", tag).stdout) / 1e6


@pytest.mark.heavy
def test_image_size_tools_and_labels(image: str) -> None:
    lean, full = _size_mb(image), _size_mb(f"{image}-bpftrace")
    print(f"image sizes: {image} {lean:.0f} MB, {image}-bpftrace {full:.0f} MB")
    assert lean < MAX_IMAGE_MB < full
    where = "for t in ip ss tcpdump nft iptables nsenter bpftrace; do command -v $t || true; done"
    found = _podman("run", "--rm", "--entrypoint", "sh", image, "-c", where).stdout.split()
    assert [Path(p).name for p in found] == ["ip", "ss", "tcpdump", "nft", "iptables", "nsenter"]
    found = _podman("run", "--rm", "--entrypoint", "sh", f"{image}-bpftrace", "-c", where).stdout
    assert [Path(p).name for p in found.split()][-1] == "bpftrace"
    version = _podman("run", "--rm", image, "--version").stdout
    assert version.strip() == "tcpsleuth, version 0.1.0"
    config = json.loads(_podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["tcpsleuth"] and config["Cmd"] == ["doctor"]
    assert config["Labels"]["org.opencontainers.image.title"] == "tcpsleuth"
    # the lab is not in the image, and says so
    result = _podman("run", "--rm", image, "lab", "run", "wscale-bug", check=False)
    assert result.returncode == 2 and "pip install 'tcpsleuth[lab]'" in result.stderr


def _kinds_and_subjects(doc: dict) -> set[tuple[str, str]]:
    return {(f["kind"], json.dumps(f["subject"], sort_keys=True)) for f in doc["findings"]}


@pytest.mark.heavy
def test_doctor_in_the_container_finds_what_the_host_finds(image: str) -> None:
    contained = _podman(*RUN, image, "doctor", "--format", "json", check=False)
    assert contained.returncode in (0, 1), contained.stderr
    host = run_tcpsleuth("doctor", "--format", "json")
    assert host.returncode == contained.returncode, host.stderr
    inside, outside = json.loads(contained.stdout), json.loads(host.stdout)
    assert _kinds_and_subjects(inside) == _kinds_and_subjects(outside)
    assert inside["findings"], "doctor on this host finds something (its kernel, sysctls)"


@pytest.mark.heavy
def test_the_exporter_in_the_container_serves_the_hosts_cookie_counters(image: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = f"tcpsleuth-test-exporter-{os.getpid()}"
    _podman(*RUN[:2], "--detach", "--name", name, *RUN[2:], "--read-only", "--tmpfs", "/tmp",
            image, "exporter", "--listen", f"127.0.0.1:{port}")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, _podman("logs", name, check=False).stderr
                time.sleep(0.2)
        before = nstat_host()
    finally:
        _podman("rm", "--force", "--time", "10", name, check=False)
    assert "tcpsleuth_scrape_success 1.0" in text
    served = {
        line.split()[0].removeprefix("node_netstat_TcpExt_"): int(float(line.split()[1]))
        for line in text.splitlines()
        if line.startswith("node_netstat_TcpExt_Syncookies")
    }
    assert served == {
        k: before[k] for k in ("SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed")
    }


def nstat_host() -> dict[str, int]:
    lines = [x.split() for x in Path("/proc/net/netstat").read_text().splitlines()]
    [(names, values)] = [
        (a, b) for a, b in zip(lines[::2], lines[1::2], strict=True) if a[0] == "TcpExt:"
    ]
    return dict(zip(names[1:], map(int, values[1:]), strict=True))


@pytest.mark.heavy
def test_audit_in_the_container_takes_pid_n(image: str, tmp_path: Path) -> None:
    """The rcvbuf listener in a container of its own; the image's audit reaches it by the
    host pid (--pid=host), and flags it."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(root / "listener"), str(SUPPORT / "rcvbuf_listener.c")],
        check=True,
    )
    name = f"tcpsleuth-test-listener-{os.getpid()}"
    _podman("run", "--detach", "--name", name, "--network", "none", "--rootfs", str(root),
            "/listener", "9092", "98304", "100")  # fmt: skip
    try:
        pid = _podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        for _ in range(100):
            if _listening(int(pid)):
                break
            time.sleep(0.1)
        result = _podman(
            *RUN, image, "audit", "--netns", f"pid:{pid}", "--format", "json", check=False
        )
    finally:
        _podman("rm", "--force", "--time", "0", name, check=False)
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    [locked] = [f for f in doc["findings"] if f["kind"] == "listener-rcvbuf-locked"]
    assert locked["subject"] == {"listener": "0.0.0.0:9092"}
    assert locked["evidence"]["so_rcvbuf"] == 98304
    assert [x["processes"] for x in doc["listeners"]] == [[{"comm": "listener", "pid": int(pid)}]]


def _listening(pid: int) -> bool:
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-Hltn", "sport = :9092"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return bool(out.strip())


def _storm(ns: str, clients: int = 3000, hold: float = 8) -> int:
    """conn_farm's reconnect storm on a backlog-50 listener in namespace ``ns``."""
    farm = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(SUPPORT / "conn_farm.py"),
         "--port", "9092", "--backlog", "50", "--clients", str(clients), "--storm"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert farm.stdout is not None and farm.stdin is not None
    ready = farm.stdout.readline()
    assert ready.startswith("ready"), ready
    time.sleep(hold)
    farm.stdin.close()
    farm.wait(timeout=30)
    return int(ready.split()[1])


@pytest.mark.heavy
def test_the_recorder_in_the_container_catches_a_storm_in_a_later_namespace(
    image: str, tmp_path: Path
) -> None:
    """The container starts first; the namespace is made on the host afterwards and
    reaches the container through the rslave mount of /run/netns."""
    name = f"tcpsleuth-test-recorder-{os.getpid()}"
    directory = tmp_path / "rec"
    directory.mkdir(mode=0o700)
    _podman(*RUN[:2], "--detach", "--name", name, *RUN[2:], "-v", f"{directory}:/rec",
            "--entrypoint", "sleep", image, "infinity")  # fmt: skip
    lines: list[dict] = []
    try:
        with namespaces.namespace("image") as ns:
            recorder = subprocess.Popen(
                ["podman", "exec", name, "tcpsleuth", "record", "--port", "9092", "--dir", "/rec",
                 "--netns", ns, "--before", "5", "--after", "5", "--merge", "5", "--later", "2",
                 "--trace", "0", "--format", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            reader = threading.Thread(
                target=lambda: lines.extend(
                    json.loads(x) for x in recorder.stdout or () if x.strip()
                ),
                daemon=True,
            )
            reader.start()
            _wait(lines, "ready", recorder)
            time.sleep(2)
            connected = _storm(ns)
            sent = nstat_in(ns)["TcpExtSyncookiesSent"]
            report = _wait(lines, "report", recorder, timeout=180)
            _podman("exec", name, "pkill", "-TERM", "-f", "tcpsleuth record", check=False)
            recorder.wait(timeout=90)
    finally:
        _podman("rm", "--force", "--time", "0", name, check=False)
    [incident] = sorted(directory.glob("incident-*"))
    assert report["incident"] == incident.name
    doc = json.loads((incident / "report.json").read_text())
    assert connected == 3000 and sent > 50
    assert doc["syn_cookies"]["sent"] == sent
    assert doc["capture"]["handshakes"] >= connected
    assert "syn-cookies-rate" in {e["kind"] for e in doc["events"]}


def _wait(lines: list[dict], kind: str, process: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.get("type") == kind:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {kind!r} line: {lines[-5:]}")


def _loopback_traffic(seconds: float) -> tuple[int, threading.Thread]:
    """A connection on the host's loopback sending for ``seconds``: tcp_probe fires on
    every segment it receives."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def run() -> None:
        with server, socket.create_connection(("127.0.0.1", port)) as client:
            peer, _ = server.accept()
            with peer:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    client.sendall(b"x" * 65536)
                    peer.recv(1 << 20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


@pytest.mark.heavy
def test_trace_runs_in_the_bpftrace_image(image: str) -> None:
    port, traffic = _loopback_traffic(30)
    result = _podman(*RUN, f"{image}-bpftrace", "trace", "--port", str(port), "--duration", "3",
                     "--format", "json", check=False, timeout=120)  # fmt: skip
    traffic.join()
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["samples"] > 0
    # the loopback connection, seen from both ends, in the host's namespace
    ends = {c["local"] for c in doc["connections"]} | {c["remote"] for c in doc["connections"]}
    assert f"127.0.0.1:{port}" in ends
    assert {c["netns"] for c in doc["connections"]} == {os.stat("/proc/self/ns/net").st_ino}


def _podman_args_of(container: dict, pod: dict) -> list[str]:
    """podman run's options for one container of the DaemonSet's pod, field by field."""
    args = ["run", "--detach"]
    args += ["--net=host"] if pod["hostNetwork"] else []
    args += ["--pid=host"] if pod["hostPID"] else []
    security = container["securityContext"]
    args += ["--privileged"] if security.get("privileged") else []
    args += ["--read-only"] if security.get("readOnlyRootFilesystem") else []
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", mount["mountPath"]]
            continue
        host = volume["hostPath"]["path"]
        if volume["hostPath"].get("type") == "DirectoryOrCreate":
            Path(host).mkdir(parents=True, exist_ok=True)
        options = ["ro"] if mount.get("readOnly") else []
        options += ["rslave"] if mount.get("mountPropagation") == "HostToContainer" else []
        args += [
            "-v",
            f"{host}:{mount['mountPath']}" + (":" + ",".join(options) if options else ""),
        ]
    for variable in container.get("env", []):
        args += ["--env", f"{variable['name']}={variable['value']}"]
    return [*args, container["image"], *container["args"]]


def _scrape(port: int, name: str) -> str:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()
        except OSError:
            assert time.monotonic() < deadline, _podman("logs", name, check=False).stderr
            time.sleep(0.5)


@pytest.mark.heavy
def test_the_daemonsets_containers_run_under_podman(image: str, tmp_path: Path) -> None:
    """Exactly the DaemonSet's command, mounts and privileges, recorder enabled, each
    container run by podman: both serve their metrics."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    directory = tmp_path / "recordings"
    [daemonset] = [
        d for d in render(built_helm(), [
            "--set", "recorder.enabled=true", "--set", f"exporter.port={ports[0]}",
            "--set", f"recorder.metricsPort={ports[1]}", "--set", f"recorder.dir={directory}",
        ]) if d["kind"] == "DaemonSet"
    ]  # fmt: skip
    pod = daemonset["spec"]["template"]["spec"]
    names = []
    try:
        for container in pod["containers"]:
            assert container["image"] == image
            names.append(f"tcpsleuth-test-ds-{container['name']}-{os.getpid()}")
            run = _podman_args_of(container, pod)
            _podman(*run[:2], "--name", names[-1], *run[2:])
        exporter, recorder = _scrape(ports[0], names[0]), _scrape(ports[1], names[1])
        time.sleep(3)  # the recorder reports its capture after its first samples
        recorder = _scrape(ports[1], names[1])
    finally:
        for name in names:
            _podman("rm", "--force", "--time", "30", name, check=False)
    assert "tcpsleuth_scrape_success 1.0" in exporter
    assert "node_netstat_TcpExt_SyncookiesSent" in exporter
    assert re.search(r"^tcpsleuth_recorder_capture_up\{[^}]*\} 1\.0$", recorder, re.M), recorder
    assert (directory / "ring").is_dir()


def _venv_distributions(image: str) -> list[str]:
    listing = (
        "import importlib.metadata as m; "
        "print(sorted(f\"{d.metadata['Name'].lower()}=={d.version}\" for d in m.distributions()))"
    )
    return json.loads(
        _podman(
            "run", "--rm", "--entrypoint", "/opt/tcpsleuth/bin/python", image, "-c", listing
        ).stdout.replace("'", '"')
    )


@pytest.mark.heavy
def test_the_containerfile_builds_what_the_script_builds(image: str, tmp_path: Path) -> None:
    """No registry here: the Containerfile's FROM is replaced (podman build --from) by a
    bookworm root of mmdebstrap's; the same install script then gives the same venv, the
    same tools and the same labels' command."""
    base = f"localhost/tcpsleuth-test-bookworm:{os.getpid()}"
    built = f"localhost/tcpsleuth-test-containerfile:{os.getpid()}"
    context = tmp_path / "context"
    (context / "deploy" / "container").mkdir(parents=True)
    shutil.copy(REPO / "deploy/container/install-in-root.sh", context / "deploy/container")
    shutil.copy(REPO / "deploy/container/Containerfile", context / "deploy/container")
    build_wheel(context / "dist")
    root = tmp_path / "bookworm.tar"
    subprocess.run(
        ["nice", "-n", "10", "mmdebstrap", "--quiet", "--variant=apt", "bookworm", str(root),
         "/etc/apt/sources.list.d/debian.sources"],
        check=True, timeout=1200, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    try:
        _podman("import", str(root), base, timeout=600)
        _podman(
            "build", "--from", base, "--network", "host", "-f",
            str(context / "deploy/container/Containerfile"), "-t", built,
            "--build-arg", "PIP_CERT=/run/build-ca.crt", "-v", f"{ca}:/run/build-ca.crt:ro",
            str(context), timeout=1800,
        )  # fmt: skip
        assert _venv_distributions(built) == _venv_distributions(image)
        version = _podman("run", "--rm", built, "--version").stdout.strip()
        assert version == "tcpsleuth, version 0.1.0"
        where = "for t in ip ss tcpdump nft iptables nsenter mount; do command -v $t; done"
        tools = _podman("run", "--rm", "--entrypoint", "sh", built, "-c", where).stdout.split()
        assert [Path(p).name for p in tools] == [
            "ip", "ss", "tcpdump", "nft", "iptables", "nsenter", "mount"
        ]  # fmt: skip
        config = json.loads(_podman("image", "inspect", built).stdout)[0]["Config"]
        assert config["Entrypoint"] == ["tcpsleuth"] and config["Cmd"] == ["doctor"]
    finally:
        _podman("rmi", "--force", built, base, check=False)
