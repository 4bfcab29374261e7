"""Tests of landscape/plots.py: figure structure, data on the axes, scales, saving."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from landscape import plots
from landscape.errors import LandscapeError

pytestmark = pytest.mark.filterwarnings("error")  # no RuntimeWarning / UserWarning from edge cases


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """Nothing here may register a figure with pyplot's global state."""
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == []


def _line(ax, label):
    matches = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(matches) == 1, [ln.get_label() for ln in ax.lines]
    return matches[0]


def _check_figure(fig, n_axes, draw=False):
    assert isinstance(fig, Figure)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert fig.dpi == plots.DPI == 150
    assert len(fig.axes) == n_axes
    if draw:  # edge cases: renders without error or warning
        fig.canvas.draw()


# ---- plot_esd -------------------------------------------------------------------------------------


def test_esd_log_axis_floors_zeros_and_keeps_nans():
    grid = np.linspace(-1.0, 5.0, 7)
    density = np.array([0.0, 2.0, 0.5, np.nan, 0.0, 1e-12, 0.1])
    fig = plots.plot_esd(grid, density)
    _check_figure(fig, 1, draw=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    line = _line(ax, "density")
    floor = plots.DENSITY_FLOOR * 2.0
    np.testing.assert_array_equal(line.get_xdata(), grid)
    np.testing.assert_allclose(line.get_ydata(), [floor, 2.0, 0.5, np.nan, floor, floor, 0.1])
    assert ax.get_ylim()[0] < floor < 2.0 < ax.get_ylim()[1]
    assert ax.get_legend() is None  # one line only


def test_esd_linear_axis_plots_density_as_given():
    grid, density = np.linspace(0, 1, 5), np.array([0.0, 1.0, 2.0, 1.0, 0.0])
    fig = plots.plot_esd(grid, density, log=False, title="epoch 10")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_title() == "epoch 10"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), density)
    assert ax.get_ylim()[0] == 0.0


