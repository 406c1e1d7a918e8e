"""Pictures of lab runs: produce latency over time across the restart, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def latency_over_time(runs: list[dict[str, Any]], path: Path) -> Path:
    """One panel per scenario: each measured request's latency against the time it was
    sent (seconds from the start), unanswered requests as crosses, the restart shaded."""
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(5.5 * columns, 4 * rows), sharey=True, squeeze=False
    )
    flat = list(axes.flat)
    for ax in flat[len(runs) :]:
        ax.set_visible(False)
    for ax, run in zip(flat, runs, strict=False):
        start = run["window"]["start"]
        for library, colour in (("confluent-kafka", "tab:blue"), ("kafka-python", "tab:orange")):
            done = [
                x for x in run["requests"] if x["library"] == library and x["type"] == "latency"
            ]
            ax.scatter(
                [x["sent"] - start for x in done],
                [x["latency_ms"] for x in done],
                s=6,
                color=colour,
                alpha=0.6,
                label=library,
            )
            pending = [
                x for x in run["requests"] if x["library"] == library and x["type"] == "pending"
            ]
            if pending:
                ax.scatter(
                    [x["sent"] - start for x in pending],
                    [x["waited_ms"] for x in pending],
                    marker="x",
                    s=18,
                    color=colour,
                    label=f"{library} (unanswered)",
                )
        window = run["window"]
        if window.get("restart") and window.get("accepting", 0) > window["restart"]:
            ax.axvspan(
                window["restart"] - start,
                window["accepting"] - start,
                color="grey",
                alpha=0.3,
                label="broker restarting",
            )
        ax.axvline(window["after_start"] - start, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(run["scenario"])
        ax.set_xlabel("seconds since the clients started")
        ax.grid(True, which="both", alpha=0.2)
    for row in axes:
        row[0].set_ylabel("produce request latency (ms)")
    flat[len(runs) - 1].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_kept(directory: Path) -> Path:
    """Redraw ``latency.png`` of a ``tcpsleuth lab run --keep DIR`` directory."""
    import json

    runs = []
    for report_path in sorted(directory.glob("*/report.json")):
        report = json.loads(report_path.read_text())
        lines = [
            json.loads(line)
            for line in (report_path.parent / "clients.jsonl").read_text().splitlines()
        ]
        runs.append(
            {
                "scenario": report["scenario"],
                "window": report["window"],
                "requests": [x for x in lines if x["type"] in ("latency", "pending")],
            }
        )
    order = {
        name: i
        for i, name in enumerate(
            [
                "baseline",
                "restart-storm",
                "wscale-bug",
                "no-syncookies",
                "big-backlog",
                "fixed-kernel",
            ]
        )
    }
    runs.sort(key=lambda run: order.get(run["scenario"], len(order)))
    return latency_over_time(runs, directory / "latency.png")
