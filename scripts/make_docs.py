"""Regenerate the real output shown in the docs, and check that it has not drifted.

Every block of real output made from fixed inputs (the built-in example, the committed
captures, bundles and `ss` fixtures) sits under a marker naming its command:

    <!-- output: tcpsleuth doctor --example -->
    <!-- output head=40: tcpsleuth pcap tests/data/storm-prefix/server.pcap -->
    <!-- output json=findings.0: tcpsleuth compare A B --format json -->

followed by a fenced block that this script rewrites with what the command prints now
(run from the repository root, COLUMNS=100, no colour; `head=N` keeps the first N
lines, `json=PATH` one part of a JSON document). `--check` changes nothing and exits 1
naming each block that differs (tests/project/test_docs_output.py runs it). `--live`, as root,
also rewrites the pages of output on this machine and the lab (docs/doctor.md,
probe.md, collect.md, trace.md), which cannot be checked: their values change.

    python3 scripts/make_docs.py [--check | --live]
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
ENV = {**os.environ, "COLUMNS": "110", "NO_COLOR": "1"}

MARKED = re.compile(
    r"(?P<head><!-- output(?P<options>(?: [a-z]+=\S+)*): (?P<command>[^\n]+?) -->\n"
    r"```(?P<lang>\w*)\n)(?P<body>.*?)(?P<tail>```)",
    re.S,
)
MARKED_COLUMNS = "100"
# a page's block from fixed inputs is marked (checked); one of this machine is not
FIXED = "fixed:"

PAGES: dict[str, list[tuple[str, str]]] = {
    "doctor": [
        (
            "The built-in example: a broker host with the kernel bug after a reconnect storm",
            FIXED + "tcpsleuth doctor --example",
        ),
        ("This machine", "tcpsleuth doctor"),
    ],
    "audit": [
        (
            "The built-in example's bundle, as JSON",
            FIXED + "tcpsleuth audit --bundle src/tcpsleuth/examples/incident-broker --format json",
        ),
    ],
    "probe": [
        ("The kernel self-test on this machine", "tcpsleuth probe"),
    ],
    "collect": [
        ("Collect this host", "tcpsleuth collect {tmp}/bundle"),
        ("... and audit what was collected", "tcpsleuth audit --bundle {tmp}/bundle"),
    ],
}


def run(command: str, tmp: str) -> str:
    from tcpsleuth.cli import examples

    example = str(examples.path(examples.DEFAULT))
    argv = shlex.split(command.format(tmp=tmp, example=example))
    result = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    shown = command.format(tmp="/tmp/x", example="incident-broker/")
    text = (
        (result.stdout + result.stderr).replace(tmp, "/tmp/x").replace(example, "incident-broker")
    )
    text = text.replace(str(REPO), ".")
    return f"$ {shown}\n{text.rstrip()}\n(exit status {result.returncode})\n"


def trace_page(tmp: str) -> str:
    """`tcpsleuth trace` while two lab namespaces run traffic through the SYN-ACK fault."""
    import sys
    import time

    from tcpsleuth.lab import faults, namespaces, topology

    support = REPO / "tests" / "support" / "bulk.py"
    with topology.server_client_pair("docs") as pair:
        namespaces.sysctl(pair.server, "net.ipv4.tcp_rmem", "4096 131072 6291456")
        faults.announce_wscale(pair.server, 9092, 1)
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.server,
                sys.executable,
                str(support),
                "serve",
                pair.server_ip4,
                "9092",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        server.stdout.readline()
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.client,
                sys.executable,
                str(support),
                "send",
                pair.server_ip4,
                "9092",
                "6",
                "1",
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        command = (
            f"tcpsleuth trace --netns {pair.server} --netns {pair.client} --port 9092 --duration 3"
        )
        text = run(command, tmp)
        client.wait()
        server.kill()
    return (
        f"Two lab namespaces; the server's SYN-ACKs announce shift 1 while it uses 7 "
        f"(nftables), one client sending for 6 s.\n\n```\n{text}```\n"
    )


def output(command: str, options: dict[str, str]) -> str:
    """What ``command`` prints now, from the repository root, as a marked block shows it."""
    argv = shlex.split(command)
    assert argv[0] == "tcpsleuth", command
    env = {**os.environ, "COLUMNS": options.get("columns", MARKED_COLUMNS), "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    # The output names files of the checkout and wraps long lines: run it through a link
    # whose path has the same length wherever the checkout is, so the wrap is the same.
    with tempfile.TemporaryDirectory(prefix="tsdocs-", dir="/tmp") as scratch:
        alias = Path(scratch) / "r"
        alias.symlink_to(REPO)
        env["PYTHONPATH"] = os.pathsep.join([str(alias / "src"), env.get("PYTHONPATH", "")])
        result = subprocess.run(
            [sys.executable, "-m", "tcpsleuth", *argv[1:]],
            capture_output=True, text=True, env=env, cwd=alias, check=False, timeout=600,
        )  # fmt: skip
    text = result.stdout
    for root in (alias, REPO):
        text = text.replace(f"{root}/", "").replace(str(root), ".")
    if "json" in options:
        part: object = json.loads(text)
        for step in options["json"].split("."):
            part = part[int(step)] if isinstance(part, list) else part[step]  # type: ignore[index]
        text = json.dumps(part, indent=2)
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    if "head" in options and len(lines) > int(options["head"]):
        left = len(lines) - int(options["head"])
        lines = [*lines[: int(options["head"])], f"[{left} more lines]"]
    shown = "" if "json" in options else f"$ {command}\n"
    status = "" if "json" in options else f"(exit status {result.returncode})\n"
    return shown + "\n".join(lines) + "\n" + status


def marked_blocks(text: str) -> list[re.Match[str]]:
    return list(MARKED.finditer(text))


def refreshed(text: str) -> str:
    """``text`` with every marked block's output made again."""

    def again(match: re.Match[str]) -> str:
        options = dict(o.split("=", 1) for o in match["options"].split())
        return match["head"] + output(match["command"], options) + match["tail"]

    return MARKED.sub(again, text)