def test_esd_rug_of_nodes_drops_zero_weight_padding():
    grid = np.linspace(-1, 10, 50)
    density = np.exp(-grid**2)
    nodes = np.array([[0.1, 2.0, 9.0], [0.2, 3.0, 0.0]])  # second probe stopped early: padded
    weights = np.array([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    fig = plots.plot_esd(grid, density, nodes=nodes, weights=weights)
    ax = fig.axes[0]
    assert len(ax.collections) == 1
    segments = ax.collections[0].get_segments()
    assert sorted(s[0][0] for s in segments) == [0.1, 0.2, 2.0, 3.0, 9.0]
    assert ax.get_legend() is not None  # density + nodes
    fig2 = plots.plot_esd(grid, density, nodes=nodes)  # without weights: every node
    assert len(fig2.axes[0].collections[0].get_segments()) == 6


def test_esd_single_point_and_all_zero_density():
    fig = plots.plot_esd([0.5], [3.0])
    _check_figure(fig, 1, draw=True)
    assert fig.axes[0].lines[0].get_marker() == "o"  # a lone point stays visible
    fig = plots.plot_esd([0.0, 1.0], [0.0, 0.0])
    _check_figure(fig, 1, draw=True)
    assert np.all(fig.axes[0].lines[0].get_ydata() > 0)


def test_esd_rejects_mismatched_arrays():
    with pytest.raises(LandscapeError, match="density has 2 values but grid has 3"):
        plots.plot_esd([1, 2, 3], [1, 2])
    with pytest.raises(LandscapeError, match="weights"):
        plots.plot_esd([1, 2], [1, 2], nodes=[1, 2, 3], weights=[1, 2])


# ---- plot_top_eigenvalues -------------------------------------------------------------------------


def test_top_eigenvalues_by_rank_with_bottom_distinct():
    top = np.array([3.0, 10.0, 5.0])
    fig = plots.plot_top_eigenvalues(top, bottom=[-2.0, -4.0])
    _check_figure(fig, 1)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"  # negatives are not tiny compared with the top
    top_line, low_line = _line(ax, "top-3"), _line(ax, "bottom-2")
    np.testing.assert_array_equal(top_line.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(top_line.get_ydata(), [10.0, 5.0, 3.0])
    np.testing.assert_array_equal(low_line.get_ydata(), [-4.0, -2.0])
    assert min(low_line.get_xdata()) > max(top_line.get_xdata()) + 1  # after a gap
    assert top_line.get_color() != low_line.get_color()
    assert top_line.get_marker() != low_line.get_marker()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1", "2", "3", r"$\lambda_n$", r"$\lambda_{n-1}$"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert ax.get_legend() is not None


def test_top_eigenvalues_scales():
    ax = plots.plot_top_eigenvalues([50.0, 20.0], bottom=[-0.01]).axes[0]
    assert ax.get_yscale() == "symlog"  # tiny negative beside large positive: both visible
    ax = plots.plot_top_eigenvalues([1e4, 10.0, 1.0]).axes[0]
    assert ax.get_yscale() == "log"
    ax = plots.plot_top_eigenvalues([4.0, 3.0, 2.0]).axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_legend() is None
    ax = plots.plot_top_eigenvalues([4.0, 3.0], yscale="log").axes[0]
    assert ax.get_yscale() == "log"
    with pytest.raises(LandscapeError, match="yscale"):
        plots.plot_top_eigenvalues([1.0], yscale="cubic")


def test_top_eigenvalues_single_value_nan_and_many_ranks():
    fig = plots.plot_top_eigenvalues(7.0)
    _check_figure(fig, 1, draw=True)
    np.testing.assert_array_equal(_line(fig.axes[0], "top-1").get_ydata(), [7.0])
    fig = plots.plot_top_eigenvalues([2.0, np.nan, 5.0])
    _check_figure(fig, 1, draw=True)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [5.0, 2.0, np.nan])
    fig = plots.plot_top_eigenvalues(np.linspace(50, 1, 40))
    _check_figure(fig, 1)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "1" and len(labels) <= 10
    with pytest.raises(LandscapeError, match="empty"):
        plots.plot_top_eigenvalues([])


# ---- plot_layer_spectrum --------------------------------------------------------------------------


def test_layer_spectrum_bytes_names_and_trace_panel():
    names = np.array([b"conv1", b"layer1.0.conv1", b"fc"], dtype="S")
    top, trace = np.array([2.0, 0.5, 3.0]), np.array([20.0, 4.0, 9.0])
    fig = plots.plot_layer_spectrum(names, top, trace)
    _check_figure(fig, 2)
    ax_top, ax_trace = fig.axes
    assert [t.get_text() for t in ax_top.get_yticklabels()] == ["conv1", "layer1.0.conv1", "fc"]
    np.testing.assert_allclose([p.get_width() for p in ax_top.patches], top)
    np.testing.assert_allclose([p.get_width() for p in ax_trace.patches], trace)
    assert ax_top.get_xlabel() == "top eigenvalue" and ax_trace.get_xlabel() == "trace"
    assert ax_top.get_ylabel() == "layer"
    assert ax_top.get_xscale() == ax_trace.get_xscale() == "linear"
    assert ax_top.get_ylim()[0] > ax_top.get_ylim()[1]  # first layer drawn on top
    assert fig.get_suptitle()


def test_layer_spectrum_without_trace_and_log_axis():
    names = ["a", "b", "c"]
    top = np.array([1000.0, 2.0, 0.5])
    fig = plots.plot_layer_spectrum(names, top, np.full(3, np.nan), title="step 500")
    _check_figure(fig, 1, draw=True)  # an all-NaN trace (not computed) gets no panel
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"  # three decades apart
    np.testing.assert_allclose([p.get_x() + p.get_width() for p in ax.patches], top)
    assert fig.get_suptitle() == "step 500"
    fig = plots.plot_layer_spectrum([b"only"], [1.5])
    _check_figure(fig, 1, draw=True)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["only"]


def test_layer_spectrum_rejects_mismatch():
    with pytest.raises(LandscapeError, match="top_eigenvalue has 1 values but names has 2"):
        plots.plot_layer_spectrum(["a", "b"], [1.0])


# ---- plot_curves ----------------------------------------------------------------------------------


def test_curves_one_panel_per_series_with_lines_as_given():
    x = np.arange(5.0)
    nc1 = {"train": np.array([1.0, 0.5, np.nan, 0.1, 0.05]), "test": np.array([2.0, 1.0, 0.8, 0.6, 0.5])}
    rankme = np.array([10.0, 9.0, 8.0, 8.0, 7.5])
    fig = plots.plot_curves(x, {"nc1": nc1, "rankme": rankme, "dse": rankme / 2, "nc4": rankme / 10},
                            title="collapse")
    _check_figure(fig, 4)
    ax = fig.axes[0]
    assert ax.get_title() == "nc1"
    assert [ln.get_label() for ln in ax.lines] == ["train", "test"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), x)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), nc1["train"])  # NaN kept: a gap
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), nc1["test"])
    assert ax.get_legend() is not None
    assert ax.get_ylabel() == plots._YLABELS["nc1"]
    ax_rank = fig.axes[1]
    assert ax_rank.get_legend() is None and len(ax_rank.lines) == 1
    np.testing.assert_array_equal(ax_rank.lines[0].get_ydata(), rankme)
    # default 3 columns: x labels on the lowest panel of each column only
    assert [a.get_xlabel() for a in fig.axes] == ["", "epoch", "epoch", "epoch"]
    assert all(a.get_xscale() == a.get_yscale() == "linear" for a in fig.axes)
    assert fig.get_suptitle() == "collapse"


