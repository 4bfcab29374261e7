r"""The optimization-based measures: the mini-batch gradient noise (66) at the checkpoint and the
steps to a training cross-entropy (63, 64) from the run's log (the package docstring,
"Optimization" and "Gradient noise")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from landscape.core.data import select
from landscape.core.kernel import logits_at
from landscape.core.subsets import fixed_subset
from landscape.params import model_state, select_parameters
from landscape.probes.measures.weights import F64


def gradient_noise(model: nn.Module, loss, x: Any, y: torch.Tensor | None, *, batch_size: int,
                   subset: int | None, seed: int = 0, bn_mode: str = "eval", output_fn=None,
                   device: torch.device | None = None) -> dict[str, float]:
    """``gradient_noise`` :math:`\\frac1K\\sum_k\\lVert g_k-\\bar g\\rVert^2` over ``K`` disjoint
    mini-batches of ``batch_size`` points of a fixed subset (:mod:`landscape.probes.measures`), ``grad_norm2``,
    ``K``; float64. ``x, y`` as :func:`landscape.core.data.samples_args` gives them."""
    dev = device if device is not None else next(model.parameters()).device
    n = len(x)
    idx = fixed_subset(n, subset, seed)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    k_batches = len(idx) // batch_size
    if k_batches < 2:
        return {"gradient_noise": math.nan, "grad_norm2": math.nan, "gradient_noise_batches": k_batches}
    idx = idx[: k_batches * batch_size]
    xs, ys = select(x, y, idx)
    state = model_state(model, F64, dev)
    names = select_parameters(model).names
    mean: torch.Tensor | None = None
    m2 = 0.0
    for k in range(k_batches):
        sl = slice(k * batch_size, (k + 1) * batch_size)
        xb = xs[sl].to(dev, F64 if xs.is_floating_point() else xs.dtype)
        yb = ys[sl].to(dev, F64 if ys.is_floating_point() else ys.dtype)
        params = {nm: state[nm].clone().requires_grad_(True) for nm in names}
        z = logits_at(model, {**state, **params}, xb, bn_mode=bn_mode, output_fn=output_fn, keep=names)
        grads = torch.autograd.grad(loss(z, yb).mean(), [params[nm] for nm in names], allow_unused=True)
        g = torch.cat([(gr if gr is not None else torch.zeros_like(params[nm])).reshape(-1)
                       for nm, gr in zip(names, grads, strict=True)]).to(F64)
        if mean is None:
            mean = g.clone()
            continue
        delta = g - mean
        mean = mean + delta / (k + 1)
        m2 += float(delta @ (g - mean))  # Welford: Σ‖g_k − ḡ‖² without cancellation
    assert mean is not None
    return {"gradient_noise": m2 / k_batches, "grad_norm2": float(mean @ mean), "gradient_noise_batches": k_batches}


def steps_to_ce(records: list[dict[str, Any]], key: str, thresholds: tuple[float, float]
                ) -> tuple[float, float, str | None]:
    """``(first step with key ≤ t₁, first step with key ≤ t₂ minus that, reason)`` from metric
    records in order; NaN (with the reason) where the run never got there."""
    logged = [r for r in records if "event" not in r and isinstance(r.get(key), int | float)
              and isinstance(r.get("step"), int | float)]
    if not logged:
        return math.nan, math.nan, f"metrics.jsonl has no {key!r} records"
    t1, t2 = thresholds
    first = next((r["step"] for r in logged if r[key] <= t1), None)
    second = next((r["step"] for r in logged if r[key] <= t2), None)
    if first is None:
        return math.nan, math.nan, f"{key} never reached {t1:g} (lowest logged {min(r[key] for r in logged):.4g})"
    if second is None:
        return float(first), math.nan, f"{key} never reached {t2:g} (lowest logged {min(r[key] for r in logged):.4g})"
    return float(first), float(second - first), None
