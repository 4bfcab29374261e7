"""Optimizers: SGD, Adam/AdamW and the sharpness-aware family behind one registry.

The step contract (the trainer relies on it):

* every optimizer is a :class:`torch.optim.Optimizer` and is driven by
  ``loss = optimizer.step(closure)``;
* ``closure()`` zeroes the gradients, runs forward + backward at the *current*
  parameters and returns the detached loss;
* the sharpness-aware optimizers call the closure several times per step
  (``closure_calls`` on each class); the first call is always at the
  unperturbed weights ``w`` and ``step`` returns the loss of that first call;
* BatchNorm running statistics are the closure's business: wrap it with
  :func:`bn_first_pass_only` so that only the first call updates them.

Sharpness-aware optimizers wrap a base optimizer (:class:`SGD`, :class:`Adam`,
:class:`AdamW`) built on the *same* ``param_groups`` dictionaries (as in
davda54/sam), so a learning-rate scheduler attached to the wrapper changes the
base optimizer's learning rate, and weight decay is applied once per step, by
the base optimizer. Their hyperparameters (``rho``, ``alpha``, …) live in the
param groups, so they round-trip through ``state_dict()``; the wrapper keeps no
other state between steps (its ``state_dict`` is the base optimizer's).
Perturbations are undone by copying the saved weights back, never by
subtracting ``ε``.

Adaptive (ASAM-style) perturbations use the elementwise operator
``T_w = |w| + η`` on *every* perturbed parameter (biases and normalization
parameters included).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.optim import Optimizer

from landscape.errors import ConfigError
from landscape.registry import Registry

__all__ = [
    "ADAPTIVE_ETA",
    "ASAM",
    "GAM",
    "GNR",
    "OPTIMIZERS",
    "SAM",
    "SAMON",
    "SGD",
    "Adam",
    "AdamW",
    "SharpnessAware",
    "bn_first_pass_only",
    "build_optimizer",
    "normalization_parameters",
    "optimizer_names",
]

Closure = Callable[[], Tensor]

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")

#: default η of the adaptive operator ``T_w = |w| + η`` (SamsungLabs/ASAM).
ADAPTIVE_ETA = 0.01

# Names the builder sets itself; never accepted in ``**params``.
_BUILDER_ARGS = ("lr", "weight_decay", "decoupled_weight_decay")
# Constructor arguments that are not hyperparameters.
_STRUCTURAL_ARGS = ("self", "params", "base_optimizer", "model", "norm_params")
_BASES = ("sgd", "adam", "adamw")


# --------------------------------------------------------------------------- BatchNorm


def bn_first_pass_only(model: nn.Module, closure: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """Wrap closure: first call normal; later calls with every _BatchNorm's momentum set to 0 (restored after each call).

    ``num_batches_tracked`` is restored after the later calls as well, so the
    BatchNorm buffers after a multi-pass step equal those after one plain
    forward pass on the same batch (this also holds for ``momentum=None``,
    the cumulative average). The counter of calls belongs to the returned
    closure: wrap a fresh closure for every step.
    """
    calls = 0

    def wrapped() -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return closure()
        saved = []
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                tracked = module.num_batches_tracked
                saved.append(
                    (module, module.momentum, None if tracked is None else tracked.clone())
                )
                module.momentum = 0.0
        try:
            return closure()
        finally:
            for module, momentum, tracked in saved:
                module.momentum = momentum
                if tracked is not None and module.num_batches_tracked is not None:
                    module.num_batches_tracked.copy_(tracked)

    return wrapped


def normalization_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights and biases of the normalization layers of ``model``.

    BatchNorm / SyncBatchNorm / InstanceNorm (affine), LayerNorm, GroupNorm
    and RMSNorm (where torch has it).
    """
    kinds: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm)
    if hasattr(nn, "RMSNorm"):
        kinds = (*kinds, nn.RMSNorm)
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, kinds):
            for p in module.parameters(recurse=False):
                found.setdefault(id(p), p)
    return list(found.values())


# --------------------------------------------------------------------------- validation


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"optimizer parameter {name} must be a number, got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> None:
    if not _number(name, value) > 0:
        raise ConfigError(f"invalid {name}={value!r}: must be > 0")