def test_curves_log_axes_mask_non_positive_values():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 0.0, -1.0, 0.1])
    fig = plots.plot_curves(x, {"NC1": y, "acc": y}, logx=True, logy=["NC1"], xlabel="step", ncols=1)
    _check_figure(fig, 2, draw=True)
    ax_log, ax_lin = fig.axes
    assert ax_log.get_xscale() == "log" and ax_log.get_yscale() == "log"
    assert ax_lin.get_xscale() == "log" and ax_lin.get_yscale() == "linear"
    np.testing.assert_array_equal(ax_log.lines[0].get_xdata(), [np.nan, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ax_log.lines[0].get_ydata(), [np.nan, np.nan, np.nan, 0.1])
    np.testing.assert_array_equal(ax_lin.lines[0].get_ydata(), [np.nan, 0.0, -1.0, 0.1])  # x = 0 masked
    assert ax_log.get_ylabel() == plots._YLABELS["nc1"]  # known names are case-insensitive
    assert [a.get_xlabel() for a in fig.axes] == ["", "step"]


def test_curves_single_point_and_custom_labels():
    fig = plots.plot_curves([10], {"sharpness": [3.0]}, ylabels={"sharpness": r"$\lambda_{max}$"})
    _check_figure(fig, 1, draw=True)
    ax = fig.axes[0]
    assert ax.get_ylabel() == r"$\lambda_{max}$"
    assert ax.lines[0].get_marker() == "o"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0])


def test_curves_long_series_marks_only_isolated_points():
    y = np.full(100, np.nan)
    y[:50] = 1.0
    y[70] = 2.0  # alone between NaNs
    line = plots.plot_curves(np.arange(100), {"m": y}).axes[0].lines[0]
    assert line.get_marker() == "o" and line.get_markevery() == [70]
    line = plots.plot_curves(np.arange(100), {"m": np.ones(100)}).axes[0].lines[0]
    assert line.get_marker() in ("None", "", None)


def test_curves_errors():
    with pytest.raises(LandscapeError, match="no series"):
        plots.plot_curves([1, 2], {})
    with pytest.raises(LandscapeError, match="has 3 values but x has 2"):
        plots.plot_curves([1, 2], {"a": [1, 2, 3]})
    with pytest.raises(LandscapeError, match="ncols"):
        plots.plot_curves([1, 2], {"a": [1, 2]}, ncols=0)


# ---- plot_training_curves -------------------------------------------------------------------------


def _records():
    recs = []
    for step in (0, 100, 200, 300):
        recs.append({"step": step, "epoch": step / 100, "lr": 0.1 * (1 - step / 400), "time": 1.0,
                     "train_loss": 2.0 / (1 + step), "test_loss": 2.5 / (1 + step / 2),
                     "train_acc": 0.1 + step / 400, "test_acc": 0.1 + step / 500})
    recs.insert(2, {"step": 150, "event": "diverged", "what": "loss"})
    return recs


def test_training_curves_panels_and_data():
    recs = _records()
    fig = plots.plot_training_curves(recs)
    _check_figure(fig, 3)
    ax_loss, ax_acc, ax_lr = fig.axes
    kept = [r for r in recs if "event" not in r]
    epochs = [r["epoch"] for r in kept]
    assert ax_loss.get_yscale() == "log"
    assert [ln.get_label() for ln in ax_loss.lines] == ["train", "test"]
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), epochs)
    np.testing.assert_array_equal(ax_loss.lines[0].get_ydata(), [r["train_loss"] for r in kept])
    np.testing.assert_array_equal(ax_acc.lines[1].get_ydata(), [r["test_acc"] for r in kept])
    np.testing.assert_array_equal(ax_lr.lines[0].get_ydata(), [r["lr"] for r in kept])
    assert [a.get_xlabel() for a in fig.axes] == ["epoch"] * 3
    assert [a.get_ylabel() for a in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert ax_loss.get_legend() is not None and ax_lr.get_legend() is None


def test_training_curves_resume_duplicates_missing_keys_and_steps():
    recs = [
        {"step": 0, "train_loss": 1.0, "test_loss": 1.2, "train_acc": 0.2, "test_acc": 0.2},
        {"step": 10, "train_loss": 9.9},  # superseded by the resumed run's record below
        {"step": 20, "event": "resumed"},
        {"step": 10, "train_loss": 0.5, "test_loss": 0.0, "train_acc": 0.6},
    ]
    fig = plots.plot_training_curves(recs)
    _check_figure(fig, 2, draw=True)  # no lr anywhere: no lr panel
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_xlabel() == "step"  # no epochs recorded
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), [0.0, 10.0])
    np.testing.assert_array_equal(ax_loss.lines[0].get_ydata(), [1.0, 0.5])
    np.testing.assert_array_equal(ax_loss.lines[1].get_ydata(), [1.2, np.nan])  # 0 on a log axis
    np.testing.assert_array_equal(ax_acc.lines[1].get_ydata(), [0.2, np.nan])  # missing: a gap


