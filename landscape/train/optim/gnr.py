"""Gradient-norm regularization (Zhao et al. 2022) by a finite-difference step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from landscape.train.optim._ops import _Groups
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import SharpnessAware, _ascent
from landscape.train.optim.validation import _check_nonnegative, _check_unit


@OPTIMIZERS.register("gnr", "gnp")
class GNR(SharpnessAware):
    r"""Gradient-norm regularization (Zhao et al. 2022, "Penalizing Gradient Norm…").

    Objective ``L(w) + λ‖∇L(w)‖₂``; its gradient ``∇L + λ H ∇L/‖∇L‖`` with the
    Hessian-vector product replaced by a finite difference of step ``r``
    (``α = λ / r``). Two closure calls:

    .. math::
        g_1 = ∇L(w),\quad g_2 = ∇L\!\left(w + r\,\frac{g_1}{\lVert g_1\rVert_2}\right),\quad
        w ← \mathrm{base}\big(w, (1 − α)\,g_1 + α\,g_2\big).

    ``α = 1`` is SAM with ``ρ = r``. Defaults from the paper's recipes
    (zhaoyang-0204/gnp, CIFAR): ``r = 0.1``, ``α = 0.8``. The reference code
    can also mix the *normalized* ``g_1`` (its ``norm_perturbations`` flag);
    we use the paper's formula above.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        r: float = 0.1,
        alpha: float = 0.8,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("r", r)
        _check_unit("alpha", alpha, closed=True)
        super().__init__(params, base_optimizer, {"r": r, "alpha": alpha}, base_kwargs)
        self._reference: tuple[_Groups, list[list[Tensor]]] | None = None

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Keep ``g_1``, save ``w`` and move to ``w + r g_1/‖g_1‖``."""
        groups = self._with_grad()
        g1 = self._take_grads(groups)
        steps = _ascent(groups, g1, "r")
        self._save(groups)
        self._move(groups, steps)
        self._reference = (groups, g1)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w``, set the gradient to ``(1 − α) g_1 + α g_2`` and run the base optimizer."""
        self._restore()
        if self._reference is not None:
            groups, g1 = self._reference
            self._reference = None
            g2 = self._grads(groups)
            for (group, _), a, b in zip(groups, g1, g2, strict=True):
                torch._foreach_mul_(b, group["alpha"])
                torch._foreach_add_(b, a, alpha=1.0 - group["alpha"])
            self._set_grads(groups, g2)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()
