"""The capture detectors called directly, without root, on storms the lab made in
its guest kernels (tests/data/storm-*/, with their provenance): the SYN-cookie and
window-scale verdicts of every connection against the kernel's truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import pytest
from conftest import DATA
from support.storm_truth import IN_PHASE_LAG_MS as ROUNDING

from tcpsleuth.detectors.capture.cookie_reasons import Reason
from tcpsleuth.detectors.capture.run import analyse_stream
from tcpsleuth.sources.pcap import open_capture


def _storm(kernel: str) -> tuple[dict, dict[str, dict], object]:
    return _analysed(DATA / f"storm-{kernel}", "server.pcap")


def _analysed(folder: Path, capture: str) -> tuple[dict, dict[str, int], Any]:
    """A stored storm's truth, its capture's streams by client endpoint (the same
    endpoints as the truth's), and the analysis of that capture."""
    truth = json.loads((folder / "truth.json").read_text())
    result = analyse_stream(open_capture(folder / capture), frozenset({9092}))
    ends = result.analysis.connections.endpoints_of(list(range(len(result.analysis.connections))))
    by_client = {client: stream for stream, (client, _server) in ends.items()}
    assert set(by_client) == set(truth["connections"])
    return truth, by_client, result


@pytest.mark.parametrize("kernel", ["prefix", "fixed"])
def test_every_cookie_connection_recognised(kernel: str) -> None:
    truth, by_client, result = _storm(kernel)
    verdicts = result.cookies
    said = {c: verdicts.of(s).cookie for c, s in by_client.items()}
    known = {c: t["cookie"] for c, t in truth["connections"].items()}
    decided = {c for c, v in said.items() if v is not None}
    wrong = [c for c in decided if said[c] != known[c]]
    assert not wrong
    assert len(decided) >= 0.95 * len(known)
    [finding] = [f for f in result.findings if f.kind == "syn-cookies-seen"]
    sent = truth["TcpExtSyncookiesSent"]
    assert abs(finding.evidence["cookie_synacks"] - sent) <= 0.05 * sent
    assert finding.evidence["clients"] == {"198.18.0.2": finding.evidence["cookie_connections"]}
    assert finding.evidence["client_ids"] == {"producer-0": finding.evidence["cookie_connections"]}


@pytest.mark.parametrize("kernel", ["prefix", "fixed"])
def test_window_scale_verdict_of_every_connection(kernel: str) -> None:
    truth, by_client, result = _storm(kernel)
    analysis = result.analysis
    for client, known in truth["connections"].items():
        verdict = result.wscale.of(analysis, by_client[client])
        disagree = known["server_rcv_wscale"] != known["client_snd_wscale"]
        if known["server_windows_after"] and known["server_rcv_wscale"] is not None:
            assert verdict["mismatch"] is disagree, (client, verdict, known)
            assert verdict["inferred"] == known["server_rcv_wscale"]
        # what the SYN-ACK announced is what the client uses, on either kernel
        assert verdict["announced"] == known["client_snd_wscale"], (client, verdict, known)
    mismatch = [f for f in result.findings if f.kind == "wscale-mismatch"]
    if kernel == "prefix":
        [finding] = mismatch
        assert finding.evidence["announced_wscale"] == 1
        assert finding.evidence["inferred_wscale"] == 7
        assert finding.evidence["connections"] == sum(
            1 for t in truth["connections"].values() if t["server_windows_after"]
        )
    else:
        assert not mismatch


def test_idle_storm_from_the_client_end() -> None:
    """The second idle storm as its clients' capture shows it
    (tests/data/idle-storm-prefix/2/client.pcap.gz): the server's FIN ACKs reached
    the client a few ms late, so 11 cookies that did not show a jump (their SYN-ACKs
    queued 85 to 270 ms on the way, which hides any) read 1.7 to 5.0 ms behind
    the cookies' clock phase and were called ordinary. Now none is wrong, and those
    are left undecided for that reason (with the ordinary ones that read there)."""
    doc, by_client, result = _analysed(DATA / "idle-storm-prefix" / "2", "client.pcap.gz")
    truth = doc["connections"]
    said = {client: result.cookies.of(stream) for client, stream in by_client.items()}
    wrong = [c for c, t in truth.items() if said[c].cookie not in (None, t["cookie"])]
    assert not wrong, [(c, truth[c], said[c]) for c in wrong[:5]]
    behind = [c for c in said if said[c].reason == Reason.BEHIND_PHASE.text]
    assert sum(1 for c in behind if truth[c]["cookie"]) >= 5
    assert sum(1 for c, t in truth.items() if t["cookie"] and said[c].cookie) >= 50


def test_a_lone_synack_is_undecided_with_its_reason(tmp_path: Path) -> None:
    """The prefix storm with every server segment after the SYN-ACKs cut out: with
    per-connection timestamp offsets (6.1.192) one SYN-ACK says nothing, and the
    verdict says so instead of guessing."""
    cut = tmp_path / "synacks-only.pcap"
    with (DATA / "storm-prefix" / "server.pcap").open("rb") as src, cut.open("wb") as dst:
        writer = dpkt.pcap.Writer(dst)
        for ts, frame in dpkt.pcap.Reader(src):
            tcp = dpkt.ethernet.Ethernet(frame).data.data
            if tcp.sport != 9092 or tcp.flags & dpkt.tcp.TH_SYN:
                writer.writepkt(frame, ts)
    result = analyse_stream(open_capture(cut), frozenset({9092}))
    nothing_later = Reason.NOTHING_LATER.text
    verdicts = [result.cookies.of(s) for s in range(len(result.analysis.connections))]
    assert len(verdicts) == 400
    assert {(v.cookie, v.reason) for v in verdicts} == {(None, nothing_later)}
    assert not [f for f in result.findings if f.kind == "syn-cookies-seen"]


@pytest.mark.parametrize("run", ["1", "2"])
def test_idle_storm_cookies_made_in_the_clock_phase(run: str) -> None:
    """Two idle storms of the pre-fix guest (tests/data/idle-storm-prefix): 1,000
    clients, 593 and 800 cookies, nothing sent for 15 s, so each connection's later
    segments are its FIN's. Every verdict is right; every cookie whose SYN-ACK lagged
    the clock beyond its millisecond rounding (tshark's numbers) is decided, by its
    jump or, where the server's delay could hide that, the phase; of those made in the
    clock's phase, the ones amid a run of cookies that began just after the last
    ordinary SYN-ACK are cookies by the phase (11 and 27; none while every ordinary
    SYN-ACK within 100 ms barred them); what stays undecided sat in the phase, cookie
    or not (in the first, a run that two ordinary SYN-ACKs in the phase led). In the
    second, one cookie's server answered the FIN with an ACK stamped 6 ms before it
    left: read alone it made the cookie ordinary ("off the phase"); its FIN 0.8 s
    later shows the jump."""
    doc, by_client, result = _analysed(DATA / "idle-storm-prefix" / run, "server.pcap.gz")
    truth = doc["connections"]
    said = {client: result.cookies.of(stream) for client, stream in by_client.items()}
    wrong = [c for c, t in truth.items() if said[c].cookie not in (None, t["cookie"])]
    assert not wrong, [(c, truth[c], said[c]) for c in wrong[:5]]
    judged = {c: t for c, t in truth.items() if t["synack_lag_ms"] is not None}
    lagging = [c for c, t in judged.items() if t["cookie"] and t["synack_lag_ms"] >= ROUNDING]
    # (where the server's delay could hide the jump, the phase decides)
    assert len(lagging) > 400 and all(said[c].cookie for c in lagging)
    assert {said[c].reason for c in lagging} <= {Reason.JUMP.text, Reason.PHASE.text}
    in_phase = [c for c, t in judged.items() if t["synack_lag_ms"] < ROUNDING]
    # (a lag between the rounding and ROUNDING may still show as a jump)
    assert {said[c].reason for c in in_phase if said[c].cookie} == {
        Reason.PHASE.text,
        Reason.JUMP.text,
    }
    assert sum(1 for c in in_phase if said[c].reason == Reason.PHASE.text) >= 10
    # what stays undecided sat in the phase, or a few ms behind it (a later segment
    # that left late, or stamped early, reads so), cookie or not
    left = [c for c in judged if said[c].cookie is None]
    behind = [c for c in left if said[c].reason == Reason.BEHIND_PHASE.text]
    assert left and set(left) - set(behind) <= set(in_phase)
    assert {said[c].reason for c in set(left) - set(behind)} == {Reason.IN_PHASE.text}
    assert len(behind) <= len(judged) // 20
    if run == "2":
        assert said["198.18.0.2:28848"].cookie is True


PLAIN_RUN = (
    "import sys\n"
    "from tcpsleuth import compiled\n"
    "compiled.PLAIN_PYTHON_BYTES = 1 << 40\n"
    "from tcpsleuth.cli.main import main\n"
    "main(sys.argv[1:])\n"
)


@pytest.mark.parametrize("capture", ["storm-prefix/server.pcap", "go-sniffer-kafka.pcap"])
def test_plain_python_and_compiled_loops_give_the_same_document(capture: str) -> None:
    """Small captures are analysed without numba (tcpsleuth.compiled): the whole JSON
    document must be the one the compiled loops give, on a storm's cookie verdicts
    and on Kafka timing alike; and the plain run must really not load numba."""
    argv = ["pcap", "--format", "json", "--all-connections", str(DATA / capture)]
    check_numba = (
        "import atexit\natexit.register(lambda: print('numba' in sys.modules, file=sys.stderr))\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", check_numba.replace("atexit\n", "atexit, sys\n") + PLAIN_RUN, *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    compiled = subprocess.run(
        [sys.executable, "-c", "from tcpsleuth.compiled import _compile_all\n"
         "assert _compile_all()\n" + PLAIN_RUN.replace("1 << 40", "0"), *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plain.stderr.strip().splitlines()[-1] == "False", plain.stderr
    assert plain.returncode == compiled.returncode, (plain.stderr, compiled.stderr)
    one, two = json.loads(plain.stdout), json.loads(compiled.stdout)
    assert len(one["files"][0]["connections"]) >= 2
    assert one == two