def test_training_curves_single_record_and_no_records():
    fig = plots.plot_training_curves([{"step": 5, "epoch": 1.0, "train_loss": 0.3, "lr": 0.01}])
    _check_figure(fig, 3, draw=True)
    assert fig.axes[0].lines[0].get_marker() == "o"
    with pytest.raises(LandscapeError, match="no metric records"):
        plots.plot_training_curves([{"step": 1, "event": "diverged"}])
    with pytest.raises(LandscapeError, match="no metric records"):
        plots.plot_training_curves([])


# ---- save_figure ----------------------------------------------------------------------------------


def test_save_png_and_pdf_atomically(tmp_path):
    fig = plots.plot_top_eigenvalues([3.0, 2.0, 1.0])
    folder = tmp_path / "run" / "plots"  # created on demand
    written = plots.save_figure(fig, folder / "top", formats=("png", "pdf"))
    assert written == [folder / "top.png", folder / "top.pdf"]
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    assert written[1].read_bytes()[:4] == b"%PDF"
    assert sorted(os.listdir(folder)) == ["top.pdf", "top.png"]  # no temp files left
    # PDFs are reproducible: no creation date
    again = plots.save_figure(fig, folder / "again.pdf")
    assert again == [folder / "again.pdf"]
    assert again[0].read_bytes() == written[1].read_bytes()


def test_save_suffix_rules(tmp_path):
    fig = plots.plot_esd([0, 1], [1, 2], log=False)
    assert plots.save_figure(fig, tmp_path / "a") == [tmp_path / "a.png"]
    assert plots.save_figure(fig, tmp_path / "b.PDF") == [tmp_path / "b.pdf"]
    assert plots.save_figure(fig, str(tmp_path / "c.png"), formats="pdf") == [tmp_path / "c.pdf"]
    # a dot in a name that is not a format suffix stays part of the name
    assert plots.save_figure(fig, tmp_path / "esd.step_500") == [tmp_path / "esd.step_500.png"]
    with pytest.raises(LandscapeError, match="unknown figure format jpg"):
        plots.save_figure(fig, tmp_path / "d", formats=("jpg",))


