"""Tensor helpers shared by the optimizer families (private)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Closure = Callable[[], Tensor]

_Groups = list[tuple[dict[str, Any], list[Tensor]]]


def _evaluate(closure: Closure) -> Tensor:
    with torch.enable_grad():
        return closure()


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """‖(t_1, …, t_n)‖₂ over all tensors, in at least float32, on the first tensor's device."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(tensors)
    dtype = functools.reduce(torch.promote_types, [n.dtype for n in norms], torch.float32)
    device = tensors[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))


def _safe_ratio(numerator: float | Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (no NaN, no host sync)."""
    return torch.where(denominator > 0, numerator / denominator, torch.zeros_like(denominator))


def _unhooked(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` without torch's step-hook wrapper (torch wraps ``step`` of each class it builds)."""
    while getattr(func, "hooked", False) and hasattr(func, "__wrapped__"):
        func = func.__wrapped__  # type: ignore[attr-defined]
    return func
