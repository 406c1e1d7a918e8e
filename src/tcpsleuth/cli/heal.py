"""``tcpsleuth heal``: end the connections the SYN-cookie window-scale bug has hit, so
that their clients reconnect through an ordinary handshake; wiring only (the decisions
are detectors/heal.py's, the ending sources/sockdestroy.py's and sources/tcpreset.py's).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import replace

import click

from tcpsleuth.cli.options import PORT, FiniteFloat, format_option, netns_option
from tcpsleuth.detectors import heal as detect
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.listeners import listener_facts
from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.model.heal import DiagSocket, Ended
from tcpsleuth.model.records import HostSnapshot, Listener, TcpConnection
from tcpsleuth.recorder.healing import kernel_verdict
from tcpsleuth.reports import jsonout, table
from tcpsleuth.reports.healview import HealResult, render
from tcpsleuth.sources import netns, procfs, sampling, sockdestroy, sockdiag, tcpreset

REFUSED = 2


def _counters(netns_name: str | None) -> dict[str, int]:
    with netns.entered(netns_name):
        return procfs.read_live_counters()


def _connection(sock: DiagSocket) -> TcpConnection:
    return TcpConnection(
        sock.local_ip,
        sock.local_port,
        sock.remote_ip,
        sock.remote_port,
        sock.state,
        snd_wscale=sock.snd_wscale,
        rcv_wscale=sock.rcv_wscale,
    )


def _look(
    netns_name: str | None, port: int, verdict: KernelVerdict
) -> tuple[list[detect.ListenerPlan], list[DiagSocket], dict[str, str], list[Listener]]:
    sysctls = sampling.read_sysctls(netns_name)
    found = sockdestroy.sockets(netns_name, [port])
    listening = [x for x in sockdiag.listeners(netns_name) if x.local_port == port]
    snapshot = HostSnapshot(
        origin="heal",
        hostname="",
        kernel_release=verdict.release,
        sysctls=sysctls,
        counters={},
        listeners=listening,
        connections=[_connection(s) for s in found if s.state == "ESTAB"],
    )
    plans = detect.plan_listeners(listener_facts(snapshot), verdict)
    return plans, found, sysctls, listening


def _accept_queues(listening: list[Listener]) -> dict[str, int]:
    queues: dict[str, int] = {}
    for x in listening:
        queues[x.local] = queues.get(x.local, 0) + x.accept_queue
    return queues


class Ender:
    """Ends hit connections by one method, switching from destroy to reset once when the
    kernel cannot destroy sockets and the method was left to heal (auto)."""

    def __init__(self, netns_name: str | None, method: str, firewall_seconds: int) -> None:
        self.netns_name = netns_name
        self.method = "destroy" if method in ("auto", "destroy") else "reset"
        self.asked = method
        self.firewall_seconds = firewall_seconds
        self.destroyer: sockdestroy.Destroyer | None = None
        self.injector: tcpreset.Injector | None = None
        self.table: tcpreset.ResetTable | None = None
        if self.method == "reset":
            self._start_reset()
        else:
            self.destroyer = sockdestroy.Destroyer(netns_name)

    def _start_reset(self) -> None:
        self.method = "reset"
        self.injector = tcpreset.Injector(self.netns_name)
        self.table = tcpreset.ResetTable(self.netns_name, self.firewall_seconds)

    def firewall(self) -> dict[str, object] | None:
        if self.table is None:
            return None
        return {
            "table": f"inet {self.table.name}",
            "owner_flag": self.table.owner_flag,
            "element_timeout_s": self.firewall_seconds,
        }

    def close(self) -> None:
        if self.destroyer is not None:
            self.destroyer.close()
        if self.injector is not None:
            self.injector.close()
        if self.table is not None:
            self.table.close()

    def end_batch(self, batch: list[tuple[str, DiagSocket]], started: float) -> list[Ended]:
        if self.method == "destroy":
            return [self._destroy(listener, sock, started) for listener, sock in batch]
        return self._reset(batch, started)

    def _destroy(self, listener: str, sock: DiagSocket, started: float) -> Ended:
        assert self.destroyer is not None
        code = self.destroyer.destroy(sock)
        at = time.monotonic() - started
        if code == 0:
            return Ended(sock, listener, "destroy", "ended", at)
        if code in (errno.ENOENT, errno.ESTALE):
            return Ended(sock, listener, "destroy", "gone", at, "closed before heal came to it")
        if code == errno.EPERM:
            raise EnvironmentProblem("ending sockets needs CAP_NET_ADMIN: run heal as root")
        if code in sockdestroy.UNSUPPORTED:
            if self.asked == "destroy":
                name = "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode[code]
                raise EnvironmentProblem(
                    f"this kernel cannot destroy sockets through sock_diag ({name}: built "
                    "without CONFIG_INET_DIAG_DESTROY, or older than 4.5); use --method reset"
                )
            self.destroyer.close()
            self.destroyer = None
            self._start_reset()
            return self._reset([(listener, sock)], started)[0]
        return Ended(sock, listener, "destroy", "failed", at, os.strerror(code))

    def _still_open(self, batch: list[tuple[str, DiagSocket]]) -> set[int]:
        port_set = {sock.local_port for _, sock in batch}
        now = {s.cookie for s in sockdestroy.sockets(self.netns_name, port_set)}
        return {sock.cookie for _, sock in batch if sock.cookie in now}

    def _reset(self, batch: list[tuple[str, DiagSocket]], started: float) -> list[Ended]:
        """Both ends of each connection of the batch (see sources/tcpreset.py): the
        server's socket is provoked until it is gone (a challenge ACK is sent at most
        twice a second per socket), then the client's."""
        assert self.table is not None and self.injector is not None
        # a firewall element names a four-tuple, not a socket: only sockets still there
        # under their cookie get one (a connection that closed meanwhile is not ended)
        there = self._still_open(batch)
        at = time.monotonic() - started
        gone = [
            Ended(sock, listener, "reset", "gone", at, "closed before heal came to it")
            for listener, sock in batch
            if sock.cookie not in there
        ]
        batch = [(listener, sock) for listener, sock in batch if sock.cookie in there]
        if not batch:
            return gone
        for _, sock in batch:
            self.table.add(sock)
        open_now = {sock.cookie for _, sock in batch}
        for _attempt in range(8):
            for _, sock in batch:
                if sock.cookie in open_now:
                    self.injector.provoke_server(sock)
            time.sleep(0.05)
            open_now = self._still_open(batch)
            if not open_now:
                break
            time.sleep(0.5)  # tcp_invalid_ratelimit: one challenge ACK per 500 ms
        for _, sock in batch:
            if sock.cookie not in open_now:
                self.injector.provoke_client(sock)
        time.sleep(0.3)  # the client's duplicate ACK comes back and is rejected
        out = gone
        at = time.monotonic() - started
        for listener, sock in batch:
            self.table.remove(sock)
            if sock.cookie in open_now:
                out.append(Ended(sock, listener, "reset", "failed", at, "server socket kept"))
            else:
                out.append(Ended(sock, listener, "reset", "ended", at))
        return out


