"""The loss registry, the ranges its parameters are checked against, and helpers the losses share."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.registry import Registry

LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")


# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class _Interval:
    """A real interval for a parameter; ``None`` ends are unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, v: float) -> bool:
        # Written so that NaN is never inside.
        if self.lo is not None and not (v >= self.lo if self.lo_closed else v > self.lo):
            return False
        if self.hi is not None and not (v <= self.hi if self.hi_closed else v < self.hi):
            return False
        return math.isfinite(v)

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            left = "[" if self.lo_closed else "("
            right = "]" if self.hi_closed else ")"
            return f"in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"{'>=' if self.lo_closed else '>'} {self.lo:g}"
        if self.hi is not None:
            return f"{'<=' if self.hi_closed else '<'} {self.hi:g}"
        return "finite"


_NONNEG = _Interval(lo=0.0)
_POSITIVE = _Interval(lo=0.0, lo_closed=False)
_NEGATIVE = _Interval(hi=0.0, hi_closed=False)

# canonical loss name -> {param name -> allowed interval}
_RANGES: dict[str, dict[str, _Interval]] = {}


def _register(name: str, *aliases: str, **ranges: _Interval):
    """Register a loss in :data:`LOSSES` and record the allowed range of each parameter."""

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        unknown = set(ranges) - set(_param_defaults(fn))
        if unknown:  # a programming error in this module
            raise TypeError(f"ranges for parameters {sorted(unknown)} that {fn.__name__} lacks")
        LOSSES.register(name, *aliases)(fn)
        _RANGES[name] = dict(ranges)
        return fn

    return decorator


def _param_defaults(fn: Callable[..., Tensor]) -> dict[str, Any]:
    """Keyword parameters of a registered loss (everything after logits, targets) and defaults."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p.default for p in params}


# --------------------------------------------------------------------------- helpers


def _onehot(logits: Tensor, targets: Tensor) -> Tensor:
    """One-hot of ``targets`` in the dtype/device of ``logits`` (vmap-friendly)."""
    classes = torch.arange(logits.shape[-1], device=logits.device)
    return (classes == targets.unsqueeze(-1)).to(logits.dtype)


def _pick(x: Tensor, targets: Tensor) -> Tensor:
    """``x[..., y]``: the target entry of each row."""
    return x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _log_pt(logits: Tensor, targets: Tensor) -> Tensor:
    """:math:`\\log p_t`, from ``log_softmax`` (stable)."""
    return _pick(torch.log_softmax(logits, dim=-1), targets)


