"""Loss slices along random / filter-normalized / PCA directions (Li, Xu, Taylor, Studer &
Goldstein 2018): loss and accuracy against a step (1D), contour lines, filled contours, heat maps
and 3D surfaces (2D), with an optional optimization trajectory. Values are indexed ``[ix, iy]``
for any grid shape; non-finite values are masked (grey cells), never drawn as numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, PercentFormatter

from landscape.arrays import as_vector, finite_or_nan, surface_grid
from landscape.errors import LandscapeError
from landscape.plots.style import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TICK_SIZE,
    _figure,
    _labels,
    _plot_series,
    _positive,
    _same_length,
    _style,
    _suptitle,
)
from landscape.plots.surface_draw import _draw_surface, _surface_legend, _trajectory

__all__ = ["SURFACE_KINDS", "plot_surface_1d", "plot_surface_2d", "plot_surface_panels"]

SURFACE_KINDS = ("contour", "filled", "heatmap", "surface3d")
LOSS_COLOR, ACC_COLOR = "C0", "C3"


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
    x = as_vector("alphas", alphas)
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
        y = as_vector(name, values)
        _same_length("alphas", x, name, y)
        return finite_or_nan(y[order])

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
