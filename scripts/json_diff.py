"""Every command's JSON on fixed inputs, before and after a change: a restructuring
must change no result.

    python3 scripts/json_diff.py record DIR [--src SRC] [--only PREFIX]  # keep their JSON
    python3 scripts/json_diff.py compare OLD NEW          # exit 1 on any difference

`record` runs the tcpsleuth found on `--src` (a `src/` directory of another checkout,
e.g. a `git worktree` of the commit before the change; default: the installed one) on:
the benchmark captures (bench/bench_pcap.py makes them; of the 2 M-packet one, the
default document only), the public Kafka capture, the two committed lab storms (prefix
and fixed kernels), the bundles and `ss` fixtures (audit, doctor, sockets, compare),
and the committed incident (tests/data/incident-small): `report DIR --format json` on
its report.json as stored, and on a copy analysed anew (`--again`) with the report.json
that writes. As root, also the exporter's exposition: `exporter --netns` on a namespace
made for it, where two loopback listeners (one with its receive buffer locked) hold 24
connections made by SYN cookies (tcp_syncookies=2), each sample by name and labels as
prometheus_client's parser reads it back, the scrape's own read time left out.
`compare` reads findings through the kind registry's aliases (a renamed kind is the
same finding) and ignores what is meant to differ from run to run (timings,
tcpsleuth's version) and the keys added on purpose (INTENDED: report.json's
``schema_version``, issue 28) where only the new document has them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path("/tmp/tcpsleuth-bench")
FIX = REPO / "tests" / "fixtures"
DATA = REPO / "tests" / "data"
VOLATILE = {"seconds", "elapsed_s", "elapsed", "version", "generated", "generated_at", "argv"}
INTENDED = {"schema_version"}  # new keys, meant: an old document lacks them
INCIDENT = DATA / "incident-small"


def cases() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    captures = {
        "kafka-public": DATA / "go-sniffer-kafka.pcap",
        "storm-prefix": DATA / "storm-prefix" / "server.pcap",
        "storm-fixed": DATA / "storm-fixed" / "server.pcap",
        "bench-50k": BENCH / "bench-50000.pcap",
        "bench-500k": BENCH / "bench-500000.pcap",
    }
    for name, path in captures.items():
        if path.exists():
            out[f"pcap-{name}"] = ["pcap", "--format", "json", "--all-connections", str(path)]
            out[f"pcap-{name}-default"] = ["pcap", "--format", "json", str(path)]
    # bench_pcap.py's own capture (160,016 connections): the default document only
    big = BENCH / "bench-2000000.pcap"
    if big.exists():
        out["pcap-bench-2m-default"] = ["pcap", "--format", "json", str(big)]
    for bundle in sorted((FIX / "bundles").iterdir()):
        out[f"audit-{bundle.name}"] = ["audit", "--format", "json", "--bundle", str(bundle)]
        out[f"doctor-{bundle.name}"] = ["doctor", "--format", "json", "--bundle", str(bundle)]
    ss = FIX / "ss"
    for text in sorted(ss.glob("*.txt")):
        out[f"sockets-{text.stem}"] = ["sockets", "--format", "json", str(text)]
    pairs = [
        ("lab-fault-client-tni", "lab-fault-server-tni"),
        ("lab-clean-client-tni", "lab-clean-server-tni"),
    ]
    for client, server in pairs:
        out[f"compare-{client}"] = [
            "compare",
            "--format",
            "json",
            "--port",
            "9092",
            str(ss / f"{client}.txt"),
            str(ss / f"{server}.txt"),
        ]
    out["doctor-example"] = ["doctor", "--format", "json", "--example"]
    out["report-incident-small"] = ["report", "--format", "json", str(INCIDENT)]
    return out


def _run(argv: list[str], env: dict[str, str], src: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    # paths into the checkout are not results
    stdout = result.stdout.replace(str(Path(src)), "<src>")
    return {"status": result.returncode, "stdout": stdout, "stderr": result.stderr.strip()[-400:]}


def _incident_anew(directory: Path, env: dict[str, str], src: str) -> None:
    """The committed incident analysed again in a copy (same name): the command's JSON
    and the report.json it writes."""
    with tempfile.TemporaryDirectory(prefix="json-diff-") as scratch:
        copy = Path(scratch) / INCIDENT.name
        shutil.copytree(INCIDENT, copy)
        run = _run(["report", "--format", "json", "--again", str(copy)], env, src)
        run["stdout"] = run["stdout"].replace(scratch, "<scratch>")
        (directory / "report-incident-small-again.json").write_text(json.dumps(run))
        written = copy / "report.json"
        text = written.read_text() if written.exists() else ""
        kept = {"status": run["status"], "stdout": text, "stderr": ""}
        (directory / "report-json-incident-small.json").write_text(json.dumps(kept))
    print(f"report-incident-small-again: exit {run['status']}", file=sys.stderr)


# the exporter's case: what the namespace holds while the exporter is scraped
_HOLD = """
import socket, time
def listen(port, rcvbuf=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s
held = [listen(9092), listen(9093, 65536)]
held += [socket.create_connection(("127.0.0.1", p)) for p in (9092, 9093) for _ in range(12)]
print("ready", flush=True)
time.sleep(600)
"""
EXPOSITION_VOLATILE = {"tcpsleuth_scrape_read_seconds"}


def _scrape(url: str, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _exposition(directory: Path, env: dict[str, str]) -> None:
    """The exporter's exposition on a namespace made here (root only), its samples by
    name and labels; the namespace and its processes removed after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("exporter-exposition: skipped (needs root and ip)", file=sys.stderr)
        return
    from prometheus_client.parser import text_string_to_metric_families

    ns = f"tcpsleuth-jsondiff-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    holder = exporter = None
    try:
        in_ns = ["ip", "netns", "exec", ns]
        subprocess.run([*in_ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*in_ns, "sysctl", "-qw", "net.ipv4.tcp_syncookies=2"], check=True)
        holder = subprocess.Popen(
            [*in_ns, sys.executable, "-c", _HOLD], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        port = 9400 + os.getpid() % 500
        listen = f"127.0.0.1:{port}"
        exporter = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth", "exporter", "--netns", ns, "--listen", listen],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        _scrape(url)
        time.sleep(1)  # the window-limited shares are measured between two scrapes
        text = _scrape(url)
    finally:
        for process in (exporter, holder):
            if process is not None:
                process.terminate()
                process.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    samples = {
        f"{s.name}{json.dumps(s.labels, sort_keys=True)}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name not in EXPOSITION_VOLATILE
    }
    kept = {"status": 0, "stdout": json.dumps(samples), "stderr": ""}
    (directory / "exporter-exposition.json").write_text(json.dumps(kept))
    print(f"exporter-exposition: {len(samples)} samples", file=sys.stderr)


def record(directory: Path, src: str | None, only: str = "") -> int:
    """Every case (or those whose name starts with ``only``) run, its JSON kept."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "120"}
    src = src or str(REPO / "src")
    if src:
        env["PYTHONPATH"] = src
    for name, argv in cases().items():
        if not name.startswith(only):
            continue
        run = _run(argv, env, src)
        (directory / f"{name}.json").write_text(json.dumps(run))
        print(f"{name}: exit {run['status']}", file=sys.stderr)
    if "report-incident-small-again".startswith(only):
        _incident_anew(directory, env, src)
    if "exporter-exposition".startswith(only):
        _exposition(directory, env)
    return 0


def _canonical(value: Any) -> Any:
    from tcpsleuth.model.kinds import ALIASES

    if isinstance(value, dict):
        out = {k: _canonical(v) for k, v in value.items() if k not in VOLATILE and k != "aliases"}
        if isinstance(out.get("kind"), str):
            out["kind"] = ALIASES.get(out["kind"], out["kind"])
        return out
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, str):
        for old, new in ALIASES.items():
            value = value.replace(f"{old}×", f"{new}×")
    return value


def _document(path: Path) -> tuple[int, Any]:
    run = json.loads(path.read_text())
    try:
        return run["status"], _canonical(json.loads(run["stdout"]))
    except json.JSONDecodeError:
        return run["status"], run["stdout"] or run["stderr"]


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{where}: {str(a)[:80]} != {str(b)[:80]}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key in INTENDED and key not in a:
                continue
            if key not in a or key not in b:
                return f"{where}.{key}: only in {'new' if key in b else 'old'}"
            diff = _first_difference(a[key], b[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = _first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {str(a)[:80]} != {str(b)[:80]}"


def compare(old: Path, new: Path) -> int:
    differing = 0
    names = sorted(p.name for p in old.glob("*.json"))
    for name in names:
        if not (new / name).exists():
            print(f"{name}: missing in {new}")
            differing += 1
            continue
        (s1, d1), (s2, d2) = _document(old / name), _document(new / name)
        diff = f"exit {s1} != {s2}" if s1 != s2 else _first_difference(d1, d2)
        if diff:
            differing += 1
            print(f"{name}: {diff}")
    print(f"{len(names)} documents compared, {differing} differ")
    return 1 if differing else 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "record":
        src = argv[argv.index("--src") + 1] if "--src" in argv else None
        only = argv[argv.index("--only") + 1] if "--only" in argv else ""
        return record(Path(argv[1]), src, only)
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
