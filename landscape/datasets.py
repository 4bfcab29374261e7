"""The public import path of the datasets the project ships (``landscape.datasets``).

The code lives in the package :mod:`landscape.data`, one concept a module (containers,
the loader registry, the ``load_dataset`` pipeline and its transforms, the loaders); this
module re-exports its public names, so ``from landscape.datasets import load_dataset,
DATASETS, Split, Dataset, ...`` stays the public API, unchanged.
"""

from __future__ import annotations

from landscape.data import (
    CORPUS,
    DATA_ENV,
    DATASETS,
    MODULAR_FORMATS,
    MODULAR_OPS,
    NORMALIZATIONS,
    SPARSE_PARITY_ENCODINGS,
    Dataset,
    RawData,
    Split,
    dataset_params,
    describe_data,
    iterate_batches,
    load_dataset,
    load_pickle_restricted,
    modular_table,
    read_idx,
)

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
