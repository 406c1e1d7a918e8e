"""Issue 24, the configuration readers as a confused deputy: a local user's listener
whose command line names a file makes root's `tcpsleuth audit` read it. Each case
starts a real listener as nobody (tests/support/hostile_listener.py, argv crafted as
the user would), runs `tcpsleuth audit --format json` as root and checks the contract:
exit 0 or 1 with a document (or 2 with one line), within a stated time, no traceback,
and nothing of a file the user may not read in the output. Below them, the bounds
themselves (includes in total, YAML aliases, linear parsers, numbers) on the readers
directly, and the forked reader's time budget and credentials."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES, SUPPORT, run_tcpsleuth

from tcpsleuth.errors import InputError
from tcpsleuth.sources.config import asowner, envoy, nginx, postgresql, rabbitmq, redis, zookeeper
from tcpsleuth.sources.config.asowner import (
    ProcessOwner,
    process_owner,
    read_as_owner,
    run_in_child,
)
from tcpsleuth.sources.config.common import Budget
from tcpsleuth.sources.kafkaconfig import read_kafka_config

NOBODY = 65534
SECRET = "s3cr3t-root-only-line-8d1f"
AUDIT_SECONDS = 60  # the whole audit, on a shared 2-core machine; was hours (or never) before
FAST = 5.0  # a bounded reader on its own


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is root's only), for the
    files the hostile user owns; removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="tcpsleuth-hostile-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _owned_by_nobody(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, NOBODY, NOBODY)
    return path


def _root_only(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


class Listener:
    """hostile_listener.py as nobody: comm ``comm``, argv ``argv`` (argv[0] included),
    optionally chrooted (a container's own root) and in a working directory."""

    def __init__(
        self, comm: str, argv: list[str], root: Path | None = None, cwd: str | None = None
    ) -> None:
        env = {
            **os.environ,
            "HOSTILE_COMM": comm,
            "HOSTILE_UID": str(NOBODY),
            "PYTHONHOME": sys.base_prefix,  # argv[0] is not python: tell it where it lives
        }
        if root is not None:
            env["HOSTILE_ROOT"] = str(root)
        if cwd is not None:
            env["HOSTILE_CWD"] = cwd
        script = str(SUPPORT / "hostile_listener.py")
        self.process = subprocess.Popen(
            [argv[0], script, *argv[1:]],
            executable=sys.executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the hostile listener did not start: {line!r}")
        self.port = int(line)
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def listen() -> Iterator[type[Listener]]:
    started: list[Listener] = []

    class Started(Listener):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    try:
        yield Started
    finally:
        for listener in started:
            listener.stop()


def audit(*extra: str) -> tuple[dict, subprocess.CompletedProcess[str], float]:
    """`tcpsleuth audit --format json`: the document, the run and its seconds; the
    contract every case shares is checked here."""
    started = time.monotonic()
    result = run_tcpsleuth("audit", "--format", "json", *extra, timeout=AUDIT_SECONDS * 3)
    elapsed = time.monotonic() - started
    both = result.stdout + result.stderr
    assert "Traceback" not in both and "internal error" not in both, both[-3000:]
    assert SECRET not in both
    assert elapsed < AUDIT_SECONDS, elapsed
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return {}, result, elapsed
    assert result.returncode in (0, 1), (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout), result, elapsed


def notes_about(document: dict, pid: int) -> list[str]:
    return [note for note in document.get("notes", []) if f"pid {pid} " in note]


def configured(document: dict, port: int) -> dict | None:
    for listener in document.get("listeners", []):
        if listener.get("listener") == f"127.0.0.1:{port}":
            return listener
    return None


# -- the confused deputy: files the owner may not read -----------------------------------


@pytest.mark.parametrize("where", ["in a root-only directory", "root-only, in a world directory"])
def test_a_root_only_file_named_by_nobody_is_not_read(
    listen: type[Listener], world: Path, tmp_path: Path, where: str
) -> None:
    """Before: root read it and printed its first line (with /etc/shadow, root's hash)."""
    folder = tmp_path if where.startswith("in") else world
    secret = _root_only(folder / "nginx.conf", f"{SECRET} {{\n")
    server = listen("nginx", ["nginx", "-c", str(secret)])
    document, _, _ = audit()
    [note] = notes_about(document, server.pid)
    assert note.endswith(f"{secret}: not readable by its owner uid {NOBODY}"), note


def test_shadow_named_by_nobody_is_not_read(listen: type[Listener]) -> None:
    shadow = Path("/etc/shadow")
    first = shadow.read_text().split(":", 1)[0] + ":" + shadow.read_text().split(":")[1]
    server = listen("nginx", ["nginx", "-c", str(shadow)])
    document, result, _ = audit()
    assert first not in result.stdout + result.stderr
    [note] = notes_about(document, server.pid)
    assert f"not readable by its owner uid {NOBODY}" in note


def test_a_file_the_owner_can_read_is_read_as_the_owner(
    listen: type[Listener], world: Path, tmp_path: Path
) -> None:
    """The same listener with its own file: read, its backlog= reaches the listener's
    row; with an include the owner may not read, a note instead of the whole file."""
    own = _owned_by_nobody(world / "nginx.conf", "")
    server = listen("nginx", ["nginx", "-c", str(own)])
    _owned_by_nobody(own, f"http {{ server {{ listen 127.0.0.1:{server.port} backlog=4242; }} }}\n")
    document, _, _ = audit()
    assert notes_about(document, server.pid) == []
    row = configured(document, server.port)
    assert row is not None and "4242" in json.dumps(row), row
    hidden = _root_only(tmp_path / "hidden.conf", f"{SECRET};\n")
    _owned_by_nobody(
        own,
        f"http {{ server {{ listen 127.0.0.1:{server.port} backlog=4242; }} }}\n"
        f"include {hidden};\n",
    )
    document, _, _ = audit()
    [note] = notes_about(document, server.pid)
    assert note.endswith(f"{hidden}: not readable by its owner uid {NOBODY}"), note
    assert "4242" not in json.dumps(configured(document, server.port))


def test_control_characters_in_a_named_path_reach_the_output_escaped(
    listen: type[Listener], world: Path
) -> None:
    """A path with a terminal's escape sequence in it (argv is the user's): what the
    reader sends back is shown with the escapes made visible."""
    own = world / "x\x1b]0;pwned\x07.conf"
    server = listen("nginx", ["nginx", "-c", str(own)])
    _owned_by_nobody(own, f"http {{ server {{ listen 127.0.0.1:{server.port} backlog=77; }} }}\n")
    document, _, _ = audit()
    row = json.dumps(configured(document, server.port))
    assert "x\\\\x1b]0;pwned\\\\x07.conf:1" in row, row  # \x1b as four characters
    # this listener's row only: other users' listeners on the host are not this test's
    assert not any("\x1b" in text for text in _strings(configured(document, server.port)))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_kafka_server_properties_is_read_as_its_owner(
    listen: type[Listener], tmp_path: Path
) -> None:
    secret = _root_only(tmp_path / "server.properties", f"listeners={SECRET}\n")
    server = listen("java", ["java", "-cp", "x", "kafka.Kafka", str(secret)])
    document, _, _ = audit()
    [note] = notes_about(document, server.pid)
    assert "not readable by its owner uid 65534" in note


def test_a_confluent_broker_is_kafka_and_its_file_is_found(
    listen: type[Listener], world: Path
) -> None:
    """Confluent Platform starts its broker through SupportedKafka: the audit names the
    listener Kafka and reads the server.properties its command line gives (it was
    "java", with no file, while Kafka process discovery knew the class)."""
    own = _owned_by_nobody(world / "server.properties", "")
    argv = ["java", "-cp", "x", "io.confluent.support.metrics.SupportedKafka", str(own)]
    server = listen("java", argv)
    _owned_by_nobody(
        own,
        f"listeners=PLAINTEXT://127.0.0.1:{server.port}\nsocket.listen.backlog.size=4343\n",
    )
    document, _, _ = audit()
    assert notes_about(document, server.pid) == []
    row = configured(document, server.port)
    assert row is not None and row["program"] == "kafka", row
    assert "4343" in json.dumps(row), row
    assert str(own) in json.dumps(row), row


def test_fake_brokers_of_a_file_that_disagree_give_no_version(
    listen: type[Listener], tmp_path: Path
) -> None:
    """`audit --kafka-config` reads the broker's version from the class path of the
    process started with that file; a user's fake broker naming it with other jars
    makes the version unknown, not the user's choice. (One fake broker alone, with no
    real one, is still believed: the rest of the threat model says so.)"""
    properties = tmp_path / "server.properties"
    properties.write_text("listeners=PLAINTEXT://127.0.0.1:9092\n")

    def fake(version: str) -> Listener:
        jar = f"/opt/kafka/libs/kafka_2.13-{version}.jar"
        return listen("java", ["java", "-cp", jar, "kafka.Kafka", str(properties)])

    first = fake("3.1.0")
    document, _, _ = audit("--kafka-config", str(properties))
    assert document["kafka"]["version"] == "3.1.0"
    assert document["kafka"]["version_source"] == f"class path of pid {first.pid}"
    fake("3.7.0")
    document, _, _ = audit("--kafka-config", str(properties))
    assert document["kafka"]["version"] is None


def test_paths_resolve_inside_the_processes_root(
    listen: type[Listener], world: Path, tmp_path: Path
) -> None:
    """A container's /etc/nginx/nginx.conf is the one in its root, not the host's; a
    relative -c is taken from its working directory."""
    (world / "etc" / "nginx").mkdir(parents=True)
    (world / "srv").mkdir()
    inside = _owned_by_nobody(world / "srv" / "nginx.conf", "")
    server = listen("nginx", ["nginx", "-c", "nginx.conf"], root=world, cwd="/srv")
    _owned_by_nobody(
        inside, f"http {{ server {{ listen 127.0.0.1:{server.port} backlog=4343; }} }}\n"
    )
    document, _, _ = audit()
    assert notes_about(document, server.pid) == []
    assert "4343" in json.dumps(configured(document, server.port))


# -- hangs and crashes -------------------------------------------------------------------


def test_kmsg_is_not_waited_on(listen: type[Listener]) -> None:
    """Before: the audit hung for ever in read(2) of /proc/kmsg."""
    server = listen("nginx", ["nginx", "-c", "/proc/kmsg"])
    document, _, elapsed = audit()
    [note] = notes_about(document, server.pid)
    assert "/proc/kmsg" in note
    assert elapsed < AUDIT_SECONDS


def test_an_include_of_a_fifo_is_refused_at_once(listen: type[Listener], world: Path) -> None:
    fifo = world / "fifo.conf"
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)
    main = _owned_by_nobody(world / "nginx.conf", f"include {fifo};\n")
    server = listen("nginx", ["nginx", "-c", str(main)])
    started = time.monotonic()
    document, _, _ = audit()
    [note] = notes_about(document, server.pid)
    assert note.endswith(f"{fifo}: is a FIFO, expected nginx configuration"), note
    assert time.monotonic() - started < AUDIT_SECONDS


def test_a_name_too_long_is_a_note(listen: type[Listener]) -> None:
    """Before: ENAMETOOLONG escaped as a traceback (exit 3)."""
    server = listen("nginx", ["nginx", "-c", "/tmp/" + "x" * 300 + "/nginx.conf"])
    document, _, _ = audit()
    [note] = notes_about(document, server.pid)
    assert "File name too long" in note


@pytest.mark.parametrize("files", [8, 10])
def test_includes_that_fan_out_stop_at_the_total(
    listen: type[Listener], world: Path, files: int
) -> None:
    """Ten files that each include conf.d/*.conf: 71 s at 8 files, never ending at 10,
    before; now the total of files opened stops it."""
    (world / "conf.d").mkdir()
    for index in range(files):
        _owned_by_nobody(world / "conf.d" / f"{index}.conf", "include conf.d/*.conf;\n")
    main = _owned_by_nobody(world / "nginx.conf", "include conf.d/*.conf;\n")
    server = listen("nginx", ["nginx", "-c", str(main)])
    document, _, elapsed = audit()
    [note] = notes_about(document, server.pid)
    assert "more than 256 files" in note, note
    assert elapsed < 30, elapsed


def test_postgresql_includes_each_ten_times(listen: type[Listener], world: Path) -> None:
    for index in range(10):
        _owned_by_nobody(world / f"p{index}.conf", f"include 'p{index + 1}.conf'\n" * 10)
    _owned_by_nobody(world / "p10.conf", "port = 5432\n")
    main = _owned_by_nobody(world / "postgresql.conf", "include 'p0.conf'\n")
    server = listen("postgres", ["postgres", f"config_file={main}"])
    document, _, elapsed = audit()
    [note] = notes_about(document, server.pid)
    assert "more than 256 files" in note, note
    assert elapsed < 30


def test_redis_includes_each_ten_times_given_with_config(world: Path) -> None:
    """Redis rewrites its title: its file is only ever given (--config); bounded all the
    same, an InputError (exit 2, one line)."""
    for index in range(10):
        (world / f"r{index}.conf").write_text(f"include {world}/r{index + 1}.conf\n" * 10)
    (world / "r10.conf").write_text("port 6379\n")
    _, result, elapsed = audit("--config", f"redis={world / 'r0.conf'}")
    assert result.returncode == 2
    assert "more than 256 files" in result.stderr
    assert elapsed < 30


BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
MERGE_BOMB = "".join(
    [
        "a0: &a0 {x: 1, y: 2}\n",
        *(
            f"a{n}: &a{n} {{{', '.join(f'k{k}: {{<<: *a{n - 1}}}' for k in range(4))}}}\n"
            for n in range(1, 12)
        ),
    ]
)


def test_an_envoy_alias_bomb_is_refused(listen: type[Listener], world: Path) -> None:
    """Before: 2.4 GB after 60 s."""
    main = _owned_by_nobody(world / "envoy.yaml", BOMB)
    server = listen("envoy", ["envoy", "-c", str(main)])
    document, _, elapsed = audit()
    [note] = notes_about(document, server.pid)
    assert "YAML aliases" in note, note
    assert elapsed < 30


def test_a_large_rabbitmq_file_is_read_in_linear_time(listen: type[Listener], world: Path) -> None:
    """960 KB of term heads without an end (minutes in a regular expression, before),
    in the listener's own root, where RabbitMQ's default file lives."""
    (world / "etc" / "rabbitmq").mkdir(parents=True)
    text = "[\n" + "{tcp_listeners, [" * (960 * 1024 // 17) + "\n"
    _owned_by_nobody(world / "etc" / "rabbitmq" / "rabbitmq.conf", text)
    server = listen("beam.smp", ["beam.smp", "-s", "rabbit"], root=world)
    document, _, elapsed = audit()
    assert notes_about(document, server.pid) == []  # read: no listeners in it, the default
    assert elapsed < 30


# -- numbers ------------------------------------------------------------------------------

NUMBER_CASES = {
    "nginx unicode port": ("nginx", "nginx.conf", "http { server { listen ²; } }\n"),
    "nginx 5000-digit backlog": (
        "nginx",
        "nginx.conf",
        "http { server { listen 80 backlog=" + "9" * 5000 + "; } }\n",
    ),
    "zookeeper unicode port": ("zookeeper", "zoo.cfg", "clientPort=²\n"),
    "zookeeper 5000 digits": ("zookeeper", "zoo.cfg", "clientPortListenBacklog=" + "9" * 5000),
    "zookeeper dynamic unicode": ("zookeeper", "zoo.cfg", "server.1=a:1:2;²\n"),
    "envoy list for a map": ("envoy", "envoy.yaml", "static_resources: [1, 2]\n"),
    "envoy inf port": (
        "envoy",
        "envoy.yaml",
        "static_resources:\n  listeners:\n  - address: {socket_address: {port_value: .inf}}\n",
    ),
    "envoy huge int": ("envoy", "envoy.yaml", "tcp_backlog_size: " + "9" * 5000 + "\n"),
    "kafka 5000-digit port": ("kafka", "server.properties", "listeners=P://:" + "9" * 5000),
}


def _argv(program: str, path: Path) -> tuple[str, list[str]]:
    return {
        "nginx": ("nginx", ["nginx", "-c", str(path)]),
        "zookeeper": (
            "java",
            ["java", "-cp", "x", "org.apache.zookeeper.server.QuorumPeerMain", str(path)],
        ),
        "envoy": ("envoy", ["envoy", "-c", str(path)]),
        "kafka": ("java", ["java", "-cp", "x", "kafka.Kafka", str(path)]),
    }[program]


@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
def test_numbers_python_refuses_are_notes(listen: type[Listener], world: Path, case: str) -> None:
    """Before: `²` and 5,000 digits ended the audit with a traceback (exit 3)."""
    program, name, text = NUMBER_CASES[case]
    path = _owned_by_nobody(world / name, text)
    comm, argv = _argv(program, path)
    if program == "zookeeper":
        argv[3] = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
    server = listen(comm, argv)
    document, _, _ = audit()
    for note in notes_about(document, server.pid):
        assert "9" * 40 not in note and "²" not in note, note


@pytest.mark.parametrize(
    "text",
    ["listeners.tcp.default = ²\n", "tcp_listen_options.backlog = " + "9" * 5000 + "\n"],
)
def test_rabbitmq_numbers_are_notes(listen: type[Listener], world: Path, text: str) -> None:
    (world / "etc" / "rabbitmq").mkdir(parents=True)
    _owned_by_nobody(world / "etc" / "rabbitmq" / "rabbitmq.conf", text)
    server = listen("beam.smp", ["beam.smp", "-s", "rabbit"], root=world)
    document, _, _ = audit()
    for note in notes_about(document, server.pid):
        assert "9" * 40 not in note, note


# -- the bounds, on the readers directly --------------------------------------------------


def test_include_expansion_is_bounded_in_files_in_total(tmp_path: Path) -> None:
    """A tree of includes with no cycle at all (each of 6 levels includes the next
    level's 4 files: 5,461 files opened) stops at the total, whatever the depth."""
    for level in range(6):
        for index in range(4):
            line = f"include l{level + 1}_*.conf;\n" if level < 5 else "events {}\n"
            (tmp_path / f"l{level}_{index}.conf").write_text(line)
    (tmp_path / "nginx.conf").write_text("include l0_*.conf;\n")
    started = time.monotonic()
    with pytest.raises(InputError, match="more than 256 files"):
        nginx.read(tmp_path / "nginx.conf")
    assert time.monotonic() - started < FAST
    # under the total, the same tree read in full: the bound is the total, not the shape
    budget = Budget(files=6000)
    assert nginx.read(tmp_path / "nginx.conf", budget).listeners == ()
    assert 6000 - budget.files == 1 + 4 + 16 + 64 + 256 + 1024 + 4096


def test_include_expansion_is_bounded_in_bytes_and_depth(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    big.write_text("# padding\n" * 60_000)  # 600 KB
    (tmp_path / "nginx.conf").write_text(f"include {big};\n" * 40)  # 24 MB in all
    with pytest.raises(InputError, match="KiB"):
        nginx.read(tmp_path / "nginx.conf")
    assert nginx.read(tmp_path / "nginx.conf", Budget(total_bytes=30 << 20)).listeners == ()
    chain = tmp_path / "chain"
    chain.mkdir()
    for level in range(20):
        (chain / f"{level}.conf").write_text(f"include {chain}/{level + 1}.conf;\n")
    (chain / "20.conf").write_text("events {}\n")
    with pytest.raises(InputError, match="nested more than 16 deep"):
        nginx.read(chain / "0.conf")
    assert nginx.read(chain / "0.conf", Budget(depth=20)).listeners == ()


def test_redis_and_postgresql_includes_share_the_total(tmp_path: Path) -> None:
    for index in range(10):
        (tmp_path / f"r{index}.conf").write_text(f"include {tmp_path}/r{index + 1}.conf\n" * 10)
        (tmp_path / f"p{index}.conf").write_text(f"include 'p{index + 1}.conf'\n" * 10)
    (tmp_path / "r10.conf").write_text("port 6380\n")
    (tmp_path / "p10.conf").write_text("port = 5433\n")
    for reader, name in ((redis.read, "r0.conf"), (postgresql.read, "p0.conf")):
        started = time.monotonic()
        with pytest.raises(InputError, match="more than 256 files"):
            reader(tmp_path / name)
        assert time.monotonic() - started < FAST
    # two levels of ten under the total: read in full
    (tmp_path / "r8.conf").write_text("port 6380\n")
    assert redis.read(tmp_path / "r7.conf").listeners[0].port == 6380


def test_yaml_aliases_are_bounded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)  # 81 aliases
    with pytest.raises(InputError, match="more than 64 YAML aliases"):
        envoy.read(bomb)
    small = tmp_path / "small.yaml"
    small.write_text("".join(BOMB.splitlines(keepends=True)[:7]))  # 54 aliases, 9**6 lists
    started = time.monotonic()
    with pytest.raises(InputError, match="more than 200000 YAML nodes"):
        envoy.read(small)
    assert time.monotonic() - started < FAST
    few = tmp_path / "few.yaml"
    few.write_text("".join(BOMB.splitlines(keepends=True)[:4]))  # 9**3 lists: allowed
    assert envoy.read(few).listeners == ()
    merges = tmp_path / "merge.yaml"
    merges.write_text(MERGE_BOMB)  # 44 aliases; merge keys copy: 4**11 once flattened
    with pytest.raises(InputError, match="YAML nodes"):
        envoy.read(merges)
    looped = tmp_path / "loop.yaml"
    looped.write_text("a: &a [1, *a]\n")
    with pytest.raises(InputError, match="contains itself"):
        envoy.read(looped)


def test_yaml_too_deep_is_an_input_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(InputError):
        envoy.read(deep)


@pytest.mark.parametrize(
    ("reader", "text"),
    [
        (rabbitmq.read, "[\n" + "{tcp_listeners, [" * 60_000),
        (rabbitmq.read, "[\n" + "{tcp_listen_options, [" * 45_000),
        (rabbitmq.read, "[{tcp_listeners, [" + '{"' * 300_000 + "]}].\n"),
        (postgresql.read, "a" + " " * 200_000 + "#\n"),
        (postgresql.read, "a = '" + "''" * 200_000 + "\n"),
        (read_kafka_config, "listeners=" + "A" * 500_000 + "\n"),
        (read_kafka_config, "a" + " " * 500_000 + "b\n"),
    ],
    ids=[
        "rabbit-listeners",
        "rabbit-options",
        "rabbit-entries",
        "pg-blanks",
        "pg-quotes",
        "kafka-name",
        "kafka-blanks",
    ],
)
def test_parsers_are_linear(tmp_path: Path, reader: object, text: str) -> None:
    """Inputs that make a backtracking expression quadratic, about 1 MB each: read (or
    refused) in well under the reader's budget."""
    path = tmp_path / "config"
    path.write_text(text)
    started = time.monotonic()
    with contextlib.suppress(InputError):
        reader(path)  # type: ignore[operator]
    assert time.monotonic() - started < FAST


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for read in (nginx.read, zookeeper.read, envoy.read):
        with pytest.raises(InputError, match="is a FIFO"):
            read(fifo, Budget())
    with pytest.raises(InputError, match="is a character device"):
        nginx.read(Path("/dev/zero"), Budget())
    with pytest.raises(InputError, match="is a directory"):
        nginx.read(tmp_path, Budget())
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (4 << 20) + b"\n")
    with pytest.raises(InputError, match="more than 4096 KiB"):
        nginx.read(big)


# -- the forked reader ----------------------------------------------------------------------


def test_the_reader_is_stopped_past_its_budget() -> None:
    started = time.monotonic()
    reply = run_in_child(lambda: time.sleep(120) or {}, seconds=1.0)
    assert time.monotonic() - started < 4
    assert reply == {"failure": "not read within 1 s; the reader was stopped"}
    assert run_in_child(lambda: {"ok": 1}, seconds=5.0) == {"ok": 1}


def _forged(answer: bytes) -> dict:
    """A child that writes ``answer`` as its reply itself, as code that took the
    reader over could."""
    pipes = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                pipes.append(int(fd))
    [pipe] = pipes  # the answer's, and nothing else: stdio is /dev/null
    os.write(pipe, answer)
    os._exit(0)


@pytest.mark.parametrize(
    "answer", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b'{"server": {"listeners": 7}}']
)
def test_a_forged_answer_is_refused(answer: bytes) -> None:
    reply = run_in_child(lambda: _forged(answer), seconds=5.0)
    if "server" in reply:  # well-formed JSON of the wrong shape: read_as_owner's checks
        with pytest.raises((KeyError, TypeError, ValueError)):
            asowner._server_from(reply["server"])
    else:
        assert reply == {"failure": "the reader's answer was not understood"}


