"""PNG figures of benchmark results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runner import METRICS


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _horizontal():
    import matplotlib

    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    if (major, minor) >= (3, 10):
        return dict(orientation="horizontal")
    return dict(vert=False)


def _values(records, method, metric):
    scale = METRICS[metric][1]
    v = np.array([r[metric] for r in records if r["method"] == method], float)
    return v[np.isfinite(v)] * scale


def plot_metrics(result, fname, title=None):
    """Box plots of every metric per method (paper Figure 3 style)."""
    plt = _plt()
    methods = [m for m in result.methods
               if any(r["method"] == m.key for r in result.records)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 0.45 * len(methods) + 2.0),
                             sharey=True)
    for ax, metric in zip(axes, METRICS):
        data = [_values(result.records, m.key, metric) for m in methods]
        ax.boxplot([d if d.size else [np.nan] for d in data],
                   showfliers=False, widths=0.6, **_horizontal())
        ax.plot([d.mean() if d.size else np.nan for d in data],
                np.arange(1, len(data) + 1), "D", color="C3", ms=4,
                label="mean")
        ax.set_title(METRICS[metric][0])
        if metric == "rmse":
            from matplotlib.ticker import LogLocator, NullFormatter

            ax.set_xscale("log")
            # labels on the decades only: minor labels overlap on a
            # narrow (less than a decade) range
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_formatter(lambda x, pos: f"{x:g}")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(np.arange(1, len(methods) + 1),
                       [m.label for m in methods])
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title or result.info.get("title", ""))
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)
    return Path(fname)


def plot_lines(rows, x_key, fname, *, xlabel, title="", x_scale=1.0,
               log_x=False):
    """Mean ± standard error of every metric versus ``x_key`` per method.

    ``rows`` are summary rows (see :func:`~mne_unfolded_sbl.benchmark.summarize`)
    with an ``x_key`` column (sweep value or layer).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    labels = {}
    for r in rows:
        labels.setdefault(r["method"], r["label"])
    for ax, metric in zip(axes, METRICS):
        base = f"{metric}{'_mm' if METRICS[metric][1] != 1.0 else ''}"
        for i, (key, label) in enumerate(labels.items()):
            rr = sorted((r for r in rows if r["method"] == key),
                        key=lambda r: float(r[x_key]))
            x = np.array([float(r[x_key]) for r in rr]) * x_scale
            m = np.array([r[f"{base}_mean"] for r in rr], float)
            se = np.array([r[f"{base}_std"] for r in rr], float) / np.sqrt(
                np.maximum([float(r["n"]) for r in rr], 1))
            style = "-" if i < 10 else "--"
            ax.plot(x, m, style, marker="o", ms=3, label=label)
            ax.fill_between(x, m - se, m + se, alpha=0.15)
        ax.set_title(METRICS[metric][0])
        ax.set_xlabel(xlabel)
        if metric == "rmse":
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)
    return Path(fname)
