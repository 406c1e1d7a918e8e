"""Lab clients: real producer libraries, many connections, their own reconnects.

Run inside a client namespace:
  python3 -m tcpsleuth.lab.clients --library confluent-kafka --bootstrap HOST:PORT \\
      --crowd 100 --measured 4 --message-bytes 65536 --interval-ms 100 --duration 40

``--crowd`` producers each send a small message every second (enough to keep a
connection and to reconnect after a broker restart, as busy clients do);
``--measured`` producers send ``--message-bytes`` messages every ``--interval-ms``
and report each request's latency: the time from handing the message to the
library to its acknowledgement, which includes the time to put the request on
the wire. With librdkafka, the per-broker statistics (int_latency: waiting in the
producer's queue, outbuf_latency: waiting to be sent, rtt: sent to response) are
reported too. ``--timeout-s`` and ``--reconnect-backoff-max-ms`` set the measured
producers' request timeout and longest reconnect backoff (the crowd keeps 60 s and the
library's own backoff). Output: one JSON object a line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CROWD_MESSAGE = b"c" * 256
TOPIC = "lab"

_out_lock = threading.Lock()


def emit(kind: str, **data: Any) -> None:
    with _out_lock:
        print(json.dumps({"type": kind, **data}), flush=True)


class Outstanding:
    """Measured requests handed to a library and not yet acknowledged. A request still
    outstanding when the run ends is reported as ``pending`` with the time it has waited
    so far: leaving it out would make the slowest requests vanish from the statistics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open_requests: dict[int, tuple[str, int, float]] = {}
        self.next_id = 0
        # per (library, producer): messages handed to the library, acknowledged, failed
        self.tally: dict[tuple[str, int], list[int]] = {}

    def open(self, library: str, producer: int) -> int:
        with self.lock:
            self.next_id += 1
            self.open_requests[self.next_id] = (library, producer, time.time())
            self.tally.setdefault((library, producer), [0, 0, 0])[0] += 1
            return self.next_id

    def close(self, request: int, error: str | None) -> None:
        with self.lock:
            library, producer, sent = self.open_requests.pop(request)
            self.tally[(library, producer)][2 if error else 1] += 1
        emit(
            "latency",
            library=library,
            producer=producer,
            sent=sent,
            latency_ms=(time.time() - sent) * 1000,
            error=error,
        )

    def report_pending(self) -> None:
        now = time.time()
        with self.lock:
            for library, producer, sent in self.open_requests.values():
                emit(
                    "pending",
                    library=library,
                    producer=producer,
                    sent=sent,
                    waited_ms=(now - sent) * 1000,
                )

    def report_counts(self) -> None:
        """What each measured producer counted: messages sent, acknowledged, failed (an
        error from its library: a timeout, say), and still waiting at the end; ``lost``
        is what was sent and not acknowledged."""
        with self.lock:
            for (library, producer), (sent, acked, failed) in sorted(self.tally.items()):
                emit(
                    "counts",
                    library=library,
                    producer=producer,
                    sent=sent,
                    acknowledged=acked,
                    failed=failed,
                    pending=sent - acked - failed,
                    lost=sent - acked,
                )


OUTSTANDING = Outstanding()


@dataclass(frozen=True)
class Timed:
    """What the measured producers are given beyond the crowd's settings: their request
    timeout (delivery timeout twice it), and their longest reconnect backoff (None: the
    library's own: librdkafka 10 s, kafka-python 30 s)."""

    timeout_s: float = 60
    backoff_max_ms: int | None = None


class ConfluentClients:
    library = "confluent-kafka"

    def __init__(self, bootstrap: str, crowd: int, measured: int, timed: Timed) -> None:
        import confluent_kafka

        common = {
            "bootstrap.servers": bootstrap,
            "acks": 1,
            "linger.ms": 0,
            "message.timeout.ms": 60000,
            "message.max.bytes": 4_000_000,
            "socket.keepalive.enable": True,
        }
        self.crowd = [confluent_kafka.Producer(common) for _ in range(crowd)]
        own: dict[str, Any] = {
            # librdkafka's message timeout is its delivery timeout: twice the request
            # timeout, as the Java client's and kafka-python's (it was the request
            # timeout alone: in a guest run with a real Kafka one message queued during
            # the restart expired 600 s later, before heal came, while the other
            # libraries' same messages were delivered)
            "message.timeout.ms": int(2 * timed.timeout_s * 1000),
            "socket.timeout.ms": min(int(timed.timeout_s * 1000), 300_000),  # its limit
        }
        if timed.backoff_max_ms is not None:
            own["reconnect.backoff.max.ms"] = timed.backoff_max_ms
        self.measured = [
            confluent_kafka.Producer(
                {
                    **common,
                    **own,
                    "statistics.interval.ms": 1000,
                    "stats_cb": self._stats_callback(i),
                }
            )
            for i in range(measured)
        ]

    @staticmethod
    def _stats_callback(index: int) -> Callable[[str], None]:
        def on_stats(raw: str) -> None:
            stats = json.loads(raw)
            for broker in stats.get("brokers", {}).values():
                if broker.get("nodeid", -1) < 0 or not broker.get("rtt", {}).get("cnt"):
                    continue
                emit(
                    "librdkafka",
                    library="confluent-kafka",
                    producer=index,
                    t=time.time(),
                    int_latency_us=broker["int_latency"]["p50"],
                    outbuf_latency_us=broker["outbuf_latency"]["p50"],
                    rtt_us=broker["rtt"]["p50"],
                    state=broker.get("state"),
                )

        return on_stats

    def send_crowd(self, index: int) -> None:
        self.crowd[index].produce(TOPIC, CROWD_MESSAGE)

    def send_measured(self, index: int, payload: bytes) -> None:
        request = OUTSTANDING.open(self.library, index)

        def on_delivery(error: Any, _message: Any) -> None:
            OUTSTANDING.close(request, str(error) if error else None)

        self.measured[index].produce(TOPIC, payload, on_delivery=on_delivery)

    def pump(self) -> None:
        for producer in self.measured:
            producer.poll(0)
        for producer in self.crowd:
            producer.poll(0)

    def close(self, flush_s: float) -> None:
        # only the measured producers' last answers matter; the crowd is dropped as is
        deadline = time.monotonic() + flush_s
        for producer in self.measured:
            producer.flush(max(0.0, deadline - time.monotonic()))


