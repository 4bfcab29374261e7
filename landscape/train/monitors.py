r"""Monitors: the probes' measurements taken while a model trains, on a budget.

A monitor is a small function over the model, the per-sample loss, a fixed set of samples (the
training set, or a seeded ``subset`` of it: :func:`landscape.probes.base.fixed_subset`), the
optimizer and the step, returning a flat dict of numbers; its cost is declared beside it. It may
keep a state between calls (the previous eigenvector, the previous weights): that state is saved
with every trainer checkpoint, so a resumed run repeats the monitor values bit for bit.

Every quantity is evaluated functionally in eval mode (BatchNorm running statistics, no
dropout), on the model's own weights, without touching its ``.grad``, its buffers or the global
RNG: a run with monitors trains exactly as one without.

Registered monitors (``landscape train --monitor NAME[:every=K,subset=N,KEY=VALUE,...]``):

- ``grad_norm``: :math:`\|\nabla L(\theta)\|_2`, ``L = (1/N) Σ_n ℓ_n`` over the monitor samples
  (the Hessian probe's ``grad_norm``). Cost: one forward + backward pass over them.
- ``weight_norm``: :math:`\|\theta\|_2` over the trainable parameters (a tied tensor once);
  ``per_layer=true`` adds ``weight_norm/<module>``. Cost: one pass over the weights.
- ``update_norm``: :math:`\|\theta_t - \theta_{s}\|_2`, ``s`` the step of the previous call
  (``update_steps = t − s``; ``every=1`` gives the per-step update); absent at the first call.
  Cost: one pass over the weights, one copy of them kept.
- ``logit_stats``: ``logit_norm`` = mean_n :math:`\|z_n\|_2`, ``log_z`` = mean_n
  :math:`\log\sum_k e^{z_{nk}}`, ``max_abs_logit`` = :math:`\max_{n,k} |z_{nk}|`
  (a token task's positions count as samples). Cost: one forward pass.
- ``softmax_collapse``: the fraction of samples whose float32 per-sample loss is exactly 0
  (Softmax Collapse, Prieto et al. 2025: their gradient is exactly 0). Cost: one forward pass.
- ``lambda_max``: the top eigenvalue of :math:`\nabla^2 L(\theta)` over the monitor samples by
  Lanczos (:func:`landscape.linalg.lanczos` on :class:`landscape.linalg.HessianOperator`, as
  the ``hessian`` probe), started from the previous call's Ritz vector (``warm=true``; moved
  along its drift when the drift is steady, ``extrapolate=true``: :func:`warm_start`) and
  stopped at ``tol`` relative accuracy (``rule``: :func:`top_eigenpair`, checked after every HVP)
  or after ``steps`` HVPs.
  Reports ``lambda_max``, ``lambda_max_residual`` (:math:`\|Hv - θv\|`: an eigenvalue lies
  within it), ``lambda_max_error`` (the estimate :math:`r^2/\mathrm{gap}` the stop used),
  ``lambda_max_hvps`` and ``lambda_max_converged``. Cost: at most ``steps`` (default 20)
  Hessian-vector products (≈ 1.2–2.4 gradients each); warm starts typically need 2–7.
- ``adam_sharpness``: Adam's preconditioned sharpness (Cohen et al. 2022, "Adaptive gradient
  methods at the edge of stability"): :math:`\lambda_{max}(P^{-1/2} H P^{-1/2})`,
  :math:`P = \mathrm{diag}(\sqrt{\hat v} + \epsilon)`, :math:`\hat v` the optimizer's
  bias-corrected ``exp_avg_sq``, by the same warm-started Lanczos and settings as ``lambda_max``
  (keys ``adam_sharpness``, ``adam_sharpness_residual``, …), with ``adam_sharpness_threshold``
  = :math:`(2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η at β₁ = 0.9). Absent before the first
  step; a one-line error for an optimizer without Adam state. Cost: as ``lambda_max``.
- ``nlm_cosine``: :math:`\cos(\nabla L, -\theta)`, the cosine between the gradient and the
  naïve-loss-minimization direction of Prieto et al. 2025 (−θ for a homogeneous model: the
  direction in which the gradient only scales the weights, hence the logits, up); +1 when the
  step :math:`-\eta\nabla L` is parallel to θ. Cost: one forward + backward pass.
- ``per_sample_loss``: ``per_sample_losses``, the list of per-sample losses on a fixed
  ``subset`` (default 32, so a metrics line stays short), and ``per_sample_loss_mean``
  (opposing signals, Rosenfeld & Risteski 2023). Cost: one forward pass over the subset.
- ``coherence``: ``coherence_m_alpha`` (m·α = ‖Σ_i g_i‖² / Σ_i ‖g_i‖²), ``coherence_alpha``,
  ``coherence_gsnr_mean`` on a fixed ``subset`` (default 128), by the coherence probe's own
  :func:`landscape.probes.coherence.coherence`. Cost: per-example gradients of the subset.
- ``attention_logits``: per layer ``attn_max_logit/<i>`` (max |qᵀk|/√d) and
  ``attn_entropy/<i>`` (mean attention entropy, nats), and ``attn_max_logit`` over layers, from
  the model's ``attention_stats(ids)`` (the ``transformer``); a one-line error before training
  for a model without it. Cost: one forward pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core.data import iter_batches, select
from landscape.core.kernel import logits_at
from landscape.errors import ConfigError
from landscape.linalg import HessianOperator, lanczos
from landscape.outputs import OutputFn
from landscape.params import layer_blocks, model_state, select_parameters
from landscape.registry import Registry

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MonitorInputs:
    """What a monitor reads at one call: the samples are ``(x, y)`` tensors, or ``x`` a
    ``Split`` / :class:`~landscape.core.data.Stream` with ``y=None``."""

    model: nn.Module
    loss: PerSampleLoss
    x: Any
    y: torch.Tensor | None
    step: int
    optimizer: Any = None
    batch_size: int | None = None
    output_fn: OutputFn | None = None

    def batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        yield from iter_batches(self.x, self.y, self.batch_size)


MonitorFn = Callable[[MonitorInputs, dict[str, Any]], dict[str, float]]


@dataclass(frozen=True)
class MonitorSpec:
    """A registered monitor: ``fn(inputs, state, **params) -> {key: number}``, its parameters'
    defaults, its default schedule and its cost (in words)."""

    name: str
    fn: Callable[..., dict[str, float]]
    cost: str
    defaults: dict[str, Any] = field(default_factory=dict)
    every: int = 1
    subset: int | None = None
    check: Callable[[nn.Module], None] | None = None


MONITORS: Registry[MonitorSpec] = Registry("monitor")


def register_monitor(name: str, cost: str, every: int = 1, subset: int | None = None,
                     check: Callable[[nn.Module], None] | None = None, **defaults: Any):
    """Decorator: ``@register_monitor("grad_norm", "one forward + backward pass")``. ``subset``:
    the default number of samples (all when ``None``); ``check(model)`` raises a one-line
    :class:`ConfigError` when the monitor cannot measure this model (called before the first
    measurement)."""

    def decorator(fn: Callable[..., dict[str, float]]):
        MONITORS.register(name)(MonitorSpec(name, fn, cost, dict(defaults), every, subset, check))
        return fn

    return decorator


# ---- the monitors -------------------------------------------------------------------------------


def _flat_weights(model: nn.Module) -> tuple[torch.Tensor, Any]:
    layout = select_parameters(model)
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in layout.names]), layout


def _logits(inp: MonitorInputs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    state = model_state(inp.model)
    with torch.no_grad():
        for xb, yb in inp.batches():
            yield logits_at(inp.model, state, xb, bn_mode="eval", output_fn=inp.output_fn), yb


@register_monitor("grad_norm", "one forward + backward pass over the monitor samples")
def grad_norm(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    op = HessianOperator(inp.model, inp.loss, inp.x, inp.y, batch_size=inp.batch_size, output_fn=inp.output_fn)
    _, grad = op.loss_and_gradient()
    return {"grad_norm": float(grad.norm())}


@register_monitor("weight_norm", "one pass over the weights", per_layer=False)
def weight_norm(inp: MonitorInputs, state: dict[str, Any], per_layer: bool = False) -> dict[str, float]:
    flat, layout = _flat_weights(inp.model)
    out = {"weight_norm": float(flat.double().norm())}
    if per_layer:
        slices = layout.slices()
        for block, names in layer_blocks(inp.model, layout).items():
            parts = torch.cat([flat[slices[n]] for n in names]).double()
            out[f"weight_norm/{block}"] = float(parts.norm())
    return out


@register_monitor("update_norm", "one pass over the weights; one copy of them kept between calls")
def update_norm(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    flat, _ = _flat_weights(inp.model)
    out: dict[str, float] = {}
    previous = state.get("weights")
    if previous is not None:
        out["update_norm"] = float((flat.double() - previous.to(flat.device).double()).norm())
        out["update_steps"] = int(inp.step - int(state["step"]))
    state["weights"], state["step"] = flat.clone(), inp.step
    return out


@register_monitor("logit_stats", "one forward pass over the monitor samples")
def logit_stats(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    norm = log_z = torch.zeros((), dtype=torch.float64)
    peak = 0.0
    count = 0
    for z, _ in _logits(inp):
        z = z.reshape(-1, z.shape[-1]).double()
        norm = norm + z.norm(dim=1).sum().cpu()
        log_z = log_z + torch.logsumexp(z, dim=1).sum().cpu()
        if z.numel():  # NaN logits give a NaN maximum (Python's max would drop it)
            top = float(z.abs().max())
            peak = math.nan if math.isnan(top) or math.isnan(peak) else max(peak, top)
        count += len(z)
    n = max(count, 1)
    return {"logit_norm": float(norm) / n, "log_z": float(log_z) / n, "max_abs_logit": peak}


@register_monitor("softmax_collapse", "one forward pass over the monitor samples")
def softmax_collapse(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    zeros = count = 0
    for z, yb in _logits(inp):
        values = inp.loss(z.float(), yb)
        zeros += int((values == 0).sum())
        count += int(values.numel())
    return {"softmax_collapse": zeros / count if count else math.nan}


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


# ---- more monitors: NLM direction, per-sample losses, coherence, attention, Adam sharpness -----


@register_monitor("nlm_cosine", "one forward + backward pass over the monitor samples")
def nlm_cosine(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    r"""``nlm_cosine`` = :math:`\cos(\nabla L, -\theta) = -\theta^\top\nabla L / (\|\theta\|\,
    \|\nabla L\|)` over the trainable parameters: +1 when the gradient step :math:`-\eta\nabla L`
    points along θ, i.e. only scales the weights (for a homogeneous net, scales the logits up: the
    naïve-loss-minimization direction of Prieto et al. 2025, −θ in gradient space)."""
    op = HessianOperator(inp.model, inp.loss, inp.x, inp.y, batch_size=inp.batch_size, output_fn=inp.output_fn)
    _, grad = op.loss_and_gradient()
    g, theta = grad.double(), op.theta.detach().double()
    denom = float(g.norm() * theta.norm())
    return {"nlm_cosine": -float(g @ theta) / denom if denom > 0 else math.nan}


@register_monitor("per_sample_loss", "one forward pass over the subset (default 32 samples)", subset=32)
def per_sample_loss(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, Any]:
    """``per_sample_losses``: the list of the subset's per-sample losses (float32, in the subset's
    fixed order; a token task's positions averaged per sequence) and ``per_sample_loss_mean``."""
    values: list[float] = []
    for z, yb in _logits(inp):
        v = inp.loss(z.float(), yb)
        v = v.reshape(len(yb), -1).mean(dim=1) if v.dim() > 1 else v
        values.extend(float(a) for a in v.cpu())
    return {"per_sample_losses": values, "per_sample_loss_mean": sum(values) / len(values) if values else math.nan}


