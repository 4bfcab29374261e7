"""Datasets: a registry of loaders plus the options every experiment shares.

A *loader* is registered in :data:`DATASETS` and turns ``seed``, ``root`` and
its own keyword parameters into raw arrays (:class:`RawData`). :func:`load_dataset`
then applies the options the generalization literature varies, in this order,
each deterministic in ``seed`` and each drawing from its own random stream (so
changing one option never reshuffles what another one chose):

1. ``train_size`` / ``test_size``: a class-stratified random subset.
2. ``imbalance_ratio`` :math:`\\rho \\ge 1`: a long-tailed train set (Cao et al.,
   2019): class :math:`c` keeps :math:`n_c = \\lfloor n_{\\max}\\,\\rho^{-c/(C-1)} \\rfloor`
   samples, where :math:`n_{\\max}` is the smallest class count of the (subset)
   train set, so class 0 is the head and class :math:`C-1` the tail with
   :math:`\\lfloor n_{\\max}/\\rho \\rfloor` samples.
3. ``label_noise`` :math:`p`: exactly :math:`\\operatorname{round}(pN)` train labels,
   chosen uniformly without replacement, are replaced by a uniformly random
   *different* class (symmetric noise), or ``random_labels``: every train label
   is drawn uniformly from the :math:`C` classes (Zhang et al., 2017).
   Test labels are never corrupted.
4. ``normalize``: ``"standardize"`` gives float32 inputs minus the train set's
   per-channel mean, divided by its (population) std, the channel axis being
   axis 1 of ``x`` (the feature axis for vector inputs); ``"none"`` keeps the
   values as given: floating inputs and ``uint8`` pixels as float32 (the record
   says so when the dtype changed), other integer inputs in their own dtype.
   The default is the loader's own (:attr:`RawData.normalize`): ``"standardize"``
   for the registered datasets, ``"none"`` for ``npz`` (a user's arrays).
   Integer inputs other than ``uint8`` pixels, e.g. token ids, are never
   standardized: for them the default is ``"none"`` and asking for
   ``"standardize"`` is a ``ConfigError``. ``normalize`` may also be passed
   among a dataset's parameters (``--dataset-param normalize=none``).

Everything needed to repeat the draw (resolved parameters, sizes, class counts,
number of flipped labels, the normalization applied and its statistics, source
files) is in :attr:`Dataset.info`, which is JSON-serializable;
:attr:`Dataset.normalization` is the normalization record and :func:`describe_data`
a one-line description for humans.

Registering a loader::

    @DATASETS.register("my_data")
    def my_data(*, seed: int, root: Path | None, scale: float = 1.0) -> RawData:
        '''One docstring line shown in listings.'''
        ...
        return RawData(x_train, y_train, x_test, y_test, num_classes=10, info={...})

A loader whose arrays should be used as given by default returns
``RawData(..., normalize="none")``.

Loader keyword parameters (other than ``seed`` and ``root``) are the ones
:func:`load_dataset` accepts as ``**params``; anything else is a ``ConfigError``.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import math
import os
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from landscape.errors import ConfigError, DataError
from landscape.registry import Registry
from landscape.tasks import IGNORE_INDEX, TOKEN_TASKS

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "Dataset",
    "RawData",
    "Split",
    "dataset_names",
    "dataset_params",
    "describe_data",
    "iterate_batches",
    "load_dataset",
    "load_pickle_restricted",
    "read_idx",
]

DATA_ENV = "LANDSCAPE_DATA"
"""Environment variable naming the data root (default ``data`` in the current directory)."""

NORMALIZATIONS = ("standardize", "none")
"""The values of ``load_dataset(normalize=...)``; ``None`` there means the loader's default."""

# Independent random streams of ``load_dataset``: np.random.default_rng([seed, STREAM]).
_STREAM_TRAIN_SUBSET = 1
_STREAM_TEST_SUBSET = 2
_STREAM_IMBALANCE = 3
_STREAM_LABELS = 4


# --------------------------------------------------------------------------- containers


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


Loader = Callable[..., RawData]
DATASETS: Registry[Loader] = Registry("dataset")


def dataset_names() -> list[str]:
    """The registered dataset names (aliases not included)."""
    return DATASETS.names()


def dataset_params(name: str) -> dict[str, Any]:
    """The loader's own parameters and their defaults (``inspect.Parameter.empty`` if required)."""
    return {p.name: p.default for p in _loader_parameters(DATASETS[name])}


# --------------------------------------------------------------------------- load_dataset


