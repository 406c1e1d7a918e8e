"""Output that never drops content (issue 29): every command's table output, piped at
80 columns, has no value cut with "…", no address broken inside itself, and every
finding's advice whole."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SupportChild

from tcpsleuth.cli import examples
from tcpsleuth.detectors import rates
from tcpsleuth.reports import table, watchview
from tcpsleuth.sources import netns as netns_source

ROOT = REPO
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


# -- watch and heal: live tables, in a namespace of the test's own ----------------------

CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_frame(raw: str) -> str:
    """What a live display (rich's Live) shows last: the text after its last erase of a
    line, without the escape sequences."""
    return CSI.sub("", raw.rsplit("\x1b[2K", 1)[-1]).replace("\r", "")


def test_last_frame_is_the_last_redraw() -> None:
    raw = "\x1b[?25lone\nold\r\x1b[2K\x1b[1A\x1b[2K\x1b[1mtwo\x1b[0m\nnew\n\x1b[?25h"
    assert last_frame(raw) == "two\nnew\n"


def cropped(text: str) -> list[str]:
    """The lines of a table whose right edge is missing: a live display crops at the
    screen's edge what rich laid out wider, without any "…"."""
    return [
        line
        for line in text.splitlines()
        if line[:1] in "┏┃┡│└" and line[:1] and line.rstrip()[-1:] not in "┓┃┩│┘"
    ]


def test_cropped_table_is_seen() -> None:
    assert cropped("┏━━┳━━\n┃ a ┃ per s\n│ x │ 1\nplain\n") == ["┏━━┳━━", "┃ a ┃ per s", "│ x │ 1"]
    assert cropped("┏━━┓\n┃ a ┃\n└──┘\nplain\n") == []


def read_until(stream: Any, marker: bytes, seconds: float = 60) -> bytes:
    """What ``stream`` (a pipe's file) gives until ``marker`` is in it."""
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        chunk = os.read(stream.fileno(), 65536)
        assert chunk, seen
        seen += chunk
    return seen


@pytest.mark.parametrize("columns", [80, 60])
def test_watch_live_screen_fits(netns: str, columns: int) -> None:
    """watch's live screen at 80 and 60 columns, with a listener whose accept queue
    fills while it watches (an event line) and another on IPv6: every counter's name,
    every address and the event whole, no line past the screen's edge."""
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "200", "TTY_COMPATIBLE": "1"}
    env["NO_COLOR"] = "1"
    env.pop("FORCE_COLOR", None)
    with netns_source.entered(netns):
        full = socket.socket()
        full.bind(("127.0.0.1", 7071))
        full.listen(1)  # never accepted: two waiting connections fill its queue
        six = socket.socket(socket.AF_INET6)
        six.bind(("::1", 7072))
        six.listen(64)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth", "watch", "--netns", netns,
             "--interval", "0.3", "--count", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert watcher.stdout is not None
        # the queue fills only once the first screen showed it empty
        first = read_until(watcher.stdout, b"none yet")
        clients = []
        for _ in range(3):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", 7071))
            clients.append(client)
    try:
        rest, err = watcher.communicate(timeout=60)
    finally:
        for sock in (*clients, full, six):
            sock.close()
    assert watcher.returncode == 1, err  # the accept-queue-full event is a warning
    screen = last_frame((first + rest).decode())
    assert "…" not in screen, screen
    assert all(len(line.rstrip()) <= columns for line in screen.splitlines()), screen
    assert cropped(screen) == [], screen
    assert split_addresses(screen, {"127.0.0.1:7071", "[::1]:7072"}) == []
    assert "127.0.0.1:7071" in screen and "[::1]:7072" in screen
    names = [name for name in rates.RATE_COUNTERS if name in screen]
    assert names == list(rates.RATE_COUNTERS), screen
    event = words(screen.partition("Events")[2])
    assert "warning accept-queue-full: 127.0.0.1:7071: 2 connections wait for accept()" in event
    assert "with a backlog of 1" in event


def test_watch_rates_table_at_60_columns_cuts_no_counter() -> None:
    """The rates table's widest column (a counter's name) cannot be narrowed: the others
    wrap at their words instead, and the table stays within the screen."""
    names = list(rates.RATE_COUNTERS)
    # widest at 67 columns; each column at its longest word, 59
    totals = {name: 10**4 + 1111 * n for n, name in enumerate(names)}
    per_second = dict.fromkeys(names, 12345.6)
    view = watchview.rates_table("t", names, totals, per_second, dict.fromkeys(names, 99999))
    out = io.StringIO()
    table.SafeConsole(file=out, width=60, no_color=True).print(view)
    text = out.getvalue()
    assert "…" not in text and "┃" in text, text  # a table, not the list
    assert all(len(line) <= 60 for line in text.splitlines()), text
    for name, total in totals.items():
        assert re.search(rf"│ {name} +│ +{total} │", text), name
    assert text.count("12345.6") == len(names)


class HealClients(SupportChild):
    """tests/support/heal_clients.py: 12 connections with the bug's shift, 20 without."""

    SCRIPT = "heal_clients.py"


def heal(ns: str, columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TCPSLEUTH_TEST_KERNEL_STATUS": "affected"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "heal", "--port", "9092", "--netns", ns, *args],
        capture_output=True, text=True, check=False, timeout=180, env=env,
    )  # fmt: skip


def whole(text: str, columns: int, addresses: set[str]) -> None:
    assert "…" not in text, text
    assert all(len(line.rstrip()) <= columns for line in text.splitlines()), text
    assert cropped(text) == [], text
    assert split_addresses(text, addresses) == [], text
    for address in addresses:
        assert address in text, address


def test_heal_dry_run_and_apply_at_80_and_60_columns(netns: str) -> None:
    """heal's tables on the fitted layout, its verdict first: at 80 and 60 columns no
    value cut, no address broken, every action of the verdict whole."""
    clients = HealClients(netns, "--port", "9092", "--early", "12", "--late", "20")
    try:
        doc = json.loads(heal(netns, 80, "--format", "json").stdout)
        addresses = {h["client"] for h in doc["hit"]} | {x["listener"] for x in doc["listeners"]}
        assert len(doc["hit"]) == 12
        head = doc["verdict"]["summary"].partition("\n")[0]
        assert head.startswith("AT RISK: 12 of 32 connections on port 9092")
        for columns in (80, 60):
            dry = heal(netns, columns)
            assert dry.returncode == 1, dry.stderr
            whole(dry.stdout, columns, addresses)
            flat = words(dry.stdout)
            assert flat.startswith(words(head)), dry.stdout
            for action in doc["verdict"]["actions"]:
                assert words(action) in flat, action
        applied = heal(netns, 60, "--apply", "--quiet-seconds", "1", "--wait", "30")
        assert applied.returncode == 0, (applied.stdout, applied.stderr)
        whole(applied.stdout, 60, addresses)
        flat = words(applied.stdout)
        assert flat.startswith("Healed: 12 of 12 connections hit on port 9092"), flat
        assert flat.count("done ended (destroy,") == 12, applied.stdout
    finally:
        clients.stop()
