"""A Kafka broker's ``server.properties``: the settings that shape its listeners.

Java properties syntax: ``key=value``, ``key: value`` or ``key value``;
comments start with ``#`` or ``!``; a line ending in an odd number of
backslashes continues on the next one.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import KafkaConfig, KafkaListener
from tcpsleuth.sources.textfile import read_text

_SEPARATOR = re.compile(r"(?<!\\)(?:\s*[=:]\s*|\s+)")
_LISTENER = re.compile(r"^\s*([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:/]*):(\d+)\s*$")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


def _key_value(logical: str) -> tuple[str, str]:
    parts = _SEPARATOR.split(logical, maxsplit=1)
    return _unescape(parts[0]), _unescape(parts[1]) if len(parts) > 1 else ""


def parse_properties(text: str) -> dict[str, str]:
    properties: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if (len(line) - len(line.rstrip("\\"))) % 2:
            logical += line[:-1]
            continue
        key, value = _key_value(logical + line)
        properties[key] = value
        logical = ""
    if logical:
        key, value = _key_value(logical)
        properties[key] = value
    return properties


JAVA_INT_MAX = 2**31 - 1


def _int_setting(
    properties: dict[str, str],
    key: str,
    default: int | None,
    path: Path,
    minimum: int,
    meaning: str,
) -> int | None:
    """A Java int setting, as Kafka parses it: a value Kafka would refuse at start-up
    (not a whole number, outside a Java int, below ``minimum``) is an input error, never
    a setting reported as if the broker ran with it."""
    value = properties.get(key)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise InputError(f"{path}: {key}={value!r} is not a whole number") from None
    if not minimum <= number <= JAVA_INT_MAX:
        raise InputError(
            f"{path}: {key}={value.strip()} is not a valid setting ({meaning}); "
            "Kafka refuses to start with it"
        )
    return number


def _buffer_setting(properties: dict[str, str], key: str, path: Path) -> int:
    value = _int_setting(
        properties,
        key,
        KafkaConfig.KAFKA_DEFAULT_BUFFER,
        path,
        -1,
        "bytes from 1 to 2147483647, or -1 for the OS default",
    )
    assert value is not None
    if value == 0:
        raise InputError(
            f"{path}: {key}=0 is not a valid setting (bytes from 1 to 2147483647, or -1 "
            "for the OS default); Kafka's socket refuses a buffer of 0"
        )
    return value


def read_kafka_config(path: Path) -> KafkaConfig:
    # Kafka reads server.properties as Java does: ISO-8859-1 (UTF-8 also accepted)
    properties = parse_properties(read_text(path, "Kafka server.properties", latin1=True))
    listeners: list[KafkaListener] = []
    spec = properties.get("listeners")
    if spec:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            match = _LISTENER.match(item)
            if match is None:
                raise InputError(f"{path}: listeners entry {item!r} is not NAME://HOST:PORT")
            if int(match.group(3)) > 65535:
                raise InputError(f"{path}: listeners entry {item!r}: port above 65535")
            listeners.append(
                KafkaListener(match.group(1), match.group(2).strip("[]"), int(match.group(3)))
            )
    else:
        # Before `listeners` (and with it unset) the broker listens on `port`, 9092 by default.
        port = _int_setting(properties, "port", 9092, path, 0, "a port from 0 to 65535")
        assert port is not None
        if port > 65535:
            raise InputError(f"{path}: port={port} is not a valid setting (a port up to 65535)")
        listeners.append(KafkaListener("PLAINTEXT", properties.get("host.name", ""), port))
    backlog = _int_setting(properties, "socket.listen.backlog.size", None, path, 1, "at least 1")
    rcvbuf = _buffer_setting(properties, "socket.receive.buffer.bytes", path)
    sndbuf = _buffer_setting(properties, "socket.send.buffer.bytes", path)
    return KafkaConfig(
        path=str(path),
        properties=properties,
        listeners=listeners,
        listen_backlog_size=backlog,
        receive_buffer_bytes=rcvbuf,
        send_buffer_bytes=sndbuf,
    )