def load_dataset(
    name: str = "digits",
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    label_noise: float = 0.0,
    random_labels: bool = False,
    imbalance_ratio: float = 1.0,
    normalize: str | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    **params: Any,
) -> Dataset:
    """Load dataset ``name`` and apply the shared options (see the module docstring).

    ``normalize`` is ``"standardize"``, ``"none"`` or ``None`` (the loader's default:
    ``"none"`` for ``npz``, ``"standardize"`` for the registered datasets).
    ``root`` is the folder a file-based loader reads (default: the dataset's
    folder under ``$LANDSCAPE_DATA`` or ``data/``); ``params`` go to the loader.
    """
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    canonical = DATASETS.canonical(name)
    loader = DATASETS[canonical]
    seed = _check_int("seed", seed, minimum=0)
    train_size = None if train_size is None else _check_int("train_size", train_size, minimum=1)
    test_size = None if test_size is None else _check_int("test_size", test_size, minimum=1)
    label_noise = _check_float("label_noise", label_noise, low=0.0, high=1.0)
    imbalance_ratio = _check_float("imbalance_ratio", imbalance_ratio, low=1.0)
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
        )
    if not isinstance(random_labels, bool):
        raise ConfigError(f"random_labels must be true or false, got {random_labels!r}")
    if random_labels and label_noise > 0:
        raise ConfigError(
            "random_labels=True replaces every train label; do not combine it with label_noise"
        )
    accepted = {p.name: p for p in _loader_parameters(loader)}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        names = ", ".join(accepted) or "(none)"
        raise ConfigError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for dataset {canonical!r}; accepted: {names}"
        )
    missing = [
        n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params
    ]
    if missing:
        raise ConfigError(f"dataset {canonical!r} needs parameter {', '.join(missing)}")
    resolved = {n: params.get(n, p.default) for n, p in accepted.items()}
    root_path = None if root is None else Path(root).expanduser()

    raw = loader(seed=seed, root=root_path, **params)
    x_train, y_train, x_test, y_test, num_classes = _check_raw(canonical, raw)
    input_shape = tuple(int(d) for d in x_train.shape[1:])

    info: dict[str, Any] = {
        "name": canonical,
        "seed": seed,
        "params": _jsonable(resolved),
        "options": {
            "train_size": train_size,
            "test_size": test_size,
            "label_noise": label_noise,
            "random_labels": random_labels,
            "imbalance_ratio": imbalance_ratio,
            "root": None if root_path is None else str(root_path),
        },
        "source": _jsonable(raw.info),
        "available": {"train": len(y_train), "test": len(y_test)},
    }

    tokens = raw.task in TOKEN_TASKS
    if tokens:
        asked = [n for n, v in (("label_noise", label_noise > 0), ("random_labels", random_labels),
                                ("imbalance_ratio", imbalance_ratio > 1.0)) if v]
        if asked:
            raise ConfigError(f"dataset {canonical!r} has per-token targets (task {raw.task!r}); "
                              f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} on one class label per sample: "
                              "leave them at their defaults")
        info["task"] = {"name": raw.task, "ignore_index": IGNORE_INDEX, "shift": raw.task == "causal_lm"}

    # 1. subsets
    if tokens and train_size is not None:  # per-token targets: a plain random subset (no classes)
        x_train, y_train = _random_subset(canonical, "train", x_train, y_train, train_size,
                                          _rng(seed, _STREAM_TRAIN_SUBSET))
        train_size = None
    if tokens and test_size is not None:
        x_test, y_test = _random_subset(canonical, "test", x_test, y_test, test_size,
                                        _rng(seed, _STREAM_TEST_SUBSET))
        test_size = None
    if train_size is not None:
        idx = _subset(
            canonical, "train", y_train, train_size, num_classes, _rng(seed, _STREAM_TRAIN_SUBSET)
        )
        x_train, y_train = x_train[idx], y_train[idx]
    if test_size is not None:
        idx = _subset(
            canonical, "test", y_test, test_size, num_classes, _rng(seed, _STREAM_TEST_SUBSET)
        )
        x_test, y_test = x_test[idx], y_test[idx]

    # 2. long tail
    if imbalance_ratio > 1.0:
        idx, imbalance_info = _long_tail(
            y_train, imbalance_ratio, num_classes, _rng(seed, _STREAM_IMBALANCE)
        )
        x_train, y_train = x_train[idx], y_train[idx]
        info["imbalance"] = imbalance_info

    # 3. label corruption (train only)
    clean_y: np.ndarray | None = None
    if label_noise > 0 or random_labels:
        clean_y = y_train.copy()
        rng = _rng(seed, _STREAM_LABELS)
        if random_labels:
            y_train = rng.integers(0, num_classes, size=len(y_train)).astype(np.int64)
        else:
            y_train = _symmetric_noise(y_train, label_noise, num_classes, rng)
        changed = int((y_train != clean_y).sum())
        info["label_corruption"] = {
            "kind": "random_labels" if random_labels else "symmetric",
            "requested": 1.0 if random_labels else label_noise,
            "changed": changed,
            "fraction_applied": changed / max(len(y_train), 1),
        }

    # 4. normalization
    if raw.normalize not in NORMALIZATIONS:
        raise DataError(
            f"dataset {canonical!r}: its loader's default normalize={raw.normalize!r} is not one "
            f"of {', '.join(NORMALIZATIONS)}"
        )
    ids = _is_index_dtype(x_train.dtype)
    method = normalize or ("none" if ids else raw.normalize)
    if method == "standardize" and ids:
        raise ConfigError(
            f"dataset {canonical!r} has integer inputs ({x_train.dtype}, e.g. token ids), which "
            "cannot be standardized; use normalize=none (the default for integer inputs)"
        )
    info["options"]["normalize"] = normalize
    if method == "standardize":
        x_train, x_test, norm = _standardize(x_train, x_test)
    else:
        norm = {"method": "none", "dtype": str(x_train.dtype)}
        x_train, x_test = _as_given(x_train), _as_given(x_test)
        if str(x_train.dtype) != norm["dtype"]:
            norm["cast_to"] = str(x_train.dtype)
    info["normalization"] = norm
    info["sizes"] = {"train": len(y_train), "test": len(y_test)}
    if tokens:
        shift = raw.task == "causal_lm"
        info["task"]["valid_tokens"] = {
            split: int(((y[:, 1:] if shift else y) != IGNORE_INDEX).sum()) for split, y in
            (("train", y_train), ("test", y_test))
        }
    else:
        info["class_counts"] = {
            "train": np.bincount(y_train, minlength=num_classes).tolist(),
            "test": np.bincount(y_test, minlength=num_classes).tolist(),
        }
    info["input_shape"] = list(input_shape)
    info["num_classes"] = num_classes

    return Dataset(
        name=canonical,
        train=Split(
            torch.from_numpy(x_train), torch.from_numpy(np.ascontiguousarray(y_train, np.int64)),
            raw.task,
        ),
        test=Split(
            torch.from_numpy(x_test), torch.from_numpy(np.ascontiguousarray(y_test, np.int64)),
            raw.task,
        ),
        input_shape=input_shape,
        num_classes=num_classes,
        info=info,
        clean_train_y=None
        if clean_y is None
        else torch.from_numpy(np.ascontiguousarray(clean_y, np.int64)),
    )


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
    batch_size = _check_int("batch_size", batch_size, minimum=1)
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


