"""What others write reaches the user safely (issue 24, docs/threat-model.md): no control
character read from a bundle, a capture or a host reaches the terminal or stderr raw;
numbers that only look like numbers (``²``, ``٣``, 5,000 digits) end a command with one
line, exit 2, never a traceback; JSON never carries NaN or Infinity; a bundle's FIFO,
device or symlink out of it is one line, never a hang.

The hostile inputs are real files (the storm bundle, a real ``ss -ltnmp``) with one
value replaced, so each test fails for the one reason it names."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, FIXTURES
from rich.text import Text

from tcpsleuth.model.text import shortened, to_float
from tcpsleuth.reports import jsonout, table

STORM = FIXTURES / "bundles" / "debian12-6.18-storm"
LTNMP = FIXTURES / "ss" / "iproute2-6.1-ltnmp-servers.txt"
TNI = FIXTURES / "ss" / "lab-fault-client-tni.txt"

# what a hostile hostname or process name carries: retitle the terminal, clear it, red
TITLE = "\x1b]0;owned\x07"
CLEAR = "\x1b[2J"
RED = "\x1b[31m"
BIG = "9" * 5000


def run(*args: str, color: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    if color:
        env["FORCE_COLOR"] = "1"  # rich writes its styles as to a terminal
    else:
        env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def bundle_with(tmp_path: Path, name: str, **files: str) -> Path:
    """The storm bundle with some files replaced (``ss_ltnmp_txt`` -> ss-ltnmp.txt)."""
    directory = tmp_path / name
    shutil.copytree(STORM, directory)
    for key, text in files.items():
        filename = key.replace("_txt", ".txt").replace("_", "-")
        (directory / filename).write_text(text)
    return directory


def hostile_ltnmp() -> str:
    """The real `ss -ltnmp` of a host running nginx, with nginx renamed by its owner."""
    text = LTNMP.read_text()
    assert '"nginx"' in text
    return text.replace('"nginx"', f'"{TITLE}{CLEAR}ngi{RED}nx"')


# -- control characters ------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_with(
        tmp_path_factory.mktemp("esc"),
        "bundle",
        hostname_txt=f"{TITLE}{CLEAR}broker-7\n",
        ss_ltnmp_txt=hostile_ltnmp(),
    )


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "--bundle"),
        ("doctor", "--bundle"),
        ("sockets",),
    ],
)
def test_no_escape_sequence_from_a_bundle_reaches_the_table(
    hostile_bundle: Path, args: tuple[str, ...]
) -> None:
    result = run(*args, str(hostile_bundle))
    assert result.returncode in (0, 1), result.stderr
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    if args[0] != "sockets":  # sockets shows connections, not the host or listeners
        # the hostname did reach the table, as the escapes made visible
        assert "\\x1b]0;owned\\x07\\x1b[2Jbroker-7" in result.stdout
        assert "broker-7" in result.stdout


def test_process_names_reach_the_audit_table_escaped(hostile_bundle: Path) -> None:
    result = run("audit", "--bundle", str(hostile_bundle))
    assert result.returncode in (0, 1), result.stderr
    assert "\\x1b]0;owned\\x07\\x1b[2Jngi\\x1b[31mnx" in result.stdout
    assert "\x1b" not in result.stdout


def test_colours_are_kept_on_a_terminal_but_not_the_input_s_escapes(
    hostile_bundle: Path,
) -> None:
    result = run("audit", "--bundle", str(hostile_bundle), color=True)
    assert result.returncode in (0, 1), result.stderr
    assert "\x1b[" in result.stdout  # rich's own styles still reach the terminal
    assert TITLE not in result.stdout and CLEAR not in result.stdout
    assert "\x07" not in result.stdout
    assert "\\x1b]0;owned" in result.stdout


def test_the_console_escapes_what_a_view_did_not() -> None:
    """Text built by any view (not through table.plain) is escaped at the console."""
    out = io.StringIO()
    console = table.console()
    console.file = out
    console.print(Text(f"raw {TITLE}{CLEAR}text"), f"str {RED}x", "[bold]markup[/bold]")
    written = out.getvalue()
    assert "\x1b" not in written and "\x07" not in written
    # (rich drops BEL on its own; ESC it keeps, and the console escapes it)
    assert "raw \\x1b]0;owned\\x1b[2Jtext str \\x1b[31mx markup" in written


def test_an_error_line_quoting_input_is_escaped(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "b", uname_r_txt=f"{TITLE}{CLEAR}\n")
    line = one_line(run("audit", "--bundle", str(bundle)))
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b]0;owned\\x07" in line
    missing = tmp_path / f"no{CLEAR}such"
    line = one_line(run("sockets", str(missing)))
    assert "\x1b" not in line and "no\\x1b[2Jsuch" in line


# -- numbers that only look like numbers ---------------------------------------------

SS_HEADER = "State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"


def _tni_with(old: str, new: str) -> str:
    """The real `ss -tni` of the lab's fault run, one value replaced everywhere."""
    text = TNI.read_text()
    assert old in text
    return text.replace(old, new)


