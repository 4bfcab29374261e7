"""What every figure shares: the Agg figure, fonts, grid and spines, legends, series with
markers where points are isolated, log-axis helpers, and :func:`save_figure` (atomic PNG / PDF /
SVG). Figures are built on :class:`~matplotlib.figure.Figure` with a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` attached, never through ``pyplot``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from landscape.errors import LandscapeError
from landscape.utils import atomic_write, disk_full_error, is_disk_full

__all__ = ["DPI", "FORMATS", "save_figure"]

DPI = 150
FORMATS = ("png", "pdf", "svg")
TITLE_SIZE = 11
LABEL_SIZE = 10
TICK_SIZE = 9
LEGEND_SIZE = 9
SUPTITLE_SIZE = 12
SHORT_SERIES = 40  # series with at most this many points get a marker on every point
TRAIN_COLOR, TEST_COLOR, LR_COLOR = "C0", "C1", "C2"
TOP_COLOR, BOTTOM_COLOR = "C0", "C3"


# ---- figure scaffolding --------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (never registered with pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panel_grid(n: int, ncols: int | None) -> tuple[int, int]:
    """``(ncols, nrows)`` of a grid of ``n`` panels: at most 3 columns unless ``ncols`` says."""
    ncols = min(3, n) if ncols is None else int(ncols)
    if ncols < 1:
        raise LandscapeError(f"ncols must be ≥ 1, got {ncols}")
    ncols = min(ncols, n)
    return ncols, math.ceil(n / ncols)


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
