"""Data as the user has it: ``(x, y)`` tensors or numpy arrays, a map-style torch ``Dataset`` of
``(x, y)`` items, or an iterable of ``(x, y)`` batches (a ``DataLoader``), turned into an in-memory
:class:`~landscape.datasets.Dataset` used as given (no normalization; integer inputs stay integer;
recorded in ``info``). Used by the façade (``ls.hessian(model, loss, data)``) and by
``--data-factory``. Streaming batch by batch is the open-core step (issue 19): here the samples
are gathered once, in the order the data yield them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from landscape.datasets import Dataset, Split
from landscape.errors import DataError


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, int | float) or (isinstance(value, list) and value):
        return torch.as_tensor(value)
    raise DataError(f"{what} must be a tensor or numpy array, got {type(value).__name__}")


def _pairs(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(x, y, description)`` of one of the accepted data forms."""
    if isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data[0], tuple | list):
        x, y = _tensor(data[0], f"{what}[0] (inputs)"), _tensor(data[1], f"{what}[1] (targets)")
        return x, y, f"{type(data[0]).__name__} pair"
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        source = f"{type(data).__name__} of {len(items)} items"
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        items = list(data)
        source = f"{type(data).__name__} of {len(items)} batches"
    else:
        raise DataError(
            f"{what} must be (x, y) tensors or arrays, a torch Dataset of (x, y) items, or an iterable of "
            f"(x, y) batches (a DataLoader); got {type(data).__name__}"
        )
    if not items:
        raise DataError(f"{what} is empty ({source}); give at least one sample")
    xs, ys = [], []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            raise DataError(f"{what}: item {i} is a dict ({', '.join(map(str, item))}); dict batches need the "
                            "open core (issue 19) — pass (x, y) tuples")
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise DataError(f"{what}: item {i} is a {type(item).__name__}, not an (x, y) pair")
        xs.append(_tensor(item[0], f"{what}: item {i} inputs"))
        ys.append(_tensor(item[1], f"{what}: item {i} targets"))
    batched = isinstance(data, torch.utils.data.DataLoader) or (
        not isinstance(data, torch.utils.data.Dataset) and xs[0].ndim > 0 and ys[0].ndim == 1)
    x = torch.cat(xs) if batched else torch.stack(xs)
    y = torch.cat(ys) if batched else torch.stack(ys)
    return x, y, source


def as_dataset(data: Any, test: Any = None) -> Dataset:
    """The user's data as an in-memory :class:`~landscape.datasets.Dataset`, used as given."""
    x, y, source = _pairs(data, "data")
    if test is None:
        tx, ty, test_source = x[:0], y[:0], "none"
    else:
        tx, ty, test_source = _pairs(test, "test")
    for name, (xi, yi) in {"data": (x, y), "test": (tx, ty)}.items():
        if xi.shape[0] != yi.shape[0]:
            raise DataError(f"{name} has {xi.shape[0]} inputs but {yi.shape[0]} targets")
        if yi.ndim != 1 or (yi.numel() and yi.dtype.is_floating_point):
            raise DataError(f"{name}: targets must be integer class labels of shape (N,), got "
                            f"{tuple(yi.shape)} {str(yi.dtype).removeprefix('torch.')} (other tasks arrive with issue 19)")
    if tx.numel() and tx.shape[1:] != x.shape[1:]:
        raise DataError(f"test inputs have shape {tuple(tx.shape[1:])}, training inputs {tuple(x.shape[1:])}")
    y, ty = y.long(), ty.long()
    classes = int(max(int(y.max()), int(ty.max()) if ty.numel() else 0)) + 1
    info = {"source": {"train": source, "test": test_source},
            "normalization": {"method": "none", "dtype": str(x.dtype).removeprefix("torch.")}}
    return Dataset(name="user", train=Split(x, y), test=Split(tx, ty), input_shape=tuple(x.shape[1:]),
                   num_classes=classes, info=info)
