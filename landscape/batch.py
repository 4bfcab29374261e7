"""Model inputs that are not one tensor: Hugging Face style dict batches.

A batch such as ``{"input_ids": …, "attention_mask": …}`` (the target key already removed) is
held as an :class:`InputBatch`: a frozen set of named tensors sharing their first dimension, the
sample axis. Where a probe needs its inputs it treats an ``InputBatch`` like an input tensor:
``len(x)``, ``x.shape[0]``, ``x[slice]`` / ``x[index_tensor]`` (a new ``InputBatch``),
``x.to(device, dtype)`` (``dtype`` casts floating members only: ids and masks stay integer),
``x.is_floating_point()``, ``x.dtype``, ``x.device``, and :meth:`InputBatch.cat` for
``torch.cat``.

The model is called with the members as keyword arguments, ``model(**x)``, by
:func:`model_inputs` / :func:`forward` here and by :func:`landscape.params.call`; no wrapper
module is put around the user's model, so parameter names (and the per-layer names stored with
results, and ``layer=`` module names) stay the model's own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.errors import DataError


class InputBatch:
    """Named input tensors with a common first (sample) dimension; see the module docstring.

    Not a :class:`~collections.abc.Mapping` on purpose: ``len`` counts samples, as for a tensor,
    and ``[...]`` indexes samples (a string key returns that member's tensor).
    """

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if not tensors:
            raise DataError("a dict batch has no input tensors (only the target?); the model needs inputs")
        lengths = {}
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise DataError(f"dict batch member {key!r} is a {type(value).__name__}, not a tensor")
            if value.ndim == 0:
                raise DataError(f"dict batch member {key!r} is a scalar; every input needs a sample dimension")
            lengths[key] = value.shape[0]
        if len(set(lengths.values())) != 1:
            raise DataError("dict batch members have different numbers of samples: "
                            + ", ".join(f"{k}={n}" for k, n in lengths.items()))
        object.__setattr__(self, "_tensors", dict(tensors))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("an InputBatch is immutable")

    # ---- like a tensor -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(next(iter(self._tensors.values())).shape[0])

    @property
    def shape(self) -> torch.Size:
        """``(N,)``: the sample dimension only (members have their own trailing shapes)."""
        return torch.Size((len(self),))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            return self._tensors[index]
        if isinstance(index, int | np.integer):
            raise TypeError("index an InputBatch with a slice or an index tensor (it keeps the sample axis)")
        return InputBatch({k: v[index] for k, v in self._tensors.items()})

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> InputBatch:
        """On ``device``; floating members cast to ``dtype`` when given (integer ones never)."""
        return InputBatch({k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point()
                                   else v.dtype) for k, v in self._tensors.items()})

    def is_floating_point(self) -> bool:
        """Whether any member is floating (those are the ones ``to(dtype=…)`` casts)."""
        return any(v.is_floating_point() for v in self._tensors.values())

    @property
    def dtype(self) -> torch.dtype:
        """The first floating member's dtype, else the first member's (``input_ids``: int64)."""
        floating = [v.dtype for v in self._tensors.values() if v.is_floating_point()]
        return floating[0] if floating else next(iter(self._tensors.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self._tensors.values())).device

    @classmethod
    def cat(cls, batches: Sequence[InputBatch]) -> InputBatch:
        """``torch.cat`` along the sample axis; the batches must have the same keys and trailing
        shapes (a DataLoader padding each batch to its own length cannot be joined)."""
        keys = list(batches[0].keys())
        for i, b in enumerate(batches):
            if list(b.keys()) != keys:
                raise DataError(f"dict batch {i} has keys {', '.join(b.keys())}; batch 0 has {', '.join(keys)}")
        out = {}
        for k in keys:
            shapes = {tuple(b[k].shape[1:]) for b in batches}
            if len(shapes) > 1:
                raise DataError(f"dict batches hold {k!r} of different trailing shapes ({', '.join(map(str, sorted(shapes)))}); "
                                "pad every batch to one length (e.g. padding='max_length'): this probe gathers "
                                "a subset of samples from several batches")
            out[k] = torch.cat([b[k] for b in batches])
        return cls(out)

    @classmethod
    def stack(cls, items: Sequence[Mapping[str, torch.Tensor]]) -> InputBatch:
        """One sample per item (a Dataset's ``__getitem__``), stacked into a batch."""
        keys = list(items[0])
        for i, item in enumerate(items):
            if list(item) != keys:
                raise DataError(f"dict item {i} has keys {', '.join(item)}; item 0 has {', '.join(keys)}")
        try:
            return cls({k: torch.stack([item[k] for item in items]) for k in keys})
        except RuntimeError as exc:
            raise DataError(f"dict items cannot be stacked into one batch ({exc}); give every item the same "
                            "shapes (pad sequences to one length)") from None

    # ---- like a mapping (for the model call) ---------------------------------------------------

    def keys(self) -> Iterator[str]:
        return iter(self._tensors)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._tensors.items())

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        """The members as the model's keyword arguments."""
        return dict(self._tensors)

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{key: {"dtype", "shape"}}`` (shape per sample), for the record beside the results."""
        return {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape[1:])}
                for k, v in self._tensors.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={str(v.dtype).removeprefix('torch.')}{list(v.shape)}" for k, v in self._tensors.items())
        return f"InputBatch({parts})"


def model_inputs(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` the model is called with: ``((), {**x})`` for an :class:`InputBatch`,
    ``((x,), {})`` for anything else."""
    if isinstance(x, InputBatch):
        return (), x.as_kwargs()
    return (x,), {}


def forward(model: nn.Module, x: Any) -> Any:
    """``model(x)``, or ``model(**x)`` for an :class:`InputBatch` (the module's own parameters)."""
    args, kwargs = model_inputs(x)
    return model(*args, **kwargs)
