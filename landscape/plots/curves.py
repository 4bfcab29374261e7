"""Small multiples of measures over training (neural collapse NC1–NC4, RankMe, DSE / DSMI,
sharpness, …) or over any shared x, one panel per measure."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.arrays import as_vector
from landscape.errors import LandscapeError
from landscape.plots.style import (
    _figure,
    _labels,
    _legend,
    _panel_grid,
    _plot_series,
    _positive,
    _same_length,
    _short_log_ticks,
    _style,
    _suptitle,
    _wants,
)

__all__ = ["MAX_XTICKLABELS", "plot_curves"]

# Axis labels for the measures the probes return, by (lower-cased) series name.
_YLABELS: dict[str, str] = {
    "nc1": r"$\mathrm{Tr}(\Sigma_W \Sigma_B^{+})\,/\,C$",
    "nc2_equinorm": r"std$_c\,\|\tilde\mu_c\|$ / mean$_c\,\|\tilde\mu_c\|$",
    "equinorm_means": r"std$_c\,\|\tilde\mu_c\|$ / mean$_c\,\|\tilde\mu_c\|$",
    "equinorm_weights": r"std$_c\,\|w_c\|$ / mean$_c\,\|w_c\|$",
    "nc2_equiangular": r"mean$_{c\neq c'}\,|\cos + 1/(C-1)|$",
    "equiangular_means": r"mean$_{c\neq c'}\,|\cos + 1/(C-1)|$",
    "equiangular_weights": r"mean$_{c\neq c'}\,|\cos + 1/(C-1)|$",
    "nc3": r"$\|W^\top/\|W\|_F - M/\|M\|_F\|_F^2$",
    "self_duality": r"$\|W^\top/\|W\|_F - M/\|M\|_F\|_F^2$",
    "nc4": "NCC mismatch (fraction)",
    "ncc_mismatch": "NCC mismatch (fraction)",
    "trace_ratio": r"$\mathrm{Tr}\,\Sigma_W / \mathrm{Tr}\,\Sigma_B$",
    "rankme": "RankMe",
    "effective_rank": "effective rank",
    "dse": "DSE (bits)",
    "dsmi": "DSMI (bits)",
    "dsmi_x": "DSMI (bits)",
    "dsmi_y": "DSMI (bits)",
}


def plot_curves(x: Any, series: Mapping[str, Any], *, xlabel: str = "epoch",
                logx: bool | Collection[str] = False, logy: bool | Collection[str] = False,
                title: str | None = None, ncols: int | None = None,
                ylabels: Mapping[str, str] | None = None,
                xticklabels: Sequence[str] | None = None) -> Figure:
    """Small multiples: one panel per measure, over training (or any shared x).

    Args:
        x: the shared x coordinates (epochs, steps, …).
        series: panel name → values (same length as ``x``), or → ``{line label: values}`` for
            several lines in one panel (e.g. ``{"train": …, "test": …}``). Panels appear in the
            order of the mapping; the panel title is its name.
        xlabel: x label, on the lowest panel of each column.
        logx, logy: log axes — ``True`` for every panel, or the names of the panels that get
            one (the neural-collapse literature draws NC1–NC4 on log y, often over log
            epochs). Points with non-positive coordinates on a log axis are masked (gaps).
        title: figure title.
        ncols: panels per row (default ``min(3, number of panels)``).
        ylabels: y labels by panel name; by default known measures (``nc1``, ``nc2_equinorm``,
            ``equiangular_means``, ``self_duality``, ``rankme``, ``dse``, …, case-insensitive)
            get their formula or unit, others none (the panel title names them).
        xticklabels: a label per x (checkpoint names, where no step or epoch is known): the
            ticks sit at ``x`` (at most :data:`MAX_XTICKLABELS` of them, evenly spaced, the last
            always) with these labels on the lowest panel of each column.

    Returns:
        A figure with exactly one axes per panel; each axes' ``lines`` are its series in order,
        x and y as given (float), with NaN where masked for a log axis.
    """
    xs = as_vector("x", x)
    if not series:
        raise LandscapeError("no series to plot")
    if xticklabels is not None and len(xticklabels) != len(xs):
        raise LandscapeError(f"xticklabels has {len(xticklabels)} labels for {len(xs)} x values")
    n = len(series)
    ncols, nrows = _panel_grid(n, ncols)
    fig = _figure(3.7 * ncols, 2.9 * nrows + (0.3 if title else 0.0))
    first_ax = None
    for i, (name, value) in enumerate(series.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        first_ax = first_ax or ax
        _style(ax)
        lines = value if isinstance(value, Mapping) else {name: value}
        use_logx, use_logy = _wants(logx, name), _wants(logy, name)
        if use_logx:
            ax.set_xscale("log")
            _short_log_ticks(ax.xaxis, xs)
        if use_logy:
            ax.set_yscale("log")
            _short_log_ticks(ax.yaxis, np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in lines.values()]))
        px = _positive(xs) if use_logx else xs
        for j, (label, values) in enumerate(lines.items()):
            ys = as_vector(f"series[{name!r}][{label!r}]" if len(lines) > 1 else f"series[{name!r}]", values)
            _same_length("x", xs, f"series {name!r}", ys)
            py = _positive(ys) if use_logy else ys
            if use_logx:
                py = np.where(np.isnan(px), np.nan, py)
            _plot_series(ax, px, py, color=f"C{j}", linewidth=1.5, label=str(label))
        ylabel = (ylabels or {}).get(name, _YLABELS.get(str(name).lower()))
        below_empty = i + ncols >= n
        _labels(ax, xlabel if below_empty else None, ylabel, str(name))
        if xticklabels is not None:
            _name_ticks(ax, xs, [str(t) for t in xticklabels], shown=below_empty)
        _legend(ax)
    _suptitle(fig, title)
    return fig


MAX_XTICKLABELS = 12


def _name_ticks(ax: Any, xs: np.ndarray, labels: list[str], shown: bool) -> None:
    """Ticks at ``xs`` labelled by name (thinned to :data:`MAX_XTICKLABELS`, the last kept)."""
    keep = sorted({*range(0, len(xs), max(1, math.ceil(len(xs) / MAX_XTICKLABELS))), len(xs) - 1}) if len(xs) else []
    ax.set_xticks(xs[keep])
    if not shown:
        ax.tick_params(axis="x", labelbottom=False)
        return
    texts = [labels[i] for i in keep]
    long = len(texts) > 3 or any(len(t) > 8 for t in texts)
    ax.set_xticklabels(texts, rotation=30 if long else 0, ha="right" if long else "center",
                       rotation_mode="anchor")
