"""Checked numeric arrays for the figures and the exporters: 1-D vectors and surface grids.

Pure numpy (no matplotlib), so :mod:`landscape.vtp` and :mod:`landscape.plots` share one
validation of a surface indexed ``values[ix, iy]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape.errors import LandscapeError

__all__ = ["as_vector", "finite_or_nan", "surface_grid"]


def as_vector(name: str, values: Any) -> np.ndarray:
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



def finite_or_nan(y: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(y), y, np.nan)


def surface_grid(xcoords: Any, ycoords: Any, values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a surface indexed ``values[ix, iy]``: coordinates sorted ascending and the values
    reordered with them, non-finite → NaN (shared by the plots and :mod:`landscape.vtp`)."""
    x = as_vector("xcoords", xcoords)
    y = as_vector("ycoords", ycoords)
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
    return x, y, finite_or_nan(z)