HOSTILE_SS = {
    "mss-superscript": ("mss:1448", "mss:1\u00b2"),
    "mss-5000-digits": ("mss:1448", f"mss:{BIG}"),
    "mss-arabic-indic": ("mss:1448", "mss:\u0661\u0664"),
    "rtt-5000-digits": ("rtt:0.021/", f"rtt:{BIG}/"),
    "rtt-nan": ("rtt:0.021/", "rtt:nan/"),
    "busy-1e999": ("busy:128ms", "busy:1e999ms"),
    "port-superscript": ("198.18.0.1:9092", "198.18.0.1:9\u00b2"),
    "recv-q-5000-digits": ("ESTAB 0      0 ", f"ESTAB {BIG} 0 "),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SS))
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_numbers_that_only_look_like_numbers_in_ss_text(
    tmp_path: Path, case: str, fmt: str
) -> None:
    path = tmp_path / "ss-tni.txt"
    path.write_text(_tni_with(*HOSTILE_SS[case]))
    line = one_line(run("sockets", str(path), "--format", fmt))
    assert line.startswith(f"tcpsleuth: error: {path}:")
    assert len(line) < 400  # the 5,000 digits are not repeated


@pytest.mark.parametrize("case", ["pid-5000-digits", "rb-5000-digits"])
@pytest.mark.parametrize("command", ["audit", "doctor"])
def test_numbers_in_a_bundle_s_listeners(tmp_path: Path, case: str, command: str) -> None:
    text = LTNMP.read_text()
    replaced = {
        "pid-5000-digits": text.replace("pid=24389", f"pid={BIG}"),
        "rb-5000-digits": text.replace("rb196608", f"rb{BIG}"),
    }[case]
    assert replaced != text
    bundle = bundle_with(tmp_path, case, ss_ltnmp_txt=replaced)
    line = one_line(run(command, "--bundle", str(bundle), "--format", "json"))
    assert "ss-ltnmp.txt" in line and len(line) < 400


def test_an_owner_with_unicode_digits_is_not_read(tmp_path: Path) -> None:
    """``pid=٢٤٣٨٩`` is no pid (int() would read it as 24389): that owner is left out."""
    text = LTNMP.read_text()
    arabic = "".join(chr(0x0660 + int(d)) for d in "24389")
    bundle = bundle_with(tmp_path, "b", ss_ltnmp_txt=text.replace("pid=24389", f"pid={arabic}"))
    result = run("audit", "--bundle", str(bundle), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert "24389" not in result.stdout
    assert "24387" in result.stdout  # the other nginx process, written in ASCII, is read


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("proc-net-netstat.txt", " 0", f" {BIG}"),
        ("proc-net-netstat.txt", " 0", " \u00b2"),
        ("uname-r.txt", "6.", "\u00b2."),
        ("uname-r.txt", "6.", f"{BIG}."),
    ],
)
def test_numbers_in_a_bundle_s_counters_and_release(
    tmp_path: Path, name: str, old: str, new: str
) -> None:
    text = (STORM / name).read_text()
    assert old in text
    bundle = bundle_with(tmp_path, "b", **{name.replace(".txt", "_txt"): text.replace(old, new, 1)})
    result = run("audit", "--bundle", str(bundle), "--format", "json")
    assert result.returncode in (0, 1, 2), result.stderr
    if result.returncode == 2:
        assert len(result.stderr.splitlines()) == 1 and len(result.stderr) < 400
    else:
        json.loads(result.stdout)
    assert "Traceback" not in result.stderr


