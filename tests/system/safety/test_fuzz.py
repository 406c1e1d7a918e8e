"""Fuzzing, the short run (issue 14): every parser that reads what a user hands over,
fed the real fixtures mutated by hypothesis, must return or raise InputError. The
long, coverage-guided run is scripts/fuzz.py (atheris); whatever it finds is kept
under tests/data/fuzz-regressions/ and replayed here. The whole module takes well
under two minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fuzz_targets

from tcpsleuth.errors import InputError

# values that parsers meet at their edges
TOKENS = [
    b"-1",
    b"0",
    b"65535",
    b"65536",
    b"99999",
    b"2147483648",
    b"4294967296",
    b"99999999999999999999999",
    b"nan",
    b"inf",
    b"1e999",
    b"-0",
    b"\x00",
    b"\xff\xfe",
    b"[/x]",
    b"::",
    b"[::1]:",
    b"*:*",
    b"%",
    b":",
    b"=",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"null",
    b"true",
    b"\\",
    b"\t",
    b"\r\n",
    b"\n",
    b" ",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
]


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed of ``target`` with a few byte-, token- and line-level changes, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(fuzz_targets.seeds(target))))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 5))
        if kind == 0 and data:  # flip a byte
            index = min(where, len(data) - 1)
            data[index] ^= draw(st.integers(1, 255))
        elif kind == 1:  # insert a token
            data[where:where] = draw(st.sampled_from(TOKENS))
        elif kind == 2:  # replace a run with a token
            span = draw(st.integers(1, 16))
            data[where : where + span] = draw(st.sampled_from(TOKENS))
        elif kind == 3:  # delete a run
            del data[where : where + draw(st.integers(1, 64))]
        elif kind == 4:  # duplicate a run
            span = draw(st.integers(1, 256))
            data[where:where] = data[where : where + span]
        else:  # cut the input short
            del data[where:]
    return bytes(data)


def holds(target: str, data: bytes) -> None:
    """The contract: a result or an InputError; anything else fails the test."""
    try:
        fuzz_targets.TARGETS[target](data)
    except InputError as problem:
        assert str(problem).strip(), "an InputError without a message"


EXAMPLES = {"capture": 600, "bundle": 1500}
# the configuration readers (issue 24): six targets of one kind, fewer examples each
EXAMPLES.update(dict.fromkeys(fuzz_targets.CONFIG_TARGETS, 800))
# incident directories (issue 24): five files of one incident, rendered where they are shown
EXAMPLES.update(dict.fromkeys(fuzz_targets.INCIDENT_TARGETS, 1000))


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_parser_holds_on_mutated_fixtures(target: str, tmp_path: Path) -> None:
    os.environ["TCPSLEUTH_FUZZ_SCRATCH"] = str(tmp_path)
    fuzz_targets.SCRATCH = tmp_path

    @settings(
        max_examples=EXAMPLES.get(target, 3000),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(target))
    def check(data: bytes) -> None:
        holds(target, data)

    check()


def test_every_seed_is_read_or_refused() -> None:
    for target in fuzz_targets.TARGETS:
        assert fuzz_targets.seeds(target), target
        for seed in fuzz_targets.seeds(target):
            holds(target, seed)


@pytest.mark.parametrize(
    "target", [p.name for p in sorted(fuzz_targets.REGRESSIONS.glob("*")) if p.is_dir()]
)
def test_regression_inputs_hold(target: str, tmp_path: Path) -> None:
    """What a long run once found (tests/data/fuzz-regressions/TARGET/*), replayed."""
    fuzz_targets.SCRATCH = tmp_path
    name = "capture" if target.startswith("capture") else target
    for path in fuzz_targets.regressions(target):
        holds(name, path.read_bytes())


@pytest.mark.parametrize("mode", ["capture-nojit", "capture-compiled"])
def test_compiled_loops_hold_in_their_own_process(mode: str, tmp_path: Path) -> None:
    """The capture reader and decoder fuzzed by atheris for a few seconds, as the long
    run does: with the JIT off (coverage of every branch) and compiled with bounds
    checks, each in a process of its own, so that a crash of the process counts."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [
            *(sys.executable, str(REPO / "scripts" / "fuzz.py"), "--targets", mode),
            *("--capture-seconds", "12", "--keep", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = int(result.stdout.split(" inputs")[0].split()[-1].replace(",", ""))
    assert runs > 50, result.stdout
