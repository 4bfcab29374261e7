"""The coherence probe: :func:`coherence` of a fixed subset of ``(x, y)`` (the sums, checked
finite, then summarized), and :func:`run_coherence`, its registration."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import samples_args, select
from landscape.core.subsets import fixed_subset
from landscape.errors import ConfigError, LandscapeError
from landscape.outputs import OutputFn
from landscape.probes.base import ProbeContext, check_subset, register_probe
from landscape.probes.coherence.config import CoherenceConfig
from landscape.probes.coherence.per_example import Loss, gradient_statistics
from landscape.probes.coherence.statistics import _flat, summarize
from landscape.utils import DTYPES


def coherence(
    model: nn.Module,
    loss: Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: CoherenceConfig = CoherenceConfig(),
    device: torch.device | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """Coherence α, m·α (overall and per layer) and GSNR summaries of the per-example gradients of
    ``loss`` (per-sample values) on a fixed ``cfg.subset`` of ``(x, y)``.

    Returns scalars ``alpha``, ``m_alpha``, ``gsnr_mean``, ``gsnr_median``, ``mean_grad_norm_sq``
    (‖E g‖²), ``mean_sq_grad_norm`` (E‖g‖²), counts ``num_samples``, ``num_params``,
    ``gsnr_num_finite`` / ``_infinite`` / ``_undefined``; arrays ``gsnr_quantile_levels``,
    ``gsnr_quantiles``, ``gsnr_hist`` (counts of log10 r_j over the finite, positive r_j) and
    ``gsnr_bin_edges``; and ``layers``: ``names``, ``alpha``, ``m_alpha``, ``num_params``,
    ``method`` (which path computed each layer's Σg²).
    """
    if len(x) < 2:
        raise ConfigError(f"coherence needs at least 2 examples, the data hold {len(x)}")
    check_subset(cfg, len(x))
    idx = fixed_subset(len(x), cfg.subset, cfg.seed)
    xs, ys = select(x, y, idx)
    stats = gradient_statistics(model, loss, xs, ys, method=cfg.method, chunk=cfg.chunk,
                                batch_size=cfg.batch_size, dtype=DTYPES[cfg.dtype], device=device,
                                output_fn=output_fn)
    flat = _flat(stats)
    if not (np.isfinite(flat[0]).all() and np.isfinite(flat[1]).all()):
        bad = [n for n in stats.sum if not (bool(torch.isfinite(stats.sum[n]).all())
                                            and bool(torch.isfinite(stats.sum_sq[n]).all()))]
        raise LandscapeError(
            f"per-example gradients are NaN/inf in {len(bad)} of {len(stats.sum)} parameter tensors (first: "
            f"{bad[0]}) on the {stats.count} examples; coherence is undefined at these weights "
            "(check the data and the loss, or probe another checkpoint)"
        )
    out = summarize(stats, per_layer=cfg.per_layer, histogram_bins=cfg.histogram_bins,
                    histogram_range=cfg.histogram_range, ddof=cfg.ddof, flat=flat)
    out["method"] = cfg.method
    return out


@register_probe(
    "coherence", CoherenceConfig, summary=("alpha", "m_alpha", "gsnr_mean"), default=2,
    measures={"coherence_m_alpha": "m_alpha"}, families={"optimization-based": ("coherence",)},
    figure="coherence", checkpoints="all",
    cli_help="Gradient coherence α, m·α (Chatterjee & Zielinski) and GSNR (Liu et al.), per layer, over a run's "
    "checkpoints.")
def run_coherence(ctx: ProbeContext, cfg: CoherenceConfig) -> dict[str, Any]:
    """The coherence / GSNR probe on the checkpoint's ``cfg.split`` (labels as trained)."""
    x, y = samples_args(ctx.split(cfg.split))
    out = coherence(ctx.model, ctx.loss, x, y, cfg, device=ctx.device, output_fn=ctx.output_fn)
    ctx.advance(1)
    return out
