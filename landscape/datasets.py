"""The public import path of the datasets the project ships (``landscape.datasets``).

The code lives in the package :mod:`landscape.data`, one concept a module (containers,
the loader registry, the ``load_dataset`` pipeline and its transforms, the loaders); this
module is that package's public names under the older path, so ``from landscape.datasets
import load_dataset, DATASETS, Split, Dataset, ...`` keeps working.
"""

from __future__ import annotations

from landscape.data import *  # noqa: F403  (the same names, one list: landscape.data.__all__)
from landscape.data import __all__  # noqa: F401
