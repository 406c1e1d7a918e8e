"""Root on a shared host (issue #24): what tcpsleuth writes, and the incident
directories it is handed, each break reproduced for real (symbolic links to files
outside, a 1777 directory, a directory that is a link, a tmpfs that is full, FIFOs and
devices, two recorders whose paths contain each other, an exporter stopped by a signal,
clients that reset) and held to the contract: exit 0 or 1 with a document, or 2 with one
line; no traceback; nothing outside changed.

The full file systems are small tmpfs mounts (root), unmounted afterwards; the
recorders run in a namespace of their own for a few seconds."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, default_signals

from tcpsleuth import safefile
from tcpsleuth.recorder.children import processes_of

INCIDENT = REPO / "tests" / "data" / "incident-small"
KAFKA_PCAP = REPO / "tests" / "data" / "go-sniffer-kafka.pcap"


def tcpsleuth(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The contract's exit 2: one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def incident_copy(where: Path, report: bool = False) -> Path:
    """The committed incident, as root's own (mode 0700), without its report unless
    asked: `report` then analyses it and writes report.json and report.html."""
    directory = where / "incident-20261206T085553Z"
    shutil.copytree(INCIDENT, directory)
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    if not report:
        (directory / "report.json").unlink()
    return directory


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(mount: Path) -> None:
    """Every block of the file system taken."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):  # the last part of a page, if any
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def leftovers(directory: Path) -> list[str]:
    """Temporary files of safefile (``.NAME.<hex>.tmp``) or anything named *.tmp."""
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


# --- writes through symbolic links ---------------------------------------------------


@pytest.mark.parametrize("name", ["report.html", "report.json.tmp", "report.json"])
def test_report_never_writes_through_a_link_in_the_incident(tmp_path: Path, name: str) -> None:
    """report.html (or the old temporary name, or report.json) as a link to a file
    outside: one line, the file outside unchanged, with and without --again."""
    directory = incident_copy(tmp_path)
    outside = tmp_path / "outside.conf"
    outside.write_text("precious\n")
    before = digest(outside)
    (directory / name).symlink_to(outside)
    for extra in ((), ("--again",)):
        line = one_line(tcpsleuth("report", str(directory), *extra))
        assert f"{directory / name}: a symbolic link" in line
        assert digest(outside) == before


def test_safe_write_replaces_only_regular_files(tmp_path: Path) -> None:
    """The primitive itself: a file that is there is replaced whole (not truncated in
    place: a hard link to it keeps the old content); a link there is refused, its
    target unchanged."""
    target = tmp_path / "out.html"
    target.write_text("old\n")
    other_name = tmp_path / "hard-link"
    os.link(target, other_name)
    safefile.write_file(target, "new\n")
    assert target.read_text() == "new\n" and other_name.read_text() == "old\n"
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    link = tmp_path / "link.html"
    link.symlink_to(outside)
    with pytest.raises(safefile.WriteError, match="a symbolic link"):
        safefile.write_file(link, "x")
    assert outside.read_text() == "precious\n" and link.is_symlink()
    assert leftovers(tmp_path) == []


def test_html_output_through_a_link_is_refused(tmp_path: Path) -> None:
    """--html naming a link (planted in a shared directory, say) is refused before any
    work, for pcap and report; the link's target is unchanged."""
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    link = tmp_path / "r.html"
    link.symlink_to(outside)
    line = one_line(tcpsleuth("pcap", "--html", str(link), str(KAFKA_PCAP)))
    assert f"{link}: a symbolic link (to {outside})" in line
    directory = incident_copy(tmp_path, report=True)
    line = one_line(tcpsleuth("report", str(directory), "--html", str(link)))
    assert "a symbolic link" in line
    assert outside.read_text() == "precious\n"


def test_pcap_plots_never_go_through_a_link_in_their_directory(tmp_path: Path) -> None:
    """--plot DIR where a graph's name is a link planted to a file outside: one line,
    the file outside unchanged (matplotlib wrote through it)."""
    plots = tmp_path / "plots"
    plots.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    (plots / "stream0-tsg.png").symlink_to(outside)
    storm = REPO / "tests" / "data" / "storm-prefix" / "server.pcap"
    line = one_line(tcpsleuth("pcap", "--plot", str(plots), str(storm)))
    assert (
        f"{plots / 'stream0-tsg.png'}: cannot write the graphs or report (a symbolic link)" in line
    )
    assert outside.read_text() == "precious\n"