@register_monitor("coherence", "per-example gradients of the subset (default 128): ≈ one backward pass "
                  "with per-example norms", subset=128, method="hooks", dtype="float32")
def coherence(inp: MonitorInputs, state: dict[str, Any], method: str = "hooks",
              dtype: str = "float32") -> dict[str, float]:
    """``coherence_m_alpha`` (m·α = ‖Σ_i g_i‖² / Σ_i ‖g_i‖²), ``coherence_alpha`` and
    ``coherence_gsnr_mean`` of the subset, by the coherence probe's own function
    (:func:`landscape.probes.coherence.coherence`, all of the monitor's samples)."""
    from landscape.probes.coherence import CoherenceConfig
    from landscape.probes.coherence import coherence as probe

    x, y = inp.x, inp.y
    if y is None:
        if not hasattr(x, "x"):
            raise ConfigError("the coherence monitor needs in-memory samples; give it a subset=N")
        x, y = x.x, x.y
    cfg = CoherenceConfig(subset=None, method=method, batch_size=inp.batch_size, per_layer=False,
                          histogram_bins=1, dtype=dtype)
    out = probe(inp.model, inp.loss, x, y, cfg, output_fn=inp.output_fn)
    return {"coherence_m_alpha": float(out["m_alpha"]), "coherence_alpha": float(out["alpha"]),
            "coherence_gsnr_mean": float(out["gsnr_mean"])}


