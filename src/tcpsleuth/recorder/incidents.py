"""From events to incidents. Pure: times and events in, decisions out.

- An incident opens at an event. Every event within ``merge_s`` of the previous one
  joins it and pushes the end of its capture window to ``after_s`` past that event;
  the incident is closed once ``merge_s`` (or ``after_s``, if longer) has passed
  without an event, and ``max_s`` after its first event at the latest: a storm that
  never stops still gives incidents of bounded size.
- An outage is part of its incident: while a watched port that had a listener has
  none (the broker is down, restarting), the open incident is held open as if an
  event came each sample (``hold``), so the events of a broker's stop and of the
  reconnect storm when it returns minutes later are one incident, within ``max_s``.
- So are the connections the bug has hit: while the watched ports hold connections
  with the SYN-cookie window-scale bug's shift (counted by the loop while an incident
  is open, without ``--heal``), the incident is held open the same way.
- At most ``per_hour`` incidents open in any 60 minutes. An event that would open one
  more is counted (``suppressed``) and not recorded.

So with the defaults (merge 60 s, max 300 s, 6 per hour) a reconnect storm of a few
seconds and its after-effects make one incident, and the worst case, a storm that
lasts for hours, gives an incident every 5 minutes until the sixth, then nothing
until the first is an hour old.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field

HOUR = 3600.0


@dataclass(frozen=True)
class Policy:
    before_s: float = 30.0
    after_s: float = 30.0
    merge_s: float = 60.0
    max_s: float = 300.0
    per_hour: int = 6


def incident_name(first_event: float) -> str:
    return "incident-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(first_event))


@dataclass
class Open:
    """An incident while it lasts."""

    name: str
    first_event: float
    last_event: float
    kinds: list[str] = field(default_factory=list)
    events: int = 0
    cut_at: float | None = None  # the recorder stopped before the window's end
    held_at: float | None = None  # the last sample at which a watched listener was absent

    @property
    def last_activity(self) -> float:
        """The last event, or the last moment it was held open, whichever is later."""
        return self.last_event if self.held_at is None else max(self.last_event, self.held_at)

    def end(self, policy: Policy) -> float:
        """The end of the capture window."""
        end = min(self.last_activity + policy.after_s, self.first_event + policy.max_s)
        return end if self.cut_at is None else min(end, self.cut_at)

    def close_at(self, policy: Policy) -> float:
        """When no later event can join it any more."""
        return min(
            self.last_activity + max(policy.after_s, policy.merge_s),
            self.first_event + policy.max_s,
        )

    @property
    def start(self) -> float:
        return self.first_event

    def window(self, policy: Policy) -> tuple[float, float]:
        return (self.first_event - policy.before_s, self.end(policy))


class Decision(enum.StrEnum):
    """What a sample's events did to the incidents (:meth:`Incidents.on_events`)."""

    OPENED = "opened"  # a new incident
    JOINED = "joined"  # the open one
    SUPPRESSED = "suppressed"  # over the hourly limit
    NONE = "none"  # no event, or the open incident is closing


@dataclass
class Incidents:
    policy: Policy
    opened: deque[float] = field(default_factory=deque)  # when incidents opened (epoch s)
    current: Open | None = None
    suppressed: int = 0

    def allowed(self, now: float) -> bool:
        while self.opened and self.opened[0] <= now - HOUR:
            self.opened.popleft()
        return len(self.opened) < self.policy.per_hour

    def on_events(self, now: float, kinds: list[str]) -> Decision:
        """What events seen at ``now`` did to the incidents."""
        if not kinds:
            return Decision.NONE
        current = self.current
        if (
            current is not None
            and now - current.last_activity <= self.policy.merge_s
            and now <= current.first_event + self.policy.max_s
        ):
            current.last_event = now
            current.events += len(kinds)
            current.kinds += [k for k in kinds if k not in current.kinds]
            return Decision.JOINED
        if current is not None:
            return Decision.NONE  # the open one is closing; its successor opens after it
        if not self.allowed(now):
            self.suppressed += len(kinds)
            return Decision.SUPPRESSED
        self.opened.append(now)
        self.current = Open(incident_name(now), now, now, list(dict.fromkeys(kinds)), len(kinds))
        return Decision.OPENED

    def hold(self, now: float) -> bool:
        """Keep the open incident open at ``now`` (a watched listener is absent); False
        when there is none, or it has reached ``max_s``."""
        current = self.current
        if current is None or now > current.first_event + self.policy.max_s:
            return False
        current.held_at = now
        return True

    def due(self, now: float) -> Open | None:
        """The open incident, once its end has passed (it is then closed)."""
        if self.current is not None and now >= self.current.close_at(self.policy):
            done, self.current = self.current, None
            return done
        return None