def test_save_unwritable_path_raises_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    fig = plots.plot_esd([0, 1], [1, 2])
    with pytest.raises(LandscapeError) as info:
        plots.save_figure(fig, blocker / "sub" / "esd", formats=("png", "pdf"))
    message = str(info.value)
    assert "\n" not in message and "cannot write figure" in message
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_save_overwrites_existing_figure(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    plots.save_figure(plots.plot_esd([0, 1], [1, 2]), path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert os.listdir(tmp_path) == ["fig.png"]


# ---- loss surfaces ---------------------------------------------------------------------------------

# a non-square grid with distinct, unevenly spaced coordinates: any transposition shows
GX = np.array([-2.0, -1.0, 0.0, 1.5, 4.0])
GY = np.array([10.0, 20.0, 30.0])


def _fx(x=GX, y=GY):
    """values[ix, iy] = x[ix]: varies along x only."""
    return np.repeat(x[:, None], len(y), axis=1)


def _fy(x=GX, y=GY):
    return np.repeat(y[None, :], len(x), axis=0)


def _only(ax, cls, cmap=None):
    found = [c for c in ax.collections if isinstance(c, cls) and (cmap is None or c.get_cmap().name == cmap)]
    assert len(found) == 1, ax.collections
    return found[0]


def _contour_vertices(cs):
    return [p.vertices for p in cs.get_paths() if len(p.vertices)]


def test_surface_contour_non_square_not_transposed():
    fig = plots.plot_surface_2d(GX, GY, _fx(), levels=[-1.5, 0.5, 3.0])
    _check_figure(fig, 1, draw=True)
    ax = fig.axes[0]
    assert ax.get_xlim() == (GX[0], GX[-1]) and ax.get_ylim() == (GY[0], GY[-1])
    assert ax.get_xlabel() == "α" and ax.get_ylabel() == "β"
    cs = _only(ax, ContourSet)
    np.testing.assert_array_equal(cs.levels, [-1.5, 0.5, 3.0])
    verts = _contour_vertices(cs)
    assert len(verts) == 3
    for level, v in zip(cs.levels, verts, strict=True):  # f(x) only: vertical lines at x = level
        np.testing.assert_allclose(v[:, 0], level)
        np.testing.assert_allclose([v[:, 1].min(), v[:, 1].max()], [GY[0], GY[-1]])
    assert ax.texts  # inline labels


def test_surface_filled_bands_follow_y():
    fig = plots.plot_surface_2d(GX, GY, _fy(), kind="filled", levels=[10, 15, 25, 30])
    _check_figure(fig, 2, draw=True)  # the plot and its colour bar
    ax = fig.axes[0]
    cs = _only(ax, ContourSet)
    assert cs.filled
    for lo, hi, v in zip(cs.levels[:-1], cs.levels[1:], _contour_vertices(cs), strict=True):
        assert lo - 1e-9 <= v[:, 1].min() and v[:, 1].max() <= hi + 1e-9  # horizontal bands
        np.testing.assert_allclose([v[:, 0].min(), v[:, 0].max()], [GX[0], GX[-1]])
    assert fig.axes[1].get_ylabel() == "loss"


def test_surface_heatmap_orientation_and_cells():
    values = _fx() + 0.01 * _fy()
    fig = plots.plot_surface_2d(GX, GY, values, kind="heatmap")
    _check_figure(fig, 2, draw=True)
    ax = fig.axes[0]
    mesh = _only(ax, QuadMesh, "viridis")
    image = mesh.get_array()
    assert image.shape == (len(GY), len(GX))  # rows = y (vertical), columns = x (horizontal)
    np.testing.assert_array_equal(image, values.T)
    assert np.all(np.diff(image, axis=1) > 0.5)  # along the horizontal axis: the x variation
    # cells centred on the (unevenly spaced) coordinates
    corners = mesh.get_coordinates()
    np.testing.assert_allclose(corners[0, :, 0], [-2.5, -1.5, -0.5, 0.75, 2.75, 5.25])
    np.testing.assert_allclose(corners[:, 0, 1], [5.0, 15.0, 25.0, 35.0])
    assert ax.get_xlim() == (GX[0], GX[-1]) and ax.get_ylim() == (GY[0], GY[-1])
    assert mesh.norm.vmin == values.min() and mesh.norm.vmax == values.max()


def test_surface_unsorted_coordinates_are_sorted_with_values():
    order = np.array([3, 0, 4, 1, 2])
    values = _fx() + 0.01 * _fy()
    fig = plots.plot_surface_2d(GX[order], GY[::-1], values[order][:, ::-1], kind="heatmap")
    np.testing.assert_array_equal(_only(fig.axes[0], QuadMesh, "viridis").get_array(), values.T)


def test_surface3d_quads_in_ix_iy_order_and_holes():
    fig = plots.plot_surface_2d(GX, GY, _fx(), kind="surface3d")
    _check_figure(fig, 2, draw=True)
    ax = fig.axes[0]
    assert isinstance(ax, Axes3D)
    poly = _only(ax, Poly3DCollection)
    mid = (GX[:-1] + GX[1:]) / 2
    np.testing.assert_allclose(poly.get_array(), np.repeat(mid, len(GY) - 1))  # one per cell
    assert ax.get_xlim() == (GX[0], GX[-1]) and ax.get_ylim() == (GY[0], GY[-1])
    values = _fx()
    values[2, 1] = np.nan  # an interior point: its four cells go, nothing is stretched over it
    poly = _only(plots.plot_surface_2d(GX, GY, values, kind="surface3d").axes[0], Poly3DCollection)
    assert len(poly.get_array()) == (len(GX) - 1) * (len(GY) - 1) - 4
    assert np.isfinite(poly.get_array()).all()


def _holey():
    values = _fx() + 0.01 * _fy()
    values[2, :] = np.nan  # a whole row (every y at x = 0) not computed
    values[4, 0] = np.inf  # a divergent point
    return values


@pytest.mark.parametrize("kind", plots.SURFACE_KINDS)
def test_surface_masks_nan_and_inf(kind):
    values = _holey()
    fig = plots.plot_surface_2d(GX, GY, values, kind=kind)
    fig.canvas.draw()  # no crash, no warning
    ax = fig.axes[0]
    bad = ~np.isfinite(values)
    if kind == "heatmap":
        image = _only(ax, QuadMesh, "viridis").get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(image), bad.T)
        assert np.isfinite(image.compressed()).all()
    elif kind == "surface3d":
        assert np.isfinite(_only(ax, Poly3DCollection).get_array()).all()
    else:
        for v in _contour_vertices(_only(ax, ContourSet)):  # no contour through the missing row
            assert not np.any((v[:, 0] > GX[1] + 1e-9) & (v[:, 0] < GX[3] - 1e-9))
    if kind != "surface3d":  # masked cells drawn in grey, explained in the legend
        grey = [c for c in ax.collections if isinstance(c, QuadMesh) and c.get_cmap().name != "viridis"]
        assert len(grey) == 1
        if kind == "heatmap":  # the masked points' cells
            np.testing.assert_array_equal(~np.ma.getmaskarray(grey[0].get_array()), bad.T)
        else:  # the grid cells with a masked corner, where no contour can go
            cells = bad[:-1, :-1] | bad[1:, :-1] | bad[1:, 1:] | bad[:-1, 1:]
            np.testing.assert_array_equal(~np.ma.getmaskarray(grey[0].get_array()), cells.T)
        assert "masked (NaN / inf)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_surface_masked_array_mask_means_missing():
    values = _fx() + 0.01 * _fy()
    done = np.ones(values.shape, dtype=bool)
    done[3:, :] = False  # not computed yet: the probe's fill value must not be drawn
    partial = np.ma.masked_where(~done, np.where(done, values, -1.0))
    image = _only(plots.plot_surface_2d(GX, GY, partial, kind="heatmap").axes[0], QuadMesh, "viridis").get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(image), ~done.T)
    assert image.min() == values[done].min()
    line = plots.plot_surface_1d([0, 1, 2], np.ma.masked_array([1.0, -1.0, 3.0], mask=[0, 1, 0])).axes[0].lines[0]
    np.testing.assert_array_equal(line.get_ydata(), [1.0, np.nan, 3.0])