def _has_attention_stats(model: nn.Module) -> None:
    if not callable(getattr(model, "attention_stats", None)):
        raise ConfigError(f"the attention_logits monitor needs a model with attention_stats(x) (the "
                          f"transformer, the vit); {type(model).__name__} has none: drop the monitor")


@register_monitor("attention_logits", "one forward pass over the monitor samples", check=_has_attention_stats)
def attention_logits(inp: MonitorInputs, state: dict[str, Any]) -> dict[str, float]:
    """Per layer ``i``: ``attn_max_logit/i`` = max |qᵀk|/√d over the samples' attended (causal,
    or all for the vit) pairs and
    heads, ``attn_entropy/i`` = the mean attention entropy (nats) over samples, heads and query
    positions (the model's ``attention_stats``); ``attn_max_logit`` = the max over layers."""
    model = inp.model
    flags = {m: m.training for m in model.modules()}
    model.eval()
    peaks: list[float] = []
    entropy: list[float] = []
    count = 0
    try:
        with torch.no_grad():
            for xb, _ in inp.batches():
                stats = model.attention_stats(xb)
                if not peaks:
                    peaks, entropy = [-math.inf] * len(stats), [0.0] * len(stats)
                for i, s in enumerate(stats):
                    peaks[i] = max(peaks[i], float(s["max_logit"]))
                    entropy[i] += float(s["entropy"]) * len(xb)
                count += len(xb)
    finally:
        for m, flag in flags.items():
            m.training = flag
    out = {f"attn_max_logit/{i}": p for i, p in enumerate(peaks)}
    out.update({f"attn_entropy/{i}": e / max(count, 1) for i, e in enumerate(entropy)})
    if peaks:
        out["attn_max_logit"] = max(peaks)
    return out


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


