"""Gradient norm aware minimization (Zhang et al. CVPR 2023): four gradient evaluations a step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from landscape.train.optim._ops import Closure, _evaluate, _global_norm, _safe_ratio
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import ADAPTIVE_ETA, SharpnessAware, _ascent
from landscape.train.optim.validation import _check_nonnegative, _check_unit


@OPTIMIZERS.register("gam")
class GAM(SharpnessAware):
    r"""Gradient norm aware minimization (Zhang et al. CVPR 2023), the accelerated form of xxgege/GAM.

    Seeks first-order flatness ``L + α R¹_ρ``, ``R¹_ρ(w) = ρ max_{w'∈B(w,ρ)} ‖∇L(w')‖``,
    with the gradient-norm gradient replaced by finite differences. Exactly
    four closure calls per step (``ρ' = rho``, ``ρ_t = rho_t``):

    .. math::
        \begin{aligned}
        g_0 &= ∇L(w), & w_1 &= w + ρ'\, g_0/\lVert g_0\rVert, & g_1 &= ∇L(w_1),\\
        d &= g_1 − g_0, & w_2 &= w + ρ_t\, d/\lVert d\rVert, & g_2 &= ∇L(w_2),\\
        & & w_3 &= w_2 + ρ'\, g_2/\lVert g_2\rVert, & g_3 &= ∇L(w_3),\\
        m &= g_0 + |1 − β|\, g_2, & u &= α\, g_1 + (1 − α)\, g_3, &
        v &= m − \frac{⟨m, u⟩}{\lVert u\rVert^2}\, u,\\
        \hat g &= u − γ\, v, & w &← \mathrm{base}(w, \hat g).
        \end{aligned}

    ``(g_1 − g_0)/ρ' ≈ ∇‖∇L‖(w)``: ``w_2`` climbs the gradient norm within
    radius ``ρ_t``; ``g_1`` and ``g_3`` are SAM gradients at ``w`` and ``w_2``;
    ``v`` is the part of ``m`` orthogonal to ``u`` (GSAM-style decomposition).
    With ``adaptive=True`` each normalized step uses ``T² x/‖T x‖`` with
    ``T = |w| + η`` at the point it starts from (``w`` for ``w_1, w_2``;
    ``w_2`` for ``w_3``). Every ratio with a zero denominator is 0.

    Names ↔ reference (``main_cifar.py``): ``rho`` = ``grad_rho`` (ρ'),
    ``rho_t`` = ``grad_norm_rho`` (ρ_t), ``alpha`` = ``grad_beta_1``,
    ``beta`` = ``grad_beta_0`` (``grad_beta_2 = 1 − grad_beta_0``,
    ``grad_beta_3 = 1 − grad_beta_1``), ``gamma`` = ``grad_gamma``. Defaults:
    the reference's CIFAR-10 ResNet setting (0.03, 0.2, 0.1, 0.1, 0.05),
    constant radii (the reference's radius schedulers are constant too).
    """

    closure_calls: ClassVar[int] = 4
    step_only: ClassVar[str | None] = "GAM takes four gradient evaluations"

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 0.03,
        rho_t: float = 0.2,
        alpha: float = 0.1,
        beta: float = 0.1,
        gamma: float = 0.05,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        _check_nonnegative("rho_t", rho_t)
        _check_unit("alpha", alpha, closed=True)
        _check_unit("beta", beta, closed=True)
        _check_nonnegative("gamma", gamma)
        _check_nonnegative("eta", eta)
        hyper = {
            "rho": rho,
            "rho_t": rho_t,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "adaptive": bool(adaptive),
            "eta": eta,
        }
        super().__init__(params, base_optimizer, hyper, base_kwargs)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        closure = self._require_closure(self, closure)
        loss = _evaluate(closure)
        groups = self._with_grad()
        if not groups:
            self.base_optimizer.step()
            return loss
        try:
            g0 = self._take_grads(groups)
            self._save(groups)
            self._move(groups, _ascent(groups, g0, "rho"))  # w1 = w + ρ' g0/‖g0‖
            _evaluate(closure)
            g1 = self._take_grads(groups)
            d = [torch._foreach_sub(a, b) for a, b in zip(g1, g0, strict=True)]
            self._reset()  # back to w
            self._move(groups, _ascent(groups, d, "rho_t"))  # w2 = w + ρ_t d/‖d‖
            del d
            _evaluate(closure)
            g2 = self._take_grads(groups)
            self._move(groups, _ascent(groups, g2, "rho"))  # w3 = w2 + ρ' g2/‖g2‖
            _evaluate(closure)
            g3 = self._take_grads(groups)
        finally:
            self._restore()
        # m = g0 + |1 − β| g2 (in g0), u = α g1 + (1 − α) g3 (in g3)
        for (group, _), a0, a1, a2, a3 in zip(groups, g0, g1, g2, g3, strict=True):
            torch._foreach_add_(a0, a2, alpha=abs(1.0 - group["beta"]))
            torch._foreach_mul_(a3, 1.0 - group["alpha"])
            torch._foreach_add_(a3, a1, alpha=group["alpha"])
        m, u = g0, g3
        del g1, g2
        flat_m = [x for xs in m for x in xs]
        flat_u = [x for xs in u for x in xs]
        inner = torch.stack(
            [torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(flat_m, flat_u, strict=True)]
        )
        coef = _safe_ratio(inner.sum(), _global_norm(flat_u).square().to(inner.dtype))
        # ĝ = u − γ (m − coef·u) = (1 + γ coef) u − γ m
        for (group, _), mm, uu in zip(groups, m, u, strict=True):
            torch._foreach_mul_(uu, 1.0 + group["gamma"] * coef)
            torch._foreach_add_(uu, mm, alpha=-group["gamma"])
        self._set_grads(groups, u)
        self.base_optimizer.step()
        return loss