@pytest.mark.parametrize("kind", plots.SURFACE_KINDS)
def test_surface_all_nan_does_not_crash(kind):
    fig = plots.plot_surface_2d(GX, GY, np.full((5, 3), np.nan), kind=kind)
    fig.canvas.draw()
    assert "no finite values" in [t.get_text() for t in fig.axes[0].texts]


@pytest.mark.parametrize("kind", plots.SURFACE_KINDS)
def test_surface_constant_and_tiny_grid(kind):
    fig = plots.plot_surface_2d([0, 1], [0, 1], np.full((2, 2), 2.0), kind=kind)
    fig.canvas.draw()


def test_surface_default_levels_reference_and_fallback():
    x = np.linspace(-1, 1, 21)
    bowl = 20 * np.add.outer(x**2, x**2)  # 0 … 40
    cs = _only(plots.plot_surface_2d(x, x, bowl, vmax=10).axes[0], ContourSet)
    np.testing.assert_allclose(cs.levels, plots.REFERENCE_LEVELS)  # arange(0.1, 10, 0.5)
    small = 0.01 + 0.001 * np.add.outer(x**2, x**2)  # 0.010 … 0.012: no reference level inside
    cs = _only(plots.plot_surface_2d(x, x, small).axes[0], ContourSet)
    assert len(cs.levels) >= 4 and np.all((cs.levels > 0.01) & (cs.levels < 0.012))
    # filled: the reference levels that cover the data, plus one each side
    cs = _only(plots.plot_surface_2d(x, x, 1 + bowl / 10, kind="filled").axes[0], ContourSet)
    np.testing.assert_allclose(cs.levels, plots.REFERENCE_LEVELS[1:11])  # 0.6 … 5.1 covers 1 … 5


def test_surface_vmax_clips():
    x = np.linspace(-1, 1, 11)
    bowl = 50 * np.add.outer(x**2, x**2)
    fig = plots.plot_surface_2d(x, x, bowl, kind="heatmap", vmax=10)
    image = _only(fig.axes[0], QuadMesh, "viridis").get_array()
    assert image.max() == 10.0 and image.min() == 0.0
    np.testing.assert_array_equal(image, np.minimum(bowl, 10).T)
    assert fig.axes[1].get_ylabel() == "loss"  # the colour bar
    poly = _only(plots.plot_surface_2d(x, x, bowl, kind="surface3d", vmax=10).axes[0], Poly3DCollection)
    assert poly.get_array().max() <= 10.0