# ---- schedules and sets of monitors -------------------------------------------------------------


@dataclass(frozen=True)
class MonitorConfig:
    """One monitor and its schedule: called at every step ``s`` with ``s % every == 0`` (step 0,
    before training, included), on ``subset`` samples of the data (all when ``None``; the same
    seeded subset at every call), ``batch_size`` at a time (all at once when ``None``)."""

    name: str
    every: int | None = None
    subset: int | None = None
    batch_size: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = MONITORS[self.name]
        object.__setattr__(self, "name", spec.name)
        if self.every is None:
            object.__setattr__(self, "every", spec.every)
        for key, value in (("every", self.every), ("subset", self.subset), ("batch_size", self.batch_size)):
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"monitor {self.name}: {key} must be an integer ≥ 1, got {value!r}")
        unknown = sorted(set(self.params) - set(spec.defaults))
        if unknown:
            valid = ", ".join(["every", "subset", "batch_size", *spec.defaults])
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for monitor {self.name!r}; valid: {valid}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"every": self.every}
        if self.subset is not None:
            out["subset"] = self.subset
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        return {**out, **self.params}


def parse_monitor(spec: str | MonitorConfig) -> MonitorConfig:
    """``"lambda_max:every=50,subset=512,steps=30"`` → a :class:`MonitorConfig` (values read as
    JSON when they can be: ``per_layer=true``, ``tol=1e-4``)."""
    if isinstance(spec, MonitorConfig):
        return spec
    name, _, rest = str(spec).partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"monitor settings are KEY=VALUE separated by commas, got {item!r} in {spec!r}")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return monitor_from_dict(name.strip(), settings)