def _check_nonnegative(name: str, value: Any) -> None:
    if not _number(name, value) >= 0:
        raise ConfigError(f"invalid {name}={value!r}: must be ≥ 0")


def _check_unit(name: str, value: Any, *, closed: bool) -> None:
    v = _number(name, value)
    ok = 0 <= v <= 1 if closed else 0 <= v < 1
    if not ok:
        raise ConfigError(f"invalid {name}={value!r}: must be in [0, 1{']' if closed else ')'}")


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ConfigError(f"invalid betas={betas!r}: must be two numbers in [0, 1)")
    _check_unit("betas[0]", betas[0], closed=False)
    _check_unit("betas[1]", betas[1], closed=False)
    return float(betas[0]), float(betas[1])


# --------------------------------------------------------------------------- base optimizers


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


# --------------------------------------------------------------------------- helpers

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


def _keyword_names(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [
        name
        for name, p in sig.parameters.items()
        if name not in _STRUCTURAL_ARGS
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]


def _resolve_base(base_optimizer: Any) -> Callable[..., Optimizer]:
    if base_optimizer is None:
        return SGD
    if isinstance(base_optimizer, str):
        key = OPTIMIZERS.canonical(base_optimizer)
        if key not in _BASES:
            raise ConfigError(
                f"base optimizer must be one of {', '.join(_BASES)}, got {base_optimizer!r}"
            )
        return OPTIMIZERS[key]
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, SharpnessAware):
        raise ConfigError(
            f"base optimizer cannot itself be sharpness-aware: {base_optimizer.__name__}"
        )
    return base_optimizer


# --------------------------------------------------------------------------- sharpness-aware family


class SharpnessAware(Optimizer):
    """Base class: a wrapper around a base optimizer built on the same param groups.

    API of davda54/sam: ``first_step`` (save ``w``, move to ``w + ε``),
    ``second_step`` (restore ``w`` exactly, run the base optimizer) and
    ``step(closure)``, which does both around the closure calls. Subclasses
    change the perturbation or the combination of gradients.
    """

    closure_calls: ClassVar[int] = 2

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

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + ε`` with the (A)SAM step of radius ``rho``."""
        groups = self._with_grad()
        steps = _ascent(groups, self._grads(groups), "rho")
        self._save(groups)
        self._move(groups, steps)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly and update it with the base optimizer and the current gradients."""
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


@OPTIMIZERS.register("sam")
class SAM(SharpnessAware):
    r"""Sharpness-aware minimization (Foret et al. 2021); ASAM with ``adaptive=True``.

    Two closure calls per step:

    .. math::
        g = ∇L(w),\quad ε = ρ\,\frac{T_w^2 g}{\lVert T_w g\rVert_2},\quad
        w ← \mathrm{base}(w, ∇L(w + ε)),

    with ``T_w = I`` (SAM) or ``T_w = diag(|w| + η)`` (``adaptive=True``,
    Kwon et al. 2021; ``eta=0`` gives davda54's ``adaptive``). The norm is
    global over all parameters with a gradient. ``ε = 0`` when ``g = 0``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        _check_nonnegative("eta", eta)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "adaptive": bool(adaptive), "eta": eta},
            base_kwargs,
        )


@OPTIMIZERS.register("asam")
class ASAM(SAM):
    r"""Adaptive SAM (Kwon et al. 2021): :class:`SAM` with ``adaptive=True`` and ``rho=2.0``.

    .. math::
        ε = ρ\,\frac{T_w^2 g}{\lVert T_w g\rVert_2},\qquad T_w = \mathrm{diag}(|w| + η),\ η = 0.01.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        rho: float = 2.0,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, adaptive=True, eta=eta, **base_kwargs)


