"""The lab broker: a small Kafka-protocol server, honest about what it is.

It speaks enough of the Kafka protocol for real producer libraries (kafka-python,
librdkafka) to produce to it: ApiVersions, Metadata, InitProducerId and Produce
with acks 0, 1 and all. Every message is decoded and encoded by kio, which knows
every version of every Kafka request and response. It stores nothing: a produce
is acknowledged with the next offset and its records are dropped.

What matters for the lab is that its sockets behave like a Kafka broker's (Kafka's
SocketServer, openServerSocket and Acceptor): SO_RCVBUF is set on the listening
socket before bind and listen (``socket.receive.buffer.bytes``, default 102400;
-1 leaves it to the OS), the listen backlog is ``socket.listen.backlog.size``
(default 50), SO_SNDBUF is set on accepted connections, and a restart is what a
broker restart is for the network: every connection is closed, the listener is
bound again after ``--down`` seconds, and, as KafkaServer binds its listeners
before it loads its logs and enables the acceptors only after, connections are
accepted only ``--startup`` seconds later. Meanwhile the kernel completes
handshakes into the backlog and answers the rest with SYN cookies or drops.

  python3 -m tcpsleuth.lab.broker --host 198.18.0.1 --port 9092
Commands on standard input: ``restart DOWN STARTUP``, ``stats``, ``quit``. It
prints one JSON object a line (``listening``, ``accepting``, ``stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import enum
import io
import json
import socket
import struct
import sys
import time
import typing
import uuid
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

API_PRODUCE, API_METADATA, API_API_VERSIONS, API_INIT_PRODUCER_ID = 0, 3, 18, 22
# What the broker answers, as (min, max) version, within what kio knows.
SUPPORTED = {
    API_PRODUCE: (3, 9),
    API_METADATA: (0, 12),
    API_API_VERSIONS: (0, 3),
    API_INIT_PRODUCER_ID: (0, 4),
}
UNSUPPORTED_VERSION = 35
LENGTH = struct.Struct(">i")
API_KEY_VERSION = struct.Struct(">hh")


def build(cls: type, values: dict[str, Any]) -> Any:
    """A kio entity of class ``cls`` from plain values; fields the version lacks are
    skipped, nested entities are built from dicts, and missing ones take their default."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        kwargs[field.name] = _convert(hints[field.name], values[field.name])
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        inner = args[0]
        return tuple(
            build(inner, v) if dataclasses.is_dataclass(inner) else _convert(inner, v)
            for v in value
        )
    if args and typing.get_origin(hint) is not tuple:  # Optional[X]
        return _convert(args[0], value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and issubclass(hint, datetime.timedelta):
        return datetime.timedelta(milliseconds=value)
    if dataclasses.is_dataclass(hint):
        return build(hint, value)
    return value


@dataclasses.dataclass
class BrokerConfig:
    host: str
    port: int
    backlog: int = 50
    rcvbuf: int = 102400
    sndbuf: int = 102400
    node_id: int = 0
    partitions: int = 1
    # After a restart, while the reconnect storm lasts (storm_seconds), connections are
    # accepted at most accept_rate a second; 0 = as fast as they come.
    accept_rate: float = 0
    storm_seconds: float = 0
    # Lock SO_RCVBUF on each accepted connection instead of on the listener: the socket
    # then keeps the shift computed from the system maximum (7) with a receive buffer of
    # 2 x rcvbuf, which is the state the pre-fix kernel leaves a cookie connection in.
    rcvbuf_after_accept: bool = False


class LabBroker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.acceptor: asyncio.Task[None] | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.restarted = False
        self.listener: socket.socket | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.accepting = asyncio.Event()
        self.offsets: dict[tuple[str, int], int] = {}
        self.producer_ids = 0
        self.stats = {
            "requests": 0,
            "produce_requests": 0,
            "produce_bytes": 0,
            "connections_accepted": 0,
            "restarts": 0,
        }

    def emit(self, event: str, **data: Any) -> None:
        print(json.dumps({"event": event, "time": time.time(), **data}), flush=True)

    # -- sockets, as Kafka sets them up -------------------------------------------
    def open_listener(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.rcvbuf != -1 and not self.config.rcvbuf_after_accept:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
        sock.bind((self.config.host, self.config.port))
        sock.listen(self.config.backlog)
        sock.setblocking(False)
        return sock

    async def start(self, startup: float = 0.0) -> None:
        self.listener = self.open_listener()
        self.emit(
            "listening",
            host=self.config.host,
            port=self.config.port,
            backlog=self.config.backlog,
            rcvbuf=self.config.rcvbuf,
        )
        if startup > 0:
            await asyncio.sleep(startup)
        paced_until = time.monotonic() + self.config.storm_seconds if self.restarted else 0.0
        self.acceptor = asyncio.create_task(self.accept_loop(self.listener, paced_until))
        self.emit("accepting")

    async def accept_loop(self, listener: socket.socket, paced_until: float = 0.0) -> None:
        """Accept connections; until ``paced_until`` (monotonic), at most ``accept_rate`` a
        second. A broker's acceptor hands each connection to a network processor and
        blocks while their queues are full, as they are while every client of the broker
        reconnects and asks for metadata at once; the kernel keeps the rest waiting in the
        listen queue and, once its SYN queue is full, answers new SYNs with cookies."""
        loop = asyncio.get_running_loop()
        pause = 1 / self.config.accept_rate if self.config.accept_rate > 0 else 0
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError:
                return  # the listener was closed by a restart
            reader, writer = await asyncio.open_connection(sock=conn)
            task = asyncio.create_task(self.handle(reader, writer))
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)
            if pause and time.monotonic() < paced_until:
                await asyncio.sleep(pause)

    async def restart(self, down: float, startup: float) -> None:
        self.stats["restarts"] += 1
        self.restarted = True
        if self.acceptor is not None:
            self.acceptor.cancel()
        if self.listener is not None:
            self.listener.close()
        for writer in list(self.connections):
            writer.transport.abort()
        self.connections.clear()
        self.emit("stopped")
        await asyncio.sleep(down)
        await self.start(startup)

    # -- protocol -------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if self.config.sndbuf != -1 and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.sndbuf)
        if self.config.rcvbuf_after_accept and self.config.rcvbuf != -1 and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
        self.connections.add(writer)
        self.stats["connections_accepted"] += 1
        try:
            while True:
                size = LENGTH.unpack(await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                response = self.respond(frame)
                if response is not None:
                    writer.write(response)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.connections.discard(writer)
            writer.close()

    def respond(self, frame: bytes) -> bytes | None:
        api_key, version = API_KEY_VERSION.unpack_from(frame)
        self.stats["requests"] += 1
        low, high = SUPPORTED.get(api_key, (1, 0))
        if api_key == API_API_VERSIONS and not low <= version <= high:
            # clients retry with v0 when told the version is unsupported (KIP-511)
            correlation = struct.unpack_from(">i", frame, 4)[0]
            return self.encode(
                API_API_VERSIONS, 0, correlation, self.api_versions(UNSUPPORTED_VERSION)
            )
        if not low <= version <= high:
            raise ValueError(f"unsupported api {api_key} v{version}")
        request_cls = load_request_schema(api_key, version)
        header, offset = entity_reader(request_cls.__header_schema__)(frame, 0)
        request, _ = entity_reader(request_cls)(frame, offset)
        if api_key == API_API_VERSIONS:
            body = self.api_versions(0)
        elif api_key == API_METADATA:
            body = self.metadata(request)
        elif api_key == API_INIT_PRODUCER_ID:
            self.producer_ids += 1
            body = {
                "throttle_time": 0,
                "error_code": 0,
                "producer_id": self.producer_ids,
                "producer_epoch": 0,
            }
        else:
            body = self.produce(request, len(frame))
            if request.acks == 0:
                return None
        return self.encode(api_key, version, header.correlation_id, body)

    def encode(
        self, api_key: int, version: int, correlation_id: int, body: dict[str, Any]
    ) -> bytes:
        response_cls = load_response_schema(api_key, version)
        buffer = io.BytesIO()
        header_cls = response_cls.__header_schema__
        entity_writer(header_cls)(buffer, build(header_cls, {"correlation_id": correlation_id}))
        entity_writer(response_cls)(buffer, build(response_cls, body))
        payload = buffer.getvalue()
        return LENGTH.pack(len(payload)) + payload

    def api_versions(self, error_code: int) -> dict[str, Any]:
        return {
            "error_code": error_code,
            "throttle_time": 0,
            "api_keys": [
                {"api_key": k, "min_version": lo, "max_version": hi}
                for k, (lo, hi) in sorted(SUPPORTED.items())
            ],
        }

    def metadata(self, request: Any) -> dict[str, Any]:
        names = (
            [t.name for t in request.topics]
            if request.topics is not None
            else sorted({name for name, _ in self.offsets})
        )
        topics = []
        for name in names:
            for partition in range(self.config.partitions):
                self.offsets.setdefault((name, partition), 0)
            topics.append(
                {
                    "error_code": 0,
                    "name": name,
                    "is_internal": False,
                    "topic_id": uuid.uuid5(uuid.NAMESPACE_URL, f"tcpsleuth-lab/{name}"),
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": p,
                            "leader_id": self.config.node_id,
                            "leader_epoch": 0,
                            "replica_nodes": [self.config.node_id],
                            "isr_nodes": [self.config.node_id],
                            "offline_replicas": [],
                        }
                        for p in range(self.config.partitions)
                    ],
                }
            )
        return {
            "throttle_time": 0,
            "cluster_id": "tcpsleuth-lab",
            "controller_id": self.config.node_id,
            "topics": topics,
            "brokers": [
                {
                    "node_id": self.config.node_id,
                    "host": self.config.host,
                    "port": self.config.port,
                    "rack": None,
                }
            ],
        }

    def produce(self, request: Any, size: int) -> dict[str, Any]:
        self.stats["produce_requests"] += 1
        self.stats["produce_bytes"] += size
        responses = []
        for topic in request.topic_data:
            partitions = []
            for data in topic.partition_data:
                key = (topic.name, data.index)
                base = self.offsets.get(key, 0)
                self.offsets[key] = base + 1
                partitions.append(
                    {
                        "index": data.index,
                        "error_code": 0,
                        "base_offset": base,
                        "log_append_time": None,
                        "log_start_offset": 0,
                        "record_errors": [],
                        "error_message": None,
                    }
                )
            responses.append({"name": topic.name, "partition_responses": partitions})
        return {"responses": responses, "throttle_time": 0}