def monitor_from_dict(name: str, settings: dict[str, Any]) -> MonitorConfig:
    """A :class:`MonitorConfig` from ``{"every": K, "subset": N, <monitor params>}``."""
    if not isinstance(settings, dict):
        raise ConfigError(f"monitor {name!r}: settings must be a JSON object, got {settings!r}")
    rest = dict(settings)
    common = {k: rest.pop(k) for k in ("every", "subset", "batch_size") if k in rest}
    return MonitorConfig(name, params=rest, **common)


def check_monitors(monitors: Iterable[str | MonitorConfig], model: nn.Module) -> None:
    """Raise the one-line error of the first monitor that cannot measure ``model``."""
    for m in monitors:
        check = MONITORS[parse_monitor(m).name].check
        if check is not None:
            check(model)


def monitors_from_config(monitors: dict[str, dict[str, Any]]) -> list[MonitorConfig]:
    """The monitors of a ``TrainConfig.monitors`` mapping, in order."""
    return [monitor_from_dict(name, settings) for name, settings in monitors.items()]


class MonitorSet:
    """Monitors over fixed data: :meth:`run` at every step, :meth:`state_dict` for resume.

    ``x, y`` are the samples (tensors, or ``x`` a Split / Stream with ``y=None``); ``loss`` maps
    ``(logits, y)`` to one value per sample. A monitor's subset is drawn once, here."""

    def __init__(self, monitors: Iterable[str | MonitorConfig], loss: PerSampleLoss, x: Any,
                 y: torch.Tensor | None = None, *, output_fn: OutputFn | None = None,
                 default_every: int | None = None) -> None:
        from landscape.probes.base import fixed_subset

        configs = [parse_monitor(m) for m in monitors]
        if default_every is not None:
            configs = [MonitorConfig(c.name, default_every, c.subset, c.batch_size, c.params)
                       if not _explicit_every(m) else c for m, c in zip(monitors, configs, strict=True)]
        names = [c.name for c in configs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"monitor(s) {', '.join(twice)} given twice; give each monitor once")
        self.configs = configs
        self.loss = loss
        self.output_fn = output_fn
        self.data: dict[str, tuple[Any, torch.Tensor | None]] = {}
        n = len(x)
        for c in configs:
            if c.subset is not None and c.subset > n:
                raise ConfigError(f"monitor {c.name}: subset={c.subset} but the data hold {n} samples; "
                                  f"use a subset ≤ {n}")
            default = MONITORS[c.name].subset
            size = c.subset if c.subset is not None else (min(default, n) if default is not None else None)
            self.data[c.name] = (x, y) if size is None else select(x, y, fixed_subset(n, size, 0))
        self.states: dict[str, dict[str, Any]] = {c.name: {} for c in configs}
        self._checked: set[int] = set()

    def check(self, model: nn.Module) -> None:
        """Raise the one-line error of the first monitor that cannot measure ``model``."""
        if id(model) not in self._checked:
            check_monitors(self.configs, model)
            self._checked.add(id(model))

    def due(self, step: int) -> bool:
        return any(step % c.every == 0 for c in self.configs)

    def run(self, step: int, model: nn.Module, optimizer: Any = None) -> dict[str, Any]:
        """The values of every monitor due at ``step`` (an empty dict when none is)."""
        self.check(model)
        out: dict[str, Any] = {}
        for c in self.configs:
            if step % c.every:
                continue
            x, y = self.data[c.name]
            inp = MonitorInputs(model, self.loss, x, y, step, optimizer, c.batch_size, self.output_fn)
            out.update(MONITORS[c.name].fn(inp, self.states[c.name], **c.params))
        return out

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The monitors' states (tensors on the CPU, numbers), for a trainer checkpoint."""
        return {name: {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                for name, s in self.states.items()}

    def load_state_dict(self, states: dict[str, dict[str, Any]], device: torch.device | None = None) -> None:
        for name in self.states:
            saved = states.get(name, {})
            self.states[name] = {k: (v.to(device) if isinstance(v, torch.Tensor) and device is not None else v)
                                 for k, v in saved.items()}


def _explicit_every(spec: str | MonitorConfig) -> bool:
    if isinstance(spec, MonitorConfig):
        return True
    _, _, rest = str(spec).partition(":")
    return any(item.strip().startswith("every=") for item in rest.split(","))


# ---- a user's own training loop -----------------------------------------------------------------


class Monitor:
    """Monitors for a training loop the toolkit did not write.

    >>> mon = ls.Monitor(model, nn.CrossEntropyLoss(), (x, y), ["lambda_max", "grad_norm"],
    ...                  every=50, out="my_metrics.jsonl")
    >>> for step in range(1, steps + 1):
    ...     ...; optimizer.step()
    ...     mon.step(step, optimizer)      # writes {"step", "lr", <values>} when a monitor is due

    ``data`` and ``loss`` are taken as :mod:`landscape.facade` takes them (tensors / arrays, a
    Dataset, a DataLoader, dict batches; a per-sample or mean loss; ``task=``). ``every``
    schedules the monitors named without their own ``every=``. ``out`` (optional) receives one
    JSON line per call that measured something; an existing non-empty file is kept and refused
    unless ``append=True``. :meth:`state_dict` / :meth:`load_state_dict` carry the warm-start
    vectors across a restart of the user's loop.
    """

    def __init__(self, model: nn.Module, loss: Callable, data: Any, monitors: Sequence[str | MonitorConfig],
                 every: int | None = None, out: str | Path | None = None, *, append: bool = False,
                 task: str = "classification", target_key: str = "labels",
                 output_fn: OutputFn | None = None) -> None:
        from landscape.batch import forward
        from landscape.core.data import samples_args
        from landscape.core.loss import task_loss
        from landscape.outputs import logits_of
        from landscape.tasks import get_task
        from landscape.user_data import as_dataset

        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(monitors, str):
            monitors = [monitors]
        t = get_task(task)
        dataset = as_dataset(data, None, target_key=target_key, task=t)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        train = dataset.train.to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                first = dataset.train.take(torch.arange(min(2, len(dataset.train)))).to(device)
                logits = logits_of(forward(model, first.x), output_fn)
        finally:
            model.train(was_training)
        per_sample = task_loss(loss, logits, first.y, t, dataset)
        x, y = samples_args(train)
        self.model = model
        self.monitors = MonitorSet(monitors, per_sample, x, y, output_fn=output_fn, default_every=every)
        self.monitors.check(model)
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            if self.out.is_dir():
                raise ConfigError(f"monitor output {self.out} is a directory; name a file")
            if self.out.is_file() and self.out.stat().st_size and not append:
                raise ConfigError(f"{self.out} already holds records; pass append=True to add to it, "
                                  "or name another file")
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.touch()

    def step(self, step: int, optimizer: Any = None) -> dict[str, Any] | None:
        """Measure the monitors due at ``step`` (call it after ``optimizer.step()``); the record
        written, or ``None`` when no monitor was due."""
        if not self.monitors.due(step):
            return None
        values = self.monitors.run(step, self.model, optimizer)
        record: dict[str, Any] = {"step": step}
        if optimizer is not None and getattr(optimizer, "param_groups", None):
            record["lr"] = optimizer.param_groups[0]["lr"]
        record.update(values)
        if self.out is not None:
            with open(self.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return self.monitors.state_dict()

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        device = next((p.device for p in self.model.parameters()), None)
        self.monitors.load_state_dict(states, device)
