"""Drawing one loss-surface kind into an axes — contour lines, filled contours, a heat map or a
3D surface, masked cells in grey, an optional trajectory — for :mod:`landscape.plots.surfaces`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke
from matplotlib.ticker import LogLocator, MaxNLocator
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from landscape.arrays import as_vector, finite_or_nan
from landscape.errors import LandscapeError
from landscape.plots.style import LABEL_SIZE, LEGEND_SIZE, TICK_SIZE, TITLE_SIZE, _decode, _labels

__all__ = ["REFERENCE_LEVELS"]

REFERENCE_LEVELS = np.arange(0.1, 10, 0.5)  # the reference's vmin=0.1, vmax=10, vlevel=0.5

TRAJECTORY_COLOR = "C3"
SURFACE_CMAP, SURFACE3D_CMAP = "viridis", "coolwarm"
MASK_COLOR = "0.82"  # masked (NaN / inf / non-positive on a log scale) grid cells


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
        lv = np.unique(as_vector("levels", levels))
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
    t = finite_or_nan(t)
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