# --------------------------------------------------------------------------- shared steps


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _loader_parameters(loader: Loader) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(loader).parameters.values()
        if p.name not in ("seed", "root") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _check_raw(
    name: str, raw: RawData
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    x_train, x_test = np.asarray(raw.x_train), np.asarray(raw.x_test)
    y_train, y_test = np.asarray(raw.y_train), np.asarray(raw.y_test)
    num_classes = int(raw.num_classes)
    if num_classes < 2:
        raise DataError(f"dataset {name!r}: needs at least 2 classes, got {num_classes}")
    if x_train.ndim < 2 or x_test.ndim < 2:
        raise DataError(
            f"dataset {name!r}: inputs must have shape (N, ...), got {x_train.shape} and {x_test.shape}"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"dataset {name!r}: train inputs {x_train.shape[1:]} and test inputs {x_test.shape[1:]} differ in shape"
        )
    tokens = raw.task in TOKEN_TASKS
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y.ndim != (2 if tokens else 1) or len(y) != len(x):
            raise DataError(
                f"dataset {name!r}: {split} has {len(x)} inputs but labels of shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"dataset {name!r}: {split} labels must be integers, got {y.dtype}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DataError(f"dataset {name!r}: {split} inputs must be numeric, got {x.dtype}")
        if len(y) == 0:
            raise DataError(f"dataset {name!r}: the {split} split is empty")
        counted = y[y != IGNORE_INDEX] if tokens else y
        if counted.size and (counted.min() < 0 or counted.max() >= num_classes):
            y = counted
            raise DataError(
                f"dataset {name!r}: {split} labels span [{y.min()}, {y.max()}], outside [0, {num_classes - 1}]"
            )
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), num_classes


def _allocate(counts: np.ndarray, size: int) -> np.ndarray:
    """Largest-remainder split of ``size`` over classes proportionally to ``counts``."""
    total = int(counts.sum())
    exact = counts * (size / total)
    alloc = np.floor(exact).astype(np.int64)
    short = size - int(alloc.sum())
    if short:
        # ties broken by class index (stable sort) so the allocation is deterministic
        order = np.argsort(-(exact - alloc), kind="stable")
        alloc[order[:short]] += 1
    return np.minimum(alloc, counts)


def _random_subset(name: str, split: str, x: np.ndarray, y: np.ndarray, size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random subset of ``size`` samples (kept in their order), for per-token targets."""
    if size > len(y):
        raise ConfigError(f"{split}_size={size} exceeds the {len(y)} {split} samples of dataset {name!r}")
    idx = np.sort(rng.choice(len(y), size=size, replace=False))
    return x[idx], y[idx]


def _subset(
    name: str, split: str, y: np.ndarray, size: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``size`` samples."""
    if size > len(y):
        raise ConfigError(
            f"{split}_size={size} exceeds the {len(y)} {split} samples of dataset {name!r}"
        )
    counts = np.bincount(y, minlength=num_classes)
    alloc = _allocate(counts, size)
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(k), replace=False)
        for c, k in enumerate(alloc)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen))


def _long_tail(
    y: np.ndarray, ratio: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Sorted indices keeping ``floor(n_max * ratio**(-c/(C-1)))`` samples of class ``c``."""
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() == 0:
        empty = int(np.argmin(counts))
        raise ConfigError(
            f"imbalance_ratio needs every class in the train set, but class {empty} has no samples"
        )
    n_max = int(counts.min())
    keep = [
        # the 1e-9 guards floor() against n_max * rho**-1 landing just under an integer
        int(math.floor(n_max * ratio ** (-c / (num_classes - 1)) + 1e-9))
        for c in range(num_classes)
    ]
    if min(keep) < 1:
        raise ConfigError(
            f"imbalance_ratio={ratio:g} leaves class {keep.index(0)} with no samples (n_max={n_max}); "
            "use a smaller ratio or a larger train set"
        )
    chosen = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in enumerate(keep)]
    return np.sort(np.concatenate(chosen)), {"ratio": ratio, "n_max": n_max, "counts": keep}


def _symmetric_noise(
    y: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Replace ``round(fraction * N)`` labels by a uniformly random different class."""
    k = int(round(fraction * len(y)))
    idx = rng.choice(len(y), size=k, replace=False)
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=k)) % num_classes
    return noisy


