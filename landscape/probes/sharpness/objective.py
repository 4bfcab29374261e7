"""What every sharpness measure evaluates: ``L_B(w + δ)`` (and its gradients) for a perturbation
``δ`` of a flat vector of the perturbed parameters, on the fixed batches of ``m`` points.

The model is never mutated: every evaluation goes through :func:`landscape.core.kernel.logits_at`
with perturbed copies of the parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from landscape.core.kernel import logits_at
from landscape.errors import ConfigError, LandscapeError
from landscape.outputs import OutputFn
from landscape.params import ParamLayout, model_state, second_order, select_parameters
from landscape.probes.sharpness.config import SharpnessConfig
from landscape.tasks import Task, correct_count, get_task

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


class _Objective:
    """``L_B(w + δ)`` and its gradient for perturbations of a flat vector of the chosen parameters."""

    def __init__(self, model: nn.Module, loss: PerSampleLoss, layout: ParamLayout, cfg: SharpnessConfig,
                 dtype: torch.dtype, device: torch.device, output_fn: OutputFn | None = None,
                 task: str | Task = "classification") -> None:
        self.model, self.loss, self.layout, self.cfg = model, loss, layout, cfg
        self.task = task
        self.output_fn = output_fn
        self.state = model_state(model, dtype, device)
        self.theta = layout.flatten(self.state).detach()
        self.num_gradients = 0

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state = {**self.state, **self.layout.unflatten(theta)}
        z = logits_at(self.model, state, x, bn_mode=self.cfg.bn_mode, output_fn=self.output_fn,
                      keep=self.layout.names)
        if self.cfg.logit_normalize:  # z ← (z − mean z)/‖z − mean z‖ per sample (reference option)
            z = z - z.mean(dim=-1, keepdim=True)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return z

    def value(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """``(L_B(w+δ), error_B(w+δ))`` without gradient."""
        with torch.no_grad():
            z = self.logits(self.theta + delta, x)
            return float(self.loss(z, y).mean()), _error(z, y, self.task)

    def value_grad(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """``(L_B(w+δ), error, ∇_δ L_B(w+δ))``: one forward and one backward pass."""
        d = delta.detach().requires_grad_(True)
        z = self.logits(self.theta + d, x)
        value = self.loss(z, y).mean()
        (g,) = torch.autograd.grad(value, d)
        self.num_gradients += 1
        return float(value.detach()), _error(z.detach(), y, self.task), g

    def grad_norm_ascent(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(‖∇L_B(w+δ)‖, ∇_δ ½‖∇L_B(w+δ)‖² = H g)`` by double backward, under
        :func:`landscape.params.second_order` (math SDPA backend: attention layers work)."""
        d = delta.detach().requires_grad_(True)
        with second_order():
            value = self.loss(self.logits(self.theta + d, x), y).mean()
            (g,) = torch.autograd.grad(value, d, create_graph=True)
            half_sq = 0.5 * (g * g).sum()
            (hg,) = torch.autograd.grad(half_sq, d)
        self.num_gradients += 2
        return float(g.detach().norm()), hg


class _BatchFn:
    """``value_grad`` of one batch, with a gradient-free ``value`` for the last iterate."""

    def __init__(self, obj: _Objective, x: torch.Tensor, y: torch.Tensor, on_grad: Callable[[], None]) -> None:
        self.obj, self.x, self.y, self.on_grad = obj, x, y, on_grad

    def __call__(self, delta: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        out = self.obj.value_grad(delta, self.x, self.y)
        self.on_grad()
        return out

    def value(self, delta: torch.Tensor) -> tuple[float, float]:
        return self.obj.value(delta, self.x, self.y)


def _error(z: torch.Tensor, y: torch.Tensor, task: str | Task = "classification") -> float:
    """``task``'s error on a batch: 1 − accuracy (token accuracy for token tasks), NaN for outputs
    that are not class scores."""
    if z.ndim != (3 if get_task(task).tokens else 2) or y.dtype not in (torch.int64, torch.int32) or z.shape[-1] < 2:
        return float("nan")
    correct, count = correct_count(z, y, task)
    return float(count - int(correct)) / count if count else float("nan")


def _perturbed_layout(model: nn.Module, which: str) -> ParamLayout:
    """The perturbed parameters: all of them, or (``no_norm_bias``) none of a norm layer's and no bias."""
    layout = select_parameters(model)
    if which == "all":
        return layout
    skip = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            skip.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    names = [n for n in layout.names if n not in skip and not n.endswith("bias")]
    if not names:
        raise ConfigError("params='no_norm_bias' leaves no parameter to perturb; use params='all'")
    return select_parameters(model, names)


def _batches(x: torch.Tensor, y: torch.Tensor, m: int) -> Batches:
    """The ``⌊len(y)/m⌋`` consecutive batches of exactly ``m`` points (an incomplete last one dropped)."""
    return [(x[b * m:(b + 1) * m], y[b * m:(b + 1) * m]) for b in range(len(y) // m)]


def _check_clean(loss_clean: np.ndarray) -> None:
    if not np.isfinite(loss_clean).all():
        raise LandscapeError(
            f"the loss is NaN/inf at these weights on {int((~np.isfinite(loss_clean)).sum())} of "
            f"{len(loss_clean)} batches; sharpness is undefined there (check the data and the loss, "
            "or probe another checkpoint)"
        )
