"""Monitor values over optimizer steps (:mod:`landscape.train.monitors`), one panel per monitor,
λ_max against the stability threshold 2/η."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.errors import LandscapeError
from landscape.plots.style import (
    _figure,
    _labels,
    _legend,
    _panel_grid,
    _plot_series,
    _positive,
    _style,
    _suptitle,
)

__all__ = ["MONITOR_PANELS", "monitor_value_keys", "plot_monitors"]

# (panel title, keys drawn in it, y label, log y); any other monitor value gets a panel of its own
MONITOR_PANELS: list[tuple[str, tuple[str, ...], str, bool]] = [
    ("λ_max (Hessian)", ("lambda_max",), "top eigenvalue", False),
    ("gradient norm", ("grad_norm",), r"$\|\nabla L\|_2$", True),
    ("weight norm", ("weight_norm",), r"$\|\theta\|_2$", False),
    ("update norm", ("update_norm",), r"$\|\theta_t - \theta_s\|_2$", True),
    ("logit statistics", ("logit_norm", "log_z", "max_abs_logit"), None, False),
    ("softmax collapse", ("softmax_collapse",), "fraction of samples with loss 0", False),
    ("preconditioned sharpness (Adam)", ("adam_sharpness", "adam_sharpness_threshold"), "top eigenvalue", False),
    ("cosine to the NLM direction", ("nlm_cosine",), r"$\cos(\nabla L, -\theta)$", False),
    ("max attention logit", ("attn_max_logit",), r"$\max |q^\top k|/\sqrt{d}$", True),
    ("per-sample loss (subset mean)", ("per_sample_loss_mean",), "loss", False),
]
# keys that are not monitor values of their own: the trainer's record and the monitors' bookkeeping
_NOT_MONITORED = {"step", "epoch", "lr", "update_steps", "lambda_max_residual", "lambda_max_error",
                  "lambda_max_hvps", "lambda_max_converged", "value", "threshold", "time",
                  "adam_sharpness_residual", "adam_sharpness_error", "adam_sharpness_hvps",
                  "adam_sharpness_converged"}
STABILITY_COLOR = "0.35"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def monitor_value_keys(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """The numeric keys of ``records`` that are monitor values (not the trainer's step, epoch,
    lr, time, ``train_*`` / ``test_*`` values or a monitor's bookkeeping such as
    ``lambda_max_hvps``); events are skipped."""
    keys = {k for r in records if isinstance(r, Mapping) and "event" not in r
            for k, v in r.items() if _is_number(v)}
    return {k for k in keys - _NOT_MONITORED if not k.startswith(("train_", "test_"))}


def plot_monitors(records: Iterable[Mapping[str, Any]], *, lr: float | None = None, momentum: float = 0.0,
                  title: str | None = None, ncols: int | None = None) -> Figure:
    r"""Monitor values over optimizer steps, one panel per monitor present, from ``metrics.jsonl``.

    Args:
        records: parsed lines of ``metrics.jsonl`` (or of an ``ls.Monitor`` output file). Records
            with an ``event`` key or without a ``step`` are skipped; a step logged twice (a
            resumed run) keeps its last record. Only steps where a value was measured are drawn.
        lr: the learning rate η for the stability line when the records carry no ``lr``.
        title: figure title.
        ncols: panels per row (default ``min(3, number of panels)``).

    Panels, in this order, each drawn only when a record holds its values: ``lambda_max`` (with a
    band of ± ``lambda_max_residual``, within which an eigenvalue lies, and the dashed line
    :math:`2/\eta` of gradient descent's stability threshold — per step from the records'
    ``lr``, else ``lr``, left out where η = 0; plain GD diverges along an eigendirection whose
    eigenvalue exceeds it),
    ``grad_norm`` (log y), ``weight_norm``, ``update_norm`` (log y), ``logit_norm`` / ``log_z`` /
    ``max_abs_logit`` in one panel, ``softmax_collapse``, ``adam_sharpness`` (with its residual
    band and the dashed ``adam_sharpness_threshold`` :math:`(2+2β_1)/((1-β_1)\eta)` of Cohen et
    al. 2022), ``nlm_cosine``, ``attn_max_logit`` (log y), ``per_sample_loss_mean``; then any
    other numeric key (other than
    the trainer's train_/test_ values), keys ``a/b`` grouped in a panel ``a`` (per-layer values).
    The line is :math:`2/\eta`, plain GD's threshold, or :math:`(2 + 2β)/\eta` with heavy-ball
    ``momentum`` β (Cohen et al. 2021, App.); Adam's is about the preconditioned Hessian.

    Returns:
        A figure with one axes per panel; each axes' ``lines`` are its values in order (x the
        steps, y as recorded), the 2/η line last in the λ_max panel (label ``2/η``).
    """
    by_step: dict[float, Mapping[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or "event" in rec or not _is_number(rec.get("step")):
            continue
        by_step[float(rec["step"])] = rec
    steps = sorted(by_step)
    recs = [by_step[s] for s in steps]
    xs_all = np.asarray(steps, dtype=np.float64)

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if _is_number(r.get(key)) else np.nan for r in recs])

    present = monitor_value_keys(recs)
    panels: list[tuple[str, list[str], str | None, bool]] = []
    known: set[str] = set()
    for name, keys, ylabel, log in MONITOR_PANELS:
        known |= set(keys)
        found = [k for k in keys if k in present]
        if found:
            panels.append((name, found, ylabel, log))
    extra: dict[str, list[str]] = {}
    for key in sorted(present - known):
        extra.setdefault(key.partition("/")[0], []).append(key)
    panels += [(name, keys, None, False) for name, keys in extra.items()]
    if not panels:
        raise LandscapeError("no monitor values to plot; train with --monitor NAME (e.g. --monitor lambda_max)")

    n = len(panels)
    ncols, nrows = _panel_grid(n, ncols)
    fig = _figure(3.9 * ncols, 3.0 * nrows + (0.3 if title else 0.0))
    lrs = column("lr")
    for i, (name, keys, ylabel, log) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _style(ax)
        if log:
            ax.set_yscale("log")
        for j, key in enumerate(keys):
            ys = column(key)
            keep = np.isfinite(ys)
            x, y = xs_all[keep], ys[keep]
            if key == "adam_sharpness_threshold":  # (2 + 2β₁)/((1 − β₁)η): 38/η at β₁ = 0.9
                ax.plot(x, y, linestyle="--", color=STABILITY_COLOR, linewidth=1.2, label="(2+2β₁)/((1−β₁)η)")
                continue
            _plot_series(ax, x, _positive(y) if log else y, color=f"C{j}", linewidth=1.4,
                         label=key.rpartition("/")[2] if len(keys) > 1 else key)
            if key in ("lambda_max", "adam_sharpness"):
                r = column(f"{key}_residual")[keep]
                if np.isfinite(r).any():
                    ax.fill_between(x, y - r, y + r, color="C0", alpha=0.2, linewidth=0)
            if key == "lambda_max":
                eta = np.where(np.isfinite(lrs[keep]), lrs[keep], np.nan if lr is None else float(lr))
                with np.errstate(invalid="ignore"):
                    eta = np.where(eta > 0, eta, np.nan)  # η = 0 (a schedule's end): no threshold
                if np.isfinite(eta).any():
                    label = "2/η" if not momentum else f"(2+2β)/η, β={momentum:g}"
                    ax.plot(x, (2.0 + 2.0 * momentum) / eta, linestyle="--", color=STABILITY_COLOR, linewidth=1.2,
                            label=label)
        below_empty = i + ncols >= n
        _labels(ax, "step" if below_empty else None, ylabel, name)
        _legend(ax)
    _suptitle(fig, title)
    return fig
