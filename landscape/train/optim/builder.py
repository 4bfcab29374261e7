"""``build_optimizer``: a registered optimizer over a model's trainable parameters, by name.

Parameters are split by signature between a wrapper and its base optimizer; ``no_decay_bias_norm``
puts biases and normalization parameters in a second parameter group without weight decay.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import ConfigError
from landscape.train.optim.batchnorm import normalization_parameters
from landscape.train.optim.registry import OPTIMIZERS, _keyword_names
from landscape.train.optim.sharpness_aware import SharpnessAware, _base_names
from landscape.train.optim.validation import _check_nonnegative, _check_positive

# Names the builder sets itself; never accepted in ``**params``.
_BUILDER_ARGS = ("lr", "weight_decay", "decoupled_weight_decay")


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
