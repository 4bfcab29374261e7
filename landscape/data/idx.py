"""The IDX file format and the datasets stored in it: ``mnist`` and ``fashion_mnist``."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from landscape.data.containers import RawData
from landscape.data.files import DATA_ENV, search_folders
from landscape.data.loaders import DATASETS
from landscape.errors import DataError

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
    folders = search_folders(root, "mnist", ["raw", "mnist", "MNIST/raw"], ["mnist/raw", "MNIST/raw"])
    return _load_idx_set(
        "MNIST",
        folders,
        "download the four IDX files from the MNIST page (yann.lecun.com/exdb/mnist)",
    )


@DATASETS.register("fashion_mnist", "fashion")
def _fashion_mnist(*, seed: int, root: Path | None) -> RawData:
    """Fashion-MNIST from the four standard IDX files (raw or .gz) in ``root`` (default ``data/fashion_mnist``); input (1, 28, 28)."""
    folders = search_folders(
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
