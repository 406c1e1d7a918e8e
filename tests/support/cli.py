"""Run the installed ``tcpsleuth`` command as a user would, for tests that check its
output: a fixed terminal width, no colour, a bounded time."""

from __future__ import annotations

import os
import subprocess
import sys


def tcpsleuth(*args: str, columns: int = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
