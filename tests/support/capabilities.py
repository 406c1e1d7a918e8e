"""What this machine lets the tests do, decided once: root, the JDK and Maven that
build the lab's Kafka, the tools some tests compare against or run. Test files import
these flags and skip marks instead of writing their own checks.

Which tests need root is not decided here but in tests/conftest.py
(``pytest_collection_modifyitems``): it marks them ``root`` and skips them without
root, so that ``pytest -m "not root"`` selects exactly the tests a user may run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def missing(*tools: str) -> list[str]:
    """The tools of ``tools`` not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


HAS_ROOT = os.geteuid() == 0
# the lab builds its Kafka (and the agent that reads the broker's metrics) with Maven
HAS_JDK = not missing("java", "mvn")
# Debian installs nginx in /usr/sbin, which a user's PATH may lack
HAS_NGINX = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
HAS_TSHARK = not missing("tshark")
HAS_BPFTRACE = not missing("bpftrace")
HAS_PODMAN = not missing("podman")
HAS_SYSTEMD_ANALYZE = not missing("systemd-analyze")
# what an emulated guest kernel needs (virtme-ng, QEMU, a kernel build)
GUEST_TOOLS = ("vng", "qemu-system-x86_64", "make")

needs_jdk = pytest.mark.skipif(not HAS_JDK, reason="needs a JDK and Maven (java, mvn)")
needs_nginx = pytest.mark.skipif(not HAS_NGINX, reason="nginx not installed (scripts/install.sh)")
needs_systemd_analyze = pytest.mark.skipif(
    not HAS_SYSTEMD_ANALYZE, reason="systemd-analyze is not installed"
)
