"""load_dataset: a registered loader's arrays plus the options every experiment shares.

A *loader* is registered in :data:`~landscape.data.loaders.DATASETS` and turns ``seed``,
``root`` and its own keyword parameters into raw arrays (:class:`RawData`). :func:`load_dataset`
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
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.data._checks import check_float, check_int, jsonable
from landscape.data.containers import Dataset, RawData, Split
from landscape.data.loaders import DATASETS, loader_parameters
from landscape.data.transforms import (
    as_given,
    is_index_dtype,
    long_tail,
    random_subset,
    standardize,
    stratified_subset,
    symmetric_noise,
)
from landscape.errors import ConfigError, DataError
from landscape.tasks import IGNORE_INDEX, TOKEN_TASKS

NORMALIZATIONS = ("standardize", "none")
"""The values of ``load_dataset(normalize=...)``; ``None`` there means the loader's default."""

# Independent random streams of ``load_dataset``: np.random.default_rng([seed, STREAM]).
_STREAM_TRAIN_SUBSET = 1
_STREAM_TEST_SUBSET = 2
_STREAM_IMBALANCE = 3
_STREAM_LABELS = 4


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
    seed = check_int("seed", seed, minimum=0)
    train_size = None if train_size is None else check_int("train_size", train_size, minimum=1)
    test_size = None if test_size is None else check_int("test_size", test_size, minimum=1)
    label_noise = check_float("label_noise", label_noise, low=0.0, high=1.0)
    imbalance_ratio = check_float("imbalance_ratio", imbalance_ratio, low=1.0)
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
    accepted = {p.name: p for p in loader_parameters(loader)}
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
        "params": jsonable(resolved),
        "options": {
            "train_size": train_size,
            "test_size": test_size,
            "label_noise": label_noise,
            "random_labels": random_labels,
            "imbalance_ratio": imbalance_ratio,
            "root": None if root_path is None else str(root_path),
        },
        "source": jsonable(raw.info),
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
        x_train, y_train = random_subset(canonical, "train", x_train, y_train, train_size,
                                          _rng(seed, _STREAM_TRAIN_SUBSET))
        train_size = None
    if tokens and test_size is not None:
        x_test, y_test = random_subset(canonical, "test", x_test, y_test, test_size,
                                        _rng(seed, _STREAM_TEST_SUBSET))
        test_size = None
    if train_size is not None:
        idx = stratified_subset(
            canonical, "train", y_train, train_size, num_classes, _rng(seed, _STREAM_TRAIN_SUBSET)
        )
        x_train, y_train = x_train[idx], y_train[idx]
    if test_size is not None:
        idx = stratified_subset(
            canonical, "test", y_test, test_size, num_classes, _rng(seed, _STREAM_TEST_SUBSET)
        )
        x_test, y_test = x_test[idx], y_test[idx]

    # 2. long tail
    if imbalance_ratio > 1.0:
        idx, imbalance_info = long_tail(
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
            y_train = symmetric_noise(y_train, label_noise, num_classes, rng)
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
    ids = is_index_dtype(x_train.dtype)
    method = normalize or ("none" if ids else raw.normalize)
    if method == "standardize" and ids:
        raise ConfigError(
            f"dataset {canonical!r} has integer inputs ({x_train.dtype}, e.g. token ids), which "
            "cannot be standardized; use normalize=none (the default for integer inputs)"
        )
    info["options"]["normalize"] = normalize
    if method == "standardize":
        x_train, x_test, norm = standardize(x_train, x_test)
    else:
        norm = {"method": "none", "dtype": str(x_train.dtype)}
        x_train, x_test = as_given(x_train), as_given(x_test)
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


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


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
