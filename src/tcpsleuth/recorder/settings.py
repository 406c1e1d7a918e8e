"""What the recorder is told: ``tcpsleuth record``'s options, as one frozen value
given to each of the recorder's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tcpsleuth.detectors import rates
from tcpsleuth.recorder.incidents import Policy


@dataclass(frozen=True)
class Settings:
    directory: Path
    ports: tuple[int, ...]
    netns: str | None = None
    interface: str = "any"
    snaplen: int = 200
    rotate_s: int = 10
    max_disk: int = 1 << 30
    policy: Policy = field(default_factory=Policy)
    thresholds: rates.Thresholds = field(
        default_factory=lambda: rates.Thresholds(
            cookies_per_second=10, overflows_per_second=10, rwnd_limited_jump=10
        )
    )
    queue_full: bool = True
    interval: float = 1.0
    later_s: float = 5.0
    trace_s: float = 5.0
    cut_payload: bool = True
    kafka_config: Path | None = None
    duration: float | None = None
    metrics_file: Path | None = None
    heal: bool = False  # end the bug's connections once an incident's storm is over
