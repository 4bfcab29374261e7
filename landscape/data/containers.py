"""The data containers: a :class:`Split`, a loaded :class:`Dataset`, a loader's :class:`RawData`;
:func:`iterate_batches` over a split and :func:`describe_data`, its one-line description."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from landscape.data._checks import check_int
from landscape.errors import DataError
from landscape.tasks import TOKEN_TASKS


@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``x`` of shape ``(N, *input_shape)``, ``y`` int64 of shape ``(N,)`` — or
    ``(N, T)`` when ``task`` is a token task (:data:`landscape.tasks.TOKEN_TASKS`).

    ``x`` is float32 after standardization, else the dtype the data came in (float, or
    integer such as token ids for an ``nn.Embedding``).
    """

    x: torch.Tensor
    y: torch.Tensor
    task: str = "classification"

    def __post_init__(self) -> None:
        ndim = 2 if self.task in TOKEN_TASKS else 1
        ok = self.y.ndim >= 1 if self.task == "regression" else self.y.ndim == ndim
        if self.x.shape[0] != self.y.shape[0] or not ok:
            raise DataError(
                f"split has {self.x.shape[0]} inputs but labels of shape {tuple(self.y.shape)}"
                + (f" (task {self.task!r} needs (N, T))" if ndim == 2 else "")
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Split:
        """The same split on ``device``; floating inputs (and regression targets) cast to ``dtype``
        when given, integer ones never."""
        x = self.x.to(device, dtype if dtype is not None and self.x.is_floating_point() else self.x.dtype)
        y = self.y.to(device, dtype if dtype is not None and self.y.is_floating_point() else self.y.dtype)
        return Split(x, y, self.task)

    # the samples interface every probe reads (landscape.core.data): the same for a Stream

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(x[s:s+b], y[s:s+b])`` in order, ``b = batch_size`` (``None``: one batch of all)."""
        size = batch_size or max(len(self), 1)
        for start in range(0, len(self), size):
            yield self.x[start : start + size], self.y[start : start + size]

    def take(self, indices: torch.Tensor) -> Split:
        """Samples ``indices`` in the order given."""
        return Split(self.x[indices], self.y[indices], self.task)

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.numel() and not self.y.dtype.is_floating_point else 0

    @property
    def sample_inputs(self) -> Any:
        return self.x[:1]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: train and test splits plus how they were made (:attr:`info`).

    ``clean_train_y`` holds the train labels before ``label_noise`` /
    ``random_labels`` (``None`` when the labels were not touched), so that
    memorization of the corrupted samples can be measured.
    """

    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    info: dict
    clean_train_y: torch.Tensor | None = None

    @property
    def normalization(self) -> dict[str, Any]:
        """What was applied to the inputs, JSON-able: ``{"method": "none"}`` or
        ``{"method": "standardize", "axis": 1, "mean": [...], "std": [...], "fit_on": "train"}``."""
        return dict(self.info.get("normalization") or {"method": "none"})


class RawData(NamedTuple):
    """What a registered loader returns: arrays of shape ``(N, *input_shape)`` and ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    info: dict
    normalize: str = "standardize"  # the default of load_dataset(normalize=None) for this loader
    task: str = "classification"  # landscape.tasks; a token task has targets (N, T), -100 = ignored


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches of ``split``.

    With ``shuffle`` the order is ``torch.randperm(N, generator=generator)``
    (pass a seeded CPU generator for a repeatable order); without it the
    batches are contiguous views. ``drop_last`` skips a final short batch.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for start in range(0, stop, batch_size):
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.x.device)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def describe_data(dataset: Dataset) -> str:
    """One line saying what data a probe sees, e.g.
    ``npz digits_mine.npz, 1347 train / 450 test, inputs as given (no normalization)``."""
    source = dataset.info.get("source") or {}
    where = f" {Path(source['path']).name}" if isinstance(source.get("path"), str) else ""
    norm = dataset.normalization
    shape = "x".join(map(str, dataset.input_shape))
    if norm.get("method") == "standardize":
        channels = len(norm.get("mean") or [])
        how = (
            f"inputs {shape} standardized with the train mean/std of each of "
            f"{channels} channel{'s' if channels != 1 else ''} (axis 1)"
        )
    else:
        cast = f", cast {norm['dtype']} → {norm['cast_to']}" if norm.get("cast_to") else ""
        how = f"inputs {shape} as given (no normalization{cast})"
    return f"data: {dataset.name}{where}, {len(dataset.train)} train / {len(dataset.test)} test, {how}"
