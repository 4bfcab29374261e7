"""⊥Grad (Prieto et al. 2025): any plain optimizer on the gradient part orthogonal to the weights.

:func:`orthogonalized` builds the ⊥Grad class of a base optimizer; ``perp_sgd``, ``perp_adam``
and ``perp_adamw`` are registered here, after the base optimizers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from landscape.errors import ConfigError
from landscape.train.optim._ops import _safe_ratio, _unhooked
from landscape.train.optim.base import SGD, Adam, AdamW
from landscape.train.optim.registry import OPTIMIZERS
from landscape.train.optim.sharpness_aware import SharpnessAware


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


# ⊥Grad around the base optimizers.
PerpSGD = OPTIMIZERS.register("perp_sgd", "orthograd_sgd")(orthogonalized(SGD))
PerpAdam = OPTIMIZERS.register("perp_adam", "orthograd_adam")(orthogonalized(Adam))
PerpAdamW = OPTIMIZERS.register("perp_adamw", "orthograd_adamw", "orthograd")(orthogonalized(AdamW))
