"""`tcpsleuth doctor`, the main job, and the command line's contract."""

from __future__ import annotations

import json
import math

from conftest import run_tcpsleuth

from tcpsleuth.cli import examples

EXAMPLE = examples.path(examples.DEFAULT)


def test_doctor_on_the_built_in_example() -> None:
    result = run_tcpsleuth("doctor", "--example", "--format", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    findings = doc["findings"]
    ranks = {"critical": 2, "warning": 1, "info": 0}
    assert [ranks[f["severity"]] for f in findings] == sorted(
        (ranks[f["severity"]] for f in findings), reverse=True
    )
    bug = next(f for f in findings if f["kind"] == "kernel-cookie-wscale-bug")
    assert bug["severity"] == "critical"
    sysctl = dict(
        line.split(" = ", 1)
        for line in (EXAMPLE / "sysctl-a.txt").read_text().splitlines()
        if " = " in line
    )
    used = math.ceil(math.log2(int(sysctl["net.ipv4.tcp_rmem"].split()[2]) / 65535))
    assert (bug["evidence"]["announced_wscale"], bug["evidence"]["actual_wscale"]) == (1, used)
    established = sum(
        1 for line in (EXAMPLE / "ss-tni.txt").read_text().splitlines() if line.startswith("ESTAB")
    )
    backlog = next(f for f in findings if f["kind"] == "listen-backlog-small")
    assert backlog["evidence"]["established"] == established
    assert doc["checks"][0]["name"] == "audit" and doc["checks"][0]["ran"]


def test_doctor_table_names_the_findings() -> None:
    result = run_tcpsleuth("doctor", "--example")
    assert result.returncode == 1
    assert "kernel-cookie-wscale-bug" in result.stdout
    assert "listen-backlog-small" in result.stdout


def test_doctor_on_this_host_is_consistent() -> None:
    """On this host the audit runs whoever runs it (procfs and the kernel's release need
    no root) and always judges the kernel; the exit status follows the worst finding."""
    result = run_tcpsleuth("doctor", "--format", "json")
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["audit"]["ran"] and checks["audit"]["skipped"] is None, checks
    assert any(f["kind"].startswith("kernel-cookie-wscale") for f in doc["findings"]), doc
    worst = {f["severity"] for f in doc["findings"]}
    assert result.returncode == (1 if worst & {"critical", "warning"} else 0)


def test_usage_errors_exit_2_without_traceback() -> None:
    for argv in (
        ["audit", "--no-such-option"],
        ["doctor", "--example", "nope"],
        ["audit", "--bundle", str(EXAMPLE), "--netns", "x"],
        ["audit", "--format", "xml"],
        ["collect"],
        ["audit", "--kafka-config", "/nonexistent/server.properties"],
    ):
        result = run_tcpsleuth(*argv)
        assert result.returncode == 2, argv
        assert "Traceback" not in result.stderr
        assert result.stderr.strip(), argv


def test_help_has_examples() -> None:
    for command in ("doctor", "audit", "collect"):
        result = run_tcpsleuth(command, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout and f"tcpsleuth {command}" in result.stdout
