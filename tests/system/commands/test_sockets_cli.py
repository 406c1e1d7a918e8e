"""`tcpsleuth sockets` and `compare` as a user runs them, on real `ss` output files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, run_tcpsleuth
from support import ss_text

SS = FIXTURES / "ss"
FAULT_CLIENT = SS / "lab-fault-client-tni.txt"
FAULT_SERVER = SS / "lab-fault-server-tnai.txt"


def _json(*args: str) -> tuple[int, dict]:
    result = run_tcpsleuth(*args, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _limited_in(path: Path) -> dict[str, float]:
    """Sender -> rwnd_limited share, from the `ss` text itself."""
    return {
        local: info["rwnd_limited_ms"] / info["busy_ms"]
        for (local, _), info in ss_text.sockets(path.read_text()).items()
        if "rwnd_limited_ms" in info and info.get("busy_ms")
    }


def test_sockets_on_the_client_side_of_the_fault() -> None:
    status, doc = _json("sockets", str(FAULT_CLIENT))
    assert status == 1
    expected = {local for local, share in _limited_in(FAULT_CLIENT).items() if share >= 0.2}
    assert expected
    limited = [f for f in doc["findings"] if f["kind"] == "rwnd-limited"]
    assert {f["evidence"]["sender"] for f in limited} == expected
    for finding in limited:
        assert finding["subject"]["server"].endswith(":9092")
    # the server's receive queue is not in a client-only snapshot: tiny windows are info
    tiny = [f for f in doc["findings"] if f["kind"] == "tiny-window"]
    assert tiny and {f["severity"] for f in tiny} == {"info"}
    by_port = doc["summary"]["by_port"]
    assert [(r["port"], r["side"], r["connections"]) for r in by_port] == [(9092, "client", 4)]


def test_sockets_clean_side_exits_0() -> None:
    status, doc = _json("sockets", str(SS / "lab-clean-client-tni.txt"))
    assert (status, doc["findings"]) == (0, [])
    assert doc["counts"]["connections"] == 4


def test_sort_limit_and_filters() -> None:
    text = FAULT_CLIENT.read_text()
    rtts = sorted((float(x) for x in re.findall(r"rtt:([\d.]+)/", text)), reverse=True)
    _, doc = _json("sockets", str(FAULT_CLIENT), "--sort", "rtt", "--limit", "2")
    assert [c["rtt"] for c in doc["connections"]] == rtts[:2]
    assert doc["counts"] == {"connections": 4, "listeners": None, "shown": 2}
    _, v6 = _json("sockets", str(FAULT_CLIENT), "--address", "2001:db8::2")
    assert [c["local"] for c in v6["connections"]] == re.findall(r"\[2001:db8::2\]:\d+", text)
    _, none = _json("sockets", str(FAULT_CLIENT), "--port", "9093")
    assert none["counts"]["connections"] == 0


def test_stdin_and_json_round_trip(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "sockets", "-", "--format", "json"],
        input=FAULT_SERVER.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (tmp_path / "server.json").write_text(result.stdout)
    _, from_text = _json("compare", str(FAULT_CLIENT), str(FAULT_SERVER))
    _, from_json = _json("compare", str(FAULT_CLIENT), str(tmp_path / "server.json"))
    assert from_json["pairs"] == from_text["pairs"]
    assert from_json["findings"] == from_text["findings"]


def test_compare_fixtures_fault_and_clean() -> None:
    status, doc = _json("compare", str(FAULT_CLIENT), str(FAULT_SERVER))
    assert status == 1 and doc["counts"]["matched"] == 4
    mismatches = [f for f in doc["findings"] if f["kind"] == "wscale-mismatch"]
    assert len(mismatches) == 4
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in mismatches
    } == {(1, 7)}
    # with the server in view, tiny windows are warnings: its receive queue is empty
    tiny = [f for f in doc["findings"] if f["kind"] == "tiny-window"]
    assert tiny and all(f["evidence"]["peer_recv_q"] == 0 for f in tiny)
    assert {f["severity"] for f in tiny} == {"warning"}
    status, clean = _json(
        "compare", str(SS / "lab-clean-client-tni.txt"), str(SS / "lab-clean-server-tni.txt")
    )
    assert (status, clean["findings"], clean["counts"]["matched"]) == (0, [], 4)


def test_compare_table_output() -> None:
    result = run_tcpsleuth("compare", str(FAULT_CLIENT), str(FAULT_SERVER))
    assert result.returncode == 1
    assert "wscale-mismatch" in result.stdout and "wscale mismatched  4" in result.stdout


def test_compare_counts_what_does_not_match() -> None:
    # the server snapshot of another run: same hosts, other ports (as behind NAT)
    _, doc = _json("compare", str(FAULT_CLIENT), str(SS / "lab-clean-server-tni.txt"))
    assert doc["counts"]["matched"] == 0
    assert doc["counts"]["client_only"] == doc["counts"]["server_only"] == 4
    assert [f["kind"] for f in doc["findings"] if f["kind"] == "unmatched-connections"] == [
        "unmatched-connections"
    ]


def test_garbage_ss_text_exit_2_with_line_number(tmp_path: Path) -> None:
    lines = FAULT_CLIENT.read_text().splitlines()
    bad = tmp_path / "client.txt"
    bad.write_text("\n".join([*lines[:5], "<html><body>502 Bad Gateway</body></html>"]) + "\n")
    for args in (("sockets", str(bad)), ("compare", str(bad), str(FAULT_SERVER))):
        result = run_tcpsleuth(*args)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"{bad}:6:" in result.stderr
    binary = tmp_path / "capture.pcap"
    binary.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(16))
    result = run_tcpsleuth("sockets", str(binary))
    assert result.returncode == 2 and "binary data, not text" in result.stderr
    result = run_tcpsleuth("sockets", str(tmp_path / "missing.txt"))
    assert result.returncode == 2 and "no such file" in result.stderr
    result = run_tcpsleuth("sockets", str(FAULT_CLIENT), "--address", "10.0.0.300")
    assert result.returncode == 2 and "not an IP address" in result.stderr
    result = run_tcpsleuth("compare", str(FAULT_CLIENT), str(FAULT_CLIENT))
    assert result.returncode == 2 and "tcpsleuth sockets" in result.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"command": "audit", "findings": []}))
    result = run_tcpsleuth("sockets", str(other))
    assert result.returncode == 2 and "not a `tcpsleuth sockets --format json`" in result.stderr


def test_bundle_directory_and_doctor_on_bundles(tmp_path: Path) -> None:
    bundle = FIXTURES / "bundles" / "debian12-6.18-storm"
    text = (bundle / "ss-tni.txt").read_text()
    _, doc = _json("sockets", str(bundle))
    assert doc["counts"]["connections"] == len(re.findall(r"^ESTAB", text, re.M))
    assert doc["counts"]["listeners"] == len(
        re.findall(r"^LISTEN", (bundle / "ss-ltn.txt").read_text(), re.M)
    )
    _, doctor = _json("doctor", "--bundle", str(bundle))
    (check,) = [c for c in doctor["checks"] if c["name"] == "sockets"]
    assert check["ran"] and check["data"]["connections"] == doc["counts"]["connections"]
    # a bundle without ss-tni.txt: the check is skipped, with the reason
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("uname-r.txt", "sysctl-a.txt", "proc-net-netstat.txt"):
        (partial / name).write_bytes((bundle / name).read_bytes())
    _, doctor = _json("doctor", "--bundle", str(partial))
    (check,) = [c for c in doctor["checks"] if c["name"] == "sockets"]
    assert not check["ran"] and "ss-tni.txt" in check["skipped"]


@pytest.mark.parametrize("command", ["sockets", "compare"])
def test_help_has_examples(command: str) -> None:
    result = run_tcpsleuth(command, "--help", check_status=0)
    assert "Examples:" in result.stdout and "ss -tni" in result.stdout
