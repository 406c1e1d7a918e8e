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
from tcpsleuth.model.text import to_int
from tcpsleuth.sources.config.common import Budget, key_value

_LISTENER = re.compile(r"\s*+([A-Za-z0-9_]++)://(\[[^\]]*+\]|[^:/]*+):([0-9]++)\s*+", re.ASCII)


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
        key, value = key_value(logical + line)
        properties[key] = value
        logical = ""
    if logical:
        key, value = key_value(logical)
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
    number = to_int(value.strip().removeprefix("+"))
    if number is None:
        raise InputError(f"{path}: {key} is not a whole number")
    if not minimum <= number <= JAVA_INT_MAX:
        raise InputError(
            f"{path}: {key}={number} is not a valid setting ({meaning}); "
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


def read_kafka_config(path: Path, budget: Budget | None = None) -> KafkaConfig:
    """The file's settings; its text is read as a regular file within ``budget``
    (Kafka reads server.properties as Java does: ISO-8859-1, UTF-8 also accepted).
    Errors name the file and the setting, never the value the file gives."""
    text = (budget or Budget()).read(path, "Kafka server.properties")
    properties = parse_properties(text)
    listeners: list[KafkaListener] = []
    spec = properties.get("listeners")
    if spec:
        for number, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
            match = _LISTENER.fullmatch(item)
            port = to_int(match.group(3)) if match else None
            if match is None or port is None:
                raise InputError(f"{path}: listeners entry {number} is not NAME://HOST:PORT")
            if port > 65535:
                raise InputError(f"{path}: listeners entry {number}: port above 65535")
            listeners.append(KafkaListener(match.group(1), match.group(2).strip("[]"), port))
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
