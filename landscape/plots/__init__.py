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
* :func:`plot_monitors` — monitor values over steps, λ_max against 2/η.
* :func:`plot_measure_scatter`, :func:`plot_correlation_panels` — the cross-run figures of
  ``landscape correlate``.
* :func:`plot_surface_1d`, :func:`plot_surface_2d`, :func:`plot_surface_panels` — loss slices
  along random / filter-normalized / PCA directions (Li, Xu, Taylor, Studer & Goldstein 2018):
  loss and accuracy against a step, contour lines, filled contours, heat maps and 3D surfaces,
  with an optional optimization trajectory. Values are indexed ``[ix, iy]`` for any grid
  shape; non-finite values are masked (grey cells), never drawn as numbers.

One module per kind: :mod:`~landscape.plots.style` (what every figure shares, and
:func:`save_figure`), :mod:`~landscape.plots.spectra`, :mod:`~landscape.plots.curves`,
:mod:`~landscape.plots.training`, :mod:`~landscape.plots.monitors`,
:mod:`~landscape.plots.surfaces` (drawing in :mod:`~landscape.plots.surface_draw`) and
:mod:`~landscape.plots.scatter`. Every name is importable from ``landscape.plots``.
"""

from __future__ import annotations

from landscape.arrays import surface_grid
from landscape.plots.curves import _YLABELS, MAX_XTICKLABELS, plot_curves
from landscape.plots.monitors import (
    MONITOR_PANELS,
    STABILITY_COLOR,
    monitor_value_keys,
    plot_monitors,
)
from landscape.plots.scatter import plot_correlation_panels, plot_measure_scatter
from landscape.plots.spectra import (
    DENSITY_FLOOR,
    plot_esd,
    plot_layer_spectrum,
    plot_top_eigenvalues,
)
from landscape.plots.style import (
    BOTTOM_COLOR,
    DPI,
    FORMATS,
    LABEL_SIZE,
    LEGEND_SIZE,
    LR_COLOR,
    SHORT_SERIES,
    SUPTITLE_SIZE,
    TEST_COLOR,
    TICK_SIZE,
    TITLE_SIZE,
    TOP_COLOR,
    TRAIN_COLOR,
    save_figure,
)
from landscape.plots.surface_draw import (
    MASK_COLOR,
    REFERENCE_LEVELS,
    SURFACE3D_CMAP,
    SURFACE_CMAP,
    TRAJECTORY_COLOR,
)
from landscape.plots.surfaces import (
    ACC_COLOR,
    LOSS_COLOR,
    SURFACE_KINDS,
    plot_surface_1d,
    plot_surface_2d,
    plot_surface_panels,
)
from landscape.plots.training import plot_training_curves

__all__ = [
    "ACC_COLOR",
    "BOTTOM_COLOR",
    "DENSITY_FLOOR",
    "DPI",
    "FORMATS",
    "LABEL_SIZE",
    "LEGEND_SIZE",
    "LOSS_COLOR",
    "LR_COLOR",
    "MASK_COLOR",
    "MAX_XTICKLABELS",
    "MONITOR_PANELS",
    "REFERENCE_LEVELS",
    "SHORT_SERIES",
    "STABILITY_COLOR",
    "SUPTITLE_SIZE",
    "SURFACE3D_CMAP",
    "SURFACE_CMAP",
    "SURFACE_KINDS",
    "TEST_COLOR",
    "TICK_SIZE",
    "TITLE_SIZE",
    "TOP_COLOR",
    "TRAIN_COLOR",
    "TRAJECTORY_COLOR",
    "_YLABELS",
    "monitor_value_keys",
    "plot_correlation_panels",
    "plot_curves",
    "plot_esd",
    "plot_layer_spectrum",
    "plot_measure_scatter",
    "plot_monitors",
    "plot_surface_1d",
    "plot_surface_2d",
    "plot_surface_panels",
    "plot_top_eigenvalues",
    "plot_training_curves",
    "save_figure",
    "surface_grid",
]