def _work(
    netns_name: str | None,
    hits: list[tuple[detect.ListenerPlan, DiagSocket]],
    ender: Ender,
    per_second: int,
    baseline: dict[str, int],
    started: float,
) -> tuple[list[Ended], str | None]:
    """End ``hits`` ``per_second`` a second; stop at once when a SYN cookie is sent. The
    counter is read before each connection; the reset method ends a second's batch
    together (its challenge ACKs are limited per socket, not per batch), so it stops
    before the next batch."""
    ended: list[Ended] = []
    queue = [(plan.local, sock) for plan, sock in hits]
    for first in range(0, len(queue), per_second):
        tick = time.monotonic()
        batch = queue[first : first + per_second]
        group: list[tuple[str, DiagSocket]] = []
        for item in batch:
            sent = _counters(netns_name).get(detect.COOKIES_SENT, 0) - baseline.get(
                detect.COOKIES_SENT, 0
            )
            if sent > 0:
                # at once: what is not ended yet (a reset batch being gathered) stays
                return ended, f"{sent} SYN cookie(s) sent while heal worked"
            if ender.method == "destroy":
                ended += ender.end_batch([item], started)
            else:
                group.append(item)
        ended += _flush(ender, group, started)
        if first + per_second < len(queue):
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return ended, None


