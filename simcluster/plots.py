"""PNG plots of a run (matplotlib, the ``sim`` extra): one configuration over time, and all side by side.

Plots are written with a fixed ``metadata`` (no software version or date in the file), so the same run
gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simcluster.results import RunResult

_METADATA = {"Software": None}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'htex-ref[sim]' (or run with --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hours(r: RunResult) -> list[float]:
    return [s.time / 3600.0 for s in r.timeline]


def timeline(r: RunResult, path: Path) -> None:
    """Workers and running tasks, queued tasks, and blocks (pending, running) over time."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    t = _hours(r)
    axes[0].step(t, [s.workers for s in r.timeline], where="post", label="workers")
    axes[0].step(t, [s.tasks_running for s in r.timeline], where="post", label="tasks running")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("workers")
    axes[1].step(t, [s.tasks_queued for s in r.timeline], where="post", color="tab:red")
    axes[1].set_ylabel("queued tasks")
    axes[2].step(t, [s.blocks_running for s in r.timeline], where="post", label="running")
    axes[2].step(t, [s.blocks_pending for s in r.timeline], where="post", label="pending")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[2].set_ylabel("blocks")
    axes[2].set_xlabel("hours since the executor started")
    m = r.metrics
    fig.suptitle(f"{r.label}: makespan {m['makespan'] / 3600:.2f} h, utilization {m['utilization']:.0%}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_METADATA)
    plt.close(fig)


def comparison(runs: Sequence[RunResult], path: Path) -> None:
    """Every configuration on the same axes, and bars of makespan, node-hours and utilization."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for r in runs:
        t = _hours(r)
        axes[0][0].step(t, [s.workers for s in r.timeline], where="post", label=r.label)
        axes[0][1].step(t, [s.tasks_queued for s in r.timeline], where="post", label=r.label)
        axes[1][0].step(t, [s.blocks_running + s.blocks_pending for s in r.timeline], where="post", label=r.label)
    axes[0][0].set_ylabel("workers")
    axes[0][1].set_ylabel("queued tasks")
    axes[1][0].set_ylabel("blocks (pending + running)")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xlabel("hours")
    axes[0][0].legend(fontsize=7)
    labels = [r.label for r in runs]
    x = range(len(runs))
    ax = axes[1][1]
    width = 0.27
    mk = [r.metrics["makespan"] / 3600 if not math.isnan(r.metrics["makespan"]) else 0 for r in runs]
    nh = [r.metrics["node_hours_allocated"] for r in runs]
    idle = [r.metrics["idle_node_hours"] for r in runs]
    ax.bar([i - width for i in x], mk, width, label="makespan (h)")
    ax2 = ax.twinx()
    ax2.bar(list(x), nh, width, color="tab:orange", label="node-hours allocated")
    ax2.bar([i + width for i in x], idle, width, color="tab:gray", label="idle node-hours")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=20, fontsize=7)
    ax.set_ylabel("makespan (h)")
    ax2.set_ylabel("node-hours")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_METADATA)
    plt.close(fig)
