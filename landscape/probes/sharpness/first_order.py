"""First-order flatness (GAM, Zhang et al. 2023): ``R¹_ρ(θ) = ρ · max_{‖δ‖₂≤ρ} ‖∇L(θ+δ)‖``,
by projected normalized gradient ascent on ``½‖∇L(θ+δ)‖²`` with exact Hessian-gradient products."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from landscape.probes.sharpness.config import SharpnessConfig
from landscape.probes.sharpness.objective import Batches, _Objective
from landscape.probes.sharpness.projections import _unit, project


def first_order_flatness(
    grad_norm_ascent: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    size: int,
    rho: float,
    *,
    iters: int,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[float, float]:
    """GAM's first-order flatness ``R¹_ρ = ρ · max_{‖δ‖₂≤ρ} ‖∇L(θ+δ)‖`` (Zhang et al. 2023).

    Projected normalized gradient ascent on ``½‖∇L(θ+δ)‖²`` (its gradient ``H(θ+δ)∇L(θ+δ)`` by
    double backward, exact; GAM's code uses finite differences), from a random point of the sphere
    ``‖δ‖ = ρ``, step ``2ρ``, ``iters`` steps; the largest norm seen (``δ = 0`` included) wins.
    Returns ``(R¹_ρ, max ‖∇L‖)``. At a minimum of ``½θᵀAθ``: ``R¹_ρ = ρ·ρλ_max(A)``.
    """
    best, _ = grad_norm_ascent(torch.zeros(size, dtype=dtype, device=device))
    delta = rho * _unit(torch.randn(size, generator=gen, dtype=dtype, device=device))
    for i in range(iters + 1):
        gnorm, hg = grad_norm_ascent(delta)
        best = max(best, gnorm)
        if i == iters:
            break
        delta = project(delta + 2 * rho * _unit(hg), rho, "l2")
    return rho * best, best


def _first_order(obj: _Objective, batches: Batches, cfg: SharpnessConfig, gen: torch.Generator,
                 dtype: torch.dtype, dev: torch.device, tick: Callable[[], None]) -> dict[str, float]:
    """``first_order_flatness`` and ``first_order_grad_norm``: the means over the batches."""
    values, gnorms = [], []
    for xb, yb in batches:
        def gna(delta, xb=xb, yb=yb):
            res = obj.grad_norm_ascent(delta, xb, yb)
            tick()
            return res
        v, gn = first_order_flatness(gna, obj.layout.numel, cfg.first_order_rho, iters=cfg.first_order_iters,
                                     gen=gen, dtype=dtype, device=dev)
        values.append(v)
        gnorms.append(gn)
    return {"first_order_flatness": float(np.mean(values)), "first_order_grad_norm": float(np.mean(gnorms))}
