"""Data as the user has it: ``(x, y)`` tensors or numpy arrays, a map-style torch ``Dataset`` of
``(x, y)`` items, or an iterable of ``(x, y)`` batches (a ``DataLoader``) — or the same with
Hugging Face style dict batches (``{"input_ids", "attention_mask", "labels"}``: ``target_key``
names the targets, the other keys become the model's keyword inputs, an
:class:`~landscape.batch.InputBatch`; ``x`` itself may also be a dict) — turned into an in-memory
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

from landscape.batch import InputBatch
from landscape.datasets import Dataset, Split
from landscape.errors import DataError
from landscape.tasks import Task, get_task, valid_tokens


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, int | float) or (isinstance(value, list) and value):
        return torch.as_tensor(value)
    raise DataError(f"{what} must be a tensor or numpy array, got {type(value).__name__}")


def _inputs(value: Any, what: str) -> torch.Tensor | dict[str, torch.Tensor]:
    """One input tensor, or a dict of them (the model's keyword inputs)."""
    if isinstance(value, Mapping):
        return {str(k): _tensor(v, f"{what}[{k!r}]") for k, v in value.items()}
    return _tensor(value, what)


def _split_dict(item: Mapping, what: str, target_key: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A dict batch (or item) → (the model's keyword inputs, the targets under ``target_key``)."""
    if target_key not in item:
        raise DataError(f"{what} is a dict with keys {', '.join(map(str, item))} but no {target_key!r} (the targets); "
                        "pass target_key= the key that holds them")
    inputs = _inputs({k: v for k, v in item.items() if k != target_key}, what)
    if not inputs:
        raise DataError(f"{what} holds only the targets {target_key!r}; the model needs input keys too")
    return inputs, _tensor(item[target_key], f"{what}[{target_key!r}] (targets)")


def _join(xs: list, ys: list[torch.Tensor], batched: bool) -> tuple[torch.Tensor | InputBatch, torch.Tensor]:
    if isinstance(xs[0], dict):
        x = InputBatch.cat([InputBatch(xi) for xi in xs]) if batched else InputBatch.stack(xs)
    else:
        x = torch.cat(xs) if batched else torch.stack(xs)
    return x, torch.cat(ys) if batched else torch.stack(ys)


def _pairs(data: Any, what: str, target_key: str, target_ndim: int = 1
           ) -> tuple[torch.Tensor | InputBatch, torch.Tensor, str]:
    """``(x, y, description)`` of one of the accepted data forms (a batch's targets have
    ``target_ndim`` dimensions: 1 for class labels, 2 for token targets)."""
    if (isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data[0], tuple | list)
            and not isinstance(data[1], Mapping)):  # [dict, dict] is two dict batches
        x = _inputs(data[0], f"{what}[0] (inputs)")
        y = _tensor(data[1], f"{what}[1] (targets)")
        return InputBatch(x) if isinstance(x, dict) else x, y, f"{type(data[0]).__name__} pair"
    if isinstance(data, Mapping):
        inputs, y = _split_dict(data, f"{what} (a dict of tensors)", target_key)
        return InputBatch(inputs), y, f"dict of {', '.join(map(str, data))}"
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        source = f"{type(data).__name__} of {len(items)} items"
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
        items = list(data)
        source = f"{type(data).__name__} of {len(items)} batches"
    else:
        raise DataError(
            f"{what} must be (x, y) tensors or arrays, a dict of tensors, a torch Dataset of (x, y) or dict items, "
            f"or an iterable of (x, y) or dict batches (a DataLoader); got {type(data).__name__}"
        )
    if not items:
        raise DataError(f"{what} is empty ({source}); give at least one sample")
    xs, ys = [], []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            unit = "item" if isinstance(data, torch.utils.data.Dataset) else "batch"
            xi, yi = _split_dict(item, f"{what}: {unit} {i}", target_key)
        elif isinstance(item, tuple | list) and len(item) >= 2:
            xi, yi = _inputs(item[0], f"{what}: item {i} inputs"), _tensor(item[1], f"{what}: item {i} targets")
        else:
            raise DataError(f"{what}: item {i} is a {type(item).__name__}, not an (x, y) pair or a dict")
        if xs and isinstance(xi, dict) != isinstance(xs[0], dict):
            raise DataError(f"{what}: item {i} has {'dict' if isinstance(xi, dict) else 'tensor'} inputs, item 0 "
                            f"{'dict' if isinstance(xs[0], dict) else 'tensor'} inputs; give one kind")
        xs.append(xi)
        ys.append(yi)
    first_ndim = 1 if isinstance(xs[0], dict) else xs[0].ndim
    batched = isinstance(data, torch.utils.data.DataLoader) or (
        not isinstance(data, torch.utils.data.Dataset) and first_ndim > 0 and ys[0].ndim == target_ndim)
    x, y = _join(xs, ys, batched)
    return x, y, source


def as_dataset(data: Any, test: Any = None, *, target_key: str = "labels",
               task: str | Task = "classification") -> Dataset:
    """The user's data as an in-memory :class:`~landscape.datasets.Dataset`, used as given.

    Dict batches / items: ``target_key`` holds the targets, the other keys are the model's keyword
    inputs (an :class:`~landscape.batch.InputBatch`); both are recorded in ``info``. ``task``
    (:mod:`landscape.tasks`): ``classification`` takes integer labels ``(N,)``; ``causal_lm`` /
    ``token_classification`` integer token targets ``(N, T)`` (``-100`` = ignored), recorded
    in ``info["task"]``.
    """
    t = get_task(task)
    ndim = 2 if t.tokens else 1
    x, y, source = _pairs(data, "data", target_key, ndim)
    if test is None:
        tx, ty, test_source = x[:0], y[:0], "none"
    else:
        tx, ty, test_source = _pairs(test, "test", target_key, ndim)
    for name, (xi, yi) in {"data": (x, y), "test": (tx, ty)}.items():
        if xi.shape[0] != yi.shape[0]:
            raise DataError(f"{name} has {xi.shape[0]} inputs but {yi.shape[0]} targets")
        if t.tokens and (yi.ndim != 2 or (yi.numel() and yi.dtype.is_floating_point)):
            raise DataError(f"{name}: task {t.name!r} needs integer token targets of shape (N, T), got "
                            f"{tuple(yi.shape)} {str(yi.dtype).removeprefix('torch.')}")
        if not t.tokens and (yi.ndim != 1 or (yi.numel() and yi.dtype.is_floating_point)):
            hint = (" (for per-token targets pass task='causal_lm' or task='token_classification')"
                    if yi.ndim == 2 else "")
            raise DataError(f"{name}: targets must be integer class labels of shape (N,), got "
                            f"{tuple(yi.shape)} {str(yi.dtype).removeprefix('torch.')}{hint}")
    if isinstance(x, InputBatch) != isinstance(tx, InputBatch):
        raise DataError("data and test must both have dict inputs or both tensor inputs")
    if isinstance(x, InputBatch):
        if len(tx) and list(tx.keys()) != list(x.keys()):
            raise DataError(f"test inputs have keys {', '.join(tx.keys())}, training inputs {', '.join(x.keys())}")
    elif tx.numel() and tx.shape[1:] != x.shape[1:]:
        raise DataError(f"test inputs have shape {tuple(tx.shape[1:])}, training inputs {tuple(x.shape[1:])}")
    y, ty = y.long(), ty.long()
    classes = int(max(int(y.max()), int(ty.max()) if ty.numel() else 0)) + 1
    info = {"source": {"train": source, "test": test_source},
            "normalization": {"method": "none", "dtype": str(x.dtype).removeprefix("torch.")}}
    if isinstance(x, InputBatch):  # what the model is called with: model(**inputs); targets from target_key
        info["inputs"] = {"target_key": target_key, "keys": x.describe()}
    if t.tokens:
        if len(ty) and ty.shape[1] != y.shape[1]:
            raise DataError(f"test targets have {ty.shape[1]} tokens per sequence, training targets {y.shape[1]}")
        valid = valid_tokens(y, t)
        if valid == 0:
            raise DataError(f"data: no target token counts for task {t.name!r} (all are {t.ignore_index}"
                            f"{' after the shift' if t.shift else ''}); give at least one real target")
        info["task"] = {"name": t.name, "ignore_index": t.ignore_index, "shift": t.shift,
                        "valid_tokens": {"train": valid, "test": valid_tokens(ty, t) if len(ty) else 0}}
    return Dataset(name="user", train=Split(x, y, t.name), test=Split(tx, ty, t.name), input_shape=tuple(x.shape[1:]),
                   num_classes=classes, info=info)
