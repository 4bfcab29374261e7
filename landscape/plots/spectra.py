r"""Hessian spectra: the eigenvalue density of stochastic Lanczos quadrature (Ghorbani,
Krishnan & Xiao 2019; PyHessian, Yao et al. 2020), the top-:math:`k` eigenvalues by rank and the
per-layer curvature of the diagonal Hessian blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from landscape.arrays import as_vector
from landscape.errors import LandscapeError
from landscape.plots.style import (
    BOTTOM_COLOR,
    LABEL_SIZE,
    TICK_SIZE,
    TOP_COLOR,
    _decode,
    _figure,
    _labels,
    _legend,
    _plot_series,
    _positive,
    _same_length,
    _style,
    _suptitle,
)

__all__ = ["DENSITY_FLOOR", "plot_esd", "plot_layer_spectrum", "plot_top_eigenvalues"]

DENSITY_FLOOR = 1e-8  # log-density axis floor, relative to the largest density


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
    x = as_vector("grid", grid)
    y = as_vector("density", density)
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
    top = as_vector("eigenvalues", eigenvalues)
    top = -np.sort(-top)  # descending; NaN stays last
    low = np.sort(as_vector("bottom", bottom)) if bottom is not None else np.empty(0)
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
    top = as_vector("top_eigenvalue", top_eigenvalue)
    _same_length("names", np.asarray(labels, dtype=object), "top_eigenvalue", top)
    tr = None
    if trace is not None:
        tr = as_vector("trace", trace)
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
