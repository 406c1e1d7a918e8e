"""The table of ``tcpsleuth lab run``: one row a run, the mitigations against the baseline,
and a line per note; the same for runs made here and runs handed back by a guest."""

from __future__ import annotations

from typing import Any

from rich.console import Group

from tcpsleuth.reports import cookiecounts, table


def render_runs(reports: list[dict[str, Any]], matrix: dict[str, Any] | None = None) -> Group:
    """The runs' table; ``matrix`` is ``lab.analysis.mitigations(reports)``, where the
    runs hold a baseline."""
    parts: list[Any] = [_runs_table(reports)]
    if matrix is not None and len(reports) > 1:
        parts.append(_mitigations_table(matrix))
    for r in reports:
        parts += _run_notes(r)
    healed = [r for r in reports if r.get("heal")]
    if healed:
        parts += _heal_parts(healed)
    return Group(*parts)


def _runs_table(reports: list[dict[str, Any]]) -> table.Fitted:
    """One row a run: its latency before and after the restart, cookies, shifts, findings."""
    rows = []
    for r in reports:
        lat = r["latency_ms"]
        rows.append(
            (
                r["scenario"],
                lat["before"]["p50"],
                lat["after"]["p50"],
                lat["p50_ratio"],
                lat["after"]["p99"],
                r["counters"]["during_restart"].get("TcpExtSyncookiesSent"),
                _verdicts_cell(r.get("syn_cookies") or {}),
                " ".join(f"{k}:{v}" for k, v in r["shifts"].get("client_snd_wscale", {}).items()),
                ", ".join(
                    f"{k}×{sum(v.values())}"
                    for k, v in r["findings_by_kind"].items()
                    if k
                    in (
                        "wscale-mismatch",
                        "rwnd-limited",
                        "syn-cookies-sent",
                        "listen-backlog-small",
                        "tiny-window",
                    )
                ),
            )
        )
    return table.records_table(
        "Lab runs (produce latency in ms; p50 before and after the restart)",
        [
            "scenario",
            "p50 before",
            "p50 after",
            "ratio",
            "p99 after",
            "cookies sent",
            "capture: cookie/ordinary/undecided",
            "client shifts",
            "findings",
        ],
        rows,
    )


def _mitigations_table(matrix: dict[str, Any]) -> table.Fitted:
    """Each mitigation's clients' p50 after the restart against the baseline's."""
    return table.records_table(
        f"Mitigations: clients' produce p50 after the restart against the baseline's "
        f"({matrix['baseline_p50_ms']} ms); near it within "
        f"{matrix['near_baseline_factor']:g}x",
        ["scenario", "p50 after", "x baseline", "near", "per library", "broker p99"],
        [
            (
                row["scenario"],
                row["p50_after_ms"],
                row["vs_baseline"],
                {True: "yes", False: "no", None: "-"}[row["near_baseline"]],
                " ".join(
                    f"{library}:{stats['vs_baseline']}x"
                    for library, stats in row["by_library"].items()
                ),
                row["broker_produce_p99_after_ms"],
            )
            for row in matrix["runs"]
        ],
    )


def _run_notes(r: dict[str, Any]) -> list[str]:
    """The lines under the tables about one run: per-library p50s, cookie counts, phases,
    notes on the mitigation, the emulation, the kernel and the broker's own times."""
    parts: list[str] = []
    before, after = r["latency_ms"]["before"], r["latency_ms"]["after"]
    per_library = [
        f"{library} {before['by_library'].get(library, {}).get('p50', '-')} -> "
        f"{after['by_library'].get(library, {}).get('p50') or 'none sent'}"
        for library in sorted(before["by_library"].keys() | after["by_library"].keys())
    ]
    if per_library:
        parts.append(
            f"[dim]{r['scenario']}: clients' p50 before -> after the restart (ms): "
            + ", ".join(per_library)
            + ".[/dim]"
        )
    cookies = _cookie_line(r)
    if cookies:
        parts.append(f"[dim]{table.plain(cookies)}[/dim]")
    if r.get("phases_s") and "broker_ready" in r["phases_s"]:
        took = ", ".join(f"{name.replace('_', ' ')} {s} s" for name, s in r["phases_s"].items())
        parts.append(f"[dim]{r['scenario']} took: {took}.[/dim]")
    for why in (r.get("short_phases") or {}).values():
        parts.append(f"[yellow]{r['scenario']}: {table.plain(why)}.[/yellow]")
    if r.get("mitigation_note"):
        parts.append(f"[dim]{r['scenario']}: {r['mitigation_note']}.[/dim]")
    if r["emulation"]:
        parts.append(f"[dim]{r['scenario']} emulates {r['emulation']}.[/dim]")
    if r.get("kernel"):
        parts.append(f"[dim]{r['scenario']}: {r['kernel']['note']}.[/dim]")
    if r.get("broker_latency_ms"):
        own = r["broker_latency_ms"]
        parts.append(
            f"[dim]{r['scenario']}: the broker's own Produce TotalTimeMs p99 (request log) "
            f"{own['before']['produce_total']['p99']} ms before the restart, "
            f"{own['after']['produce_total']['p99']} ms after.[/dim]"
        )
    if r["storm_amplification"]:
        parts.append(f"[dim]{r['scenario']}: {r['storm_amplification']['what']}.[/dim]")
    return parts


