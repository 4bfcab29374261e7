r"""Figures from probe results: Hessian spectra, per-layer curvature, metric curves, training curves.

Every function takes arrays — what a probe returns, what :mod:`landscape.store` reads back from
``analysis.h5``, or the records of ``metrics.jsonl`` — never a model, and returns a
:class:`matplotlib.figure.Figure`. Figures are built on :class:`~matplotlib.figure.Figure` with
a :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` attached, never through
``pyplot``: nothing touches pyplot's figure list or the user's backend, so this works on
headless machines, in worker processes, in tests and beside an interactive session.
:func:`save_figure` writes PNG / PDF / SVG atomically.

Conventions shared by all figures: 150 dpi, constrained ("tight") layout, fonts set on each
figure (titles 11 pt, labels 10 pt, ticks and legends 9 pt), a light grid, no top/right
spines, a legend only where an axes holds more than one labelled line. NaN values are gaps;
on a logarithmic axis non-positive values are masked (NaN) rather than clipped. A point with
no finite neighbour gets a marker so that it is not invisible.

* :func:`plot_esd` — the Hessian eigenvalue spectral density of stochastic Lanczos quadrature
  (Ghorbani, Krishnan & Xiao 2019; PyHessian, Yao et al. 2020) on a log density axis.
* :func:`plot_top_eigenvalues` — the top-:math:`k` eigenvalues by rank, the bottom ones beside.
* :func:`plot_layer_spectrum` — per-layer top eigenvalue (and trace) of the diagonal Hessian
  blocks as horizontal bars.
* :func:`plot_curves` — small multiples of measures over training (neural collapse NC1–NC4,
  RankMe, DSE / DSMI, sharpness, …).
* :func:`plot_training_curves` — loss, accuracy and learning rate from ``metrics.jsonl``.
* :func:`plot_surface_1d`, :func:`plot_surface_2d`, :func:`plot_surface_panels` — loss slices
  along random / filter-normalized / PCA directions (Li, Xu, Taylor, Studer & Goldstein 2018):
  loss and accuracy against a step, contour lines, filled contours, heat maps and 3D surfaces,
  with an optional optimization trajectory. Values are indexed ``[ix, iy]`` for any grid
  shape; non-finite values are masked (grey cells), never drawn as numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    PercentFormatter,
)
from matplotlib.transforms import blended_transform_factory
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from landscape.errors import LandscapeError
from landscape.utils import atomic_write, disk_full_error, is_disk_full

__all__ = [
    "FORMATS",
    "SURFACE_KINDS",
    "plot_curves",
    "plot_esd",
    "plot_layer_spectrum",
    "plot_surface_1d",
    "plot_surface_2d",
    "plot_surface_panels",
    "plot_top_eigenvalues",
    "plot_training_curves",
    "save_figure",
]

DPI = 150
FORMATS = ("png", "pdf", "svg")
TITLE_SIZE = 11
LABEL_SIZE = 10
TICK_SIZE = 9
LEGEND_SIZE = 9
SUPTITLE_SIZE = 12
DENSITY_FLOOR = 1e-8  # log-density axis floor, relative to the largest density
SHORT_SERIES = 40  # series with at most this many points get a marker on every point
TRAIN_COLOR, TEST_COLOR, LR_COLOR = "C0", "C1", "C2"
TOP_COLOR, BOTTOM_COLOR = "C0", "C3"

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


# ---- figure scaffolding --------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (never registered with pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Any) -> None:
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(True, which="major", alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _labels(ax: Any, xlabel: str | None = None, ylabel: str | None = None, title: str | None = None) -> None:
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    if title is not None:
        ax.set_title(title, fontsize=TITLE_SIZE)


def _legend(ax: Any) -> None:
    """A legend only when the axes holds more than one labelled artist."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > 1:
        ax.legend(handles, labels, fontsize=LEGEND_SIZE, frameon=False)


def _suptitle(fig: Figure, title: str | None) -> None:
    if title:
        fig.suptitle(title, fontsize=SUPTITLE_SIZE)


def _markevery(y: np.ndarray) -> list[int] | None:
    """Indices of points without a finite neighbour (a line through them draws nothing)."""
    finite = np.isfinite(y)
    left = np.concatenate([[False], finite[:-1]])
    right = np.concatenate([finite[1:], [False]])
    return np.flatnonzero(finite & ~left & ~right).tolist()


