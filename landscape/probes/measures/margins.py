r"""The output margin γ (22): the 10th-percentile margin :math:`z_y - \max_{j\ne y} z_j` over the
training split (the package docstring, "Output margin")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from landscape.core.kernel import logits_at
from landscape.errors import ConfigError
from landscape.params import model_state
from landscape.probes.measures.weights import F64


def output_margin(model: nn.Module, split: Any, *, quantile: float = 0.1, batch_size: int = 512,
                  output_fn=None, device: torch.device | None = None) -> tuple[float, int, int]:
    """``(γ, k, N)``: the ``k``-th smallest margin ``z_y − max_{j≠y} z_j`` over the ``N`` samples
    of ``split`` (a Split or a Stream), ``k = max(⌊quantile·N⌋, 1)``; float64, eval mode."""
    dev = device if device is not None else next(model.parameters()).device
    state = model_state(model, F64, dev)
    margins = []
    with torch.no_grad():
        for xb, yb in split.batches(batch_size):
            xb = xb.to(dev, F64 if xb.is_floating_point() else xb.dtype)
            z = logits_at(model, state, xb, bn_mode="eval", output_fn=output_fn).to(F64)
            yb = yb.to(dev).long()
            if z.ndim != 2 or z.shape[1] < 2:
                raise ConfigError(f"the output margin needs class logits [N, C ≥ 2], got shape {tuple(z.shape)}")
            correct = z.gather(1, yb[:, None])[:, 0]
            other = z.scatter(1, yb[:, None], -math.inf).max(1).values
            margins.append(correct - other)
    m = torch.cat(margins)
    k = max(math.floor(quantile * len(m)), 1)
    return float(m.kthvalue(k).values), k, len(m)
