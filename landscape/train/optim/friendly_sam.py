"""Friendly-SAM (Li et al. CVPR 2024): SAM without the full-gradient component of the perturbation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import ADAPTIVE_ETA, SharpnessAware, _ascent
from landscape.train.optim.validation import _check_nonnegative, _check_unit


@OPTIMIZERS.register("friendly_sam")
class FriendlySAM(SharpnessAware):
    r"""Friendly SAM (Li, Zhou, He, Cheng & Huang, CVPR 2024; nblt/F-SAM): SAM whose
    perturbation drops the full-gradient component, estimated by an EMA of past gradients.

    Two closure calls per step, with ``m`` the EMA (state kept across steps):

    .. math::
        g = ∇L(w),\quad d = g − σ\,m,\quad m ← λ\,m + (1 − λ)\,g,\quad
        ε = ρ\,\frac{T_w^2 d}{\lVert T_w d\rVert_2},\quad w ← \mathrm{base}(w, ∇L(w + ε)),

    and on the first step ``m ← g``, ``d = g`` (the reference's initialization, i.e. plain
    SAM once). ``T_w`` as in :class:`SAM` (``adaptive``). Defaults: the reference's CIFAR-100
    setting ``rho=0.2, sigma=1, lmbda=0.6`` (its logs; ``lmbda=0.95`` is its other one).
    The EMA is saved in ``state_dict()["fsam_ema"]`` (one tensor per parameter, in group order).

    Registered as ``friendly_sam`` only: ``fsam`` is the Fisher-mask SAM of Zhong et al. 2022
    (:class:`FisherSAM`), the method the literature (and ../REFERENCES.md) calls FSAM.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 0.2,
        sigma: float = 1.0,
        lmbda: float = 0.6,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        _check_nonnegative("sigma", sigma)
        _check_unit("lmbda", lmbda, closed=True)
        _check_nonnegative("eta", eta)
        hyper = {"rho": rho, "sigma": sigma, "lmbda": lmbda, "adaptive": bool(adaptive), "eta": eta}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        self._ema: dict[int, Tensor] = {}

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Update the EMA, save ``w`` and move to ``w + ρ d/‖d‖`` (``d = g − σ m``)."""
        groups = self._with_grad()
        directions: list[list[Tensor]] = []
        for group, params in groups:
            ds = []
            for p in params:
                g = p.grad
                m = self._ema.get(id(p))
                if m is None:
                    self._ema[id(p)] = g.detach().clone()
                    ds.append(g)
                else:
                    ds.append(g - group["sigma"] * m)
                    m.mul_(group["lmbda"]).add_(g, alpha=1.0 - group["lmbda"])
            directions.append(ds)
        steps = _ascent(groups, directions, "rho")
        self._save(groups)
        self._move(groups, steps)
        if zero_grad:
            self.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["fsam_ema"] = [self._ema.get(id(p)) for p in self._all_params()]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        ema = state_dict.pop("fsam_ema", None)
        super().load_state_dict(state_dict)
        self._ema = {}
        if ema is not None:
            for p, m in zip(self._all_params(), ema, strict=True):
                if m is not None:
                    self._ema[id(p)] = m.detach().clone().to(device=p.device, dtype=p.dtype)