def _plot_series(ax: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
    """``ax.plot`` with markers on short series and on isolated points; returns the line."""
    if len(y) <= SHORT_SERIES:
        (line,) = ax.plot(x, y, marker="o", markersize=3.5, **kwargs)
        return line
    isolated = _markevery(y)
    if isolated:
        (line,) = ax.plot(x, y, marker="o", markersize=3.5, markevery=isolated, **kwargs)
    else:
        (line,) = ax.plot(x, y, **kwargs)
    return line


# ---- array helpers -------------------------------------------------------------------------------


def _vector(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array (a scalar becomes one point)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LandscapeError(f"{name} must be numeric, got {type(values).__name__}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise LandscapeError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise LandscapeError(f"{name_b} has {len(b)} values but {name_a} has {len(a)}")


def _positive(y: np.ndarray) -> np.ndarray:
    """``y`` with non-positive (and non-finite) values as NaN, for a log axis."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(y) & (y > 0), y, np.nan)


def _short_log_ticks(axis: Any, values: np.ndarray) -> None:
    """Readable ticks on a log axis: 1-2-5 per decade when the data span under two decades (else
    decades only), labelled in plain numbers ("0.002", not "2×10⁻³") so neighbours never collide."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    span = np.log10(v.max() / v.min()) if v.size else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _decode(name: Any) -> str:
    if isinstance(name, bytes | np.bytes_):
        return bytes(name).decode("utf-8", errors="replace")
    return str(name)


def _wants(flag: bool | Collection[str], key: str) -> bool:
    """A bool for every panel, or the collection of panel names it applies to."""
    if isinstance(flag, bool | np.bool_):
        return bool(flag)
    if isinstance(flag, str):
        return flag == key
    return key in flag


# ---- Hessian spectra -----------------------------------------------------------------------------


def plot_esd(grid: Any, density: Any, *, nodes: Any = None, weights: Any = None,
             title: str | None = None, log: bool = True) -> Figure:
    r"""The Hessian eigenvalue spectral density :math:`\phi(\lambda)` (PyHessian / Ghorbani style).

    Args:
        grid: eigenvalue grid :math:`\lambda` (``density_grid`` of the Hessian probe).
        density: :math:`\phi(\lambda)` on ``grid`` (``density``).
        nodes: optional SLQ Ritz values (``esd_nodes``, any shape, e.g. ``[vectors, steps]``),
            drawn as a rug along the bottom of the axes.
        weights: optional quadrature weights of ``nodes`` (``esd_weights``, same shape): the rug
            marks' heights are proportional to them and zero-weight nodes (the padding of
            early-stopped probes) are dropped.
        title: axes title (default "Hessian eigenvalue spectral density").
        log: log density axis. Values below ``1e-8 × max density`` (zeros included) are drawn
            at that floor, which is the bottom of the axis — the same device as PyHessian's
            ``density + 1e-7``, relative to the scale of the density.

    Returns:
        A figure with one axes; ``ax.lines[0]`` is the density (x = ``grid``, y = ``density``,
        floored on the log axis).
    """
    x = _vector("grid", grid)
    y = _vector("density", density)
    _same_length("grid", x, "density", y)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    _style(ax)
    finite = y[np.isfinite(y)]
    peak = float(finite.max()) if finite.size else 0.0
    if log:
        floor = DENSITY_FLOOR * peak if peak > 0 else DENSITY_FLOOR
        with np.errstate(invalid="ignore"):
            y_plot = np.where(np.isfinite(y), np.maximum(y, floor), np.nan)
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())  # ~9 decades: minor ticks are clutter (and slow)
        top = peak * 3.0 if peak > 0 else 1.0
        ax.set_ylim(floor / 3.0, top)
    else:
        y_plot = y
    _plot_series(ax, x, y_plot, color=TOP_COLOR, linewidth=1.4, label="density")
    if not log:
        ax.set_ylim(bottom=min(0.0, float(finite.min())) if finite.size else 0.0)
    if nodes is not None:
        _rug(ax, nodes, weights)
    _labels(ax, r"eigenvalue $\lambda$", r"density $\phi(\lambda)$",
            title if title is not None else "Hessian eigenvalue spectral density")
    _legend(ax)
    return fig


def _rug(ax: Any, nodes: Any, weights: Any) -> None:
    try:
        lam = np.asarray(nodes, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise LandscapeError(f"nodes must be numeric, got {type(nodes).__name__}") from exc
    if weights is None:
        heights = np.full(lam.shape, 0.05)
        label = "SLQ nodes"
    else:
        try:
            w = np.asarray(weights, dtype=np.float64).ravel()
        except (TypeError, ValueError) as exc:
            raise LandscapeError(f"weights must be numeric, got {type(weights).__name__}") from exc
        if w.shape != lam.shape:
            raise LandscapeError(f"weights has {w.size} values but nodes has {lam.size}")
        keep = np.isfinite(w) & (w > 0)
        lam, w = lam[keep], w[keep]
        wmax = float(w.max()) if w.size else 1.0
        heights = 0.02 + 0.10 * w / wmax
        label = "SLQ nodes (height ∝ weight)"
    keep = np.isfinite(lam)
    lam, heights = lam[keep], heights[keep]
    if lam.size == 0:
        return
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.vlines(lam, 0.0, heights, transform=trans, colors=BOTTOM_COLOR, linewidth=0.8,
              alpha=0.7, label=label)


def plot_top_eigenvalues(eigenvalues: Any, *, bottom: Any = None, title: str | None = None,
                         yscale: str = "auto") -> Figure:
    r"""The top-:math:`k` Hessian eigenvalues as stems by rank, the bottom ones beside them.

    Args:
        eigenvalues: top eigenvalues (the probe's ``eigenvalues``); drawn sorted descending at
            ranks :math:`1 \dots k` (NaNs last).
        bottom: optional smallest eigenvalues (``bottom_eigenvalues``); drawn sorted ascending,
            in another colour, after a gap, at ticks :math:`\lambda_n, \lambda_{n-1}, \dots`.
        title: axes title (default "Hessian top eigenvalues").
        yscale: ``"auto"``, ``"linear"``, ``"log"`` or ``"symlog"``. ``"auto"``: log when every
            value is positive and they span more than three decades; symlog (linear within
            :math:`\pm\min|\lambda_{<0}|`) when negative values are more than 100× smaller than
            the largest positive one, so that both remain visible; linear otherwise.

    Returns:
        A figure with one axes. Lines labelled ``"top-<k>"`` and ``"bottom-<b>"`` hold the markers
        (x = positions, y = sorted values).
    """
    top = _vector("eigenvalues", eigenvalues)
    top = -np.sort(-top)  # descending; NaN stays last
    low = np.sort(_vector("bottom", bottom)) if bottom is not None else np.empty(0)
    k, b = len(top), len(low)
    if k == 0:
        raise LandscapeError("eigenvalues is empty: nothing to plot")
    x_top = np.arange(1, k + 1, dtype=np.float64)
    x_low = np.arange(k + 2, k + 2 + b, dtype=np.float64)
    scale = _eigen_scale(np.concatenate([top, low])) if yscale == "auto" else yscale
    if scale not in ("linear", "log", "symlog"):
        raise LandscapeError(f"yscale must be auto, linear, log or symlog, got {yscale!r}")

    fig = _figure(max(4.5, min(10.0, 3.0 + 0.25 * (k + b))), 3.8)
    ax = fig.add_subplot()
    _style(ax)
    values = np.concatenate([top, low])
    if scale == "symlog":
        neg = np.abs(values[np.isfinite(values) & (values < 0)])
        linthresh = float(neg.min()) if neg.size else 1.0
        ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    elif scale == "log":
        ax.set_yscale("log", nonpositive="mask")
    stem_base = 0.0
    if scale == "log":
        pos = values[np.isfinite(values) & (values > 0)]
        stem_base = float(pos.min()) / 3.0 if pos.size else 1.0
    ax.vlines(x_top, stem_base, top, colors=TOP_COLOR, linewidth=1.6)
    ax.plot(x_top, top, "o", color=TOP_COLOR, markersize=6, label=f"top-{k}")
    if b:
        ax.vlines(x_low, stem_base, low, colors=BOTTOM_COLOR, linewidth=1.6)
        ax.plot(x_low, low, "s", color=BOTTOM_COLOR, markersize=6, label=f"bottom-{b}")
    if scale != "log":
        ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=0.5, label="_nolegend_")
    else:
        ax.set_ylim(bottom=stem_base)

    # ticks: integer ranks for the top group (thinned when many), λ_n, λ_{n-1}, … for the bottom
    if k <= 12:
        rank_ticks = list(x_top)
    else:
        rank_ticks = [t for t in MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True).tick_values(1, k)
                      if 1 <= t <= k]
        rank_ticks = sorted({1.0, *rank_ticks})
    low_labels = [r"$\lambda_n$" if i == 0 else rf"$\lambda_{{n-{i}}}$" for i in range(b)]
    ax.xaxis.set_major_locator(FixedLocator(rank_ticks + list(x_low)))
    ax.set_xticklabels([str(int(t)) for t in rank_ticks] + low_labels)
    ax.set_xlim(0.3, (k + 1 + b if b else k) + 0.7)
    ax.grid(False, axis="x")
    _labels(ax, "rank (eigenvalues in descending order)", r"eigenvalue $\lambda$",
            title if title is not None else "Hessian top eigenvalues")
    _legend(ax)
    return fig


def _eigen_scale(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "linear"
    if v.min() > 0:
        return "log" if v.max() / v.min() > 1e3 else "linear"
    neg = np.abs(v[v < 0])
    if neg.size and v.max() > 0 and v.max() / neg.min() > 100:
        return "symlog"
    return "linear"


def plot_layer_spectrum(names: Sequence[Any], top_eigenvalue: Any, trace: Any = None, *,
                        title: str | None = None) -> Figure:
    """Per-layer Hessian curvature as horizontal bars: top eigenvalue, and trace when given.

    Args:
        names: layer names (``layers/names`` of the Hessian probe; bytes are decoded as UTF-8).
            The first layer is drawn at the top.
        top_eigenvalue: top eigenvalue of each diagonal block ``H[layer, layer]``.
        trace: optional trace of each block, drawn on a second panel sharing the layer axis.
            An all-NaN trace (the probe ran with ``trace=False``) counts as not given.
        title: figure title (default "Per-layer Hessian spectrum").

    Both panels use a log x axis when every value is positive and they span more than two
    decades (non-positive bars are then omitted), a linear one otherwise. Each bar is
    annotated with its value.

    Returns:
        A figure with one or two axes; the bars are ``ax.patches`` (``ax.containers[0]``).
    """
    labels = [_decode(n) for n in np.asarray(names, dtype=object).ravel()]
    top = _vector("top_eigenvalue", top_eigenvalue)
    _same_length("names", np.asarray(labels, dtype=object), "top_eigenvalue", top)
    tr = None
    if trace is not None:
        tr = _vector("trace", trace)
        _same_length("names", np.asarray(labels, dtype=object), "trace", tr)
        if not np.isfinite(tr).any():
            tr = None
    if not labels:
        raise LandscapeError("no layers to plot")
    n = len(labels)
    panels = [("top eigenvalue", top)] + ([("trace", tr)] if tr is not None else [])
    longest = max(len(s) for s in labels)
    width = min(5.5, 1.5 + 0.065 * longest) + 3.6 * len(panels)
    fig = _figure(width, 1.2 + 0.3 * n)
    y = np.arange(n)
    first = None
    for i, (what, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, sharey=first)
        first = first or ax
        _style(ax)
        ax.grid(False, axis="y")
        finite = values[np.isfinite(values)]
        log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
        base = float(finite.min()) / 3.0 if log else 0.0
        if log:
            ax.set_xscale("log")
        # bars from `base` to the value; a missing (or, on a log axis, non-positive) value: none
        widths = np.nan_to_num((_positive(values) if log else values) - base, nan=0.0)
        bars = ax.barh(y, widths, left=base, color=TOP_COLOR if i == 0 else "C4", height=0.65)
        texts = ["" if not math.isfinite(v) else f"{v:.4g}" for v in values]
        ax.bar_label(bars, labels=texts, padding=2, fontsize=TICK_SIZE - 1)
        if log:
            ax.set_xlim(left=base, right=float(finite.max()) * 6.0)
        else:
            ax.margins(x=0.15)
            ax.axvline(0.0, color="0.3", linewidth=0.8, label="_nolegend_")
        _labels(ax, what, None, f"{what} per layer")
        if i == 0:
            ax.set_yticks(y, labels)
            ax.set_ylabel("layer", fontsize=LABEL_SIZE)
            ax.set_ylim(n - 0.5, -0.5)  # first layer on top
        else:
            ax.tick_params(axis="y", labelleft=False)
    _suptitle(fig, title if title is not None else "Per-layer Hessian spectrum")
    return fig


# ---- curves over training ------------------------------------------------------------------------


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
    xs = _vector("x", x)
    if not series:
        raise LandscapeError("no series to plot")
    if xticklabels is not None and len(xticklabels) != len(xs):
        raise LandscapeError(f"xticklabels has {len(xticklabels)} labels for {len(xs)} x values")
    n = len(series)
    ncols = min(3, n) if ncols is None else int(ncols)
    if ncols < 1:
        raise LandscapeError(f"ncols must be ≥ 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
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
            ys = _vector(f"series[{name!r}][{label!r}]" if len(lines) > 1 else f"series[{name!r}]", values)
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


def plot_training_curves(records: Iterable[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Loss (log y), accuracy and learning rate over training, train vs test, from ``metrics.jsonl``.

    Args:
        records: parsed lines of ``metrics.jsonl``. Records with an ``event`` key (e.g.
            ``{"step": …, "event": "diverged"}``) or without a ``step`` are skipped; a step
            logged twice (a resumed run) keeps its last record. Missing values are gaps.
        title: figure title.

    The x axis is ``epoch`` when every kept record has one, else ``step``. Accuracy in
    :math:`[0, 1]` is shown in percent. The learning-rate panel is drawn when any record has
    ``lr``, on a log axis when it spans more than two decades.

    Returns:
        A figure with two or three axes (loss, accuracy[, learning rate]); lines are labelled
        ``train`` / ``test`` (``lr`` in the last panel).
    """
    by_step: dict[float, Mapping[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or "event" in rec or rec.get("step") is None:
            continue
        try:
            by_step[float(rec["step"])] = rec
        except (TypeError, ValueError):
            continue
    if not by_step:
        raise LandscapeError("no metric records to plot (only events, or an empty metrics.jsonl)")
    steps = sorted(by_step)
    recs = [by_step[s] for s in steps]

    def column(key: str) -> np.ndarray:
        out = np.full(len(recs), np.nan)
        for i, r in enumerate(recs):
            v = r.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[i] = float(v)
        return out

    epochs = column("epoch")
    if np.isfinite(epochs).all():
        xs, xlabel = epochs, "epoch"
    else:
        xs, xlabel = np.asarray(steps, dtype=np.float64), "step"
    lr = column("lr")
    has_lr = bool(np.isfinite(lr).any())
    panels = 3 if has_lr else 2
    fig = _figure(3.9 * panels, 3.3 + (0.3 if title else 0.0))

    ax = fig.add_subplot(1, panels, 1)
    _style(ax)
    ax.set_yscale("log")
    for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
        values = column(f"{split}_loss")
        if np.isfinite(values).any():
            _plot_series(ax, xs, _positive(values), color=color, linewidth=1.5, label=split)
    _labels(ax, xlabel, "loss", "loss")
    _legend(ax)

    ax = fig.add_subplot(1, panels, 2)
    _style(ax)
    accs = {split: column(f"{split}_acc") for split in ("train", "test")}
    for (split, values), color in zip(accs.items(), (TRAIN_COLOR, TEST_COLOR), strict=True):
        if np.isfinite(values).any():
            _plot_series(ax, xs, values, color=color, linewidth=1.5, label=split)
    finite_acc = np.concatenate([v[np.isfinite(v)] for v in accs.values()])
    if finite_acc.size and finite_acc.min() >= 0 and finite_acc.max() <= 1:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    _labels(ax, xlabel, "accuracy", "accuracy")
    _legend(ax)

    if has_lr:
        ax = fig.add_subplot(1, panels, 3)
        _style(ax)
        finite = lr[np.isfinite(lr)]
        positive = finite[finite > 0]
        log = finite.size and finite.min() > 0 and positive.max() / positive.min() > 100
        if log:
            ax.set_yscale("log")
        _plot_series(ax, xs, lr, color=LR_COLOR, linewidth=1.5, label="lr")
        if not log:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        _labels(ax, xlabel, "learning rate", "learning rate")
    _suptitle(fig, title)
    return fig


# ---- loss surfaces (Li et al. 2018) --------------------------------------------------------------

SURFACE_KINDS = ("contour", "filled", "heatmap", "surface3d")
REFERENCE_LEVELS = np.arange(0.1, 10, 0.5)  # the reference's vmin=0.1, vmax=10, vlevel=0.5
LOSS_COLOR, ACC_COLOR, TRAJECTORY_COLOR = "C0", "C3", "C3"
SURFACE_CMAP, SURFACE3D_CMAP = "viridis", "coolwarm"
MASK_COLOR = "0.82"  # masked (NaN / inf / non-positive on a log scale) grid cells


def _finite_or_nan(y: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(y), y, np.nan)


def plot_surface_1d(alphas: Any, train_loss: Any, *, train_acc: Any = None, test_loss: Any = None,
                    test_acc: Any = None, log: bool = False, title: str | None = None,
                    xlabel: str = "α") -> Figure:
    r"""A 1D loss slice :math:`L(\theta + \alpha d)`: loss and accuracy against the step :math:`\alpha`.

    The figure of the reference's ``plot_1d_loss_err`` (Li et al. 2018; also Goodfellow et al.'s
    linear interpolation between two models): loss on the left axis, accuracy in percent on a
    twin right axis; train solid, test dashed; loss lines blue, accuracy lines red, each axis
    ticked in its lines' colour.

    Args:
        alphas: the steps :math:`\alpha` (``surface_1d/alphas``); drawn sorted.
        train_loss: loss at each step (same length). NaN / inf (a divergent or not yet
            computed point) and masked points of a masked array are gaps.
        train_acc, test_loss, test_acc: optional curves of the same length; an accuracy curve
            adds the right axis. Accuracies in :math:`[0, 1]` are fractions and are drawn ×100;
            larger ones are taken as percent already.
        log: log loss axis; non-positive losses are masked (gaps).
        title: axes title (none by default).
        xlabel: x label.

    Returns:
        A figure whose first axes holds the loss lines (``"train loss"``, ``"test loss"`` when
        given) and, when an accuracy is given, a second (twin) axes with ``"train accuracy"`` /
        ``"test accuracy"``, y in percent. Line data are the inputs sorted by α, NaN where masked.
    """
    x = _vector("alphas", alphas)
    if x.size == 0:
        raise LandscapeError("alphas is empty: nothing to plot")
    if not np.isfinite(x).all():
        raise LandscapeError("alphas must be finite")
    order = np.argsort(x, kind="stable")
    x = x[order]

    def curve(name: str, values: Any) -> np.ndarray | None:
        if values is None:
            return None
        if isinstance(values, np.ma.MaskedArray):  # a mask means missing
            values = np.ma.filled(values.astype(np.float64), np.nan)
        y = _vector(name, values)
        _same_length("alphas", x, name, y)
        return _finite_or_nan(y[order])

    losses = {"train": curve("train_loss", train_loss), "test": curve("test_loss", test_loss)}
    accs = {"train": curve("train_acc", train_acc), "test": curve("test_acc", test_acc)}
    accs = {k: v for k, v in accs.items() if v is not None}
    finite_acc = np.concatenate([v[np.isfinite(v)] for v in accs.values()]) if accs else np.empty(0)
    acc_scale = 100.0 if finite_acc.size == 0 or finite_acc.max() <= 1.0 else 1.0

    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    _style(ax)
    if log:
        ax.set_yscale("log")
    styles = {"train": "-", "test": "--"}
    for split, y in losses.items():
        if y is not None:
            _plot_series(ax, x, _positive(y) if log else y, color=LOSS_COLOR,
                         linestyle=styles[split], linewidth=1.5, label=f"{split} loss")
    ax.set_xlim(x[0], x[-1]) if x[0] < x[-1] else ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
    loss_values = np.concatenate([y[np.isfinite(y)] for y in losses.values() if y is not None])
    if not log and loss_values.size and loss_values.min() >= 0:
        ax.set_ylim(bottom=0.0)
    ax.set_ylabel("loss", fontsize=LABEL_SIZE, color=LOSS_COLOR)
    ax.tick_params(axis="y", colors=LOSS_COLOR)
    handles, labels = ax.get_legend_handles_labels()
    if accs:
        ax2 = ax.twinx()
        ax2.tick_params(labelsize=TICK_SIZE)
        ax2.spines["top"].set_visible(False)
        for split, y in accs.items():
            _plot_series(ax2, x, y * acc_scale, color=ACC_COLOR, linestyle=styles[split],
                         linewidth=1.5, label=f"{split} accuracy")
        ax2.set_ylim(-2.0, 102.0)
        ax2.yaxis.set_major_locator(FixedLocator([0, 20, 40, 60, 80, 100]))
        ax2.yaxis.set_major_formatter(PercentFormatter(xmax=100.0, decimals=0))
        ax2.set_ylabel("accuracy", fontsize=LABEL_SIZE, color=ACC_COLOR)
        ax2.tick_params(axis="y", colors=ACC_COLOR)
        ax.spines["right"].set_visible(True)
        more_handles, more_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    _labels(ax, xlabel, None, title)
    if len(handles) > 1:  # under the axes: inside it would hide one of the two axes' curves
        fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(handles) == 4 else len(handles),
                   fontsize=LEGEND_SIZE, frameon=False)
    return fig


def surface_grid(xcoords: Any, ycoords: Any, values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a surface indexed ``values[ix, iy]``: coordinates sorted ascending and the values
    reordered with them, non-finite → NaN (shared by the plots and :mod:`landscape.vtp`)."""
    x = _vector("xcoords", xcoords)
    y = _vector("ycoords", ycoords)
    try:
        z = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)  # a mask means missing
    except (TypeError, ValueError) as exc:
        raise LandscapeError(f"values must be numeric, got {type(values).__name__}") from exc
    if z.shape != (x.size, y.size):
        raise LandscapeError(f"values must have shape (len(xcoords), len(ycoords)) = ({x.size}, {y.size}), "
                             f"indexed [ix, iy]; got {z.shape}")
    for name, c in (("xcoords", x), ("ycoords", y)):
        if c.size < 2:
            raise LandscapeError(f"{name} has {c.size} value(s): a 2D surface needs at least 2 along "
                                 "each axis (use plot_surface_1d for a line)")
        if not np.isfinite(c).all():
            raise LandscapeError(f"{name} must be finite")
    ox, oy = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    x, y, z = x[ox], y[oy], z[np.ix_(ox, oy)]
    for name, c in (("xcoords", x), ("ycoords", y)):
        if np.any(np.diff(c) == 0):
            raise LandscapeError(f"{name} has repeated values")
    return x, y, _finite_or_nan(z)


def _masked_values(z: np.ndarray, log: bool, vmax: float | None) -> tuple[np.ma.MaskedArray, bool]:
    """``z`` masked where NaN (and ≤ 0 when ``log``), clipped at ``vmax``; and whether it clipped."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(z) | ((z <= 0) if log else False)
    zm = np.ma.masked_array(np.where(bad, np.nan, z), mask=bad)
    clipped = False
    if vmax is not None:
        if log and vmax <= 0:
            raise LandscapeError(f"vmax must be positive on a log scale, got {vmax}")
        clipped = bool(np.ma.any(zm > vmax))
        zm = np.ma.minimum(zm, vmax)
    return zm, clipped


def _contour_levels(lo: float, hi: float, levels: Any, log: bool) -> np.ndarray:
    """Contour levels: the given ones, else the reference's or ones that fit the data range."""
    if levels is not None and not isinstance(levels, int | np.integer):
        lv = np.unique(_vector("levels", levels))
        lv = lv[np.isfinite(lv) & ((lv > 0) if log else True)]
        if lv.size == 0:
            raise LandscapeError("levels has no usable value" + (" (all ≤ 0 on a log scale)" if log else ""))
        return lv
    if levels is not None:  # a number of levels
        n = int(levels)
        if n < 1:
            raise LandscapeError(f"levels must be ≥ 1 when a count, got {n}")
        if log:
            return np.geomspace(lo, hi, n) if hi > lo else np.array([lo])
        return MaxNLocator(nbins=n).tick_values(lo, hi)

    def around(candidates: np.ndarray) -> np.ndarray:
        """The candidates inside (lo, hi) plus one on each side where there is one."""
        first = max(int(np.searchsorted(candidates, lo, side="right")) - 1, 0)
        last = min(int(np.searchsorted(candidates, hi, side="left")), candidates.size - 1)
        return candidates[first:last + 1]

    def inside(candidates: np.ndarray) -> int:
        return int(np.count_nonzero((candidates > lo) & (candidates < hi)))

    if not log:
        if inside(REFERENCE_LEVELS) >= 4:
            return around(REFERENCE_LEVELS)
        return MaxNLocator(nbins=12).tick_values(lo, hi)
    for subs in ((1.0, 2.0, 5.0), np.arange(1.0, 10.0)):
        candidates = LogLocator(base=10.0, subs=subs, numticks=1000).tick_values(lo, hi)
        candidates = np.unique(candidates[candidates > 0])
        if inside(candidates) >= 5:
            return around(candidates)
    if hi > lo:
        return np.unique(np.array([float(f"{v:.2g}") for v in np.geomspace(lo, hi, 10)]))
    return np.array([lo])


def _extend(lo: float, hi: float, levels: np.ndarray) -> str:
    below, above = lo < levels[0], hi > levels[-1]
    return "both" if below and above else "min" if below else "max" if above else "neither"


def _trajectory(trajectory: Any, labels: Any) -> tuple[np.ndarray, list[str] | None]:
    try:
        t = np.asarray(trajectory, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LandscapeError(f"trajectory must be numeric, got {type(trajectory).__name__}") from exc
    if t.ndim != 2 or t.shape[1] != 2:
        raise LandscapeError(f"trajectory must have shape (T, 2) (x, y of each checkpoint), got {t.shape}")
    t = _finite_or_nan(t)
    texts = None
    if labels is not None:
        texts = ["" if lab is None else _decode(lab) for lab in labels]
        if len(texts) != len(t):
            raise LandscapeError(f"trajectory_labels has {len(texts)} labels but trajectory has {len(t)} points")
    return t, texts


def _draw_trajectory(ax: Any, t: np.ndarray, texts: list[str] | None, zs: float | None = None) -> None:
    """The projected checkpoints as a line with markers; the last one a star, labels beside."""
    extra = {} if zs is None else {"zs": zs, "zdir": "z"}
    ax.plot(t[:, 0], t[:, 1], color=TRAJECTORY_COLOR, linewidth=1.3, marker="o", markersize=3,
            markeredgecolor="white", markeredgewidth=0.4, label="trajectory", zorder=5, **extra)
    ok = np.flatnonzero(np.isfinite(t).all(axis=1))
    if ok.size:
        end = t[ok[-1]]
        ax.plot([end[0]], [end[1]], color=TRAJECTORY_COLOR, marker="*", markersize=10,
                markeredgecolor="black", markeredgewidth=0.5, linestyle="none",
                label="_nolegend_", zorder=6, **extra)
    if texts is None or zs is not None:
        return
    for (px, py), text in zip(t, texts, strict=True):
        if text and np.isfinite(px) and np.isfinite(py):
            ax.annotate(text, (px, py), xytext=(4, 4), textcoords="offset points",
                        fontsize=TICK_SIZE - 2, color="black", zorder=7,
                        path_effects=[withStroke(linewidth=2, foreground="white")])


def _draw_surface(fig: Figure, ax: Any, kind: str, x: np.ndarray, y: np.ndarray, z: np.ndarray, *,
                  levels: Any, log: bool, vmax: float | None, trajectory: tuple | None,
                  axis_labels: Sequence[str], value_label: str, title: str | None) -> list[Any]:
    """Draw one kind into ``ax``; returns the legend handles (trajectory, masked cells)."""
    zm, clipped = _masked_values(z, log, vmax)
    finite = zm.compressed()
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
    has_data = finite.size > 0
    xlabel, ylabel = axis_labels
    if kind == "surface3d":
        floor = _draw_surface3d(fig, ax, x, y, zm, log=log, clipped=clipped,
                                value_label=value_label, room_below=trajectory is not None)
        handles3d: list[Any] = []
        if trajectory is not None and floor is not None:
            _draw_trajectory(ax, *trajectory, zs=floor)
            handles3d.append(ax.lines[0])
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
        ax.tick_params(labelsize=TICK_SIZE - 1)
        if title is not None:
            ax.set_title(title, fontsize=TITLE_SIZE)
        return handles3d

    ax.tick_params(labelsize=TICK_SIZE)
    handles: list[Any] = []
    n_masked = int(np.count_nonzero(np.ma.getmaskarray(zm)))
    if n_masked:  # masked cells in grey, under everything: a hole is not a low value
        bad = np.ma.getmaskarray(zm)
        if kind == "heatmap":  # the cell of each masked point
            hole, shading = np.ma.masked_array(np.ones(bad.shape), mask=~bad), "nearest"
        else:  # contours cannot enter a grid cell with a masked corner: grey under all of it
            cell = bad[:-1, :-1] | bad[1:, :-1] | bad[1:, 1:] | bad[:-1, 1:]
            hole, shading = np.ma.masked_array(np.ones(cell.shape), mask=~cell), "flat"
        ax.pcolormesh(x, y, hole.T, shading=shading, cmap=ListedColormap([MASK_COLOR]),
                      vmin=0, vmax=2, zorder=0.5, rasterized=True)
        what = "non-finite or ≤ 0" if log else "NaN / inf"
        handles.append(Patch(facecolor=MASK_COLOR, label=f"masked ({what})"))
    if has_data:
        if kind == "heatmap":
            norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
            mesh = ax.pcolormesh(x, y, zm.T, shading="nearest", cmap=SURFACE_CMAP, norm=norm,
                                 zorder=1, rasterized=True)
            fig.colorbar(mesh, ax=ax, label=value_label, extend="max" if clipped else "neither")
        else:
            lv = _contour_levels(lo, hi, levels, log)
            norm = LogNorm(lv[0], lv[-1]) if log and lv[-1] > lv[0] else None
            if kind == "filled":
                if lv.size < 2:
                    lv = np.array([lo, hi]) if hi > lo else np.array([lo, lo * 1.5 if log else lo + 1.0])
                    norm = None
                cs = ax.contourf(x, y, zm.T, levels=lv, cmap=SURFACE_CMAP, norm=norm,
                                 extend=_extend(lo, hi, lv), zorder=1)
                fig.colorbar(cs, ax=ax, label=value_label)
            else:
                drawn = lv[(lv > lo) & (lv < hi)]
                if drawn.size:
                    norm = LogNorm(drawn[0], drawn[-1]) if log and drawn[-1] > drawn[0] else None
                    cs = ax.contour(x, y, zm.T, levels=drawn, cmap=SURFACE_CMAP, norm=norm,
                                    linewidths=1.0, zorder=1)
                    ax.clabel(cs, inline=True, fontsize=TICK_SIZE - 2, fmt="%g")
    else:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center",
                fontsize=LABEL_SIZE, color="0.3")

    xlo, xhi, ylo, yhi = x[0], x[-1], y[0], y[-1]
    if trajectory is not None:
        _draw_trajectory(ax, *trajectory)
        t = trajectory[0]
        tx, ty = t[np.isfinite(t[:, 0]), 0], t[np.isfinite(t[:, 1]), 1]
        pad_x, pad_y = 0.03 * (xhi - xlo), 0.03 * (yhi - ylo)
        if tx.size and (tx.min() < xlo or tx.max() > xhi):  # show all of the trajectory
            xlo, xhi = min(xlo, tx.min() - pad_x), max(xhi, tx.max() + pad_x)
        if ty.size and (ty.min() < ylo or ty.max() > yhi):
            ylo, yhi = min(ylo, ty.min() - pad_y), max(yhi, ty.max() + pad_y)
        handles.insert(0, ax.lines[0])
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    _labels(ax, xlabel, ylabel, title)
    return handles


def _surface_legend(fig: Figure, handles: list[Any]) -> None:
    """One legend under the plots (it would hide part of the surface inside an axes)."""
    unique = {h.get_label(): h for h in handles}
    if unique:
        fig.legend(handles=list(unique.values()), labels=list(unique), loc="outside lower center",
                   ncols=len(unique), fontsize=LEGEND_SIZE, frameon=False)


def _draw_surface3d(fig: Figure, ax: Any, x: np.ndarray, y: np.ndarray, zm: np.ma.MaskedArray, *,
                    log: bool, clipped: bool, value_label: str, room_below: bool) -> float | None:
    """One quad per grid cell whose four corners are all valid (never a stretched hole).

    Returns the bottom of the z axis (where a trajectory goes), None when nothing was drawn.
    """
    z = np.ma.filled(zm.astype(np.float64), np.nan)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(z)
        value_label = f"log$_{{10}}$ {value_label}"
    gx, gy = np.meshgrid(x, y, indexing="ij")  # [ix, iy], like the values
    corners = np.stack([
        np.stack([gx[:-1, :-1], gy[:-1, :-1], z[:-1, :-1]], axis=-1),
        np.stack([gx[1:, :-1], gy[1:, :-1], z[1:, :-1]], axis=-1),
        np.stack([gx[1:, 1:], gy[1:, 1:], z[1:, 1:]], axis=-1),
        np.stack([gx[:-1, 1:], gy[:-1, 1:], z[:-1, 1:]], axis=-1),
    ], axis=2).reshape(-1, 4, 3)  # quads in [ix, iy] order, corners counter-clockwise
    keep = np.isfinite(corners[:, :, 2]).all(axis=1)
    quads = corners[keep]
    if quads.size == 0:
        ax.text2D(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center",
                  fontsize=LABEL_SIZE, color="0.3")
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[0], y[-1])
        return None
    face = quads[:, :, 2].mean(axis=1)
    flo, fhi = float(face.min()), float(face.max())
    norm = Normalize(flo, fhi) if fhi > flo else Normalize(flo - 0.5, flo + 0.5)
    cmap = colormaps[SURFACE3D_CMAP]
    # hairline edges in each face's colour: no seams between the quads
    poly = Poly3DCollection(quads, cmap=cmap, norm=norm, linewidths=0.2, edgecolors=cmap(norm(face)))
    poly.set_array(face)
    ax.add_collection3d(poly)
    finite = z[np.isfinite(z)]
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    zlo, zhi = float(finite.min()), float(finite.max())
    zhi = zhi if zhi > zlo else zlo + 1.0
    if room_below:  # a floor under the surface for the trajectory
        zlo -= 0.15 * (zhi - zlo)
    ax.set_zlim(zlo, zhi)
    fig.colorbar(poly, ax=ax, shrink=0.6, pad=0.1, label=value_label,
                 extend="max" if clipped else "neither")
    return zlo


def plot_surface_2d(xcoords: Any, ycoords: Any, values: Any, *, kind: str = "contour",
                    levels: Any = None, log: bool = False, title: str | None = None,
                    trajectory: Any = None, trajectory_labels: Sequence[Any] | None = None,
                    axis_labels: Sequence[str] | None = None, vmax: float | None = None,
                    value_label: str = "loss") -> Figure:
    r"""A 2D loss slice :math:`L(\theta + \alpha d_0 + \beta d_1)` as in Li et al. 2018.

    The data convention is that of the surface probe (``surface_2d/``): ``values[ix, iy]`` is the
    value at ``x = xcoords[ix]``, ``y = ycoords[iy]``, for any grid shape (the reference
    transposes non-square grids; this does not). Non-finite values — divergent or not yet
    computed points — are masked: never drawn as a number, shown as grey cells under the plot.

    Args:
        xcoords, ycoords: grid coordinates (each ≥ 2 distinct finite values; drawn ascending).
        values: the ``(len(xcoords), len(ycoords))`` array (``train_loss``, ``test_acc``, …).
            A masked array's masked points count as missing, e.g.
            ``np.ma.masked_where(~done, train_loss)`` for a partly computed surface.
        kind: ``"contour"`` — contour lines with inline labels (the reference's
            ``_2dcontour``); ``"filled"`` — filled contours with a colour bar (``_2dcontourf``);
            ``"heatmap"`` — one cell per grid point (``pcolormesh``, x horizontal, y vertical,
            cells centred on the coordinates, non-uniform spacing allowed) with a colour bar
            (``_2dheat``); ``"surface3d"`` — a 3D surface, one quad per grid cell whose four
            corners are valid (``_3dsurface``).
        levels: contour levels (a sequence, or a count). Default: the reference's
            ``arange(0.1, 10, 0.5)`` when at least 4 of them fall inside the data range (only
            those that cover the data are kept), else about 12 round levels across it; with
            ``log``, log-spaced 1-2-5 (else 1…9) levels per decade.
        log: log colour scale (``LogNorm``) and log-spaced levels; on ``surface3d`` the height
            is :math:`\log_{10}` of the value. Values ≤ 0 are masked.
        title: axes title (none by default).
        trajectory: optional ``(T, 2)`` projected checkpoint coordinates (e.g. the PCA
            projection of the training trajectory), drawn as a line with markers, the last point
            a star; on ``surface3d`` on the floor of the box. The axes grow to show all of it.
        trajectory_labels: optional text for each trajectory point (e.g. epochs); ``None`` or
            ``""`` skips a point. Not drawn on ``surface3d``.
        axis_labels: ``(xlabel, ylabel)``, e.g. ``("PC1 (62.3%)", "PC2 (21.0%)")``; default
            ``("α", "β")``.
        vmax: clip the values at ``vmax`` before plotting (the reference's contours stop at
            10; ``h52vtp``'s ``zmax``); colour bars then extend upwards.
        value_label: what the values are (colour bar and z label), default ``"loss"``.

    Returns:
        A figure whose first axes holds the plot (a 3D axes for ``surface3d``); colour bars are
        further axes. Contours and meshes are drawn from ``values.T`` (rows = y), masked.
    """
    if kind not in SURFACE_KINDS:
        raise LandscapeError(f"unknown surface kind {kind!r}; use {', '.join(SURFACE_KINDS)}")
    x, y, z = surface_grid(xcoords, ycoords, values)
    traj = None if trajectory is None else _trajectory(trajectory, trajectory_labels)
    labels = _axis_labels(axis_labels)
    fig = _figure(5.6 if kind == "surface3d" else 5.4, 4.4)
    ax = fig.add_subplot(projection="3d") if kind == "surface3d" else fig.add_subplot()
    handles = _draw_surface(fig, ax, kind, x, y, z, levels=levels, log=log, vmax=vmax,
                            trajectory=traj, axis_labels=labels, value_label=value_label, title=title)
    _surface_legend(fig, handles)
    return fig


def _axis_labels(axis_labels: Sequence[str] | None) -> tuple[str, str]:
    if axis_labels is None:
        return "α", "β"
    labels = [str(s) for s in axis_labels] if not isinstance(axis_labels, str) else []
    if len(labels) != 2:
        raise LandscapeError(f"axis_labels must be (xlabel, ylabel), got {axis_labels!r}")
    return labels[0], labels[1]


def plot_surface_panels(xcoords: Any, ycoords: Any, values: Any, *,
                        kinds: Sequence[str] = SURFACE_KINDS, title: str | None = None,
                        **kwargs: Any) -> Figure:
    """The same surface as several :func:`plot_surface_2d` kinds side by side, for a quick look.

    Args:
        xcoords, ycoords, values: as for :func:`plot_surface_2d`.
        kinds: the panels, in order (default contour, filled, heat map, 3D surface).
        title: figure title; each panel is titled by its kind.
        **kwargs: ``levels``, ``log``, ``trajectory``, ``trajectory_labels``, ``axis_labels``,
            ``vmax``, ``value_label`` — passed to every panel.

    Returns:
        A figure with one axes per panel (plus colour bars); ``fig.axes`` starts with the panels'
        axes in the order of ``kinds`` only where no colour bar comes between them, so find a
        panel by its title.
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise LandscapeError("no panels: kinds is empty")
    unknown = [k for k in kinds if k not in SURFACE_KINDS]
    if unknown:
        raise LandscapeError(f"unknown surface kind {unknown[0]!r}; use {', '.join(SURFACE_KINDS)}")
    allowed = {"levels", "log", "trajectory", "trajectory_labels", "axis_labels", "vmax", "value_label"}
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise LandscapeError(f"unknown option {extra[0]!r} for plot_surface_panels; use {', '.join(sorted(allowed))}")
    x, y, z = surface_grid(xcoords, ycoords, values)
    traj = kwargs.get("trajectory")
    traj = None if traj is None else _trajectory(traj, kwargs.get("trajectory_labels"))
    labels = _axis_labels(kwargs.get("axis_labels"))
    names = {"contour": "contour", "filled": "filled contour", "heatmap": "heat map",
             "surface3d": "3D surface"}
    fig = _figure(4.6 * len(kinds), 4.2 + (0.3 if title else 0.0))
    handles: list[Any] = []
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1, projection="3d" if kind == "surface3d" else None)
        handles += _draw_surface(fig, ax, kind, x, y, z, levels=kwargs.get("levels"), log=bool(kwargs.get("log", False)),
                      vmax=kwargs.get("vmax"), trajectory=traj, axis_labels=labels,
                      value_label=kwargs.get("value_label", "loss"), title=names[kind])
    _surface_legend(fig, handles)
    _suptitle(fig, title)
    return fig


# ---- saving --------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike[str], formats: Sequence[str] | None = None) -> list[Path]:
    """Write ``fig`` to ``path`` in each format, atomically; returns the written paths.

    ``path`` may carry a format suffix (``plots/esd.pdf``) or not (``plots/esd``). The formats
    written are ``formats`` when given (the suffix, if any, is then replaced), else the
    suffix's format, else PNG. Each file goes through a temporary file in the same folder and
    an ``os.replace``: a reader sees the old figure or the new one, never a partial file.
    Parent folders are created. PDFs carry no creation date, so equal figures give equal files.

    Raises:
        LandscapeError: an unknown format, or a path that cannot be written (one line).
    """
    target = Path(path)
    suffix = target.suffix.lower().lstrip(".")
    has_format_suffix = suffix in FORMATS
    stem = target.with_suffix("") if has_format_suffix else target
    if formats is None:
        wanted = [suffix] if has_format_suffix else ["png"]
    else:
        wanted = [formats] if isinstance(formats, str) else list(formats)
    wanted = [str(f).lower().lstrip(".") for f in wanted]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise LandscapeError(f"unknown figure format {', '.join(unknown) or '(none)'}; use {', '.join(FORMATS)}")
    written: list[Path] = []
    for fmt in dict.fromkeys(wanted):
        out = stem.parent / f"{stem.name}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        try:
            atomic_write(out, lambda fh, fmt=fmt, metadata=metadata: fig.savefig(
                fh, format=fmt, dpi=DPI, metadata=metadata), mode="wb")
        except Exception as exc:
            if is_disk_full(exc):  # a full disk may surface as another error raised while writing
                raise disk_full_error(out, "free space and rerun (the figures are drawn from the stored results)") from exc
            if not isinstance(exc, OSError):
                raise
            reason = exc.strerror or str(exc).splitlines()[0]
            raise LandscapeError(f"cannot write figure {out}: {reason}") from exc
        written.append(out)
    return written


def plot_measure_scatter(measure: Any, gap: Any, groups: Sequence[Any] | None = None, *, xlabel: str = "measure",
                         ylabel: str = "generalization gap", group_label: str = "", title: str | None = None) -> Figure:
    """Generalization gap against a measure, one point per run, coloured by a hyper-parameter
    (Jiang et al. 2019 style)."""
    x, y = _vector("measure", measure), _vector("gap", gap)
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
    and Ψ (granulated τ) as a marker. ``rows`` are :func:`landscape.analyze.correlation_table`'s."""
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
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend([Patch(color="C0", alpha=0.75), Patch(color="C3", alpha=0.75),
                Line2D([], [], color="0.25", linewidth=0.8), Line2D([], [], marker="D", color="k", linestyle="")],
               ["τ > 0", "τ < 0", "95% bootstrap CI", "Ψ (granulated τ)"], loc="outside lower center", ncols=4,
               fontsize=LEGEND_SIZE, frameon=False)
    _suptitle(fig, title)
    return fig


# ---- monitors over training (landscape.train.monitors) --------------------------------------------

# (panel title, keys drawn in it, y label, log y); any other monitor value gets a panel of its own
MONITOR_PANELS: list[tuple[str, tuple[str, ...], str, bool]] = [
    ("λ_max (Hessian)", ("lambda_max",), "top eigenvalue", False),
    ("gradient norm", ("grad_norm",), r"$\|\nabla L\|_2$", True),
    ("weight norm", ("weight_norm",), r"$\|\theta\|_2$", False),
    ("update norm", ("update_norm",), r"$\|\theta_t - \theta_s\|_2$", True),
    ("logit statistics", ("logit_norm", "log_z", "max_abs_logit"), None, False),
    ("softmax collapse", ("softmax_collapse",), "fraction of samples with loss 0", False),
    ("preconditioned sharpness (Adam)", ("adam_sharpness", "adam_sharpness_threshold"), "top eigenvalue", False),
    ("cosine to the NLM direction", ("nlm_cosine",), r"$\cos(\nabla L, -\theta)$", False),
    ("max attention logit", ("attn_max_logit",), r"$\max |q^\top k|/\sqrt{d}$", True),
    ("per-sample loss (subset mean)", ("per_sample_loss_mean",), "loss", False),
]
# keys that are not monitor values of their own: the trainer's record and the monitors' bookkeeping
_NOT_MONITORED = {"step", "epoch", "lr", "update_steps", "lambda_max_residual", "lambda_max_error",
                  "lambda_max_hvps", "lambda_max_converged", "value", "threshold", "time",
                  "adam_sharpness_residual", "adam_sharpness_error", "adam_sharpness_hvps",
                  "adam_sharpness_converged"}
STABILITY_COLOR = "0.35"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def monitor_value_keys(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """The numeric keys of ``records`` that are monitor values (not the trainer's step, epoch,
    lr, time, ``train_*`` / ``test_*`` values or a monitor's bookkeeping such as
    ``lambda_max_hvps``); events are skipped."""
    keys = {k for r in records if isinstance(r, Mapping) and "event" not in r
            for k, v in r.items() if _is_number(v)}
    return {k for k in keys - _NOT_MONITORED if not k.startswith(("train_", "test_"))}


def plot_monitors(records: Iterable[Mapping[str, Any]], *, lr: float | None = None, momentum: float = 0.0,
                  title: str | None = None, ncols: int | None = None) -> Figure:
    r"""Monitor values over optimizer steps, one panel per monitor present, from ``metrics.jsonl``.

    Args:
        records: parsed lines of ``metrics.jsonl`` (or of an ``ls.Monitor`` output file). Records
            with an ``event`` key or without a ``step`` are skipped; a step logged twice (a
            resumed run) keeps its last record. Only steps where a value was measured are drawn.
        lr: the learning rate η for the stability line when the records carry no ``lr``.
        title: figure title.
        ncols: panels per row (default ``min(3, number of panels)``).

    Panels, in this order, each drawn only when a record holds its values: ``lambda_max`` (with a
    band of ± ``lambda_max_residual``, within which an eigenvalue lies, and the dashed line
    :math:`2/\eta` of gradient descent's stability threshold — per step from the records'
    ``lr``, else ``lr``, left out where η = 0; plain GD diverges along an eigendirection whose
    eigenvalue exceeds it),
    ``grad_norm`` (log y), ``weight_norm``, ``update_norm`` (log y), ``logit_norm`` / ``log_z`` /
    ``max_abs_logit`` in one panel, ``softmax_collapse``, ``adam_sharpness`` (with its residual
    band and the dashed ``adam_sharpness_threshold`` :math:`(2+2β_1)/((1-β_1)\eta)` of Cohen et
    al. 2022), ``nlm_cosine``, ``attn_max_logit`` (log y), ``per_sample_loss_mean``; then any
    other numeric key (other than
    the trainer's train_/test_ values), keys ``a/b`` grouped in a panel ``a`` (per-layer values).
    The line is :math:`2/\eta`, plain GD's threshold, or :math:`(2 + 2β)/\eta` with heavy-ball
    ``momentum`` β (Cohen et al. 2021, App.); Adam's is about the preconditioned Hessian.

    Returns:
        A figure with one axes per panel; each axes' ``lines`` are its values in order (x the
        steps, y as recorded), the 2/η line last in the λ_max panel (label ``2/η``).
    """
    by_step: dict[float, Mapping[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or "event" in rec or not _is_number(rec.get("step")):
            continue
        by_step[float(rec["step"])] = rec
    steps = sorted(by_step)
    recs = [by_step[s] for s in steps]
    xs_all = np.asarray(steps, dtype=np.float64)

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if _is_number(r.get(key)) else np.nan for r in recs])

    present = monitor_value_keys(recs)
    panels: list[tuple[str, list[str], str | None, bool]] = []
    known: set[str] = set()
    for name, keys, ylabel, log in MONITOR_PANELS:
        known |= set(keys)
        found = [k for k in keys if k in present]
        if found:
            panels.append((name, found, ylabel, log))
    extra: dict[str, list[str]] = {}
    for key in sorted(present - known):
        extra.setdefault(key.partition("/")[0], []).append(key)
    panels += [(name, keys, None, False) for name, keys in extra.items()]
    if not panels:
        raise LandscapeError("no monitor values to plot; train with --monitor NAME (e.g. --monitor lambda_max)")

    n = len(panels)
    ncols = min(3, n) if ncols is None else int(ncols)
    if ncols < 1:
        raise LandscapeError(f"ncols must be ≥ 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.9 * ncols, 3.0 * nrows + (0.3 if title else 0.0))
    lrs = column("lr")
    for i, (name, keys, ylabel, log) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _style(ax)
        if log:
            ax.set_yscale("log")
        for j, key in enumerate(keys):
            ys = column(key)
            keep = np.isfinite(ys)
            x, y = xs_all[keep], ys[keep]
            if key == "adam_sharpness_threshold":  # (2 + 2β₁)/((1 − β₁)η): 38/η at β₁ = 0.9
                ax.plot(x, y, linestyle="--", color=STABILITY_COLOR, linewidth=1.2, label="(2+2β₁)/((1−β₁)η)")
                continue
            _plot_series(ax, x, _positive(y) if log else y, color=f"C{j}", linewidth=1.4,
                         label=key.rpartition("/")[2] if len(keys) > 1 else key)
            if key in ("lambda_max", "adam_sharpness"):
                r = column(f"{key}_residual")[keep]
                if np.isfinite(r).any():
                    ax.fill_between(x, y - r, y + r, color="C0", alpha=0.2, linewidth=0)
            if key == "lambda_max":
                eta = np.where(np.isfinite(lrs[keep]), lrs[keep], np.nan if lr is None else float(lr))
                with np.errstate(invalid="ignore"):
                    eta = np.where(eta > 0, eta, np.nan)  # η = 0 (a schedule's end): no threshold
                if np.isfinite(eta).any():
                    label = "2/η" if not momentum else f"(2+2β)/η, β={momentum:g}"
                    ax.plot(x, (2.0 + 2.0 * momentum) / eta, linestyle="--", color=STABILITY_COLOR, linewidth=1.2,
                            label=label)
        below_empty = i + ncols >= n
        _labels(ax, "step" if below_empty else None, ylabel, name)
        _legend(ax)
    _suptitle(fig, title)
    return fig
