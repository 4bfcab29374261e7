"""The loss a probe sees: one value per sample, from the loss as the user wrote it and the task.

Probes average one loss per sample, ``L = (1/N) Σ_n ℓ_n``. :func:`task_loss` turns the user's
loss (per-sample or mean-reduced; per token for token tasks; element-wise for regression) into
that ``ℓ``; the conventions are the task's (:mod:`landscape.tasks`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.tasks import aligned, check_shapes, sequence_loss


def per_sample_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    logits: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss`` as ``(logits[N, …], y[N]) → [N]``: as is when it already returns one value per
    sample on ``(logits, y)``; a module with ``reduction`` copied with ``reduction="none"``; else
    each sample's loss through ``torch.vmap``."""
    try:
        out = loss(logits, y)
    except Exception as exc:
        raise ConfigError(f"the loss fails on the model's output {tuple(logits.shape)} and targets "
                          f"{tuple(y.shape)}: {type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the loss returned a {type(out).__name__}, not a tensor")
    if out.shape == (logits.shape[0],):
        return loss
    if out.ndim != 0:
        raise ConfigError(f"the loss returned shape {tuple(out.shape)}; expected one value per sample "
                          f"({logits.shape[0]},) or a scalar mean")
    if isinstance(loss, nn.Module) and getattr(loss, "reduction", None) in ("mean", "sum"):
        unreduced = copy.copy(loss)
        unreduced.reduction = "none"
        return unreduced
    return torch.vmap(lambda o, t: loss(o.unsqueeze(0), t.unsqueeze(0)))


def regression_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], outputs: torch.Tensor,
                    y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss`` as one value per sample for regression: outputs ``[N, 1]`` against targets ``(N,)``
    are read as ``[N]``; an element-wise loss (``nn.MSELoss(reduction="none")``, or a module with
    ``reduction`` copied so) is averaged over each sample's ``D`` values,
    ``ℓ_n = (1/D) Σ_d ℓ(f(x_n)_d, y_{n,d})``, so the split mean equals ``nn.MSELoss()``'s."""
    def fit(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return z.reshape(*z.shape[: z.ndim - t.ndim - 1], *t.shape) if z.shape[-t.ndim:] != t.shape else z

    base = loss
    if isinstance(loss, nn.Module) and getattr(loss, "reduction", None) in ("mean", "sum"):
        base = copy.copy(loss)
        base.reduction = "none"
    try:
        out = base(fit(outputs, y), y)
    except Exception as exc:
        raise ConfigError(f"the loss fails on the model's output {tuple(outputs.shape)} and targets "
                          f"{tuple(y.shape)}: {type(exc).__name__}: {exc}") from None
    if isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] == y.shape[0]:
        def per_sample(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = base(fit(z, t), t)
            return v.reshape(v.shape[0], -1).mean(1)

        return per_sample
    return per_sample_loss(lambda z, t: loss(fit(z, t), t), fit(outputs, y), y)


def task_loss(loss: Callable, logits: torch.Tensor, y: torch.Tensor, task: Any, dataset: Any) -> Callable:
    """The per-sample loss the probes get: the user's loss per sample (classification), or one
    loss per sequence from the per-token loss (token tasks, :func:`landscape.tasks.sequence_loss`
    with ``scale = N / T_total`` of the training split)."""
    n = len(dataset.train)  # the shapes as the user knows them: the whole split's
    same_n = logits.ndim and logits.shape[0] == y.shape[0]
    check_shapes((n, *logits.shape[1:]) if same_n else logits.shape, (n, *y.shape[1:]), task)
    if task.regression:
        return regression_loss(loss, logits, y)
    if not task.tokens:
        return per_sample_loss(loss, logits, y)
    z, ys = aligned(logits, y, task)
    safe = torch.where(ys != task.ignore_index, ys, torch.zeros_like(ys))
    token_loss = per_sample_loss(loss, z.reshape(-1, z.shape[-1]), safe.reshape(-1))
    scale = n / dataset.info["task"]["valid_tokens"]["train"]
    return sequence_loss(token_loss, task, scale)
