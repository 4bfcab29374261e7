"""The Hessian monitors: lambda_max and Adam's preconditioned sharpness, by warm-started Lanczos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.linalg import HessianOperator, lanczos
from landscape.params import select_parameters
from landscape.train.monitors.registry import MonitorInputs, register_monitor
from landscape.utils import DTYPES


@register_monitor("lambda_max", "at most `steps` Hessian-vector products over the monitor samples",
                  every=10, steps=20, tol=1e-3, rule="error", warm=True, extrapolate=True, dtype="float32",
                  seed=0)
def lambda_max(inp: MonitorInputs, state: dict[str, Any], steps: int = 20, tol: float = 1e-3,
               rule: str = "error", warm: bool = True, extrapolate: bool = True, dtype: str = "float32",
               seed: int = 0) -> dict[str, Any]:
    lambda_max_settings(steps, tol, rule, dtype, "lambda_max")
    result = top_eigenpair(inp, steps=steps, tol=float(tol), rule=rule, dtype=DTYPES[dtype], seed=seed,
                           v0=warm_start(state, extrapolate) if warm else None, gap=state.get("gap"))
    remember(state, result)
    return result


def warm_start(state: dict[str, Any], extrapolate: bool = True) -> torch.Tensor | None:
    r"""The start vector of a warm-started ``lambda_max`` / ``adam_sharpness``: the previous
    call's Ritz vector :math:`v_t`, moved along its last displacement when that displacement
    continues the one before (the vector drifts smoothly, as under full-batch GD):
    :math:`v_t + c\,d_t`, :math:`d_t = v_t - v_{t-1}`, :math:`c = \max(0, \cos(d_t, d_{t-1}))`
    (signs aligned first). ``c = 0`` (plain :math:`v_t`) when the steps disagree, as under noisy
    mini-batch steps between distant calls."""
    v = state.get("vector")
    if v is None or not extrapolate or state.get("previous") is None or state.get("previous2") is None:
        return v
    p = state["previous"].to(v)
    p = p if torch.dot(p, v) >= 0 else -p
    p2 = state["previous2"].to(v)
    p2 = p2 if torch.dot(p2, p) >= 0 else -p2
    d, d1 = v - p, p - p2
    norms = float(d.norm() * d1.norm())
    c = max(0.0, float(torch.dot(d, d1)) / norms) if norms > 0 else 0.0
    return v + c * d if c > 0 else v


def remember(state: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep the Ritz vector, the one before it and the gap of :func:`top_eigenpair`'s ``result``."""
    state["previous2"], state["previous"] = state.get("previous"), state.get("vector")
    state["vector"], state["gap"] = result.pop("vector"), result.pop("gap")


RULES = ("error", "residual")


