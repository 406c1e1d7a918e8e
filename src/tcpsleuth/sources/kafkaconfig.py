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


def _int_setting(
    properties: dict[str, str], key: str, default: int | None, path: Path
) -> int | None:
    value = properties.get(key)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise InputError(f"{path}: {key}={value!r} is not a whole number") from None


def read_kafka_config(path: Path) -> KafkaConfig:
    properties = parse_properties(read_text(path, "Kafka server.properties"))
    listeners: list[KafkaListener] = []
    spec = properties.get("listeners")
    if spec:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            match = _LISTENER.match(item)
            if match is None:
                raise InputError(f"{path}: listeners entry {item!r} is not NAME://HOST:PORT")
            listeners.append(
                KafkaListener(match.group(1), match.group(2).strip("[]"), int(match.group(3)))
            )
    else:
        # Before `listeners` (and with it unset) the broker listens on `port`, 9092 by default.
        port = _int_setting(properties, "port", 9092, path)
        assert port is not None
        listeners.append(KafkaListener("PLAINTEXT", properties.get("host.name", ""), port))
    backlog = _int_setting(properties, "socket.listen.backlog.size", None, path)
    rcvbuf = _int_setting(
        properties, "socket.receive.buffer.bytes", KafkaConfig.KAFKA_DEFAULT_BUFFER, path
    )
    sndbuf = _int_setting(
        properties, "socket.send.buffer.bytes", KafkaConfig.KAFKA_DEFAULT_BUFFER, path
    )
    assert rcvbuf is not None and sndbuf is not None
    return KafkaConfig(
        path=str(path),
        properties=properties,
        listeners=listeners,
        listen_backlog_size=backlog,
        receive_buffer_bytes=rcvbuf,
        send_buffer_bytes=sndbuf,
    )