def test_sysctl_values_that_only_look_like_numbers_are_unknown(tmp_path: Path) -> None:
    text = (STORM / "sysctl-a.txt").read_text()
    assert "net.core.somaxconn = 4096" in text
    bundle = bundle_with(
        tmp_path,
        "b",
        sysctl_a_txt=text.replace(
            "net.core.somaxconn = 4096", f"net.core.somaxconn = {BIG}"
        ).replace("net.ipv4.tcp_syncookies = 1", "net.ipv4.tcp_syncookies = \u0661"),
    )
    result = run("audit", "--bundle", str(bundle), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "audit"


def test_a_json_snapshot_with_5000_digits_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text(
        '{"command": "sockets", "connections": [{"local_ip": "10.0.0.1", "local_port": 1, '
        f'"remote_ip": "10.0.0.2", "remote_port": 2, "state": "ESTAB", "rtt": {BIG}}}]}}'
    )
    line = one_line(run("sockets", str(path)))
    assert "rtt" in line and len(line) < 400


def test_to_float_reads_ascii_decimals_only() -> None:
    assert to_float("0.021") == 0.021
    assert to_float("12") == 12.0
    assert to_float("-1.5") == -1.5
    assert to_float("1e3") == 1000.0
    for text in ["nan", "inf", "-inf", "1e999", "\u0661", "1\u00b2", BIG, "", "-", "1_0", "0x1"]:
        assert to_float(text) is None, text


def test_shortened_quotes_a_short_printable_piece() -> None:
    quoted = shortened(f"{CLEAR}{BIG}")
    assert len(quoted) == 63 and quoted.startswith("\\x1b[2J99") and quoted.endswith("…")


# -- JSON -----------------------------------------------------------------------------


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("indent", [None, 2])
def test_non_finite_numbers_become_null(indent: int | None) -> None:
    doc = {
        "rtt": math.nan,
        "rates": [1.5, math.inf, (-math.inf, 2.0)],
        "nested": {"deeper": {"x": math.nan, "y": 3}},
        "text": "nan",
    }
    parsed = _strict(jsonout.dumps(doc, indent))
    assert parsed == {
        "rtt": None,
        "rates": [1.5, None, [None, 2.0]],
        "nested": {"deeper": {"x": None, "y": 3}},
        "text": "nan",
    }


def test_a_nan_reaching_a_command_s_document_is_valid_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import numpy as np

    jsonout.emit(jsonout.document("sockets", [], rtt=np.float64("nan"), listeners=[math.inf]))
    doc = _strict(capsys.readouterr().out)
    assert isinstance(doc, dict)
    assert doc["rtt"] is None and doc["listeners"] == [None]


def test_a_document_without_nan_is_written_once_by_the_fast_encoder() -> None:
    doc = {"rows": [{"a": i, "b": i / 3} for i in range(1000)]}
    assert jsonout.dumps(doc) == json.dumps(doc)


# -- bundles: FIFOs, devices, links out, long names -----------------------------------


def test_a_fifo_in_a_bundle_is_refused_at_once(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "b")
    (bundle / "ss-tni.txt").unlink()
    os.mkfifo(bundle / "ss-tni.txt")
    for args in (("audit", "--bundle"), ("doctor", "--bundle"), ("sockets",)):
        line = one_line(run(*args, str(bundle), timeout=30))
        assert "ss-tni.txt: a FIFO, not a regular file" in line


@pytest.mark.parametrize("target", ["/etc/shadow", "/dev/zero", "../outside.txt"])
def test_a_symlink_out_of_a_bundle_is_not_followed(tmp_path: Path, target: str) -> None:
    bundle = bundle_with(tmp_path, "b")
    (tmp_path / "outside.txt").write_text("secret-host\n")
    (bundle / "hostname.txt").unlink()
    (bundle / "hostname.txt").symlink_to(target)
    line = one_line(run("audit", "--bundle", str(bundle), timeout=30))
    assert "hostname.txt: a symlink out of the bundle" in line
    assert "secret-host" not in line


def test_a_symlink_inside_a_bundle_is_followed(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "b")
    (bundle / "hostname.txt").rename(bundle / "name-of-host")
    (bundle / "hostname.txt").symlink_to("name-of-host")
    result = run("audit", "--bundle", str(bundle), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    host = json.loads(result.stdout)["host"]["hostname"]
    assert host == (STORM / "hostname.txt").read_text().strip()


def test_a_directory_or_a_loop_in_a_bundle_is_one_line(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "b")
    (bundle / "ss-tni.txt").unlink()
    (bundle / "ss-tni.txt").mkdir()
    assert "ss-tni.txt: a directory, not a regular file" in one_line(
        run("audit", "--bundle", str(bundle))
    )
    (bundle / "hostname.txt").unlink()
    (bundle / "hostname.txt").symlink_to("hostname.txt")
    assert "hostname.txt: a symlink that leads nowhere or in a loop" in one_line(
        run("audit", "--bundle", str(bundle))
    )


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "--bundle", "{long}"),
        ("doctor", "--bundle", "{deep}"),
        ("sockets", "{long}"),
        ("sockets", "{deep}"),
        ("pcap", "{long}"),
        ("compare", "{long}", str(TNI)),
    ],
)
def test_a_name_too_long_is_one_line(args: tuple[str, ...]) -> None:
    long = "/tmp/" + "x" * 300  # a component over NAME_MAX (255)
    deep = "/tmp/" + "/".join(["y" * 200] * 25)  # a path over PATH_MAX (4096)
    argv = [arg.format(long=long, deep=deep) for arg in args]
    line = one_line(run(*argv))
    assert line.startswith("tcpsleuth: error: ")
    assert "internal error" not in line


