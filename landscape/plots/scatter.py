"""Cross-run figures of ``landscape correlate``: the generalization gap against a measure (one
point per run), and each measure's rank correlation with the gap by measure family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from landscape.arrays import as_vector
from landscape.errors import LandscapeError
from landscape.plots.style import (
    LEGEND_SIZE,
    TICK_SIZE,
    _figure,
    _labels,
    _legend,
    _same_length,
    _style,
    _suptitle,
)

__all__ = ["plot_correlation_panels", "plot_measure_scatter"]


def plot_measure_scatter(measure: Any, gap: Any, groups: Sequence[Any] | None = None, *, xlabel: str = "measure",
                         ylabel: str = "generalization gap", group_label: str = "", title: str | None = None) -> Figure:
    """Generalization gap against a measure, one point per run, coloured by a hyper-parameter
    (Jiang et al. 2019 style)."""
    x, y = as_vector("measure", measure), as_vector("gap", gap)
    _same_length("measure", x, "gap", y)
    fig = _figure(5.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    if groups is None:
        ax.scatter(x, y, s=28, color="C0")
    else:
        values = [str(g) for g in groups]
        for i, value in enumerate(dict.fromkeys(values)):
            mask = np.array([v == value for v in values])
            ax.scatter(x[mask], y[mask], s=28, color=f"C{i % 10}", label=f"{group_label}={value}" if group_label else value)
        _legend(ax)
    _labels(ax, xlabel, ylabel, title)
    return fig


def plot_correlation_panels(rows: Sequence[Mapping[str, Any]], families: Mapping[str, str], *,
                            title: str | None = None) -> Figure:
    """One panel per measure family (``families``: measure → family; Jiang et al. 2020's
    grouping): each measure's Kendall τ with the gap as a bar with its bootstrap 95% interval,
    and Ψ (granulated τ) as a marker. ``rows`` are :func:`landscape.study.correlation_table`'s."""
    if not rows:
        raise LandscapeError("no measure to draw: the correlation table is empty")
    by_family: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_family.setdefault(families.get(str(row["measure"]), "other"), []).append(row)
    names = list(by_family)
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    tallest = max(len(v) for v in by_family.values())
    fig = _figure(4.2 * cols, max(2.2, 0.28 * tallest + 1.0) * nrows)
    for i, family in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        _style(ax)
        group = sorted(by_family[family], key=lambda r: float(r["tau"]))
        y = np.arange(len(group))
        tau = np.array([float(r["tau"]) for r in group])
        lo = np.array([float(r.get("tau_low", np.nan)) for r in group])
        hi = np.array([float(r.get("tau_high", np.nan)) for r in group])
        ax.barh(y, tau, color=["C3" if t < 0 else "C0" for t in tau], alpha=0.75, height=min(0.6, 0.2 * len(group) + 0.2))
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(tau[ok], y[ok], xerr=np.vstack([tau[ok] - lo[ok], hi[ok] - tau[ok]]), fmt="none",
                    ecolor="0.25", elinewidth=0.8, capsize=2)
        psi = np.array([float(r.get("psi", np.nan)) for r in group])
        if np.isfinite(psi).any():
            ax.scatter(psi, y, marker="D", s=16, color="k", zorder=3)
        ax.set_yticks(y, [str(r["measure"]) for r in group], fontsize=TICK_SIZE)
        ax.axvline(0.0, color="0.5", linewidth=0.6)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-0.75, len(group) - 0.25)
        _labels(ax, "Kendall τ with the gap", None, family)
    fig.legend([Patch(color="C0", alpha=0.75), Patch(color="C3", alpha=0.75),
                Line2D([], [], color="0.25", linewidth=0.8), Line2D([], [], marker="D", color="k", linestyle="")],
               ["τ > 0", "τ < 0", "95% bootstrap CI", "Ψ (granulated τ)"], loc="outside lower center", ncols=4,
               fontsize=LEGEND_SIZE, frameon=False)
    _suptitle(fig, title)
    return fig
