"""Base optimizers: torch's SGD, Adam and AdamW with validation and an optional decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from landscape.errors import ConfigError
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.validation import (
    _check_betas,
    _check_nonnegative,
    _check_positive,
    _check_unit,
)


class _DecoupledWeightDecay:
    """Mixin for torch optimizers: decoupled (AdamW-style) weight decay as an option.

    With ``group["decoupled_weight_decay"]`` the step first shrinks every
    parameter that has a gradient, ``w ← (1 − lr·wd)·w``, then runs the torch
    update with ``weight_decay = 0``. Otherwise ``weight_decay`` is torch's
    coupled L2 term (``g ← g + wd·w``).
    """

    param_groups: list[dict[str, Any]]
    defaults: dict[str, Any]

    def _set_decoupled(self, decoupled: bool) -> None:
        self.defaults["decoupled_weight_decay"] = bool(decoupled)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = bool(decoupled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        shrunk: list[tuple[dict[str, Any], Any]] = []
        for group in self.param_groups:
            wd = group["weight_decay"]
            if group.get("decoupled_weight_decay", False) and wd != 0:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * wd)
                group["weight_decay"] = 0.0
                shrunk.append((group, wd))
        try:
            # The torch class's own update, without its hook wrapper: torch wraps `step` of every
            # optimizer class it instantiates, and going through both wrappers would run step hooks twice.
            parent = super().step.__func__  # type: ignore[misc]
            if getattr(parent, "hooked", False):
                parent = parent.__wrapped__
            parent(self)
        finally:
            for group, wd in shrunk:
                group["weight_decay"] = wd
        return loss


@OPTIMIZERS.register("sgd")
class SGD(_DecoupledWeightDecay, torch.optim.SGD):
    """torch's SGD (momentum, Nesterov, dampening) with an optional decoupled weight decay.

    Unlike torch, ``momentum`` defaults to 0.9 (the setting of nearly every paper this toolkit
    reproduces, SAM's base optimizer included); pass ``momentum=0`` for plain SGD.
    """

    closure_calls: ClassVar[int] = 1

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        _check_positive("lr", lr)
        _check_unit("momentum", momentum, closed=False)
        _check_unit("dampening", dampening, closed=True)
        _check_nonnegative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError(
                f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=bool(nesterov),
        )
        self._set_decoupled(decoupled_weight_decay)


@OPTIMIZERS.register("adam")
class Adam(_DecoupledWeightDecay, torch.optim.Adam):
    """torch's Adam; ``decoupled_weight_decay=True`` makes it AdamW."""

    closure_calls: ClassVar[int] = 1

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        _check_positive("lr", lr)
        betas = _check_betas(betas)
        _check_nonnegative("eps", eps)
        _check_nonnegative("weight_decay", weight_decay)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad)
        )
        self._set_decoupled(decoupled_weight_decay)


@OPTIMIZERS.register("adamw")
class AdamW(torch.optim.AdamW):
    """torch's AdamW: weight decay is always decoupled, ``w ← (1 − lr·wd)·w`` before the Adam update."""

    closure_calls: ClassVar[int] = 1

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        _check_positive("lr", lr)
        betas = _check_betas(betas)
        _check_nonnegative("eps", eps)
        _check_nonnegative("weight_decay", weight_decay)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad)
        )
