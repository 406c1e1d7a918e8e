"""What the recorder says about itself: the counters and states its metrics expose
(``reports.prometheus.recorder_families``), written by the recorder's parts as they
work and read by the metrics file and endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """What the metrics say about the recorder."""

    started: float = field(default_factory=time.time)
    incidents_total: int = 0
    incidents_on_disk: int = 0
    last_incident: float = 0.0
    last_incident_name: str = ""
    events_total: dict[str, int] = field(default_factory=dict)
    events_suppressed_total: int = 0
    capture_up: bool = False
    capture_packets_total: int = 0
    capture_dropped_total: int = 0
    capture_capped_total: int = 0  # kept out of the ring by the disk cap
    disk_bytes: int = 0
    disk_limit_bytes: int = 0
    ring_seconds: float = 0.0
    sample_seconds: float = 0.0
    samples_total: int = 0
    sampling_errors_total: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # what -> why (one line)