@OPTIMIZERS.register("sam_on", "samon")
class SAMON(SAM):
    r"""SAM-ON (Mueller et al. 2023): the (A)SAM perturbation on normalization parameters only.

    .. math::
        ε_N = ρ\,\frac{T^2 g_N}{\lVert T g_N\rVert_2},\quad ε_{\bar N} = 0,\quad
        w ← \mathrm{base}(w, ∇L(w + ε)),

    where ``N`` are the weights and biases of the normalization layers
    (BatchNorm, LayerNorm, GroupNorm, …) and the norm runs over ``N`` only, as
    in mueller-mp/SAM-ON (``only_bn``). Every parameter is still updated by
    the base optimizer with the gradient at ``w + ε``. Two closure calls.

    Pass the ``model`` (its normalization parameters are found by module
    type, not by name) or the ``norm_params`` themselves. Defaults follow the
    reference's ``train.py``: ``rho=0.5``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        model: nn.Module | None = None,
        norm_params: Iterable[Tensor] | None = None,
        rho: float = 0.5,
        adaptive: bool = False,
        eta: float = ADAPTIVE_ETA,
        **base_kwargs: Any,
    ) -> None:
        if (model is None) == (norm_params is None):
            raise ConfigError("sam_on needs exactly one of model= or norm_params=")
        norm = list(norm_params) if norm_params is not None else normalization_parameters(model)  # type: ignore[arg-type]
        if not norm:
            raise ConfigError(
                "sam_on perturbs normalization layers only, and the model has none "
                "(BatchNorm/LayerNorm/GroupNorm with affine parameters); use sam or asam"
            )
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta, **base_kwargs)
        optimized = {id(p) for group in self.param_groups for p in group["params"]}
        self._norm_ids = {id(p) for p in norm if id(p) in optimized}
        if not self._norm_ids:
            raise ConfigError("sam_on: none of the normalization parameters is being optimized")

    def _perturbable(self, p: Tensor) -> bool:
        return id(p) in self._norm_ids


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

    def first_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError("GAM takes four gradient evaluations: use step(closure)")

    def second_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError("GAM takes four gradient evaluations: use step(closure)")

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


# --------------------------------------------------------------------------- builder


def optimizer_names() -> list[str]:
    return OPTIMIZERS.names()


def _accepted(cls: type) -> list[str]:
    return [n for n in _keyword_names(cls) if n not in _BUILDER_ARGS]


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    base: str = "sgd",
    **params: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer over the trainable parameters of ``model``.

    ``base`` (sgd | adam | adamw) is the base optimizer of the sharpness-aware
    family and is ignored by the plain optimizers. ``params`` are split by
    signature between the wrapper (``rho``, ``alpha``, …) and the base
    optimizer (``momentum``, ``nesterov``, ``betas``, …). Weight decay is
    coupled (L2 added to the gradient) unless ``decoupled_weight_decay``;
    ``adamw`` is always decoupled.
    """
    cls = OPTIMIZERS[name]
    canonical = OPTIMIZERS.canonical(name)
    _check_positive("lr", lr)
    _check_nonnegative("weight_decay", weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters to optimize")

    if issubclass(cls, SharpnessAware):
        base_key = OPTIMIZERS.canonical(base) if base in OPTIMIZERS else base
        if base_key not in _BASES:
            raise ConfigError(
                f"base optimizer for {canonical} must be one of {', '.join(_BASES)}, got {base!r}"
            )
        base_cls = OPTIMIZERS[base_key]
        own, inner = _accepted(cls), _accepted(base_cls)
    else:
        base_cls, own, inner = cls, [], _accepted(cls)

    unknown = sorted(set(params) - set(own) - set(inner))
    if unknown:
        accepted = sorted(set(own) | set(inner))
        where = f"{canonical} with base {base_key}" if base_cls is not cls else canonical
        raise ConfigError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for optimizer "
            f"{where}; accepted: {', '.join(accepted) or '(none)'}"
        )

    base_sig = _keyword_names(base_cls)
    base_kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if "decoupled_weight_decay" in base_sig:
        base_kwargs["decoupled_weight_decay"] = bool(decoupled_weight_decay)
    base_kwargs.update({k: v for k, v in params.items() if k in inner})
    if "betas" in base_kwargs and isinstance(base_kwargs["betas"], list):
        base_kwargs["betas"] = tuple(base_kwargs["betas"])

    try:
        if base_cls is cls:
            return cls(trainable, **base_kwargs)
        own_kwargs = {k: v for k, v in params.items() if k in own}
        if "model" in inspect.signature(cls.__init__).parameters:
            own_kwargs["model"] = model
        return cls(trainable, base_cls, **own_kwargs, **base_kwargs)
    except (ValueError, TypeError) as exc:  # torch's own checks
        raise ConfigError(f"optimizer {canonical}: {exc}") from exc
