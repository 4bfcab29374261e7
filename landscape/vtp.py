r"""Loss surfaces as ParaView / VTK PolyData (``.vtp``), like the reference's ``h52vtp.py``.

Li et al. 2018 render their 3D loss surfaces in ParaView from a VTK XML PolyData file: one
point per grid point at :math:`(x, y, z = L(x, y))`, one quadrilateral per grid cell. This
writes the same file from the arrays of the surface probe, with the data convention of
:mod:`landscape.arrays`: ``values[ix, iy]`` is the value at ``(xcoords[ix], ycoords[iy])`` for
any grid shape (the reference assumes a square grid). Non-finite values (divergent or not yet
computed points) are dropped with every quad that touches them, leaving a hole, never a spike.

File layout (ASCII, ``VTKFile type="PolyData" version="1.0"``): ``Points`` (x, y, z as
Float64), ``Polys`` (``connectivity`` / ``offsets``, Int64, four corners per quad,
counter-clockwise seen from +z so normals point up), ``PointData`` with the value at each point
(``loss`` by default, before any clipping or log) and, when ``log`` or ``zmax`` changed it, the
height ``z``; ``CellData`` with the mean value of each quad's corners (the reference's
"averaged zvalue").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from landscape.arrays import surface_grid
from landscape.errors import LandscapeError
from landscape.utils import atomic_write

__all__ = ["LOG_OFFSET", "write_vtp"]

LOG_OFFSET = 0.1  # the reference's log height: ln(value + 0.1), so that a zero loss stays finite


def _resample(x: np.ndarray, y: np.ndarray, z: np.ndarray, interp: Any,
              method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``z`` on a regular ``nx × ny`` grid over the same ranges (``interp`` = n or (nx, ny))."""
    size = (interp, interp) if np.isscalar(interp) else tuple(interp)
    try:
        nx, ny = (int(n) for n in size)
    except (TypeError, ValueError) as exc:
        raise LandscapeError(f"interp must be a number of points or (nx, ny), got {interp!r}") from exc
    if nx < 2 or ny < 2:
        raise LandscapeError(f"interp must give at least 2 points along each axis, got {interp!r}")
    if method not in ("linear", "cubic"):
        raise LandscapeError(f"unknown interpolation method {method!r}; use linear or cubic")
    if method == "cubic":
        if not np.isfinite(z).all():
            raise LandscapeError("cubic interpolation needs a grid without NaN / inf (a spline spreads "
                                 "them over the whole row); use interp_method='linear'")
        if min(x.size, y.size) < 4:
            raise LandscapeError("cubic interpolation needs at least 4 points along each axis")
    xi, yi = np.linspace(x[0], x[-1], nx), np.linspace(y[0], y[-1], ny)
    if method == "cubic":
        from scipy.interpolate import RegularGridInterpolator

        gx, gy = np.meshgrid(xi, yi, indexing="ij")
        zi = RegularGridInterpolator((x, y), z, method="cubic")(np.stack([gx, gy], axis=-1))
    else:
        zi = _bilinear(x, y, z, xi, yi)
    return xi, yi, np.where(np.isfinite(zi), zi, np.nan)


def _bilinear(x: np.ndarray, y: np.ndarray, z: np.ndarray, xi: np.ndarray, yi: np.ndarray) -> np.ndarray:
    """Bilinear interpolation on the grid ``xi × yi``, where a corner of zero weight is ignored.

    A NaN value thus removes only the new points strictly inside the cells around it (and on the
    grid lines through it), not the ones that fall on the edges of those cells.
    """
    def cell(c: np.ndarray, ci: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.searchsorted(c, ci, side="right") - 1, 0, c.size - 2)
        return i, np.clip((ci - c[i]) / (c[i + 1] - c[i]), 0.0, 1.0)

    i, s = cell(x, xi)
    j, t = cell(y, yi)
    s, t = s[:, None], t[None, :]
    out = np.zeros((xi.size, yi.size))
    for di, dj, w in ((0, 0, (1 - s) * (1 - t)), (1, 0, s * (1 - t)), (1, 1, s * t), (0, 1, (1 - s) * t)):
        corner = z[np.ix_(i + di, j + dj)]
        with np.errstate(invalid="ignore"):
            out += np.where(w == 0, 0.0, w * corner)
    return out


def _write_array(fh: IO[str], name: str, data: np.ndarray, dtype: str, components: int = 1) -> None:
    """One ASCII ``DataArray``: a point per line for 3 components, else 6 values a line."""
    # RangeMin / RangeMax are optional hints; for vectors VTK means the range of the magnitude
    rng = f' RangeMin="{data.min():.10g}" RangeMax="{data.max():.10g}"' if components == 1 and data.size else ""
    fh.write(f'        <DataArray type="{dtype}" Name={quoteattr(name)} NumberOfComponents="{components}" '
             f'format="ascii"{rng}>\n')
    flat = data.ravel()
    per_line = components if components > 1 else 6
    fmt = "%.10g" if data.dtype.kind == "f" else "%d"
    full = flat.size // per_line * per_line
    if full:
        np.savetxt(fh, flat[:full].reshape(-1, per_line), fmt=fmt)
    if flat.size > full:
        np.savetxt(fh, flat[full:].reshape(1, -1), fmt=fmt)
    fh.write("        </DataArray>\n")


