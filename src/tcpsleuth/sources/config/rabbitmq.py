"""RabbitMQ's configuration: its AMQP listeners and ``tcp_listen_options``.

RabbitMQ listens with backlog 128 unless ``tcp_listen_options.backlog`` says otherwise
(the rabbit application's default ``tcp_listen_options``: ``{backlog, 128}``), and
``tcp_listen_options.recbuf`` sets SO_RCVBUF on the listening socket (RabbitMQ's
networking guide). Two formats:

- ``rabbitmq.conf`` (3.7 and later, ``key = value``): ``listeners.tcp.NAME =
  [HOST:]PORT`` (``listeners.tcp = none`` for none), ``tcp_listen_options.backlog``,
  ``tcp_listen_options.recbuf``; without listeners it listens on 5672, every address;
- the classic Erlang-term file (``rabbitmq.config``, ``advanced.config``):
  ``{tcp_listeners, [5672 | {"HOST", PORT}]}`` and ``{tcp_listen_options, [{backlog,
  N}, {recbuf, N}]}``.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcpsleuth.model.records import ConfiguredListener, ServerConfig
from tcpsleuth.model.text import to_int
from tcpsleuth.sources.config.common import Budget, host_port, whole_number

DEFAULT_PORT = 5672
# Only the heads of the terms are regular expressions; a term's end is found by one
# scan from its head, so the time is linear in the file whatever it holds (a lazy
# ``(.*?)\]\s*\}`` tried from every ``{tcp_listeners, [`` of a file with no end took
# minutes on 960 KB).
_TERM_LISTENERS = re.compile(r"\{\s*+tcp_listeners\s*+,\s*+\[")
_TERM_OPTIONS = re.compile(r"\{\s*+tcp_listen_options\s*+,\s*+\[")
_TERM_ENTRY = re.compile(r"\{\s*+\"([^\"]*+)\"\s*+,\s*+([0-9]++)\s*+\}|([0-9]++)", re.ASCII)
_OPTION = re.compile(r"\{\s*+(backlog|recbuf)\s*+,\s*+([0-9]++)\s*+\}", re.ASCII)
_CLOSE = re.compile(r"\]\s*+\}")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _term(pattern: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """(offset, body) of the first ``{NAME, [BODY]}`` term: the body up to the first
    ``]`` followed by ``}``."""
    head = pattern.search(text)
    if head is None:
        return None
    close = _CLOSE.search(text, head.end())
    if close is None:
        return None
    return head.start(), text[head.end() : close.start()]


def _erlang(text: str, path: Path) -> ServerConfig:
    stripped = re.sub(r"%[^\n]*+", lambda m: " " * len(m.group(0)), text)
    settings: dict[str, str] = {}
    backlog = rcvbuf = None
    where = str(path)
    options = _term(_TERM_OPTIONS, stripped)
    if options:
        where = f"{path}:{_line_of(stripped, options[0])}"
        for name, digits in _OPTION.findall(options[1]):
            number = to_int(digits)
            if number is None:
                continue
            if name == "backlog" and backlog is None:
                backlog = number
                settings["tcp_listen_options.backlog"] = digits
            elif name == "recbuf" and rcvbuf is None:
                rcvbuf = number
                settings["tcp_listen_options.recbuf"] = digits
    addresses: list[tuple[str, int]] = []
    listeners = _term(_TERM_LISTENERS, stripped)
    if listeners:
        for host, port, bare in _TERM_ENTRY.findall(listeners[1]):
            number = to_int(port or bare)
            if number is not None and number <= 65535:
                addresses.append((host, number))
    else:
        addresses.append(("", DEFAULT_PORT))
    text_line = "{tcp_listen_options, [...]}" if options else "{tcp_listeners, [...]}"
    return ServerConfig(
        "rabbitmq",
        str(path),
        tuple(
            ConfiguredListener(host, port, backlog, rcvbuf, where, text_line)
            for host, port in addresses
        ),
        settings,
    )


def _sysctl_format(text: str, path: Path) -> ServerConfig:
    found: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = (value.strip(), number)
    settings = {
        key: value
        for key, (value, _) in found.items()
        if key.startswith(("tcp_listen_options.", "listeners.tcp"))
    }
    backlog = rcvbuf = None
    where = str(path)
    text_line = ""
    if "tcp_listen_options.backlog" in found:
        value, line = found["tcp_listen_options.backlog"]
        backlog = whole_number(value, path, line, "tcp_listen_options.backlog")
        where, text_line = f"{path}:{line}", f"tcp_listen_options.backlog = {value}"
    if "tcp_listen_options.recbuf" in found:
        value, line = found["tcp_listen_options.recbuf"]
        rcvbuf = whole_number(value, path, line, "tcp_listen_options.recbuf")
        where, text_line = f"{path}:{line}", f"tcp_listen_options.recbuf = {value}"
    addresses: list[tuple[str, int, int]] = []
    if found.get("listeners.tcp", ("",))[0] != "none":
        for key, (value, line) in found.items():
            if key.startswith("listeners.tcp."):
                address = host_port(value)
                if address is not None:
                    host = address[0]
                    if host == "::":
                        host = "::"
                    addresses.append((host, address[1], line))
        if not addresses:
            addresses.append(("", DEFAULT_PORT, 0))
    return ServerConfig(
        "rabbitmq",
        str(path),
        tuple(
            ConfiguredListener(
                host,
                port,
                backlog,
                rcvbuf,
                where if text_line or not line else f"{path}:{line}",
                text_line or (f"listeners.tcp = {host}:{port}" if line else "(default 5672)"),
            )
            for host, port, line in addresses
        ),
        settings,
    )


def read(path: Path, budget: Budget | None = None) -> ServerConfig:
    text = (budget or Budget.for_operator()).read(path, "RabbitMQ configuration")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("%"))
    if code.lstrip().startswith("["):
        return _erlang(text, path)
    return _sysctl_format(text, path)
