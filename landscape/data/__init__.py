"""The datasets the project ships: a registry of loaders plus the options every experiment shares.

One concept a module:

- :mod:`~landscape.data.containers`: :class:`Split`, :class:`Dataset`, :class:`RawData`,
  :func:`iterate_batches`, :func:`describe_data`;
- :mod:`~landscape.data.loaders`: the registry :data:`DATASETS`,
  :func:`dataset_params`;
- :mod:`~landscape.data.pipeline`: :func:`load_dataset`, which applies the shared options
  (subset, long tail, label noise, normalization; the steps in
  :mod:`~landscape.data.transforms`) and records each in :attr:`Dataset.info`;
- loaders without files: :mod:`~landscape.data.synthetic` (``digits``, ``gaussian_mixture``,
  ``teacher_student``), :mod:`~landscape.data.algorithmic` (``modular``, ``sparse_parity``),
  :mod:`~landscape.data.text` (``shakespeare_chars``);
- loaders of files under ``root`` or ``$LANDSCAPE_DATA`` (:mod:`~landscape.data.files`):
  :mod:`~landscape.data.idx` (``mnist``, ``fashion_mnist``), :mod:`~landscape.data.cifar`
  (``cifar10``, read with :mod:`~landscape.data.pickles`' restricted unpickler),
  :mod:`~landscape.data.npz` (``npz``).

``landscape.datasets`` re-exports this package's public names and stays the public import path.

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

# isort: off
# the loader modules register their datasets on import, in this order
from landscape.data import synthetic, algorithmic, text, idx, cifar, npz  # noqa: F401
# isort: on
from landscape.data.algorithmic import (
    MODULAR_FORMATS,
    MODULAR_OPS,
    SPARSE_PARITY_ENCODINGS,
    modular_table,
)
from landscape.data.containers import Dataset, RawData, Split, describe_data, iterate_batches
from landscape.data.files import DATA_ENV
from landscape.data.idx import read_idx
from landscape.data.loaders import DATASETS, dataset_params
from landscape.data.pickles import load_pickle_restricted
from landscape.data.pipeline import NORMALIZATIONS, load_dataset
from landscape.data.text import CORPUS

__all__ = [
    "CORPUS",
    "DATASETS",
    "DATA_ENV",
    "MODULAR_FORMATS",
    "MODULAR_OPS",
    "NORMALIZATIONS",
    "SPARSE_PARITY_ENCODINGS",
    "Dataset",
    "RawData",
    "Split",
    "dataset_params",
    "describe_data",
    "iterate_batches",
    "load_dataset",
    "load_pickle_restricted",
    "modular_table",
    "read_idx",
]
