"""``tcpsleuth record``: a long-running recorder that keeps the evidence of the next
reconnect storm by itself.

- :mod:`.ring`: tcpdump writing a ring of header-only capture files, rotated by time
  into uniquely named files (never ``-C``/``-W``, which reuse and truncate files in
  place), with the kernel's packet drops read from tcpdump;
- :mod:`.disk`: what the recorder holds on disk, and the cap (``--max-disk``): old ring
  files go first, then the oldest incidents, and the capture pauses as a last resort;
- :mod:`.incidents`: events to incidents (events close together are one incident; a
  limit per hour), pure;
- :mod:`.capture`: the window of an incident copied out of the ring, the payload past
  the Kafka request header cut;
- :mod:`.freeze`: the incident's evidence while it lasts (ring links, sock_diag
  snapshots, the host bundle, a short trace);
- :mod:`.finish`: the incident made whole and analysed, in a child process;
- :mod:`.analysis`: an incident's evidence through tcpsleuth's own detectors;
- :mod:`.loop`: the recorder itself: sampling as ``watch`` does, events, incidents,
  disk, health, metrics.

It sits with ``cli/`` and ``lab/`` in the wiring layer: it may use every other layer,
and ``cli/record.py`` and ``cli/report.py`` wire it to the command line.
"""
