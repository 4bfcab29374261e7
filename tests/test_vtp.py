"""Tests of landscape/vtp.py: ParaView PolyData export of loss surfaces."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.vtp import LOG_OFFSET, write_vtp

X = np.array([-1.0, 0.0, 0.5, 2.0])  # nx = 4, uneven
Y = np.array([10.0, 20.0, 30.0])  # ny = 3: a non-square grid


def _values():
    return np.add.outer(X, Y / 10)  # values[ix, iy] = x + y / 10


def _read(path):
    root = ET.parse(path).getroot()  # valid XML
    assert root.tag == "VTKFile" and root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")

    def array(section, name):
        (el,) = [a for a in piece.find(section).findall("DataArray") if a.get("Name") == name]
        values = np.array((el.text or "").split(), dtype=np.float64)
        return values.reshape(-1, int(el.get("NumberOfComponents", "1")))

    return piece, array


def test_points_and_quads_of_a_non_square_grid(tmp_path):
    path = write_vtp(tmp_path / "surf.vtp", X, Y, _values())
    assert path == tmp_path / "surf.vtp"
    assert os.listdir(tmp_path) == ["surf.vtp"]  # no temporary file left
    piece, array = _read(path)
    assert int(piece.get("NumberOfPoints")) == 12 and int(piece.get("NumberOfPolys")) == 6
    points = array("Points", "Points")
    gx, gy = np.meshgrid(X, Y, indexing="ij")
    np.testing.assert_allclose(points, np.stack([gx.ravel(), gy.ravel(), _values().ravel()], axis=1))
    np.testing.assert_allclose(array("PointData", "loss")[:, 0], _values().ravel())
    connectivity = array("Polys", "connectivity")[:, 0].astype(int).reshape(-1, 4)
    np.testing.assert_array_equal(array("Polys", "offsets")[:, 0], 4 * np.arange(1, 7))
    # point (ix, iy) has id ix * ny + iy; quads counter-clockwise seen from +z
    np.testing.assert_array_equal(connectivity[0], [0, 3, 4, 1])
    np.testing.assert_array_equal(connectivity[-1], [7, 10, 11, 8])
    for quad in connectivity:
        corners = points[quad, :2]
        edge1, edge2 = corners[1] - corners[0], corners[2] - corners[1]
        assert edge1[0] * edge2[1] - edge1[1] * edge2[0] > 0  # normal points up
    cell = array("CellData", "loss")[:, 0]
    np.testing.assert_allclose(cell, _values().ravel()[connectivity].mean(axis=1))
    assert [a.get("Name") for a in piece.find("PointData")] == ["loss"]  # no "z" when unchanged


def test_nan_points_dropped_with_their_quads(tmp_path):
    values = _values()
    values[1, 1] = np.nan  # interior: touches 4 quads
    values[3, 0] = np.inf  # corner: touches 1 quad
    piece, array = _read(write_vtp(tmp_path / "holes.vtp", X, Y, values))
    assert int(piece.get("NumberOfPoints")) == 10
    assert int(piece.get("NumberOfPolys")) == 1  # of 6 quads only (ix, iy) = (2, 1) survives
    points = array("Points", "Points")
    assert np.isfinite(points).all()
    connectivity = array("Polys", "connectivity")[:, 0].astype(int)
    assert connectivity.max() < 10
    np.testing.assert_allclose(points[connectivity, :2], [[0.5, 20], [2.0, 20], [2.0, 30], [0.5, 30]])
    # a masked array's mask means missing (a partly computed surface)
    masked = np.ma.masked_where(~np.isfinite(values), np.nan_to_num(values, nan=-1.0, posinf=-1.0))
    assert write_vtp(tmp_path / "masked.vtp", X, Y, masked).read_text() == (tmp_path / "holes.vtp").read_text()
    # an all-NaN row leaves the rest
    values = _values()
    values[0, :] = np.nan
    piece, _ = _read(write_vtp(tmp_path / "row.vtp", X, Y, values))
    assert (int(piece.get("NumberOfPoints")), int(piece.get("NumberOfPolys"))) == (9, 4)


def test_log_zmax_and_name(tmp_path):
    values = _values() - 1.05  # −1.05 … 1.95
    piece, array = _read(write_vtp(tmp_path / "log.vtp", X, Y, values, log=True, zmax=1.5,
                                   name="train_loss"))
    with np.errstate(invalid="ignore"):
        height = np.log(np.minimum(values, 1.5) + LOG_OFFSET)  # clip, then the reference's ln(z + 0.1)
    valid = np.isfinite(height)  # values ≤ −0.1 have no log height: dropped
    assert 0 < valid.sum() < values.size
    assert array("Points", "Points")[:, 2].max() == pytest.approx(np.log(1.6))
    np.testing.assert_allclose(array("Points", "Points")[:, 2], height[valid])
    np.testing.assert_allclose(array("PointData", "z")[:, 0], height[valid])
    np.testing.assert_allclose(array("PointData", "train_loss")[:, 0], values[valid])  # raw values
    assert piece.find("PointData").get("Scalars") == "train_loss"


def test_interpolation(tmp_path):
    x, y = np.linspace(0, 1, 5), np.linspace(0, 2, 4)
    values = np.add.outer(2 * x, 3 * y)  # linear: reproduced exactly
    piece, array = _read(write_vtp(tmp_path / "fine.vtp", x, y, values, interp=(9, 7)))
    assert (int(piece.get("NumberOfPoints")), int(piece.get("NumberOfPolys"))) == (63, 48)
    points = array("Points", "Points")
    np.testing.assert_allclose(points[:, 2], 2 * points[:, 0] + 3 * points[:, 1], atol=1e-12)
    piece, _ = _read(write_vtp(tmp_path / "cubic.vtp", x, y, values, interp=6, interp_method="cubic"))
    assert int(piece.get("NumberOfPoints")) == 36
    values[2, 1] = np.nan  # linear: only the new points inside its four cells are lost
    piece, array = _read(write_vtp(tmp_path / "hole.vtp", x, y, values, interp=(9, 7)))
    points = array("Points", "Points")
    assert int(piece.get("NumberOfPoints")) == 63 - 9  # 3 × 3 new points strictly inside
    assert not np.any((np.abs(points[:, 0] - 0.5) < 0.2) & (np.abs(points[:, 1] - 2 / 3) < 0.6))
    kept = np.isclose(points[:, 0], 0.25) & np.isclose(points[:, 1], 2 / 3)  # on a cell edge: kept
    np.testing.assert_allclose(points[kept, 2], 2 * 0.25 + 3 * 2 / 3)
    with pytest.raises(LandscapeError, match="cubic interpolation needs a grid without NaN"):
        write_vtp(tmp_path / "bad.vtp", x, y, values, interp=6, interp_method="cubic")


def test_errors_and_atomic_overwrite(tmp_path):
    with pytest.raises(LandscapeError, match=r"shape \(len\(xcoords\), len\(ycoords\)\) = \(4, 3\)"):
        write_vtp(tmp_path / "t.vtp", X, Y, _values().T)
    with pytest.raises(LandscapeError, match="no finite value"):
        write_vtp(tmp_path / "t.vtp", X, Y, np.full((4, 3), np.nan))
    with pytest.raises(LandscapeError, match="at least 2"):
        write_vtp(tmp_path / "t.vtp", [0.0], Y, np.ones((1, 3)))
    with pytest.raises(LandscapeError, match="interp"):
        write_vtp(tmp_path / "t.vtp", X, Y, _values(), interp=1)
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LandscapeError, match="cannot write"):
        write_vtp(blocker / "t.vtp", X, Y, _values())
    target = tmp_path / "s.vtp"
    target.write_text("old")
    write_vtp(target, X, Y, _values())
    assert target.read_text().startswith("<?xml")
    assert sorted(os.listdir(tmp_path)) == ["file", "s.vtp"]
