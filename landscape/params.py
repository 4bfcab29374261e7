"""Parameters as flat vectors: select, flatten, unflatten, and call a model functionally.

Nothing here mutates the model: evaluation goes through ``torch.func.functional_call`` with a
dict of tensors that replaces the module's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from landscape.errors import ConfigError


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a set of parameters packed into one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` with the parameters' shapes (differentiable w.r.t. ``flat``)."""
        chunks = torch.split(flat, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for n, size in zip(self.names, self.sizes, strict=True):
            out[n] = slice(start, start + size)
            start += size
        return out


def select_parameters(model: nn.Module, names: Sequence[str] | None = None) -> ParamLayout:
    """Layout of the trainable parameters (or of ``names``, in the model's order)."""
    params = dict(model.named_parameters())
    if names is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
    else:
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ConfigError(
                f"unknown parameter name(s) {', '.join(unknown)}; the model has: {', '.join(list(params)[:8])}, …"
            )
        chosen = [n for n in params if n in set(names)]
    if not chosen:
        raise ConfigError(
            "the model has no trainable parameters (requires_grad is False everywhere); nothing to differentiate"
        )
    return ParamLayout(tuple(chosen), tuple(params[n].shape for n in chosen))


def layer_blocks(model: nn.Module, layout: ParamLayout) -> dict[str, list[str]]:
    """Group parameter names by the module that owns them (``features.1.weight`` → ``features.1``)."""
    blocks: dict[str, list[str]] = {}
    for name in layout.names:
        owner = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(owner, []).append(name)
    return blocks


def model_state(model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter and buffer, optionally cast (floating tensors only)."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.to(device) if device is not None else t
    return out


def call(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with ``state`` in place of the module's parameters and buffers."""
    return functional_call(model, state, (x,), tie_weights=False, strict=False)
