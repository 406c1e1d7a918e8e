"""Children that do not outlive the tcpsleuth process that started them.

``die_with_parent`` is a ``preexec_fn`` for ``subprocess``: it sets
PR_SET_PDEATHSIG=SIGKILL in the child, which the kernel keeps across exec (and so across
``ip netns exec``, which execs its command). If tcpsleuth dies, even by SIGKILL, the
child is killed with it. The signal is tied to the thread that started the child, so
long-lived children are started from a thread that lives as long as they should. The
lab (lab/processes.py) and the recorder (recorder/children.py) start theirs this way.
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
