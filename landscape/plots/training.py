"""Training curves from ``metrics.jsonl``: loss, accuracy and learning rate, train vs test."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from landscape.errors import LandscapeError
from landscape.plots.style import (
    LR_COLOR,
    TEST_COLOR,
    TRAIN_COLOR,
    _figure,
    _labels,
    _legend,
    _plot_series,
    _positive,
    _style,
    _suptitle,
)

__all__ = ["plot_training_curves"]


def plot_training_curves(records: Iterable[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Loss (log y), accuracy and learning rate over training, train vs test, from ``metrics.jsonl``.

    Args:
        records: parsed lines of ``metrics.jsonl``. Records with an ``event`` key (e.g.
            ``{"step": …, "event": "diverged"}``) or without a ``step`` are skipped; a step
            logged twice (a resumed run) keeps its last record. Missing values are gaps.
        title: figure title.

    The x axis is ``epoch`` when every kept record has one, else ``step``. Accuracy in
    :math:`[0, 1]` is shown in percent. The learning-rate panel is drawn when any record has
    ``lr``, on a log axis when it spans more than two decades.

    Returns:
        A figure with two or three axes (loss, accuracy[, learning rate]); lines are labelled
        ``train`` / ``test`` (``lr`` in the last panel).
    """
    by_step: dict[float, Mapping[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or "event" in rec or rec.get("step") is None:
            continue
        try:
            by_step[float(rec["step"])] = rec
        except (TypeError, ValueError):
            continue
    if not by_step:
        raise LandscapeError("no metric records to plot (only events, or an empty metrics.jsonl)")
    steps = sorted(by_step)
    recs = [by_step[s] for s in steps]

    def column(key: str) -> np.ndarray:
        out = np.full(len(recs), np.nan)
        for i, r in enumerate(recs):
            v = r.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[i] = float(v)
        return out

    epochs = column("epoch")
    if np.isfinite(epochs).all():
        xs, xlabel = epochs, "epoch"
    else:
        xs, xlabel = np.asarray(steps, dtype=np.float64), "step"
    lr = column("lr")
    has_lr = bool(np.isfinite(lr).any())
    panels = 3 if has_lr else 2
    fig = _figure(3.9 * panels, 3.3 + (0.3 if title else 0.0))

    ax = fig.add_subplot(1, panels, 1)
    _style(ax)
    ax.set_yscale("log")
    for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
        values = column(f"{split}_loss")
        if np.isfinite(values).any():
            _plot_series(ax, xs, _positive(values), color=color, linewidth=1.5, label=split)
    _labels(ax, xlabel, "loss", "loss")
    _legend(ax)

    ax = fig.add_subplot(1, panels, 2)
    _style(ax)
    accs = {split: column(f"{split}_acc") for split in ("train", "test")}
    for (split, values), color in zip(accs.items(), (TRAIN_COLOR, TEST_COLOR), strict=True):
        if np.isfinite(values).any():
            _plot_series(ax, xs, values, color=color, linewidth=1.5, label=split)
    finite_acc = np.concatenate([v[np.isfinite(v)] for v in accs.values()])
    if finite_acc.size and finite_acc.min() >= 0 and finite_acc.max() <= 1:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    _labels(ax, xlabel, "accuracy", "accuracy")
    _legend(ax)

    if has_lr:
        ax = fig.add_subplot(1, panels, 3)
        _style(ax)
        finite = lr[np.isfinite(lr)]
        positive = finite[finite > 0]
        log = finite.size and finite.min() > 0 and positive.max() / positive.min() > 100
        if log:
            ax.set_yscale("log")
        _plot_series(ax, xs, lr, color=LR_COLOR, linewidth=1.5, label="lr")
        if not log:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        _labels(ax, xlabel, "learning rate", "learning rate")
    _suptitle(fig, title)
    return fig
