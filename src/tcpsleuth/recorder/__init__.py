"""``tcpsleuth record``: a long-running recorder that keeps the evidence of the next
reconnect storm by itself.

- :mod:`.ring`: tcpdump writing a ring of header-only capture files, rotated by time
  into uniquely named files (never ``-C``/``-W``, which reuse and truncate files in
  place), with the kernel's packet drops read from tcpdump;
- :mod:`.disk`: what the recorder holds on disk, and the cap (``--max-disk``): old ring
  files go first, then the oldest incidents, and the capture pauses as a last resort;
  its ``Guard`` keeps the cap on a thread of its own and sets the ring's budget;
- :mod:`.incidents`: events to incidents (events close together are one incident; a
  limit per hour), pure;
- :mod:`.capture`: the window of an incident copied out of the ring, the payload past
  the Kafka request header cut;
- :mod:`.freeze`: the incident's evidence while it lasts (ring links, sock_diag
  snapshots, the host bundle, a short trace);
- :mod:`.incident_writer`: events to incidents, and each incident's evidence written
  while it lasts;
- :mod:`.analysis_queue`: incidents waiting for their analysis, one child at a time;
- :mod:`.finish`: the incident made whole and analysed, in that child process;
- :mod:`.analysis`: an incident's evidence through tcpsleuth's own detectors;
- :mod:`.healing`: the connections the bug has hit, counted (an incident is held open
  while they last) and, with ``--heal``, ended once the storm is over;
- :mod:`.settings`, :mod:`.health`: what the recorder is told, what it says of itself;
- :mod:`.loop`: the sampling loop (as ``watch`` samples) wiring these parts: events,
  the ring kept running, health, metrics.

It sits with ``cli/`` and ``lab/`` in the wiring layer: it may use every other layer,
and ``cli/record.py`` and ``cli/report.py`` wire it to the command line.
"""
