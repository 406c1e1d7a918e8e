"""The `ss` text parser on real output of old and new iproute2 (tests/fixtures/ss)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import FIXTURES

from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import endpoint
from tcpsleuth.sources.sstext import parse_endpoint, parse_ss, read_ss_file

SS = FIXTURES / "ss"
LAB = [*sorted(SS.glob("lab-*-tni*.txt")), SS / "lab-fault-server-tnie.txt"]
# A socket line of `ss -tn*` as new iproute2 writes it, and the wscale of its details.
MAIN = re.compile(r"^(?:ESTAB|LISTEN)?\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+)", re.M)
WSCALE = re.compile(r"wscale:(\d+),(\d+)")


def _oracle(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(local, remote) -> wscale, read with two regular expressions, line by line."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    key = None
    for line in path.read_text().splitlines():
        if line.startswith(("ESTAB", *"0123456789")):
            match = MAIN.match(line)
            assert match
            key = tuple(endpoint(*parse_endpoint(t)) for t in match.group(3, 4))
        elif key and (found := WSCALE.search(line)):
            out[key] = (int(found.group(1)), int(found.group(2)))  # type: ignore[index]
    return out


@pytest.mark.parametrize("path", LAB, ids=lambda p: p.name)
def test_lab_output_connections_and_wscale(path: Path) -> None:
    table = read_ss_file(path)
    parsed = {(c.local, c.remote): (c.snd_wscale, c.rcv_wscale) for c in table.connections}
    assert parsed == _oracle(path)
    assert len(parsed) == 4
    assert any(local.startswith("[2001:db8::") for local, _ in parsed)


def test_lab_fault_client_fields() -> None:
    text = (SS / "lab-fault-client-tni.txt").read_text()
    table = parse_ss(text, "client")
    by_local = {c.local: c for c in table.connections}
    details = dict(
        zip(
            [endpoint(*parse_endpoint(m.group(3))) for m in MAIN.finditer(text)],
            [line for line in text.splitlines() if line.startswith("\t")],
            strict=True,
        )
    )
    for local, line in details.items():
        conn = by_local[local]
        assert conn.snd_wnd == int(re.search(r"snd_wnd:(\d+)", line).group(1))
        assert conn.mss == int(re.search(r" mss:(\d+)", line).group(1))
        assert conn.rtt == float(re.search(r"rtt:([\d.]+)/", line).group(1))
        assert conn.busy_time == 1000 * int(re.search(r"busy:(\d+)ms", line).group(1))
        limited = re.search(r"rwnd_limited:(\d+)ms\(([\d.]+)%\)", line)
        assert conn.rwnd_limited == 1000 * int(limited.group(1))
        # the percentage ss prints is rwnd_limited / busy
        assert round(100 * conn.rwnd_limited / conn.busy_time, 1) == pytest.approx(
            float(limited.group(2)), abs=0.1
        )
        # ss -tni (no -e, no -o) does not print ts/sack: unknown, not "off"
        assert conn.timestamps is None and conn.sack is None


def test_header_and_no_header_give_the_same_sockets() -> None:
    with_header = read_ss_file(SS / "lab-fault-client-tni.txt").connections
    without = read_ss_file(SS / "lab-fault-client-tniH.txt").connections
    assert {(c.local, c.remote, c.snd_wscale) for c in with_header} == {
        (c.local, c.remote, c.snd_wscale) for c in without
    }


def test_extended_output_flags_and_inode() -> None:
    path = SS / "lab-fault-server-tnie.txt"
    inodes = {int(x) for x in re.findall(r" ino:(\d+)", path.read_text())}
    table = read_ss_file(path)
    assert {c.inode for c in table.connections} == inodes
    assert all(c.timestamps is True and c.sack is True for c in table.connections)
    assert all(c.ecn is False for c in table.connections)  # shown with -e, and absent


def test_listeners_with_and_without_details() -> None:
    text = (SS / "lab-fault-server-ltn.txt").read_text()
    expected = {
        (endpoint(*parse_endpoint(m.group(2))), int(m.group(1)))
        for m in re.finditer(r"^LISTEN\s+\d+\s+(\d+)\s+(\S+)", text, re.M)
    }
    plain = read_ss_file(SS / "lab-fault-server-ltn.txt", default_state="LISTEN")
    with_details = read_ss_file(SS / "lab-fault-server-tnai.txt")
    for table in (plain, with_details):
        assert {(x.local, x.backlog) for x in table.listeners} == expected
    assert len(expected) == 2
    assert len(with_details.connections) == 4


def test_mail_wrapped_old_output() -> None:
    # 2013, `ss -emoi`: Netid column; timer/ino and details wrapped at column 0
    (conn,) = read_ss_file(SS / "old-iproute2-2013-emoi-mailwrapped.txt").connections
    assert (conn.local, conn.remote) == ("10.7.7.84:54127", "10.7.7.83:34342")
    assert (conn.send_q, conn.snd_wscale, conn.rcv_wscale) == (1154056, 7, 6)
    assert (conn.rtt, conn.rttvar, conn.cwnd, conn.ssthresh) == (107.375, 1.0, 568, 108)
    assert (conn.unacked, conn.retrans_total, conn.rcv_space) == (568, 21, 29200)
    assert conn.inode == 57003 and conn.timestamps is True
    # 2014, `ss -ti` on 3.15: the peer address wrapped onto its own line
    (conn,) = read_ss_file(SS / "old-iproute2-2014-ti-kernel3.15-mailwrapped.txt").connections
    assert (conn.local, conn.remote, conn.send_q) == (
        "10.246.7.151:57614",
        "10.246.7.152:46811",
        325800,
    )
    assert (conn.rtt, conn.mss, conn.cwnd, conn.unacked, conn.retrans_total) == (
        0.081,
        1448,
        90,
        90,
        305,
    )
    # fields that kernel did not have stay unknown
    assert conn.snd_wnd is None and conn.busy_time is None and conn.bytes_acked is None
    # 2014 without -n: service names
    (conn,) = read_ss_file(SS / "old-iproute2-2014-ti-servicenames-mailwrapped.txt").connections
    assert conn.remote == "172.17.131.143:22" and conn.rcv_space == 87812


def test_old_unbracketed_ipv6() -> None:
    (conn,) = read_ss_file(SS / "old-iproute2-2016-ti-kernel4.6-ipv6.txt").connections
    assert conn.local == "[face:face:face:face::1]:22"
    assert conn.remote == "[face:face:face:face::face]:46779"
    assert (conn.recv_q, conn.send_q, conn.snd_wscale, conn.rcv_wscale) == (801736, 360, 9, 7)
    assert (conn.bytes_received, conn.retrans_total, conn.rcv_space) == (334034603, 1, 1241704)


def test_2019_multi_line_and_one_line_agree() -> None:
    (multi,) = read_ss_file(SS / "iproute2-2019-emoitn.txt").connections
    (one,) = read_ss_file(SS / "iproute2-2019-emoitnO.txt").connections
    for conn in (multi, one):
        assert (conn.local, conn.remote, conn.inode) == (
            "127.0.0.1:13265",
            "127.0.0.1:36743",
            48271,
        )
        assert (conn.snd_wscale, conn.rcv_wscale, conn.mss, conn.rcv_space) == (7, 7, 65483, 43725)
    assert one.busy_time == 1861946 * 1000 and one.rwnd_limited == 0  # busy printed, no limits
    assert multi.busy_time is None


def test_mixed_protocols_keep_only_tcp() -> None:
    for name, established in (
        ("pcp-qa-ubuntu-iproute5-noemitauO.txt", r"^tcp\s+ESTAB"),
        ("jc-centos7.7-kernel3.10-a.txt", r"^tcp\s+ESTAB"),
        ("jc-ubuntu18.04-kernel4.15-a.txt", r"^tcp\s+ESTAB"),
    ):
        text = (SS / name).read_text()
        table = parse_ss(text, name)
        assert len(table.connections) == len(re.findall(established, text, re.M)), name
        assert len(table.listeners) == len(re.findall(r"^tcp\s+LISTEN", text, re.M)), name
    table = read_ss_file(SS / "pcp-qa-ubuntu-iproute5-noemitauO.txt")
    ssh = [c for c in table.connections if c.local_port == 22]
    assert ssh and all((c.snd_wscale, c.rcv_wscale) == (7, 7) for c in ssh)


def test_unreadable_line_is_named() -> None:
    # upstream anonymised an address into 123.456.78.90 on line 44
    with pytest.raises(InputError, match=r"noemitauO-anonymised\.txt:44: cannot read"):
        read_ss_file(SS / "pcp-qa-fedora-iproute5-noemitauO-anonymised.txt")


def test_garbage_after_good_lines_is_named(tmp_path: Path) -> None:
    good = (SS / "lab-fault-client-tni.txt").read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*good[:3], "this is not ss output", *good[3:]]) + "\n")
    with pytest.raises(InputError, match=r"bad\.txt:4: "):
        read_ss_file(bad)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("[::ffff:10.0.0.1]:9092", ("::ffff:a00:1", 9092)),
        ("::ffff:10.0.0.1:9092", ("::ffff:a00:1", 9092)),
        (":::*", ("::", 0)),
        ("[::]:*", ("::", 0)),
        ("*:22", ("0.0.0.0", 22)),
        ("127.0.0.53%lo:53", ("127.0.0.53", 53)),
        ("[fe80::1%eth0]:22", ("fe80::1", 22)),
    ],
)
def test_endpoint_spellings(token: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(token) == expected
    # both ends of a connection name a mapped address the same way
    assert endpoint("::ffff:10.0.0.1", 1) == endpoint("10.0.0.1", 1)


_GOOD = (
    "State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"
    "ESTAB 0      0      10.0.0.1:9092      10.0.0.2:40000\n"
    "\t cubic wscale:7,7 rto:204 rtt:0.5/0.25 mss:1448 cwnd:10 bytes_acked:100 "
    "busy:20ms rwnd_limited:10ms(50.0%) ino:77\n"
)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("cwnd:10", "cwnd:" + "9" * 40),  # longer than any count: not a 40-digit int
        ("cwnd:10", "cwnd:" + "9" * 5000),  # past int()'s own limit
        ("cwnd:10", "cwnd:+10"),  # a `+` anywhere reads every number the careful way
        ("cwnd:10", "cwnd:١٠"),  # Arabic-Indic digits: int() would read 10
        ("rtt:0.5/0.25", "rtt:nan/0.25"),
        ("rtt:0.5/0.25", "rtt:0.5/inf"),
        ("rto:204", "rto:1e999"),
        ("rto:204", "rto:-204"),
        ("wscale:7,7", "wscale:-1,7"),
        ("busy:20ms", "busy:" + "9" * 40 + "ms"),
    ],
)
def test_a_number_past_its_bounds_is_one_line_naming_it(field: str, bad: str) -> None:
    """The numbers of ``ss -i`` details are read in a fast way in an ASCII file (#25);
    every value outside what the careful reading takes is still refused by name."""
    good = parse_ss(_GOOD, "good.txt").connections[0]
    assert (good.cwnd, good.rtt, good.rto, good.busy_time) == (10, 0.5, 204.0, 20_000)  # busy in µs
    assert field in _GOOD
    with pytest.raises(InputError, match=r"^bad\.txt:2: ") as error:
        parse_ss(_GOOD.replace(field, bad), "bad.txt")
    assert "\n" not in str(error.value) and len(str(error.value)) < 200