def _flush(ender: Ender, group: list[tuple[str, DiagSocket]], started: float) -> list[Ended]:
    return ender.end_batch(group, started) if group else []


def _verify(
    netns_name: str | None,
    port: int,
    ended: list[Ended],
    cookies_before: frozenset[int],
    plans: list[detect.ListenerPlan],
    wait: float,
) -> tuple[list[dict[str, object]], list[Ended]]:
    deadline = time.monotonic() + wait
    while True:
        back, missing = detect.came_back(
            ended, sockdestroy.sockets(netns_name, [port]), cookies_before, plans
        )
        if not missing or time.monotonic() >= deadline:
            return back, missing
        time.sleep(0.5)


def _finish(result: HealResult, output_format: str, status: int) -> int:
    if output_format == "json":
        verdict = result.judged().to_dict()
        jsonout.emit(jsonout.document("heal", [], verdict=verdict, **result.data()))
    elif result.refused is None:
        table.console().print(render(result))
    return status


def _refusal_after_quiet(
    netns_name: str | None,
    port: int,
    plans: list[detect.ListenerPlan],
    before: dict[str, int],
    quiet_seconds: float,
) -> str | None:
    """Why --apply refuses after waiting ``quiet_seconds`` (SYN cookies or overflows
    meanwhile, counted from ``before``), or None."""
    time.sleep(quiet_seconds)
    after = _counters(netns_name)
    listening = [x for x in sockdiag.listeners(netns_name) if x.local_port == port]
    return detect.refusal_by_counters(
        before, after, quiet_seconds, plans, _accept_queues(listening)
    )


def _end_and_verify(
    result: HealResult,
    netns_name: str | None,
    port: int,
    found: list[DiagSocket],
    plans: list[detect.ListenerPlan],
    hits: list[tuple[detect.ListenerPlan, DiagSocket]],
    *,
    method: str,
    rate: int,
    firewall_timeout: int,
    wait: float,
    output_format: str,
) -> int:
    """--apply once every check has passed: end ``hits`` at the pace the backlog takes,
    wait for their clients to come back, and finish with the exit status."""
    cookies_before = frozenset(s.cookie for s in found)
    backlog = min((p.backlog for p, _ in hits), default=1)
    result.per_second = detect.per_second(backlog, rate)
    baseline = _counters(netns_name)
    started = time.monotonic()
    ender = Ender(netns_name, method, firewall_timeout)
    try:
        ended, stopped = _work(netns_name, hits, ender, result.per_second, baseline, started)
    finally:
        result.method = ender.method
        result.firewall = ender.firewall()
        ender.close()
    result.ended, result.stopped = ended, stopped
    back, missing = _verify(netns_name, port, ended, cookies_before, plans, wait)
    result.came_back, result.not_back = back, missing
    result.cookies_during = _counters(netns_name).get(detect.COOKIES_SENT, 0) - baseline.get(
        detect.COOKIES_SENT, 0
    )
    result.seconds = time.monotonic() - started
    healed = all(e.outcome != "failed" for e in ended) and not missing and stopped is None
    return _finish(result, output_format, 0 if healed else 1)