def test_surface_log_masks_non_positive():
    x = np.linspace(-1, 1, 9)
    values = 10.0 ** (3 * np.add.outer(x**2, x**2) - 2)  # 1e-2 … 1e4
    values[4, 4] = 0.0
    values[0, 0] = -1.0
    bad = values <= 0
    fig = plots.plot_surface_2d(x, x, values, kind="heatmap", log=True)
    fig.canvas.draw()
    mesh = _only(fig.axes[0], QuadMesh, "viridis")
    assert isinstance(mesh.norm, LogNorm)
    np.testing.assert_array_equal(np.ma.getmaskarray(mesh.get_array()), bad.T)
    assert "masked (non-finite or ≤ 0)" in [t.get_text() for t in fig.legends[0].get_texts()]
    for kind in ("contour", "filled"):
        fig = plots.plot_surface_2d(x, x, values, kind=kind, log=True)
        fig.canvas.draw()
        cs = _only(fig.axes[0], ContourSet)
        levels = np.asarray(cs.levels)
        assert np.all(levels > 0) and len(levels) >= 5
        assert levels.max() / levels.min() > 1e3  # log-spaced across the decades
        assert isinstance(cs.norm, LogNorm)
    fig = plots.plot_surface_2d(x, x, values, kind="surface3d", log=True)
    fig.canvas.draw()
    heights = _only(fig.axes[0], Poly3DCollection).get_array()
    assert heights.min() >= -2 - 1e-9 and heights.max() <= 4 + 1e-9  # log10 of the values
    assert fig.axes[1].get_ylabel() == "log$_{10}$ loss"
    with pytest.raises(LandscapeError, match="levels"):
        plots.plot_surface_2d(x, x, values, log=True, levels=[-1.0, 0.0])


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap"])
def test_surface_trajectory_with_labels(kind):
    x = np.linspace(-1, 1, 11)
    bowl = np.add.outer(x**2, 3 * x**2)
    t = np.linspace(0, 1, 6)
    traj = np.stack([0.8 * (1 - t) * np.cos(5 * t), 0.8 * (1 - t) * np.sin(5 * t)], axis=1)
    labels = ["ep0", None, "ep20", "", "ep40", "ep50"]
    fig = plots.plot_surface_2d(x, x, bowl, kind=kind, trajectory=traj, trajectory_labels=labels,
                                axis_labels=("PC1 (62.3%)", "PC2 (21.0%)"), title="pca")
    fig.canvas.draw()
    ax = fig.axes[0]
    line = _line(ax, "trajectory")
    np.testing.assert_array_equal(line.get_xdata(), traj[:, 0])
    np.testing.assert_array_equal(line.get_ydata(), traj[:, 1])
    assert line.get_marker() == "o"
    assert [a.get_text() for a in ax.texts if a.get_text().startswith("ep")] == ["ep0", "ep20", "ep40", "ep50"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("PC1 (62.3%)", "PC2 (21.0%)", "pca")
    assert "trajectory" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert ax.get_xlim() == (-1.0, 1.0)  # inside the grid: the axes stay on the grid


def test_surface_trajectory_outside_grid_and_on_3d():
    x = np.linspace(-1, 1, 5)
    bowl = np.add.outer(x**2, x**2)
    traj = np.array([[3.0, 0.5], [1.0, 0.2], [0.0, 0.0]])
    ax = plots.plot_surface_2d(x, x, bowl, trajectory=traj).axes[0]
    assert ax.get_xlim()[1] > 3.0 and ax.get_ylim() == (-1.0, 1.0)
    fig = plots.plot_surface_2d(x, x, bowl, kind="surface3d", trajectory=traj)
    fig.canvas.draw()
    ax = fig.axes[0]
    line = _line(ax, "trajectory")
    np.testing.assert_array_equal(line.get_data_3d()[0], traj[:, 0])
    assert np.all(line.get_data_3d()[2] == ax.get_zlim()[0])  # on the floor, under the surface
    with pytest.raises(LandscapeError, match=r"shape \(T, 2\)"):
        plots.plot_surface_2d(x, x, bowl, trajectory=np.zeros((4, 3)))
    with pytest.raises(LandscapeError, match="trajectory_labels has 1 labels"):
        plots.plot_surface_2d(x, x, bowl, trajectory=traj, trajectory_labels=["a"])


def test_surface_errors():
    with pytest.raises(LandscapeError, match=r"shape \(len\(xcoords\), len\(ycoords\)\) = \(5, 3\)"):
        plots.plot_surface_2d(GX, GY, _fx().T)  # the reference's [iy, ix] layout is refused
    with pytest.raises(LandscapeError, match="unknown surface kind 'wire'"):
        plots.plot_surface_2d(GX, GY, _fx(), kind="wire")
    with pytest.raises(LandscapeError, match="at least 2"):
        plots.plot_surface_2d([0.0], GY, np.ones((1, 3)))
    with pytest.raises(LandscapeError, match="repeated"):
        plots.plot_surface_2d([0, 1, 1, 2, 3], GY, _fx())
    with pytest.raises(LandscapeError, match="finite"):
        plots.plot_surface_2d([0, 1, np.nan, 2, 3], GY, _fx())
    with pytest.raises(LandscapeError, match="axis_labels"):
        plots.plot_surface_2d(GX, GY, _fx(), axis_labels="xy")


def test_surface_panels_side_by_side():
    values = _holey()
    fig = plots.plot_surface_panels(GX, GY, values, trajectory=[[0, 15], [1, 20]], title="quick look")
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["contour", "filled contour", "heat map", "3D surface"]
    assert isinstance(panels[3], Axes3D) and not isinstance(panels[0], Axes3D)
    assert fig.get_suptitle() == "quick look"
    assert len(fig.legends) == 1
    fig = plots.plot_surface_panels(GX, GY, values, kinds=["heatmap", "contour"], log=True)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["heat map", "contour"]
    with pytest.raises(LandscapeError, match="unknown option 'colour'"):
        plots.plot_surface_panels(GX, GY, values, colour="red")
    with pytest.raises(LandscapeError, match="unknown surface kind"):
        plots.plot_surface_panels(GX, GY, values, kinds=["pie"])


# ---- plot_surface_1d ------------------------------------------------------------------------------


def test_surface_1d_twin_axes_and_lines():
    alphas = np.linspace(-1, 1, 11)
    train_loss, test_loss = 0.1 + alphas**2, 0.3 + alphas**2
    train_acc, test_acc = 1 - alphas**2 / 2, 0.9 - alphas**2 / 2
    fig = plots.plot_surface_1d(alphas, train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, title="random direction")
    _check_figure(fig, 2, draw=True)
    ax, ax2 = fig.axes
    assert ax2.get_shared_x_axes().joined(ax, ax2)  # a twin: same x, own y
    assert [ln.get_label() for ln in ax.lines] == ["train loss", "test loss"]
    assert [ln.get_label() for ln in ax2.lines] == ["train accuracy", "test accuracy"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), alphas)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), train_loss)
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), test_loss)
    np.testing.assert_allclose(ax2.lines[0].get_ydata(), 100 * train_acc)  # fractions → percent
    np.testing.assert_allclose(ax2.lines[1].get_ydata(), 100 * test_acc)
    assert ax.lines[0].get_linestyle() == "-" and ax.lines[1].get_linestyle() == "--"
    assert ax2.lines[0].get_linestyle() == "-" and ax2.lines[1].get_linestyle() == "--"
    assert ax.lines[0].get_color() != ax2.lines[0].get_color()
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0
    assert ax2.get_ylim()[0] < 0 < 100 < ax2.get_ylim()[1]
    assert ax.get_xlim() == (-1.0, 1.0)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax2.get_ylabel()) == ("α", "loss", "accuracy")
    assert ax.get_title() == "random direction"
    assert len(fig.legends[0].get_texts()) == 4