def _standardize(
    x_train: np.ndarray, x_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Float32 inputs standardized with the train set's per-channel (axis 1) mean and std.

    Statistics are accumulated in float64 over chunks of samples; a channel whose
    std is below 1e-12 (e.g. a constant pixel) is only centred.
    """
    xtr = np.array(x_train, dtype=np.float32, order="C", copy=True)
    xte = np.array(x_test, dtype=np.float32, order="C", copy=True)
    axes = (0, *range(2, xtr.ndim))
    shape = (1, xtr.shape[1]) + (1,) * (xtr.ndim - 2)
    n_per_channel = xtr.size // xtr.shape[1]
    chunk = max(1, (1 << 22) // max(1, xtr[0].size))
    total = np.zeros(xtr.shape[1])
    for start in range(0, len(xtr), chunk):
        total += xtr[start : start + chunk].sum(axis=axes, dtype=np.float64)
    mean = total / n_per_channel
    sq = np.zeros(xtr.shape[1])
    for start in range(0, len(xtr), chunk):
        dev = xtr[start : start + chunk].astype(np.float64) - mean.reshape(shape)
        sq += np.square(dev).sum(axis=axes)
    std = np.sqrt(sq / n_per_channel)
    scale = np.where(std < 1e-12, 1.0, std)
    for arr in (xtr, xte):
        arr -= mean.reshape(shape).astype(np.float32)
        arr /= scale.reshape(shape).astype(np.float32)
    record = {"method": "standardize", "axis": 1, "fit_on": "train"}
    return xtr, xte, {**record, "mean": mean.tolist(), "std": std.tolist()}


def _is_index_dtype(dtype: np.dtype) -> bool:
    """Integer inputs other than 8-bit pixels (``uint8``): indices such as token ids, which
    keep their dtype and are never standardized."""
    return bool(np.issubdtype(dtype, np.integer)) and dtype != np.uint8


def _as_given(x: np.ndarray) -> np.ndarray:
    """``x`` with its values unchanged, in a dtype a model takes: floating inputs, 8-bit pixels
    (``uint8``) and booleans as float32 (the dtype of a model's weights; float64 is rounded
    once), index integers as they are (unsigned 16/32/64-bit ones, which torch lacks, as int64)."""
    if np.issubdtype(x.dtype, np.floating) or x.dtype in (np.uint8, np.bool_):
        return np.array(x, dtype=np.float32, order="C", copy=True)
    if x.dtype in (np.uint16, np.uint32, np.uint64):
        if x.size and int(x.max()) > np.iinfo(np.int64).max:
            raise DataError(f"inputs of dtype {x.dtype} exceed the int64 range torch can hold")
        return np.array(x, dtype=np.int64, order="C", copy=True)
    return np.array(x, dtype=x.dtype.newbyteorder("="), order="C", copy=True)


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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


# --------------------------------------------------------------------------- validation helpers


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if open_low or low is None else '['}{lo}, {hi}{')' if open_high or high is None else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value:g}")
    return value


def _check_shape(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(
            f"{name} must be a list of positive integers like [3, 32, 32], got {value!r}"
        )
    return tuple(_check_int(name, v, minimum=1) for v in value)


def _resolve_dim(dim: int | None, image_shape: Sequence[int] | None) -> tuple[int, tuple[int, ...]]:
    """``(dim, input_shape)`` for the synthetic loaders: ``dim`` defaults to 32 or prod(image_shape)."""
    if image_shape is None:
        d = 32 if dim is None else _check_int("dim", dim, minimum=1)
        return d, (d,)
    shape = _check_shape("image_shape", image_shape)
    d = math.prod(shape)
    if dim is not None and _check_int("dim", dim, minimum=1) != d:
        raise ConfigError(
            f"dim={dim} does not match image_shape={list(shape)} (product {d}); give one of them"
        )
    return d, shape


# --------------------------------------------------------------------------- loaders: embedded / synthetic


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as read once per process (parsing its CSV costs ~0.1–1 s); callers copy."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :]
    x.flags.writeable = False
    y = np.asarray(bunch.target, dtype=np.int64)
    y.flags.writeable = False
    return x, y


@DATASETS.register("digits")
def _digits(*, seed: int, root: Path | None, test_fraction: float = 0.25) -> RawData:
    """sklearn's 8x8 handwritten digits (1797 samples, 10 classes), input (1, 8, 8); embedded, no files.

    A class-stratified split drawn from ``seed`` puts ``round(test_fraction * n_c)``
    samples of each class ``c`` into the test set.
    """
    test_fraction = _check_float(
        "test_fraction", test_fraction, low=0.0, high=1.0, open_low=True, open_high=True
    )
    x, y = _digits_arrays()
    rng = np.random.default_rng([seed, 0])
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        k = min(max(int(round(test_fraction * len(members))), 1), len(members) - 1)
        test_idx.append(rng.choice(members, size=k, replace=False))
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    return RawData(
        x[~test_mask],
        y[~test_mask],
        x[test_mask],
        y[test_mask],
        10,
        {"source": "sklearn.datasets.load_digits", "pixel_range": [0, 16]},
    )


@DATASETS.register("gaussian_mixture", "gmm")
def _gaussian_mixture(
    *,
    seed: int,
    root: Path | None,
    num_classes: int = 10,
    dim: int | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
    separation: float = 3.0,
    noise: float = 1.0,
    image_shape: Sequence[int] | None = None,
) -> RawData:
    """Synthetic Gaussian mixture: one isotropic Gaussian per class, balanced classes.

    .. math::

        \\mu_c \\sim \\mathcal{N}(0, \\tfrac{s^2}{d} I_d), \\qquad
        x = \\mu_y + \\sigma\\,\\varepsilon, \\quad \\varepsilon \\sim \\mathcal{N}(0, I_d),

    with ``s = separation`` and ``σ = noise``, so ``‖μ_c‖ ≈ s`` and two means are
    ``≈ s√2`` apart whatever the dimension ``d``: the Bayes error depends on
    ``s/σ`` only (defaults: pairwise margin ≈ 4.2σ, a few percent Bayes error
    over 10 classes), while learning gets harder as ``d`` grows because the means
    must be estimated from ``n_train`` samples. ``dim`` defaults to 32, or to
    ``prod(image_shape)`` when ``image_shape`` (e.g. ``[3, 32, 32]``) is given, in
    which case inputs are reshaped to it (i.i.d. pixels, no spatial structure).
    Labels are ``arange(n) % C`` shuffled, so classes are exactly balanced when
    ``C`` divides ``n``.
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    n_train = _check_int("n_train", n_train, minimum=1)
    n_test = _check_int("n_test", n_test, minimum=1)
    separation = _check_float("separation", separation, low=0.0)
    noise = _check_float("noise", noise, low=0.0)
    d, shape = _resolve_dim(dim, image_shape)
    rng = np.random.default_rng([seed, 0])
    means = rng.standard_normal((num_classes, d)) * (separation / math.sqrt(d))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        x = means[y] + noise * rng.standard_normal((n, d))
        return x.astype(np.float32).reshape((n, *shape)), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    info = {
        "dim": d,
        "input_shape": list(shape),
        "mean_norms": np.linalg.norm(means, axis=1).round(6).tolist(),
    }
    return RawData(x_train, y_train, x_test, y_test, num_classes, info)


@DATASETS.register("teacher_student")
def _teacher_student(
    *,
    seed: int,
    root: Path | None,
    num_classes: int = 10,
    dim: int | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
    hidden: int = 64,
    depth: int = 2,
    image_shape: Sequence[int] | None = None,
) -> RawData:
    """Synthetic teacher–student task: a fixed random ReLU MLP labels Gaussian inputs.

    Inputs ``x ~ N(0, I_d)``; the teacher has ``depth`` hidden ReLU layers of width
    ``hidden`` (He-initialized, ``W ~ N(0, 2/fan_in)``, no bias) and a linear
    read-out ``N(0, 1/fan_in)``; the label is ``argmax_c (z_c - m_c)/s_c + b_c``,
    where ``m, s`` are the logits' mean and std on a reference sample of 20 000
    inputs and the offsets ``b`` are fitted on that sample so that every class
    is about equally frequent (a raw random teacher puts most inputs in one or
    two classes). The labels are a deterministic function of ``x`` (no noise).
    ``dim`` / ``image_shape`` behave as in ``gaussian_mixture``; ``depth=0`` is a
    linear teacher.
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    n_train = _check_int("n_train", n_train, minimum=1)
    n_test = _check_int("n_test", n_test, minimum=1)
    hidden = _check_int("hidden", hidden, minimum=1)
    depth = _check_int("depth", depth, minimum=0)
    d, shape = _resolve_dim(dim, image_shape)
    rng = np.random.default_rng([seed, 0])
    weights = []
    fan_in = d
    for _ in range(depth):
        weights.append(rng.standard_normal((fan_in, hidden)) * math.sqrt(2.0 / fan_in))
        fan_in = hidden
    readout = rng.standard_normal((fan_in, num_classes)) / math.sqrt(fan_in)

    def logits(x: np.ndarray) -> np.ndarray:
        h = x
        for w in weights:
            h = np.maximum(h @ w, 0.0)
        return h @ readout

    reference = logits(rng.standard_normal((20_000, d)))
    m, s = reference.mean(axis=0), reference.std(axis=0) + 1e-12
    z_ref = (reference - m) / s
    offsets = np.zeros(num_classes)
    for _ in range(200):
        freq = np.bincount((z_ref + offsets).argmax(axis=1), minlength=num_classes) / len(z_ref)
        offsets -= 0.5 * (freq - 1.0 / num_classes)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, d))
        y = ((logits(x) - m) / s + offsets).argmax(axis=1).astype(np.int64)
        return x.astype(np.float32).reshape((n, *shape)), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return RawData(
        x_train, y_train, x_test, y_test, num_classes, {"dim": d, "input_shape": list(shape)}
    )


# --------------------------------------------------------------------------- loaders: algorithmic

MODULAR_OPS: dict[str, str] = {
    "add": "a + b",
    "sub": "a - b",
    "mul": "a * b",
    "div": "a * b^-1 (b != 0)",
    "quad": "a^2 + a*b + b^2",
}
"""The operations of the ``modular`` dataset (Power et al. 2022), all taken mod ``p``."""

_OP_ALIASES = {"+": "add", "-": "sub", "*": "mul", "x": "mul", "/": "div", "÷": "div",
               "x2+xy+y2": "quad", "x^2+xy+y^2": "quad", "a^2+ab+b^2": "quad"}
MODULAR_FORMATS = ("tokens", "pairs", "onehot")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def modular_table(p: int, op: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operand pair of ``a ∘ b mod p`` in row-major order and its result: ``(a, b, c)``,
    int64; ``div`` leaves out ``b = 0`` and uses ``b⁻¹ = b^(p-2) mod p`` (``p`` prime)."""
    a, b = (g.ravel().astype(np.int64) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)
        c = a * inverse[b] % p
    elif op == "add":
        c = (a + b) % p
    elif op == "sub":
        c = (a - b) % p
    elif op == "mul":
        c = a * b % p
    else:  # quad
        c = (a * a + a * b + b * b) % p
    return a, b, c


@DATASETS.register("modular", "modular_arithmetic")
def _modular(
    *,
    seed: int,
    root: Path | None,
    p: int = 97,
    op: str = "add",
    train_fraction: float = 0.3,
    format: str = "tokens",  # noqa: A002 — the user-facing parameter name
) -> RawData:
    """Modular arithmetic ``a ∘ b mod p`` (grokking, Power et al. 2022): every pair, split at random.

    ``op`` is ``add`` (+), ``sub`` (-), ``mul`` (*), ``div`` (/: ``a · b⁻¹``, ``b ≠ 0``, ``p``
    prime) or ``quad`` (``a² + ab + b²``). The table of all ``p²`` pairs (``p(p-1)`` for ``div``)
    is permuted with ``seed`` and its first ``round(train_fraction · N)`` rows are the train
    split, the rest the test split; the label is ``a ∘ b mod p`` (``p`` classes).
    ``format``: ``tokens`` gives ``x = [a, OP, b, =]`` int64 ids with ``OP = p`` and ``= = p + 1``
    (vocabulary ``p + 2``, for a transformer classifying from the last token); ``pairs`` gives
    ``x = [a, b]`` int64 ids (vocabulary ``p``, for an MLP with embeddings: ``mlp`` with
    ``vocab=p``); ``onehot`` gives float32 ``[onehot(a), onehot(b)]`` of length ``2p``.
    The vocabulary size is ``info["vocab"]``.
    """
    p = _check_int("p", p, minimum=2)
    if not isinstance(op, str) or _OP_ALIASES.get(op.strip(), op.strip().lower()) not in MODULAR_OPS:
        raise ConfigError(f"modular op must be one of {', '.join(MODULAR_OPS)} (or + - * /), got {op!r}")
    op = _OP_ALIASES.get(op.strip(), op.strip().lower())
    if format not in MODULAR_FORMATS:
        raise ConfigError(f"modular format must be one of {', '.join(MODULAR_FORMATS)}, got {format!r}")
    train_fraction = _check_float(
        "train_fraction", train_fraction, low=0.0, high=1.0, open_low=True, open_high=True
    )
    if op == "div" and not _is_prime(p):
        raise ConfigError(f"modular division needs a prime p (every b ≠ 0 invertible), got p={p}")
    a, b, c = modular_table(p, op)
    n = len(c)
    n_train = min(max(int(round(train_fraction * n)), 1), n - 1)
    order = np.random.default_rng([seed, 0]).permutation(n)
    if format == "tokens":
        x = np.stack([a, np.full(n, p), b, np.full(n, p + 1)], axis=1).astype(np.int64)
        vocab = p + 2
    elif format == "pairs":
        x = np.stack([a, b], axis=1).astype(np.int64)
        vocab = p
    else:
        x = np.zeros((n, 2 * p), dtype=np.float32)
        x[np.arange(n), a] = 1.0
        x[np.arange(n), p + b] = 1.0
        vocab = p
    train, test = order[:n_train], order[n_train:]
    info = {
        "p": p,
        "op": op,
        "formula": f"{MODULAR_OPS[op]} mod {p}",
        "format": format,
        "vocab": vocab,
        "pairs": n,
        "train_fraction_applied": n_train / n,
        **({"tokens": {"op": p, "equals": p + 1}} if format == "tokens" else {}),
    }
    return RawData(x[train], c[train], x[test], c[test], p, info, normalize="none")


CORPUS = "tinyshakespeare.txt"
"""The character-level corpus shipped in ``landscape/corpora/`` (see its README)."""


def _read_text(path: Path | str | None) -> tuple[str, str]:
    """The UTF-8 text of ``path`` (the shipped corpus when ``None``) and where it came from."""
    import hashlib
    from importlib import resources

    if path is None:
        data = resources.files("landscape").joinpath("corpora", CORPUS).read_bytes()
        where = f"landscape/corpora/{CORPUS}"
    else:
        file = Path(path).expanduser()
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read text file {file}: {exc.strerror}; pass path=<a UTF-8 text file>") from exc
        where = str(file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text (byte {exc.start}); pass a UTF-8 text file") from exc
    return text, f"{where} (sha256 {hashlib.sha256(data).hexdigest()[:16]})"


@DATASETS.register("shakespeare_chars", "tiny_shakespeare", "chars", "text")
def _shakespeare_chars(
    *,
    seed: int,
    root: Path | None,
    context: int = 64,
    stride: int | None = None,
    test_fraction: float = 0.1,
    path: str | None = None,
) -> RawData:
    """Character-level language modelling on a text: next-character targets for every position.

    The text is the shipped corpus (the first 262,063 characters of Karpathy's *tiny
    shakespeare*, public domain; ``landscape/corpora/README.md``) or the UTF-8 file ``path``.
    Characters are ids in sorted order of the text's alphabet (``info["alphabet"]``, vocabulary
    ``info["vocab"]``). The first ``1 − test_fraction`` of the text is the train split, the rest
    the test split (contiguous, so no window straddles both). A sample is the window
    ``x = ids[s : s + context]`` with targets ``y = ids[s + 1 : s + context + 1]`` (pre-shifted:
    position ``t`` predicts character ``t + 1``; task ``token_classification``), for
    ``s = 0, stride, 2·stride, …`` (``stride`` defaults to ``context``: disjoint windows).
    ``seed`` is not used: the windows are a deterministic function of the text.
    """
    context = _check_int("context", context, minimum=1)
    stride = context if stride is None else _check_int("stride", stride, minimum=1)
    test_fraction = _check_float("test_fraction", test_fraction, low=0.0, high=1.0,
                                 open_low=True, open_high=True)
    text, source = _read_text(path)
    alphabet = sorted(set(text))
    if len(alphabet) < 2:
        raise DataError(f"{source}: the text has {len(alphabet)} distinct character(s); need at least 2")
    lookup = {c: i for i, c in enumerate(alphabet)}
    ids = np.array([lookup[c] for c in text], dtype=np.int64)
    cut = int(round((1.0 - test_fraction) * len(ids)))

    def windows(part: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        starts = np.arange(0, len(part) - context, stride)
        if not len(starts):
            raise ConfigError(f"the {split} text has {len(part)} characters, too few for context={context}; "
                              "lower context or test_fraction")
        offsets = starts[:, None] + np.arange(context)[None, :]
        return part[offsets], part[offsets + 1]

    x_train, y_train = windows(ids[:cut], "train")
    x_test, y_test = windows(ids[cut:], "test")
    info = {
        "source": source,
        "characters": len(ids),
        "alphabet": "".join(alphabet),
        "vocab": len(alphabet),
        "context": context,
        "stride": stride,
        "split_at_character": cut,
        "targets": "next character: y[:, t] = x[:, t + 1] of the text (pre-shifted)",
    }
    return RawData(x_train, y_train, x_test, y_test, len(alphabet), info, normalize="none",
                   task="token_classification")


SPARSE_PARITY_ENCODINGS = ("pm1", "binary", "tokens")


def _distinct_bits(rng: np.random.Generator, n_rows: int, n_bits: int) -> np.ndarray:
    """``n_rows`` distinct uniformly random rows of ``{0, 1}^n_bits`` (uint8), in random order."""
    if n_bits <= 20:
        codes = rng.choice(2**n_bits, size=n_rows, replace=False)
        return ((codes[:, None] >> np.arange(n_bits)) & 1).astype(np.uint8)
    bits = rng.integers(0, 2, size=(n_rows, n_bits), dtype=np.uint8)
    while True:
        _, first = np.unique(np.packbits(bits, axis=1), axis=0, return_index=True)
        duplicate = np.setdiff1d(np.arange(n_rows), first)
        if not len(duplicate):
            return bits
        bits[duplicate] = rng.integers(0, 2, size=(len(duplicate), n_bits), dtype=np.uint8)


@DATASETS.register("sparse_parity")
def _sparse_parity(
    *,
    seed: int,
    root: Path | None,
    n_bits: int = 20,
    k: int = 3,
    n_train: int = 2000,
    n_test: int = 1000,
    encoding: str = "pm1",
) -> RawData:
    """Sparse parity (Barak et al. 2022): ``y = (Σ_{i∈S} b_i) mod 2`` over ``k`` hidden bits ``S``.

    ``S`` (``info["relevant"]``) is ``k`` of the ``n_bits`` positions drawn from ``seed``; the
    ``n_train + n_test`` inputs are distinct uniform bit strings ``b ∈ {0,1}^n`` (no test input is
    in the train split). ``encoding``: ``pm1`` gives float32 ``x = 1 − 2b ∈ {±1}`` (so
    ``∏_{i∈S} x_i = (−1)^y``), ``binary`` float32 ``b``, ``tokens`` int64 ids ``b`` (vocabulary 2).
    """
    n_bits = _check_int("n_bits", n_bits, minimum=1)
    k = _check_int("k", k, minimum=1)
    n_train = _check_int("n_train", n_train, minimum=1)
    n_test = _check_int("n_test", n_test, minimum=1)
    if k > n_bits:
        raise ConfigError(f"sparse_parity needs k ≤ n_bits, got k={k}, n_bits={n_bits}")
    if encoding not in SPARSE_PARITY_ENCODINGS:
        raise ConfigError(
            f"sparse_parity encoding must be one of {', '.join(SPARSE_PARITY_ENCODINGS)}, got {encoding!r}"
        )
    if n_bits < 62 and n_train + n_test > 2**n_bits:
        raise ConfigError(
            f"sparse_parity: {n_train} + {n_test} distinct inputs do not fit in 2^{n_bits} bit "
            "strings; lower n_train / n_test or raise n_bits"
        )
    rng = np.random.default_rng([seed, 0])
    relevant = np.sort(rng.choice(n_bits, size=k, replace=False))
    bits = _distinct_bits(rng, n_train + n_test, n_bits)
    y = (bits[:, relevant].sum(axis=1) % 2).astype(np.int64)
    if encoding == "pm1":
        x: np.ndarray = (1.0 - 2.0 * bits).astype(np.float32)
    elif encoding == "binary":
        x = bits.astype(np.float32)
    else:
        x = bits.astype(np.int64)
    info = {"n_bits": n_bits, "k": k, "relevant": relevant.tolist(), "encoding": encoding,
            **({"vocab": 2} if encoding == "tokens" else {})}
    return RawData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2, info, normalize="none")


# --------------------------------------------------------------------------- loaders: local files


def _data_root() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("data")


def _folders(
    root: Path | None, default: str, under_root: Sequence[str], under_data: Sequence[str]
) -> list[Path]:
    """Folders to look in: ``root`` and ``root/<under_root>``, or, without ``root``,
    ``<data>/<default>`` and ``<data>/<under_data>`` with ``<data>`` = ``$LANDSCAPE_DATA`` or ``data``."""
    if root is not None:
        return [root, *(root / sub for sub in under_root)]
    base = _data_root()
    return [base / default, *(base / sub for sub in under_data)]


# IDX: magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then the data.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_path(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder``; the dotted spelling (``train-images.idx3-ubyte``) too."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array in native byte order.

    Raises ``DataError`` naming the file for a bad magic number, an unknown
    dtype code, or a size that disagrees with the header (truncated or trailing bytes).
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                blob = fh.read()
        else:
            blob = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(blob) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(blob)} bytes, shorter than the 4-byte magic number"
        )
    zero0, zero1, code, ndim = blob[:4]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"bad magic number 0x{int.from_bytes(blob[:4], 'big'):08x} in {path}: not an IDX file "
            "(expected 0x0000, a dtype code 0x08-0x0E and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(
            f"IDX file {path} is truncated inside its header ({len(blob)} of {header} bytes)"
        )
    dims = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {what}: {len(blob)} bytes, header {list(dims)} needs {expected}"
        )
    return (
        np.frombuffer(blob, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def _load_idx_set(title: str, folders: list[Path], where: str) -> RawData:
    found = {f: {k: _idx_path(f, stem) for k, stem in _IDX_FILES.items()} for f in folders}
    complete = [f for f in folders if all(found[f].values())]
    expected = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
    if not complete:
        partial = [f for f in folders if any(found[f].values())]
        home = folders[0]
        if partial:
            f = partial[0]
            missing = ", ".join(f"{_IDX_FILES[k]}[.gz]" for k, p in found[f].items() if p is None)
            raise DataError(
                f"{title} incomplete in {f}: missing {missing}; {where} into {f} (see data/README.md)"
            )
        also = f" (also looked in {', '.join(map(str, folders[1:]))})" if len(folders) > 1 else ""
        raise DataError(
            f"{title} not found: expected {expected} in {home}{also}; {where} into {home} "
            f"or pass root=... or set {DATA_ENV} (see data/README.md)"
        )
    files = found[complete[0]]
    arrays = {k: read_idx(p) for k, p in files.items() if p is not None}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3:
            raise DataError(
                f"{files[f'x_{split}']} holds a {x.ndim}-D array; expected images of shape (N, rows, cols)"
            )
        if y.ndim != 1:
            raise DataError(
                f"{files[f'y_{split}']} holds a {y.ndim}-D array; expected labels of shape (N,)"
            )
        if len(x) != len(y):
            raise DataError(
                f"{files[f'x_{split}']} has {len(x)} images but {files[f'y_{split}']} has {len(y)} labels"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{title}: train images {arrays['x_train'].shape[1:]} and test images {arrays['x_test'].shape[1:]} differ"
        )
    return RawData(
        arrays["x_train"][:, None],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"][:, None],
        arrays["y_test"].astype(np.int64),
        10,
        {"files": {k: str(p) for k, p in files.items()}},
    )


@DATASETS.register("mnist")
def _mnist(*, seed: int, root: Path | None) -> RawData:
    """MNIST from the four standard IDX files (raw or .gz) in ``root`` (default ``data/mnist``); input (1, 28, 28)."""
    folders = _folders(root, "mnist", ["raw", "mnist", "MNIST/raw"], ["mnist/raw", "MNIST/raw"])
    return _load_idx_set(
        "MNIST",
        folders,
        "download the four IDX files from the MNIST page (yann.lecun.com/exdb/mnist)",
    )


@DATASETS.register("fashion_mnist", "fashion")
def _fashion_mnist(*, seed: int, root: Path | None) -> RawData:
    """Fashion-MNIST from the four standard IDX files (raw or .gz) in ``root`` (default ``data/fashion_mnist``); input (1, 28, 28)."""
    folders = _folders(
        root,
        "fashion_mnist",
        ["raw", "fashion_mnist", "FashionMNIST/raw"],
        ["fashion_mnist/raw", "FashionMNIST/raw"],
    )
    return _load_idx_set(
        "Fashion-MNIST",
        folders,
        "download the four IDX files from github.com/zalandoresearch/fashion-mnist",
    )


# CIFAR-10 python batches are pickles: only these globals may be loaded from them.
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, bytes, str, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return obj


def load_pickle_restricted(path: str | Path) -> Any:
    """Load a pickle written by Python 2 or 3 that may only hold containers and numpy arrays.

    Byte strings from Python 2 stay ``bytes`` (``encoding="bytes"``). Anything
    else, e.g. a reference to ``os.system``, raises ``DataError`` before it runs.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"refusing to load {path}: {exc} (only builtin containers and numpy arrays may appear)"
        ) from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"cannot read pickle {path}: {type(exc).__name__}: {exc}") from exc


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle_restricted(path)
    if not isinstance(batch, dict):
        raise DataError(
            f"{path} holds a {type(batch).__name__}; expected a CIFAR batch dict with data and labels"
        )

    def get(key: str) -> Any:
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise DataError(f"{path} has no {key!r} entry (keys: {sorted(map(repr, batch))})")

    data, labels = np.asarray(get("data")), np.asarray(get("labels"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: data is {data.dtype} {data.shape}; expected uint8 of shape (N, 3072)"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {len(data)} images but labels of shape {labels.shape} and dtype {labels.dtype}"
        )
    # each row: 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@DATASETS.register("cifar10", "cifar_10")
def _cifar10(*, seed: int, root: Path | None) -> RawData:
    """CIFAR-10 from the python batches (``data_batch_1..5``, ``test_batch``) under ``root`` (default ``data/cifar10``); input (3, 32, 32).

    The batches are pickles; they are read with a restricted unpickler that only
    admits builtin containers and numpy arrays.
    """
    folders = _folders(
        root,
        "cifar10",
        ["cifar-10-batches-py"],
        ["cifar10/cifar-10-batches-py", "cifar-10-batches-py"],
    )
    names = [*_CIFAR_TRAIN, _CIFAR_TEST]
    complete = [f for f in folders if all((f / n).is_file() for n in names)]
    if not complete:
        partial = [f for f in folders if any((f / n).is_file() for n in names)]
        if partial:
            missing = ", ".join(n for n in names if not (partial[0] / n).is_file())
            raise DataError(
                f"CIFAR-10 incomplete in {partial[0]}: missing {missing} (see data/README.md)"
            )
        raise DataError(
            f"CIFAR-10 not found: expected data_batch_1..5 and test_batch (the cifar-10-batches-py folder) in {folders[0]} "
            f"(also looked in {', '.join(map(str, folders[1:]))}); download cifar-10-python.tar.gz from the "
            f"CIFAR-10 page (cs.toronto.edu/~kriz/cifar.html) and extract it into {folders[0]} "
            f"or pass root=... or set {DATA_ENV} (see data/README.md)"
        )
    folder = complete[0]
    train = [_cifar_batch(folder / n) for n in _CIFAR_TRAIN]
    x_test, y_test = _cifar_batch(folder / _CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return RawData(x_train, y_train, x_test, y_test, 10, {"folder": str(folder)})


@DATASETS.register("npz")
def _npz(
    *, seed: int, root: Path | None, path: str | Path | None = None, num_classes: int | None = None
) -> RawData:
    """Arrays from a ``.npz`` with ``x_train, y_train, x_test, y_test`` (no pickles); input shape = ``x_train.shape[1:]``.

    ``path`` is taken relative to ``root`` when ``root`` is given, else to the
    current directory and then ``$LANDSCAPE_DATA``. ``num_classes`` defaults to
    the largest label + 1. Image inputs should be channels-first. The inputs are used
    as given (``normalize="none"``) unless ``normalize="standardize"`` is asked for.
    """
    if path is None:
        raise ConfigError(
            "dataset 'npz' needs path=<file.npz> holding x_train, y_train, x_test, y_test"
        )
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    elif root is not None:
        candidates = [root / p]
    else:
        candidates = [p] + ([_data_root() / p] if os.environ.get(DATA_ENV) else [])
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise DataError(
            f"npz file not found: looked for {', '.join(map(str, candidates))}; "
            "save one with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{file} lacks {', '.join(missing)} (has {', '.join(archive.files) or 'nothing'})"
                )
            arrays = {k: archive[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    for k in ("x_train", "x_test"):
        if arrays[k].ndim < 2:
            raise DataError(
                f"{file}: {k} has shape {arrays[k].shape}; expected (N, D) or (N, C, H, W)"
            )
    for k in ("y_train", "y_test"):
        y = arrays[k]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{file}: {k} must hold integer class labels, got {y.dtype}")
    largest = max(int(arrays["y_train"].max(initial=0)), int(arrays["y_test"].max(initial=0)))
    if num_classes is None:
        num_classes = largest + 1
    else:
        num_classes = _check_int("num_classes", num_classes, minimum=2)
    return RawData(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        num_classes,
        {"path": str(file)},
        normalize="none",
    )
