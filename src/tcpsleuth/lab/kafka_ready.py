"""Whether a lab Kafka broker really accepts: a Metadata request answered with the
broker in it (Kafka 3.1.2 binds its port before it has loaded its logs, so an open
port is not enough). The requests are encoded and decoded by kio; one connection asks
ApiVersions, then Metadata v4, which every version from 3.1 to 4.x answers."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import DecodeError

API_METADATA, API_VERSIONS = 3, 18


def _call(sock: socket.socket, api_key: int, version: int, correlation: int, body: Any) -> Any:
    """Send one request (``body`` a kio entity) and read its response."""
    request_cls = load_request_schema(api_key, version)
    header_cls = request_cls.__header_schema__
    out = io.BytesIO()
    entity_writer(header_cls)(
        out,
        header_cls(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=correlation,
            client_id="tcpsleuth-ready",
        ),
    )
    entity_writer(request_cls)(out, body)
    sock.sendall(struct.pack(">i", out.tell()) + out.getvalue())
    (size,) = struct.unpack(">i", _exactly(sock, 4))
    frame = _exactly(sock, size)
    response_cls = load_response_schema(api_key, version)
    header, offset = entity_reader(response_cls.__header_schema__)(frame, 0)
    if header.correlation_id != correlation:
        raise ConnectionError("a response to another request")
    response, _ = entity_reader(response_cls)(frame, offset)
    return response


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> list[int] | None:
    """Ask the broker at ``host:port`` (from the calling thread's namespace) for its
    ApiVersions and then Metadata v4 (every version from 3.1 to 4.x answers both); the
    node ids it lists, or None while it does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            versions = _call(sock, API_VERSIONS, 0, 1, load_request_schema(API_VERSIONS, 0)())
            if versions.error_code != ErrorCode.none:
                return None
            # all topics (null), no auto-creation
            ask = load_request_schema(API_METADATA, 4)(topics=None, allow_auto_topic_creation=False)
            metadata = _call(sock, API_METADATA, 4, 2, ask)
    except (OSError, ConnectionError, ValueError, struct.error, DecodeError):
        return None  # not answering yet, or not (yet) with a Kafka answer
    return [int(broker.node_id) for broker in metadata.brokers]
