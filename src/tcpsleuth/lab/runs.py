"""What one lab run is given and what it yields: its size (``LabSize``: how many
clients, how long each phase) and its artifacts (``RunArtifacts``: the capture, the
clients' and broker's lines, counters, socket tables, phase boundaries), with the
constants every phase shares."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tcpsleuth.lab import healing
from tcpsleuth.lab.scenarios import Scenario
from tcpsleuth.sources.sockdiag import SocketTable

PORT = 9092
LIBRARIES = ("confluent-kafka", "kafka-python")
# The incident's buffers: tcp_rmem[2] = 6291456 gives a window-scale shift of 7.
TCP_RMEM = "4096 131072 6291456"


@dataclass(frozen=True)
class LabSize:
    # Producers that send a small message a second. Most are librdkafka ones: C threads
    # cost this 2-core machine little, while each kafka-python producer is a Python thread
    # that would slow the measured producers down.
    crowd: int = 500  # confluent-kafka
    crowd_kafka_python: int = 50
    # Kafka's Java producers (our harness on kafka-clients), with a real Kafka broker only:
    # a JVM with one I/O thread per producer
    crowd_java: int = 20
    measured: int = 4  # producers per library whose requests are timed
    message_bytes: int = 262144  # produce requests of hundreds of KB, as in the incident
    interval_ms: float = 200
    crowd_interval_s: float = 1.0  # how often each crowd producer sends its small message
    warmup_s: float = 4
    before_s: float = 10
    down_s: float = 0  # listener closed (see LabSize)
    startup_s: float = 2  # listening but not yet accepting (logs loading)
    settle_s: float = 3  # after accepting again, before the "after" window opens
    after_s: float = 12
    rtt_ms: float = 1.0
    rate_mbit: float = 1000
    # The broker's acceptor while the reconnect storm lasts (see broker.accept_loop).
    accept_rate: float = 100
    storm_s: float = 8
    amplify: bool = True  # see _storm_overflows
    # The timed producers' request timeout (their delivery timeout twice it) and longest
    # reconnect backoff (None: each library's own; Java's is 1000 ms)
    timeout_s: float = 60
    backoff_max_ms: int | None = None
    # With --heal: after heal has ended, before the "after heal" window opens (the
    # producers work off what they queued behind the small windows); that window lasts
    # after_s. With after_answered, the most it may take: the window opens as soon as
    # each timed producer has had a request sent after heal answered within drained_s
    # (its queue nearly empty: what is left drains in about as long, a small part of the
    # window that follows)
    heal_settle_s: float = 10
    drained_s: float = 1
    # With --heal, how often each timed producer sends (0: interval_ms): after heal the
    # producers work off minutes of backlog on top of what they keep sending, which the
    # path must carry with room to spare
    heal_interval_ms: float = 0
    # The "after" window by what happened (0: after_s alone): it lasts at least after_s
    # and until each timed producer has had this many requests sent in it answered, for
    # at most after_cap_s in all; a producer still short then is named in the result
    # (RunArtifacts.short), never an empty phase
    after_answered: int = 0
    after_cap_s: float = 0
    # After a restart the "after" window also waits until each timed producer has worked
    # off what it queued while the broker was away (a request sent after the broker
    # accepted again answered within drained_s), for at most this many times the outage
    # (restart to accepting; at least the settle, at most the storm's cap). A real JVM
    # restarted beside hundreds of clients on 2 cores was down 18 s and then worked its
    # producers' 20 s of queue off for 30 s (2026-12-08): a window opened before that
    # measured the cold broker's backlog, not the mitigation. Under the bug the queue
    # is never worked off and the window opens at this cap. 0: no such wait (the guest
    # sizes, whose outages last minutes and whose windows are sized by answers)
    drain_outages: float = 3.0

    @classmethod
    def small(cls) -> LabSize:
        """A reduced run for tests and CI: fewer clients, shorter phases."""
        return cls(
            crowd=300,
            crowd_kafka_python=20,
            crowd_java=10,
            measured=3,
            warmup_s=3,
            before_s=6,
            after_s=8,
        )

    @classmethod
    def guest(cls) -> LabSize:
        """For a guest kernel whose CPU QEMU emulates (some 20 times slower here):
        enough librdkafka producers that the reconnect storm overflows a backlog of 50,
        and one timed producer per library offering 1 MB/s (256 KB every 250 ms): what a
        healthy link carries easily and a 1.5 KB window at a 2 ms round trip cannot.
        Longer phases for the slower start."""
        return cls(
            crowd=56,
            crowd_kafka_python=0,
            crowd_java=0,
            # the crowd's small message every 5 s, not every second: the storm needs
            # their connections, not their requests, and on a slower host of this kind
            # (2026-12-07, heavy run on 566554c) the guest served 37 produce requests a
            # second where 56 crowd producers and 2 timed ones offered 58: the timed
            # producers' latency grew for the whole run, heal's "after" window included,
            # until their messages expired
            crowd_interval_s=5.0,
            measured=1,
            interval_ms=250,
            warmup_s=8,
            before_s=10,
            after_s=12,
            # measured (destroy, 2026-12-06): heal came some 60 s after the restart and
            # the producers then worked off what they had queued at about 0.7 s of
            # backlog a second: a 10 s settle measured that, not the healed connections;
            # a fixed 120 s did not always suffice either. The wait now ends when each
            # timed producer's queue has drained (drained_s), for at most this long
            heal_settle_s=600,
            # The emulated guest carries some 1.5 to 3 MB/s in all (it varies with the
            # host): at 1 MB/s each, the two timed producers' backlog after heal shrank
            # by half a second a second in one run (2026-12-06) and grew for ten minutes
            # in the next, until librdkafka's messages timed out. With heal they send
            # their 256 KB once a second; one stuck behind a small window still waits
            # minutes, as its connection carries next to nothing
            heal_interval_ms=1000,
            # under emulation every phase stretches with the host's CPU (issue 31: one
            # run's "after" window ended before any timed request after the restart
            # was answered): it lasts until each timed producer has five answers
            after_answered=5,
            after_cap_s=900,
            drain_outages=0,
            # at most 1 s between reconnect attempts (Java's default), as the crowd's
            # librdkafka producers come back: with their libraries' own longest backoffs
            # (librdkafka 10 s) the timed producers came back after the storm on
            # ordinary connections in a heavy run (5c8e8d7), and no window-limited cookie
            # connection was there to be named
            backoff_max_ms=1000,
        )

    @classmethod
    def guest_kafka(cls) -> LabSize:
        """The guest size with a real Apache Kafka: a JVM under the emulated CPU serves
        a few tens of produce requests a second, and 56 producers sending every second
        kept it saturated (its own Produce p50 625 ms, the clients' p50 a minute before
        any restart). The crowd sends every 5 s, as in the guest size (its connections
        still overflow the backlog when they all come back), the timed producers 64 KB every 250 ms
        (a window of 1 KB still makes that take seconds), and the warm-up gives the
        broker's JIT time.

        The broker is down for over a minute there (its restart under the emulated CPU),
        longer than the timed producers' 60 s timeouts and their libraries' longest
        reconnect backoff (librdkafka 10 s, kafka-python 30 s). A heavy run showed both
        escaping the storm: librdkafka's first requests after it, of messages queued
        across the restart, ran out of message time while half sent, so it dropped its
        cookie connection six times in 8 s; kafka-python's next attempt came 11 s after
        the port opened, when the storm was over. Both then sent on ordinary connections
        and the clients' p50 measured the healthy path. So the timed producers here get
        10 minute timeouts and at most 1 s between reconnect attempts (Java's default):
        the producers whose times are measured come back with the storm, as the crowd
        does, and keep the connection it gave them.

        They send their 64 KB once a second, not every 250 ms. What they queue while
        the broker is down waits ahead of every request sent after it is back, and a
        connection the bug hit carries some tens of KB/s there: on d6f3a99 (2026-12-07)
        a restart of 172 s left kafka-python 32 MB behind (its buffer.memory, full
        at 256 KB/s), and none of its requests sent after the restart was answered
        within the "after" window's 900 s cap. At 64 KB/s the same outage queues
        about 11 MB, a few minutes at that pace."""
        return replace(
            cls.guest(),
            message_bytes=65536,
            interval_ms=1000,
            warmup_s=40,
            timeout_s=600,
        )

    @property
    def after_extra_s(self) -> float:
        """How much longer than after_s the "after" window may last."""
        return max(0.0, self.after_cap_s - self.after_s) if self.after_answered else 0.0

    @property
    def duration_s(self) -> float:
        return (
            self.warmup_s
            + self.before_s
            + self.down_s
            + self.startup_s
            + self.settle_s
            + self.after_s
        )


@dataclass
class RunArtifacts:
    scenario: Scenario
    size: LabSize
    workdir: Path
    capture: Path
    broker_events: list[dict[str, Any]] = field(default_factory=list)
    client_lines: list[dict[str, Any]] = field(default_factory=list)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    server_sockets: SocketTable | None = None
    client_sockets: SocketTable | None = None
    window: dict[str, float] = field(default_factory=dict)  # phase boundaries (epoch s)
    rtt_probe_ms: float | None = None
    library_versions: dict[str, str] = field(default_factory=dict)
    server_sysctls: dict[str, str] = field(default_factory=dict)
    broker: str = ""
    reconnecting: int = 0  # the broker's established clients when it was restarted
    storm_extra_s: float = 0.0  # how much later than the settle the "after" window opened
    storm_answered: int | None = None  # of them answered again when the storm had passed
    # whether each timed producer had worked off its queue of the outage before the
    # "after" window opened (LabSize.drain_outages; None: not asked)
    drained: bool | None = None
    link: str = ""  # "netem" or "relay": what delays the link
    # A real Kafka broker's own request metrics (kafka_broker.request_metrics), per phase:
    # "before" just before the restart, "after" at the end (its histograms restart with it)
    broker_metrics: dict[str, Any] = field(default_factory=dict)
    # How long each step of the run took (s): a real broker's format and starts, the
    # clients' start, the restart; what a slow (emulated) CPU makes long
    phases_s: dict[str, float] = field(default_factory=dict)
    # what `tcpsleuth record`, attached with --record, recorded (recording.finish)
    recorder: dict[str, Any] | None = None
    # with --heal: what `tcpsleuth heal --apply` did after the storm (healing.run)
    heal: healing.HealRun | None = None
    # what the run tells tcpsleuth's own commands (heal, record) about the kernel:
    # "affected" in the prefix guest, whose release (6.1) the version table counts as
    # fixed; None elsewhere (they judge the kernel by themselves)
    kernel_told: str | None = None
    # phases that ended at their cap with timed producers short of their answers: phase
    # -> what was missing, in one line
    short: dict[str, str] = field(default_factory=dict)
