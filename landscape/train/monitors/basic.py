"""Monitors of norms, logits, collapse, the NLM direction, per-sample losses, coherence and attention."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.linalg import HessianOperator
from landscape.params import layer_blocks
from landscape.probes.coherence import CoherenceConfig
from landscape.probes.coherence import coherence as coherence_probe
from landscape.train.monitors.registry import (
    MonitorInputs,
    _flat_weights,
    _logits,
    register_monitor,
)


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

    x, y = inp.x, inp.y
    if y is None:
        if not hasattr(x, "x"):
            raise ConfigError("the coherence monitor needs in-memory samples; give it a subset=N")
        x, y = x.x, x.y
    cfg = CoherenceConfig(subset=None, method=method, batch_size=inp.batch_size, per_layer=False,
                          histogram_bins=1, dtype=dtype)
    out = coherence_probe(inp.model, inp.loss, x, y, cfg, output_fn=inp.output_fn)
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


