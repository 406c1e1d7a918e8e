"""Regenerate the tables of finding kinds from the registry (tcpsleuth.model.kinds):
the short one in the README (between the `kinds:begin`/`kinds:end` markers) and the
full one in docs/findings.md. `--check` exits 1 when either is out of date (a test
runs it). From the repository root:
    python3 scripts/make_kinds_doc.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tcpsleuth.model.kinds import KINDS, SUBJECT_KEYS, Kind

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
FINDINGS = REPO / "docs" / "findings.md"
BEGIN, END = "<!-- kinds:begin (scripts/make_kinds_doc.py) -->", "<!-- kinds:end -->"


def _names(kind: Kind) -> str:
    former = f" (was {', '.join(f'`{a}`' for a in kind.aliases)})" if kind.aliases else ""
    return f"`{kind.name}`{former}"


def readme_table() -> str:
    rows = ["| kind | severity | about | meaning |", "|---|---|---|---|"]
    rows += [
        f"| {_names(k)} | {'/'.join(k.severities)} | {k.subject} | {k.meaning} |"
        for k in KINDS.values()
    ]
    return "\n".join(rows)


def findings_page() -> str:
    out = [
        "# Finding kinds",
        "",
        "Generated from `src/tcpsleuth/model/kinds.py` by `scripts/make_kinds_doc.py`; do",
        "not edit by hand. A kind has one shape whatever command reports it: one type of",
        "subject and exactly the evidence keys listed, every one of them in every finding;",
        "a key the command cannot know is there with `null` (a capture cannot read the",
        "server's socket: `wscale-mismatch` from `pcap` has `socket_wscale` null, from",
        "`compare` `inferred_wscale` null), and where several kinds of evidence can decide",
        "a finding, its `source` says which did. `tcpsleuth.model.findings.Finding`",
        "refuses any other key. Times are milliseconds (`_ms`), sizes bytes.",
        "",
        "Subjects: "
        + "; ".join(
            f"{name} `{{{', '.join(f'{k!r}: ...' for k in keys)}}}`".replace("'", '"')
            for name, keys in SUBJECT_KEYS.items()
        )
        + ". A connection's `client` is `IP:PORT` for one connection, `IP` for all the",
        "connections of that client address, or `*` for all of the server's clients (the",
        "evidence's `clients` then counts them by address).",
        "",
        "A renamed kind is still accepted under its former name for one release, and each",
        "finding of it carries the former name in `aliases`.",
        "",
    ]
    families: dict[str, list[Kind]] = {}
    for kind in KINDS.values():
        families.setdefault(kind.family, []).append(kind)
    for family, kinds in families.items():
        out += [f"## {family}", "", "| kind | severity | subject | reported by | evidence |"]
        out.append("|---|---|---|---|---|")
        for k in kinds:
            evidence = ", ".join(f"`{e}`" for e in k.evidence)
            out.append(
                f"| {_names(k)}: {k.meaning} | {'/'.join(k.severities)} | {k.subject} | "
                f"{', '.join(k.sources)} | {evidence} |"
            )
        out.append("")
    out.append("[Back to the README](../README.md)")
    return "\n".join(out) + "\n"


def render_readme(text: str) -> str:
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + readme_table() + "\n" + text[stop:]


def main(argv: list[str]) -> int:
    readme = README.read_text()
    wanted = {README: render_readme(readme), FINDINGS: findings_page()}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run scripts/make_kinds_doc.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
