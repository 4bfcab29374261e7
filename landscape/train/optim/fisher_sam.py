"""FSAM (Zhong et al. 2022): SAM perturbing only the coordinates with the largest Fisher diagonal."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.errors import ConfigError
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import ADAPTIVE_ETA, SharpnessAware, _ascent
from landscape.train.optim.validation import _check_nonnegative, _check_unit


def _reference_unmasked(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the FSAM reference keeps out of the Fisher mask: names with ``bias`` or
    ``embed``, and BatchNorm weights/biases (WHU-ZQH/FSAM4PLM ``SAM_Mask.init_mask``)."""
    found: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if "bias" in name or "embed" in name:
            found.setdefault(id(p), p)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            for p in module.parameters(recurse=False):
                found.setdefault(id(p), p)
    return list(found.values())


@OPTIMIZERS.register("fsam", "fisher_sam")
class FisherSAM(SharpnessAware):
    r"""FSAM (Zhong, Ding, Shen, Mi, Liu, Du & Tao, Findings of EMNLP 2022, "Improving
    Sharpness-Aware Minimization with Fisher Mask for Better Generalization on Language Models";
    WHU-ZQH/FSAM4PLM): SAM whose perturbation is kept only on the coordinates with the largest
    empirical-Fisher diagonal.

    Two closure calls per step. At steps ``0, T, 2T, …`` the mask ``m`` is rebuilt from the
    gradient of the current batch; in between it is kept:

    .. math::
        g = ∇L_B(w),\quad F = g ⊙ g,\quad
        m_i = [\,F_i \text{ is among the } \lfloor k N\rfloor \text{ largest}\,],\quad
        ε = m ⊙ ρ\,\frac{T_w^2 g}{\lVert T_w g\rVert_2},\quad
        w ← \mathrm{base}\big(w, ∇L_B(w + ε)\big),

    with ``k = keep_ratio`` the fraction of coordinates *kept* (the sparse ratio the reference
    reports is ``s = 1 − k``) and ``N`` the number of maskable coordinates. As in the reference code:
    the Fisher diagonal is the square of the batch (mean-loss) gradient at ``w`` of that step;
    the top-k is one global ranking over every maskable tensor (ties: lower position first);
    the norm is that of the *unmasked* ``g`` (so ``‖ε‖ ≤ ρ``); the gradient at ``w + ε``
    reaches the base optimizer unmasked. With ``model`` given and ``mask_all=False`` the
    reference's exclusions hold: parameters named ``*bias*`` or ``*embed*`` and BatchNorm
    parameters stay outside the mask and are perturbed fully; with ``mask_all=True`` (or
    without ``model``) every parameter is ranked. ``T_w`` as in :class:`SAM` (``adaptive``).

    Defaults: the reference's ``rho=0.05``, ``keep_ratio=0.1`` (s = 0.9) and ``T=100``
    (``--mask-iter-e 100`` of its GLUE scripts). The mask (one bool tensor per parameter, in
    group order, ``None`` outside it) and the step counter are saved in ``state_dict()``
    (``fisher_mask``, ``fisher_steps``), so a resumed run repeats the same perturbations.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        model: nn.Module | None = None,
        rho: float = 0.05,
        keep_ratio: float = 0.1,
        T: int = 100,
        mask_all: bool = False,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        _check_unit("keep_ratio", keep_ratio, closed=True)
        if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
            raise ConfigError(f"invalid T={T!r}: the mask refresh interval must be an integer ≥ 1 (steps)")
        if not isinstance(mask_all, bool):
            raise ConfigError(f"mask_all must be true or false, got {mask_all!r}")
        _check_nonnegative("eta", eta)
        hyper = {"rho": rho, "keep_ratio": float(keep_ratio), "T": int(T), "mask_all": mask_all,
                 "adaptive": bool(adaptive), "eta": eta}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        unmasked = [] if mask_all or model is None else _reference_unmasked(model)
        self._unmasked = {id(p) for p in unmasked}
        self._mask: dict[int, Tensor] = {}
        self._steps = 0

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def _refresh_mask(self) -> None:
        """``m`` = the ``⌊k N⌋`` largest ``g²`` over every maskable parameter (0 where no gradient)."""
        maskable = [p for p in self._all_params() if id(p) not in self._unmasked]
        self._mask = {}
        if not maskable:
            return
        device = maskable[0].device
        fisher = torch.cat([
            (p.grad.detach().square() if p.grad is not None else torch.zeros_like(p))
            .reshape(-1).to(device=device, dtype=torch.float64)
            for p in maskable
        ])
        keep = int(fisher.numel() * float(self.param_groups[0]["keep_ratio"]))
        flat = torch.zeros(fisher.numel(), dtype=torch.bool, device=device)
        if keep > 0:
            flat[torch.sort(fisher, descending=True, stable=True).indices[:keep]] = True
        for p, m in zip(maskable, torch.split(flat, [p.numel() for p in maskable]), strict=True):
            self._mask[id(p)] = m.reshape(p.shape).to(p.device)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Rebuild the mask every ``T`` steps, save ``w`` and move to ``w + m ⊙ ε``."""
        if self._steps % int(self.param_groups[0]["T"]) == 0:
            self._refresh_mask()
        self._steps += 1
        groups = self._with_grad()
        steps = _ascent(groups, self._grads(groups), "rho")
        for (_, params), es in zip(groups, steps, strict=True):
            for p, e in zip(params, es, strict=True):
                if id(p) not in self._unmasked:
                    mask = self._mask.get(id(p))
                    if mask is None:
                        e.zero_()
                    else:
                        e.mul_(mask)
        self._save(groups)
        self._move(groups, steps)
        if zero_grad:
            self.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["fisher_mask"] = [self._mask.get(id(p)) for p in self._all_params()]
        out["fisher_steps"] = self._steps
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "fsam_ema" in state_dict:
            raise ConfigError(
                "this optimizer state was written by Friendly-SAM (registered as fsam before); "
                "load it with optimizer friendly_sam — fsam is now the Fisher-mask SAM"
            )
        masks = state_dict.pop("fisher_mask", None)
        steps = state_dict.pop("fisher_steps", 0)
        super().load_state_dict(state_dict)
        self._steps = int(steps)
        self._mask = {}
        if masks is not None:
            for p, m in zip(self._all_params(), masks, strict=True):
                if m is not None:
                    self._mask[id(p)] = m.detach().to(device=p.device, dtype=torch.bool).clone()
