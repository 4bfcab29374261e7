"""The sharpness-aware base class: a wrapper around a base optimizer built on the same param groups.

Every wrapper (SAM family, GNR, GAM, Friendly-SAM, FSAM, Entropy-SGD, SAF/MESA) derives from
:class:`SharpnessAware`; the shared (A)SAM ascent step :func:`_ascent` lives here too. A base
optimizer given by name is looked up in the registry when the wrapper is built, so any
registered optimizer that is not itself a wrapper (``perp_adamw`` included) can be the base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from landscape.errors import ConfigError
from landscape.train.optim._ops import Closure, _evaluate, _global_norm, _Groups, _safe_ratio
from landscape.train.optim.base import SGD
from landscape.train.optim.registry import OPTIMIZERS, _keyword_names

#: default η of the adaptive operator ``T_w = |w| + η`` (SamsungLabs/ASAM).
ADAPTIVE_ETA = 0.01


def _base_names() -> list[str]:
    """Registered optimizers that can be the base of a wrapper (everything but the wrappers)."""
    return [n for n, c in OPTIMIZERS.items() if not issubclass(c, SharpnessAware)]


def _ascent(groups: _Groups, directions: list[list[Tensor]], radius_key: str) -> list[list[Tensor]]:
    r"""The (A)SAM ascent step along ``directions``, one list of tensors per group.

    .. math::
        ε = ρ \, \frac{T_w^2 v}{\lVert T_w v \rVert_2},\qquad
        T_w = \mathrm{diag}(|w| + η) \text{ if adaptive, else } I,

    with ``ρ = group[radius_key]``, ``T_w`` evaluated at the current weights,
    and one norm over every tensor of every group. ``ε = 0`` when the norm is 0.
    """
    scaled: list[list[Tensor]] = []
    weights: list[list[Tensor] | None] = []
    for (group, params), vs in zip(groups, directions, strict=True):
        if group.get("adaptive", False):
            t = torch._foreach_abs(params)
            torch._foreach_add_(t, group["eta"])
            scaled.append(torch._foreach_mul(vs, t))
            weights.append(t)
        else:
            scaled.append(vs)
            weights.append(None)
    norm = _global_norm([x for xs in scaled for x in xs])
    steps: list[list[Tensor]] = []
    for (group, _), tv, t in zip(groups, scaled, weights, strict=True):
        scale = _safe_ratio(group[radius_key], norm)
        if t is None:
            e = torch._foreach_mul(tv, scale)
        else:
            e = torch._foreach_mul(tv, t)
            torch._foreach_mul_(e, scale)
        steps.append(e)
    return steps


def _resolve_base(base_optimizer: Any) -> Callable[..., Optimizer]:
    if base_optimizer is None:
        return SGD
    if isinstance(base_optimizer, str):
        key = OPTIMIZERS.canonical(base_optimizer)
        if key not in _base_names():
            raise ConfigError(
                f"base optimizer must be one of {', '.join(_base_names())}, got {base_optimizer!r}"
            )
        return OPTIMIZERS[key]
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, SharpnessAware):
        raise ConfigError(
            f"base optimizer cannot itself be sharpness-aware: {base_optimizer.__name__}"
        )
    return base_optimizer


class SharpnessAware(Optimizer):
    """Base class: a wrapper around a base optimizer built on the same param groups.

    API of davda54/sam: ``first_step`` (save ``w``, move to ``w + ε``),
    ``second_step`` (restore ``w`` exactly, run the base optimizer) and
    ``step(closure)``, which does both around the closure calls. Subclasses
    change the perturbation or the combination of gradients.
    """

    closure_calls: ClassVar[int] = 2
    # why first_step/second_step do not apply, for a wrapper whose step is more than those two
    # (``"{name} takes four gradient evaluations"``, ``{name}`` the class's); None: they do
    step_only: ClassVar[str | None] = None

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any,
        hyperparams: dict[str, Any],
        base_kwargs: dict[str, Any],
    ) -> None:
        base_cls = _resolve_base(base_optimizer)
        super().__init__(params, {**hyperparams, **base_kwargs})
        self.base_optimizer: Optimizer = base_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._backup: tuple[list[Tensor], list[Tensor]] | None = None

    # ---- param groups and state are the base optimizer's

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" not in self.__dict__:  # during our own __init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self.base_optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict; its param groups carry the wrapper's hyperparameters."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # load_state_dict replaces the group dicts: share them again (schedulers read these).
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        hyper = {k: v for k, v in self.param_groups[0].items() if k in _keyword_names(type(self))}
        inner = ", ".join(f"{k}={v}" for k, v in hyper.items())
        return f"{type(self).__name__}({inner}, base={type(self.base_optimizer).__name__})"

    # ---- pieces shared by the subclasses

    def _perturbable(self, p: Tensor) -> bool:
        return True

    def _with_grad(self) -> _Groups:
        """(group, params) for every group, keeping the perturbable params that have a gradient."""
        out: _Groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and self._perturbable(p)]
            if params:
                out.append((group, params))
        return out

    @staticmethod
    def _take_grads(groups: _Groups) -> list[list[Tensor]]:
        """Detach the current gradients from the params (no copy); missing ones become zeros."""
        out = []
        for _, params in groups:
            grads = []
            for p in params:
                grads.append(p.grad if p.grad is not None else torch.zeros_like(p))
                p.grad = None
            out.append(grads)
        return out

    @staticmethod
    def _grads(groups: _Groups) -> list[list[Tensor]]:
        return [
            [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            for _, params in groups
        ]

    @staticmethod
    def _set_grads(groups: _Groups, grads: list[list[Tensor]]) -> None:
        for (_, params), gs in zip(groups, grads, strict=True):
            for p, g in zip(params, gs, strict=True):
                p.grad = g

    def _save(self, groups: _Groups) -> None:
        params = [p for _, ps in groups for p in ps]
        self._backup = (params, [p.detach().clone() for p in params])

    def _reset(self) -> None:
        """Copy the saved weights back (keep them saved)."""
        if self._backup is not None:
            params, saved = self._backup
            if params:
                torch._foreach_copy_(params, saved)

    def _restore(self) -> None:
        """Copy the saved weights back and forget them."""
        self._reset()
        self._backup = None

    @staticmethod
    def _move(groups: _Groups, steps: list[list[Tensor]]) -> None:
        for (_, params), e in zip(groups, steps, strict=True):
            torch._foreach_add_(params, e)

    @staticmethod
    def _require_closure(opt: Optimizer, closure: Closure | None) -> Closure:
        if closure is None:
            raise RuntimeError(
                f"{type(opt).__name__}.step needs a closure that zeroes the grads, runs forward + "
                "backward and returns the loss"
            )
        return closure

    # ---- davda54/sam API

    def _refuse_half_steps(self) -> None:
        if self.step_only is not None:
            raise NotImplementedError(f"{self.step_only.format(name=type(self).__name__)}: use step(closure)")

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + ε`` with the (A)SAM step of radius ``rho``."""
        self._refuse_half_steps()
        groups = self._with_grad()
        steps = _ascent(groups, self._grads(groups), "rho")
        self._save(groups)
        self._move(groups, steps)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly and update it with the base optimizer and the current gradients."""
        self._refuse_half_steps()
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        closure = self._require_closure(self, closure)
        loss = _evaluate(closure)
        self.first_step(zero_grad=True)
        try:
            _evaluate(closure)
        except BaseException:
            self._restore()
            raise
        self.second_step()
        return loss