# -- network peers: client.id ---------------------------------------------------------

KAFKA_PCAP = DATA / "go-sniffer-kafka.pcap"
INCIDENT = DATA / "incident-small"
HOSTILE_ID = f"{TITLE}{CLEAR}prod"


def test_a_client_id_with_escapes_in_a_capture(tmp_path: Path) -> None:
    """The public Kafka capture with its producer's client.id (same length, so every
    length field stays right) replaced by one a client chose to carry escapes."""
    data = KAFKA_PCAP.read_bytes()
    old = b"kafka-python-producer-1"
    new = HOSTILE_ID.encode().ljust(len(old), b"-")
    assert data.count(old) == 2 and len(new) == len(old)
    capture = tmp_path / "client-id.pcap"
    capture.write_bytes(data.replace(old, new))
    shown = run("pcap", str(capture), "--html", str(tmp_path / "r.html"))
    assert shown.returncode in (0, 1), shown.stderr
    assert "\x1b" not in shown.stdout and "\x1b" not in shown.stderr
    assert "\x1b" not in (tmp_path / "r.html").read_text()
    doc = run("pcap", str(capture), "--format", "json")
    assert "\x1b" not in doc.stdout  # JSON writes it as \u001b
    assert new.decode() in {
        request.get("client_id")
        for request in _walk(json.loads(doc.stdout))
        if isinstance(request, dict)
    }


def _walk(value: object) -> list[object]:
    found: list[object] = [value]
    if isinstance(value, dict):
        for item in value.values():
            found += _walk(item)
    elif isinstance(value, list):
        for item in value:
            found += _walk(item)
    return found


def test_a_client_id_with_escapes_in_an_incident_table(tmp_path: Path) -> None:
    incident = tmp_path / "incident"
    shutil.copytree(INCIDENT, incident)
    report = json.loads((incident / "report.json").read_text())
    report["rwnd_limited"] = {
        "count": 1,
        "connections": [
            {
                "client": "10.0.0.2:40000",
                "server": "10.0.0.1:9092",
                "sender": "client",
                "rwnd_limited_ms": 120.0,
                "rwnd_limited_share": 0.5,
                "min_window_bytes": 1024,
                "client_id": f"{HOSTILE_ID}ucer-1",
            }
        ],
    }
    (incident / "report.json").write_text(json.dumps(report))
    result = run("report", str(incident))
    assert result.returncode in (0, 1), result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2Jproducer-1" in result.stdout


def test_stdout_and_stderr_lines_written_directly_are_escaped() -> None:
    """A command's own line (the recorder's event lines, a warning) written with
    sys.stdout.write or click.echo goes through the guards main() installs; rich and
    JSON go past the stdout guard's scan, having escaped already."""
    from tcpsleuth.cli.output import PipeGuard, StderrGuard

    out, err = io.StringIO(), io.StringIO()
    PipeGuard(out).write(f"host {TITLE}{CLEAR}b\tx\n")
    StderrGuard(err).write(f"tcpsleuth: warning: {RED}y\n")
    assert out.getvalue() == "host \\x1b]0;owned\\x07\\x1b[2Jb\tx\n"
    assert err.getvalue() == "tcpsleuth: warning: \\x1b[31my\n"
    rendered = io.StringIO()
    PipeGuard(rendered).write_rendered("\x1b[1mbold\x1b[0m\n")  # rich's own style
    assert rendered.getvalue() == "\x1b[1mbold\x1b[0m\n"


def test_a_live_listener_s_process_name_reaches_the_table_escaped(tmp_path: Path) -> None:
    """A local user's listener whose comm (prctl PR_SET_NAME) carries escape sequences:
    audit and doctor name its owner, escaped."""
    script = tmp_path / "listener.py"
    script.write_text(
        "import ctypes, socket, time\n"
        "ctypes.CDLL(None).prctl(15, b'\\x1b]0;x\\x07\\x1b[2Jev', 0, 0, 0)\n"
        "s = socket.socket()\n"
        "s.bind(('127.0.0.1', 0))\n"
        "s.listen(5)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(120)\n"
    )
    listener = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        port = listener.stdout.readline().strip()
        assert Path(f"/proc/{listener.pid}/comm").read_text() == "\x1b]0;x\x07\x1b[2Jev\n"
        for command in ("audit", "doctor"):
            result = run(command)
            assert result.returncode in (0, 1), result.stderr
            assert "\x1b" not in result.stdout and "\x07" not in result.stdout
            rows = [line for line in result.stdout.splitlines() if f":{port} " in line]
            assert any("\\x1b]0;x\\x07\\x1b[2Jev" in row for row in rows), rows
    finally:
        listener.kill()
        listener.wait()
