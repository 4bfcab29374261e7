r"""The weight matrices :math:`W_1,\dots,W_d` of the measures: the model's Linear and Conv layers
as float64 ``[out, −1]`` matrices, a BatchNorm that directly follows a layer folded into it
(the package docstring, "Weight matrices")."""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
F64 = torch.float64


def _fold_pairs(model: nn.Module) -> dict[str, str]:
    """``{layer name: BatchNorm name}`` for each BatchNorm that directly follows a weight layer in
    module registration order with as many features as the layer has outputs."""
    pairs: dict[str, str] = {}
    prev: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            prev = (name, m)
        elif isinstance(m, _BN):
            if (prev is not None and m.affine and m.track_running_stats and prev[0] not in pairs
                    and prev[1].weight.shape[0] == m.num_features):
                pairs[prev[0]] = name
            prev = None
        elif not list(m.children()) and not isinstance(m, nn.Identity):
            prev = None  # any other leaf (an activation, dropout, …) breaks the pair
    return pairs


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _fold(tensors: dict[str, torch.Tensor], layer: str, bn: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(diag(s)·W, β + s(b − μ))`` of ``layer`` followed by BatchNorm ``bn``, from ``tensors``."""
    w = tensors[_key(layer, "weight")].to(F64)
    b = tensors.get(_key(layer, "bias"))
    b = torch.zeros(w.shape[0], dtype=F64, device=w.device) if b is None else b.to(F64)
    scale = tensors[_key(bn, "weight")].to(F64) / torch.sqrt(tensors[_key(bn, "running_var")].to(F64) + eps)
    w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    bias = tensors[_key(bn, "bias")].to(F64) + scale * (b - tensors[_key(bn, "running_mean")].to(F64))
    return w, bias


def weight_matrices(model: nn.Module, tensors: dict[str, torch.Tensor] | None = None,
                    fold_batchnorm: bool = True) -> dict[str, torch.Tensor]:
    """``{layer name: W}`` of the model's Linear/Conv layers as float64 matrices ``[out, −1]``,
    BatchNorm folded in where it directly follows; ``tensors`` (a state dict of the same model,
    e.g. the initialization) in place of the model's own."""
    state = tensors if tensors is not None else {k: v.detach() for k, v in model.state_dict().items()}
    pairs = _fold_pairs(model) if fold_batchnorm else {}
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, _BN)}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not isinstance(m, WEIGHT_LAYERS) or id(m.weight) in seen:
            continue
        seen.add(id(m.weight))
        if name in pairs:
            w, _ = _fold(state, name, pairs[name], eps[pairs[name]])
        else:
            w = state[_key(name, "weight")].to(F64)
        out[name] = w.reshape(w.shape[0], -1)
    return out
