"""Parameters as flat vectors: select, flatten, unflatten, and call a model functionally.

Nothing here mutates the model: evaluation goes through ``torch.func.functional_call`` with a
dict of tensors that replaces the module's own.

Parameters are taken as the model owns them: a tensor shared by several modules (tied input and
output embeddings, one module used twice) is ONE parameter, under the first name
``model.named_parameters()`` gives it, and :func:`call` substitutes it for every use
(``tie_weights=True``), so HVPs, directions, perturbations, per-layer blocks and parameter
counts all see it once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from landscape.batch import InputBatch, model_inputs
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
    """Layout of the trainable parameters (or of ``names``, in the model's order).

    A shared tensor appears once, under its first name; an alias in ``names`` (``head.weight``
    tied to ``emb.weight``) selects that one parameter.
    """
    params = dict(model.named_parameters())
    if names is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
    else:
        canonical = tied_aliases(model)
        names = [canonical.get(n, n) for n in names]
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


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for every parameter or buffer name that refers to a tensor already listed
    under an earlier ``name`` (``{"head.weight": "emb.weight"}`` for tied embeddings)."""
    out: dict[str, str] = {}
    for named in (model.named_parameters, model.named_buffers):
        first: dict[int, str] = {}
        for name, t in named(remove_duplicate=False):
            if id(t) in first:
                out[name] = first[id(t)]
            else:
                first[id(t)] = name
    return out


def layer_blocks(model: nn.Module, layout: ParamLayout) -> dict[str, list[str]]:
    """Group parameter names by the module that owns them (``features.1.weight`` → ``features.1``).

    A tied tensor is one parameter and belongs to the block of its first owner only."""
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


def call(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor | InputBatch) -> torch.Tensor:
    """``model(x)`` (``model(**x)`` for a dict batch, :class:`~landscape.batch.InputBatch`) with
    ``state`` in place of the module's parameters and buffers.

    Tied semantics: a tensor the model shares under several names (``head.weight is
    emb.weight``) is given once, under the name ``named_parameters()`` lists, and that value is
    used for every alias; entries of ``state`` missing from the model's tensors keep the
    module's own (``strict=False``).
    """
    args, kwargs = model_inputs(x)
    return functional_call(model, state, args, kwargs, tie_weights=True, strict=False)


@contextlib.contextmanager
def second_order() -> Iterator[None]:
    """Context for every computation that differentiates a gradient (HVPs, ``∇‖∇L‖²``).

    Selects the math backend of ``scaled_dot_product_attention``: the fused flash /
    memory-efficient kernels (CPU and CUDA) have no derivative of their backward, so a
    double backward or a forward-over-reverse product through ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoder`` / Hugging Face attention would fail without it. The math backend
    computes the same function (to rounding) from differentiable primitives. The forward pass
    that builds the graph must run inside this context.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        ctx = torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    else:
        ctx = sdpa_kernel(SDPBackend.MATH)
    with ctx:
        yield
