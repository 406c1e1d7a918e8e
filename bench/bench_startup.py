"""Start-up cost of the command line, whole process, as a user pays it.

  python3 bench/bench_startup.py [--runs 9] [--against OTHER/src]

Times the installed ``tcpsleuth`` entry point (the console script, not
``python -m``) for ``--help``, ``audit --help`` and ``pcap`` on the 20-packet public
Kafka capture (tests/data/go-sniffer-kafka.pcap), and ``tshark -q -z conv,tcp`` on
the same capture, the cases taking turns run after run so that every one sees the
same machine; prints the median wall time and CPU time (user + system) of each.
With ``--against`` it times the ``pcap`` case of another checkout too (its ``src/``,
e.g. a git worktree of the commit before a change), run the way the console script
runs it. Python's cached bytecode counts: a ``PYTHONDONTWRITEBYTECODE`` environment
without ``__pycache__`` compiles every module at every start (the figures say
whether bytecode was cached).

Python's own start is printed beside them (``python3 -c pass``), and the same without
the ``.pth`` start-up hooks of this interpreter's site-packages (``-S``, the packages
given on PYTHONPATH): a hook some other package or the host installed (one that
imports certifi at every start, say) is paid by every Python program, tcpsleuth and
its ``pcap`` case included; the ``-S`` rows show what is tcpsleuth's own.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import site
import statistics
import subprocess
import sys
import time
from pathlib import Path

CAPTURE = Path(__file__).parent.parent / "tests" / "data" / "go-sniffer-kafka.pcap"
# what the console script runs
LAUNCH = "import sys; from tcpsleuth.cli.main import main; sys.exit(main())"


def _timed(argv: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _bytecode_cached(src: Path) -> bool:
    return any(src.glob("tcpsleuth/__pycache__/*.pyc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--against", type=Path, help="the src/ of another checkout")
    args = parser.parse_args()
    # the console script beside this interpreter: a version manager's shim on PATH
    # (pyenv's is a shell script) would add its own start-up to every run
    beside = Path(sys.executable).parent / "tcpsleuth"
    entry = str(beside) if beside.exists() else shutil.which("tcpsleuth")
    if entry is None:
        raise SystemExit("bench_startup: tcpsleuth is not installed (bash scripts/install.sh)")
    cases: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "tcpsleuth --help": ([entry, "--help"], None),
        "tcpsleuth audit --help": ([entry, "audit", "--help"], None),
        f"tcpsleuth pcap {CAPTURE.name} (20 packets)": ([entry, "pcap", str(CAPTURE)], None),
    }
    if args.against is not None:
        here = Path(__file__).resolve().parent.parent / "src"
        for src in (args.against.resolve(), here):
            cases[f"  the same, {src}"] = (
                [sys.executable, "-c", LAUNCH, "pcap", str(CAPTURE)],
                {**os.environ, "PYTHONPATH": str(src)},
            )
    here_src = Path(__file__).resolve().parent.parent / "src"
    bare = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here_src), *site.getsitepackages()])}
    cases["python3 -c pass (this interpreter's start)"] = ([sys.executable, "-c", "pass"], None)
    cases["python3 -S -c pass (without .pth hooks)"] = ([sys.executable, "-S", "-c", "pass"], None)
    cases[f"tcpsleuth pcap {CAPTURE.name}, python3 -S"] = (
        [sys.executable, "-S", "-c", LAUNCH, "pcap", str(CAPTURE)],
        bare,
    )
    if shutil.which("tshark"):
        cases[f"tshark -q -z conv,tcp on {CAPTURE.name}"] = (
            ["tshark", "-n", "-q", "-r", str(CAPTURE), "-z", "conv,tcp"],
            None,
        )
    for argv, env in cases.values():
        subprocess.run(argv, capture_output=True, check=False, env=env)  # warm the caches
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, (argv, env) in cases.items():
            times[name].append(_timed(argv, env))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    here = Path(__file__).resolve().parent.parent / "src"
    print(
        f"medians of {args.runs} runs taking turns; load average {load}; "
        f"bytecode cached: {_bytecode_cached(here)}"
    )
    for name, found in times.items():
        wall = statistics.median(t[0] for t in found)
        cpu = statistics.median(t[1] for t in found)
        print(f"{name:62s} {wall:.3f} s wall {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
