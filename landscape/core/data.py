"""The samples a probe reads: in memory (a :class:`~landscape.datasets.Split`) or streamed
batch by batch (a :class:`Stream`), behind one interface.

Every probe reads its data through three calls, the same for both kinds:

- ``len(samples)``: the number of samples ``N`` (sequences, for token tasks);
- ``samples.batches(batch_size)``: ``(x, y)`` batches in a fixed order, on the samples' device
  (``x`` a tensor or an :class:`~landscape.batch.InputBatch`); a :class:`Stream` over a
  ``DataLoader`` yields the loader's own batches (``batch_size`` is the loader's), one over a
  map-style ``Dataset`` collates ``batch_size`` items at a time;
- ``samples.take(indices)``: those samples, in the order given, as an in-memory ``Split`` (a
  fixed subset: a sharpness batch, a coherence subset, a surface subset). A stream gathers them
  in one pass, holding one batch and the chosen samples.

A :class:`Stream` holds at most one batch of inputs at a time: nothing concatenates a
``DataLoader`` into memory (ARCHITECTURE rule 4). Its order is fixed: a ``DataLoader`` built
with ``shuffle=True`` is read in index order (its dataset, batch size, collate function and
workers kept), and this is recorded in :attr:`Stream.info`. A one-shot iterator (a generator)
cannot be read twice: its batches are kept as they come (recorded too).

Weighted means across uneven batches are ``Σ_b n_b · mean_b / N``; probes count ``n_b`` from
each batch, so the last short batch weighs what it holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from landscape.batch import InputBatch
from landscape.errors import DataError
from landscape.tasks import Task, get_task, valid_tokens

STREAM_BATCH_SIZE = 256  # items collated per batch from a map-style Dataset when a probe asks for "all"
_COLLATE_FAILURES = ("stack expects each tensor", "each element in list of batch", "default_collate")


# ---- one batch as the user gives it ----------------------------------------------------------


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor or numpy array (or a scalar / non-empty list) as a tensor, detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, int | float) or (isinstance(value, list) and value):
        return torch.as_tensor(value)
    raise DataError(f"{what} must be a tensor or numpy array, got {type(value).__name__}")


def as_inputs(value: Any, what: str) -> torch.Tensor | dict[str, torch.Tensor]:
    """One input tensor, or a dict of them (the model's keyword inputs)."""
    if isinstance(value, Mapping):
        return {str(k): as_tensor(v, f"{what}[{k!r}]") for k, v in value.items()}
    return as_tensor(value, what)


def split_dict(item: Mapping, what: str, target_key: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A dict batch (or item) → (the model's keyword inputs, the targets under ``target_key``)."""
    if target_key not in item:
        raise DataError(f"{what} is a dict with keys {', '.join(map(str, item))} but no {target_key!r} (the targets); "
                        "pass target_key= the key that holds them")
    inputs = as_inputs({k: v for k, v in item.items() if k != target_key}, what)
    if not inputs:
        raise DataError(f"{what} holds only the targets {target_key!r}; the model needs input keys too")
    return inputs, as_tensor(item[target_key], f"{what}[{target_key!r}] (targets)")


def read_batch(item: Any, what: str, target_key: str) -> tuple[torch.Tensor | InputBatch, torch.Tensor]:
    """``(x, y)`` of one batch: an ``(x, y, …)`` tuple/list or a Mapping with ``target_key``."""
    if isinstance(item, Mapping):
        inputs, y = split_dict(item, what, target_key)
        return InputBatch(inputs), y
    if isinstance(item, tuple | list) and len(item) >= 2:
        x = as_inputs(item[0], f"{what} inputs")
        return (InputBatch(x) if isinstance(x, dict) else x), as_tensor(item[1], f"{what} targets")
    raise DataError(f"{what} is a {type(item).__name__}, not an (x, y) pair or a dict with the targets")


def check_targets(y: torch.Tensor, task: Task, what: str) -> None:
    """One line unless ``y`` are targets ``task`` can read (class labels, token ids, or values)."""
    dtype = str(y.dtype).removeprefix("torch.")
    if task.regression:
        if not y.dtype.is_floating_point or y.ndim < 1:
            raise DataError(f"{what}: task 'regression' needs floating targets of shape (N,) or (N, D), got "
                            f"{tuple(y.shape)} {dtype}")
        return
    if task.tokens:
        if y.ndim != 2 or (y.numel() and y.dtype.is_floating_point):
            raise DataError(f"{what}: task {task.name!r} needs integer token targets of shape (N, T), got "
                            f"{tuple(y.shape)} {dtype}")
        return
    if y.ndim != 1 or (y.numel() and y.dtype.is_floating_point):
        hint = (" (for per-token targets pass task='causal_lm' or task='token_classification')" if y.ndim == 2
                else " (for real-valued targets pass task='regression')" if y.dtype.is_floating_point else "")
        raise DataError(f"{what}: targets must be integer class labels of shape (N,), got "
                        f"{tuple(y.shape)} {dtype}{hint}")


def _move(x: Any, y: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None
          ) -> tuple[Any, torch.Tensor]:
    """``x`` on ``device``, floating inputs cast to ``dtype`` (integer ones never); ``y`` on
    ``device`` (floating regression targets cast too)."""
    if device is None and dtype is None:
        return x, y
    x = x.to(device, dtype if dtype is not None and x.is_floating_point() else x.dtype)
    y = y.to(device, dtype if dtype is not None and y.is_floating_point() else y.dtype)
    return x, y


# ---- a stream of batches ---------------------------------------------------------------------


def _fixed_order(loader: torch.utils.data.DataLoader) -> tuple[torch.utils.data.DataLoader, str | None]:
    """The loader, or (for a shuffling one) the same loader reading its dataset in index order."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.RandomSampler) or loader.batch_size is None:
        return loader, None
    fixed = torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
        num_workers=loader.num_workers, drop_last=loader.drop_last, pin_memory=loader.pin_memory)
    return fixed, "shuffle=True replaced by index order (a probe needs the same batches every pass)"


class Stream:
    """Samples read batch by batch from a ``DataLoader``, a map-style ``Dataset`` of items, or a
    re-iterable of ``(x, y)`` / dict batches; see the module docstring.

    Construction reads the data once (one batch at a time) to count the samples, check that
    every batch is one the task can read, and record what the data are (:attr:`info`):
    ``n``, the number of classes, valid tokens for token tasks, input kind, dtype and shape.
    """

    def __init__(self, source: Any, *, task: str | Task = "classification", target_key: str = "labels",
                 what: str = "data", device: torch.device | None = None, dtype: torch.dtype | None = None,
                 _survey: dict[str, Any] | None = None) -> None:
        self.task = get_task(task).name
        self._task = get_task(task)
        self.target_key = target_key
        self.what = what
        self.device = device
        self.dtype = dtype
        self.notes: list[str] = []
        if isinstance(source, torch.utils.data.DataLoader):
            source, note = _fixed_order(source)
            self.kind = "loader"
            if note:
                self.notes.append(note)
        elif isinstance(source, torch.utils.data.Dataset) and hasattr(source, "__getitem__") \
                and hasattr(source, "__len__") and not isinstance(source, torch.utils.data.IterableDataset):
            self.kind = "dataset"
        elif isinstance(source, Iterable) and not isinstance(source, str | bytes | Mapping):
            self.kind = "batches"
            if iter(source) is source:  # a generator / iterator: it can be read only once
                source = list(source)
                self.notes.append("a one-shot iterator: its batches are kept in memory as they came")
        else:
            raise DataError(
                f"{what} must be (x, y) tensors or arrays, a dict of tensors, a torch Dataset of (x, y) or dict "
                f"items, or an iterable of (x, y) or dict batches (a DataLoader); got {type(source).__name__}")
        self.source = source
        self.survey = _survey if _survey is not None else self._read_all()

    # ---- what the data are ------------------------------------------------------------------

    def _raw_batches(self, batch_size: int | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """The batches as read, on the CPU as given (no device move, no cast)."""
        if self.kind == "dataset":
            size = batch_size or STREAM_BATCH_SIZE
            n = len(self.source)
            for start in range(0, n, size):
                yield self._collate(range(start, min(start + size, n)), f"{self.what}: items {start}…")
            return
        items = iter(self.source)
        for i in itertools.count():
            try:
                item = next(items)
            except StopIteration:
                return
            except (RuntimeError, TypeError) as exc:  # a DataLoader's collate_fn on items of other shapes
                if self.kind != "loader" or not str(exc).startswith(_COLLATE_FAILURES):
                    raise
                raise DataError(f"{self.what}: batch {i}: the items cannot be stacked into one batch "
                                f"({str(exc).splitlines()[0]}); give every item the same shapes (pad "
                                "sequences to one length)") from None
            yield read_batch(item, f"{self.what}: batch {i}", self.target_key)

    def _collate(self, indices: Iterable[int], what: str) -> tuple[Any, torch.Tensor]:
        items = [self.source[int(i)] for i in indices]
        try:
            batch = torch.utils.data.default_collate(items)
        except (RuntimeError, TypeError) as exc:
            first = items[0] if items else None
            kind = type(first).__name__
            if not isinstance(first, Mapping | tuple | list):
                raise DataError(f"{what}: an item is a {kind}, not an (x, y) pair or a dict") from None
            raise DataError(f"{what}: the items cannot be stacked into one batch ({str(exc).splitlines()[0]}); "
                            "give every item the same shapes (pad sequences to one length)") from None
        return read_batch(batch, what, self.target_key)

    def _read_all(self) -> dict[str, Any]:
        t = self._task
        n, batches, top, valid, first = 0, 0, -1, 0, None
        for i, (x, y) in enumerate(self._raw_batches()):
            what = f"{self.what}: batch {i}"
            if y.ndim == 0 or (isinstance(x, torch.Tensor) and x.ndim == 0):
                raise DataError(f"{what} has a scalar {'target' if y.ndim == 0 else 'input'}: it is one sample, "
                                "not a batch; wrap the samples in a DataLoader(data, batch_size=...)")
            if len(x) != len(y):
                raise DataError(f"{what} has {len(x)} inputs but {len(y)} targets")
            check_targets(y, t, what)
            kind = "dict" if isinstance(x, InputBatch) else "tensor"
            if first is None:
                one = (InputBatch({k: v[:1].clone() for k, v in x.items()}) if kind == "dict"
                       else x[:1].clone())  # a copy: a view would keep the whole first batch alive
                first = {"kind": kind, "x": one, "keys": list(x.keys()) if kind == "dict" else None,
                         "shape": None if kind == "dict" else tuple(x.shape[1:]), "dtype": x.dtype}
            elif kind != first["kind"]:
                raise DataError(f"{what} has {kind} inputs, batch 0 {first['kind']} inputs; give one kind")
            elif kind == "dict" and list(x.keys()) != first["keys"]:
                raise DataError(f"{what} has keys {', '.join(x.keys())}; batch 0 has {', '.join(first['keys'])}")
            elif kind == "tensor" and (tuple(x.shape[1:]) != first["shape"] or x.dtype != first["dtype"]):
                raise DataError(f"{what} has inputs {tuple(x.shape[1:])} {x.dtype}, batch 0 "
                                f"{first['shape']} {first['dtype']}; give every batch the same kind of sample")
            n += len(y)
            batches += 1
            if not t.regression and y.numel():
                top = max(top, int(y.max()))
            if t.tokens:
                valid += valid_tokens(y, t)
        return {"n": n, "batches": batches, "num_classes": top + 1, "valid_tokens": valid, "first": first}

    def __len__(self) -> int:
        return int(self.survey["n"])

    def num_batches(self, batch_size: int | None = None) -> int:
        """How many batches :meth:`batches` yields for ``batch_size``."""
        if self.kind == "dataset":
            return -(-len(self) // (batch_size or STREAM_BATCH_SIZE))
        return int(self.survey["batches"])

    @property
    def num_classes(self) -> int:
        return int(self.survey["num_classes"])

    @property
    def sample_inputs(self) -> Any:
        """The first sample's inputs (a batch of one), as given."""
        return self.survey["first"]["x"] if self.survey["first"] else None

    def describe(self) -> str:
        """What the source is, for the record: ``DataLoader of 625 batches (20,000 samples)``."""
        count = len(self.source) if self.kind == "dataset" else self.survey["batches"]
        unit = "items" if self.kind == "dataset" else "batches"
        return f"{type(self.source).__name__} of {count} {unit}, streamed"

    # ---- the interface every probe reads ------------------------------------------------------

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Stream:
        """The same stream, its batches moved to ``device`` (floating inputs cast to ``dtype``)."""
        out = Stream.__new__(Stream)
        out.__dict__.update(self.__dict__)
        out.device = torch.device(device) if device is not None else self.device
        out.dtype = dtype if dtype is not None else self.dtype
        return out

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(x, y)`` batches in the fixed order, moved to the stream's device (see the module
        docstring for what ``batch_size`` means per source)."""
        for x, y in self._raw_batches(batch_size):
            yield self._finish(x, y)

    def _finish(self, x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Labels as int64 (class and token targets; regression targets stay as given), on the
        stream's device and dtype."""
        if not self._task.regression:
            y = y.long()
        return _move(x, y, self.device, self.dtype)

    def take(self, indices: torch.Tensor | Iterable[int]) -> Any:
        """Samples ``indices`` (positions in the fixed order) as an in-memory ``Split``, in the order
        given; one pass over the stream (a map-style Dataset is indexed directly)."""
        from landscape.datasets import Split

        idx = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                              dtype=torch.long)
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise DataError(f"{self.what}: sample {int(idx.max())} asked for, but the data hold {n}")
        if self.kind == "dataset":
            x, y = self._finish(*self._collate(idx.tolist(), f"{self.what}: items"))
            return Split(x, y, self.task)
        order = torch.argsort(idx)
        wanted = idx[order]  # ascending positions; gathered in one pass
        xs, ys, start, k = [], [], 0, 0
        for x, y in self._raw_batches():
            stop = start + len(y)
            j = k
            while j < len(wanted) and int(wanted[j]) < stop:
                j += 1
            if j > k:
                local = wanted[k:j] - start
                xs.append(x[local])
                ys.append(y[local])
                k = j
            start = stop
            if k == len(wanted):
                break
        if not xs:
            raise DataError(f"{self.what}: no samples asked for")
        x = InputBatch.cat(xs) if isinstance(xs[0], InputBatch) else torch.cat(xs)
        y = torch.cat(ys)
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order))
        x, y = self._finish(x[back], y[back])
        return Split(x, y, self.task)

    def __repr__(self) -> str:
        return f"<Stream {self.describe()}: {len(self)} samples, task {self.task}>"


def is_stream(samples: Any) -> bool:
    """Whether ``samples`` is streamed (else it is an in-memory ``Split``)."""
    return isinstance(samples, Stream)


def iter_batches(x: Any, y: torch.Tensor | None, batch_size: int | None) -> Iterator[tuple[Any, torch.Tensor]]:
    """Batches of ``(x, y)`` tensors (slices of ``batch_size``), or of the samples ``x`` when ``y``
    is ``None`` (a ``Split`` or a :class:`Stream`: ``x.batches(batch_size)``)."""
    if y is None:
        yield from x.batches(batch_size)
        return
    size = batch_size or max(len(x), 1)
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


def select(x: Any, y: torch.Tensor | None, indices: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``(x[indices], y[indices])`` of tensors, or samples ``indices`` of the samples ``x`` (``y``
    ``None``) as in-memory tensors, in the order given."""
    if y is None:
        taken = x.take(indices)
        return taken.x, taken.y
    return x[indices], y[indices]


def samples_args(split: Any) -> tuple[Any, torch.Tensor | None]:
    """What a probe function takes for a split: ``(split.x, split.y)`` in memory, ``(stream, None)``
    streamed."""
    return (split, None) if is_stream(split) else (split.x, split.y)
