"""Real nginx (Debian's package) in a lab namespace, with its own configuration.

Each ``NginxServer`` writes an nginx.conf of its own into a work directory (pid file,
logs and temporary paths there too), starts ``nginx -c THAT -p WORKDIR`` inside the
namespace (``ip netns exec``) in the foreground (``daemon off``), and stops it with
SIGQUIT (a graceful shutdown). The host's /etc/nginx and its service are never read
or touched. Every ``listen`` can carry ``backlog=`` and ``rcvbuf=``: nginx sets
SO_RCVBUF on the listening socket after listen(), which locks its receive buffer.

Every location answers ``GET /`` with a small body on a keep-alive connection held
for up to an hour, so a reconnect storm's connections stay open for ``ss`` to see.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.processes import Child, ServerChild
from tcpsleuth.sources import sockdiag


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    backlog: int | None = None  # None: nginx's default, 511 on Linux
    rcvbuf: int | None = None  # None: no rcvbuf=, the kernel sizes the buffer

    @property
    def directive(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"listen {host}:{self.port}"
        if ":" in self.host:
            text += " ipv6only=on"
        if self.backlog is not None:
            text += f" backlog={self.backlog}"
        if self.rcvbuf is not None:
            text += f" rcvbuf={self.rcvbuf}"
        return text + ";"


def nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise EnvironmentProblem(
            "the lab's nginx is Debian's package and there is no `nginx` "
            "(apt-get install nginx, or run scripts/install.sh)"
        )
    return found


def configuration(listens: list[Listen], workdir: Path) -> str:
    servers = "\n".join(
        f"""    server {{
        {listen.directive}
        location / {{ return 200 "tcpsleuth lab\\n"; }}
    }}"""
        for listen in listens
    )
    return f"""# tcpsleuth lab: nginx with its own configuration (never /etc/nginx)
daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    worker_connections 16384;
}}
worker_rlimit_nofile 40000;
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_timeout 3600s;
    keepalive_requests 100000;
{servers}
}}
"""


class NginxServer(ServerChild):
    """nginx in namespace ``ns`` with the given listeners; ``start`` returns once every
    one of them listens."""

    STOP_SIGNAL = signal.SIGQUIT  # graceful: finish the open requests
    STOP_TIMEOUT_S = 10.0

    def __init__(self, ns: str, listens: list[Listen], workdir: Path | None = None) -> None:
        self.ns, self.listens = ns, listens
        self.binary = nginx()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tcpsleuth-nginx-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "nginx.conf"
        self.config.write_text(configuration(listens, self.workdir))
        self.child: Child | None = None

    def _listening(self) -> bool:
        ports = {listen.port for listen in self.listens}
        found = {x.local_port for x in sockdiag.listeners(self.ns) if x.local_port in ports}
        return found == ports

    def start(self, timeout: float = 60) -> float:
        started = time.monotonic()
        argv = [self.binary, "-c", str(self.config), "-p", str(self.workdir)]
        self.child = Child(argv, ns=self.ns, merge_stderr=True)
        while not self._listening():
            if self.child.process.poll() is not None:
                said = "".join(self.child.all_lines).strip()[-800:]
                log = self.workdir / "error.log"
                if log.exists():
                    said += log.read_text()[-800:]
                raise EnvironmentProblem(f"nginx exited before it listened: {said or 'no output'}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise EnvironmentProblem(f"nginx did not listen within {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - started
