r"""The norm-based measures (29–42) of the weight matrices and the path norm (44) of the model
(the package docstring, "Norms")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.kernel import logits_at
from landscape.params import model_state, select_parameters
from landscape.probes.measures.weights import F64, _fold, _fold_pairs, _key


def _logsum(values: torch.Tensor) -> float:
    return float(torch.log(values).sum())


def norm_measures(weights: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None,
                  margin: float) -> dict[str, Any]:
    """The norm-based measures (29–42) of the matrices ``weights`` (init-based ones NaN without
    ``init``) and per-layer norms; ``margin`` is γ (its absolute value is used)."""
    mats = list(weights.values())
    d = len(mats)
    spec = torch.stack([torch.linalg.matrix_norm(w, ord=2) for w in mats]) ** 2
    fro = torch.stack([torch.linalg.matrix_norm(w, ord="fro") for w in mats]) ** 2
    log_prod_spec, log_prod_fro = _logsum(spec), _logsum(fro)
    log_m2 = 2 * math.log(abs(margin)) if margin != 0 and math.isfinite(margin) else math.nan
    out: dict[str, Any] = {
        "num_weights": sum(w.numel() for w in mats),
        "num_layers": d,
        "log_prod_spectral": log_prod_spec,
        "log_prod_spectral_over_margin": log_prod_spec - log_m2,
        "log_sum_spectral": math.log(d) + log_prod_spec / d,
        "log_sum_spectral_over_margin": math.log(d) + (log_prod_spec - log_m2) / d,
        "fro_over_spectral": float((fro / spec).sum()),
        "log_spec_orig_main": log_prod_spec - log_m2 + _log(float((fro / spec).sum())),
        "log_prod_frobenius": log_prod_fro,
        "log_prod_frobenius_over_margin": log_prod_fro - log_m2,
        "log_sum_frobenius": math.log(d) + log_prod_fro / d,
        "log_sum_frobenius_over_margin": math.log(d) + (log_prod_fro - log_m2) / d,
        "param_norm": float(fro.sum()),
        "layers": np.array(list(weights), dtype=object),
        "spectral_norms": spec.sqrt().cpu().numpy(),
        "frobenius_norms": fro.sqrt().cpu().numpy(),
    }
    if init is None:
        out.update(dist_init_frobenius=math.nan, dist_init_spectral=math.nan, log_spec_init_main=math.nan)
        return out
    diffs = [w - init[name].to(w.device) for name, w in weights.items()]
    dfro = torch.stack([torch.linalg.matrix_norm(x, ord="fro") for x in diffs]) ** 2
    dspec = torch.stack([torch.linalg.matrix_norm(x, ord=2) for x in diffs]) ** 2
    out.update(dist_init_frobenius=float(dfro.sum()), dist_init_spectral=float(dspec.sum()),
               log_spec_init_main=log_prod_spec - log_m2 + _log(float((dfro / spec).sum())),
               dist_init_frobenius_layers=dfro.sqrt().cpu().numpy(),
               dist_init_spectral_layers=dspec.sqrt().cpu().numpy())
    return out


def path_norm(model: nn.Module, sample: torch.Tensor, *, fold_batchnorm: bool = True,
              output_fn=None, device: torch.device | None = None) -> float:
    """The sum of the outputs at the all-ones input shaped like ``sample`` (one input, no batch
    dimension needed: ``sample[:1]``), every trainable parameter squared (:mod:`landscape.probes.measures`)."""
    dev = device if device is not None else next(model.parameters()).device
    state = model_state(model, F64, dev)
    trainable = set(select_parameters(model).names)
    for name in trainable:
        state[name] = state[name] ** 2
    if fold_batchnorm:
        modules = dict(model.named_modules())
        raw = model_state(model, F64, dev)
        for layer, bn in _fold_pairs(model).items():
            eps = modules[bn].eps
            w, bias = _fold(raw, layer, bn, eps)
            state[_key(layer, "weight")] = w**2
            if modules[layer].bias is not None:
                state[_key(layer, "bias")] = torch.zeros_like(state[_key(layer, "bias")])
            state[_key(bn, "weight")] = torch.ones_like(bias)
            state[_key(bn, "bias")] = bias**2 / math.sqrt(1 + eps)  # (z + b²)/√(1+ε), the reference's form
            state[_key(bn, "running_mean")] = torch.zeros_like(bias)
            state[_key(bn, "running_var")] = torch.ones_like(bias)
    ones = torch.ones_like(sample[:1], dtype=F64, device=dev)
    with torch.no_grad():
        z = logits_at(model, state, ones, bn_mode="eval", output_fn=output_fn)
    return float(z.to(F64).sum())


def _log(v: float) -> float:
    """``log v``; −inf at 0 (a checkpoint at its own initialization), NaN below (or NaN in)."""
    return math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)