@click.command("heal")
@click.option("--port", type=PORT, required=True, help="The listeners' port (Kafka: 9092).")
@netns_option
@click.option("--apply", "apply_", is_flag=True, help="End the hit connections (default: list).")
@click.option(
    "--method",
    type=click.Choice(["auto", "destroy", "reset"]),
    default="auto",
    show_default=True,
    help="destroy: SOCK_DESTROY through sock_diag; reset: a reset to each end through a "
    "firewall table that expires; auto: destroy, or reset where the kernel cannot destroy.",
)
@click.option(
    "--rate",
    type=click.IntRange(1, 100000),
    default=100,
    show_default=True,
    help="At most this many connections ended a second (also at most half the backlog).",
)
@click.option(
    "--quiet-seconds",
    type=FiniteFloat(0.2, 600),
    default=5.0,
    show_default=True,
    help="--apply refuses if SYN cookies or overflows happened within this many seconds.",
)
@click.option(
    "--wait",
    type=FiniteFloat(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the ended clients to come back.",
)
@click.option(
    "--firewall-timeout",
    type=click.IntRange(2, 3600),
    default=10,
    show_default=True,
    help="--method reset: seconds each firewall set element lives, even if heal is killed.",
)
@format_option
def heal_command(
    port: int,
    netns: str | None,
    apply_: bool,
    method: str,
    rate: int,
    quiet_seconds: float,
    wait: float,
    firewall_timeout: int,
    output_format: str,
) -> int:
    """End the connections the SYN-cookie window-scale bug has hit, without restarting
    the server: on a kernel that lacks the fix (or may), a connection made by cookie to
    a listener that locks SO_RCVBUF uses another window-scale shift (rcv_wscale) than
    the listener's other connections. Ended after the storm, its client reconnects with
    an ordinary handshake and both ends agree again.

    A verdict first (also "verdict" in the JSON): how many connections are hit, what
    --apply would do or did, and the lasting fixes. Dry run by default: lists every hit
    connection and which evidence decided each listener's two shifts (exit 1 when there
    is something to heal, 0 when not). With
    --apply it ends them at a pace the backlog can take, stops at once if a SYN cookie
    is sent meanwhile, and checks that each client came back with the listener's own
    shift (exit 0 all came back, 1 some did not, 2 refused: still overflowing, or
    tcp_syncookies=2). Needs root.

    \b
    Examples:
      sudo tcpsleuth heal --port 9092
      sudo tcpsleuth heal --port 9092 --apply
      sudo tcpsleuth heal --port 9092 --apply --method reset --rate 20
      sudo tcpsleuth heal --port 9092 --netns container:kafka1 --format json
    """
    verdict = kernel_verdict()
    plans, found, sysctls, listening = _look(netns, port, verdict)
    if not listening:
        raise EnvironmentProblem(f"nothing listens on port {port} here")
    hits = detect.hit(found, plans)
    origin = f"network namespace {netns}" if netns else "this host"
    result = HealResult(origin, port, verdict, plans, hits, apply_, netns=netns)
    result.would_refuse = detect.refusal_by_settings(sysctls)
    if not apply_:
        if hits:  # what --apply would do: its pace
            result.per_second = detect.per_second(min(p.backlog for p, _ in hits), rate)
        return _finish(result, output_format, 1 if hits else 0)
    result.would_refuse = None
    if not hits:
        return _finish(result, output_format, 0)
    before = _counters(netns)
    refused = detect.refusal_by_settings(sysctls)
    if refused is None:
        refused = _refusal_after_quiet(netns, port, plans, before, quiet_seconds)
        # the sockets again: a connection may have closed while heal waited
        plans, found, _sysctls, _listening = _look(netns, port, verdict)
        hits = detect.hit(found, plans)
        result = replace(result, plans=plans, hit=hits)
    if refused is not None:
        result.refused = refused
        click.echo(f"tcpsleuth: heal refused: {refused}", err=True)
        return _finish(result, output_format, REFUSED)
    if not hits:
        return _finish(result, output_format, 0)  # they closed while heal waited
    return _end_and_verify(
        result,
        netns,
        port,
        found,
        plans,
        hits,
        method=method,
        rate=rate,
        firewall_timeout=firewall_timeout,
        wait=wait,
        output_format=output_format,
    )