def marked_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def stale_blocks(paths: list[Path] | None = None) -> list[str]:
    """``file: command`` of every marked block that differs from the command's output."""
    stale = []
    for path in marked_files() if paths is None else paths:
        text = path.read_text()
        for match in marked_blocks(text):
            options = dict(o.split("=", 1) for o in match["options"].split())
            if match["body"] != output(match["command"], options):
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                stale.append(f"{where}: {match['command']}")
    return stale


def marked(command: str) -> str:
    """A marked block of ``command``'s output, for the pages this script writes whole."""
    return f"<!-- output: {command} -->\n```\n{output(command, {})}```\n"


def main() -> None:
    if "--check" in sys.argv:
        stale = stale_blocks()
        for where in stale:
            print(f"{where}: differs from the command's output; run scripts/make_docs.py")
        raise SystemExit(1 if stale else 0)
    for path in marked_files():
        text = path.read_text()
        if marked_blocks(text):
            new = refreshed(text)
            if new != text:
                path.write_text(new)
                print(f"rewrote the real output in {path.relative_to(REPO)}")
    if "--live" in sys.argv:
        live()


def live() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (DOCS / "trace.md").write_text(
            "# tcpsleuth trace: real output\n\nGenerated by `python3 scripts/make_docs.py`; "
            "do not edit by hand.\n\n" + trace_page(tmp)
        )
        print("wrote docs/trace.md")
    with tempfile.TemporaryDirectory() as tmp:
        for page, entries in PAGES.items():
            parts = [
                f"# tcpsleuth {page}: real output\n",
                "Generated by `python3 scripts/make_docs.py`; do not edit by hand.\n",
            ]
            for title, command in entries:
                if command.startswith(FIXED):
                    parts.append(f"## {title}\n\n{marked(command[len(FIXED) :])}")
                else:
                    parts.append(f"## {title}\n\n```\n{run(command, tmp)}```\n")
            (DOCS / f"{page}.md").write_text("\n".join(parts))
            print(f"wrote docs/{page}.md")


if __name__ == "__main__":
    main()