def lambda_max_settings(steps: Any, tol: Any, rule: Any, dtype: Any, name: str) -> None:
    """Check the Lanczos settings of ``lambda_max`` / ``adam_sharpness`` (one-line errors)."""
    if dtype not in DTYPES:
        raise ConfigError(f"{name} dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if rule not in RULES:
        raise ConfigError(f"{name} rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 2):
        raise ConfigError(f"{name} steps must be an integer ≥ 2, got {steps!r}")
    if not (isinstance(tol, int | float) and 0 < tol < 1):
        raise ConfigError(f"{name} tol must be a number in (0, 1), got {tol!r}")



def _adam_state(optimizer: Any) -> Any:
    """The Adam-family optimizer holding ``exp_avg_sq`` (the optimizer, or the base of a wrapper)."""
    for opt in (optimizer, getattr(optimizer, "base_optimizer", None), getattr(optimizer, "base", None)):
        if opt is not None and any("exp_avg_sq" in s for s in getattr(opt, "state", {}).values()):
            return opt
    return None


def adam_preconditioner(model: nn.Module, optimizer: Any, names: Sequence[str]) -> torch.Tensor | None:
    r""":math:`P = \sqrt{\hat v} + \epsilon` over the parameters ``names`` (flattened in order),
    :math:`\hat v = v / (1 - \beta_2^t)` the bias-corrected ``exp_avg_sq`` (``max_exp_avg_sq``
    with amsgrad) of each parameter's group: Adam's step is :math:`-\eta\,\hat m / P`. ``None``
    before the optimizer's first step."""
    opt = _adam_state(optimizer)
    if opt is None:
        if optimizer is not None and not getattr(optimizer, "state", None):
            return None  # no step taken yet
        raise ConfigError(f"adam_sharpness needs an Adam-family optimizer (one with exp_avg_sq state), got "
                          f"{type(optimizer).__name__ if optimizer is not None else 'none'}")
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    parts = []
    for name in names:
        p = params[name]
        st, group = opt.state.get(p, {}), groups.get(id(p))
        if "exp_avg_sq" not in st or group is None:
            raise ConfigError(f"adam_sharpness: parameter {name} has no Adam state; the optimizer must "
                              "hold every trainable parameter")
        v = st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]
        t = float(st["step"])
        vhat = v.double() / (1 - group["betas"][1] ** t)
        parts.append((vhat.sqrt() + group["eps"]).reshape(-1))
    return torch.cat(parts)


@register_monitor("adam_sharpness", "at most `steps` Hessian-vector products over the monitor samples",
                  every=10, steps=20, tol=1e-3, rule="error", warm=True, extrapolate=True, dtype="float32",
                  seed=0)
def adam_sharpness(inp: MonitorInputs, state: dict[str, Any], steps: int = 20, tol: float = 1e-3,
                   rule: str = "error", warm: bool = True, extrapolate: bool = True, dtype: str = "float32",
                   seed: int = 0) -> dict[str, Any]:
    r"""Adam's preconditioned sharpness (Cohen et al. 2022): :math:`\lambda_{max}(P^{-1/2} H
    P^{-1/2})`, ``P = diag(√v̂ + ε)`` from the optimizer's state, by the Lanczos of ``lambda_max``
    (same settings, same keys with the prefix ``adam_sharpness``), and
    ``adam_sharpness_threshold`` = :math:`(2 + 2\beta_1) / ((1 - \beta_1)\eta)` (38/η at
    β₁ = 0.9), the first group's. Absent before the optimizer's first step."""
    lambda_max_settings(steps, tol, rule, dtype, "adam_sharpness")
    opt = inp.optimizer
    pre = adam_preconditioner(inp.model, opt, select_parameters(inp.model).names)
    if pre is None:
        return {}
    d = pre.rsqrt()
    result = top_eigenpair(inp, steps=steps, tol=float(tol), rule=rule, dtype=DTYPES[dtype], seed=seed,
                           v0=warm_start(state, extrapolate) if warm else None, gap=state.get("gap"),
                           scale=lambda op: d)
    remember(state, result)
    out = {k.replace("lambda_max", "adam_sharpness"): v for k, v in result.items()}
    group = _adam_state(opt).param_groups[0]
    beta1 = group["betas"][0]
    out["adam_sharpness_threshold"] = (2 + 2 * beta1) / ((1 - beta1) * group["lr"])
    return out


def top_eigenpair(inp: MonitorInputs, *, steps: int, tol: float, rule: str = "error",
                  dtype: torch.dtype = torch.float32, seed: int = 0, v0: torch.Tensor | None = None,
                  gap: float | None = None,
                  scale: Callable[[HessianOperator], torch.Tensor] | None = None) -> dict[str, Any]:
    r"""The top eigenpair of the Hessian over ``inp``'s samples by Lanczos from ``v0`` (a seeded
    Gaussian vector when ``None``), at most ``steps`` HVPs, the stop checked after every HVP.

    With the Ritz pair :math:`(θ, v)` and residual :math:`r = \|Hv - θv\|`,
    ``rule="residual"`` stops at :math:`r ≤ \mathrm{tol}·|θ|` (an eigenvalue lies within ``r``
    of θ); ``rule="error"`` also at the eigenvalue-error estimate
    :math:`r^2/(g|θ|) ≤ \mathrm{tol}·|θ|` (Parlett 1980 §11-7; :func:`landscape.linalg.ritz_errors`),
    ``g`` the relative gap :math:`(θ - θ_2)/|θ|` to the next Ritz value, kept no larger than
    ``gap`` (the previous measurement's) since a short run's θ₂ lies far below λ₂. It is an
    estimate, not a bound: the gap is estimated.
    Returns ``lambda_max``, ``lambda_max_residual`` (r), ``lambda_max_error`` (the estimate,
    ``≤ r``), ``lambda_max_hvps``, ``lambda_max_converged``, ``vector`` and ``gap``.

    ``scale(op)`` (optional) gives a vector ``d`` over ``op``'s coordinates: the operator is then
    :math:`DHD`, ``D = diag(d)`` (the preconditioned Hessian of ``adam_sharpness``).
    """
    op = HessianOperator(inp.model, inp.loss, inp.x, inp.y, batch_size=inp.batch_size,
                         dtype=dtype, output_fn=inp.output_fn)
    matvec = op.matvec
    if scale is not None:
        d = scale(op).to(op.device, dtype)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return d * op.matvec(d * v)
    cap = gap if rule == "error" and gap is not None and gap > 0 else None
    res = lanczos(matvec, op.size, max_steps=steps, top_k=1, tol=tol, v0=v0, seed=seed, dtype=dtype,
                  device=op.device, eigenvectors=True, check_every=1, rule=rule, gap=cap)
    theta, r = float(res.eigenvalues[-1]), float(res.residuals[-1])
    size = max(abs(theta), torch.finfo(torch.float64).tiny)
    found = (theta - float(res.eigenvalues[-2])) / size if len(res.eigenvalues) > 1 else gap
    if found is not None and gap is not None:
        found = min(found, gap)  # a short run's θ₂ lies far below λ₂: keep the smaller gap
    error = min(r, r * r / (found * size)) if found and found > 0 else r
    done = res.converged or r <= tol * size or (rule == "error" and error <= tol * size)
    return {"lambda_max": theta, "lambda_max_residual": r, "lambda_max_error": error,
            "lambda_max_hvps": op.num_matvecs, "lambda_max_converged": bool(done),
            "vector": res.eigenvectors[:, -1].detach().clone(), "gap": found}


