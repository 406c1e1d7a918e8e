"""Rules shared by detectors of different sources, in one place.

A sender is "rwnd-limited" when it spent at least ``RWND_LIMITED_SHARE`` of the time
it had data to send waiting for its peer's receive window, and at least
``RWND_LIMITED_MIN_NS`` in all: a few milliseconds of waiting is ordinary slow
start. The kernel's own count (``tcp_info.tcpi_rwnd_limited``, ``ss -i``'s
``rwnd_limited``), bpftrace's per-segment view and a capture's reconstruction all
use this rule, so the same connection gets the same verdict whichever way it was
seen.
"""

from __future__ import annotations

RWND_LIMITED_SHARE = 0.2
RWND_LIMITED_MIN_NS = 20_000_000
RWND_LIMITED_MIN_US = RWND_LIMITED_MIN_NS // 1000
# In a capture, a wait counts only when the sender sent again right after the peer's
# next segment (it had data waiting); this many waits at least.
RWND_LIMITED_MIN_WAITS = 5
# More rwnd-limited connections than this to one server become one finding for it.
RWND_PER_LISTENER = 10
