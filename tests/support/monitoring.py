"""Processes for the monitoring tests: the exporter as a user runs it, and a real
Prometheus server (Debian's package) with its own storage in a temporary directory.
Both listen on loopback on free ports and are stopped by the test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tcpsleuth.sources import netns


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_for(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            get(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Exporter:
    """``tcpsleuth exporter`` in a subprocess, serving on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tcpsleuth",
                "exporter",
                "--listen",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_for(self.url)
        except Exception:
            self.stop()
            raise

    def scrape(self) -> str:
        return get(self.url)

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


def samples(exposition: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the text format (comments skipped)."""
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package prometheus; scripts/install.sh)")
    return path


class Prometheus:
    """A Prometheus server of our own: never the packaged service."""

    def __init__(
        self, workdir: Path, targets: list[str], rule_files: list[Path], ns: str | None = None
    ) -> None:
        """``ns``: run it in that network namespace (to scrape what listens there)."""
        binary = require_tool("prometheus")
        self.ns = ns
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": [
                        {"job_name": "tcpsleuth", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                *(["ip", "netns", "exec", ns] if ns else []),
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            with netns.entered(ns):
                wait_for(self.base + "/-/ready", 30)
        except Exception:
            self.stop()
            raise

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with netns.entered(self.ns):
            answer = json.loads(get(url))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def poll(self, expr: str, seconds: float) -> list[dict[str, Any]]:
        """Wait until ``expr`` returns something; return it (empty on timeout)."""
        deadline = time.monotonic() + seconds
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