def write_vtp(path: str | os.PathLike[str], xcoords: Any, ycoords: Any, values: Any, *,
              log: bool = False, zmax: float | None = None, interp: Any = None,
              interp_method: str = "linear", name: str = "loss") -> Path:
    r"""Write a loss surface as a ParaView PolyData file (``.vtp``), atomically.

    Args:
        path: the output file (parent folders are created). Written through a temporary file
            and ``os.replace``: a reader sees the old file or the new one, never a partial one.
        xcoords, ycoords: grid coordinates (``surface_2d/xcoords``, ``ycoords``); sorted
            ascending with the values.
        values: ``(len(xcoords), len(ycoords))`` array indexed ``[ix, iy]``. NaN / inf points (and
            the masked points of a masked array) are dropped with every quad touching them.
        log: the height is :math:`\ln(\text{value} + 0.1)` as in the reference (values
            :math:`\le -0.1` are dropped), after clipping at ``zmax``.
        zmax: clip the height at ``zmax`` (the reference's ``--zmax``): a plateau instead of
            walls of divergent loss.
        interp: resample onto a regular grid of ``interp × interp`` points (or ``(nx, ny)``)
            spanning the same ranges before export (the reference's ``--interp``, which it does
            with a cubic spline). Default: the grid as computed.
        interp_method: ``"linear"`` (default; a NaN corner removes only the cells around it)
            or ``"cubic"`` (the reference's choice; needs an all-finite grid of at least 4 × 4).
        name: the name of the point and cell data arrays (``"loss"``, ``"test_acc"``, …).

    Returns:
        The path written.

    Raises:
        LandscapeError: mismatched shapes, bad coordinates, no finite point, or an unwritable
            path (one line).
    """
    x, y, z = surface_grid(xcoords, ycoords, values)
    if interp is not None:
        x, y, z = _resample(x, y, z, interp, interp_method)
    nx, ny = z.shape
    height = z.copy()
    if zmax is not None:
        height = np.minimum(height, float(zmax))  # NaN stays NaN
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            height = np.log(height + LOG_OFFSET)
        height = np.where(np.isfinite(height), height, np.nan)
    valid = np.isfinite(height)  # [ix, iy]; point id of (ix, iy) is ix * ny + iy before dropping
    if not valid.any():
        raise LandscapeError("no finite value on the surface: nothing to export")

    new_id = np.full(nx * ny, -1, dtype=np.int64)
    new_id[valid.ravel()] = np.arange(int(valid.sum()), dtype=np.int64)
    gx, gy = np.meshgrid(x, y, indexing="ij")
    points = np.stack([gx[valid], gy[valid], height[valid]], axis=1)

    ids = np.arange(nx * ny, dtype=np.int64).reshape(nx, ny)
    quads = np.stack([ids[:-1, :-1], ids[1:, :-1], ids[1:, 1:], ids[:-1, 1:]], axis=-1).reshape(-1, 4)
    quads = quads[(new_id[quads] >= 0).all(axis=1)]
    cell_values = z.ravel()[quads].mean(axis=1)
    connectivity = new_id[quads].ravel()
    offsets = 4 * np.arange(1, len(quads) + 1, dtype=np.int64)
    changed = log or zmax is not None

    def write(fh: IO[str]) -> None:
        fh.write('<?xml version="1.0"?>\n')
        fh.write('<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n')
        fh.write("  <PolyData>\n")
        fh.write(f'    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" '
                 f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">\n')
        fh.write(f"      <PointData Scalars={quoteattr(name)}>\n")
        _write_array(fh, name, z[valid], "Float64")
        if changed:
            _write_array(fh, "z", height[valid], "Float64")
        fh.write("      </PointData>\n")
        fh.write(f"      <CellData Scalars={quoteattr(name)}>\n")
        _write_array(fh, name, cell_values, "Float64")
        fh.write("      </CellData>\n")
        fh.write("      <Points>\n")
        _write_array(fh, "Points", points, "Float64", components=3)
        fh.write("      </Points>\n")
        fh.write("      <Polys>\n")
        _write_array(fh, "connectivity", connectivity, "Int64")
        _write_array(fh, "offsets", offsets, "Int64")
        fh.write("      </Polys>\n")
        fh.write("    </Piece>\n")
        fh.write("  </PolyData>\n")
        fh.write("</VTKFile>\n")

    out = Path(path)
    try:
        atomic_write(out, write)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise LandscapeError(f"cannot write {out}: {reason}") from exc
    return out
