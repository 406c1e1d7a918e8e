"""A listener any local user could start: run as root with a crafted argv (argv[0]
given by the caller, the rest after this script's path is what tcpsleuth reads), it
names itself HOSTILE_COMM, enters HOSTILE_ROOT (a chroot, standing for a container)
when given, drops to HOSTILE_UID (65534, nobody, by default), listens on 127.0.0.1 on
a free port, prints the port and waits until its stdin closes.

Used by tests/system/safety/test_config_safety.py."""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    comm = os.environ.get("HOSTILE_COMM")
    if comm:
        with open("/proc/self/comm", "w") as handle:
            handle.write(comm[:15])
    root = os.environ.get("HOSTILE_ROOT")
    if root:
        os.chroot(root)
        os.chdir("/")
    cwd = os.environ.get("HOSTILE_CWD")
    if cwd:
        os.chdir(cwd)
    uid = int(os.environ.get("HOSTILE_UID", "65534"))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
