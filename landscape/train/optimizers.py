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
  :func:`bn_first_pass_only` so that only the first call updates them;
* an optimizer with an ``auxiliary_loss(model, inputs, logits, indices, epoch)`` method
  (:class:`SAF`, :class:`MESA`) wants that term added to the batch loss inside the closure,
  before ``backward``.

Sharpness-aware optimizers wrap a base optimizer (:class:`SGD`, :class:`Adam`,
:class:`AdamW`) built on the *same* ``param_groups`` dictionaries (as in
davda54/sam), so a learning-rate scheduler attached to the wrapper changes the
base optimizer's learning rate, and weight decay is applied once per step, by
the base optimizer. Their hyperparameters (``rho``, ``alpha``, …) live in the
param groups, so they round-trip through ``state_dict()``; a wrapper's own state
between steps (Friendly-SAM's gradient EMA, FSAM's Fisher mask, SAF's output memory,
MESA's weight EMA) is added to the base optimizer's ``state_dict`` under its own keys.
Perturbations are undone by copying the saved weights back, never by
subtracting ``ε``.

Adaptive (ASAM-style) perturbations use the elementwise operator
``T_w = |w| + η`` on *every* perturbed parameter (biases and normalization
parameters included).
"""

from __future__ import annotations

import functools
import inspect
import math
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
    "MESA",
    "SAF",
    "EntropySGD",
    "FisherSAM",
    "FriendlySAM",
    "OPTIMIZERS",
    "SAM",
    "SAMON",
    "SGD",
    "Adam",
    "AdamW",
    "PerpAdam",
    "PerpAdamW",
    "PerpSGD",
    "SharpnessAware",
    "bn_first_pass_only",
    "build_optimizer",
    "no_decay_parameters",
    "normalization_parameters",
    "optimizer_names",
    "orthogonal_gradient",
    "orthogonalized",
]

Closure = Callable[[], Tensor]

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")

#: default η of the adaptive operator ``T_w = |w| + η`` (SamsungLabs/ASAM).
ADAPTIVE_ETA = 0.01

# Names the builder sets itself; never accepted in ``**params``.
_BUILDER_ARGS = ("lr", "weight_decay", "decoupled_weight_decay")
# Constructor arguments that are not hyperparameters.
_STRUCTURAL_ARGS = ("self", "params", "base_optimizer", "model", "norm_params")

def _base_names() -> list[str]:
    """Registered optimizers that can be the base of a wrapper (everything but the wrappers)."""
    return [n for n, c in OPTIMIZERS.items() if not issubclass(c, SharpnessAware)]


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


# --------------------------------------------------------------------------- ⊥Grad


@torch.no_grad()
def orthogonal_gradient(w: Tensor, g: Tensor, *, rescale: bool = True) -> Tensor:
    r"""⊥Grad of one tensor (Prieto et al. 2025): the part of ``g`` orthogonal to ``w``.

    .. math::
        g_\perp = g - \frac{\langle w, g\rangle}{\langle w, w\rangle}\, w,
        \qquad g_\perp ← g_\perp\,\frac{\lVert g\rVert}{\lVert g_\perp\rVert}
        \ \text{(if rescale)}

    over the whole tensor flattened. The rescaling to ``‖g‖`` is the authors' ``orthograd.py``
    (LucasPrietoAl/grokking-at-the-edge-of-numerical-stability); the paper's formula is
    ``rescale=False``. ``w = 0`` leaves ``g`` as it is; ``g_⊥ = 0`` stays 0. Computed in at
    least float32, returned in ``g``'s dtype.
    """
    dtype = torch.promote_types(g.dtype, torch.float32)
    wf, gf = w.detach().reshape(-1).to(dtype), g.reshape(-1).to(dtype)
    ww = torch.dot(wf, wf)
    coef = _safe_ratio(torch.dot(wf, gf), ww)
    out = gf - coef * wf
    if rescale:
        out = out * _safe_ratio(torch.linalg.vector_norm(gf), torch.linalg.vector_norm(out))
    return out.reshape(g.shape).to(g.dtype)


def _unhooked(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` without torch's step-hook wrapper (torch wraps ``step`` of each class it builds)."""
    while getattr(func, "hooked", False) and hasattr(func, "__wrapped__"):
        func = func.__wrapped__  # type: ignore[attr-defined]
    return func


class _Orthogonal:
    """Mixin: replace every gradient by its ⊥Grad (per tensor) before the base class's step."""

    param_groups: list[dict[str, Any]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = orthogonal_gradient(p, p.grad, rescale=group["rescale"])
        base = next(c for c in type(self).__mro__[1:] if "step" in c.__dict__ and c is not _Orthogonal)
        _unhooked(base.__dict__["step"])(self)
        return loss


_ORTHOGONALIZED: dict[type, type] = {}


def orthogonalized(base_cls: type[Optimizer]) -> type[Optimizer]:
    r"""The ⊥Grad version of any optimizer class: same signature plus ``rescale=True``.

    Its ``step`` replaces each parameter tensor's gradient ``g`` by
    :func:`orthogonal_gradient` ``(w, g)`` and then runs ``base_cls``'s own update, so weight
    decay, momentum and Adam's moments act on ``g_⊥`` exactly as on a plain gradient (coupled
    L2 decay is added *after* the projection, by the base). One closure call per step.
    """
    if base_cls in _ORTHOGONALIZED:
        return _ORTHOGONALIZED[base_cls]
    if issubclass(base_cls, SharpnessAware):
        raise ConfigError(f"⊥Grad wraps a plain optimizer, not {base_cls.__name__}")

    def __init__(self: Any, params: Iterable[Any], *args: Any, rescale: bool = True, **kwargs: Any) -> None:
        base_cls.__init__(self, params, *args, **kwargs)
        self.defaults["rescale"] = bool(rescale)
        for group in self.param_groups:
            group.setdefault("rescale", bool(rescale))

    sig = inspect.signature(base_cls.__init__)
    extra = inspect.Parameter("rescale", inspect.Parameter.KEYWORD_ONLY, default=True)
    plain = [q for q in sig.parameters.values() if q.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [q for q in sig.parameters.values() if q.kind is inspect.Parameter.VAR_KEYWORD]
    __init__.__signature__ = sig.replace(parameters=[*plain, extra, *rest])  # type: ignore[attr-defined]
    name = f"Perp{base_cls.__name__}"
    doc = f"⊥Grad (Prieto et al. 2025) around :class:`{base_cls.__name__}`; see :func:`orthogonalized`."
    cls = type(name, (_Orthogonal, base_cls), {"__init__": __init__, "__doc__": doc,
                                                 "__module__": __name__, "__qualname__": name})
    _ORTHOGONALIZED[base_cls] = cls
    return cls



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

    def first_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError("Entropy-SGD takes L gradient evaluations: use step(closure)")

    def second_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError("Entropy-SGD takes L gradient evaluations: use step(closure)")

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


# --------------------------------------------------------------------------- SAF / MESA


def trajectory_kl(z_now: Tensor, z_ref: Tensor, tau: float) -> Tensor:
    r"""Per-sample ``τ² · KL(softmax(z_ref/τ) ‖ softmax(z_now/τ))`` over the last dimension.

    .. math::
        τ^2 \sum_c p_c\,(\log p_c − \log q_c),\quad p = \mathrm{softmax}(z_{ref}/τ),\
        q = \mathrm{softmax}(z_{now}/τ),

    the reference's ``F.kl_div(log q, p).sum(-1) · τ²`` (AngusDujw/SAF). ``z_ref`` is a fixed
    target (detached); the gradient flows through ``z_now``. Shape ``z_now.shape[:-1]``.
    """
    log_q = torch.log_softmax(z_now / tau, dim=-1)
    log_p = torch.log_softmax(z_ref.detach().to(z_now.dtype) / tau, dim=-1)
    return (tau * tau) * (log_p.exp() * (log_p - log_q)).sum(-1)


def _check_epoch_window(start_epoch: Any, end_epoch: Any) -> None:
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) or start_epoch < -1:
        raise ConfigError(f"invalid start_epoch={start_epoch!r}: must be an integer ≥ -1 (epochs, 0-based)")
    if end_epoch is not None and (
        isinstance(end_epoch, bool) or not isinstance(end_epoch, numbers.Integral) or end_epoch <= start_epoch
    ):
        raise ConfigError(f"invalid end_epoch={end_epoch!r}: must be an integer > start_epoch, or null")


class _TrajectoryLoss(SharpnessAware):
    """Base of SAF and MESA: a loss term instead of extra gradient evaluations.

    The trainer calls ``auxiliary_loss(model, inputs, logits, indices, epoch)`` inside its
    closure and adds the result to the batch loss before ``backward``; ``step`` then runs the
    base optimizer once (one closure call). The term is active for the 0-based epochs ``e``
    with ``start_epoch < e < end_epoch`` (the reference's ``epoch > kl_start_epoch and
    epoch < kl_end_epoch``; ``end_epoch=None``: no end). In a loop of your own: add
    ``optimizer.auxiliary_loss(...)`` to your loss the same way.
    """

    closure_calls: ClassVar[int] = 1

    def active(self, epoch: int) -> bool:
        group = self.param_groups[0]
        end = group["end_epoch"]
        return epoch > group["start_epoch"] and (end is None or epoch < end) and group["lam"] > 0

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        raise NotImplementedError

    def first_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError(f"{type(self).__name__} adds a loss term: use step(closure)")

    def second_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError(f"{type(self).__name__} adds a loss term: use step(closure)")

    def _after_step(self) -> None:
        """What changes once the base optimizer has updated the weights."""

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        closure = self._require_closure(self, closure)
        loss = _evaluate(closure)
        self.base_optimizer.step()
        self._after_step()
        return loss

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device


@OPTIMIZERS.register("saf")
class SAF(_TrajectoryLoss):
    r"""Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan & Zhou, NeurIPS 2022;
    AngusDujw/SAF): the trajectory loss against the outputs recorded ``E`` epochs earlier.

    .. math::
        L = L_B(w) + λ\,\frac{1}{|B'|}\sum_{i ∈ B'} τ^2\,
            \mathrm{KL}\big(\mathrm{softmax}(z_i^{(e−E)}/τ)\ \big\|\ \mathrm{softmax}(z_i(w)/τ)\big),

    where ``z_i^{(e−E)}`` are the outputs the model gave sample ``i`` (by its index in the
    training set) in epoch ``e − E`` and ``B'`` the samples of the batch that have such a
    record (all of them, except after an epoch that skipped a sample). Every call records the
    current outputs (detached), in a ring of ``E + 1`` epochs: memory
    ``(E + 1) · N · (outputs per sample)`` numbers, allocated on the first call and grown with
    the largest index seen. Defaults: the reference's README and ImageNet script ``lam=0.3``,
    ``tau=5``, ``start_epoch=5``; ``E=3`` (its ``--minus_epoch`` default; the script uses 2).
    The memory and its epoch tags are saved in ``state_dict()`` (``saf_memory``,
    ``saf_epochs``), so a resumed run is bit-identical. The training loss the trainer logs is
    the task loss alone, without the λ·KL term.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        lam: float = 0.3,
        tau: float = 5.0,
        E: int = 3,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("lam", lam)
        _check_positive("tau", tau)
        if isinstance(E, bool) or not isinstance(E, numbers.Integral) or E < 1:
            raise ConfigError(f"invalid E={E!r}: how many epochs back, an integer ≥ 1")
        _check_epoch_window(start_epoch, end_epoch)
        hyper = {"lam": lam, "tau": float(tau), "E": int(E), "start_epoch": int(start_epoch),
                 "end_epoch": None if end_epoch is None else int(end_epoch)}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        self._memory: Tensor | None = None  # [E + 1, N, *output shape]
        self._epochs: Tensor | None = None  # [E + 1, N]: the epoch each record is from, -1 = none

    def _room(self, indices: Tensor, logits: Tensor) -> None:
        """Allocate (or grow) the memory so that every index of the batch has a row."""
        slots, shape = int(self.param_groups[0]["E"]) + 1, tuple(logits.shape[1:])
        if self._memory is not None and tuple(self._memory.shape[2:]) != shape:
            raise ConfigError(
                f"saf records {tuple(self._memory.shape[2:])} outputs per sample, got {shape}: "
                "the model's output shape must stay the same during training"
            )
        n = int(indices.max()) + 1 if indices.numel() else 0
        have = 0 if self._memory is None else self._memory.shape[1]
        if n <= have:
            return
        memory = logits.new_zeros((slots, n, *shape))
        epochs = torch.full((slots, n), -1, dtype=torch.long, device=logits.device)
        if self._memory is not None and self._epochs is not None:
            memory[:, :have] = self._memory
            epochs[:, :have] = self._epochs
        self._memory, self._epochs = memory, epochs

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        """``λ`` times the mean trajectory KL of the batch (0 outside the active epochs); records the outputs."""
        group = self.param_groups[0]
        E, epoch = int(group["E"]), int(epoch)
        idx = torch.as_tensor(indices, device=logits.device).long().reshape(-1)
        if idx.numel() != logits.shape[0]:
            raise ConfigError(f"saf needs one sample index per output row, got {idx.numel()} "
                              f"indices for {logits.shape[0]} rows")
        self._room(idx, logits)
        assert self._memory is not None and self._epochs is not None
        term = logits.new_zeros(())
        if self.active(epoch):
            past = (epoch - E) % (E + 1)
            valid = self._epochs[past, idx] == epoch - E
            kl = trajectory_kl(logits, self._memory[past, idx], group["tau"])
            weight = valid.reshape(-1, *([1] * (kl.dim() - 1))).to(kl.dtype)
            count = valid.sum().to(kl.dtype) * (kl.numel() // max(kl.shape[0], 1))
            # no record in the batch: the weighted sum is 0 (clamp, not where: finite gradient)
            term = group["lam"] * (kl * weight).sum() / count.clamp(min=1)
        now = epoch % (E + 1)
        self._memory[now, idx] = logits.detach().to(self._memory.dtype)
        self._epochs[now, idx] = epoch
        return term

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["saf_memory"] = self._memory
        out["saf_epochs"] = self._epochs
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        memory, epochs = state_dict.pop("saf_memory", None), state_dict.pop("saf_epochs", None)
        super().load_state_dict(state_dict)
        device = self._device()
        self._memory = None if memory is None else memory.detach().to(device).clone()
        self._epochs = None if epochs is None else epochs.detach().to(device).clone()


@OPTIMIZERS.register("mesa")
class MESA(_TrajectoryLoss):
    r"""Memory-efficient SAF (Du et al. 2022, same paper and code): the trajectory loss against
    the outputs of an exponential moving average of the model.

    .. math::
        \bar θ ← β\,\bar θ + (1 − β)\,θ \ \text{(after every step)},\qquad
        L = L_B(w) + λ\,\frac{1}{|B|}\sum_{i ∈ B} τ^2\,
            \mathrm{KL}\big(\mathrm{softmax}(f_{\bar θ}(x_i)/τ)\ \big\|\ \mathrm{softmax}(z_i(w)/τ)\big).

    ``θ̄`` holds every parameter and floating-point buffer of ``model`` (BatchNorm running
    statistics included, as timm's ``ModelEmaV2`` that the reference uses) and starts as a copy
    of the model when the optimizer is built. The EMA model is evaluated with
    ``torch.func.functional_call`` on the model in eval mode, without gradient (one extra
    forward pass per active step; no RNG is drawn). Defaults: the reference's README and
    ImageNet script ``lam=0.8``, ``tau=5``, ``start_epoch=5``, and timm's EMA decay
    ``decay=0.9998``. ``θ̄`` is saved in ``state_dict()["mesa_ema"]`` (name → tensor). The
    training loss the trainer logs is the task loss alone, without the λ·KL term.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Any = None,
        *,
        model: nn.Module | None = None,
        lam: float = 0.8,
        tau: float = 5.0,
        decay: float = 0.9998,
        start_epoch: int = 5,
        end_epoch: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        if model is None:
            raise ConfigError("mesa keeps a moving average of the model's weights: pass model=")
        _check_nonnegative("lam", lam)
        _check_positive("tau", tau)
        _check_unit("decay", decay, closed=True)
        _check_epoch_window(start_epoch, end_epoch)
        hyper = {"lam": lam, "tau": float(tau), "decay": float(decay), "start_epoch": int(start_epoch),
                 "end_epoch": None if end_epoch is None else int(end_epoch)}
        super().__init__(params, base_optimizer, hyper, base_kwargs)
        self._model = model
        self._ema: dict[str, Tensor] = {n: t.detach().clone() for n, t in self._tracked().items()}

    def _tracked(self) -> dict[str, Tensor]:
        """The model's parameters and floating-point buffers, by name (shared ones once)."""
        out = dict(self._model.named_parameters())
        out.update({n: b for n, b in self._model.named_buffers() if b.is_floating_point()})
        return out

    @torch.no_grad()
    def _after_step(self) -> None:
        beta = float(self.param_groups[0]["decay"])
        for name, t in self._tracked().items():
            self._ema[name].mul_(beta).add_(t.detach(), alpha=1.0 - beta)

    def ema_outputs(self, model: nn.Module, inputs: Any) -> Tensor:
        """The EMA model's outputs on ``inputs`` (eval mode, no gradient)."""
        from torch.func import functional_call

        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                out = functional_call(model, self._ema, (inputs,), strict=False)
        finally:
            for m, mode in modes:
                m.training = mode
        return out.logits if not isinstance(out, Tensor) and hasattr(out, "logits") else out

    def auxiliary_loss(self, model: nn.Module, inputs: Any, logits: Tensor, indices: Tensor,
                       epoch: int) -> Tensor:
        """``λ`` times the mean KL to the EMA model's outputs (0, and no EMA forward, outside the active epochs)."""
        if not self.active(int(epoch)):
            return logits.new_zeros(())
        group = self.param_groups[0]
        kl = trajectory_kl(logits, self.ema_outputs(model, inputs), group["tau"])
        return group["lam"] * kl.mean()

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.base_optimizer.state_dict())
        out["mesa_ema"] = dict(self._ema)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        ema = state_dict.pop("mesa_ema", None)
        tracked = self._tracked()
        if ema is not None and set(ema) != set(tracked):  # checked before anything is loaded
            raise ConfigError(
                "mesa: the saved moving average is of another model (its tensors are named "
                f"differently: {', '.join(sorted(set(ema) ^ set(tracked))[:5])}); resume with the same model"
            )
        super().load_state_dict(state_dict)
        if ema is None:
            return
        self._ema = {n: ema[n].detach().to(device=t.device, dtype=t.dtype).clone() for n, t in tracked.items()}


# ⊥Grad around the base optimizers (registered here: orthogonalized() needs SharpnessAware).
PerpSGD = OPTIMIZERS.register("perp_sgd", "orthograd_sgd")(orthogonalized(SGD))
PerpAdam = OPTIMIZERS.register("perp_adam", "orthograd_adam")(orthogonalized(Adam))
PerpAdamW = OPTIMIZERS.register("perp_adamw", "orthograd_adamw", "orthograd")(orthogonalized(AdamW))


# --------------------------------------------------------------------------- builder


def optimizer_names() -> list[str]:
    return OPTIMIZERS.names()


def _accepted(cls: type) -> list[str]:
    return [n for n in _keyword_names(cls) if n not in _BUILDER_ARGS]


def no_decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Biases and normalization parameters of ``model``: those weight-decay exclusion spares.

    A bias is a parameter registered under the name ``bias`` (``Linear``, ``Conv*``,
    attention projections, …); normalization parameters are found by module type
    (:func:`normalization_parameters`). Shared parameters are listed once.
    """
    found: dict[int, nn.Parameter] = {id(p): p for p in normalization_parameters(model)}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias" or pname.endswith("_bias"):
                found.setdefault(id(p), p)
    return list(found.values())


def _param_groups(model: nn.Module, trainable: list[Tensor], exclude: bool) -> list[Any]:
    """The trainable parameters, or two groups (decay, no decay) with ``weight_decay=0`` on the second."""
    if not exclude:
        return trainable
    spared = {id(p) for p in no_decay_parameters(model)}
    decay = [p for p in trainable if id(p) not in spared]
    rest = [p for p in trainable if id(p) in spared]
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    base: str = "sgd",
    no_decay_bias_norm: bool = False,
    **params: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer over the trainable parameters of ``model``.

    ``base`` (sgd | adam | adamw) is the base optimizer of the sharpness-aware
    family and is ignored by the plain optimizers. ``params`` are split by
    signature between the wrapper (``rho``, ``alpha``, …) and the base
    optimizer (``momentum``, ``nesterov``, ``betas``, …). Weight decay is
    coupled (L2 added to the gradient) unless ``decoupled_weight_decay``;
    ``adamw`` is always decoupled. ``base`` may be any registered optimizer that is not
    itself a wrapper (e.g. ``perp_adamw``).

    ``no_decay_bias_norm=True`` (``--optimizer-param no_decay_bias_norm=true``) puts the
    biases and normalization parameters (:func:`no_decay_parameters`) in a second parameter
    group with ``weight_decay = 0``; the first group keeps ``weight_decay``.
    """
    cls = OPTIMIZERS[name]
    canonical = OPTIMIZERS.canonical(name)
    _check_positive("lr", lr)
    _check_nonnegative("weight_decay", weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters to optimize")
    if not isinstance(no_decay_bias_norm, bool):
        raise ConfigError(f"no_decay_bias_norm must be true or false, got {no_decay_bias_norm!r}")
    trainable = _param_groups(model, trainable, no_decay_bias_norm)  # type: ignore[assignment]

    if issubclass(cls, SharpnessAware):
        base_key = OPTIMIZERS.canonical(base) if base in OPTIMIZERS else base
        if base_key not in _base_names():
            raise ConfigError(
                f"base optimizer for {canonical} must be one of {', '.join(_base_names())}, "
                f"got {base!r}"
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
