"""detectors/capture/windows.py called directly: rwnd-limited from a capture's analysis,
one finding per connection, or one for a server when many of its clients are held."""

from __future__ import annotations

from pathlib import Path

from support.pcap_gen import held_back

from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.run import follow
from tcpsleuth.detectors.capture.windows import rwnd_findings
from tcpsleuth.detectors.thresholds import RWND_PER_LISTENER
from tcpsleuth.sources.pcap import open_capture


def _analysis(path: Path, clients: int) -> Analysis:
    analysis, _ = follow(open_capture(Path(held_back(path, clients))), frozenset())
    return analysis


def test_a_client_held_at_the_window_is_one_finding(tmp_path: Path) -> None:
    [found] = rwnd_findings(_analysis(tmp_path / "one.pcap", 1))
    assert found.kind == "rwnd-limited"
    assert found.subject == {"client": "10.0.0.2:40000", "server": "10.0.0.1:9092"}
    evidence = found.evidence
    assert (evidence["direction"], evidence["waits"]) == ("c2s", 12)
    # 12 waits of 10.55 ms each (held_back: window 0 at 0.5 ms, opened at 10.5 ms to a
    # single segment, so each wait ends with the client's next send 0.05 ms later)
    assert 12 * 10.5 <= evidence["rwnd_limited_ms"] <= 12 * 10.6


def test_many_clients_of_one_server_are_one_finding_for_the_server(tmp_path: Path) -> None:
    few = rwnd_findings(_analysis(tmp_path / "few.pcap", RWND_PER_LISTENER))
    assert len(few) == RWND_PER_LISTENER  # up to the limit: each connection its own
    assert {f.subject["client"] for f in few} == {
        f"10.0.0.2:{40000 + n}" for n in range(RWND_PER_LISTENER)
    }
    [storm] = rwnd_findings(_analysis(tmp_path / "many.pcap", RWND_PER_LISTENER + 1))
    assert storm.subject == {"client": "*", "server": "10.0.0.1:9092"}
    assert storm.evidence["connections"] == RWND_PER_LISTENER + 1
    assert storm.summary.startswith(f"{RWND_PER_LISTENER + 1} connections: the client waited")
