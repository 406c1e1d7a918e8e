"""The HTTP server of ``/metrics`` for the exporter and the recorder: prometheus-client's
WSGI application on a threading server of the standard library, as prometheus-client's
own ``start_http_server`` builds it, but quiet about clients that go away.

A client that resets its connection (a scraper killed mid-request, a port scanner, a
load balancer's health check) is the client's business: one line on standard error
naming it, never a Python traceback, and the server goes on. Anything else a request
raises is one line too.
"""

from __future__ import annotations

import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref import simple_server

import click
from prometheus_client import CollectorRegistry, make_wsgi_app

from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.text import to_int

GONE = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)


def _client(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


class _Response(simple_server.ServerHandler):
    """wsgiref drops a client that resets while the response is written without a
    word: this says it, in the same one line."""

    def finish_response(self) -> None:
        try:
            super().finish_response()
        except GONE as problem:
            server = getattr(self.request_handler, "server", None)  # type: ignore[attr-defined]
            if isinstance(server, MetricsServer):
                server.gone(self.request_handler.client_address, problem)  # type: ignore[attr-defined]
            raise


class _Request(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged."""

    def handle(self) -> None:
        # WSGIRequestHandler.handle, with the response handler above
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _Response(
            self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


class MetricsServer(ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    who = "tcpsleuth"

    def gone(self, address: Any, problem: OSError) -> None:
        click.echo(
            f"{self.who}: client {_client(address)} went away mid-request "
            f"({problem.strerror or type(problem).__name__})",
            err=True,
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        problem = sys.exc_info()[1]
        if isinstance(problem, GONE):
            self.gone(client_address, problem)
        else:
            click.echo(
                f"{self.who}: request from {_client(client_address)} failed: "
                f"{type(problem).__name__}: {problem}",
                err=True,
            )


def parse_listen(text: str, option: str, example: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``, the port ASCII digits from 1 to 65535 (a
    superscript or 5,000 digits is the same one line as any other bad port)."""
    host, sep, digits = text.rpartition(":")
    port = to_int(digits, 5) if sep else None
    if port is None or not 0 < port < 65536 or not host:
        shown = text if len(text) <= 64 else f"{text[:64]}... ({len(text)} characters)"
        raise InputError(f"{option} {shown!r}: expected HOST:PORT, e.g. {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def serve(host: str, port: int, registry: CollectorRegistry, who: str) -> MetricsServer:
    """Serve ``registry`` on ``host``:``port`` from a daemon thread; ``who`` starts
    the server's lines."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror}") from None

    class Server(MetricsServer):
        address_family = family

    Server.who = who
    try:
        server = simple_server.make_server(
            host, port, make_wsgi_app(registry), Server, handler_class=_Request
        )
    except OSError as exc:
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    assert isinstance(server, MetricsServer)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