def test_surface_1d_log_masks_and_optional_curves():
    alphas = np.array([0.5, -0.5, 0.0, 1.0, -1.0])  # unsorted: drawn sorted
    loss = np.array([0.5, 0.4, 0.0, np.inf, np.nan])
    fig = plots.plot_surface_1d(alphas, loss, log=True, xlabel="t")
    _check_figure(fig, 1, draw=True)  # no accuracy: no twin axes
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "t"
    assert [ln.get_label() for ln in ax.lines] == ["train loss"]  # no test curve when not given
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [np.nan, 0.4, np.nan, 0.5, np.nan])
    assert not fig.legends and ax.get_legend() is None
    # accuracy already in percent stays as given; only the test accuracy curve asked for
    fig = plots.plot_surface_1d([0, 1, 2], [1.0, 2.0, 3.0], test_acc=[90.0, 50.0, np.inf])
    ax, ax2 = fig.axes
    assert [ln.get_label() for ln in ax2.lines] == ["test accuracy"]
    np.testing.assert_array_equal(ax2.lines[0].get_ydata(), [90.0, 50.0, np.nan])


def test_surface_1d_errors():
    with pytest.raises(LandscapeError, match="train_loss has 2 values but alphas has 3"):
        plots.plot_surface_1d([0, 1, 2], [1, 2])
    with pytest.raises(LandscapeError, match="test_acc has 1 values but alphas has 2"):
        plots.plot_surface_1d([0, 1], [1, 2], test_acc=[0.5])
    with pytest.raises(LandscapeError, match="empty"):
        plots.plot_surface_1d([], [])
