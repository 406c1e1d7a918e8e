"""Output that never drops content (issue 29): every command's table output, piped at
80 columns, has no value cut with "…", no address broken inside itself, and every
finding's advice whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcpsleuth.cli import examples

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SS = ROOT / "tests" / "fixtures" / "ss"
EXAMPLE = str(examples.path(examples.DEFAULT))

COMMANDS = {
    "doctor": ["doctor", "--example"],
    "audit": ["audit", "--bundle", EXAMPLE],
    "pcap-prefix": ["pcap", str(DATA / "storm-prefix" / "server.pcap")],
    "pcap-fixed": ["pcap", str(DATA / "storm-fixed" / "server.pcap")],
    "pcap-kafka": ["pcap", str(DATA / "go-sniffer-kafka.pcap")],
    "compare": ["compare", str(SS / "lab-fault-client-tni.txt"),
                str(SS / "lab-fault-server-tni.txt")],
    "sockets": ["sockets", str(SS / "lab-fault-server-tni.txt")],
    "sockets-v6": ["sockets", str(SS / "old-iproute2-2016-ti-kernel4.6-ipv6.txt")],
    "lab-list": ["lab", "list"],
}  # fmt: skip

ADDRESS = re.compile(r"\[[0-9a-fA-F:.]+\]:\d+|(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}:\d+")
BOX = re.compile(r"[│┃║|]")


def piped(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )


def split_addresses(text: str, addresses: set[str]) -> list[str]:
    """The addresses that appear in ``text`` only when its line breaks, table borders
    and spaces are taken out: broken inside themselves."""
    flat = re.sub(r"\s+", "", BOX.sub("", text))
    return sorted(a for a in addresses if a in flat and a not in text)


def words(text: str) -> str:
    return " ".join(BOX.sub(" ", text).split())


def test_split_address_is_seen() -> None:
    # the check itself can fail: an address broken over two lines of a table
    broken = "│ 127.0 │\n│ .0.1: │\n│ 57373 │\n"
    assert split_addresses(broken, {"127.0.0.1:57373"}) == ["127.0.0.1:57373"]
    assert split_addresses("127.0.0.1:57373\n", {"127.0.0.1:57373"}) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_piped_at_80_columns_drops_nothing(name: str, tmp_path: Path) -> None:
    args = COMMANDS[name]
    text = piped(*args)
    assert text.returncode in (0, 1), text.stderr
    assert "…" not in text.stdout, text.stdout
    assert all(len(line.rstrip()) <= 80 for line in text.stdout.splitlines())
    if name == "lab-list":
        return
    doc = json.loads(piped(*args, "--format", "json").stdout)
    addresses = set(ADDRESS.findall(json.dumps(doc)))
    assert addresses, "the document names no address: nothing was checked"
    assert split_addresses(text.stdout, addresses) == []
    flat = words(text.stdout)
    for finding in doc["findings"][:10]:
        assert words(finding["advice"]) in flat, finding["kind"]
    if name.startswith("pcap"):
        # the file's name whole on the first line: `tcpsleuth pcap FILE | head -1`
        assert text.stdout.splitlines()[0].strip() == args[-1]


def test_incident_report_at_80_columns(tmp_path: Path) -> None:
    incident = tmp_path / "incident-small"
    shutil.copytree(DATA / "incident-small", incident)
    text = piped("report", str(incident))
    assert text.returncode in (0, 1), text.stderr
    assert "…" not in text.stdout
    doc = json.loads(piped("report", str(incident), "--format", "json").stdout)
    addresses = set(ADDRESS.findall(json.dumps(doc)))
    assert split_addresses(text.stdout, addresses) == []
    for finding in doc["findings"]:
        assert words(finding["advice"]) in words(text.stdout), finding["kind"]