def test_the_reader_runs_with_the_owners_credentials(tmp_path: Path) -> None:
    """The child's own view of itself, sent back: nobody's uid and gid, no groups, no
    capability left, in the root and working directory of the process read for."""
    owner = ProcessOwner(os.getpid(), NOBODY, NOBODY, ())

    def credentials() -> dict:
        asowner._enter(owner, Path("/proc"))
        status = Path("/proc/self/status").read_text()
        caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff"))
        return {"ids": [os.getresuid(), os.getresgid()], "groups": os.getgroups(), "caps": caps}

    reply = run_in_child(credentials, seconds=5.0)
    assert reply == {
        "ids": [[NOBODY] * 3, [NOBODY] * 3],
        "groups": [],
        "caps": "0000000000000000",
    }


def test_the_reader_runs_no_code_from_the_processes_root(
    listen: type[Listener], world: Path
) -> None:
    """Inside a user's root, sys.path names the user's files: a module planted where the
    reader would look for one it has not loaded is never run; nor does the reader keep
    the command's descriptors (its stdout here)."""
    for entry in (e for e in sys.path if e.startswith("/")):
        planted = world / entry.lstrip("/") / "tcpsleuth_planted.py"
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_text("RAN = True\n")
    (world / "tmp").mkdir(exist_ok=True)
    server = listen("nginx", ["nginx"], root=world)
    owner = process_owner(server.pid)
    assert owner is not None and owner.uid == NOBODY

    def planted() -> dict:
        asowner._enter(owner, Path("/proc"))
        module = __import__("tcpsleuth_planted")
        return {"ran": module.RAN}

    assert run_in_child(planted, seconds=5.0) == {
        "failure": "the reader failed (ModuleNotFoundError)"
    }
    read_end, write_end = os.pipe()
    try:
        reply = run_in_child(lambda: {"open": os.write(write_end, b"x")}, seconds=5.0)
        assert reply == {"failure": "the reader failed (OSError)"}  # EBADF: closed
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_least_privileged_uid_is_the_owner(tmp_path: Path) -> None:
    """A set-user-ID root program started by a user (real 1000, effective 0) is read as
    the user; a root daemon as root."""
    for pid, uid_line, expected in (
        (10, "1000\t0\t0\t0", 1000),
        (11, "0\t0\t0\t0", 0),
        (12, "0\t33\t33\t33", 33),
    ):
        folder = tmp_path / str(pid)
        folder.mkdir()
        (folder / "status").write_text(
            f"Name:\tx\nUid:\t{uid_line}\nGid:\t{uid_line}\nGroups:\t4 24\n"
        )
        owner = process_owner(pid, tmp_path)
        assert owner == ProcessOwner(pid, expected, expected, (4, 24))
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "status").write_text("Uid:\t²\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    assert process_owner(13, tmp_path) is None


def test_a_missing_file_is_no_note(tmp_path: Path) -> None:
    owner = ProcessOwner(os.getpid(), NOBODY, NOBODY, ())
    assert read_as_owner(owner, "nginx", Path("/nonexistent/nginx.conf")) is None
    (tmp_path / "nginx.conf").write_text("include /nonexistent/other.conf;\n")
    with pytest.raises(InputError, match=r"other\.conf: no such file"):
        read_as_owner(ProcessOwner(os.getpid(), 0, 0, ()), "nginx", tmp_path / "nginx.conf")


def test_a_pipe_the_operator_names_is_read_and_one_nobody_writes_is_no_hang(
    tmp_path: Path,
) -> None:
    """``--config nginx=<(...)`` is read; a FIFO without a writer ends in one line
    after the pipe's wait (it used to block the audit for ever)."""
    fifo = tmp_path / "nginx.conf"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = run_tcpsleuth("audit", "--config", f"nginx={fifo}", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "no end of file" in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 30
    text = (FIXTURES / "servers" / "nginx.conf").read_bytes()
    writer = subprocess.Popen(["sh", "-c", f'sleep 1; cat > "{fifo}"'], stdin=subprocess.PIPE)
    try:
        assert writer.stdin is not None
        writer.stdin.write(text)
        writer.stdin.close()
        fed = run_tcpsleuth("audit", "--config", f"nginx={fifo}", "--format", "json")
    finally:
        writer.wait(timeout=30)
    assert fed.returncode in (0, 1), fed.stderr
    [config] = json.loads(fed.stdout)["server_configs"]
    assert config["path"] == str(fifo)
    locked = [x for x in config["listeners"] if x["address"] == "127.0.0.1:8080"]
    assert [(x["backlog"], x["rcvbuf"]) for x in locked] == [(4096, 65536)]