def _verdicts_cell(cookies: dict[str, Any]) -> str:
    """The capture's connections by SYN-cookie verdict, ``117/33/0``; — without a capture
    (or in a report written before the lab counted them)."""
    names = ("cookie_connections", "ordinary_connections", "undecided_connections")
    if any(cookies.get(name) is None for name in names):
        return "—"
    return "/".join(str(cookies[name]) for name in names)


def _cookie_line(r: dict[str, Any]) -> str | None:
    """The run's cookie counts in words: the three verdicts of the capture's connections,
    why the undecided are, and beside them the kernel's count during the restart with the
    cookies the capture did not attribute."""
    cookies = r.get("syn_cookies") or {}
    if cookies.get("cookie_connections") is None:
        return None
    counts = cookiecounts.verdicts_text(
        cookies["cookie_connections"],
        cookies["ordinary_connections"],
        cookies["undecided_connections"],
        cookies.get("connections"),
    )
    text = f"{r['scenario']}: SYN-cookie verdicts in the broker's capture: {counts}"
    why = cookiecounts.why_text(cookies.get("undecided_why"))
    if cookies["undecided_connections"] and why:
        text += f"; undecided because {why}"
    sent = cookies.get("sent")
    if sent is not None:
        text += f"; TcpExtSyncookiesSent during the restart {sent}"
        missing = int(sent) - int(cookies["cookie_connections"])
        if missing > 0:
            text += f", {missing} of them not attributed to a connection by the capture"
    return text + "."


HEAL_COUNTS = ("hit", "ended", "came_back", "hit_after", "cookies_during", "lost")


def _heal_parts(reports: list[dict[str, Any]]) -> list[Any]:
    """``lab run --heal``: what heal did and the clients' p50 of the three phases."""
    rows = []
    for r in reports:
        h = r["heal"]
        p50 = h["p50_ms"]
        rows.append(
            (
                r["scenario"],
                h["method"],
                *(h[name] for name in HEAL_COUNTS),
                p50["before"],
                p50["after_restart"],
                p50["after_heal"],
                h["exit_status"],
            )
        )
    parts: list[Any] = [
        table.records_table(
            "Heal after the restart storm (counts of connections and messages; p50 in ms)",
            [
                "scenario",
                "method",
                *(n.replace("_", " ") for n in HEAL_COUNTS),
                "p50 before",
                "p50 after restart",
                "p50 after heal",
                "heal exit",
            ],
            rows,
        )
    ]
    for r in reports:
        h = r["heal"]
        problem = h["error"] or h["refused"] or h["stopped"]
        if problem:
            parts.append(f"[dim]{r['scenario']}: heal: {problem}.[/dim]")
        if h["kernel_told"]:
            parts.append(
                f"[dim]{r['scenario']}: heal was told the kernel is {h['kernel_told']} (its "
                "release says it has the fix; the lab built it with the fix reverted).[/dim]"
            )
        own = h["broker_ms"]
        if own:
            phases = ("before", "after_restart", "after_heal")
            parts.append(
                f"{r['scenario']}: the broker's own Produce p50 / p99 in ms, before, after "
                "the restart and after heal: "
                + ", ".join(f"{own['p50'][x]} / {own['p99'][x]}" for x in phases)
            )
    return parts