# --- incident directories handed over ------------------------------------------------


def _samples_without_time(d: Path) -> None:
    lines = (d / "samples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    del first["time"]
    (d / "samples.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


def _nan_time(d: Path) -> None:
    text = (d / "samples.jsonl").read_text()
    first, rest = text.split("\n", 1)
    (d / "samples.jsonl").write_text(
        first.replace(first[first.index('"time": ') : first.index(",")], '"time": NaN')
        + "\n"
        + rest
    )


MALFORMED = {
    "report.json a list": (
        lambda d: (d / "report.json").write_text("[1, 2]"),
        "report.json: expected an object, found a list",
    ),
    "report.json findings of another shape": (
        lambda d: (d / "report.json").write_text('{"findings": [{"kind": 1}]}'),
        "report.json.findings[0].kind: expected a string",
    ),
    "report.json with NaN": (
        lambda d: (d / "report.json").write_text('{"syn_cookies": {"sent": NaN}}'),
        "report.json: not JSON (NaN is not a number JSON allows)",
    ),
    "samples without times": (_samples_without_time, "samples.jsonl:1: no 'time'"),
    "a NaN time": (_nan_time, "samples.jsonl:1: not JSON (NaN"),
    "a .gz that is not gzip": (
        lambda d: (d / "sockets-during.json.gz").write_bytes(b"not gzip at all"),
        "sockets-during.json.gz: not gzip",
    ),
    "sockets of another shape": (
        lambda d: (d / "sockets-later.json.gz").write_bytes(
            gzip.compress(b'{"listeners": [], "connections": [{"local_ip": 1}]}')
        ),
        "sockets-later.json.gz.connections[0].local_ip: expected a string",
    ),
    "events not objects": (
        lambda d: (d / "events.jsonl").write_text("[]\n"),
        "events.jsonl:1: expected an object, found a list",
    ),
    "recorder.json ports as text": (
        lambda d: (d / "recorder.json").write_text('{"ports": "9092"}'),
        "recorder.json.ports: expected a list",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_incident_file_is_one_line(tmp_path: Path, case: str) -> None:
    """Each was exit 3 (a traceback) or invalid JSON on stdout; now exit 2 and one line
    naming the file, the place in it and what is wrong."""
    spoil, said = MALFORMED[case]
    directory = incident_copy(tmp_path, report=case.startswith("report.json"))
    spoil(directory)
    for fmt in ("table", "json"):
        result = tcpsleuth("report", str(directory), "--format", fmt)
        line = one_line(result)
        assert said in line, line
        assert result.stdout == ""


def test_report_json_output_is_strict_json(tmp_path: Path) -> None:
    """The real incident, analysed anew: exit 1 (its findings are warnings) and a
    document without NaN or infinities, which strict JSON readers refuse."""
    directory = incident_copy(tmp_path)
    result = tcpsleuth("report", str(directory), "--format", "json")
    assert result.returncode == 1, result.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the report")

    doc = json.loads(result.stdout, parse_constant=refuse)
    assert doc["incident"] == directory.name and doc["events"]
    assert (directory / "report.json").is_file() and (directory / "report.html").is_file()
    assert leftovers(directory) == []


@pytest.mark.parametrize("kind", ["fifo", "device", "link-out"])
def test_no_fifo_device_or_link_out_is_read(tmp_path: Path, kind: str) -> None:
    """A FIFO nobody writes (the report hung), a device (here /dev/zero's numbers, which
    would be read forever) and a bundle that is a link to a directory outside: refused in
    one line, at once."""
    directory = incident_copy(tmp_path)
    if kind == "fifo":
        (directory / "samples.jsonl").unlink()
        os.mkfifo(directory / "samples.jsonl")
        named = "samples.jsonl: a FIFO"
    elif kind == "device":
        (directory / "capture.pcap").unlink()
        os.mknod(directory / "capture.pcap", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        named = "capture.pcap: a character device"
    else:
        shutil.rmtree(directory / "bundle")
        (directory / "bundle").symlink_to("/etc")
        named = "bundle: a symbolic link (to /etc)"
    started = time.monotonic()
    line = one_line(tcpsleuth("report", str(directory), "--again", timeout=60))
    assert named in line and time.monotonic() - started < 30


def test_report_on_a_foreign_incident_shows_and_does_not_save(tmp_path: Path) -> None:
    """An incident of another user's (uid 1000, mode 0777): analysed and shown (exit 1,
    the document), one line saying it is not saved there, nothing written into it, its
    mode unchanged."""
    directory = incident_copy(tmp_path)
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, 1000, 1000, follow_symlinks=False)
    directory.chmod(0o777)
    before = sorted(p.name for p in directory.iterdir())
    result = tcpsleuth("report", str(directory), "--format", "json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["incident"] == directory.name
    assert result.stderr.count("\n") == 1
    assert f"not saved in {directory} (it belongs to uid 1000)" in result.stderr
    assert sorted(p.name for p in directory.iterdir()) == before
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777


def test_report_on_a_read_only_incident_shows_and_does_not_save(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "4m") as mount:
        directory = incident_copy(mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        result = tcpsleuth("report", str(directory), "--format", "json")
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["incident"] == directory.name
        assert "(it is read-only)" in result.stderr and result.stderr.count("\n") == 1
        assert not (directory / "report.json").exists()


# --- a full file system: nothing partial ---------------------------------------------


def test_report_on_a_full_file_system_leaves_nothing_partial(tmp_path: Path) -> None:
    """report --again into its own incident, and --html into a full place: exit 2, one
    line; the report.json that was there is unchanged, no temporary file is left."""
    with tmpfs(tmp_path / "full", "2m") as mount:
        directory = incident_copy(mount, report=True)
        before = digest(directory / "report.json")
        fill(mount)
        line = one_line(tcpsleuth("report", str(directory), "--again"))
        assert "no space left on the file system" in line
        assert digest(directory / "report.json") == before
        assert not (directory / "report.html").exists()
        line = one_line(tcpsleuth("report", str(directory), "--html", str(mount / "r.html")))
        assert f"{mount / 'r.html'}: cannot write it (no space left" in line
        assert not (mount / "r.html").exists()
        assert leftovers(mount) == []


def test_pcap_html_on_a_full_file_system_leaves_no_partial_page(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full") as mount:
        page = mount / "r.html"
        page.write_text("the last good page\n")
        fill(mount)
        line = one_line(tcpsleuth("pcap", "--html", str(page), str(KAFKA_PCAP)))
        assert "No space left on device" in line
        assert page.read_text() == "the last good page\n"
        assert leftovers(mount) == []


def test_an_append_that_does_not_fit_is_cut_off_again(tmp_path: Path) -> None:
    """The recorder's JSON lines: a line that does not fit is not left half-written."""
    with tmpfs(tmp_path / "full") as mount:
        lines = mount / "samples.jsonl"
        safefile.append_file(lines, b'{"time": 1}\n')
        fill(mount)
        with pytest.raises(safefile.WriteError, match="no space left"):
            safefile.append_file(lines, b'{"time": 2, "pad": "' + b"x" * 200_000 + b'"}\n')
        assert lines.read_bytes() == b'{"time": 1}\n'


# --- the recorder ----------------------------------------------------------------------


def record(directory: Path, netns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "record", "--port", "9092", "--dir",
         str(directory), "--netns", netns, "--trace", "0", "--format", "json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
    )  # fmt: skip


def finished(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, list[dict], str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, [json.loads(x) for x in out.splitlines() if x.strip()], err


def wait_ready(process: subprocess.Popen[str]) -> dict:
    assert process.stdout is not None
    for line in process.stdout:
        doc = json.loads(line)
        if doc["type"] == "ready":
            return doc
    raise AssertionError(f"no ready line: {finished(process)}")


def test_record_leaves_the_mode_of_what_it_did_not_make(netns: str, tmp_path: Path) -> None:
    """A 1777 directory: refused in one line (others could plant links in it), its
    mode unchanged (the old recorder made it 0700). A link to a directory of root's
    (mode 0750): used, the link still a link and the directory still 0750."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    code, lines, err = finished(record(shared, netns, "--duration", "2"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "others can write it (mode 1777)" in err and lines == []
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    target = tmp_path / "target"
    target.mkdir()
    target.chmod(0o750)
    link = tmp_path / "rec"
    link.symlink_to(target)
    code, lines, err = finished(record(link, netns, "--duration", "2"))
    assert code == 0, err
    assert [x for x in lines if x["type"] == "stopped"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o750 and link.is_symlink()
    assert stat.S_IMODE((target / "ring").stat().st_mode) == 0o700  # made by it


def test_record_on_a_full_file_system_pauses_the_capture(netns: str, tmp_path: Path) -> None:
    """The guide's promise: "capture paused", and on (it was exit 3 on the lock file)."""
    with tmpfs(tmp_path / "full") as mount:
        directory = mount / "rec"
        directory.mkdir(mode=0o700)
        fill(mount)
        code, lines, err = finished(record(directory, netns, "--duration", "3"))
        assert code == 0 and err == "", err
        paused = [x for x in lines if x["type"] == "problem" and x["what"] == "capture"]
        assert paused and "no room left on the file system" in paused[0]["line"], lines
        assert [x for x in lines if x["type"] == "stopped"]
        assert processes_of(directory, directory / "ring") == []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_recorder_never_ends_another_recorders_tcpdump(netns: str, tmp_path: Path) -> None:
    """Recorder A on .../srv/<this test's directory>/rec, recorder B on <this test's
    directory>/rec: B's ring path is a substring of A's. B's start used to kill A's
    tcpdump as "stale"; A's tcpdump is still the same process after B ran."""
    inner = tmp_path / "rec"
    outer = tmp_path / "srv" / tmp_path.relative_to("/") / "rec"
    assert f"{inner}/ring/" in f"{outer}/ring/"
    first = record(outer, netns)
    try:
        wait_ready(first)
        [tcpdump] = [p for p in processes_of(outer, outer / "ring") if _comm(p) == "tcpdump"]
        code, lines, err = finished(record(inner, netns, "--duration", "2"))
        assert code == 0, err
        assert not [x for x in lines if x["type"] == "recovered"], lines
        assert _comm(tcpdump) == "tcpdump" and tcpdump in processes_of(outer, outer / "ring")
    finally:
        first.send_signal(signal.SIGTERM)
        code, _lines, err = finished(first)
    assert code == 128 + signal.SIGTERM, err
    assert processes_of(outer, outer / "ring") == []


# --- the exporter ----------------------------------------------------------------------


def exporter(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "exporter", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return process
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exporter_exits_128_plus_the_signal(sig: int) -> None:
    from support.monitoring import free_port

    process = exporter(free_port())
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:  # it ignored the signal (it once did: see exporter.py)
            process.kill()
            process.communicate()
    assert process.returncode == 128 + sig, err
    assert "Traceback" not in err


def test_exporter_says_one_line_per_client_that_resets() -> None:
    """Three clients send half a request and reset the connection: three lines, no
    traceback, and the exporter still serves."""
    from support.monitoring import free_port, get

    port = free_port()
    process = exporter(port)
    try:
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET /metr")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST
        time.sleep(0.5)
        assert "tcpsleuth_scrape_success" in get(f"http://127.0.0.1:{port}/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 143, err
    assert err.count("went away mid-request (Connection reset by peer)") == 3, err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_the_exporter_unit_counts_143_and_130_as_success(tmp_path: Path) -> None:
    unit = (REPO / "deploy" / "systemd" / "tcpsleuth-exporter.service").read_text()
    [line] = [x for x in unit.splitlines() if x.startswith("SuccessExitStatus=")]
    assert set(line.split("=", 1)[1].split()) == {"143", "130"}
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    tcpsleuth_bin = shutil.which("tcpsleuth") or sys.executable
    (tmp_path / "tcpsleuth-exporter.service").write_text(
        unit.replace("/usr/local/bin/tcpsleuth", tcpsleuth_bin)
    )
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "tcpsleuth-exporter.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "tcpsleuth-exporter" not in result.stderr, result.stderr


@pytest.mark.parametrize("port", ["9\u00b2", "9" * 5000, "0", "65536"])
@pytest.mark.parametrize(
    ("command", "option"), [("exporter", "--listen"), ("record", "--metrics-listen")]
)
def test_a_listen_port_that_only_looks_like_one_is_one_line(
    command: str, option: str, port: str, tmp_path: Path
) -> None:
    """A superscript or 5,000 digits passed str.isdigit and ended in int() (exit 3)."""
    extra = ("--port", "9", "--dir", str(tmp_path / "rec")) if command == "record" else ()
    line = one_line(tcpsleuth(command, *extra, option, f"127.0.0.1:{port}"))
    assert f"{option} '127.0.0.1:" in line and "expected HOST:PORT" in line
    assert not (tmp_path / "rec").exists()
