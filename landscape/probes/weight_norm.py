"""Weight-norm probe: the Frobenius norm of the trainable parameters, in total and per layer.

.. math::

    \\lVert\\theta\\rVert_F = \\Bigl(\\sum_i \\theta_i^2\\Bigr)^{1/2}, \\qquad
    \\lVert\\theta_\\ell\\rVert_F \\text{ over the parameters of the module } \\ell \\text{ owns},

with parameters taken as the model owns them (a tied tensor once, in the block of its first
owner; :func:`landscape.params.layer_blocks`), in float64. It is the offline counterpart of the
``weight_norm`` training monitor, and reads no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.params import layer_blocks, select_parameters
from landscape.probes.base import ProbeContext, register_probe, setting


@dataclass(frozen=True)
class WeightNormConfig:
    """Settings of the weight-norm probe (recorded beside its results)."""

    per_layer: bool = setting(True, "Also the norm of each layer's parameters.")


def weight_norms(model: nn.Module, per_layer: bool = True) -> dict[str, Any]:
    """``weight_norm`` and ``num_params`` of ``model``'s trainable parameters and, with
    ``per_layer``, ``layers/{names, norm, num_params}`` (one entry per owning module)."""
    layout = select_parameters(model)
    params = dict(model.named_parameters())
    squares = {n: float(params[n].detach().double().pow(2).sum()) for n in layout.names}
    out: dict[str, Any] = {"weight_norm": float(np.sqrt(sum(squares.values()))), "num_params": layout.numel}
    if per_layer:
        blocks = layer_blocks(model, layout)
        out["layers"] = {
            "names": np.array(list(blocks), dtype="S"),
            "norm": np.array([np.sqrt(sum(squares[n] for n in names)) for names in blocks.values()]),
            "num_params": np.array([sum(params[n].numel() for n in names) for names in blocks.values()]),
        }
    return out


@register_probe(
    "weight_norm", WeightNormConfig, summary=("weight_norm",), measures={"weight_norm": "weight_norm"},
    families={"norm-based": ("weight_norm",)},
    cli_help="Frobenius norm of the trainable weights, in total and per layer (no data read).")
def run_weight_norm(ctx: ProbeContext, cfg: WeightNormConfig) -> dict[str, Any]:
    """The weight norms of the checkpoint's model."""
    with torch.no_grad():
        out = weight_norms(ctx.model, cfg.per_layer)
    ctx.advance(1)
    return out
