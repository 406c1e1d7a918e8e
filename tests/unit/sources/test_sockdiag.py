"""The live sock_diag source against `ss` on real sockets in a test namespace."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator

import pytest
from conftest import Farm, run_tcpsleuth

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.model.sockdiag import field_end
from tcpsleuth.sources import sockdiag
from tcpsleuth.sources.sstext import parse_ss

IPV4_CLIENTS, IPV6_CLIENTS = 300, 100


def _ss(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ss", *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def farm_ns() -> Iterator[str]:
    from tcpsleuth.lab import namespaces

    with namespaces.namespace("sockdiag") as ns:
        farms = [
            Farm(ns, "--port", "9092", "--backlog", "512", "--clients", str(IPV4_CLIENTS)),
            Farm(
                ns,
                "--port",
                "9093",
                "--backlog",
                "77",
                "--clients",
                str(IPV6_CLIENTS),
                "--host",
                "::1",
            ),
        ]
        try:
            yield ns
        finally:
            for farm in farms:
                farm.stop()


def _ss_precision(value: float | None) -> str | None:
    # ss prints rtt with printf's %g (tcpi_rtt / 1000, in ms)
    return None if value is None else f"{value:g}"


def test_agrees_with_ss_field_by_field(farm_ns: str) -> None:
    live = sockdiag.snapshot(farm_ns)
    text = parse_ss(_ss(farm_ns, "-tniH"), "ss -tniH")
    ours = {(c.local, c.remote): c for c in live.connections}
    theirs = {(c.local, c.remote): c for c in text.connections}
    assert len(ours) == 2 * (IPV4_CLIENTS + IPV6_CLIENTS)
    assert set(ours) == set(theirs)
    for key, conn in ours.items():
        other = theirs[key]
        for name in ("state", "snd_wscale", "rcv_wscale", "snd_wnd", "cwnd", "mss", "rcv_space"):
            assert getattr(conn, name) == getattr(other, name), (key, name)
        assert _ss_precision(conn.rtt) == _ss_precision(other.rtt), key
        assert (conn.recv_q, conn.send_q) == (other.recv_q, other.send_q)
    # records built in bulk are the same objects TcpConnection() makes
    sample = live.connections[0]
    assert TcpConnection(**sample.__dict__) == sample
    assert set(sample.__dict__) == {f.name for f in dataclasses.fields(TcpConnection)}
    # the IPv6 farm really is IPv6
    assert sum(1 for local, _ in ours if local.startswith("[::1]")) == 2 * IPV6_CLIENTS


def test_listeners_agree_with_ss(farm_ns: str) -> None:
    live = sockdiag.snapshot(farm_ns)
    text = parse_ss(_ss(farm_ns, "-ltn"), "ss -ltn")
    assert {(x.local, x.backlog, x.accept_queue) for x in live.listeners} == {
        (x.local, x.backlog, x.accept_queue) for x in text.listeners
    }
    assert {x.backlog for x in live.listeners} == {512, 77}


def test_filters_by_port_and_address(farm_ns: str) -> None:
    by_port = sockdiag.snapshot(farm_ns, ports=frozenset({9093}))
    assert len(by_port.connections) == 2 * IPV6_CLIENTS
    assert [x.local_port for x in by_port.listeners] == [9093]
    by_address = sockdiag.snapshot(farm_ns, addresses=["::1"])
    assert {c.local_ip for c in by_address.connections} == {"::1"}
    assert len(by_address.connections) == 2 * IPV6_CLIENTS
    # an IPv4 address also matches its IPv4-mapped form (there are none here)
    assert len(sockdiag.snapshot(farm_ns, addresses=["127.0.0.1"]).connections) == 2 * IPV4_CLIENTS


def _four_tuples(text: str) -> set[tuple[str, str]]:
    return {(c.local, c.remote) for c in parse_ss(text, "ss").connections}


@pytest.mark.parametrize("ports", [{9093}, {9092}, {9092, 9093}, {1}])
def test_kernel_port_filter_agrees_with_ss(farm_ns: str, ports: set[int]) -> None:
    """The bytecode filter keeps what ss's own kernel filter keeps, both directions of
    each connection (server sockets by local port, clients by remote port)."""
    ours = sockdiag.dump(farm_ns, ports=ports)
    expression = " or ".join(f"sport = :{p} or dport = :{p}" for p in sorted(ports))
    theirs = _four_tuples(_ss(farm_ns, "-tnH", "state", "established", f"( {expression} )"))
    kept = {(c.local, c.remote) for c in ours.connections()}
    assert kept == theirs
    assert len(kept) == 2 * sum({9092: IPV4_CLIENTS, 9093: IPV6_CLIENTS}.get(p, 0) for p in ports)
    # the same sockets as the whole dump filtered in Python
    whole = sockdiag.dump(farm_ns).filtered(ports=ports)
    assert kept == {(c.local, c.remote) for c in whole.connections()}
    assert sorted(x.local_port for x in ours.listeners()) == sorted(
        x.local_port for x in whole.listeners()
    )


def test_kernel_port_filter_of_many_ports(farm_ns: str) -> None:
    """Many ports make jumps longer than one op's 8-bit 'yes' could hold: the program
    only ever jumps forward by 'no' (16 bits), so 1,000 ports still load."""
    ours = sockdiag.dump(farm_ns, ports=set(range(9000, 10000)))
    assert len(ours.connections()) == 2 * (IPV4_CLIENTS + IPV6_CLIENTS)


def test_without_tcp_info(farm_ns: str) -> None:
    """What host.py asks for (states and queues only): no INET_DIAG_INFO attribute."""
    bare = sockdiag.snapshot(farm_ns, with_info=False)
    full = sockdiag.snapshot(farm_ns)
    assert {(c.local, c.remote, c.recv_q) for c in bare.connections} == {
        (c.local, c.remote, c.recv_q) for c in full.connections
    }
    assert all(c.snd_wscale is None and c.rtt is None for c in bare.connections)
    assert {x.local for x in bare.listeners} == {x.local for x in full.listeners}


def test_old_kernels_short_tcp_info(farm_ns: str) -> None:
    """A kernel older than 4.10 sends tcp_info without busy_time and later fields."""
    dump = sockdiag.dump(farm_ns)
    cut = field_end("total_retrans") + 32  # 3.x-era length, up to bytes_received
    info = dump.info.copy()
    short = sockdiag.DiagDump(dump.diag, info, dump.info_len.copy())
    short.info_len[:] = cut
    conn = short.connections()[0]
    assert conn.bytes_received is not None and conn.snd_wscale is not None
    assert conn.busy_time is None and conn.snd_wnd is None and conn.segs_out is None


def test_cli_live_namespace_json(farm_ns: str) -> None:
    import json

    result = run_tcpsleuth("sockets", "--netns", farm_ns, "--port", "9093", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["counts"]["connections"] == 2 * IPV6_CLIENTS
    # both ends are in this namespace: 9093 is served here and used as a client here
    by_port = {(row["port"], row["side"]): row for row in doc["summary"]["by_port"]}
    assert set(by_port) == {(9093, "server"), (9093, "client")}
    assert by_port[(9093, "server")]["connections"] == IPV6_CLIENTS
    assert doc["listeners"][0]["backlog"] == 77


def test_missing_namespace_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no network namespace named"):
        sockdiag.snapshot("tcpsleuth-does-not-exist")
    result = run_tcpsleuth("sockets", "--netns", "tcpsleuth-does-not-exist")
    assert result.returncode == 2 and "no network namespace" in result.stderr
    assert "Traceback" not in result.stderr