class KafkaPythonClients:
    library = "kafka-python"

    def __init__(self, bootstrap: str, crowd: int, measured: int, timed: Timed) -> None:
        from kafka import KafkaProducer

        def make(**own: Any) -> Any:
            return KafkaProducer(
                bootstrap_servers=bootstrap,
                acks=1,
                linger_ms=0,
                max_request_size=4_000_000,
                max_block_ms=60000,
                **{"request_timeout_ms": 60000, "delivery_timeout_ms": 120000, **own},
            )

        own: dict[str, Any] = {
            "request_timeout_ms": int(timed.timeout_s * 1000),
            "delivery_timeout_ms": int(2 * timed.timeout_s * 1000),
        }
        if timed.backoff_max_ms is not None:
            own["reconnect_backoff_max_ms"] = timed.backoff_max_ms
        self.crowd = [make() for _ in range(crowd)]
        self.measured = [make(**own) for _ in range(measured)]

    def send_crowd(self, index: int) -> None:
        self.crowd[index].send(TOPIC, CROWD_MESSAGE)

    def send_measured(self, index: int, payload: bytes) -> None:
        request = OUTSTANDING.open(self.library, index)
        future = self.measured[index].send(TOPIC, payload)
        future.add_callback(lambda _metadata: OUTSTANDING.close(request, None))
        future.add_errback(lambda error: OUTSTANDING.close(request, repr(error)))

    def pump(self) -> None:
        pass  # kafka-python's own I/O thread per producer does the work

    def close(self, flush_s: float) -> None:
        from kafka.errors import KafkaTimeoutError

        deadline = time.monotonic() + flush_s
        for producer in self.measured:
            # what is left is reported as pending, and counted
            with contextlib.suppress(KafkaTimeoutError):
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))


# Set by SIGUSR1: the run asks the clients to end now, the way their duration would
# (a lab run whose phases last what they last, heal's under an emulated CPU)
STOP = threading.Event()


def run(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: STOP.set())
    # each producer holds a connection or two; many producers need many descriptors
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.CRITICAL)
    factory = ConfluentClients if args.library == "confluent-kafka" else KafkaPythonClients
    timed = Timed(args.timeout_s, args.reconnect_backoff_max_ms)
    clients = factory(args.bootstrap, args.crowd, args.measured, timed)
    payload = b"m" * args.message_bytes
    emit("ready", library=clients.library, crowd=args.crowd, measured=args.measured, t=time.time())
    start = time.monotonic()
    interval = args.interval_ms / 1000
    # spread the producers over the interval so they do not all send at once
    next_measured = [start + interval * i / max(1, args.measured) for i in range(args.measured)]
    every = args.crowd_interval_s
    next_crowd = [start + every * i / max(1, args.crowd) for i in range(args.crowd)]
    while (now := time.monotonic()) - start < args.duration and not STOP.is_set():
        for i, due in enumerate(next_measured):
            if now >= due:
                clients.send_measured(i, payload)
                next_measured[i] = due + interval
        for i, due in enumerate(next_crowd):
            if now >= due:
                clients.send_crowd(i)
                next_crowd[i] = due + every
        clients.pump()
        time.sleep(0.002)
    # what the measured producers still have queued gets up to their request timeout to
    # be answered (a message still waiting then is counted lost); a healthy path takes
    # well under a second, so this waits only where something is wrong
    clients.close(args.timeout_s)
    OUTSTANDING.report_pending()
    OUTSTANDING.report_counts()
    emit("done", library=clients.library, t=time.time())
    # Tearing down hundreds of producers one by one takes longer than the run itself;
    # the process exit closes their sockets at once.
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="tcpsleuth lab clients")
    parser.add_argument("--library", choices=["confluent-kafka", "kafka-python"], required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--crowd", type=int, default=50)
    parser.add_argument("--measured", type=int, default=4)
    parser.add_argument("--message-bytes", type=int, default=65536)
    parser.add_argument("--interval-ms", type=float, default=100)
    parser.add_argument("--crowd-interval-s", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=60,
        help="the measured producers' request timeout (their delivery timeout: twice it)",
    )
    parser.add_argument(
        "--reconnect-backoff-max-ms",
        type=int,
        default=None,
        help="the measured producers' longest reconnect backoff (default: the library's)",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
