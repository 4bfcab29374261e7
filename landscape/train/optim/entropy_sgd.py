"""Entropy-SGD (Chaudhari et al. 2017): an inner SGLD loop, then the base optimizer's outer step."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from landscape.errors import ConfigError
from landscape.train.optim._ops import Closure, _evaluate
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import SharpnessAware
from landscape.train.optim.validation import _check_nonnegative, _check_positive, _check_unit


@OPTIMIZERS.register("entropy_sgd", "entropysgd")
class EntropySGD(SharpnessAware):
    r"""Entropy-SGD (Chaudhari et al. 2017, "Entropy-SGD: Biasing Gradient Descent into Wide
    Valleys"; ucla-vision/entropy-sgd): an inner SGLD loop estimates the local-entropy
    gradient, the base optimizer takes the outer step.

    ``L`` closure calls per step (the first, at ``x' = x``, is the trainer's call at ``w``):

    .. math::
        \begin{aligned}
        &x = w,\ x'_0 = x,\ μ_0 = x;\qquad \text{for } l = 0,\dots,L-1:\\
        &\quad x'_{l+1} = x'_l − η'\big(∇L(x'_l) + γ\,(x'_l − x)\big) + ε\sqrt{2η'}\,ξ_l,
          \quad ξ_l \sim \mathcal N(0, I),\\
        &\quad μ_{l+1} = α\,μ_l + (1 − α)\,x'_{l+1};\\
        &w ← \mathrm{base}\big(x,\ x − μ_L\big).
        \end{aligned}

    As in the reference code, the outer "gradient" is ``x − μ`` (the paper writes
    ``η γ (x − μ)``: its η is ``lr/γ`` here, and ``lr = 1`` with plain SGD sets ``x ← μ``);
    ``α`` weighs the *old* average (reference ``beta1 = 0.75``), the noise is the
    reference's ``ε·sqrt(2η')``. Unlike the reference the inner loop is plain SGLD (no
    momentum) and γ is constant (no scoping). Noise is drawn with the global torch RNG
    (``torch.randn_like``, parameter by parameter), so a seeded run repeats exactly.
    Defaults: ``L=20, gamma=1e-4, noise=1e-4, inner_lr=0.1, alpha=0.75``.
    """

    step_only: ClassVar[str | None] = "Entropy-SGD takes L gradient evaluations"

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        L: int = 20,
        gamma: float = 1e-4,
        noise: float = 1e-4,
        inner_lr: float = 0.1,
        alpha: float = 0.75,
        **base_kwargs: Any,
    ) -> None:
        if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
            raise ConfigError(f"invalid L={L!r}: the number of inner steps must be an integer ≥ 1")
        _check_nonnegative("gamma", gamma)
        _check_nonnegative("noise", noise)
        _check_positive("inner_lr", inner_lr)
        _check_unit("alpha", alpha, closed=False)
        hyper = {"L": int(L), "gamma": gamma, "noise": noise, "inner_lr": inner_lr, "alpha": alpha}
        super().__init__(params, base_optimizer, hyper, base_kwargs)

    @property
    def closure_calls(self) -> int:  # type: ignore[override]
        return int(self.param_groups[0]["L"])

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        closure = self._require_closure(self, closure)
        loss = _evaluate(closure)
        groups = self._with_grad()
        if not groups:
            self.base_optimizer.step()
            return loss
        self._save(groups)
        assert self._backup is not None
        x = self._backup[1]
        mu = [xi.clone() for xi in x]
        inner_steps = int(groups[0][0]["L"])
        try:
            for inner in range(inner_steps):
                if inner > 0:
                    _evaluate(closure)
                k = 0
                for group, params in groups:
                    lr_in, gamma, eps = group["inner_lr"], group["gamma"], group["noise"]
                    for p in params:
                        g = p.grad if p.grad is not None else torch.zeros_like(p)
                        update = g + gamma * (p - x[k])
                        p.add_(update, alpha=-lr_in)
                        if eps:
                            p.add_(torch.randn_like(p), alpha=eps * math.sqrt(2.0 * lr_in))
                        mu[k].mul_(group["alpha"]).add_(p, alpha=1.0 - group["alpha"])
                        k += 1
        finally:
            self._restore()
        k = 0
        for _, params in groups:
            for p in params:
                p.grad = p.detach() - mu[k]
                k += 1
        self.base_optimizer.step()
        return loss
