"""The ``npz`` dataset: a user's arrays from a ``.npz`` file (no pickles), used as given."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from landscape.data._checks import check_int
from landscape.data.containers import RawData
from landscape.data.files import DATA_ENV, data_root
from landscape.data.loaders import DATASETS
from landscape.errors import ConfigError, DataError


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
        candidates = [p] + ([data_root() / p] if os.environ.get(DATA_ENV) else [])
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
        num_classes = check_int("num_classes", num_classes, minimum=2)
    return RawData(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        num_classes,
        {"path": str(file)},
        normalize="none",
    )
