"""The production install: the wheel without extras, in a new virtual environment
(pip from PyPI), runs the host commands; the lab names the extra it needs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, run_tcpsleuth

from tcpsleuth.model.kafka_api import API_NAMES

pytestmark = pytest.mark.lean

# what pyproject.toml requires: the host commands' dependencies, and nothing of the lab
REQUIRED = {"click", "rich", "prometheus-client", "numpy", "numba", "matplotlib", "pyyaml"}
LAB_ONLY = {"kio", "kafka-python", "confluent-kafka"}
# the lean venv measured 434 MB in site-packages with 22 distributions (README,
# "Production install"); these bounds catch a dependency that brings a world with it
MAX_INSTALLED_MB = 500
MAX_PACKAGES = 26


@dataclass(frozen=True)
class Lean:
    venv: Path
    wheel: Path

    @property
    def tcpsleuth(self) -> Path:
        return self.venv / "bin" / "tcpsleuth"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.tcpsleuth), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )


def build_wheel(out: Path) -> Path:
    """The wheel of the working tree, built from a copy so that the tree gets no build/."""
    source = out / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=600,
    )
    [wheel] = out.glob("tcpsleuth-*.whl")
    return wheel


@pytest.fixture(scope="session")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lean]:
    """Built once per test session: the wheel, and a venv with it and nothing else."""
    base = tmp_path_factory.mktemp("lean")
    wheel = build_wheel(base)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        timeout=900,
    )
    yield Lean(venv, wheel)


def _installed(lean: Lean) -> dict[str, str]:
    listed = subprocess.run(
        [str(lean.venv / "bin" / "pip"), "list", "--format", "json", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed)}


def _site_packages_bytes(lean: Lean) -> int:
    [site] = (lean.venv / "lib").glob("python3*/site-packages")
    total = 0
    for path in site.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def test_the_lean_install_has_only_the_host_commands_dependencies(lean: Lean) -> None:
    installed = _installed(lean)
    print("lean install:", " ".join(f"{k}=={v}" for k, v in sorted(installed.items())))
    assert set(installed) >= REQUIRED | {"tcpsleuth", "llvmlite", "pillow", "fonttools"}
    assert not set(installed) & LAB_ONLY
    assert len(installed) <= MAX_PACKAGES
    size = _site_packages_bytes(lean)
    print(f"lean install: {size / 1e6:.0f} MB in site-packages, {len(installed)} distributions")
    assert 100e6 < size < MAX_INSTALLED_MB * 1e6


def test_doctor_example_gives_what_the_developer_install_gives(lean: Lean) -> None:
    result = lean.run("doctor", "--example", "--format", "json")
    assert result.returncode == 1, result.stderr
    developer = run_tcpsleuth("doctor", "--example", "--format", "json", check_status=1)
    # the same but for where the example lies: the installed package, or the tree
    [site] = (lean.venv / "lib").glob("python3*/site-packages")
    lean_doc = json.loads(result.stdout.replace(str(site), str(REPO / "src")))
    assert lean_doc == json.loads(developer.stdout)
    assert "kernel-cookie-wscale-bug" in {f["kind"] for f in lean_doc["findings"]}


def test_audit_and_sockets_run_live(lean: Lean) -> None:
    result = lean.run("audit", "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["host"]["kernel_release"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(7)
        port = server.getsockname()[1]
        result = lean.run("sockets", "--port", str(port), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    listeners = json.loads(result.stdout)["listeners"]
    assert [(x["local"], x["backlog"]) for x in listeners] == [(f"127.0.0.1:{port}", 7)]


def test_exporter_serves_this_hosts_cookie_counters(lean: Lean) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        [str(lean.tcpsleuth), "exporter", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert exporter.poll() is None, exporter.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    assert "tcpsleuth_scrape_success 1.0" in text
    served = {
        line.split()[0]: int(float(line.split()[1]))
        for line in text.splitlines()
        if line.startswith("node_netstat_TcpExt_Syncookies")
    }
    proc = _netstat()
    assert served == {
        f"node_netstat_TcpExt_{name}": proc[name]
        for name in ("SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed")
    }


def _netstat() -> dict[str, int]:
    """TcpExt of this host's /proc/net/netstat, read with the simplest split."""
    lines = [x.split() for x in Path("/proc/net/netstat").read_text().splitlines()]
    [(names, values)] = [
        (a, b) for a, b in zip(lines[::2], lines[1::2], strict=True) if a[0] == "TcpExt:"
    ]
    return dict(zip(names[1:], map(int, values[1:]), strict=True))


@pytest.mark.parametrize(
    "capture", ["go-sniffer-kafka.pcap", "storm-prefix/server.pcap"]
)  # plain Python below 128 KB, numba above
def test_pcap_gives_what_the_developer_install_gives(lean: Lean, capture: str) -> None:
    path = str(REPO / "tests" / "data" / capture)
    result = lean.run("pcap", "--format", "json", path)
    assert result.returncode in (0, 1), result.stderr
    developer = run_tcpsleuth("pcap", "--format", "json", path)
    assert json.loads(result.stdout) == json.loads(developer.stdout)


def test_pcap_html_draws_with_the_lean_install(lean: Lean, tmp_path: Path) -> None:
    out = tmp_path / "capture.html"
    path = str(REPO / "tests" / "data" / "storm-prefix" / "server.pcap")
    result = lean.run("pcap", "--html", str(out), path)
    assert result.returncode == 1, result.stderr
    developer = tmp_path / "developer.html"
    run_tcpsleuth("pcap", "--html", str(developer), path, check_status=1)
    # matplotlib is required: the graphs of the flagged connections, as many as at home
    drawn = out.read_text().count("data:image/png;base64,")
    assert drawn == developer.read_text().count("data:image/png;base64,") > 0


@pytest.mark.parametrize(
    "args", [("lab", "run", "wscale-bug"), ("lab", "--help"), ("lab", "kernel", "list")]
)
def test_the_lab_names_its_extra(lean: Lean, args: tuple[str, ...]) -> None:
    result = lean.run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'tcpsleuth[lab]'" in result.stderr
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr


HOST_COMMANDS = [
    "doctor", "audit", "collect", "sockets", "compare", "trace", "pcap", "watch", "exporter",
    "record", "report", "probe", "heal",
]  # fmt: skip


def test_every_host_command_loads_without_the_lab(lean: Lean) -> None:
    """Each command's module imports (its --help) with the lean install alone."""
    for command in HOST_COMMANDS:
        result = lean.run(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "Examples:" in result.stdout, command


def test_the_kafka_api_names_are_kios() -> None:
    """The capture path's own table of request names, checked against the lab's kio."""
    kio_index = pytest.importorskip("kio.schema.index")
    assert dict(kio_index.api_key_map) == API_NAMES
