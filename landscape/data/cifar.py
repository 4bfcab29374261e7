"""The ``cifar10`` dataset from its python batches, read with the restricted unpickler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from landscape.data.containers import RawData
from landscape.data.files import DATA_ENV, search_folders
from landscape.data.loaders import DATASETS
from landscape.data.pickles import load_pickle_restricted
from landscape.errors import DataError

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
    folders = search_folders(
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
