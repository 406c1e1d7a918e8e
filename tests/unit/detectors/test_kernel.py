"""The version table: verdicts follow the published fix points, and "unknown" is said
where a release string cannot tell."""

from __future__ import annotations

import pytest

from tcpsleuth.detectors.kernel import (
    STABLE_FIXED_SUBLEVEL,
    assess_kernel,
)

# Mainline 5.10 has the fix; the stable trees got it at these releases (Nov 2020).
PUBLISHED_FIX = {"4.4": 244, "4.9": 244, "4.14": 207, "4.19": 158, "5.4": 78, "5.9": 9}


def test_table_matches_the_published_fix_points() -> None:
    assert {f"{a}.{b}": n for (a, b), n in STABLE_FIXED_SUBLEVEL.items()} == PUBLISHED_FIX


@pytest.mark.parametrize(("series", "first"), PUBLISHED_FIX.items())
def test_stable_boundaries(series: str, first: int) -> None:
    assert assess_kernel(f"{series}.{first - 1}").status == "affected"
    assert assess_kernel(f"{series}.{first}").status == "fixed"
    assert assess_kernel(f"{series}.{first + 30}-1-lts").status == "fixed"


@pytest.mark.parametrize(
    "release",
    [
        "5.10.0",
        "5.10.1",
        "5.15.0-91-generic",
        "6.1.0-26-amd64",
        "6.18.44-fc-v657",
        "5.14.0-362.8.1.el9_3.x86_64",
    ],
)
def test_mainline_5_10_and_later_are_fixed(release: str) -> None:
    assert assess_kernel(release).status == "fixed"


@pytest.mark.parametrize(
    "release",
    [
        "5.8.18",
        "5.5.0",
        "4.20.17",
        "4.15.18",
        "3.16.85",
        "3.10.0",
        "4.4.100",
        "3.10.0-1160.el7.x86_64",
        "3.10.0-957.el7.x86_64",
        "4.18.0-240.el8.x86_64",
        "4.18.0-147.el8.x86_64",
    ],
)
def test_affected(release: str) -> None:
    assert assess_kernel(release).status == "affected"


@pytest.mark.parametrize(
    "release",
    [
        "3.10.0-1160.119.1.el7.x86_64",
        "4.18.0-240.22.1.el8_3.x86_64",
        "4.18.0-477.10.1.el8_8.x86_64",
        "5.4.0-42-generic",
        "4.19.0-16-amd64",
        "weird",
    ],
)
def test_unknown_rather_than_a_guess(release: str) -> None:
    assert assess_kernel(release).status == "unknown"


def test_debian_proc_version_names_the_upstream_release() -> None:
    # /proc/version text of Debian 10's kernel: the upstream release is in the build string
    before = (
        "Linux version 4.19.0-12-amd64 (debian-kernel@lists.debian.org) (gcc version "
        "8.3.0 (Debian 8.3.0-6)) #1 SMP Debian 4.19.152-1 (2020-10-18)"
    )
    after = (
        "Linux version 4.19.0-16-amd64 (debian-kernel@lists.debian.org) (gcc version "
        "8.3.0 (Debian 8.3.0-6)) #1 SMP Debian 4.19.181-1 (2021-03-19)"
    )
    assert assess_kernel("4.19.0-12-amd64", before).status == "affected"
    assert assess_kernel("4.19.0-16-amd64", after).status == "fixed"


def test_status_and_lock_are_enums_that_write_the_same_json() -> None:
    """States are StrEnums (#28): one spelling, compared as before, the same JSON."""
    import json

    from tcpsleuth.detectors.kernel import KernelVerdict, Status
    from tcpsleuth.detectors.listener_facts import Lock

    verdict = assess_kernel("3.10.0-1160.el7.x86_64")
    assert verdict.status is Status.AFFECTED and verdict.status == "affected"
    assert json.dumps(verdict.to_dict())
    assert json.loads(json.dumps(verdict.to_dict()))["status"] == "affected"
    assert KernelVerdict("x", "fixed", "told").status is Status.FIXED  # str made the enum
    with pytest.raises(ValueError, match="'fxed' is not a valid Status"):
        KernelVerdict("x", "fxed", "a misspelt status fails where it is made")
    assert json.dumps([Lock.YES, Lock.UNDETERMINED]) == '["yes", "undetermined"]'
    assert f"{Lock.NO}" == "no"
