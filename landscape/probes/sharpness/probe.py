"""The probe: :func:`sharpness` (the fixed subset, its batches, the clean pass) running the four
measures on one objective, and its registration as ``sharpness``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import samples_args, select
from landscape.errors import ConfigError
from landscape.outputs import OutputFn
from landscape.probes.base import ProbeContext, check_subset, fixed_subset, register_probe
from landscape.probes.sharpness.auto_pgd import _worst_case
from landscape.probes.sharpness.average import _average_case
from landscape.probes.sharpness.config import SharpnessConfig
from landscape.probes.sharpness.first_order import _first_order
from landscape.probes.sharpness.objective import (
    PerSampleLoss,
    _batches,
    _check_clean,
    _Objective,
    _perturbed_layout,
)
from landscape.probes.sharpness.pac_bayes import _pac_bayes
from landscape.tasks import Task
from landscape.utils import DTYPES


def sharpness(
    model: nn.Module,
    loss: PerSampleLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SharpnessConfig = SharpnessConfig(),
    *,
    device: torch.device | str | None = None,
    on_step: Callable[[int], None] | None = None,
    output_fn: OutputFn | None = None,
    task: str | Task = "classification",
) -> dict[str, Any]:
    r"""Sharpness of ``L(w) = (1/m) Σ_{n∈B} loss(f_w(x_n), y_n)`` per batch B, over a ρ grid.

    Worst case (``kind="worst"``, Andriushchenko et al. 2023, eq. 1, m-sharpness):

    .. math:: S_ρ = \frac{1}{|\mathcal B|}\sum_B \Big[\max_{δ=s⊙u,\ ‖u‖_p ≤ ρ} L_B(w+δ) − L_B(w)\Big]

    with ``s = |w|`` (adaptive) or 1, maximized by :func:`worst_case_ascent` (Auto-PGD).
    Average case (``kind="average"``):

    .. math:: S^{avg}_ρ = \frac{1}{|\mathcal B|}\sum_B \Big[\mathbb E_δ L_B(w+δ) − L_B(w)\Big],
              δ = ρ\, s ⊙ ξ,\ ξ ∼ N(0, I)\ (l2)\ \text{or}\ U[−1,1]^P\ (linf),

    estimated with ``samples_avg`` draws per batch; ``delta_loss_se`` is its Monte-Carlo standard
    error ``sqrt(Σ_B var_B / samples_avg) / |𝓑|``.

    The error (``delta_error``, ``error_clean``, the PAC-Bayes accuracy) is ``task``'s metric,
    :func:`landscape.tasks.correct_count`: 1 − accuracy, token accuracy for token tasks.

    Returns arrays indexed by ρ: ``rhos``, ``delta_loss``, ``delta_error``, ``loss_clean``,
    ``error_clean``, ``loss_perturbed``, ``delta_norm`` (mean over batches of ``‖δ*‖₂``; worst
    case), ``delta_norm_max`` (the reference's number: max over batches), ``delta_norm_set`` (max
    over batches of ``‖δ*/s‖`` in the set's norm, ≤ ρ), ``delta_loss_se`` (average case), and
    ``delta_loss_batches`` (ρ × batch). Scalars: ``first_order_flatness``,
    ``first_order_grad_norm``, and ``pac_bayes`` (subgroup: ``sigma``, ``inv_sigma2``,
    ``sigma_mag``, ``inv_sigma2_mag``, ``accuracy_clean``); counts ``num_batches``, ``num_samples``,
    ``num_params``, ``num_gradients``. ``on_step(n)`` is told the gradient evaluations so far.
    ``f_w(x)`` is :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s).
    """
    check_subset(cfg, len(x))
    subset = cfg.subset if cfg.subset is not None else len(x)
    if cfg.m > min(subset, len(x)):
        raise ConfigError(f"m={cfg.m} is larger than the {min(subset, len(x))} data points available; use a smaller m")
    dtype = DTYPES[cfg.dtype]
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    idx = fixed_subset(len(x), cfg.subset, cfg.seed)
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))
    idx = idx[perm]
    if y is None:  # samples (streamed): gather only the samples the batches of m use
        idx = idx[: (len(idx) // cfg.m) * cfg.m]
    x, y = select(x, y, idx)
    x = x.to(dev, dtype if x.is_floating_point() else x.dtype)
    y = y.to(dev, dtype if y.is_floating_point() else y.dtype)
    was_training = model.training
    model.train(cfg.bn_mode == "train")  # only the flag; restored on the way out
    try:
        return _sharpness(model, loss, x, y, cfg, dev, dtype, on_step, output_fn, task)
    finally:
        model.train(was_training)


def _sharpness(model: nn.Module, loss: PerSampleLoss, x: torch.Tensor, y: torch.Tensor, cfg: SharpnessConfig,
               dev: torch.device, dtype: torch.dtype, on_step: Callable[[int], None] | None,
               output_fn: OutputFn | None = None, task: str | Task = "classification") -> dict[str, Any]:
    """The measures on ``x, y`` already selected, ordered and on ``dev``: the worst or average
    case, then first-order flatness, then PAC-Bayes (one generator, drawn from in that order)."""
    batches = _batches(x, y, cfg.m)
    n_batches = len(batches)
    layout = _perturbed_layout(model, cfg.params)
    obj = _Objective(model, loss, layout, cfg, dtype, dev, output_fn, task)
    s = obj.theta.abs() if cfg.adaptive else torch.ones_like(obj.theta)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)

    def tick() -> None:
        if on_step is not None:
            on_step(obj.num_gradients)

    loss_clean = np.full(n_batches, np.nan)
    err_clean = np.full(n_batches, np.nan)
    # Auto-PGD from δ = 0 takes the clean loss from its first gradient pass (no separate forward)
    if not (cfg.kind == "worst" and not cfg.random_start):
        zero = torch.zeros_like(obj.theta)
        for b, (xb, yb) in enumerate(batches):
            loss_clean[b], err_clean[b] = obj.value(zero, xb, yb)
        _check_clean(loss_clean)
    out: dict[str, Any] = {"rhos": np.array(cfg.rhos, dtype=float)}
    if cfg.kind == "worst":
        out_loss, out_err, extra = _worst_case(obj, batches, s, cfg, gen, tick, loss_clean, err_clean)
        out.update(extra)
    else:
        out_loss, out_err, out["delta_loss_se"] = _average_case(obj, batches, s, cfg, gen, dtype, dev)

    R = len(cfg.rhos)  # type: ignore[arg-type]
    out["delta_loss_batches"] = out_loss - loss_clean[None, :]
    out["delta_loss"] = out["delta_loss_batches"].mean(1)
    out["delta_error"] = (out_err - err_clean[None, :]).mean(1)
    out["loss_clean"] = np.full(R, loss_clean.mean())
    out["error_clean"] = np.full(R, err_clean.mean())
    out["loss_perturbed"] = out_loss.mean(1)
    if cfg.first_order_rho is not None:
        out.update(_first_order(obj, batches, cfg, gen, dtype, dev, tick))
    if cfg.pac_bayes:
        out["pac_bayes"] = _pac_bayes(obj, batches, cfg, dtype, dev)
    out.update(num_batches=n_batches, num_samples=n_batches * cfg.m, num_params=layout.numel,
               num_gradients=obj.num_gradients)
    return out


@register_probe(
    "sharpness", SharpnessConfig, summary=("delta_loss", "delta_error", "first_order_flatness", "num_gradients"),
    default=1, measures={"first_order_flatness": "first_order_flatness", "pac_bayes_inv_sigma2": "pac_bayes/inv_sigma2",
                         "pac_bayes_mag_inv_sigma2": "pac_bayes/inv_sigma2_mag"},
    families={"sharpness-based": ("pac_bayes", "sharpness", "first_order_flatness")},  # sharpness@ρ too
    figure="sharpness", unit="gradients", cli_names={"rhos": ("--rho",)},
    cli_help="Adaptive worst/average-case sharpness, first-order flatness and PAC-Bayes flatness "
    "(Andriushchenko et al. 2023).")
def run_sharpness(ctx: ProbeContext, cfg: SharpnessConfig) -> dict[str, Any]:
    """The sharpness probe on the checkpoint's ``cfg.split`` (the training loss, labels as trained)."""
    split = ctx.split(cfg.split)
    x, y = samples_args(split)
    return sharpness(ctx.model, ctx.loss, x, y, cfg, device=ctx.device, on_step=ctx.advance,
                     output_fn=ctx.output_fn, task=getattr(split, "task", "classification"))
