"""Tests of landscape/plots.py: figure structure, data on the axes, scales, saving."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