async def serve(config: BrokerConfig) -> None:
    broker = LabBroker(config)
    await broker.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        command = line.split()
        if not command:
            continue
        if command[0] == "restart":
            down = float(command[1]) if len(command) > 1 else 1.0
            startup = float(command[2]) if len(command) > 2 else 0.0
            await broker.restart(down, startup)
        elif command[0] == "stats":
            broker.emit("stats", **broker.stats)
        elif command[0] == "quit":
            break
    broker.emit("stats", **broker.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description="tcpsleuth's lab broker (Kafka protocol).")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument(
        "--backlog", type=int, default=50, help="socket.listen.backlog.size (Kafka default 50)"
    )
    parser.add_argument(
        "--rcvbuf",
        type=int,
        default=102400,
        help="socket.receive.buffer.bytes (Kafka default 102400; -1 = OS)",
    )
    parser.add_argument(
        "--sndbuf",
        type=int,
        default=102400,
        help="socket.send.buffer.bytes (Kafka default 102400; -1 = OS)",
    )
    parser.add_argument(
        "--rcvbuf-after-accept",
        action="store_true",
        help="set SO_RCVBUF on accepted connections, not on the listener (bug emulation)",
    )
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument(
        "--accept-rate",
        type=float,
        default=0,
        help="after a restart, connections accepted a second (0: no limit)",
    )
    parser.add_argument(
        "--storm-seconds", type=float, default=5, help="how long after a restart to pace accepts"
    )
    args = parser.parse_args()
    config = BrokerConfig(
        args.host,
        args.port,
        args.backlog,
        args.rcvbuf,
        args.sndbuf,
        partitions=args.partitions,
        accept_rate=args.accept_rate,
        rcvbuf_after_accept=args.rcvbuf_after_accept,
        storm_seconds=args.storm_seconds,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
