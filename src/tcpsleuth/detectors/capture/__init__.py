"""Connections out of a capture's TCP segments, with what TCP did to each of them.

Pure: TCP header columns in (:class:`tcpsleuth.model.capture.TcpColumns`), one chunk
of the capture at a time, records and findings out. One module per responsibility:

- :mod:`.kernels`: the compiled loops (tracking, window series, Kafka framing);
- :mod:`.tracking`: connections followed chunk by chunk (:class:`ConnectionTracker`),
  and :class:`DetailPass`, a few connections' segments from another pass; :mod:`.sides`
  names the tracker's per-direction fields and picks a side's; :mod:`.layout`
  lays the tracker's state out for the analysis (compiled);
- :mod:`.shards`: the per-connection passes on several cores, connections split by
  4-tuple over threads and merged in first-frame order before anything looks across
  connections;
- :mod:`.connections`: what is kept per connection (:class:`ConnectionColumns`), the
  records made from it on demand and the :class:`Analysis` detectors read;
- :mod:`.windows`: window series (:class:`SeriesPass`, from another pass) and
  ``rwnd-limited`` senders;
- :mod:`.cookies`: a SYN-cookie verdict per connection (``syn-cookies-seen``);
- :mod:`.wscale`: the window scale each server really used (``wscale-mismatch``,
  ``wscale-stripped``);
- :mod:`.kafka_framing`, :mod:`.kafka`, :mod:`.kafka_summary`: the Kafka wire format
  and its compiled follower; requests and responses paired into records; send time
  against broker time per client (``kafka-send-time``);
- :mod:`.selection`: which connections a report shows in detail;
- :mod:`.run`: all of them in one pass over a capture (the ``pcap`` command, the
  lab, the benchmarks), and the one more read (``second_pass``) that gives the
  JSON's window series and the graphs' segments together.

A connection is not a 4-tuple: a SYN with a new initial sequence number on a 4-tuple
seen before starts a new connection (loopback and busy servers reuse 4-tuples once
TIME_WAIT is over), as tshark numbers its ``tcp.stream``. Connections are numbered
by their first segment in the file, as tshark does. Windows are in bytes as the peer
computes them: the raw field shifted by the shift the sender announced in its SYN or
SYN-ACK, when both sides announced one (RFC 7323 2.2); windows of SYN segments are
never scaled.
"""

from tcpsleuth.detectors.capture.connections import (
    SERIES_POINTS,
    Analysis,
    CaptureConnection,
    ConnectionColumns,
    Connections,
)
from tcpsleuth.detectors.capture.selection import streams_named
from tcpsleuth.detectors.capture.tracking import ChunkRows, ConnectionTracker, analyse
from tcpsleuth.detectors.capture.windows import clients_hit, rwnd_findings, window_series
from tcpsleuth.model.capture import SEQ_SPACE

__all__ = [
    "SEQ_SPACE",
    "SERIES_POINTS",
    "Analysis",
    "CaptureConnection",
    "ChunkRows",
    "ConnectionColumns",
    "ConnectionTracker",
    "Connections",
    "analyse",
    "clients_hit",
    "rwnd_findings",
    "streams_named",
    "window_series",
]
