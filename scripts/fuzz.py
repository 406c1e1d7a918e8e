#!/usr/bin/env python3
"""Coverage-guided fuzzing of every parser that reads what a user hands over (atheris,
libFuzzer), seeded with the real fixtures: the long run. The short run is
tests/system/safety/test_fuzz.py (hypothesis, in CI).

Each target runs in its own process, so that a crash of the process (a compiled loop
reading out of bounds) counts. The capture reader and decoder run twice: with
NUMBA_DISABLE_JIT=1 (plain Python: atheris sees every branch) and compiled with
NUMBA_BOUNDSCHECK=1 (an index out of bounds raises instead of reading memory), with
numba's cache in a directory of their own so that neither leaks into normal runs.

The contract: a target returns, or raises InputError (one line for the user). Any
other exception, a crash, a hang (--timeout) or running out of memory is a failure:
libFuzzer's artifact is copied to tests/data/fuzz-regressions/TARGET/, where
tests/system/safety/test_fuzz.py replays it from then on.

    python3 scripts/fuzz.py                              # every target, default budgets
    python3 scripts/fuzz.py --runs 1000000 --capture-seconds 300
    python3 scripts/fuzz.py --targets ss,nstat --seconds 60
    python3 scripts/fuzz.py --targets incident-report,incident-sockets --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import fuzz_targets  # noqa: E402

# the capture target, once in plain Python and once compiled with bounds checks
CAPTURE_MODES = {
    "capture-nojit": {"NUMBA_DISABLE_JIT": "1"},
    "capture-compiled": {"NUMBA_BOUNDSCHECK": "1"},
}
TEXT_TARGETS = [name for name in fuzz_targets.TARGETS if name != "capture"]
ALL = TEXT_TARGETS + list(CAPTURE_MODES)
NUMBA_MODULES = (  # compiled with numba: imported before atheris instruments the rest
    "tcpsleuth.sources.pcap.walk",
    "tcpsleuth.sources.pcap.decode",
    "tcpsleuth.detectors.capture.kernels",
    "tcpsleuth.detectors.capture.kafka",
)


def child(
    target: str, runs: int, seconds: int, timeout: int, corpus: Path, artifacts: Path
) -> None:
    """Inside the fuzzing process: instrument tcpsleuth, then hand over to libFuzzer."""
    import importlib

    import atheris

    name = "capture" if target.startswith("capture") else target
    function = fuzz_targets.TARGETS[name]
    if name == "capture" and not os.environ.get("NUMBA_DISABLE_JIT"):
        for module in NUMBA_MODULES:
            importlib.import_module(module)
    from tcpsleuth.errors import InputError

    with atheris.instrument_imports(include=["tcpsleuth"]):
        for seed in fuzz_targets.seeds(name):
            with contextlib.suppress(InputError):
                function(seed)  # imports (and so instruments) what the target uses

    def one_input(data: bytes) -> None:
        with contextlib.suppress(InputError):
            function(data)

    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        "-rss_limit_mb=4096",
        "-max_len=65536",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def run_target(target: str, runs: int, seconds: int, timeout: int, keep: Path) -> dict:
    """One target in its own process; its runs, time, rate and what it found."""
    name = "capture" if target.startswith("capture") else target
    with tempfile.TemporaryDirectory(prefix=f"tcpsleuth-fuzz-{target}-") as scratch:
        work = Path(scratch)
        corpus, artifacts = work / "corpus", work / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        seeds = list(fuzz_targets.seeds(name))
        found_before = {*fuzz_targets.regressions(name), *fuzz_targets.regressions(target)}
        seeds += [p.read_bytes() for p in sorted(found_before)]
        for index, seed in enumerate(seeds):
            (corpus / f"seed-{index}").write_bytes(seed)
        env = {
            **os.environ,
            **CAPTURE_MODES.get(target, {}),
            "TCPSLEUTH_FUZZ_SCRATCH": str(work),
            "NUMBA_CACHE_DIR": str(work / "numba-cache"),  # bounds-checked code stays here
        }
        started = time.monotonic()
        process = subprocess.run(
            [
                *(sys.executable, __file__, "--child", target, "--runs", str(runs)),
                *("--seconds", str(seconds), "--timeout", str(timeout)),
                *("--corpus", str(corpus), "--artifacts", str(artifacts)),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", process.stderr)
        done = re.findall(r"Done (\d+) runs in (\d+) second", process.stderr)
        count = int(executed[-1]) if executed else int(done[-1][0]) if done else 0
        found = sorted(artifacts.iterdir())
        kept = []
        for artifact in found:
            destination = keep / target / artifact.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact, destination)
            kept.append(str(destination.relative_to(REPO)))
        failed = process.returncode != 0 or bool(found)
        if failed and not found:
            tail = "\n".join(process.stderr.splitlines()[-30:])
            print(f"{target}: exit {process.returncode} without an artifact:\n{tail}")
        elif found:
            tail = "\n".join(process.stderr.splitlines()[-40:])
            print(f"{target}: FOUND {len(found)}:\n{tail}")
        return {
            "target": target,
            "runs": count,
            "seconds": round(elapsed, 1),
            "rate": round(count / elapsed) if elapsed else 0,
            "failures": kept,
            "status": process.returncode,
            "corpus": len(list(corpus.iterdir())),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(ALL), help=f"comma-separated: {ALL}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per text target")
    parser.add_argument("--seconds", type=int, default=600, help="time cap per text target")
    parser.add_argument(
        "--capture-seconds", type=int, default=300, help="time budget per capture mode"
    )
    parser.add_argument("--timeout", type=int, default=30, help="seconds one input may take")
    parser.add_argument(
        "--keep", type=Path, default=fuzz_targets.REGRESSIONS, help="where failures are kept"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs, args.seconds, args.timeout, args.corpus, args.artifacts)
        return 0
    results = []
    for target in args.targets.split(","):
        if target not in ALL:
            parser.error(f"unknown target {target!r}; known: {', '.join(ALL)}")
        capture = target in CAPTURE_MODES
        runs = -1 if capture else args.runs  # -1: as many as the time budget allows
        seconds = args.capture_seconds if capture else args.seconds
        result = run_target(target, runs, seconds, args.timeout, args.keep)
        results.append(result)
        failed = result["failures"] or result["status"]
        print(
            f"{target:18} {result['runs']:>10,} inputs in {result['seconds']:>7.1f} s "
            f"= {result['rate']:>7,}/s  corpus {result['corpus']:>5}  "
            f"{'FAILED ' + ' '.join(result['failures']) if failed else 'ok'}",
            flush=True,
        )
    broken = [r for r in results if r["failures"] or r["status"]]
    print(f"{len(results) - len(broken)} passed, {len(broken)} failed")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
