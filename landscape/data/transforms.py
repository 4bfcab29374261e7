"""The steps :func:`~landscape.data.pipeline.load_dataset` applies, each a pure function of
arrays and a random generator: subsets, the long tail, label noise, normalization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from landscape.errors import ConfigError, DataError


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


def random_subset(name: str, split: str, x: np.ndarray, y: np.ndarray, size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random subset of ``size`` samples (kept in their order), for per-token targets."""
    if size > len(y):
        raise ConfigError(f"{split}_size={size} exceeds the {len(y)} {split} samples of dataset {name!r}")
    idx = np.sort(rng.choice(len(y), size=size, replace=False))
    return x[idx], y[idx]


def stratified_subset(
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


def long_tail(
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


def symmetric_noise(
    y: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Replace ``round(fraction * N)`` labels by a uniformly random different class."""
    k = int(round(fraction * len(y)))
    idx = rng.choice(len(y), size=k, replace=False)
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=k)) % num_classes
    return noisy


def standardize(
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


def is_index_dtype(dtype: np.dtype) -> bool:
    """Integer inputs other than 8-bit pixels (``uint8``): indices such as token ids, which
    keep their dtype and are never standardized."""
    return bool(np.issubdtype(dtype, np.integer)) and dtype != np.uint8


def as_given(x: np.ndarray) -> np.ndarray:
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
