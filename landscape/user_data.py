"""Data as the user has it: ``(x, y)`` tensors or numpy arrays, a map-style torch ``Dataset`` of
``(x, y)`` items, or an iterable of ``(x, y)`` batches (a ``DataLoader``) — or the same with
Hugging Face style dict batches (``{"input_ids", "attention_mask", "labels"}``: ``target_key``
names the targets, the other keys become the model's keyword inputs, an
:class:`~landscape.batch.InputBatch`; ``x`` itself may also be a dict) — turned into a
:class:`~landscape.datasets.Dataset` used as given (no normalization; integer inputs stay integer;
recorded in ``info``). Used by the façade (``ls.hessian(model, loss, data)``) and by
``--data-factory``. Tensors stay in memory; a Dataset, DataLoader or iterable of batches is
streamed batch by batch in a fixed order (:mod:`landscape.core.data`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from landscape.batch import InputBatch
from landscape.core.data import Stream, as_inputs, as_tensor, check_targets, split_dict
from landscape.datasets import Dataset, Split
from landscape.errors import DataError
from landscape.tasks import Task, get_task, valid_tokens


def _pairs(data: Any, what: str, target_key: str, task: Task) -> tuple[Any, str]:
    """One of the accepted data forms as samples: an in-memory ``Split`` for ``(x, y)`` tensors /
    arrays or one dict of tensors, a :class:`~landscape.core.data.Stream` for a ``Dataset``, a
    ``DataLoader`` or any iterable of batches; and its description."""
    if (isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data[0], tuple | list)
            and not isinstance(data[1], Mapping)):  # [dict, dict] is two dict batches
        x = as_inputs(data[0], f"{what}[0] (inputs)")
        y = as_tensor(data[1], f"{what}[1] (targets)")
        x = InputBatch(x) if isinstance(x, dict) else x
        return _in_memory(x, y, what, task), f"{type(data[0]).__name__} pair"
    if isinstance(data, Mapping):
        inputs, y = split_dict(data, f"{what} (a dict of tensors)", target_key)
        return _in_memory(InputBatch(inputs), y, what, task), f"dict of {', '.join(map(str, data))}"
    if isinstance(data, list | tuple) and data and _is_item(data[0], target_key, task):
        data = _Items(data)  # a list of single samples: read like a map-style Dataset
    stream = Stream(data, task=task, target_key=target_key, what=what)
    if len(stream) == 0:
        raise DataError(f"{what} is empty ({stream.describe()}); give at least one sample")
    return stream, stream.describe()


class _Items(torch.utils.data.Dataset):
    """A Python list of single ``(x, y)`` / dict samples, as a map-style Dataset."""

    def __init__(self, items: list | tuple) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _is_item(first: Any, target_key: str, task: Task) -> bool:
    """Whether a list's first element is one sample (a scalar class label / one sequence of
    tokens), not a batch."""
    target = first.get(target_key) if isinstance(first, Mapping) else (
        first[1] if isinstance(first, tuple | list) and len(first) >= 2 else None)
    if target is None or not hasattr(target, "__len__") and not isinstance(target, int | float):
        return False
    ndim = np.ndim(target) if not isinstance(target, torch.Tensor) else target.ndim
    return ndim == (1 if task.tokens else 0)


def _in_memory(x: Any, y: torch.Tensor, what: str, task: Task) -> Split:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what} has {x.shape[0]} inputs but {y.shape[0]} targets")
    check_targets(y, task, what)
    if not len(y):
        raise DataError(f"{what} is empty; give at least one sample")
    return Split(x, y if task.regression else y.long(), task.name)


def as_dataset(data: Any, test: Any = None, *, target_key: str = "labels",
               task: str | Task = "classification") -> Dataset:
    """The user's data as a :class:`~landscape.datasets.Dataset`, used as given.

    ``(x, y)`` tensors / arrays and one dict of tensors are held in memory (a ``Split``); a torch
    ``Dataset``, a ``DataLoader`` or any iterable of batches is streamed batch by batch (a
    :class:`~landscape.core.data.Stream`: never concatenated; read once here to count and check
    it). Dict batches / items: ``target_key`` holds the targets, the other keys are the model's
    keyword inputs (an :class:`~landscape.batch.InputBatch`); both are recorded in ``info``.
    ``task`` (:mod:`landscape.tasks`): ``classification`` takes integer labels ``(N,)``;
    ``causal_lm`` / ``token_classification`` integer token targets ``(N, T)`` (``-100`` =
    ignored), recorded in ``info["task"]``; ``regression`` floating targets ``(N,)`` / ``(N, D)``.
    """
    t = get_task(task)
    train, source = _pairs(data, "data", target_key, t)
    if test is None:
        first = train.sample_inputs
        tests: Any = Split(first[:0], train.take(torch.arange(1)).y[:0], t.name)
        test_source = "none"
    else:
        tests, test_source = _pairs(test, "test", target_key, t)
    x0, tx0 = train.sample_inputs, tests.sample_inputs if len(tests) else None
    if tx0 is not None and isinstance(x0, InputBatch) != isinstance(tx0, InputBatch):
        raise DataError("data and test must both have dict inputs or both tensor inputs")
    if tx0 is not None and isinstance(x0, InputBatch):
        if list(tx0.keys()) != list(x0.keys()):
            raise DataError(f"test inputs have keys {', '.join(tx0.keys())}, training inputs {', '.join(x0.keys())}")
    elif tx0 is not None and tx0.shape[1:] != x0.shape[1:]:
        raise DataError(f"test inputs have shape {tuple(tx0.shape[1:])}, training inputs {tuple(x0.shape[1:])}")
    classes = 0 if t.regression else max(train.num_classes, tests.num_classes if len(tests) else 0)
    info: dict[str, Any] = {"source": {"train": source, "test": test_source},
                            "normalization": {"method": "none", "dtype": str(x0.dtype).removeprefix("torch.")}}
    notes = [*getattr(train, "notes", []), *getattr(tests, "notes", [])]
    if notes:
        info["source"]["notes"] = list(dict.fromkeys(notes))
    if isinstance(x0, InputBatch):  # what the model is called with: model(**inputs); targets from target_key
        info["inputs"] = {"target_key": target_key, "keys": x0.describe()}
    if t.tokens:
        valid = _valid(train, t)
        if valid == 0:
            raise DataError(f"data: no target token counts for task {t.name!r} (all are {t.ignore_index}"
                            f"{' after the shift' if t.shift else ''}); give at least one real target")
        info["task"] = {"name": t.name, "ignore_index": t.ignore_index, "shift": t.shift,
                        "valid_tokens": {"train": valid, "test": _valid(tests, t) if len(tests) else 0}}
    elif t.regression:
        info["task"] = {"name": t.name}
    return Dataset(name="user", train=train, test=tests, input_shape=tuple(x0.shape[1:]),
                   num_classes=classes, info=info)


def _valid(samples: Any, task: Task) -> int:
    if isinstance(samples, Stream):
        return int(samples.survey["valid_tokens"])
    return valid_tokens(samples.y, task)
