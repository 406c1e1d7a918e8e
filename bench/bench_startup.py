"""Start-up cost of the command line, whole process, as a user pays it.

  python3 bench/bench_startup.py [--runs 9]

Times the installed ``tcpsleuth`` entry point (the console script, not
``python -m``) for ``--help``, ``audit --help`` and ``pcap`` on the 20-packet public
Kafka capture (tests/data/go-sniffer-kafka.pcap), and prints the median of the runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CAPTURE = Path(__file__).parent.parent / "tests" / "data" / "go-sniffer-kafka.pcap"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    # the console script beside this interpreter: a version manager's shim on PATH
    # (pyenv's is a shell script) would add its own start-up to every run
    beside = Path(sys.executable).parent / "tcpsleuth"
    entry = str(beside) if beside.exists() else shutil.which("tcpsleuth")
    if entry is None:
        raise SystemExit("bench_startup: tcpsleuth is not installed (bash scripts/install.sh)")
    cases = {
        "tcpsleuth --help": [entry, "--help"],
        "tcpsleuth audit --help": [entry, "audit", "--help"],
        f"tcpsleuth pcap {CAPTURE.name} (20 packets)": [entry, "pcap", str(CAPTURE)],
    }
    for name, argv in cases.items():
        subprocess.run(argv, capture_output=True, check=False)  # warm the file cache
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=False)
            times.append(time.perf_counter() - started)
        print(f"{name:55s} median {statistics.median(times):.3f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
